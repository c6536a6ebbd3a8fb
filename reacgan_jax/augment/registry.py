"""The augmentation seam (`Augmentation`) and its registry (`AUGMENTATIONS`, `build`).

The trainer sees only this interface; DiffAugment (diffaug.py) and StyleGAN2-ADA / APA
(ada_heuristic.py over ada.py's pipeline) plug in here by name (config.train.augment).
"""

from collections.abc import Callable

import jax.numpy as jnp

from reacgan_jax.augment import ada_heuristic
from reacgan_jax.augment.diffaug import diff_augment, parse_policy
from reacgan_jax.errors import ConfigError


class Augmentation:
  """The augmentation seam: `augment(x, key, state) -> x`, `observe(state, out_real, step)`.

  The trainer applies `augment` to reals and fakes in every D update and to the fakes of the G
  update (where StudioGAN's worker applies DiffAugment and ADA), with the state the step
  started from; before that, `mix_reals(real, fake, key, state)` may replace reals (APA). After
  each D update it calls `observe` with D's outputs on the reals it saw (heads.DOutput: `.adv`
  is the logit ADA's r_t reads) and the step index, and once per train step
  `step_end(state, step)`. `init_state()` is the state a new run starts from (None: stateless,
  nothing is stored). Logged scalars: `real_metrics(out_real)` after each D update (averaged over
  the step's D updates, like d_acc_real) and `state_metrics(state)` on the state the step ends
  with. Subclasses override what they use.
  """

  def init_state(self):
    return None

  def augment(self, x, key, state):
    del key, state
    return x

  def mix_reals(self, real, fake, key, state):
    del fake, key, state
    return real

  def observe(self, state, out_real, step):
    del out_real, step
    return state

  def step_end(self, state, step):
    del step
    return state

  def real_metrics(self, out_real):
    del out_real
    return {}

  def state_metrics(self, state):
    del state
    return {}


class DiffAugment(Augmentation):
  """DiffAugment with `policy` (stateless): the same ops on reals and fakes."""

  def __init__(self, policy: str):
    self.policy = policy
    parse_policy(policy)  # validated before anything is traced

  def augment(self, x, key, state):
    del state
    return diff_augment(x, key, self.policy)


class Ada(Augmentation):
  """StyleGAN2-ADA's AugmentPipe and/or APA at an adaptive p (config.ada; ada_heuristic.py).

  p and its accumulators are the state; r_t reads D's logits on the reals of every D update,
  and p moves every config.ada.interval steps (StudioGAN worker.py's rule, global batch).
  """

  def __init__(self, c):
    self.c = c
    self._augment, self._apa, self._update = ada_heuristic.make_fns(c)

  def init_state(self):
    return ada_heuristic.init_state(self.c.initial_p)

  def augment(self, x, key, state):
    return self._augment(x, key, state)

  def mix_reals(self, real, fake, key, state):
    return self._apa(key, real, fake, state)

  def observe(self, state, out_real, step):
    return self._update(state, out_real.adv, step)

  def _on(self):
    return self.c.apply_ada or self.c.apply_apa

  def real_metrics(self, out_real):
    # ada_rt: mean sign(D(real)) of this D update's global batch, the quantity r_t averages
    # (StudioGAN logs it as dis_sign_real); the log's mean over a window is r_t over that window.
    return {'ada_rt': jnp.mean(jnp.sign(out_real.adv))} if self._on() else {}

  def state_metrics(self, state):
    return {'ada_p': state.p} if self._on() else {}  # p at the end of the step (checkpointed)


# name -> builder(config) -> Augmentation, chosen by config.train.augment ('' = DiffAugment when
# config.train.diffaug_policy is set, else none). Tests register test-only augmentations.
AUGMENTATIONS: dict[str, Callable] = {
    'none': lambda config: Augmentation(),
    'diffaug': lambda config: DiffAugment(config.train.diffaug_policy),
    'ada': lambda config: Ada(config.ada),
}


def build(config) -> Augmentation:
  """The run's Augmentation for config.train.augment (see AUGMENTATIONS)."""
  name = config.train.augment or ('diffaug' if parse_policy(config.train.diffaug_policy)
                                  else 'none')
  if name not in AUGMENTATIONS:
    raise ConfigError(f'config.train.augment={name!r}: expected one of '
                     f'{", ".join(sorted(AUGMENTATIONS))} (or \'\' to follow diffaug_policy)')
  return AUGMENTATIONS[name](config)
