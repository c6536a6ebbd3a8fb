"""Metric writers of a run: clu's (tensorboard + text log) when importable, and metrics.jsonl.

`create_writer(workdir, resume_step)` is what the trainer and --mode=eval write through;
`progress_action` is clu's ReportProgress (steps/s and ETA), a no-op without clu.
"""

import json
import os

import jax
from absl import logging


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


class Writers:
  """Forwards each call to several metric writers (clu's, when importable, and the JSONL one)."""

  def __init__(self, writers):
    self._writers = writers

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


def create_writer(workdir, resume_step=None):
  """clu's default writer (tensorboard + text log) plus metrics.jsonl on process 0.

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
  return Writers(writers)


def progress_action(steps, writer, every):
  """clu's ReportProgress (steps/s, ETA into tensorboard), or a no-op when clu is unavailable."""
  try:
    from clu import periodic_actions  # noqa: PLC0415

    return periodic_actions.ReportProgress(num_train_steps=steps, writer=writer,
                                           every_steps=every)
  except ImportError:
    return lambda step: None
