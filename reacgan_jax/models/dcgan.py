"""Plain convolutional GANs at 32x32: StudioGAN's `deep_conv` and the ACGAN paper's `dcgan`.

deep_conv (StudioGAN `src/models/deep_conv.py`, widths for g/d_conv_dim = 64):
  G: linear(z) -> 4x4x(8c) -> 3 x [ConvTranspose 4x4 stride 2 -> (c)BN -> ReLU] to 4c, 2c, c
     -> conv3x3 -> tanh; conditional BN on the one-hot label (cond_method != none).
  D: 3 x [conv3x3 -> [BN] -> ReLU -> conv4x4 stride 2 -> [BN] -> ReLU] to d, 2d, 4d
     -> conv3x3 to 8d -> [BN] -> ReLU -> global sum pooling -> h.
dcgan (ACGAN paper, Odena et al. 2017, appendix CIFAR-10 model; widths for g_conv_dim = 96,
d_conv_dim = 16; SPEC 4):
  G: [z, one-hot(y)] -> linear -> ReLU -> 4x4x(4c = 384) -> ConvTranspose 5x5 stride 2 to 2c
     (192), c (96) with BN + ReLU, then to 3 -> tanh.
  D: conv3x3 to d, 2d, 4d, 8d, 16d, 32d (16 ... 512) with strides 2, 1, 2, 1, 2, 1, each followed
     by [BN, not on the first] -> LeakyReLU 0.2 -> dropout (config.model.d_dropout, paper 0.5)
     -> flatten (4x4x32d) -> h; the paper's sigmoid/softmax outputs are the adv / acgan heads.
BN in D only without spectral norm (`use_bn`), StudioGAN's convention for every backbone.
ConvTranspose is the reference's layer here (it is slower than upsample + conv on XLA:CPU).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import heads, layers


def check_image_size(image_size: int, backbone: str) -> None:
  if image_size != 32:
    raise ConfigError(f'config.data.image_size={image_size}: config.model.backbone={backbone!r} '
                     'is defined at 32x32 only; use resnet or biggan for other sizes')


class _GenNorm(nn.Module):
  """(c)BN for the conv generators: conditional on `affine` when given, else affine BN."""
  groups: int
  kernel_init: Callable
  dtype: Any
  backend: str = 'xla'  # config.model.conv_backend (layers.ConditionalBatchNorm)

  @nn.compact
  def __call__(self, x, affine, train: bool):
    if affine is None:
      return layers.BatchNorm(groups=self.groups, dtype=self.dtype, backend=self.backend,
                              name='bn')(x, not train)
    return layers.ConditionalBatchNorm(self.groups, self.kernel_init, self.dtype, self.backend,
                                       name='cbn')(x, affine, not train)


class DeepConvGenerator(nn.Module):
  """z [B, z_dim], y [B] int32 -> images [B, 32, 32, 3] float32 (tanh); see module docstring."""
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
    c = self.conv_dim
    affine = (jax.nn.one_hot(y, self.num_classes, dtype=self.dtype) if self.conditional
              else None)
    h = nn.Dense(8 * c * 16, kernel_init=self.kernel_init, dtype=self.dtype, name='linear0')(
        z.astype(self.dtype)).reshape(-1, 4, 4, 8 * c)
    for i, f in enumerate((4 * c, 2 * c, c)):
      # torch ConvTranspose2d(k=4, s=2, p=1) == lax.conv_transpose padding k - 1 - p = 2: 2x.
      h = nn.ConvTranspose(f, (4, 4), strides=(2, 2), padding=((2, 2), (2, 2)),
                           kernel_init=self.kernel_init, dtype=self.dtype, name=f'deconv{i}')(h)
      h = nn.relu(_GenNorm(self.bn_groups, self.kernel_init, self.dtype, self.conv_backend,
                           name=f'bn{i}')(
          h, affine, train))
      if i + 1 == self.attn_block:
        h = layers.SelfAttention(self.kernel_init, self.dtype, self.conv_backend,
                                 name='attention')(h)
    h = layers.conv(3, 3, self.kernel_init, self.dtype, 'conv_out', backend=self.conv_backend)(h)
    return jnp.tanh(h.astype(jnp.float32))


class _DFields(nn.Module):
  """The fields both 32x32 conv discriminators take (built with keywords by models.BACKBONES)."""
  num_classes: int
  cond_method: str
  conv_dim: int
  embed_dim: int = 512
  use_bn: bool = False
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Any = jnp.float32
  bn_groups: int = 1
  conv_backend: str = 'xla'  # config.model.conv_backend (layers.conv)


class DeepConvDiscriminator(_DFields):
  """x [B, 32, 32, 3], y [B] int32 -> heads.DOutput; see module docstring."""
  attn_block: int = 0

  @nn.compact
  def __call__(self, x, y, train: bool = False):
    d = self.conv_dim
    bn = lambda h, name: (layers.BatchNorm(groups=self.bn_groups, dtype=self.dtype,
                                           backend=self.conv_backend, name=name)(
        h, not train) if self.use_bn else h)
    conv = lambda f, k, s, name: layers.conv(f, k, self.kernel_init, self.dtype, name, stride=s,
                                             padding=1, backend=self.conv_backend)
    h = x.astype(self.dtype)
    for i, f in enumerate((d, 2 * d, 4 * d)):
      h = nn.relu(bn(conv(f, 3, 1, f'block{i}_conv0')(h), f'block{i}_bn0'))
      h = nn.relu(bn(conv(f, 4, 2, f'block{i}_conv1')(h), f'block{i}_bn1'))
      if i + 1 == self.attn_block:
        h = layers.SelfAttention(self.kernel_init, self.dtype, self.conv_backend,
                                 name='attention')(h)
    h = nn.relu(bn(conv(8 * d, 3, 1, 'conv_out')(h), 'bn_out'))
    h = jnp.sum(h.astype(jnp.float32), axis=(1, 2))  # global sum pooling
    h = self.perturb('h', h)
    return heads.DiscriminatorHead(self.cond_method, self.num_classes, self.embed_dim,
                                   self.kernel_init, name='head')(h, y)


class DCGANGenerator(nn.Module):
  """ACGAN paper's CIFAR-10 G: z [B, z_dim], y [B] -> images [B, 32, 32, 3] float32 (tanh)."""
  num_classes: int
  conditional: bool
  conv_dim: int
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Any = jnp.float32
  bn_groups: int = 1
  conv_backend: str = 'xla'  # config.model.conv_backend (layers.conv)

  @nn.compact
  def __call__(self, z, y, train: bool = False):
    c = self.conv_dim
    h = z.astype(self.dtype)
    if self.conditional:  # the paper's 110-d input: 100-d z and the one-hot label
      h = jnp.concatenate([h, jax.nn.one_hot(y, self.num_classes, dtype=self.dtype)], axis=-1)
    h = nn.Dense(4 * c * 16, kernel_init=self.kernel_init, dtype=self.dtype, name='linear0')(h)
    h = nn.relu(h).reshape(-1, 4, 4, 4 * c)
    for i, f in enumerate((2 * c, c)):
      h = nn.ConvTranspose(f, (5, 5), strides=(2, 2), padding='SAME',
                           kernel_init=self.kernel_init, dtype=self.dtype, name=f'deconv{i}')(h)
      h = layers.BatchNorm(groups=self.bn_groups, dtype=self.dtype, backend=self.conv_backend,
                           name=f'bn{i}')(h, not train)
      h = nn.relu(h)
    h = nn.ConvTranspose(3, (5, 5), strides=(2, 2), padding='SAME', kernel_init=self.kernel_init,
                         dtype=self.dtype, name='deconv_out')(h)
    return jnp.tanh(h.astype(jnp.float32))


class DCGANDiscriminator(_DFields):
  """ACGAN paper's CIFAR-10 D: x [B, 32, 32, 3], y [B] -> heads.DOutput (h = flattened features).

  Dropout is active when `train=True` and needs the 'dropout' rng.
  """
  RNG_STREAMS = ('dropout',)  # read by adapter.ModelAdapter: a key per train-mode call
  dropout: float = 0.5

  @nn.compact
  def __call__(self, x, y, train: bool = False):
    d = self.conv_dim
    h = x.astype(self.dtype)
    for i, (m, s) in enumerate(zip((1, 2, 4, 8, 16, 32), (2, 1, 2, 1, 2, 1), strict=True)):
      h = layers.conv(m * d, 3, self.kernel_init, self.dtype, f'conv{i}', stride=s, padding=1,
                      backend=self.conv_backend)(h)
      if self.use_bn and i > 0:
        h = layers.BatchNorm(groups=self.bn_groups, dtype=self.dtype, backend=self.conv_backend,
                             name=f'bn{i}')(h, not train)
      h = nn.leaky_relu(h, 0.2)
      h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = h.astype(jnp.float32).reshape(h.shape[0], -1)
    h = self.perturb('h', h)
    return heads.DiscriminatorHead(self.cond_method, self.num_classes, self.embed_dim,
                                   self.kernel_init, name='head')(h, y)
