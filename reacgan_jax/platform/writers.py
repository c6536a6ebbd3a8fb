"""Metric writers of a run: clu's (tensorboard + text log) when importable, metrics.jsonl, and
Weights & Biases when config.train.wandb names a project.

`create_writer(workdir, resume_step, wandb_project=...)` is what the trainer and --mode=eval
write through; `progress_action` is clu's ReportProgress (steps/s and ETA), a no-op without clu.
"""

import hashlib
import importlib.util
import json
import os

import jax
from absl import logging

from reacgan_jax import errors


class JsonlWriter:
  """Appends every scalar record to workdir/metrics.jsonl: {"step": n, "<name>": value, ...}.

  A plain-text copy of what goes to tensorboard, readable without TensorFlow (the experiment
  scripts and RESULTS.md plots read it). On resume, records past the restored step are dropped
  first, so the file describes one uninterrupted run.
  """

  def __init__(self, path, resume_step=None):
    self._path = path
    if resume_step is not None and os.path.exists(path):
      self._truncate(path, resume_step)
    self._file = open(path, 'a')  # noqa: SIM115 (closed in close())

  @staticmethod
  def _truncate(path, resume_step):
    """Keeps the records up to `resume_step`; a damaged line is set aside with a warning.

    Damaged: cut short by a crash mid-write, not UTF-8, not a JSON object, or no integer
    "step". Such lines go to <path>.damaged (appended), never silently dropped; the last line
    cut short by a crash is the usual one.
    """
    keep, damaged = [], []
    with open(path, 'rb') as f:
      for number, raw in enumerate(f, start=1):
        try:
          record = json.loads(raw.decode('utf-8'))
          step = record['step'] if isinstance(record, dict) else None
          if not isinstance(step, int) or isinstance(step, bool):
            raise ValueError('no integer "step"')
        except (ValueError, KeyError) as e:  # UnicodeDecodeError / JSONDecodeError included
          logging.warning('%s line %d is damaged (%s); set aside in %s.damaged.', path, number,
                          type(e).__name__ if not str(e) else str(e)[:80], path)
          damaged.append(raw if raw.endswith(b'\n') else raw + b'\n')
          continue
        if step <= resume_step:
          keep.append(raw if raw.endswith(b'\n') else raw + b'\n')
    if damaged:
      with open(path + '.damaged', 'ab') as f:
        f.writelines(damaged)
    tmp = path + '.tmp'
    with open(tmp, 'wb') as f:
      f.writelines(keep)
    os.replace(tmp, path)

  def write_scalars(self, step, scalars):
    record = {'step': int(step)}
    record.update({k: float(v) for k, v in scalars.items()})
    self._file.write(json.dumps(record) + '\n')
    self._file.flush()

  def write_images(self, step, images):
    del step, images

  def write_hparams(self, hparams):
    del hparams

  def flush(self):
    self._file.flush()

  def close(self):
    self._file.close()


WANDB_INSTALL = "pip install 'reacgan-jax[wandb]' (or pip install wandb)"


def wandb_available() -> bool:
  """Whether `import wandb` can work (a module set to None in sys.modules counts as absent)."""
  try:
    return importlib.util.find_spec('wandb') is not None
  except ValueError:  # a module in sys.modules without a __spec__
    return True


def _import_wandb(project):
  try:
    import wandb  # noqa: PLC0415 (optional: the `wandb` extra)
  except ImportError:
    raise errors.ConfigError(f'config.train.wandb={project!r} needs the wandb package: '
                             f"{WANDB_INSTALL}, or set --config.train.wandb=''.") from None
  return wandb


class WandbWriter:
  """The scalars metrics.jsonl gets (and the sample grids) sent to a Weights & Biases run.

  Never asks for a login: WANDB_MODE is respected (offline, disabled); online without
  credentials (no WANDB_API_KEY, no `wandb login`) the run is logged offline, with one warning
  line (`wandb sync <dir>` uploads it later). The run id is a hash of the workdir, so a resumed
  run continues the same wandb run; each record carries "step" (the x axis), so records
  written again after a resume sit beside the earlier ones, as wandb cannot drop history.
  Files go to $WANDB_DIR, else <workdir>/wandb.
  """

  def __init__(self, project, workdir, config=None):
    wandb = self._wandb = _import_wandb(project)
    kwargs = {}
    mode = os.environ.get('WANDB_MODE', '').lower()
    if mode not in ('offline', 'disabled', 'dryrun') and not wandb.login(prompt=False,
                                                                           verify=False):
      logging.warning('wandb: not logged in (no WANDB_API_KEY, no `wandb login`): logging '
                      'offline; `wandb sync` uploads the run later.')
      kwargs['mode'] = 'offline'
    run_id = hashlib.sha256(os.path.abspath(workdir).encode()).hexdigest()[:16]
    self._run = wandb.init(project=project, dir=os.environ.get('WANDB_DIR') or workdir,
                           id=run_id, resume='allow', config=config, **kwargs)
    self._run.define_metric('step')
    self._run.define_metric('*', step_metric='step')

  def write_scalars(self, step, scalars):
    self._run.log({'step': int(step), **{k: float(v) for k, v in scalars.items()}})

  def write_images(self, step, images):
    """images: name -> uint8 [N, H, W, 3] (the trainer's sample grid: N = 1)."""
    self._run.log({'step': int(step), **{k: [self._wandb.Image(x) for x in v]
                                         for k, v in images.items()}})

  def write_hparams(self, hparams):
    self._run.config.update(hparams, allow_val_change=True)

  def flush(self):
    pass  # wandb sends in the background; finish() in close() waits for it

  def close(self):
    self._run.finish()


class Writers:
  """Forwards each call to several metric writers (clu's, when importable, and the JSONL one)."""

  def __init__(self, writers):
    self._writers = writers

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


def create_writer(workdir, resume_step=None, *, wandb_project='', wandb_config=None):
  """clu's default writer (tensorboard + text log) plus metrics.jsonl on process 0, and a
  WandbWriter there when `wandb_project` is set (`wandb_config`: the run config it shows).

  clu's writers import TensorFlow; where it is not installed (a bare GPU/TPU image) training
  still runs and logs to the text log and metrics.jsonl, with a warning saying so.
  """
  writers = []
  try:
    from clu import metric_writers  # noqa: PLC0415 (imports TensorFlow: slow, optional)

    writers.append(metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False))
  except ImportError as e:
    logging.warning('clu metric writers unavailable (%s): no tensorboard events; metrics go to '
                    'the log and %s/metrics.jsonl. `pip install tensorflow-cpu tensorboard` '
                    'for tensorboard.', e, workdir)
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    writers.append(JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), resume_step))
    if wandb_project:
      writers.append(WandbWriter(wandb_project, workdir, wandb_config))
  return Writers(writers)


def progress_action(steps, writer, every):
  """clu's ReportProgress (steps/s, ETA into tensorboard), or a no-op when clu is unavailable."""
  try:
    from clu import periodic_actions  # noqa: PLC0415

    return periodic_actions.ReportProgress(num_train_steps=steps, writer=writer,
                                           every_steps=every)
  except ImportError:
    return lambda step: None
