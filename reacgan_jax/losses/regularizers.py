"""StyleGAN2's regularisers as loss terms: 'r1' (D) and 'pl' (G) in registry.TERMS.

Named in `config.loss.d_terms` / `g_terms`; formulas in losses/stylegan2.py (checked there
against finite differences). StudioGAN src/worker.py applies them:
  r1  every STYLEGAN.d_reg_interval D updates (counted as d_updates_per_step * step + i), on a
      fresh forward of the reals with gradient w.r.t. the reals BEFORE augmentation, weight
      LOSS.r1_lambda, scaled by the interval; r1_place inside_loop = our place 'inside' (added
      to that update's gradient), outside_loop = 'separate' (its own Adam step after it).
      Differences: the reference's R1 forward also feeds ADA's sign accumulator; ours does not
      (one forward in 16 updates of the CIFAR configs).
  pl  every STYLEGAN.g_reg_interval G updates, on a fresh batch (the first B // pl_batch_shrink
      of it; StudioGAN draws batch_size // 2 anew), without style mixing, weight pl_weight,
      decay pl_decay; its running mean is the term's state (TrainState.extra['term/pl']).
With r1 (or pl) at interval 1 the term runs every update, unscaled, on its own forward.
"""

import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.losses import stylegan2 as stylegan2_losses
from reacgan_jax.losses.terms import Term


def _only(which, expected, name):
  if which != expected:
    raise ConfigError(f"config.loss.{which}_terms: {name!r} is a {expected.upper()} term; list it "
                     f"in config.loss.{expected}_terms")


def r1_term(config, which):
  """R1: mean_b |d adv_b / d x_b|^2 / 2 on the reals (x before augmentation)."""
  _only(which, 'd', 'r1')
  loss = config.loss

  def fn(ctx):
    return stylegan2_losses.r1_penalty(lambda x: ctx.apply(x, ctx.labels).adv, ctx.real,
                                       gamma=1.0)

  return Term('r1', fn, weight=loss.r1_lambda, interval=loss.r1_interval,
                         place=loss.r1_place)


def pl_term(config, which):
  """Path-length regularisation of a StyleGAN2 G (needs its mapping / synthesis split)."""
  _only(which, 'g', 'pl')
  if config.model.backbone != 'stylegan2':
    raise ConfigError(f"config.loss.g_terms: 'pl' needs backbone stylegan2 (its ws), not "
                     f"{config.model.backbone!r}")
  loss = config.loss
  if loss.pl_interval < 2:
    raise ConfigError(f'config.loss.pl_interval={loss.pl_interval}: the path-length term runs '
                     'on its own fresh batch every k >= 2 G updates (lazy), as in StyleGAN2')

  def fn(ctx):
    value, mean, _ = stylegan2_losses.path_length_penalty(
        ctx.synthesize, ctx.ws, ctx.key, ctx.state, weight=1.0, decay=loss.pl_decay,
        batch_shrink=loss.pl_batch_shrink)
    return value, mean

  return Term('pl', fn, weight=loss.pl_weight, interval=loss.pl_interval,
                         place='separate', init_state=lambda: jnp.zeros((), jnp.float32))
