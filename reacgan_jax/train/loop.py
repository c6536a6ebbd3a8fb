"""The training loop: resume, step, log, sample, checkpoint, evaluate; preemption-safe.

`train_and_evaluate(config, workdir)` is the whole job of `--mode=train`. The step itself is
step.py (pure, jitted once), the state state.py, the models behind adapter.py; evaluation and
sampling of a finished run are modes.py (which never imports this module).

Cadence (config.train): every `log_every` steps a host sync checks the metrics for NaN/Inf and
writes their means (tensorboard via clu when importable, and workdir/metrics.jsonl); every
`sample_every` a grid of fixed latents; every `checkpoint_every` a checkpoint (and at the last
step, and on SIGTERM: save, then stop); every `eval_every` (0 = at the end) the evaluator.
"""

import os
import signal
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging

from reacgan_jax import errors, sampling
from reacgan_jax.data import pipeline as input_pipeline
from reacgan_jax.models import adapter as adapter_lib
from reacgan_jax.platform import checkpoints, heap, parallel, workdir_lock, writers
from reacgan_jax.train import modes
from reacgan_jax.train import state as state_lib
from reacgan_jax.train import step as step_lib


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class _Preemption:
  """SIGTERM or Ctrl-C (SIGINT) -> set a flag; the loop saves a checkpoint at the end of the
  step and returns. A second Ctrl-C stops at once (KeyboardInterrupt: the last checkpoint
  stands, orbax never leaves a half-written one as the newest)."""

  SIGNALS = (signal.SIGTERM, signal.SIGINT)

  def __init__(self):
    self.requested = False
    self._previous = {}

  def __enter__(self):
    errors.raise_if_interrupted()  # a Ctrl-C before the loop that Python dropped (errors.py)
    for sig in self.SIGNALS:
      try:
        self._previous[sig] = signal.signal(sig, self._handle)
      except ValueError:  # not the main thread: no handler, training still works
        pass
    return self

  def _handle(self, signum, frame):
    del frame
    if self.requested and signum == signal.SIGINT:
      raise KeyboardInterrupt
    logging.warning('%s received: saving a checkpoint and stopping (Ctrl-C again stops at '
                    'once).', signal.Signals(signum).name)
    self.requested = True

  def __exit__(self, *exc):
    for sig, previous in self._previous.items():
      signal.signal(sig, previous)


def _next_batch(iterator, n_d, mesh):
  """n_d host batches -> one global batch {'image': [n_d, B, ...], 'label': [n_d, B]}."""
  parts = [next(iterator) for _ in range(n_d)]
  local = {k: np.stack([p[k] for p in parts]) for k in ('image', 'label')}
  return parallel.shard_batch(local, mesh, sample_axis=1)


def _every(n, step):
  return n > 0 and step % n == 0


class _Run:
  """The state of one training job between steps: the pieces the loop's actions share."""

  def __init__(self, config, workdir):
    self.config, self.workdir = config, workdir
    self.mesh = parallel.create_mesh()
    parallel.check_global_batch(config.train.batch_size, self.mesh)
    self.adapter = adapter_lib.build(config, self.mesh)
    logging.info('Mesh: %d devices on %d processes; global batch %d (%d per device).',
                 self.mesh.devices.size, jax.process_count(), config.train.batch_size,
                 config.train.batch_size // self.mesh.devices.size)
    logging.info('%s.', heap.keep_freed_memory())
    self.ckpt = checkpoints.Checkpointer(workdir, config)
    self.state = self._restore_or_init()
    self.start_step = int(parallel.to_host(self.state.step))
    self.last_good = self.ckpt.path(self.start_step) if self.start_step else None
    self.writer = writers.create_writer(workdir, self.start_step,
                                        wandb_project=config.train.wandb,
                                        wandb_config=checkpoints.config_to_dict(config))
    if self.start_step == 0:
      self.writer.write_hparams(checkpoints.config_to_dict(config)['train'])
    self.sampler = sampling.Sampler(config, self.adapter, self.mesh)
    # Fixed grid inputs: the same z at every step, so grids show training progress.
    grid_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
    self.grid_z, self.grid_y = sampling.grid_latents(config, grid_key)
    self.pending = []  # device metrics since the last host sync
    self.eval_cache = {}

  def _restore_or_init(self):
    state = state_lib.init_state(self.config, self.adapter, self.mesh)
    ckpt = self.ckpt
    if ckpt.latest_step() is not None:
      ckpt.check_config(ckpt.latest_step())
      restored, at = ckpt.restore(checkpoints.abstract_like(state))
      if restored is not None:
        state = restored
        logging.info('Resumed from %s (step %d).', ckpt.path(at), at)
    ckpt.write_config()
    return state

  def check_pending(self, step):
    """Host sync: raises with the last good checkpoint when a loss went NaN/Inf."""
    host = parallel.to_host(self.pending)
    self.pending = []
    for k, m in enumerate(host):
      bad = [n for n, v in m.items() if not np.isfinite(v)]
      if bad:
        raise errors.NonFiniteError(
            f'Non-finite {", ".join(bad)} at step {step - len(host) + k + 1}. Last good '
            f'checkpoint: {self.last_good or "none (no checkpoint saved yet)"}. Lower the '
            'learning rates or check the data, then resume from it.')
    return host

  def log(self, step, t_log, step_log):
    host = self.check_pending(step)
    mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
    now = time.time()
    rate = (step - step_log) / max(now - t_log, 1e-9) if step > step_log else 0.0
    c = self.config.train
    mean['img_per_sec'] = rate * c.batch_size * c.d_updates_per_step  # reals through D per s
    self.writer.write_scalars(step, mean)
    logging.info('step %d/%d | %.1f img/s | ETA %.0f s | %s', step, c.steps, mean['img_per_sec'],
                 (c.steps - step) / max(rate, 1e-9), modes.fmt_metrics(mean))

  def save(self, step):
    self.check_pending(step)
    s = self.state
    if not bool(parallel.to_host(_all_finite((s.g.params, s.d.params)))):
      raise errors.NonFiniteError(f'Non-finite parameters after step {step}; not saved. Last good '
                               f'checkpoint: {self.last_good or "none"}.')
    try:
      self.last_good = self.ckpt.save(step, s)
    except FloatingPointError as e:  # a non-finite leaf anywhere in the state: nothing saved
      raise errors.NonFiniteError(f'{e} Last good checkpoint: {self.last_good or "none"}.') from e
    logging.info('Saved checkpoint %s', self.last_good)

  def write_grid(self, step):
    images = self.sampler.sample_fn(self.state)(self.grid_z, self.grid_y)
    grid = sampling.make_grid(parallel.to_host(images), len(sampling.grid_classes(self.config)),
                              self.config.train.grid_per_class)
    if jax.process_index() == 0:
      sampling.save_png(grid, os.path.join(self.workdir, 'samples', f'step_{step}.png'))
      self.writer.write_images(step, {'samples': grid[None]})

  def evaluate(self, step):
    try:
      results = modes.run_evaluation(self.config, self.sampler.sample_fn(self.state), step,
                                     self.workdir, cache=self.eval_cache, mesh=self.mesh)
    except Exception as e:
      self.save(step)  # the state it failed on is kept before the run ends
      if not isinstance(e, errors.UserError):
        raise  # a bug: its traceback, after the checkpoint
      raise errors.EvaluationError(
          f'Evaluation at step {step} failed: {e} Checkpoint {self.last_good} is saved: fix the '
          'cause, then evaluate it with --mode=eval, or rerun the same command to resume.'
      ) from e
    if results:
      self.writer.write_scalars(step, {f'eval/{k}': v for k, v in results.items()
                                       if isinstance(v, float)})
      self.ckpt.save_best(step, self.state, results)

  def close(self):
    self.writer.flush()
    self.writer.close()
    self.ckpt.close()


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from workdir's newest readable checkpoint) and evaluates.

  Writes under workdir: checkpoints/, checkpoints_best/, config.json, tensorboard events and a
  text log (clu), metrics.jsonl, samples/step_<n>.png, eval/step_<n>.json. Holds the workdir's
  lock (workdir_lock.py) throughout: a second run on the same workdir is refused.

  Returns:
    The final TrainState.
  """
  with workdir_lock.WorkdirLock(workdir, 'train'):
    return _train(config, workdir)


def _train(config, workdir):
  # The data first: its errors take seconds to report, the model's initial state many more.
  logging.info('Data: %s', input_pipeline.describe_source(config))
  source = input_pipeline.open_train_source(config)
  run = _Run(config, workdir)
  errors.raise_if_interrupted()  # before the compilation (errors.py)
  c = config.train
  iterator = input_pipeline.create_train_iterator(
      config, start_step=run.start_step * c.d_updates_per_step,
      process_index=jax.process_index(), process_count=jax.process_count(), source=source)
  train_step = step_lib.compile_train_step(config, run.adapter, run.mesh)
  report = writers.progress_action(c.steps, run.writer, c.log_every)
  t_log, step_log = time.time(), run.start_step
  with _Preemption() as preempt:
    for step in range(run.start_step + 1, c.steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = _next_batch(iterator, c.d_updates_per_step, run.mesh)
        run.state, metrics = train_step(run.state, batch)
      run.pending.append(metrics)
      if step == run.start_step + 1:
        # One sync so the first step (compilation) stays out of the img/s and ETA figures.
        jax.block_until_ready(metrics)
        logging.info('First step (compilation included) took %.1f s.', time.time() - t_log)
        t_log, step_log = time.time(), step
      report(step)
      last = step == c.steps
      if _every(c.log_every, step) or last:
        run.log(step, t_log, step_log)
        t_log, step_log = time.time(), step
      if _every(c.sample_every, step) or last:
        run.write_grid(step)
      if _every(c.checkpoint_every, step) or last or preempt.requested:
        run.save(step)
      if preempt.requested:
        logging.warning('Stopped at step %d after SIGTERM/SIGINT; resume with the same '
                        '--workdir.', step)
        break
      if c.eval_every >= 0 and (_every(c.eval_every, step) or last):
        run.evaluate(step)
  logging.info('train_step compiled %d time(s).', train_step._cache_size())
  run.close()
  return run.state
