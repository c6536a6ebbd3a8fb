"""One pure train step: `train_step(state, batch, rng) -> (state, metrics)`, jitted once.

One train step = `config.train.d_updates_per_step` discriminator updates (each on a fresh
real batch and fresh fakes, an unrolled loop) followed by one generator update (or preceded by
it: `config.train.d_first=False`, StudioGAN's StyleGAN2 configs), with the loss
terms of objectives.build_terms (SPEC 1 "Where each term applies", StudioGAN `worker.py`):
  D: adv_D(real, fake) + cond_lambda * cond_loss(real)      (conditional loss on reals only)
  G: adv_G(fake)       + cond_lambda * cond_loss(fake, y_f) (y_f uniform random labels)
plus any configured extra term, every `interval` updates (lazy regularisation, objectives.py).

Spectral norm follows torch's `spectral_norm` in train mode, which advances `u` on EVERY
forward of a module: in a D update G's `u` advances once (the fake forward) and D's twice
(the real and the fake forwards, in that order, each with the weights normalised by the `u`
current at that forward); in the G update G's and D's `u` each advance once. G's collections
(BN statistics) in a D update are used in train mode and their updates dropped (the reference
calls `untrack_bn_statistics` on G there); the G update keeps them. A G whose state moves in
the D updates instead (StyleGAN2's w_avg, adapter `g_state_updated_in == 'd'`) keeps the D
updates' and leaves it untouched in the G update. The EMA follows the G update.

The augmentation (augment.Augmentation) is applied to reals and fakes in each D update and to
the fakes in the G update, with the state the step started from; it observes D's outputs on
reals after each D update and ends the step with `step_end`; its state is `state.extra['augment']`.

The conditional-gradient diagnostic (ReACGAN Fig. 1): `cond_grad_norm` is the mean over real
samples of ||d(cond_lambda * cond_loss) / d h_i||_2, h = D's pooled feature (the input of the
heads), averaged over the D updates of the step. It needs D to mark h with `self.perturb('h', h)`
(flax's intermediate-gradient hook; a no-op otherwise); without it the metric is absent.

Everything that is random is drawn for the global batch from one key per step,
`fold_in(state.rng, state.step)`; with jax_threefry_partitionable (default in this jax)
sharded draws equal unsharded ones, so a run on 1 device and on 8 devices is the same run.
"""

from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from reacgan_jax.augment import registry as augment
from reacgan_jax.losses import registry as objectives
from reacgan_jax.losses import terms
from reacgan_jax.ops import lerp, spectral_norm
from reacgan_jax.platform import parallel
from reacgan_jax.train import state as state_lib

AUG = 'augment'


@flax.struct.dataclass
class DCarry:
  """What one D update changes and the next one reads."""
  d: state_lib.NetState
  g_sn: Any
  g_cols: Any  # G's collections (moved by the D updates' fakes when g_state_updated_in == 'd')
  aug: Any  # the augmentation's state (None when stateless)
  extra: dict  # term states


def _sum(values):
  total = values[0]
  for v in values[1:]:
    total = total + v
  return total


def _weighted(term, value):
  return value if term.weight == 1.0 else term.weight * value


def _call(term, ctx, extra):
  """(value, extra') of a term; stateful terms read and write extra['term/<name>']."""
  if term.init_state is None:
    return term.fn(ctx), extra
  key = f'term/{term.name}'
  value, new = term.fn(ctx._replace(state=extra[key]))
  return value, dict(extra, **{key: new})


def _scaled(term, ctx, extra):
  """A lazy term's contribution: weight * interval * value (StyleGAN2's lazy scaling)."""
  value, extra = _call(term, ctx, extra)
  return term.weight * term.interval * value, extra


def _lazy_update(term, active, loss_fn, params, tx, opt_state, grads, extra):
  """A lazy term inside lax.cond: added to `grads` ('inside') or its own Adam step ('separate').

  loss_fn(params, extra) -> (value, extra') with the term already weighted and scaled by k.
  Returns (params, opt_state, grads, value (0 when inactive), extra).
  """

  def run(operand):
    params, opt_state, grads, extra = operand
    (value, extra), g = jax.value_and_grad(loss_fn, has_aux=True)(params, extra)
    if term.place == 'inside':
      return params, opt_state, jax.tree.map(jnp.add, grads, g), value, extra
    updates, opt_state = tx.update(g, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, grads, value, extra

  def skip(operand):
    params, opt_state, grads, extra = operand
    return params, opt_state, grads, jnp.zeros((), jnp.float32), extra

  return jax.lax.cond(active, run, skip, (params, opt_state, grads, extra))


class StepBuilder:
  """Builds the step's pieces from a config and a ModelAdapter (see the module docstring)."""

  def __init__(self, config, adapter):
    self.config, self.adapter = config, adapter
    self.txs = state_lib.make_optimizers(config)
    self.d_terms = objectives.build_terms(config, 'd')
    self.g_terms = objectives.build_terms(config, 'g')
    self.aug = augment.build(config)
    self.pert_template = adapter.perturbation_template()
    self.cond_weight = config.loss.cond_lambda

  def _pert(self, batch):
    if self.pert_template is None:
      return None
    return jax.tree.map(lambda s: jnp.zeros((batch,) + s.shape[1:], s.dtype), self.pert_template)

  def _fakes(self, g, g_sn, g_cols, key, batch):
    """(fakes, their labels, G's advanced SN state, G's collections) for a D update
    (stop-gradient fakes; BN statistics dropped, StyleGAN2's w_avg kept)."""
    a = self.adapter
    k_prior, k_g = jax.random.split(key) if a.g_needs_key else (key, None)
    z, y_fake = a.sample_prior(k_prior, batch)
    g_w, g_sn = a.normalize('g', g.params, g_sn, update=True)
    fake, cols = a.apply_g(g_w, g_cols, z, y_fake, train=True, key=k_g)
    if a.g_state_updated_in != 'd':
      cols = g_cols
    return jax.lax.stop_gradient(fake), y_fake, g_sn, cols

  def d_update(self, g, carry: DCarry, xs, d_index, step):
    """One D update on (real, labels, key); d_index = n_d * step + i (lazy intervals)."""
    a, aug = self.adapter, self.aug
    real, labels, key = xs
    k_prior, k_ar, k_af, k_dr, k_df = jax.random.split(key, 5)
    fake, y_fake, g_sn, g_cols = self._fakes(g, carry.g_sn, carry.g_cols, k_prior, real.shape[0])
    real = aug.mix_reals(real, fake, jax.random.fold_in(key, 5), carry.aug)  # APA (else as is)
    real_aug, fake_aug = aug.augment(real, k_ar, carry.aug), aug.augment(fake, k_af, carry.aug)
    pert = self._pert(real.shape[0])
    d = carry.d
    every = [t for t in self.d_terms if not t.lazy]

    def loss_terms(d_params, pert):
      extra = carry.extra
      w, sn1 = a.normalize('d', d_params, d.sn, update=True)
      out_r, cols = a.apply_d(w, d.collections, real_aug, labels, train=True, key=k_dr,
                              perturbations=pert)
      w, sn2 = a.normalize('d', d_params, sn1, update=True)
      out_f, cols = a.apply_d(w, cols, fake_aug, y_fake, train=True, key=k_df)
      # A term that needs its own forward (R1 every update) sees D after these forwards.
      apply = self._d_apply(w, cols, jax.random.fold_in(key, 6), carry.aug)
      ctx = terms.Context(out_r, out_f, apply, real, labels, fake, y_fake)
      values = []
      for t in every:
        v, extra = _call(t, ctx, extra)
        values.append(_weighted(t, v))
      aux = dict(sn=sn2, cols=cols, extra=extra, out_r=out_r,
                 acc_real=jnp.mean(out_r.adv > 0), acc_fake=jnp.mean(out_f.adv < 0))
      return tuple(values), aux

    values, vjp_fn, aux = jax.vjp(loss_terms, d.params, pert, has_aux=True)
    one = jnp.ones((), jnp.float32)
    grads = vjp_fn(tuple(one for _ in values))[0]
    metrics = {f'd_{t.name}': v / t.weight if t.weight else v
               for t, v in zip(every, values, strict=True)}
    metrics = dict(d_loss=_sum(values), **metrics, d_acc_real=aux['acc_real'],
                   d_acc_fake=aux['acc_fake'], **aug.real_metrics(aux['out_r']))
    if pert is not None:
      # A second pullback of the cond term only; XLA prunes the unused parameter cotangents,
      # leaving the head's backward to h.
      cot = tuple(one if t.name == 'cond' else jnp.zeros_like(one) for t in every)
      dh = vjp_fn(cot)[1]
      norms = [jnp.sqrt(jnp.sum(jnp.square(g.reshape(g.shape[0], -1)), axis=1))
               for g in jax.tree.leaves(dh)]
      metrics['cond_grad_norm'] = jnp.mean(sum(norms))
    d = d.replace(sn=aux['sn'], collections=aux['cols'])
    k_lazy = jax.random.fold_in(key, 7)
    params, opt_state, extra = self._update(
        'd', d_index, d.params, d.opt_state, grads, aux['extra'], metrics,
        lambda t: self._d_lazy_loss(t, d, real, labels, fake, y_fake, k_lazy, carry.aug))
    d = d.replace(params=params, opt_state=opt_state)
    aug_state = aug.observe(carry.aug, aux['out_r'], step)
    return DCarry(d=d, g_sn=g_sn, g_cols=g_cols, aug=aug_state, extra=extra), metrics

  def _d_apply(self, w, cols, key, aug_state):
    """`apply(x, y) -> DOutput`: D (weights `w`, train mode) on the augmented x, for terms that
    differentiate through their own forward w.r.t. the images (R1, as StudioGAN: the gradient
    w.r.t. the reals before augmentation, `Dis(AUG.series_augment(real_images))`)."""
    a, aug = self.adapter, self.aug
    return lambda x, y: a.apply_d(w, cols, aug.augment(x, key, aug_state), y, train=True)[0]

  def _update(self, which, index, params, opt_state, grads, extra, metrics, lazy_loss):
    """Adam step of network `which` with its lazy terms (`index` = its update count).

    'inside' terms add their gradient before the step, 'separate' ones take an Adam step of
    their own after it; `lazy_loss(term)` is the term's `loss_fn(params, extra)`.
    Returns (params, opt_state, extra); the terms' values go into `metrics`.
    """
    tx = self.txs[which]
    terms = self.d_terms if which == 'd' else self.g_terms
    for t in (t for t in terms if t.lazy and t.place == 'inside'):
      params, opt_state, grads, metrics[f'{which}_{t.name}'], extra = _lazy_update(
          t, index % t.interval == 0, lazy_loss(t), params, tx, opt_state, grads, extra)
    updates, opt_state = tx.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    for t in (t for t in terms if t.lazy and t.place == 'separate'):
      params, opt_state, _, metrics[f'{which}_{t.name}'], extra = _lazy_update(
          t, index % t.interval == 0, lazy_loss(t), params, tx, opt_state,
          jax.tree.map(jnp.zeros_like, params), extra)
    return params, opt_state, extra

  def _d_lazy_loss(self, t, d, real, labels, fake, y_fake, key, aug_state):
    """A lazy D term's loss: its own train-mode forwards (D's u as the main forwards left it)
    on the reals and fakes before augmentation; `ctx.apply` augments (its own draw)."""
    a = self.adapter

    def loss_fn(p, extra):
      w, _ = a.normalize('d', p, d.sn, update=False)
      apply = self._d_apply(w, d.collections, key, aug_state)
      return _scaled(t, terms.Context(None, None, apply, real, labels, fake, y_fake), extra)

    return loss_fn

  def g_update(self, g, carry: DCarry, key, batch_size, step):
    """One G update: fakes, D (train mode, frozen), loss, backward, Adam.

    Reads D, G's SN state and collections, the augmentation state and the term states from
    `carry` (as d_update does). -> (g NetState, carry with D's SN state, G's SN state and
    collections and the term states advanced, metrics).
    """
    a, every = self.adapter, [t for t in self.g_terms if not t.lazy]
    d, g_sn, aug_state, extra = carry.d, carry.g_sn, carry.aug, carry.extra
    g = g.replace(collections=carry.g_cols)
    k_prior, k_aug, k_d = jax.random.split(key, 3)
    k_g = jax.random.fold_in(key, 3) if a.g_needs_key else None
    z, y_fake = a.sample_prior(k_prior, batch_size)

    def g_loss_fn(g_params, extra):
      g_w, new_g_sn = a.normalize('g', g_params, g_sn, update=True)
      fake, g_cols = a.apply_g(g_w, g.collections, z, y_fake, train=True, key=k_g,
                               update=a.g_state_updated_in == 'g')
      d_w, new_d_sn = a.normalize('d', d.params, d.sn, update=True)  # D in train mode: u too
      out_f, _ = a.apply_d(d_w, d.collections, self.aug.augment(fake, k_aug, aug_state), y_fake,
                           train=True, key=k_d)
      ctx = terms.Context(None, out_f, None, None, None, fake, y_fake)
      raw = []
      for t in every:
        v, extra = _call(t, ctx, extra)
        raw.append(v)
      total = _sum([_weighted(t, v) for t, v in zip(every, raw, strict=True)])
      return total, (raw, new_g_sn, g_cols, new_d_sn, extra)

    (g_loss, (raw, new_g_sn, g_cols, new_d_sn, extra)), grads = jax.value_and_grad(
        g_loss_fn, has_aux=True)(g.params, extra)
    metrics = dict(g_loss=g_loss, **{f'g_{t.name}': v for t, v in zip(every, raw, strict=True)})
    params, opt_state, extra = self._update(
        'g', step, g.params, g.opt_state, grads, extra, metrics,
        lambda t: self._g_lazy_loss(t, g, new_g_sn, d, key, batch_size))
    g = g.replace(params=params, collections=g_cols, sn=new_g_sn, opt_state=opt_state)
    carry = carry.replace(d=d.replace(sn=new_d_sn), g_sn=g.sn, g_cols=g.collections, extra=extra)
    return g, carry, metrics

  def _g_lazy_loss(self, t, g, g_sn, d, key, batch_size):
    """A lazy G term's loss: fresh fakes from the prior (its own keys), D frozen, train mode.

    For a G with a mapping / synthesis split (StyleGAN2) the context also carries the fresh
    batch's `ws` (a function of the params being differentiated), `synthesize(ws) -> images`
    and a key (the path-length term's noise)."""
    a = self.adapter
    k_prior, k_g = jax.random.split(jax.random.fold_in(key, 7))
    k_term = jax.random.fold_in(key, 8)
    split = hasattr(a.generator, 'synthesize')

    def loss_fn(p, extra):
      z, y = a.sample_prior(k_prior, batch_size)
      g_w, _ = a.normalize('g', p, g_sn, update=False)
      fake, _ = a.apply_g(g_w, g.collections, z, y, train=True, key=k_g, update=False)
      d_w, _ = a.normalize('d', d.params, d.sn, update=False)
      apply = lambda x, yy: a.apply_d(d_w, d.collections, x, yy, train=True)[0]
      ws = synth = None
      if split:
        ws = a.apply_g_method(g_w, g.collections, 'mapping', z, y)
        synth = lambda w: a.apply_g_method(g_w, g.collections, 'synthesize', w, key=k_g)
      ctx = terms.Context(None, None, apply, None, None, fake, y, ws=ws, synthesize=synth,
                               key=k_term)
      return _scaled(t, ctx, extra)

    return loss_fn

  def ema_update(self, ema, g, step):
    """Reference Ema.update: decay 0 (a plain copy) before ema_start; collections and SN too.
    With train.ema_kimg > 0, EmaStylegan2.update: decay from the images seen, buffers
    (collections, SN vectors) copied (ema_decay_stylegan2). Params and collections follow
    train.ema_rule (ops/lerp.py: 'lerp' = torch's p.lerp(p_ema, decay), 'mix' = legacy); the
    SN vectors always torch's lerp (spectral_norm.ema_lerp)."""
    if ema is None:
      return None
    t = self.config.train
    if t.ema_kimg > 0:
      decay = ema_decay_stylegan2(step, t.batch_size, t.ema_kimg, t.ema_rampup)
      avg = lambda e, p: lerp.ema(e, p, decay, t.ema_rule)
      return state_lib.EmaState(params=jax.tree.map(avg, ema.params, g.params),
                                collections=jax.tree.map(jnp.copy, g.collections),
                                sn=jax.tree.map(jnp.copy, g.sn))
    decay = jnp.where(step < t.ema_start, 0.0, t.ema_decay)
    avg = lambda e, p: lerp.ema(e, p, decay, t.ema_rule)
    return state_lib.EmaState(params=jax.tree.map(avg, ema.params, g.params),
                              collections=jax.tree.map(avg, ema.collections, g.collections),
                              sn=spectral_norm.ema_lerp(ema.sn, g.sn, decay))


def ema_decay_stylegan2(step, batch_size, ema_kimg, ema_rampup):
  """StudioGAN utils/ema.py EmaStylegan2.update(step): 0.5 ** (B / max(n, 1e-8)) with
  n = ema_kimg * 1000, or min(that, B * step * ema_rampup) when ema_rampup > 0 (0 at step 0: a
  plain copy)."""
  nimg = jnp.float32(ema_kimg * 1000)
  if ema_rampup > 0:
    nimg = jnp.minimum(nimg, jnp.float32(batch_size) * step.astype(jnp.float32) * ema_rampup)
  return jnp.float32(0.5) ** (jnp.float32(batch_size) / jnp.maximum(nimg, 1e-8))


def make_train_step(config, adapter):
  """Builds the pure `train_step(state, batch, rng) -> (state, metrics)`.

  Args:
    config: the run's ConfigDict.
    adapter: the run's adapter.ModelAdapter.

  Returns:
    train_step where batch = {'image': float32 [n_d, B, H, W, 3] in [-1, 1],
    'label': int32 [n_d, B]} (one real batch per D update, B = global batch), rng = this step's
    key, and metrics = dict of float32 scalars (D-update terms averaged over the D updates).
    `train_step.builder` is the StepBuilder (benchmarks/compare.py times its d_update and
    g_update exactly as the step runs them).
  """
  b = StepBuilder(config, adapter)
  d_first = config.train.d_first

  def train_step(state, batch, rng):
    n_d, batch_size = batch['image'].shape[:2]
    keys = jax.random.split(rng, n_d + 1)
    carry = DCarry(d=state.d, g_sn=state.g.sn, g_cols=state.g.collections,
                   aug=state.extra.get(AUG),
                   extra={k: v for k, v in state.extra.items() if k != AUG})

    def g_step(g, carry):
      g, carry, metrics = b.g_update(g, carry, keys[-1], batch_size, state.step)
      return g, carry, metrics, b.ema_update(state.ema, g, state.step)

    g = state.g
    if not d_first:
      g, carry, g_metrics, ema = g_step(g, carry)
    # An unrolled Python loop, not lax.scan: on XLA:CPU the scanned (while-loop) D update ran
    # 10x slower than the unrolled one (0.52 s vs 5.2 s per step, cifar10_reacgan:small, batch
    # 32, 2 cores) and compiled 2x slower. Compile time grows with d_updates_per_step instead.
    d_metrics = []
    for i in range(n_d):
      carry, m = b.d_update(g, carry, (batch['image'][i], batch['label'][i], keys[i]),
                            n_d * state.step + i, state.step)
      d_metrics.append(m)
    d_metrics = {k: jnp.mean(jnp.stack([m[k] for m in d_metrics])) for k in d_metrics[0]}
    if d_first:
      g, carry, g_metrics, ema = g_step(g, carry)
    extra = dict(carry.extra)
    if carry.aug is not None:
      extra[AUG] = b.aug.step_end(carry.aug, state.step)
      g_metrics = dict(g_metrics, **b.aug.state_metrics(extra[AUG]))
    new_state = state.replace(step=state.step + 1,
                              g=g.replace(sn=carry.g_sn, collections=carry.g_cols), d=carry.d,
                              ema=ema, extra=extra)
    return new_state, dict(d_metrics, **g_metrics)

  train_step.builder = b
  return train_step


def compile_train_step(config, adapter, mesh):
  """The one jitted step over the mesh: `(state, batch) -> (state, metrics)`, state donated.

  The step key is fold_in(state.rng, state.step), computed inside the jit (no host sync).
  """
  step_fn = make_train_step(config, adapter)

  def train_step(state, batch):
    return step_fn(state, batch, jax.random.fold_in(state.rng, state.step))

  repl = parallel.replicated_sharding(mesh)
  return jax.jit(train_step, in_shardings=(repl, parallel.batch_sharding(mesh, 1)),
                 out_shardings=(repl, repl), donate_argnums=0)
