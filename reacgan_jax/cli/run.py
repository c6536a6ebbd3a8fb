"""train / eval / sample: `reacgan-jax train|eval|sample` and `python main.py --mode=...`.

Both read the same flags (main.py's, flax-examples style: --config, --workdir, overrides
--config.<section>.<key>=value); the command sets --mode itself. --config takes a built-in
config by name or a file (builtin_configs.py). A UserError ends as one line and exit 1
(--verbosity=1 keeps the traceback), an unknown --config.<key> as one line naming it.
"""

import os
import sys

import jax
from absl import app, flags, logging
from ml_collections import config_flags

from reacgan_jax import errors, validate
from reacgan_jax.cli import builtin_configs
from reacgan_jax.platform import parallel, paths
from reacgan_jax.train import loop, modes

MODES = ('train', 'eval', 'sample')
INTERRUPTED = ('interrupted (Ctrl-C); nothing after the last saved checkpoint was kept. Rerun the '
               'same command to resume.')

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'A built-in config by name (cifar10_reacgan:small, tiny, ...) or a config file '
    '(configs/cifar10_reacgan.py:small); override any key with --config.<section>.<key>=value.',
    lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, logs and samples.')
_MODE = flags.DEFINE_enum('mode', 'train', MODES,
                          'train (resumes when workdir has checkpoints), eval (EMA G of the '
                          'newest checkpoint), sample (grid, interpolation and an npz).')
_ALL_CHECKPOINTS = flags.DEFINE_bool('all_checkpoints', False,
                                     '--mode=eval: evaluate every checkpoint, not only the newest.')
_OUTPUT_DIR = flags.DEFINE_string(
    'output_dir', '', '--mode=eval|sample: write the results here instead of into --workdir '
    '(needed for samples when the workdir is read-only; the checkpoints are only read).')
_NUM_SAMPLES = flags.DEFINE_integer(
    'num_samples', -1, '--mode=sample: images in the npz (-1: config.eval.num_samples).')
_SEEDS = flags.DEFINE_string(
    'seeds', '', '--mode=sample: one image per seed and class, e.g. 1-8 or 0,3,7 (a seed gives '
    'the same image on any device count); with --classes alone: 0-7.')
_CLASSES = flags.DEFINE_string(
    'classes', '', '--mode=sample: class ids for --seeds, e.g. 0,3,7 or 0-9 (default: every '
    'class).')
_TRUNCATION = flags.DEFINE_float(
    'truncation', None, '--mode=sample: truncation as StudioGAN samples: StyleGAN2 psi in [0, 1] '
    '(w towards its average), other backbones z from a normal truncated to [-t, t] (t > 0).')
_COORDINATOR = flags.DEFINE_string('coordinator_address', '',
                                   'Multi-host: HOST:PORT of process 0 (jax.distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', -1, 'Multi-host: number of processes.')
_PROCESS_ID = flags.DEFINE_integer('process_id', -1, 'Multi-host: index of this process.')
flags.mark_flags_as_required(['config', 'workdir'])


def parse_flags(argv):
  """absl's parser, but a config file's or a flag's error ends with one line, no traceback."""
  return errors.parse_flags(argv, defaults_file=builtin_configs.default_file())


def run(argv=None, mode=None):
  """Reads argv (sys.argv when None) and runs; `mode`: the command's, else --mode decides."""
  argv = list(sys.argv if argv is None else argv)
  prog = os.path.basename(argv[0])
  with errors.exit_on_user_error(prog):
    if mode is not None:
      if any(a.startswith('-') and a.lstrip('-').split('=')[0] in ('mode', 'nomode')
             for a in argv[1:]):
        raise errors.ConfigError(f'{prog} sets the mode; drop --mode (the commands are '
                                 f'{", ".join(f"reacgan-jax {m}" for m in MODES)}).')
      argv.append(f'--mode={mode}')
    argv = builtin_configs.prepare(argv)
  sys.argv = argv  # config_flags reads the --config.<key> overrides from sys.argv
  # --help shows the key flags of the module named argv[0] under __main__'s docstring.
  for flag in flags.FLAGS.get_key_flags_for_module(__name__):
    flags.FLAGS.register_key_flag_for_module(argv[0], flag)
  if mode is not None:
    sys.modules['__main__'].__doc__ = _command_doc(prog, mode)
  # Ctrl-C outside the training loop's own handler (flags, data loading, compilation, restore,
  # a second Ctrl-C) is one line and exit status 130; the workdir lock is released and only
  # complete checkpoints exist (--verbosity=1 keeps the traceback).
  try:
    app.run(main, argv, flags_parser=parse_flags)
  except KeyboardInterrupt:
    if logging.get_verbosity() >= logging.DEBUG:
      raise
    interrupted(prog)


def interrupted(prog):
  sys.stderr.write(f'{prog}: {INTERRUPTED}\n')
  sys.exit(130)


def _command_doc(prog, mode):
  example = {'train': '--config=cifar10_reacgan:small --workdir=runs/x',
             'eval': '--config=cifar10_reacgan:small --workdir=runs/x [--all_checkpoints]',
             'sample': '--config=cifar10_reacgan:small --workdir=runs/x [--num_samples=N]'}[mode]
  return (f'{prog}: the same as `python main.py --mode={mode}`.\n\n  {prog} {example}\n\n'
          '--config: a built-in config by name (reacgan-jax --help lists them) or a config file; '
          'override any key with --config.<section>.<key>=value.\n')


def train():
  run(mode='train')


def evaluate():
  run(mode='eval')


def sample():
  run(mode='sample')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {" ".join(argv[1:])}')
  verbose = logging.get_verbosity() >= logging.DEBUG  # --verbosity=1 keeps tracebacks
  with errors.exit_on_user_error(os.path.basename(argv[0]), verbose=verbose):
    _run(errors.config_value(_CONFIG), _WORKDIR.value)


def _run(config, workdir):
  if _MODE.value == 'sample' and (_NUM_SAMPLES.value == 0 or _NUM_SAMPLES.value < -1):
    raise errors.ConfigError(f'--num_samples={_NUM_SAMPLES.value}: must be >= 1 (images in the '
                             'npz), or -1 for config.eval.num_samples.')
  validate.validate_config(config, mode=_MODE.value, defaults=builtin_configs.default_config())

  parallel.maybe_initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value,
                                        _PROCESS_ID.value)
  # Sharded random draws must equal unsharded ones (device-count independent runs).
  jax.config.update('jax_threefry_partitionable', True)
  if config.train.compilation_cache:
    # Keyed by the computation, the compile options and the jax version: never a stale hit.
    jax.config.update('jax_compilation_cache_dir', str(paths.xla_cache_dir()))
  logging.info('JAX process %d/%d, devices: %s', jax.process_index(), jax.process_count(),
               jax.devices())
  errors.raise_if_interrupted()
  if _MODE.value == 'train':
    loop.train_and_evaluate(config, workdir)
    return
  if _MODE.value == 'eval':
    results = modes.evaluate_checkpoints(config, workdir, _ALL_CHECKPOINTS.value,
                                         _OUTPUT_DIR.value or None)
    if jax.process_index() == 0:
      for step, metrics in sorted(results.items()):
        print(f'step {step}: {metrics if metrics is not None else "evaluation unavailable"}')
  else:
    n = _NUM_SAMPLES.value if _NUM_SAMPLES.value >= 0 else None
    written = modes.sample_checkpoint(config, workdir, n, _OUTPUT_DIR.value or None,
                                      seeds=_SEEDS.value, classes=_CLASSES.value,
                                      truncation=_TRUNCATION.value)
    if jax.process_index() == 0:
      for name, path in written.items():
        print(f'{name}: {path}')
