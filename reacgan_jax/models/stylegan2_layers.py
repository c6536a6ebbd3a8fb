"""StyleGAN2 building blocks in pure JAX/Flax, NHWC (StudioGAN src/models/stylegan2.py and
src/utils/style_ops/{upfirdn2d,conv2d_resample,bias_act}.py, taken from stylegan2-ada-pytorch).

Parameters keep the reference's names and equalised-lr storage (weights ~ N(0, 1) / lr_mul, the
gain applied at run time), so `stylegan2_convert` maps a torch state dict leaf by leaf:
  dense  weight [in, out]        = torch weight.T
  conv   weight [kh, kw, in, out] = torch weight.permute(2, 3, 1, 0)
The FIR resampling is a depthwise `lax.conv` (or shifted slices, below), modulation is the
reference's non-fused form (scale activations, shared-weight conv, scale again), equal to the
fused grouped conv up to float rounding. Every function computes in its input's dtype: with
config.model.dtype='bfloat16' the networks feed bf16 activations here (stylegan2_g/_d: weights cast
to bf16 per call, styles, demodulation and the FIR taps in float32); bf16 keeps float32's range,
so the reference's fp16 pre-normalisation and clamping are not needed.

Convolutions (`conv_backend`, resolved from config.model.conv_backend, issue 28): 'xla' is
lax.conv_general_dilated throughout (up-sampling convs lhs-dilated, FIR filters depthwise convs).
'onednn' is the CPU's fast path: every plain conv (stride 1 or 2) goes to oneDNN
(ops/conv.conv_onednn), an up-sampling conv to oneDNN's transposed conv (ops/conv.conv_up_onednn:
no FLOP on the inserted zeros), and the FIR filters run as a height and a width pass of shifted
slices (ops/fir.py; XLA:CPU's depthwise conv is slow). 'onednn+winograd4' / 'onednn+winograd2'
(config.model.stylegan2.winograd, `layer_backend`) are 'onednn' with the float32 3x3 stride-1
convolutions big enough to pay (ops/winograd.pays) computed by Winograd F(4x4, 3x3) / F(2x2, 3x3)
(ops/winograd.py). Full width, batch 4, 2-core AMD EPYC
(Zen 4): G update 5.9 s (xla) -> 1.25 s, D update 2.3 s -> 1.56 s (benchmarks/README). Both
paths are the same linear maps (float32 rounding apart: tests/models/test_stylegan2_layers.py,
tests/ops/test_onednn.py).
"""

import math
from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from reacgan_jax.errors import ConfigError
from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.ops import fir
from reacgan_jax.ops import winograd as winograd_ops

ACT_GAIN = {'linear': 1.0, 'lrelu': math.sqrt(2.0), 'relu': math.sqrt(2.0)}
DEFAULT_FILTER = (1, 3, 3, 1)


def setup_filter(taps: Sequence[float] = DEFAULT_FILTER) -> np.ndarray:
  """upfirdn2d.setup_filter: 1-D taps (< 8 of them) -> outer product normalised to sum 1."""
  f = np.asarray(taps, np.float64)
  if f.ndim == 1:
    f = np.outer(f, f)
  return (f / f.sum()).astype(np.float32)


def _pad_crop(x, px0, px1, py0, py1):
  x = jnp.pad(x, ((0, 0), (max(py0, 0), max(py1, 0)), (max(px0, 0), max(px1, 0)), (0, 0)))
  h, w = x.shape[1], x.shape[2]
  return x[:, max(-py0, 0):h - max(-py1, 0), max(-px0, 0):w - max(-px1, 0), :]


def upfirdn2d(x, f, up=1, down=1, padding=(0, 0, 0, 0), flip_filter=False, gain=1.0,
              backend='xla'):
  """Upsample (zero insertion), pad/crop, FIR filter, downsample; `_upfirdn2d_ref` semantics.

  x: [N, H, W, C]; f: [fh, fw] numpy filter (None = identity); padding (x0, x1, y0, y1).
  backend 'xla' filters with a depthwise lax conv (the reference's form); 'onednn' (the CPU
  path) with a height and a width pass of shifted slices when f is rank one (StyleGAN2's
  filters are: outer products of 1-D taps), the same map up to float rounding (ops/fir.py).
  """
  if f is None:
    f = np.ones((1, 1), np.float32)
  n, h, w, c = x.shape
  if up > 1:
    x = x.reshape(n, h, 1, w, 1, c)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
    x = x.reshape(n, h * up, w * up, c)
  x = _pad_crop(x, *padding)
  f = np.asarray(f, np.float32) * (gain ** (f.ndim / 2))
  if not flip_filter:  # the reference convolves (flips) unless flip_filter
    f = f[::-1, ::-1]
  taps = fir.separable(f) if backend.startswith('onednn') else None
  if taps is not None:  # float32 taps and sums (bf16 activations: rounded once, at the end)
    return fir.correlate2d_separable(x.astype(jnp.float32), *taps, stride=down).astype(x.dtype)
  k = jnp.asarray(np.ascontiguousarray(f), x.dtype)[:, :, None, None] * jnp.ones((1, 1, 1, c),
                                                                                   x.dtype)
  return jax.lax.conv_general_dilated(x, k, (down, down), 'VALID', feature_group_count=c,
                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def upsample2d(x, f, up=2, backend='xla'):
  """upfirdn2d.upsample2d: output [N, H*up, W*up, C], DC gain kept (gain up**2)."""
  fh, fw = f.shape
  p = ((fw + up - 1) // 2, (fw - up) // 2, (fh + up - 1) // 2, (fh - up) // 2)
  return upfirdn2d(x, f, up=up, padding=p, gain=up * up, backend=backend)


def downsample2d(x, f, down=2, backend='xla'):
  """upfirdn2d.downsample2d: output [N, H/down, W/down, C]."""
  fh, fw = f.shape
  p = ((fw - down + 1) // 2, (fw - down) // 2, (fh - down + 1) // 2, (fh - down) // 2)
  return upfirdn2d(x, f, down=down, padding=p, backend=backend)


_NHWC = ('NHWC', 'HWIO', 'NHWC')
# the oneDNN path with Winograd F(m x m, 3 x 3): backend -> m
_WINOGRAD = {f'onednn+winograd{m}': m for m in winograd_ops.TILE_SIZES}
BACKENDS = ('xla', 'onednn', *_WINOGRAD)


def layer_backend(conv_backend: str, winograd: int) -> str:
  """The layers' backend for a resolved config.model.conv_backend and
  config.model.stylegan2.winograd (0: off, 2 or 4: F(m x m, 3 x 3) on the oneDNN path)."""
  if winograd not in (0, *winograd_ops.TILE_SIZES):
    raise ConfigError(f'model.stylegan2.winograd={winograd!r}: expected 0 (off), 2 or 4 (the '
                      'output tile of Winograd F(m x m, 3 x 3))')
  return f'onednn+winograd{winograd}' if conv_backend == 'onednn' and winograd else conv_backend


def _conv(x, w, stride=1, padding=((0, 0), (0, 0)), lhs_dilation=(1, 1), backend='xla'):
  if backend == 'xla':
    return jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                        lhs_dilation=lhs_dilation, dimension_numbers=_NHWC)
  if backend not in BACKENDS:
    raise ValueError(f'stylegan2 conv backend {backend!r}: expected one of {BACKENDS}')
  m = _WINOGRAD.get(backend, 0)
  if m and lhs_dilation == (1, 1) and winograd_ops.pays(x, w, (stride, stride), padding, m):
    return conv_ops.conv_winograd(x, w, padding, m)
  if lhs_dilation != (1, 1):
    if stride != 1:
      raise ValueError('stylegan2 conv: a strided lhs-dilated conv is not a resampling layer')
    return conv_ops.conv_up_onednn(x, w, lhs_dilation, padding)
  return conv_ops.conv_onednn(x, w, (stride, stride), padding, dimension_numbers=_NHWC)


def conv2d_resample(x, w, f=None, up=1, down=1, padding=0, flip_weight=True, backend='xla'):
  """conv2d_resample.conv2d_resample (groups=1): conv with optional FIR up/down-sampling.

  x: [N, H, W, I]; w: [kh, kw, I, O]; padding is w.r.t. the upsampled image.
  flip_weight=True is correlation (torch conv2d); False is true convolution (the reference
  passes False for up=2 layers). Up-sampling is a zero-inserted (lhs-dilated) conv followed by
  the filter, the same linear map as the reference's transposed conv + filter. backend: see the
  module docstring.
  """
  conv = lambda x, w, **kw: _conv(x, w, backend=backend, **kw)  # noqa: E731
  fir2d = lambda x, **kw: upfirdn2d(x, f, backend=backend, **kw)  # noqa: E731
  kh, kw = w.shape[0], w.shape[1]
  fh, fw = (1, 1) if f is None else f.shape
  px0 = px1 = py0 = py1 = padding
  if up > 1:
    px0, px1 = px0 + (fw + up - 1) // 2, px1 + (fw - up) // 2
    py0, py1 = py0 + (fh + up - 1) // 2, py1 + (fh - up) // 2
  if down > 1:
    px0, px1 = px0 + (fw - down + 1) // 2, px1 + (fw - down) // 2
    py0, py1 = py0 + (fh - down + 1) // 2, py1 + (fh - down) // 2
  if not flip_weight:
    w = w[::-1, ::-1]
  if kh == 1 and kw == 1 and down > 1 and up == 1:
    return conv(fir2d(x, down=down, padding=(px0, px1, py0, py1)), w)
  if kh == 1 and kw == 1 and up > 1 and down == 1:
    return fir2d(conv(x, w), up=up, padding=(px0, px1, py0, py1), gain=up * up)
  if down > 1 and up == 1:
    return conv(fir2d(x, padding=(px0, px1, py0, py1)), w, stride=down)
  if up > 1:
    # zero insertion by lax (length (H-1)*up+1, i.e. without the reference's trailing up-1 zeros)
    y = conv(x, w, padding=((py0, py1 + up - 1), (px0, px1 + up - 1)), lhs_dilation=(up, up))
    y = fir2d(y, gain=up * up)
    return fir2d(y, down=down) if down > 1 else y
  return conv(x, w, padding=((py0, py1), (px0, px1)))


def bias_act(x, b=None, act='linear', alpha=0.2, gain=None, clamp=None):
  """bias_act._bias_act_ref on the channel (last) axis: x + b, act, * gain, clamp to +-clamp."""
  if b is not None:
    x = x + b.astype(x.dtype)
  if act == 'lrelu':
    x = jnp.where(x >= 0, x, x * alpha)
  elif act == 'relu':
    x = jax.nn.relu(x)
  elif act != 'linear':
    raise ValueError(f'bias_act: unknown activation {act!r} (linear, relu, lrelu)')
  gain = ACT_GAIN[act] if gain is None else gain
  if gain != 1:
    x = x * gain
  if clamp is not None and clamp >= 0:
    x = jnp.clip(x, -clamp, clamp)
  return x


def normalize_2nd_moment(x, eps=1e-8):
  """x / sqrt(mean(x^2 over features) + eps) (stylegan2.normalize_2nd_moment, dim=1)."""
  return x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=1, keepdims=True) + eps)


def modulated_conv2d(x, weight, styles, noise=None, up=1, padding=0, resample_filter=None,
                     demodulate=True, flip_weight=True, backend='xla'):
  """stylegan2.modulated_conv2d, non-fused form (same map as the fused grouped conv).

  x: [N, H, W, I]; weight: [kh, kw, I, O]; styles: [N, I]; noise: broadcastable to the output.
  Demodulation: d[n, o] = rsqrt(sum_{k, i} (w[k, i, o] s[n, i])^2 + 1e-8).
  """
  x = x * styles[:, None, None, :].astype(x.dtype)
  x = conv2d_resample(x, weight.astype(x.dtype), resample_filter, up=up, padding=padding,
                      flip_weight=flip_weight, backend=backend)
  if demodulate:
    wsq = jnp.sum(jnp.square(weight), axis=(0, 1))  # [I, O]
    dcoefs = jax.lax.rsqrt(jnp.square(styles) @ wsq + 1e-8)  # [N, O]
    x = x * dcoefs[:, None, None, :].astype(x.dtype)
  if noise is not None:
    x = x + noise.astype(x.dtype)
  return x


def minibatch_std(x, group_size, num_channels=1):
  """MinibatchStdLayer: append the group std (averaged per channel group) as new channels.

  x: [N, H, W, C] -> [N, H, W, C + num_channels]. Sample i is in group i % (N // G), G =
  min(group_size, N) (None = N), exactly the reference's reshape(G, -1, F, c, H, W).
  """
  n, h, w, c = x.shape
  g = n if group_size is None else min(group_size, n)
  if n % g:
    raise ValueError(f'minibatch std: batch {n} is not a multiple of the group size {g} '
                     '(model.stylegan2.mbstd_group_size); pick a batch size divisible by it')
  f = num_channels
  y = x.reshape(g, n // g, h, w, f, c // f).astype(jnp.float32)
  y = y - jnp.mean(y, axis=0)
  y = jnp.sqrt(jnp.mean(jnp.square(y), axis=0) + 1e-8)  # [n, H, W, F, c]
  y = jnp.mean(y, axis=(1, 2, 4))  # [n, F]
  y = jnp.tile(y, (g, 1))[:, None, None, :] * jnp.ones((1, h, w, 1), y.dtype)
  return jnp.concatenate([x, y.astype(x.dtype)], axis=-1)


class FullyConnected(nn.Module):
  """FullyConnectedLayer: y = act(x @ (W * lr_mul / sqrt(in)) + b * lr_mul).

  Params: weight [in, out] ~ N(0, 1) / lr_mul; bias [out] = bias_init (if use_bias).
  """
  features: int
  use_bias: bool = True
  activation: str = 'linear'
  lr_multiplier: float = 1.0
  bias_init: float = 0.0

  @nn.compact
  def __call__(self, x):
    fan_in = x.shape[-1]
    lr = self.lr_multiplier
    init = lambda k, s: jax.random.normal(k, s, jnp.float32) / lr
    w = self.param('weight', init, (fan_in, self.features))
    w = w * (lr / math.sqrt(fan_in))
    b = None
    if self.use_bias:
      b = self.param('bias', nn.initializers.constant(self.bias_init), (self.features,))
      b = b * lr if lr != 1 else b
    return bias_act(x @ w.astype(x.dtype), b, act=self.activation)


class Conv2dLayer(nn.Module):
  """Conv2dLayer: equalised-lr conv with FIR up/down, fused bias + act with gain and clamp.

  Params: weight [k, k, in, out] ~ N(0, 1); bias [out] zeros (if use_bias). The layer's call
  takes `gain` (the resnet branches pass sqrt(0.5)): act gain and clamp are both scaled by it.
  """
  features: int
  kernel_size: int
  use_bias: bool = True
  activation: str = 'linear'
  up: int = 1
  down: int = 1
  conv_clamp: float | None = None
  resample_filter: Sequence[float] = DEFAULT_FILTER
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x, gain=1.0):
    k, cin = self.kernel_size, x.shape[-1]
    w = self.param('weight', nn.initializers.normal(1.0), (k, k, cin, self.features))
    w = w * (1.0 / math.sqrt(cin * k * k))
    b = self.param('bias', nn.initializers.zeros, (self.features,)) if self.use_bias else None
    x = conv2d_resample(x, w.astype(x.dtype), setup_filter(self.resample_filter), up=self.up,
                        down=self.down, padding=k // 2, flip_weight=(self.up == 1),
                        backend=self.conv_backend)
    act_gain = ACT_GAIN[self.activation] * gain
    clamp = self.conv_clamp * gain if self.conv_clamp is not None else None
    return bias_act(x, b, act=self.activation, gain=act_gain, clamp=clamp)
