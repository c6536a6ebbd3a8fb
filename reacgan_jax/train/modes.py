"""--mode=eval and --mode=sample, and the evaluation the trainer runs: nothing here trains.

  run_evaluation(config, sample_fn, step, workdir)     metrics -> eval/step_<n>.json (split
                                                       over the mesh: Evaluator(mesh=))
  load_state(config, workdir, mesh, adapter, step)     a checkpoint's TrainState
  evaluate_checkpoints(config, workdir, all)           --mode=eval
  sample_checkpoint(config, workdir, n)                --mode=sample
"""

import json
import os
import tempfile

import jax
import numpy as np
from absl import logging

from reacgan_jax import errors, sampling
from reacgan_jax.evaluation import inception_weights
from reacgan_jax.evaluation.evaluator import Evaluator
from reacgan_jax.models import adapter as adapter_lib
from reacgan_jax.platform import checkpoints, parallel, workdir_lock, writers
from reacgan_jax.train import state as state_lib


def fmt_metrics(m):
  return ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in sorted(m.items()))


def run_evaluation(config, sample_fn, step, workdir, *, strict=False, cache=None, mesh=None):
  """Evaluator on `sample_fn`; writes workdir/eval/step_<n>.json (nothing when workdir is None).

  Returns the metrics. With strict=False (inside training) the one forgiven failure is the
  Inception weights missing at their default path (inception_weights.DefaultWeightsMissing: a
  warning, None is returned and training goes on; evaluate later with --mode=eval). Every other
  failure raises (the trainer saves the checkpoint, then ends the run naming the cause).
  `cache` (a dict) keeps the Evaluator, its Inception network and reference statistics.
  `mesh`: the mesh sample_fn's generator lives on (default: every device); generation and the
  Inception are split over it.
  """
  cache = {} if cache is None else cache
  try:
    if 'evaluator' not in cache:
      cache['evaluator'] = Evaluator(config, mesh=mesh)
    evaluator = cache['evaluator']
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    results = evaluator.evaluate(sample_fn, config.eval.num_samples, rng)
  except inception_weights.DefaultWeightsMissing as e:
    if strict:
      raise
    logging.warning('Evaluation skipped at step %d: no Inception weights. Training continues; '
                    'evaluate the checkpoints later with --mode=eval.\n%s', step, e)
    return None
  except FileNotFoundError as e:  # a file the metrics read (weights, classifier): one line
    if isinstance(e, errors.UserError):
      raise
    raise errors.MissingFileError(str(e)) from e
  results = {k: float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v
             for k, v in results.items()}
  if jax.process_index() == 0 and workdir is not None:
    os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
    with open(os.path.join(workdir, 'eval', f'step_{step}.json'), 'w') as f:
      json.dump(dict(results, step=step, bn_eval=config.model.bn_eval), f, indent=2)
  logging.info('Evaluation at step %d: %s', step, fmt_metrics(results))
  return results


def load_state(config, workdir, mesh, adapter, step=None):
  """Restores a TrainState from workdir (newest readable checkpoint, or `step`).

  Returns:
    (state, step). Raises FileNotFoundError when the workdir has no checkpoint.
  """
  ckpt = checkpoints.Checkpointer(workdir, config)
  try:
    if ckpt.latest_step() is None:
      raise errors.MissingFileError(f'No checkpoint in {workdir}/checkpoints: train first '
                                    '(--mode=train with the same --workdir).')
    ckpt.check_config(step if step is not None else ckpt.latest_step(), resume=False)
    return ckpt.restore(state_lib.abstract_state(config, adapter, mesh), step=step)
  finally:
    ckpt.close()


def writable(path) -> bool:
  """Whether files can be created in `path` (a real probe: root ignores permission bits, and a
  read-only mount or bucket says so only when written to)."""
  try:
    with tempfile.TemporaryFile(dir=path):
      return True
  except OSError:
    return False


def _results_dir(workdir, output_dir, mode):
  """Where eval/sample write: output_dir, else the workdir; None when neither can be written.

  Reading checkpoints needs no lock; the folder written into is locked by the caller.
  """
  if output_dir:
    try:
      os.makedirs(output_dir, exist_ok=True)
    except OSError as e:  # a file of that name, no permission, a read-only disk
      raise errors.InputError(f'--output_dir={output_dir} cannot be used ({e}): name a folder '
                              'this user can write (it is created if missing).') from e
    return output_dir
  if writable(workdir):
    return workdir
  if mode == 'sample':
    raise errors.InputError(f'--workdir={workdir} is read-only: add --output_dir=DIR for the '
                            'samples (the checkpoints are only read).')
  logging.warning('--workdir=%s is read-only: evaluating without writing (results printed '
                  'only); add --output_dir=DIR to keep eval/step_<n>.json and metrics.jsonl.',
                  workdir)
  return None


def evaluate_checkpoints(config, workdir, all_checkpoints=False, output_dir=None):
  """--mode=eval: evaluates the EMA G of the newest (or every) checkpoint.

  Results go to output_dir (else the workdir), under that folder's lock; a read-only workdir
  without output_dir is evaluated without a lock and the results are only returned (printed by
  main.py).

  Returns:
    dict step -> metrics.
  """
  if not os.path.isdir(workdir):
    raise errors.MissingFileError(f'--workdir={workdir} does not exist: train first.')
  out = _results_dir(workdir, output_dir, 'eval')
  if out is None:
    return _evaluate_checkpoints(config, workdir, all_checkpoints, None)
  with workdir_lock.WorkdirLock(out, 'eval'):
    return _evaluate_checkpoints(config, workdir, all_checkpoints, out)


def _evaluate_checkpoints(config, workdir, all_checkpoints, out):
  mesh = parallel.create_mesh()
  adapter = adapter_lib.build(config, mesh)
  steps = checkpoints.list_checkpoint_steps(workdir)
  if not steps:
    raise errors.MissingFileError(f'No checkpoint in {workdir}/checkpoints: train first.')
  sampler = sampling.Sampler(config, adapter, mesh)
  results, cache = {}, {}
  # Appends: the training records stay.
  writer = writers.create_writer(out, wandb_project=config.train.wandb) if out else None
  for s in (steps if all_checkpoints else [None]):
    state, at = load_state(config, workdir, mesh, adapter, step=s)
    results[at] = run_evaluation(config, sampler.sample_fn(state), at, out, strict=True,
                                 cache=cache, mesh=mesh)
    if results[at] and writer:
      writer.write_scalars(at, {f'eval/{k}': v for k, v in results[at].items()
                                if isinstance(v, float)})
  if writer:
    writer.close()
  return results


def sample_checkpoint(config, workdir, num_samples=None, output_dir=None, *, seeds='',
                      classes='', truncation=None):
  """--mode=sample from the newest checkpoint.

  Without seeds/classes: grid, latent interpolation (and StyleGAN2's in w space) and an npz of
  samples. With them (flag text, e.g. '1-8' and '0,3,7'; one alone takes seeds 0-7 or every
  class): one PNG per (seed, class), a grid and an npz, under .../seeds/. `truncation` (None =
  off): sampling.truncation_plan (StyleGAN2 psi, else a truncated-normal z).

  Written under output_dir (else the workdir; a read-only workdir needs output_dir), while that
  folder's lock is held.

  Returns:
    dict name -> path (under <output_dir or workdir>/samples/final_<step>/).
  """
  aimed = bool(seeds or classes)
  if aimed:  # bad ids fail before any checkpoint is read
    seeds = sampling.parse_ids(seeds or '0-7', 'seeds')
    classes = sampling.parse_ids(classes or f'0-{config.data.num_classes - 1}', 'classes',
                                 upper=config.data.num_classes)
  sample_config, z_threshold = sampling.truncation_plan(config, truncation)
  if not os.path.isdir(workdir):
    raise errors.MissingFileError(f'--workdir={workdir} does not exist: train first.')
  out = _results_dir(workdir, output_dir, 'sample')
  mesh = parallel.create_mesh()
  adapter = adapter_lib.build(config, mesh)
  with workdir_lock.WorkdirLock(out, 'sample'):
    state, at = load_state(config, workdir, mesh, adapter)
    if sample_config is not config:  # StyleGAN2's psi is a module attribute: G built with it
      adapter = adapter_lib.build(sample_config, mesh)
    sampler = sampling.Sampler(sample_config, adapter, mesh)
    outdir = os.path.join(out, 'samples', f'final_{at}')
    if aimed:
      return sampling.write_seed_samples(sample_config, sampler.seeded_fn(state),
                                         os.path.join(outdir, 'seeds'), seeds, classes,
                                         z_threshold)
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    return sampling.write_samples(sample_config, sampler.sample_fn(state), outdir, rng,
                                  num_samples, w_interpolation=sampler.w_interpolation_fn(state),
                                  z_threshold=z_threshold)
