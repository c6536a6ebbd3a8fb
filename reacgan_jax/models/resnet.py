"""ResNet GAN (SNGAN / ProjGAN / ACGAN-Mod backbone): StudioGAN `src/models/resnet.py` at HEAD.

G: linear(z) -> 4x4 -> residual up-blocks whose conditional BN takes the one-hot label (HEAD
code; an older revision used a 128-wide shared embedding, CIFAR10 SNGAN G 4,668,163 params; this
is the HEAD one, 4,304,387) -> BN -> ReLU -> conv3x3 -> tanh. Unconditional (cond_method none):
plain BN. D (identical to BigGAN's D in the reference, reused by biggan.py): optimized first
block, residual down-blocks, optional attention, ReLU, global sum pooling -> h -> heads.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import heads, layers

# Channel multipliers per resolution (StudioGAN g/d_in/out_dims_collection, also big_resnet's).
G_IN = {32: (4, 4, 4), 64: (16, 8, 4, 2), 128: (16, 16, 8, 4, 2), 256: (16, 16, 8, 8, 4, 2),
        512: (16, 16, 8, 8, 4, 2, 1)}
G_OUT = {32: (4, 4, 4), 64: (8, 4, 2, 1), 128: (16, 8, 4, 2, 1), 256: (16, 8, 8, 4, 2, 1),
         512: (16, 8, 8, 4, 2, 1, 1)}
D_OUT = {32: (2, 2, 2, 2), 64: (1, 2, 4, 8, 16), 128: (1, 2, 4, 8, 16, 16),
         256: (1, 2, 4, 8, 8, 16, 16), 512: (1, 1, 2, 4, 8, 8, 16, 16)}
D_DOWN = {32: (True, True, False, False), 64: (True,) * 4 + (False,),
          128: (True,) * 5 + (False,), 256: (True,) * 6 + (False,), 512: (True,) * 7 + (False,)}
BOTTOM = 4  # G's first feature map is 4x4 at every resolution


def check_image_size(image_size: int) -> None:
  if image_size not in G_IN:
    raise ConfigError(f'config.data.image_size={image_size}: the resnet/biggan backbones support '
                     f'{", ".join(map(str, G_IN))}')


class ResNetGenerator(nn.Module):
  """z [B, z_dim], y [B] int32 -> images [B, S, S, 3] float32 in [-1, 1] (tanh).

  `train=True` normalises with batch statistics (updating the running ones when
  'batch_stats' is mutable); `train=False` with the running statistics.
  """
  image_size: int
  num_classes: int
  conditional: bool
  conv_dim: int
  attn_block: int = 0
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Any = jnp.float32
  bn_groups: int = 1
  conv_backend: str = 'xla'  # config.model.conv_backend (layers.conv)

  @nn.compact
  def __call__(self, z, y, train: bool = False):
    check_image_size(self.image_size)
    ins = [m * self.conv_dim for m in G_IN[self.image_size]]
    outs = [m * self.conv_dim for m in G_OUT[self.image_size]]
    affine = (jax.nn.one_hot(y, self.num_classes, dtype=self.dtype) if self.conditional
              else None)
    h = nn.Dense(ins[0] * BOTTOM * BOTTOM, kernel_init=self.kernel_init, dtype=self.dtype,
                 name='linear0')(z.astype(self.dtype))
    # torch views the linear output as (C, 4, 4); the order of a learned output is immaterial.
    h = h.reshape(-1, BOTTOM, BOTTOM, ins[0])
    for i, f in enumerate(outs):
      h = layers.GenBlock(f, self.bn_groups, self.kernel_init, self.dtype, self.conv_backend,
                          name=f'block{i}')(
          h, affine, train)
      if i + 1 == self.attn_block:
        h = layers.SelfAttention(self.kernel_init, self.dtype, self.conv_backend,
                                 name='attention')(h)
    h = layers.BatchNorm(groups=self.bn_groups, dtype=self.dtype, backend=self.conv_backend,
                         name='bn_out')(h, not train)
    h = layers.conv(3, 3, self.kernel_init, self.dtype, 'conv_out',
                    backend=self.conv_backend)(nn.relu(h))
    return jnp.tanh(h.astype(jnp.float32))


class ResNetDiscriminator(nn.Module):
  """x [B, S, S, 3], y [B] int32 -> heads.DOutput (big_resnet / resnet Discriminator).

  `use_bn`: BN in the blocks, which the reference uses only when D has no spectral norm.
  The pooled h is marked with `self.perturb('h', ...)` so the trainer can measure the
  conditional loss's gradient with respect to it.
  """
  image_size: int
  num_classes: int
  cond_method: str
  conv_dim: int
  embed_dim: int = 512
  attn_block: int = 0
  use_bn: bool = False
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Any = jnp.float32
  bn_groups: int = 1
  conv_backend: str = 'xla'  # config.model.conv_backend (layers.conv)

  @nn.compact
  def __call__(self, x, y, train: bool = False):
    check_image_size(self.image_size)
    outs = [m * self.conv_dim for m in D_OUT[self.image_size]]
    down = D_DOWN[self.image_size]
    kw = dict(use_bn=self.use_bn, groups=self.bn_groups, kernel_init=self.kernel_init,
              dtype=self.dtype, conv_backend=self.conv_backend)
    h = x.astype(self.dtype)
    for i, f in enumerate(outs):
      if i == 0:
        h = layers.DiscOptBlock(f, name='block0', **kw)(h, train)
      else:
        h = layers.DiscBlock(f, downsample=down[i], name=f'block{i}', **kw)(h, train)
      if i + 1 == self.attn_block:
        h = layers.SelfAttention(self.kernel_init, self.dtype, self.conv_backend,
                                 name='attention')(h)
    # Global SUM pooling (not mean) over the spatial positions, as in the reference.
    h = jnp.sum(nn.relu(h).astype(jnp.float32), axis=(1, 2))
    h = self.perturb('h', h)
    return heads.DiscriminatorHead(self.cond_method, self.num_classes, self.embed_dim,
                                   self.kernel_init, name='head')(h, y)
