"""Discriminator heads on the pooled feature h (SPEC.md section 3), and D's output structure.

  none    adv = linear(h) -> 1
  acgan   + class_logits = SN-linear(h -> classes, no bias)
  pd      adv += <SN-embedding(classes, F)(y), h>                    (projection discriminator)
  reacgan embed = SN-linear(h -> embed_dim, with bias), proxy = SN-embedding(classes, embed_dim)(y)

embed and proxy are returned unnormalised; losses.d2d_ce L2-normalises them (the reference's
normalize_d_embed=True). Heads compute in float32 whatever the backbone's dtype: they are tiny
and their outputs feed the losses directly.
"""

from collections.abc import Callable
from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError

# Conditioning methods D can be built with (spd: StyleGAN2-ADA's projection, stylegan2_d.py).
# Each has a conditional loss of the same name in losses/registry.py (a test checks the match).
COND_METHODS = ('none', 'acgan', 'pd', 'spd', 'reacgan')


def check_cond_method(cond_method: str) -> None:
  if cond_method not in COND_METHODS:
    raise ConfigError(f'config.model.cond_method={cond_method!r}: expected one of '
                     f'{", ".join(COND_METHODS)}')


class DOutput(NamedTuple):
  """What the discriminator returns (all float32).

  adv: [B] adversarial logit (projection term included for pd).
  class_logits: [B, num_classes] for acgan, else None.
  embed: [B, embed_dim] D's embedding of each sample (reacgan), else None.
  proxy: [B, embed_dim] proxy row of each sample's label (reacgan), else None.
  h: [B, F] the pooled feature the heads read.
  """
  adv: jax.Array
  class_logits: jax.Array | None
  embed: jax.Array | None
  proxy: jax.Array | None
  h: jax.Array


class DiscriminatorHead(nn.Module):
  """Maps h [B, F] and labels y [B] int32 to a `DOutput`.

  Parameter names (used by `models.sn_predicate` and the tests): adv_linear, class_linear,
  embed_linear, class_embedding.
  """
  cond_method: str
  num_classes: int
  embed_dim: int
  kernel_init: Callable = nn.initializers.orthogonal()

  @nn.compact
  def __call__(self, h, y):
    check_cond_method(self.cond_method)
    h = h.astype(jnp.float32)
    dense = lambda n, bias, name: nn.Dense(n, use_bias=bias, kernel_init=self.kernel_init,
                                           name=name)
    embed = lambda n: nn.Embed(self.num_classes, n, embedding_init=self.kernel_init,
                               name='class_embedding')
    adv = dense(1, True, 'adv_linear')(h)[:, 0]
    class_logits = proxy = emb = None
    if self.cond_method == 'acgan':
      class_logits = dense(self.num_classes, False, 'class_linear')(h)
    elif self.cond_method == 'pd':
      adv = adv + jnp.sum(embed(h.shape[-1])(y) * h, axis=-1)
    elif self.cond_method == 'reacgan':
      emb = dense(self.embed_dim, True, 'embed_linear')(h)
      proxy = embed(self.embed_dim)(y)
    return DOutput(adv=adv, class_logits=class_logits, embed=emb, proxy=proxy, h=h)
