"""StyleGAN2 discriminator with StudioGAN's heads (src/models/stylegan2.py: DiscriminatorBlock,
MinibatchStdLayer, DiscriminatorEpilogue, Discriminator). NHWC; names follow the torch tree.

Heads (config.model.cond_method -> StudioGAN d_cond_mtd), all on the epilogue feature h [N, C4]:
  none    'W/O':   adv = linear1(h)                                   (linear1: C4 -> 1)
  acgan   'AC':    adv = linear1(h), class_logits = linear2(h)        (linear2: no bias)
  spd     'SPD':   adv = <linear1(h), mapping(onehot(y))> / sqrt(cmap_dim), the StyleGAN2-ADA
                   projection (mapping: label MappingNetwork, `spd_mapping_layers` FCs, lr 0.01)
  reacgan 'D2DCE': adv = linear1(h), embed = linear2(h), proxy = embedding(onehot(y)) (a
                   one-layer label MappingNetwork). Returned unnormalised: StudioGAN normalises
                   both in D (normalize_d_embed) and our losses.d2d_ce normalises them itself,
                   so the loss values are the same.
StudioGAN's 'PD' branch of this D reads an attribute it never creates (self.embedding) and
cannot run, so 'pd' is refused here. Collections: params only.

Compute dtype (`dtype`, config.model.dtype): the resolution blocks (fromRGB, conv0, conv1, skip)
take and give `dtype` activations ('bfloat16': bf16 convolutions, float32 accumulation); the
epilogue (minibatch std, 4x4 conv, fc) and the heads run in float32, as stylegan2-ada forces its
epilogue to. Parameters and outputs are float32 either way.
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import stylegan2_layers as L
from reacgan_jax.models.heads import DOutput
from reacgan_jax.models.stylegan2_g import MappingNetwork

COND_METHODS = ('none', 'acgan', 'spd', 'reacgan')
ARCHITECTURES = ('orig', 'skip', 'resnet')


class DiscriminatorBlock(nn.Module):
  """fromRGB (first block, or skip), conv0 3x3, conv1 3x3 down x2, resnet 1x1 skip."""
  in_channels: int
  tmp_channels: int
  out_channels: int
  architecture: str = 'resnet'
  conv_clamp: float | None = None
  conv_backend: str = 'xla'  # stylegan2_layers: 'xla' | 'onednn'
  dtype: Any = jnp.float32  # activations (see the module docstring); img stays float32

  @nn.compact
  def __call__(self, x, img):
    conv = lambda n, k, name, **kw: L.Conv2dLayer(n, k, conv_clamp=self.conv_clamp, name=name,
                                                  conv_backend=self.conv_backend, **kw)
    if self.in_channels == 0 or self.architecture == 'skip':
      y = conv(self.tmp_channels, 1, 'fromrgb', activation='lrelu')(img.astype(self.dtype))
      x = x + y if x is not None else y
      img = (L.downsample2d(img, L.setup_filter(), backend=self.conv_backend)
             if self.architecture == 'skip' else None)
    if self.architecture == 'resnet':
      y = L.Conv2dLayer(self.out_channels, 1, use_bias=False, down=2,
                        conv_backend=self.conv_backend, name='skip')(x, gain=math.sqrt(0.5))
      x = conv(self.tmp_channels, 3, 'conv0', activation='lrelu')(x)
      x = conv(self.out_channels, 3, 'conv1', activation='lrelu', down=2)(x, gain=math.sqrt(0.5))
      x = y + x
    else:
      x = conv(self.tmp_channels, 3, 'conv0', activation='lrelu')(x)
      x = conv(self.out_channels, 3, 'conv1', activation='lrelu', down=2)(x)
    return x, img


class DiscriminatorEpilogue(nn.Module):
  """4x4: (skip fromRGB), minibatch std, conv 3x3, fc(C*16 -> C, lrelu) -> h [N, C]."""
  in_channels: int
  architecture: str = 'resnet'
  mbstd_group_size: int | None = 4
  mbstd_num_channels: int = 1
  conv_clamp: float | None = None
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x, img):
    c = self.in_channels
    x = x.astype(jnp.float32)  # float32 whatever the blocks' dtype
    if self.architecture == 'skip':
      x = x + L.Conv2dLayer(c, 1, activation='lrelu', conv_backend=self.conv_backend,
                            name='fromrgb')(img)
    if self.mbstd_num_channels > 0:
      x = L.minibatch_std(x, self.mbstd_group_size, self.mbstd_num_channels)
    x = L.Conv2dLayer(c, 3, activation='lrelu', conv_clamp=self.conv_clamp,
                      conv_backend=self.conv_backend, name='conv')(x)
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)  # torch's NCHW flatten order
    return L.FullyConnected(c, activation='lrelu', name='fc')(x)


class Discriminator(nn.Module):
  """`D.apply({'params': p}, x [N, S, S, C], y [N] int, train=...)` -> heads.DOutput."""
  img_resolution: int
  num_classes: int
  cond_method: str = 'spd'
  img_channels: int = 3
  architecture: str = 'resnet'
  channel_base: int = 32768
  channel_max: int = 512
  conv_clamp: float | None = None
  mbstd_group_size: int | None = 4
  mbstd_num_channels: int = 1
  embed_dim: int = 512  # StudioGAN d_embed_dim (reacgan)
  spd_mapping_layers: int = 8  # StudioGAN passes mapping_kwargs={} -> MappingNetwork's 8
  embed_mapping_layers: int = 1
  conv_backend: str = 'xla'  # stylegan2_layers: 'xla' | 'onednn' (config.model.conv_backend)
  dtype: Any = jnp.float32  # the blocks' activations (config.model.dtype; module docstring)

  def channels(self, res):
    return min(self.channel_base // res, self.channel_max)

  def check(self):
    if self.cond_method not in COND_METHODS:
      raise ConfigError(f'config.model.cond_method={self.cond_method!r}: the stylegan2 '
                       f'discriminator takes one of {", ".join(COND_METHODS)} (StudioGAN\'s '
                       'PD branch of this D does not run)')
    if self.architecture not in ARCHITECTURES:
      raise ConfigError(f'model.stylegan2.d_architecture={self.architecture!r}: expected one '
                       f'of {ARCHITECTURES}')

  @nn.compact
  def __call__(self, img, y, train=False):
    self.check()
    del train  # the reference D has no train/eval difference
    log2 = int(math.log2(self.img_resolution))
    img = img.astype(jnp.float32)
    x = None
    for res in [2 ** i for i in range(log2, 2, -1)]:
      cin = self.channels(res) if res < self.img_resolution else 0
      x, img = DiscriminatorBlock(cin, self.channels(res), self.channels(res // 2),
                                  self.architecture, self.conv_clamp, self.conv_backend,
                                  self.dtype, name=f'b{res}')(x, img)
    c4 = self.channels(4)
    h = DiscriminatorEpilogue(c4, self.architecture, self.mbstd_group_size,
                              self.mbstd_num_channels, self.conv_clamp, self.conv_backend,
                              name='b4')(x, img)
    return self.heads(h, y, c4)

  def heads(self, h, y, c4):
    onehot = jax.nn.one_hot(y, self.num_classes)
    class_logits = embed = proxy = None
    if self.cond_method == 'spd':
      cmap_dim = c4  # cmap_dim=None in StudioGAN -> channels at 4x4
      e = L.FullyConnected(cmap_dim, name='linear1')(h)
      cmap = MappingNetwork(0, self.num_classes, cmap_dim, None, self.spd_mapping_layers,
                            w_avg_beta=None, name='mapping')(None, onehot)
      adv = jnp.sum(e * cmap, axis=1) * (1 / math.sqrt(cmap_dim))
    else:
      adv = L.FullyConnected(1, name='linear1')(h)[:, 0]
    if self.cond_method == 'acgan':
      class_logits = L.FullyConnected(self.num_classes, use_bias=False, name='linear2')(h)
    elif self.cond_method == 'reacgan':
      embed = L.FullyConnected(self.embed_dim, name='linear2')(h)
      proxy = MappingNetwork(0, self.num_classes, self.embed_dim, None,
                             self.embed_mapping_layers, w_avg_beta=None, name='embedding')(
                                 None, onehot)
    return DOutput(adv=adv, class_logits=class_logits, embed=embed, proxy=proxy, h=h)
