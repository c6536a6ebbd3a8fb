"""D and G objectives as lists of named terms, each with a weight and an interval.

A `Term` is `weight * fn(ctx)`. The step sums the every-step terms (interval 1) of a network
into that network's loss for each update. A term with interval k > 1 is StyleGAN2's lazy
regularisation (Karras et al. 2020, stylegan2-ada-pytorch `training_loop.py` phases): it runs
only on updates whose index is a multiple of k, scaled by k, inside `lax.cond` (one compiled
step; the branch that does not run costs nothing but the predicate), either added to the
gradient of that update (`place='inside'`, StudioGAN `r1_place: inside_loop`) or as an
optimiser step of its own after it (`place='separate'`, `outside_loop`). When
`config.optim.lazy_scaling` is on, a network with lazy terms gets Adam with lr * c and
betas ** c, c = k / (k + 1) (`lazy_ratio`).

Every-step terms read the outputs of the update's shared forward pass (`ctx.out_real`,
`ctx.out_fake`); a lazy term runs its own forward (`ctx.apply(x, y)`, with `ctx.out_*` None).
A term may keep state (a path-length running mean): give it `init_state`, and its fn returns
`(value, new_state)`; the state lives in `TrainState.extra['term/<name>']`.

Conditional losses come from `COND_LOSSES`, keyed by `config.model.cond_method`: one list of
methods (models/heads.py builds the heads they read), one place to add one.
"""

import dataclasses
from collections.abc import Callable

import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.losses import gan as losses
from reacgan_jax.losses import regularizers
from reacgan_jax.losses.terms import Term

# ---- conditional losses ---------------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class CondLoss:
  """A conditional loss: `fn(config) -> loss(out, labels)`; `needs` = DOutput fields it reads."""
  build: Callable
  needs: tuple[str, ...] = ()


def _zero(config):
  del config
  return lambda out, labels: jnp.zeros((), jnp.float32)


def _acgan(config):
  del config
  return lambda out, labels: losses.acgan_ce(out.class_logits, labels)


def _d2d_ce(config):
  margin_pos = config.loss.margin_pos
  margin_neg = None if config.loss.margin_neg < 0 else config.loss.margin_neg
  if not config.loss.margins:  # ablation: m_p = 1, m_n = -1 clip no pair (cosines lie in [-1, 1])
    margin_pos, margin_neg = 1.0, -1.0

  def d2d(out, labels):
    return losses.d2d_ce(out.embed, out.proxy, labels, temperature=config.loss.temperature,
                         margin_pos=margin_pos, margin_neg=margin_neg,
                         row_max_shift=config.loss.row_max_shift,
                         false_negative_removal=config.loss.false_negative_removal)

  return d2d


# none / pd / spd (the projection lives inside D's adversarial logit: BigGAN's pd, StyleGAN2-
# ADA's cmap projection spd) have no separate term.
COND_LOSSES = {
    'none': CondLoss(_zero),
    'acgan': CondLoss(_acgan, needs=('class_logits',)),
    'pd': CondLoss(_zero),
    'spd': CondLoss(_zero),
    'reacgan': CondLoss(_d2d_ce, needs=('embed', 'proxy')),
}


def check_cond_method(cond_method: str) -> None:
  if cond_method not in COND_LOSSES:
    raise ConfigError(f'config.model.cond_method={cond_method!r}: expected one of '
                     f'{", ".join(COND_LOSSES)}')


def make_cond_loss(config):
  """`cond_loss(out, labels) -> scalar` for config.model.cond_method, with config.loss's knobs.

  `out` is the discriminator's output structure (class_logits for acgan; embed and proxy for
  reacgan). pd and none have no separate conditional term (zero).
  """
  check_cond_method(config.model.cond_method)
  return COND_LOSSES[config.model.cond_method].build(config)


# ---- extra terms by name --------------------------------------------------------------------

# name -> builder(config, which) -> Term, for `config.loss.d_terms` / `g_terms` (comma lists).
# Every term of the library is registered here, in one place; tests add test-only terms with
# `register_term`.
TERMS: dict[str, Callable] = {
    'r1': regularizers.r1_term,  # StyleGAN2's R1 on the reals (D)
    'pl': regularizers.pl_term,  # StyleGAN2's path-length regularisation (G)
}


def register_term(name: str):
  """Decorator: `@register_term('r1') def build(config, which) -> Term`."""

  def deco(builder):
    TERMS[name] = builder
    return builder

  return deco


def _names(spec: str) -> list[str]:
  return [n.strip() for n in spec.split(',') if n.strip()]


def build_terms(config, which: str) -> tuple[Term, ...]:
  """The terms of network `which` ('d' or 'g'): adversarial, conditional, then config's extras."""
  if which not in ('d', 'g'):
    raise ValueError(f"build_terms: which={which!r}, expected 'd' or 'g'")
  d_adv, g_adv = losses.adversarial_losses(config.loss.adv)
  cond = make_cond_loss(config)
  if which == 'd':
    terms = [Term('adv', lambda c: d_adv(c.out_real.adv, c.out_fake.adv)),
             Term('cond', lambda c: cond(c.out_real, c.labels), config.loss.cond_lambda)]
  else:
    terms = [Term('adv', lambda c: g_adv(c.out_fake.adv)),
             Term('cond', lambda c: cond(c.out_fake, c.fake_labels), config.loss.cond_lambda)]
  key = f'{which}_terms'
  for name in _names(config.loss[key]):
    if name not in TERMS:
      raise ConfigError(f'config.loss.{key}: unknown term {name!r}; registered: '
                       f'{", ".join(sorted(TERMS)) or "none"}')
    terms.append(TERMS[name](config, which))
  names = [t.name for t in terms]
  if len(set(names)) != len(names):
    raise ConfigError(f'config.loss.{key}: a term appears twice ({", ".join(names)})')
  return tuple(terms)


def lazy_ratio(config, terms, which: str | None = None) -> float:
  """c = k / (k + 1) of the network's lazy term (1.0 without one, or with scaling off).

  With `which`, config.optim.<which>_lazy_interval > 0 sets k itself (StudioGAN scales every
  StyleGAN2 optimiser by STYLEGAN.g/d_reg_interval, regulariser on or off); it must agree with
  the network's lazy term when there is one; k = 1 gives c = 1.
  """
  intervals = {t.interval for t in terms if t.lazy}
  if not config.optim.lazy_scaling:
    return 1.0
  if len(intervals) > 1:
    raise ValueError(f'lazy terms with different intervals {sorted(intervals)} on one network: '
                     'the optimiser scaling c = k / (k + 1) needs one k')
  fixed = config.optim[f'{which}_lazy_interval'] if which else -1
  if fixed > 0:
    if intervals and intervals != {fixed}:
      raise ConfigError(f'config.optim.{which}_lazy_interval={fixed} but the {which} lazy term '
                       f'runs every {intervals.pop()} updates: set them equal (or -1)')
    return 1.0 if fixed == 1 else fixed / (fixed + 1)
  if not intervals:
    return 1.0
  k = intervals.pop()
  return k / (k + 1)
