"""Metric writers of a run: tensorboard events + a text log, metrics.jsonl, and Weights & Biases
when config.train.wandb names a project.

`create_writer(workdir, resume_step, wandb_project=...)` is what the trainer and --mode=eval
write through; `progress_action` reports steps/s and the ETA every `every` steps.

Tensorboard events come from clu's writers where TensorFlow is installed (they need it), and
otherwise from `TensorboardWriter` below, which writes the same summaries (TF2 scalar tensors,
PNG image tensors, the hparams plugin's session) with the `tensorboard` package alone: the
README's main job installs without TensorFlow (1.3 GB) and still gets tensorboard curves.
"""

import hashlib
import importlib.util
import io
import json
import os
import time

import jax
import numpy as np
from absl import logging
from PIL import Image

from reacgan_jax import errors
from reacgan_jax.platform import dicts


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


class TensorboardWriter:
  """Tensorboard event files without TensorFlow (what clu's SummaryWriter writes with it).

  Scalars as tf.summary.scalar writes them (a float32 scalar tensor, plugin 'scalars'), images
  as tf.summary.image does (a string tensor [width, height, PNG...], plugin 'images'; uint8
  as given, floats in [0, 1] converted as tf.image.convert_image_dtype does), hparams as clu's
  write_hparams (the hparams plugin's session-start summary of the flattened dict). Events go
  to workdir/events.out.tfevents.* through tensorboard's own EventFileWriter. Process 0 only.
  """

  def __init__(self, logdir):
    # Imported here: the `tensorboard` package is a dependency, but `import tensorboard...`
    # takes ~2 s, which a process that writes no events (other hosts, eval) need not pay.
    from tensorboard.compat.proto import event_pb2, summary_pb2  # noqa: PLC0415
    from tensorboard.plugins.hparams import summary_v2 as hparams_v2  # noqa: PLC0415
    from tensorboard.plugins.image import metadata as image_metadata  # noqa: PLC0415
    from tensorboard.plugins.scalar import summary_v2 as scalar_v2  # noqa: PLC0415
    from tensorboard.summary.writer.event_file_writer import EventFileWriter  # noqa: PLC0415
    from tensorboard.util import tensor_util  # noqa: PLC0415

    self._event, self._summary, self._tensor_util = event_pb2, summary_pb2, tensor_util
    self._scalar_pb, self._hparams_pb = scalar_v2.scalar_pb, hparams_v2.hparams_pb
    self._image_metadata = image_metadata.create_summary_metadata(
        display_name=None, description=None, converted_to_tensor=True)
    self._writer = EventFileWriter(logdir)

  def _add(self, step, summary):
    self._writer.add_event(self._event.Event(wall_time=time.time(), step=int(step),
                                             summary=summary))

  def write_scalars(self, step, scalars):
    values = []
    for k, v in scalars.items():
      values.extend(self._scalar_pb(k, np.float32(v)).value)
    self._add(step, self._summary.Summary(value=values))

  def write_images(self, step, images):
    """images: name -> [N, H, W, C] (C 1, 3 or 4), uint8 or float in [0, 1]."""
    values = []
    for k, v in images.items():
      v = np.asarray(v)
      if v.ndim == 3:
        v = v[None]
      if v.dtype != np.uint8:  # tf.image.convert_image_dtype(saturate=True): x * 255.5, floor
        v = np.clip(v.astype(np.float32) * 255.5, 0, 255).astype(np.uint8)
      pngs = [str(v.shape[2]).encode(), str(v.shape[1]).encode()]
      for x in v:
        buf = io.BytesIO()
        Image.fromarray(x[..., 0] if x.shape[-1] == 1 else x).save(buf, format='PNG')
        pngs.append(buf.getvalue())
      tensor = self._tensor_util.make_tensor_proto(pngs, dtype='string')
      values.append(self._summary.Summary.Value(tag=k, tensor=tensor,
                                                metadata=self._image_metadata))
    self._add(step, self._summary.Summary(value=values))

  def write_hparams(self, hparams):
    flat = {k: v if isinstance(v, (bool, int, float, str)) else str(v)
            for k, v in dicts.flatten(hparams).items()}
    self._add(0, self._hparams_pb(flat))

  def flush(self):
    self._writer.flush()

  def close(self):
    self._writer.close()


class LogWriter:
  """The text log clu's LoggingWriter gives: one INFO line per record of scalars."""

  def write_scalars(self, step, scalars):
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in scalars.items()))

  def write_images(self, step, images):
    del step, images

  def write_hparams(self, hparams):
    logging.info('[Hyperparameters] %s', dicts.flatten(hparams))

  def flush(self):
    pass

  def close(self):
    pass


def _clu(name):
  """clu.<name>, or None where it cannot be imported (clu imports TensorFlow: slow where it is
  installed; absent from an install without it)."""
  try:
    return importlib.import_module(f'clu.{name}')
  except ImportError as e:
    logging.info('clu.%s unavailable (%s): using platform/writers.py\'s own.', name, e)
    return None


class Writers:
  """Forwards each call to several metric writers (the tensorboard one, the JSONL one, ...)."""

  def __init__(self, writers):
    self._writers = writers

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


def create_writer(workdir, resume_step=None, *, wandb_project='', wandb_config=None):
  """Tensorboard events + text log (clu's default writer with TensorFlow, else TensorboardWriter
  and LogWriter), metrics.jsonl on process 0, and a WandbWriter there when `wandb_project` is set
  (`wandb_config`: the run config it shows). Other processes log text only, as clu's do.
  """
  writers = []
  metric_writers = _clu('metric_writers')
  if metric_writers is not None:
    writers.append(metric_writers.create_default_writer(
        workdir, just_logging=jax.process_index() > 0, asynchronous=False))
  else:
    writers.append(LogWriter())
    if jax.process_index() == 0:
      writers.append(TensorboardWriter(workdir))
  if jax.process_index() == 0:
    os.makedirs(workdir, exist_ok=True)
    writers.append(JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), resume_step))
    if wandb_project:
      writers.append(WandbWriter(wandb_project, workdir, wandb_config))
  return Writers(writers)


def progress_action(steps, writer, every):
  """clu's ReportProgress with TensorFlow (steps/s, ETA into tensorboard), else Progress."""
  periodic_actions = _clu('periodic_actions')
  if periodic_actions is not None:
    return periodic_actions.ReportProgress(num_train_steps=steps, writer=writer,
                                           every_steps=every)
  return Progress(steps, writer, every)


class Progress:
  """Every `every` steps: 'steps_per_sec' to the writer and a log line with the ETA (what clu's
  ReportProgress reports; the first call only starts the clock)."""

  def __init__(self, steps, writer, every):
    self._steps, self._writer, self._every = steps, writer, every
    self._last = None  # (step, time)

  def __call__(self, step):
    now = time.monotonic()
    if self._last is None:
      self._last = (step, now)
      return
    if self._every <= 0 or step % self._every or step == self._last[0]:
      return
    rate = (step - self._last[0]) / max(now - self._last[1], 1e-9)
    self._last = (step, now)
    self._writer.write_scalars(step, {'steps_per_sec': rate})
    eta = (self._steps - step) / rate
    logging.info('Step %d/%d: %.3g steps/s, ETA %d min.', step, self._steps, rate, eta // 60)
