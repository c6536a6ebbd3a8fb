"""reacgan-jax command line: train, evaluate or sample a class-conditional GAN.

  python main.py --config=configs/cifar10_reacgan.py:small --workdir=runs/x
  python main.py --config=configs/cifar10_reacgan.py:small --workdir=runs/x --mode=eval
  python main.py --config=configs/tiny.py --config.train.steps=200 --workdir=runs/t --mode=sample

Re-running with the same --workdir resumes from its newest readable checkpoint. Multi-host:
the same command on every host with --coordinator_address=HOST:PORT --num_processes=N
--process_id=i (auto-detected on TPU pods and SLURM).
"""

import os
import sys

# Config files do `from configs import default`: make the repo root importable even when
# the package is not installed and main.py is run from elsewhere.
_REPO = os.path.dirname(os.path.abspath(__file__))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

INTERRUPTED = ('main.py: interrupted (Ctrl-C); nothing after the last saved checkpoint was kept. '
               'Rerun the same command to resume.\n')
try:
  import jax
  from absl import app, flags, logging
  from ml_collections import config_flags

  from reacgan_jax import errors  # light: no jax work at import
except KeyboardInterrupt:  # Ctrl-C during the imports: one line, the shell's 130
  sys.stderr.write(INTERRUPTED)
  sys.exit(130)

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Config file, e.g. configs/cifar10_reacgan.py:small; override any key with '
    '--config.<section>.<key>=value.', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_MODE = flags.DEFINE_enum('mode', 'train', ['train', 'eval', 'sample'],
                          'train (resumes when workdir has checkpoints), eval (EMA G of the '
                          'newest checkpoint), sample (grid, interpolation and an npz).')
_ALL_CHECKPOINTS = flags.DEFINE_bool('all_checkpoints', False,
                                     '--mode=eval: evaluate every checkpoint, not only the newest.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', '', '--mode=eval|sample: write the results here instead of into --workdir '
    '(needed for samples when the workdir is read-only; the checkpoints are only read).')
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', -1, '--mode=sample: images in the npz (-1: config.eval.num_samples).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'Multi-host: HOST:PORT of process 0 (jax.distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', -1, 'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'Multi-host: index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's parser, but an unknown --config.<key> ends with one line naming it, no traceback."""
  try:
    return flags.FLAGS(argv)
  except (AttributeError, KeyError) as e:
    # config_flags raises these (not a flags error) for a key the config does not have.
    message = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').replace("'", '').split())
    sys.stderr.write(f'FATAL Flags parsing error: unknown config key {message}\n'
                     'Every key, with its default and a comment, is in configs/default.py.\n')
    sys.exit(1)
  except flags.Error as e:
    msg = errors.message_of_flag_error(e)  # a UserError raised inside a config file
    if msg:
      sys.stderr.write(f'FATAL {msg}\n')
      sys.exit(1)
    sys.stderr.write(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see '
                     'help on flags.\n')
    sys.exit(1)
  except Exception as e:  # noqa: BLE001 -- raised by the user's config file (SyntaxError too)
    if any(a in ('--verbosity=1', '-v=1', '--verbosity=debug') for a in argv):
      raise
    where = f' in {e.filename}' if isinstance(e, SyntaxError) else ''
    sys.stderr.write(f'FATAL --config: the config file failed to load: {type(e).__name__}: '
                     f'{e}{where}. Fix it (--verbosity=1 shows the traceback).\n')
    sys.exit(1)


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  verbose = logging.get_verbosity() >= logging.DEBUG  # --verbosity=1 keeps tracebacks
  with errors.exit_on_user_error('main.py', verbose=verbose):
    _run(_loaded_config(), _WORKDIR.value)


def _loaded_config():
  config = _CONFIG.value
  try:
    getattr(config, 'train', None)
  except OSError as e:  # config_flags defers a missing or unreadable file to the first access
    cause = ' '.join(str(e.__cause__ or e).split())
    raise errors.InputError(f'--config: {cause}') from e
  return config


def _run(config, workdir):
  # After flag parsing, so --help stays fast; each mode imports only what it runs.
  from configs import default  # noqa: PLC0415
  from reacgan_jax import validate  # noqa: PLC0415
  from reacgan_jax.platform import parallel, paths  # noqa: PLC0415

  if _MODE.value == 'sample' and (_NUM_SAMPLES.value == 0 or _NUM_SAMPLES.value < -1):
    raise errors.ConfigError(f'--num_samples={_NUM_SAMPLES.value}: must be >= 1 (images in the '
                             'npz), or -1 for config.eval.num_samples.')
  validate.validate_config(config, mode=_MODE.value, defaults=default.get_config())

  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  # Sharded random draws must equal unsharded ones (device-count independent runs).
  jax.config.update('jax_threefry_partitionable', True)
  if config.train.compilation_cache:
    # Keyed by the computation, the compile options and the jax version: never a stale hit.
    jax.config.update('jax_compilation_cache_dir', str(paths.xla_cache_dir()))
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  if _MODE.value == 'train':
    from reacgan_jax.train import loop as train  # noqa: PLC0415

    train.train_and_evaluate(config, workdir)
    return
  from reacgan_jax.train import modes  # noqa: PLC0415 (eval/sample never import the trainer)

  if _MODE.value == 'eval':
    results = modes.evaluate_checkpoints(config, workdir, _ALL_CHECKPOINTS.value,
                                         _OUTPUT_DIR.value or None)
    if jax.process_index() == 0:
      for step, metrics in sorted(results.items()):
        print(f'step {step}: {metrics if metrics is not None else "evaluation unavailable"}')
  else:
    n = _NUM_SAMPLES.value if _NUM_SAMPLES.value >= 0 else None
    paths = modes.sample_checkpoint(config, workdir, n, _OUTPUT_DIR.value or None)
    if jax.process_index() == 0:
      for name, path in paths.items():
        print(f'{name}: {path}')


def run():
  """app.run(main); Ctrl-C outside the training loop's own handler (imports, flags, data
  loading, compilation, restore, a second Ctrl-C) is one line and exit status 130; the workdir
  lock is released and only complete checkpoints exist (--verbosity=1 keeps the traceback)."""
  try:
    app.run(main, flags_parser=parse_flags)
  except KeyboardInterrupt:
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    sys.stderr.write(INTERRUPTED)
    sys.exit(130)


if __name__ == '__main__':
  run()
