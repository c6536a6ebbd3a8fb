"""The TrainState: one record per network, the EMA copy, the run's key and recipe state.

  TrainState(step, g: NetState, d: NetState, ema: EmaState | None, rng, extra: dict)
  NetState(params, collections, sn, opt_state)   collections: {'batch_stats': ...} or {}
  EmaState(params, collections, sn)              the EMA generator (config.train.ema)

`extra` holds what a recipe adds: the augmentation's state under 'augment' (an ADA
probability and its accumulator), a stateful loss term's under 'term/<name>'. The whole
TrainState is one pytree: replicated on the mesh, checkpointed and restored as it is. Its
layout number is checkpoints.STATE_LAYOUT (3: SN vectors {'u', 'v'} per leaf and the EMA's own
SN state; 2 kept u only and no EMA SN; 1 was the flat state of the first releases; checkpoints
of another layout are refused by name, never set aside).
"""

import functools
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax

from reacgan_jax.augment import registry as augment
from reacgan_jax.errors import ConfigError
from reacgan_jax.losses import registry as objectives
from reacgan_jax.models.adapter import state_collections
from reacgan_jax.platform import parallel


@flax.struct.dataclass
class NetState:
  """One network: its params, mutable collections, spectral-norm `u`s and optimiser state."""
  params: Any
  collections: Any
  sn: Any
  opt_state: Any


@flax.struct.dataclass
class EmaState:
  """The EMA copy of G: params, collections and its own SN vectors (None in TrainState when the
  EMA is off). `sn` follows StudioGAN's Ema, which lerps every buffer, weight_u / weight_v
  included (spectral_norm.ema_lerp); the EMA generator samples with it."""
  params: Any
  collections: Any
  sn: Any


@flax.struct.dataclass
class TrainState:
  """Everything a run needs to continue bit-exactly; one pytree (replicated on the mesh)."""
  step: jax.Array  # int32 scalar: generator updates done
  g: NetState
  d: NetState
  ema: EmaState | None
  rng: jax.Array  # the run's base key; step keys are fold_in(rng, step)
  extra: dict  # recipe state: 'augment', 'term/<name>'


SCHEDULES = ('constant', 'linear_decay')  # config.optim.schedule


def _learning_rate(config, lr, updates_per_step):
  if config.optim.schedule == 'constant':
    return lr
  if config.optim.schedule == 'linear_decay':
    # The optimiser counts its own updates: D takes d_updates_per_step of them per step.
    return optax.linear_schedule(lr, 0.0, config.train.steps * updates_per_step)
  raise ConfigError(f"config.optim.schedule={config.optim.schedule!r}: expected constant or "
                   'linear_decay')


def make_optimizer(config, which, lazy_c=1.0):
  """Adam of network `which` with config.optim's lr, betas and eps.

  `lazy_c` (objectives.lazy_ratio) < 1 scales lr by c and the betas to beta ** c, StyleGAN2's
  lazy-regularisation correction (stylegan2-ada-pytorch `training_loop.py`, StudioGAN config.py).
  """
  o = config.optim
  lr, per_step = (o.g_lr, 1) if which == 'g' else (o.d_lr, config.train.d_updates_per_step)
  b1, b2 = o.beta1, o.beta2
  if lazy_c != 1.0:
    lr, b1, b2 = lr * lazy_c, b1 ** lazy_c, b2 ** lazy_c
  return optax.adam(_learning_rate(config, lr, per_step), b1=b1, b2=b2, eps=o.eps)


def make_optimizers(config):
  """{'g': tx, 'd': tx}: each network's optimiser, scaled for its lazy terms."""
  return {w: make_optimizer(config, w, objectives.lazy_ratio(
      config, objectives.build_terms(config, w), w)) for w in ('g', 'd')}


def _term_states(config):
  out = {}
  for which in ('d', 'g'):
    for t in objectives.build_terms(config, which):
      if t.init_state is not None:
        out[f'term/{t.name}'] = t.init_state()
  return out


def create_train_state(config, adapter, rng):
  """Initialises params, collections, SN vectors, optimiser states, EMA and recipe state."""
  k_g, k_d, k_gsn, k_dsn, k_run = jax.random.split(rng, 5)
  g_vars, d_vars = adapter.init(k_g, k_d)
  txs = make_optimizers(config)

  def net(which, variables, key):
    params = variables['params']
    return NetState(params=params, collections=state_collections(variables),
                    sn=adapter.init_sn(which, params, key), opt_state=txs[which].init(params))

  g, d = net('g', g_vars, k_gsn), net('d', d_vars, k_dsn)
  ema = None
  if config.train.ema:
    ema = EmaState(params=jax.tree.map(jnp.copy, g.params),
                   collections=jax.tree.map(jnp.copy, g.collections),
                   sn=jax.tree.map(jnp.copy, g.sn))
  extra = dict(_term_states(config))
  aug_state = augment.build(config).init_state()
  if aug_state is not None:
    extra['augment'] = aug_state
  return TrainState(step=jnp.zeros((), jnp.int32), g=g, d=d, ema=ema, rng=k_run, extra=extra)


def init_state(config, adapter, mesh):
  """A fresh, replicated TrainState (initialised inside a jit: no host-to-device copy)."""
  init = jax.jit(functools.partial(create_train_state, config, adapter),
                 out_shardings=parallel.replicated_sharding(mesh))
  return init(jax.random.PRNGKey(config.seed))


def abstract_state(config, adapter, mesh):
  """ShapeDtypeStructs (replicated on `mesh`) of the run's TrainState: the restore target."""
  repl = parallel.replicated_sharding(mesh)
  shapes = jax.eval_shape(functools.partial(create_train_state, config, adapter),
                          jax.random.PRNGKey(config.seed))
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=repl), shapes)
