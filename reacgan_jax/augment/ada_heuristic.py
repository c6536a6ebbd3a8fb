"""Adaptive augmentation probability (ADA / APA heuristic r_t) and APA's real/fake swap.

Port of StudioGAN `src/worker.py` (`train_discriminator`, "apply ada heuristics") and
`src/utils/apa_aug.py` (Jiang et al., 2021, "Deceive D: Adaptive Pseudo Augmentation"):

- Every D update (every accumulation micro-batch) the reference adds sum(sign(D(x_real))) and the
  per-device batch size to a running pair, where x_real are the reals after APA and after the
  augmentation, i.e. the logits D saw. `accumulate` does that on the global batch: under jit
  over a Mesh, jnp.sum of the sharded array is the all-reduced sum, so every device holds the
  same numbers (the reference all-reduces only at adjustment time; the totals are equal).
- When `step % interval == 0` (step = the generator step counter, 0 first; the check sits inside
  the D-update loop, once per D update), r_t = sum / count and
  p <- clip(p + sign(r_t - target) * count / (kimg * 1000), 0, 1); the pair is then reset.
  `adjust` is that update; `maybe_adjust` gates it on the step for use inside a jitted step.
- Fixed-p mode: target None (StudioGAN's `ada_target: null`), p never changes.
- APA (`apa_mix`): each real is replaced by the detached fake with probability p.

One p serves ADA and APA together, as in the reference (`aa_p`).
"""

import flax
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from reacgan_jax.augment import ada, ada_params
from reacgan_jax.errors import ConfigError


@flax.struct.dataclass
class AdaState:
  """p: float32 []; sign_sum / count: int32 [] accumulated since the last adjustment."""
  p: jax.Array
  sign_sum: jax.Array
  count: jax.Array


def init_state(p=0.0) -> AdaState:
  return AdaState(p=jnp.asarray(p, jnp.float32), sign_sum=jnp.zeros((), jnp.int32),
                  count=jnp.zeros((), jnp.int32))


def accumulate(state: AdaState, d_real_logits) -> AdaState:
  """Adds sign(D(real)) of one D update's global batch. d_real_logits: [B] or [B, 1]."""
  signs = jnp.sign(d_real_logits).astype(jnp.int32)
  return state.replace(sign_sum=state.sign_sum + jnp.sum(signs),
                       count=state.count + d_real_logits.shape[0])


def _sign_minus(r, target: float):
  """sign(r - target) with r float32 and target compared as a float64, like the reference.

  The reference takes r = (float32 sum / float32 count).item() and subtracts the Python target
  in double precision: fl32(0.6) - 0.6 > 0. Splitting target = hi + lo (hi = fl32(target))
  gives the same sign with float32 ops: r - hi is exact when it is small (Sterbenz).
  """
  hi = np.float32(target)
  lo = np.float32(np.float64(target) - np.float64(hi))
  d = r - hi
  return jnp.where(d != 0, jnp.sign(d), -jnp.sign(lo)).astype(jnp.float32)


def heuristic(state: AdaState):
  """r_t = mean sign(D(real)) since the last adjustment (0 before any accumulation)."""
  return state.sign_sum.astype(jnp.float32) / jnp.maximum(state.count, 1).astype(jnp.float32)


def adjust(state: AdaState, target: float, kimg: float) -> AdaState:
  """One adjustment: p += sign(r_t - target) * count / (kimg * 1000), clipped; counters reset."""
  # XLA rewrites x / constant as x * (1 / constant), which is off by an ulp; the barrier keeps a
  # correctly rounded division (same float32 value as the reference's double quotient).
  images = jax.lax.optimization_barrier(jnp.float32(kimg * 1000))
  step = _sign_minus(heuristic(state), target) * (state.count.astype(jnp.float32) / images)
  p = jnp.clip(state.p + step, 0., 1.)
  return AdaState(p=p, sign_sum=jnp.zeros_like(state.sign_sum),
                  count=jnp.zeros_like(state.count))


def maybe_adjust(state: AdaState, step, interval: int, target, kimg: float) -> AdaState:
  """`adjust` when step % interval == 0 (jit-friendly); target None = fixed p, no change."""
  if target is None:
    return state
  new = adjust(state, target, kimg)
  due = jnp.asarray(step) % interval == 0
  return jax.tree.map(lambda a, b: jnp.where(due, a, b), new, state)


def apa_mix(key, reals, fakes, p):
  """APA: each real [B, ...] replaced by stop_gradient(fake) with probability p."""
  u = jax.random.uniform(key, (reals.shape[0],) + (1,) * (reals.ndim - 1))
  return jnp.where(u < p, jax.lax.stop_gradient(fakes), reals)


def default_config() -> ml_collections.ConfigDict:
  """Draft config keys for the trainer (StudioGAN src/config.py AUG, ReACGAN-ADA.yaml values)."""
  c = ml_collections.ConfigDict()
  c.apply_ada = False  # AUG.apply_ada: AugmentPipe on reals and fakes before D
  c.apply_apa = False  # AUG.apply_apa: swap reals for detached fakes with probability p
  c.preset = 'bgc'  # AUG.ada_aug_type: blit geom color filter noise cutout bg bgc bgcf bgcfn bgcfnc
  c.initial_p = 0.0  # AUG.ada_initial_augment_p (ReACGAN-ADA.yaml: 0)
  c.target = 0.7  # AUG.ada_target (ReACGAN-ADA.yaml 0.7; StyleGAN2-ADA.yaml 0.6); < 0 = fixed p
  c.kimg = 500  # AUG.ada_kimg: images for p to move by 1
  c.interval = 4  # AUG.ada_interval: adjust p every this many generator steps
  c.exact_blits = True  # ours: exact flips/rot90/int shifts for samples without other geometry
  return c


def _number(v) -> bool:
  return not isinstance(v, bool) and isinstance(v, int | float)


def check_config(c: ml_collections.ConfigDict):
  """ConfigError naming the first config.ada key that cannot work (validate.py calls it when the
  config is read, make_fns again before building)."""
  if c.preset not in ada_params.PRESETS:
    raise ConfigError(f'config.ada.preset={c.preset!r}: expected one of '
                      f'{", ".join(ada_params.PRESETS)}.')
  if c.target is not None and (not _number(c.target) or c.target > 1):
    raise ConfigError(f'config.ada.target={c.target!r}: expected a number in [0, 1] (the r_t that '
                      'p steers to), or < 0 for a fixed p.')
  if isinstance(c.interval, bool) or not isinstance(c.interval, int) or c.interval < 1:
    raise ConfigError(f'config.ada.interval={c.interval!r}: must be an integer >= 1 (generator '
                      'steps between adjustments of p).')
  if not _number(c.kimg) or c.kimg <= 0:
    raise ConfigError(f'config.ada.kimg={c.kimg!r}: must be a number > 0 (thousands of images '
                      'for p to move by 1).')
  if not _number(c.initial_p) or not 0 <= c.initial_p <= 1:
    raise ConfigError(f'config.ada.initial_p={c.initial_p!r}: must be a number in [0, 1].')


def make_fns(c: ml_collections.ConfigDict):
  """(augment, apa, update) for the trainer's augmentation seam, from `default_config()` keys.

  augment(x, key, state) -> x: AugmentPipe at strength state.p (identity without apply_ada).
  apa(key, reals, fakes, state) -> reals: APA swap at state.p (reals unchanged without apply_apa).
  update(state, d_real_logits, step) -> state: accumulate, then adjust when step % interval == 0
  (target None: p fixed). Call update once per D update with D's adversarial logits on the
  reals it saw (after APA and augmentation) and the generator step counter (0 first).
  """
  check_config(c)
  spec = ada_params.preset(c.preset, exact_blits=c.exact_blits)
  target = None if c.target is None or c.target < 0 else c.target  # < 0 (None): fixed p

  def augment(x, key, state):
    return ada.ada_augment(x, key, state.p, spec) if c.apply_ada else x

  def apa(key, reals, fakes, state):
    return apa_mix(key, reals, fakes, state.p) if c.apply_apa else reals

  def update(state, d_real_logits, step):
    if not (c.apply_ada or c.apply_apa):
      return state
    state = accumulate(state, d_real_logits)
    return maybe_adjust(state, step, c.interval, target, c.kimg)

  return augment, apa, update
