"""StyleGAN2 generator (StudioGAN src/models/stylegan2.py: MappingNetwork, SynthesisLayer,
ToRGBLayer, SynthesisBlock, SynthesisNetwork, Generator; style mixing from utils/sample.py
`stylegan_generate_images`). NHWC; parameter names follow the torch module tree.

Variable collections:
  params           every trainable weight (same count and shapes as the torch parameters)
  stylegan2_state  mapping/w_avg [w_dim] (tracked mean of W; written only when
                   `update_w_avg=True` and the collection is mutable) and
                   synthesis/b{res}/conv{0,1}/noise_const [res, res] (fixed, drawn at init)
Compute dtype (`dtype`, config.model.dtype): the synthesis blocks' activations and convolutions
('bfloat16': bf16 operands, float32 accumulation, weights cast per call); the mapping network,
styles, demodulation coefficients and the RGB skip sum stay float32 (stylegan2-ada's mixed
precision keeps the same parts in float32). Parameters and outputs are float32 either way.
rng streams (apply time):
  noise    per-pixel noise for noise_mode='random' (the default, as in the reference)
  mixing   style mixing (second z, cutoff, coin), only when train=True and style_mixing_prob > 0
"""

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import stylegan2_layers as L

STATE = 'stylegan2_state'
NOISE_MODES = ('random', 'const', 'none')


class MappingNetwork(nn.Module):
  """z [N, z_dim] (z_dim 0 = none), c one-hot [N, c_dim] (0 = none) -> w [N, (num_ws,) w_dim].

  x = concat(norm2(z), norm2(embed(c))) -> num_layers lrelu FCs with lr multiplier. Truncation
  w <- w_avg + psi (w - w_avg) on the first `cutoff` ws (all when None). With num_ws None and
  w_avg_beta None (the discriminator's label mappings) there is no w_avg and no broadcast.
  """
  z_dim: int
  c_dim: int
  w_dim: int
  num_ws: int | None
  num_layers: int = 8
  lr_multiplier: float = 0.01
  w_avg_beta: float | None = 0.998

  @nn.compact
  def __call__(self, z, c, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
    embed_features = self.w_dim if self.c_dim > 0 else 0
    x = None
    if self.z_dim > 0:
      x = L.normalize_2nd_moment(z.astype(jnp.float32))
    if self.c_dim > 0:
      y = L.normalize_2nd_moment(L.FullyConnected(embed_features, name='embed')(
          c.astype(jnp.float32)))
      x = jnp.concatenate([x, y], axis=1) if x is not None else y
    for idx in range(self.num_layers):
      x = L.FullyConnected(self.w_dim, activation='lrelu', lr_multiplier=self.lr_multiplier,
                           name=f'fc{idx}')(x)
    tracked = self.num_ws is not None and self.w_avg_beta is not None
    if tracked:
      w_avg = self.variable(STATE, 'w_avg', jnp.zeros, (self.w_dim,), jnp.float32)
      if update_w_avg:
        if not self.is_mutable_collection(STATE):
          raise ValueError(f'update_w_avg=True needs mutable=[{STATE!r}] in G.apply')
        mean = jax.lax.stop_gradient(jnp.mean(x, axis=0))
        w_avg.value = mean + self.w_avg_beta * (w_avg.value - mean)  # mean.lerp(w_avg, beta)
    if self.num_ws is not None:
      x = jnp.repeat(x[:, None, :], self.num_ws, axis=1)
    if truncation_psi != 1:
      if not tracked:
        raise ValueError('truncation needs a tracked w_avg (model.stylegan2.w_avg_beta is None)')
      avg = w_avg.value
      if self.num_ws is None or truncation_cutoff is None:
        x = avg + truncation_psi * (x - avg)
      else:
        k = int(truncation_cutoff)
        x = x.at[:, :k].set(avg + truncation_psi * (x[:, :k] - avg))
    return x


class SynthesisLayer(nn.Module):
  """Modulated, demodulated k x k conv (optionally up x2), noise, bias + lrelu (gain, clamp)."""
  out_channels: int
  w_dim: int
  resolution: int
  kernel_size: int = 3
  up: int = 1
  use_noise: bool = True
  conv_clamp: float | None = None
  conv_backend: str = 'xla'  # stylegan2_layers: 'xla' | 'onednn'

  @nn.compact
  def __call__(self, x, w, noise_mode='random', gain=1.0):
    cin, k = x.shape[-1], self.kernel_size
    styles = L.FullyConnected(cin, bias_init=1.0, name='affine')(w)
    weight = self.param('weight', nn.initializers.normal(1.0), (k, k, cin, self.out_channels))
    noise = None
    if self.use_noise:
      res = self.resolution
      const = self.variable(STATE, 'noise_const',
                            lambda: jax.random.normal(self.make_rng('params'), (res, res)))
      strength = self.param('noise_strength', nn.initializers.zeros, ())
      if noise_mode == 'random':
        noise = jax.random.normal(self.make_rng('noise'), (x.shape[0], res, res, 1)) * strength
      elif noise_mode == 'const':
        noise = (const.value * strength)[None, :, :, None]
    x = L.modulated_conv2d(x, weight, styles, noise=noise, up=self.up, padding=k // 2,
                           resample_filter=L.setup_filter(), flip_weight=(self.up == 1),
                           backend=self.conv_backend)
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return L.bias_act(x, bias, act='lrelu', gain=L.ACT_GAIN['lrelu'] * gain, clamp=clamp)


class ToRGBLayer(nn.Module):
  """1x1 modulated conv without demodulation, styles scaled by 1/sqrt(in), bias, clamp."""
  out_channels: int
  conv_clamp: float | None = None
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x, w):
    cin = x.shape[-1]
    styles = L.FullyConnected(cin, bias_init=1.0, name='affine')(w) * (1 / math.sqrt(cin))
    weight = self.param('weight', nn.initializers.normal(1.0), (1, 1, cin, self.out_channels))
    x = L.modulated_conv2d(x, weight, styles, demodulate=False, backend=self.conv_backend)
    bias = self.param('bias', nn.initializers.zeros, (self.out_channels,))
    return L.bias_act(x, bias, clamp=self.conv_clamp)


class SynthesisBlock(nn.Module):
  """One resolution: const (first block) or conv0 (up x2), conv1, toRGB; skip/orig/resnet."""
  in_channels: int
  out_channels: int
  w_dim: int
  resolution: int
  img_channels: int
  is_last: bool
  architecture: str = 'skip'
  conv_clamp: float | None = None
  conv_backend: str = 'xla'
  dtype: Any = jnp.float32  # activations (see the module docstring)

  @property
  def num_conv(self):
    return 1 if self.in_channels == 0 else 2

  @property
  def num_torgb(self):
    return 1 if (self.is_last or self.architecture == 'skip') else 0

  @nn.compact
  def __call__(self, x, img, ws, noise_mode='random'):
    res, cout = self.resolution, self.out_channels
    layer = lambda name, up: SynthesisLayer(cout, self.w_dim, res, up=up,
                                            conv_clamp=self.conv_clamp,
                                            conv_backend=self.conv_backend, name=name)
    if self.in_channels == 0:
      const = self.param('const', nn.initializers.normal(1.0), (res, res, cout))
      x = jnp.broadcast_to(const.astype(self.dtype)[None], (ws.shape[0], res, res, cout))
      x = layer('conv1', 1)(x, ws[:, 0], noise_mode)
    elif self.architecture == 'resnet':
      x = x.astype(self.dtype)
      y = L.Conv2dLayer(cout, 1, use_bias=False, up=2, conv_backend=self.conv_backend,
                        name='skip')(x, gain=math.sqrt(0.5))
      x = layer('conv0', 2)(x, ws[:, 0], noise_mode)
      x = layer('conv1', 1)(x, ws[:, 1], noise_mode, gain=math.sqrt(0.5))
      x = y + x
    else:
      x = layer('conv0', 2)(x.astype(self.dtype), ws[:, 0], noise_mode)
      x = layer('conv1', 1)(x, ws[:, 1], noise_mode)
    if img is not None:
      img = L.upsample2d(img, L.setup_filter(), backend=self.conv_backend)
    if self.num_torgb:
      y = ToRGBLayer(self.img_channels, self.conv_clamp, self.conv_backend, name='torgb')(
          x, ws[:, self.num_conv]).astype(jnp.float32)  # the RGB sum in float32
      img = img + y if img is not None else y
    return x, img


class SynthesisNetwork(nn.Module):
  """ws [N, num_ws, w_dim] -> images [N, S, S, img_channels]; channels min(base // res, max)."""
  w_dim: int
  img_resolution: int
  img_channels: int = 3
  channel_base: int = 32768
  channel_max: int = 512
  architecture: str = 'skip'
  conv_clamp: float | None = None
  conv_backend: str = 'xla'
  dtype: Any = jnp.float32

  def block_args(self):
    """[(res, in_channels, out_channels, is_last)] and num_ws, as the reference builds them."""
    log2 = int(math.log2(self.img_resolution))
    if self.img_resolution < 4 or 2 ** log2 != self.img_resolution:
      raise ConfigError(f'config.data.image_size={self.img_resolution}: StyleGAN2 needs a power '
                       'of two >= 4')
    ch = lambda r: min(self.channel_base // r, self.channel_max)
    blocks, num_ws = [], 0
    for res in [2 ** i for i in range(2, log2 + 1)]:
      is_last = res == self.img_resolution
      blocks.append((res, ch(res // 2) if res > 4 else 0, ch(res), is_last))
      num_ws += 1 if res == 4 else 2
      if is_last:
        num_ws += 1
    return blocks, num_ws

  @nn.compact
  def __call__(self, ws, noise_mode='random'):
    if noise_mode not in NOISE_MODES:
      raise ValueError(f'noise_mode={noise_mode!r}: expected one of {NOISE_MODES}')
    blocks, num_ws = self.block_args()
    if ws.shape[1] != num_ws:
      raise ValueError(f'synthesis: ws has {ws.shape[1]} styles, expected {num_ws}')
    ws = ws.astype(jnp.float32)
    x = img = None
    w_idx = 0
    for res, cin, cout, is_last in blocks:
      block = SynthesisBlock(cin, cout, self.w_dim, res, self.img_channels, is_last,
                             self.architecture, self.conv_clamp, self.conv_backend,
                             self.dtype, name=f'b{res}')
      n = block.num_conv + block.num_torgb
      x, img = block(x, img, ws[:, w_idx:w_idx + n], noise_mode)
      w_idx += block.num_conv
    return img


class Generator(nn.Module):
  """StyleGAN2 G: `G.apply(v, z, y, train=...)` -> images [N, S, S, 3] float32 (no tanh).

  y: [N] int labels (ignored when num_classes == 0, i.e. unconditional). Methods `mapping`
  (z, y -> ws) and `synthesis` (ws -> images) are exposed for path-length regularisation:
  `G.apply(v, ws, method='synthesize', rngs={'noise': k})`.
  """
  z_dim: int
  w_dim: int
  num_classes: int  # 0 = unconditional (StudioGAN g_cond_mtd 'W/O'), else cAdaIN
  img_resolution: int
  img_channels: int = 3
  mapping_layers: int = 2
  mapping_lr_multiplier: float = 0.01
  w_avg_beta: float | None = 0.998
  channel_base: int = 32768
  channel_max: int = 512
  architecture: str = 'skip'
  conv_clamp: float | None = None
  style_mixing_prob: float = 0.0
  noise_mode: str = 'random'  # default for __call__/synthesize (config noise_mode)
  # Truncation of eval-mode forwards (train=False) that pass none: the sampler's
  # (config truncation_psi / truncation_cutoff; training always runs at psi = 1).
  eval_truncation_psi: float = 1.0
  eval_truncation_cutoff: int | None = None
  conv_backend: str = 'xla'  # stylegan2_layers: 'xla' | 'onednn' (config.model.conv_backend)
  dtype: Any = jnp.float32  # synthesis activations (config.model.dtype; module docstring)

  # What the trainer's adapter reads (adapter.ModelAdapter): the rng streams G draws from; in
  # which update G's state moves (StudioGAN generates the D step's fakes with
  # stylegan_update_emas=True and the G step's with False: w_avg tracks the D-step fakes);
  # the keyword that makes a forward update it.
  RNG_STREAMS = ('noise', 'mixing')
  STATE_UPDATED_IN = 'd'
  UPDATE_KWARGS = (('update_w_avg', True),)

  def setup(self):
    self.synthesis_net = SynthesisNetwork(self.w_dim, self.img_resolution, self.img_channels,
                                          self.channel_base, self.channel_max,
                                          self.architecture, self.conv_clamp,
                                          self.conv_backend, self.dtype, name='synthesis')
    self.num_ws = self.synthesis_net.block_args()[1]
    self.mapping_net = MappingNetwork(self.z_dim, self.num_classes, self.w_dim, self.num_ws,
                                      self.mapping_layers, self.mapping_lr_multiplier,
                                      self.w_avg_beta, name='mapping')

  def _onehot(self, y, n):
    return jax.nn.one_hot(y, self.num_classes) if self.num_classes > 0 else jnp.zeros((n, 0))

  def mapping(self, z, y, truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False):
    return self.mapping_net(z, self._onehot(y, z.shape[0]), truncation_psi, truncation_cutoff,
                            update_w_avg)

  def synthesize(self, ws, noise_mode=None):
    return self.synthesis_net(ws, self.noise_mode if noise_mode is None else noise_mode)

  def mix(self, ws, z, y, prob):
    """utils/sample.py style mixing: with probability `prob` (one coin per batch) the ws from a
    random cutoff in [1, num_ws) on come from a fresh z (rng 'mixing'); no truncation there."""
    k_z, k_cut, k_coin = jax.random.split(self.make_rng('mixing'), 3)
    cutoff = jax.random.randint(k_cut, (), 1, ws.shape[1])
    cutoff = jnp.where(jax.random.uniform(k_coin, ()) < prob, cutoff, ws.shape[1])
    ws2 = self.mapping(jax.random.normal(k_z, z.shape, z.dtype), y)
    take2 = jnp.arange(ws.shape[1])[None, :, None] >= cutoff
    return jnp.where(take2, ws2, ws)

  def __call__(self, z, y, train=False, truncation_psi=None, truncation_cutoff=None,
               noise_mode=None, update_w_avg=False, style_mixing_prob=None, return_ws=False):
    """Images [N, S, S, C]; (images, ws) with return_ws. Style mixing only when train.
    noise_mode / style_mixing_prob None = the module's (config) values. Truncation is a
    sampling-time argument (StudioGAN trains with psi = 1; config truncation_psi/cutoff are
    for the sampler to pass here); psi None = 1 in train mode, the module's eval_truncation_*
    in eval mode."""
    if truncation_psi is None:
      truncation_psi, truncation_cutoff = ((1.0, None) if train else
                                           (self.eval_truncation_psi, self.eval_truncation_cutoff))
    ws = self.mapping(z, y, truncation_psi, truncation_cutoff, update_w_avg)
    prob = self.style_mixing_prob if style_mixing_prob is None else style_mixing_prob
    if train and prob > 0:
      ws = self.mix(ws, z, y, prob)
    img = self.synthesize(ws, noise_mode)
    return (img, ws) if return_ws else img
