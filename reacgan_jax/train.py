"""GAN training: the TrainState, one pure D+G train step, and the training loop.

One train step = `config.train.d_updates_per_step` discriminator updates (each on a fresh
real batch and fresh fakes, an unrolled loop) followed by one generator update, with the loss
terms of SPEC 1 "Where each term applies" (reference StudioGAN `worker.py`):
  D: adv_D(real, fake) + cond_lambda * cond_loss(real)      (conditional loss on reals only)
  G: adv_G(fake)       + cond_lambda * cond_loss(fake, y_f) (y_f uniform random labels)
cond_loss is ACGAN's cross-entropy (acgan) or D2D-CE (reacgan); projection (pd) lives inside
D's adversarial logit and has no separate term.

Spectral norm follows torch's `spectral_norm` in train mode, which advances `u` on EVERY
forward of a module: in a D update G's `u` advances once (the fake forward) and D's twice
(the real and the fake forwards, in that order, each with the weights normalised by the `u`
current at that forward); in the G update G's and D's `u` each advance once. G's BN in a D
update uses batch statistics without touching the running averages (the reference calls
`untrack_bn_statistics` on G there); the G update updates them.

The conditional-gradient diagnostic (ReACGAN Fig. 1): `cond_grad_norm` is the mean over real
samples of ||d(cond_lambda * cond_loss) / d h_i||_2, h = D's pooled feature (the input of the
heads), averaged over the D updates of the step. It needs D to mark h with `self.perturb('h', h)`
(flax's intermediate-gradient hook; a no-op otherwise); without it the metric is absent.

Everything that is random is drawn for the global batch from one key per step,
`fold_in(state.rng, state.step)`; with jax_threefry_partitionable (default in this jax)
sharded draws equal unsharded ones, so a run on 1 device and on 8 devices is the same run.
"""

import functools
import json
import os
import signal
import time
from typing import Any

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from absl import logging

from reacgan_jax import augment, losses, parallel, spectral_norm

COND_METHODS = ('none', 'acgan', 'pd', 'reacgan')


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue bit-exactly; one pytree (replicated on the mesh)."""
  step: jax.Array  # int32 scalar: generator updates done
  g_params: Any
  g_state: Any  # G's BN batch_stats ({} without BN)
  g_sn: Any  # G's spectral-norm u vectors ({} without SN)
  d_params: Any
  d_state: Any
  d_sn: Any
  g_opt: Any
  d_opt: Any
  ema_params: Any  # EMA copy of g_params (None when config.train.ema is False)
  ema_state: Any  # EMA copy of g_state
  rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)


def _learning_rate(config, lr, updates_per_step):
  if config.optim.schedule == 'constant':
    return lr
  if config.optim.schedule == 'linear_decay':
    # The optimiser counts its own updates: D takes d_updates_per_step of them per step.
    return optax.linear_schedule(lr, 0.0, config.train.steps * updates_per_step)
  raise ValueError(f"config.optim.schedule={config.optim.schedule!r}: expected constant or "
                   'linear_decay')


def make_optimizers(config):
  """(g_tx, d_tx): Adam with config.optim's learning rates, betas and eps."""
  o = config.optim
  g_tx = optax.adam(_learning_rate(config, o.g_lr, 1), b1=o.beta1, b2=o.beta2, eps=o.eps)
  d_tx = optax.adam(_learning_rate(config, o.d_lr, config.train.d_updates_per_step),
                    b1=o.beta1, b2=o.beta2, eps=o.eps)
  return g_tx, d_tx


def _init_batch(config, generator, discriminator):
  # BN with bn_groups needs a batch the groups divide.
  n = max(2, getattr(generator, 'bn_groups', 1), getattr(discriminator, 'bn_groups', 1))
  s = config.data.image_size
  return (jnp.zeros((n, config.model.z_dim), jnp.float32), jnp.zeros((n,), jnp.int32),
          jnp.zeros((n, s, s, 3), jnp.float32))


def create_train_state(config, generator, discriminator, rng):
  """Initialises params, BN statistics, SN vectors, optimiser states and the EMA copy."""
  from reacgan_jax import models  # noqa: PLC0415 (models import flax modules; keep train importable)

  k_g, k_d, k_gsn, k_dsn, k_run = jax.random.split(rng, 5)
  z, y, x = _init_batch(config, generator, discriminator)
  g_vars = generator.init({'params': k_g}, z, y, train=False)
  d_vars = discriminator.init({'params': k_d, 'dropout': k_d}, x, y, train=False)
  g_params, d_params = g_vars['params'], d_vars['params']
  g_sn = (spectral_norm.init_sn_state(g_params, k_gsn, models.sn_predicate(config, 'g'))
          if config.model.apply_g_sn else {})
  d_sn = (spectral_norm.init_sn_state(d_params, k_dsn, models.sn_predicate(config, 'd'))
          if config.model.apply_d_sn else {})
  g_tx, d_tx = make_optimizers(config)
  g_state = g_vars.get('batch_stats', {})
  ema = config.train.ema
  return TrainState(
      step=jnp.zeros((), jnp.int32), g_params=g_params, g_state=g_state, g_sn=g_sn,
      d_params=d_params, d_state=d_vars.get('batch_stats', {}), d_sn=d_sn,
      g_opt=g_tx.init(g_params), d_opt=d_tx.init(d_params),
      ema_params=jax.tree.map(jnp.copy, g_params) if ema else None,
      ema_state=jax.tree.map(jnp.copy, g_state) if ema else None, rng=k_run)


def _perturbation_template(config, generator, discriminator):
  """Shape of D's 'perturbations' collection (h marked with self.perturb), or None."""
  z, y, x = _init_batch(config, generator, discriminator)
  shapes = jax.eval_shape(
      lambda: discriminator.init({'params': jax.random.PRNGKey(0),
                                  'dropout': jax.random.PRNGKey(0)}, x, y, train=False))
  return shapes.get('perturbations')


def make_cond_loss(config):
  """`cond_loss(out, labels) -> scalar` for config.model.cond_method, with config.loss's knobs.

  `out` is the discriminator's output structure (class_logits for acgan; embed and proxy for
  reacgan). pd and none have no separate conditional term (zero).
  """
  cond = config.model.cond_method
  margin_pos = config.loss.margin_pos
  margin_neg = None if config.loss.margin_neg < 0 else config.loss.margin_neg
  if not config.loss.margins:  # ablation: m_p = 1, m_n = -1 clip no pair (cosines lie in [-1, 1])
    margin_pos, margin_neg = 1.0, -1.0

  def cond_loss(out, labels):
    if cond == 'acgan':
      return losses.acgan_ce(out.class_logits, labels)
    if cond == 'reacgan':
      return losses.d2d_ce(out.embed, out.proxy, labels, temperature=config.loss.temperature,
                           margin_pos=margin_pos, margin_neg=margin_neg,
                           row_max_shift=config.loss.row_max_shift,
                           false_negative_removal=config.loss.false_negative_removal)
    return jnp.zeros((), jnp.float32)

  return cond_loss


def make_train_step(config, generator, discriminator):
  """Builds the pure `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    config: the run's ConfigDict.
    generator, discriminator: flax modules from `models.build_models` (bn_groups set).

  Returns:
    train_step where batch = {'image': float32 [n_d, B, H, W, 3] in [-1, 1],
    'label': int32 [n_d, B]} (one real batch per D update, B = global batch), rng = this step's
    key, and metrics = dict of float32 scalars (D-update terms averaged over the D updates).
  """
  cond = config.model.cond_method
  if cond not in COND_METHODS:
    raise ValueError(f'config.model.cond_method={cond!r}: expected one of '
                     f'{", ".join(COND_METHODS)}')
  d_adv_fn, g_adv_fn = losses.adversarial_losses(config.loss.adv)
  g_tx, d_tx = make_optimizers(config)
  lam = config.loss.cond_lambda
  z_dim, num_classes = config.model.z_dim, config.data.num_classes
  policy = config.train.diffaug_policy
  sn_kwargs = dict(n_power_iterations=config.model.sn_power_iterations, eps=config.model.sn_eps)
  pert_template = _perturbation_template(config, generator, discriminator)
  cond_loss = make_cond_loss(config)

  def sn(params, sn_state):
    if not sn_state:
      return params, sn_state
    return spectral_norm.spectral_normalize(params, sn_state, update=True, **sn_kwargs)

  def aug(x, key):
    return augment.diff_augment(x, key, policy) if policy else x

  def apply_g(params, stats, z, y):
    """G in train mode (batch statistics) -> (images, updated batch_stats)."""
    if not stats:
      return generator.apply({'params': params}, z, y, train=True), stats
    images, upd = generator.apply({'params': params, 'batch_stats': stats}, z, y, train=True,
                                  mutable=['batch_stats'])
    return images, upd['batch_stats']

  def apply_d(params, stats, x, y, key, perturbations=None):
    variables = {'params': params}
    if stats:
      variables['batch_stats'] = stats
    if perturbations is not None:
      variables['perturbations'] = perturbations
    if not stats:
      return discriminator.apply(variables, x, y, train=True, rngs={'dropout': key}), stats
    out, upd = discriminator.apply(variables, x, y, train=True, rngs={'dropout': key},
                                   mutable=['batch_stats'])
    return out, upd['batch_stats']

  def sample_prior(key, batch):
    kz, ky = jax.random.split(key)
    return (jax.random.normal(kz, (batch, z_dim), jnp.float32),
            jax.random.randint(ky, (batch,), 0, num_classes, jnp.int32))

  def d_update(g_params, g_state, carry, xs):
    d_params, d_state, d_sn, d_opt, g_sn = carry
    real, labels, key = xs
    k_prior, k_ar, k_af, k_dr, k_df = jax.random.split(key, 5)
    z, y_fake = sample_prior(k_prior, real.shape[0])
    g_w, g_sn = sn(g_params, g_sn)
    fake, _ = apply_g(g_w, g_state, z, y_fake)  # running BN stats untouched (reference)
    fake = jax.lax.stop_gradient(fake)
    real_aug, fake_aug = aug(real, k_ar), aug(fake, k_af)
    pert = (None if pert_template is None else jax.tree.map(
        lambda s: jnp.zeros((real.shape[0],) + s.shape[1:], s.dtype), pert_template))

    def loss_terms(d_params, pert):
      w, sn1 = sn(d_params, d_sn)
      out_r, stats = apply_d(w, d_state, real_aug, labels, k_dr, pert)
      w, sn2 = sn(d_params, sn1)
      out_f, stats = apply_d(w, stats, fake_aug, y_fake, k_df)
      adv = d_adv_fn(out_r.adv, out_f.adv)
      c = cond_loss(out_r, labels)
      aux = dict(sn=sn2, stats=stats, acc_real=jnp.mean(out_r.adv > 0),
                 acc_fake=jnp.mean(out_f.adv < 0))
      return (adv, lam * c), aux

    (adv, cterm), vjp_fn, aux = jax.vjp(loss_terms, d_params, pert, has_aux=True)
    one = jnp.ones((), jnp.float32)
    grads, _ = vjp_fn((one, one))
    metrics = dict(d_loss=adv + cterm, d_adv=adv, d_cond=cterm / lam if lam else cterm,
                   d_acc_real=aux['acc_real'], d_acc_fake=aux['acc_fake'])
    if pert is not None:
      # A second pullback of the cond term only; XLA prunes the unused parameter cotangents,
      # leaving the head's backward to h.
      _, dh = vjp_fn((jnp.zeros_like(one), one))
      norms = [jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1))
               for g in jax.tree.leaves(dh)]
      metrics['cond_grad_norm'] = jnp.mean(sum(norms))
    updates, d_opt = d_tx.update(grads, d_opt, d_params)
    d_params = optax.apply_updates(d_params, updates)
    return (d_params, aux['stats'], aux['sn'], d_opt, g_sn), metrics

  def g_update(g_params, g_state, g_sn, g_opt, d_params, d_state, d_sn, key, batch_size):
    """One G update: fakes, D (train mode, frozen), loss, backward, Adam.

    -> ((g_params, g_state, g_sn, g_opt, d_sn), metrics). G's BN running stats update here.
    """
    k_prior, k_aug, k_d = jax.random.split(key, 3)
    z, y_fake = sample_prior(k_prior, batch_size)

    def g_loss_fn(g_params):
      g_w, new_g_sn = sn(g_params, g_sn)
      fake, g_stats = apply_g(g_w, g_state, z, y_fake)
      d_w, new_d_sn = sn(d_params, d_sn)  # D in train mode advances its u too (reference)
      out_f, _ = apply_d(d_w, d_state, aug(fake, k_aug), y_fake, k_d)
      adv = g_adv_fn(out_f.adv)
      c = cond_loss(out_f, y_fake)
      return adv + lam * c, (adv, c, new_g_sn, g_stats, new_d_sn)

    (g_loss, (g_adv, g_c, new_g_sn, g_stats, new_d_sn)), g_grads = jax.value_and_grad(
        g_loss_fn, has_aux=True)(g_params)
    updates, g_opt = g_tx.update(g_grads, g_opt, g_params)
    g_params = optax.apply_updates(g_params, updates)
    return ((g_params, g_stats, new_g_sn, g_opt, new_d_sn),
            dict(g_loss=g_loss, g_adv=g_adv, g_cond=g_c))

  def train_step(state, batch, rng):
    n_d = batch['image'].shape[0]
    keys = jax.random.split(rng, n_d + 1)
    carry = (state.d_params, state.d_state, state.d_sn, state.d_opt, state.g_sn)
    # An unrolled Python loop, not lax.scan: on XLA:CPU the scanned (while-loop) D update ran
    # 10x slower than the unrolled one (0.52 s vs 5.2 s per step, cifar10_reacgan:small, batch
    # 32, 2 cores) and compiled 2x slower. Compile time grows with d_updates_per_step instead.
    d_metrics = []
    for i in range(n_d):
      carry, m = d_update(state.g_params, state.g_state, carry,
                          (batch['image'][i], batch['label'][i], keys[i]))
      d_metrics.append(m)
    d_params, d_state, d_sn, d_opt, g_sn = carry
    d_metrics = {k: jnp.mean(jnp.stack([m[k] for m in d_metrics])) for k in d_metrics[0]}

    (g_params, g_stats, new_g_sn, g_opt, new_d_sn), g_metrics = g_update(
        state.g_params, state.g_state, g_sn, state.g_opt, d_params, d_state, d_sn, keys[-1],
        batch['image'].shape[1])

    ema_params, ema_state = state.ema_params, state.ema_state
    if ema_params is not None:
      # Reference Ema.update: decay 0 (a plain copy) before ema_start; BN buffers too.
      decay = jnp.where(state.step < config.train.ema_start, 0.0, config.train.ema_decay)
      lerp = lambda e, p: decay * e + (1.0 - decay) * p
      ema_params = jax.tree.map(lerp, ema_params, g_params)
      ema_state = jax.tree.map(lerp, ema_state, g_stats)

    metrics = dict(d_metrics, **g_metrics)
    new_state = state.replace(
        step=state.step + 1, g_params=g_params, g_state=g_stats, g_sn=new_g_sn,
        d_params=d_params, d_state=d_state, d_sn=new_d_sn, g_opt=g_opt, d_opt=d_opt,
        ema_params=ema_params, ema_state=ema_state)
    return new_state, metrics

  # The pieces of one step, for benchmarks/compare.py (issue 9 times one D update and one G
  # update exactly as the step runs them): d_update(g_params, g_state, (d_params, d_state,
  # d_sn, d_opt, g_sn), (real, labels, key)) and g_update above; G forward = sample_prior,
  # sn, apply_g.
  train_step.d_update, train_step.g_update = d_update, g_update
  train_step.sample_prior, train_step.sn, train_step.apply_g = sample_prior, sn, apply_g
  return train_step


def build(config, mesh):
  """(generator, discriminator) with per-device BN groups when config.train.bn_sync is False."""
  from reacgan_jax import models  # noqa: PLC0415

  generator, discriminator = models.build_models(config)
  if not config.train.bn_sync:
    # StudioGAN's default without sync-BN: statistics per device. Groups of B / n_dev
    # consecutive samples coincide with the 'data' shards.
    n = mesh.devices.size
    generator, discriminator = generator.clone(bn_groups=n), discriminator.clone(bn_groups=n)
  return generator, discriminator


def compile_train_step(config, generator, discriminator, mesh):
  """The one jitted step over the mesh: `(state, batch) -> (state, metrics)`, state donated.

  The step key is fold_in(state.rng, state.step), computed inside the jit (no host sync).
  """
  step_fn = make_train_step(config, generator, discriminator)

  def train_step(state, batch):
    return step_fn(state, batch, jax.random.fold_in(state.rng, state.step))

  repl = parallel.replicated_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh, 1)),
                 out_shardings=(repl, repl), donate_argnums=0)


def init_state(config, generator, discriminator, mesh):
  """A fresh, replicated TrainState (initialised inside a jit: no host-to-device copy)."""
  init = jax.jit(functools.partial(create_train_state, config, generator, discriminator),
                 out_shardings=parallel.replicated_sharding(mesh))
  return init(jax.random.PRNGKey(config.seed))


@jax.jit
def _all_finite(tree):
  return jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)]))


class _Preemption:
  """SIGTERM -> set a flag; the loop saves a checkpoint at the end of the step and returns."""

  def __init__(self):
    self.requested = False
    self._previous = None

  def __enter__(self):
    try:
      self._previous = signal.signal(signal.SIGTERM, self._handle)
    except ValueError:  # not the main thread: no handler, training still works
      self._previous = None
    return self

  def _handle(self, signum, frame):
    del frame
    logging.warning('Signal %d received: saving a checkpoint and stopping.', signum)
    self.requested = True

  def __exit__(self, *exc):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


def _next_batch(iterator, n_d, mesh):
  """n_d host batches -> one global batch {'image': [n_d, B, ...], 'label': [n_d, B]}."""
  parts = [next(iterator) for _ in range(n_d)]
  local = {k: np.stack([p[k] for p in parts]) for k in ('image', 'label')}
  return parallel.shard_batch(local, mesh, sample_axis=1)


def _fmt_metrics(m):
  return ', '.join(f'{k}={v:.4g}' if isinstance(v, float) else f'{k}={v}'
                   for k, v in sorted(m.items()))


class _JsonlWriter:
  """Appends every scalar record to workdir/metrics.jsonl: {"step": n, "<name>": value, ...}.

  A plain-text copy of what goes to tensorboard, readable without TensorFlow (the experiment
  scripts and RESULTS.md plots read it). On resume, records past the restored step are dropped
  first, so the file describes one uninterrupted run.
  """

  def __init__(self, path, resume_step=None):
    self._path = path
    if resume_step is not None and os.path.exists(path):
      keep = []
      with open(path) as f:
        for line in f:
          try:
            if json.loads(line)['step'] <= resume_step:
              keep.append(line)
          except (ValueError, KeyError):  # a line cut short by a crash mid-write
            continue
      tmp = path + '.tmp'
      with open(tmp, 'w') as f:
        f.writelines(keep)
      os.replace(tmp, path)
    self._file = open(path, 'a')  # noqa: SIM115 (closed in close())

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


class _Writers:
  """Forwards each call to several metric writers (clu's, when importable, and the JSONL one)."""

  def __init__(self, writers):
    self._writers = writers

  def __getattr__(self, name):
    def call(*args, **kwargs):
      for w in self._writers:
        getattr(w, name)(*args, **kwargs)
    return call


def _create_writer(workdir, resume_step=None):
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
    writers.append(_JsonlWriter(os.path.join(workdir, 'metrics.jsonl'), resume_step))
  return _Writers(writers)


def _progress_action(steps, writer, every):
  """clu's ReportProgress (steps/s, ETA into tensorboard), or a no-op when clu is unavailable."""
  try:
    from clu import periodic_actions  # noqa: PLC0415

    return periodic_actions.ReportProgress(num_train_steps=steps, writer=writer,
                                           every_steps=every)
  except ImportError:
    return lambda step: None


def train_and_evaluate(config: ml_collections.ConfigDict, workdir: str):
  """Trains (resuming from workdir's newest readable checkpoint) and evaluates.

  Writes under workdir: checkpoints/, checkpoints_best/, config.json, tensorboard events and a
  text log (clu), samples/step_<n>.png, eval/step_<n>.json.

  Returns:
    The final TrainState.
  """
  from reacgan_jax import checkpoints, input_pipeline, sampling  # noqa: PLC0415

  mesh = parallel.create_mesh()
  B, n_d, steps = config.train.batch_size, config.train.d_updates_per_step, config.train.steps
  parallel.check_global_batch(B, mesh)
  generator, discriminator = build(config, mesh)
  logging.info('Mesh: %d devices on %d processes; global batch %d (%d per device).',
               mesh.devices.size, jax.process_count(), B, B // mesh.devices.size)

  ckpt = checkpoints.Checkpointer(workdir, config)
  state = init_state(config, generator, discriminator, mesh)
  if ckpt.latest_step() is not None:
    ckpt.check_config(ckpt.latest_step())
    restored, at = ckpt.restore(checkpoints.abstract_like(state))
    if restored is not None:
      state = restored
      logging.info('Resumed from %s (step %d).', ckpt.path(at), at)
  ckpt.write_config()
  start_step = int(parallel.to_host(state.step))
  last_good = ckpt.path(start_step) if start_step else None

  writer = _create_writer(workdir, start_step)
  if start_step == 0:
    writer.write_hparams(checkpoints.config_to_dict(config)['train'])
  logging.info('Data: %s', input_pipeline.describe_source(config))
  iterator = input_pipeline.create_train_iterator(
      config, start_step=start_step * n_d, process_index=jax.process_index(),
      process_count=jax.process_count())

  train_step = compile_train_step(config, generator, discriminator, mesh)
  sampler = sampling.Sampler(config, generator, mesh)
  # Fixed grid inputs: the same z at every step, so grids show training progress.
  grid_key = jax.random.fold_in(jax.random.PRNGKey(config.seed), 1)
  grid_z, grid_y = sampling.grid_latents(config, grid_key)
  report = _progress_action(steps, writer, config.train.log_every)
  pending = []  # device metrics since the last host sync
  eval_cache = {}
  t_log, step_log = time.time(), start_step

  def every(n, step):
    return n > 0 and step % n == 0

  def check_pending(step):
    """Host sync: raises with the last good checkpoint when a loss went NaN/Inf."""
    nonlocal pending
    host = parallel.to_host(pending)
    pending = []
    for k, m in enumerate(host):
      bad = [n for n, v in m.items() if not np.isfinite(v)]
      if bad:
        raise FloatingPointError(
            f'Non-finite {", ".join(bad)} at step {step - len(host) + k + 1}. Last good '
            f'checkpoint: {last_good or "none (no checkpoint saved yet)"}. Lower the learning '
            'rates or check the data, then resume from it.')
    return host

  def save(step):
    nonlocal last_good
    check_pending(step)
    if not bool(parallel.to_host(_all_finite((state.g_params, state.d_params)))):
      raise FloatingPointError(f'Non-finite parameters after step {step}; not saved. Last good '
                               f'checkpoint: {last_good or "none"}.')
    last_good = ckpt.save(step, state)
    logging.info('Saved checkpoint %s', last_good)

  def write_grid(step):
    images = sampler.sample_fn(state)(grid_z, grid_y)
    grid = sampling.make_grid(parallel.to_host(images), len(sampling.grid_classes(config)),
                              config.train.grid_per_class)
    if jax.process_index() == 0:
      sampling.save_png(grid, os.path.join(workdir, 'samples', f'step_{step}.png'))
      writer.write_images(step, {'samples': grid[None]})

  def evaluate(step):
    results = run_evaluation(config, sampler.sample_fn(state), step, workdir, cache=eval_cache)
    if results:
      writer.write_scalars(step, {f'eval/{k}': v for k, v in results.items()
                                  if isinstance(v, float)})
      ckpt.save_best(step, state, results)

  with _Preemption() as preempt:
    for step in range(start_step + 1, steps + 1):
      with jax.profiler.StepTraceAnnotation('train', step_num=step):
        batch = _next_batch(iterator, n_d, mesh)
        state, metrics = train_step(state, batch)
      pending.append(metrics)
      if step == start_step + 1:
        # One sync so the first step (compilation) stays out of the img/s and ETA figures.
        jax.block_until_ready(metrics)
        logging.info('First step (compilation included) took %.1f s.', time.time() - t_log)
        t_log, step_log = time.time(), step
      report(step)
      last = step == steps
      if every(config.train.log_every, step) or last:
        host = check_pending(step)
        mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
        now = time.time()
        rate = (step - step_log) / max(now - t_log, 1e-9) if step > step_log else 0.0
        mean['img_per_sec'] = rate * B * n_d  # real images through D per second
        writer.write_scalars(step, mean)
        logging.info('step %d/%d | %.1f img/s | ETA %.0f s | %s', step, steps,
                     mean['img_per_sec'], (steps - step) / max(rate, 1e-9), _fmt_metrics(mean))
        t_log, step_log = now, step
      if every(config.train.sample_every, step) or last:
        write_grid(step)
      if every(config.train.checkpoint_every, step) or last or preempt.requested:
        save(step)
      if preempt.requested:
        logging.warning('Stopped at step %d after SIGTERM; resume with the same --workdir.', step)
        break
      if config.train.eval_every >= 0 and (every(config.train.eval_every, step) or last):
        evaluate(step)
  logging.info('train_step compiled %d time(s).', train_step._cache_size())
  writer.flush()
  writer.close()
  ckpt.close()
  return state


def run_evaluation(config, sample_fn, step, workdir, *, strict=False, cache=None):
  """Evaluator on `sample_fn`; writes workdir/eval/step_<n>.json.

  Returns the metrics, or None with a warning when the evaluator or the Inception weights are
  unavailable. With strict=False (inside training) any evaluation failure is a warning, so a
  long run never dies in its evaluation; --mode=eval is strict. `cache` (a dict) keeps the
  Evaluator, its Inception network and reference statistics between calls.
  """
  cache = {} if cache is None else cache
  unavailable = (ImportError, FileNotFoundError, OSError)
  try:
    from reacgan_jax.evaluation.evaluator import Evaluator  # noqa: PLC0415

    if 'evaluator' not in cache:
      cache['evaluator'] = Evaluator(config)
    evaluator = cache['evaluator']
    rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 2)
    results = evaluator.evaluate(sample_fn, config.eval.num_samples, rng)
  except Exception as e:  # noqa: BLE001 -- filtered just below
    if strict and not isinstance(e, unavailable):
      raise
    logging.warning('Evaluation skipped at step %d: %r. Training continues; see README '
                    '"Evaluation" for the Inception weights.', step, e)
    return None
  results = {k: float(v) if np.ndim(v) == 0 and not isinstance(v, str) else v
             for k, v in results.items()}
  if jax.process_index() == 0:
    os.makedirs(os.path.join(workdir, 'eval'), exist_ok=True)
    with open(os.path.join(workdir, 'eval', f'step_{step}.json'), 'w') as f:
      json.dump(dict(results, step=step, bn_eval=config.model.bn_eval), f, indent=2)
  logging.info('Evaluation at step %d: %s', step, _fmt_metrics(results))
  return results


def load_state(config, workdir, mesh, generator, discriminator, step=None):
  """Restores a TrainState from workdir (newest readable checkpoint, or `step`).

  Returns:
    (state, step). Raises FileNotFoundError when the workdir has no checkpoint.
  """
  from reacgan_jax import checkpoints  # noqa: PLC0415

  repl = parallel.replicated_sharding(mesh)
  shapes = jax.eval_shape(functools.partial(create_train_state, config, generator, discriminator),
                          jax.random.PRNGKey(config.seed))
  abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)
  ckpt = checkpoints.Checkpointer(workdir, config)
  try:
    if ckpt.latest_step() is None:
      raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints: train first '
                              '(--mode=train with the same --workdir).')
    ckpt.check_config(step if step is not None else ckpt.latest_step())
    return ckpt.restore(abstract, step=step)
  finally:
    ckpt.close()


def evaluate_checkpoints(config, workdir, all_checkpoints=False):
  """--mode=eval: evaluates the EMA G of the newest (or every) checkpoint.

  Returns:
    dict step -> metrics (None where evaluation was unavailable).
  """
  from reacgan_jax import checkpoints, sampling  # noqa: PLC0415

  mesh = parallel.create_mesh()
  generator, discriminator = build(config, mesh)
  steps = checkpoints.list_checkpoint_steps(workdir)
  if not steps:
    raise FileNotFoundError(f'No checkpoint in {workdir}/checkpoints: train first.')
  sampler = sampling.Sampler(config, generator, mesh)
  out, cache = {}, {}
  writer = _create_writer(workdir)  # appends: the training records stay
  for s in (steps if all_checkpoints else [None]):
    state, at = load_state(config, workdir, mesh, generator, discriminator, step=s)
    out[at] = run_evaluation(config, sampler.sample_fn(state), at, workdir, strict=True,
                             cache=cache)
    if out[at]:
      writer.write_scalars(at, {f'eval/{k}': v for k, v in out[at].items()
                                if isinstance(v, float)})
  writer.close()
  return out


def sample_checkpoint(config, workdir, num_samples=None):
  """--mode=sample: grid, latent interpolation and an npz of samples from the newest checkpoint.

  Returns:
    dict name -> path (under workdir/samples/final_<step>/).
  """
  from reacgan_jax import sampling  # noqa: PLC0415

  mesh = parallel.create_mesh()
  generator, discriminator = build(config, mesh)
  state, at = load_state(config, workdir, mesh, generator, discriminator)
  sample_fn = sampling.Sampler(config, generator, mesh).sample_fn(state)
  rng = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
  return sampling.write_samples(config, sample_fn, os.path.join(workdir, 'samples', f'final_{at}'),
                                rng, num_samples)
