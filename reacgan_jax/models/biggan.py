"""BigGAN ("big_resnet") generator: StudioGAN `src/models/big_resnet.py` (SPEC.md section 3).

Hierarchical z: z [B, z_dim] is split into num_blocks + 1 chunks; the first feeds linear0
(-> 4x4 feature map), chunk i + 1 joins the shared class embedding (width shared_dim, NOT
spectral-normalised) as the affine input [shared(y), z_chunk] of block i's conditional BNs.
Then BN -> ReLU -> conv3x3 -> tanh. The discriminator is the ResNet one (identical in the
reference): `resnet.ResNetDiscriminator`.
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import layers, resnet


def num_blocks(image_size: int) -> int:
  resnet.check_image_size(image_size)
  return len(resnet.G_IN[image_size])


def check_z_dim(z_dim: int, image_size: int) -> None:
  n = num_blocks(image_size) + 1
  if z_dim % n:
    raise ConfigError(f'config.model.z_dim={z_dim}: BigGAN at {image_size}px splits z into {n} '
                     f'equal chunks, so z_dim must be a multiple of {n}')


class BigGANGenerator(nn.Module):
  """z [B, z_dim], y [B] int32 -> images [B, S, S, 3] float32 in [-1, 1] (tanh).

  `train=True` uses batch statistics in every BN (running ones updated when 'batch_stats' is
  mutable); `train=False` the running statistics. Unconditional (`conditional=False`): the
  affine input is the z chunk alone and there is no shared embedding.
  """
  image_size: int
  num_classes: int
  conditional: bool
  conv_dim: int
  z_dim: int
  shared_dim: int = 128
  attn_block: int = 0
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Any = jnp.float32
  bn_groups: int = 1
  conv_backend: str = 'xla'  # config.model.conv_backend (layers.conv)

  @nn.compact
  def __call__(self, z, y, train: bool = False):
    check_z_dim(self.z_dim, self.image_size)
    if z.shape[-1] != self.z_dim:
      raise ValueError(f'z has {z.shape[-1]} features, expected config.model.z_dim={self.z_dim}')
    ins = [m * self.conv_dim for m in resnet.G_IN[self.image_size]]
    outs = [m * self.conv_dim for m in resnet.G_OUT[self.image_size]]
    chunks = jnp.split(z.astype(self.dtype), len(outs) + 1, axis=-1)
    if self.conditional:
      shared = nn.Embed(self.num_classes, self.shared_dim, embedding_init=self.kernel_init,
                        name='shared_embedding')(y).astype(self.dtype)
      affines = [jnp.concatenate([shared, c], axis=-1) for c in chunks[1:]]
    else:
      affines = chunks[1:]
    h = nn.Dense(ins[0] * resnet.BOTTOM ** 2, kernel_init=self.kernel_init, dtype=self.dtype,
                 name='linear0')(chunks[0])
    h = h.reshape(-1, resnet.BOTTOM, resnet.BOTTOM, ins[0])
    for i, f in enumerate(outs):
      h = layers.GenBlock(f, self.bn_groups, self.kernel_init, self.dtype, self.conv_backend,
                          name=f'block{i}')(
          h, affines[i], train)
      if i + 1 == self.attn_block:
        h = layers.SelfAttention(self.kernel_init, self.dtype, self.conv_backend,
                                 name='attention')(h)
    h = layers.BatchNorm(groups=self.bn_groups, dtype=self.dtype, backend=self.conv_backend,
                         name='bn_out')(h, not train)
    h = layers.conv(3, 3, self.kernel_init, self.dtype, 'conv_out',
                    backend=self.conv_backend)(nn.relu(h))
    return jnp.tanh(h.astype(jnp.float32))
