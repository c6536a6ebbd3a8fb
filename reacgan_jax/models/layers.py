"""Building blocks shared by the backbones: BN / conditional BN, self-attention, residual blocks.

Everything is NHWC. Parameters are float32; `dtype` is the compute dtype (config.model.dtype).
Spectral norm is not a layer here: the trainer normalises the param pytree from outside
(reacgan_jax/ops/spectral_norm.py), selecting leaves with `models.sn_predicate`.

Reference: PyTorch-StudioGAN `src/utils/ops.py`, `src/models/big_resnet.py`, `src/models/resnet.py`
(SPEC.md section 3).
"""

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax.linen.dtypes import promote_dtype

from reacgan_jax.errors import ConfigError
from reacgan_jax.ops import conv as conv_ops

Dtype = Any

# StudioGAN's ops.batchnorm_2d: eps 1e-4, torch momentum 0.1, i.e. running = 0.9 * running
# + 0.1 * batch in flax's convention.
BN_EPS = 1e-4
BN_MOMENTUM = 0.9

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}  # config.model.dtype


def get_dtype(name: str) -> Dtype:
  """Compute dtype from config.model.dtype ('float32' | 'bfloat16')."""
  if name not in DTYPES:
    raise ConfigError(f'config.model.dtype={name!r}: expected one of {", ".join(DTYPES)}')
  return DTYPES[name]


INITS = {  # config.model.g_init / d_init
    'ortho': nn.initializers.orthogonal(),
    'N02': nn.initializers.normal(0.02),
    'glorot': nn.initializers.glorot_uniform(),
}


def get_init(name: str, which: str) -> Callable:
  """Weight initialiser of conv/linear/embedding weights (StudioGAN ops.init_weights).

  ortho: torch's orthogonal_ on the (out, in*kh*kw) view; flax's orthogonal() on the
  (kh*kw*in, out) view is its transpose, also orthogonal. N02: N(0, 0.02). glorot: Xavier
  uniform (fan_in = in*kh*kw, fan_out = out*kh*kw in both frameworks). Biases start at 0.
  """
  if name not in INITS:
    raise ConfigError(f'config.model.{which}_init={name!r}: expected one of {", ".join(INITS)}')
  return INITS[name]


def upsample2x(x, backend: str = 'xla'):
  """Nearest-neighbour 2x upsampling [B, H, W, C] -> [B, 2H, 2W, C] (F.interpolate 'nearest').

  backend 'onednn': the same values, with `upsample2x_window_sums`' gradient (see there).
  """
  if backend == 'onednn':
    return upsample2x_window_sums(x)
  return conv_ops.nearest2x(x)


def avg_pool2x(x, backend: str = 'xla'):
  """2x2 average pooling, stride 2 (nn.AvgPool2d(2)) [B, H, W, C] -> [B, H/2, W/2, C].

  backend 'onednn': `avg_pool2x_window_sums` (the same mean in float32, summed by strided adds).
  """
  if backend == 'onednn':
    return avg_pool2x_window_sums(x)
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


# The oneDNN backend's pooling and the upsampling's gradient. XLA:CPU runs the reduce of a
# 2x2-window mean (or of the sum autodiff makes for the upsampling's broadcast) at ~0.5 G
# elements/s: the pooling of one 64x32x32x128 bf16 activation took 16-19 ms, the same sums as
# two strided adds in one loop fusion 1.6 ms (benchmarks/README.md, "Window sums as strided
# adds"). Sums and means accumulate in float32 and round once to the input dtype, as
# jnp.mean does; the XLA backend keeps the reduce (its recorded results stay bit-identical).


def _window_sums(x):
  """Float32 sum of each 2x2 window, stride 2: [B, H, W, C] -> [B, H/2, W/2, C]."""
  b, h, w, c = x.shape
  x = x.reshape(b, h // 2, 2, w // 2, 2 * c).astype(jnp.float32)
  rows = x[:, :, 0] + x[:, :, 1]           # [B, H/2, W/2, 2C]: the two columns side by side
  return rows[..., :c] + rows[..., c:]


@jax.custom_vjp
def avg_pool2x_window_sums(x):
  """2x2 average pooling as strided adds (float32 accumulation, result in x's dtype).

  Gradient: the nearest 2x upsampling of g / 4 (exact: a power of two).
  """
  return (_window_sums(x) * 0.25).astype(x.dtype)


avg_pool2x_window_sums.defvjp(
    lambda x: (avg_pool2x_window_sums(x), None),
    lambda _, g: (conv_ops.nearest2x(g * jnp.asarray(0.25, g.dtype)),))


@jax.custom_vjp
def upsample2x_window_sums(x):
  """Nearest 2x upsampling whose gradient is the 2x2 window sums of g (float32 accumulation,
  rounded once to g's dtype) by strided adds."""
  return conv_ops.nearest2x(x)


upsample2x_window_sums.defvjp(
    lambda x: (conv_ops.nearest2x(x), None),
    lambda _, g: (_window_sums(g).astype(g.dtype),))


def _halving_sum(z, axis):
  """Sum over `axis` by halving: z[:n/2] + z[n/2:], repeated (odd lengths padded with a zero)."""
  while z.shape[axis] > 1:
    if z.shape[axis] % 2:
      z = jnp.concatenate([z, jnp.zeros_like(jax.lax.slice_in_dim(z, 0, 1, axis=axis))], axis)
    n = z.shape[axis] // 2
    z = jax.lax.slice_in_dim(z, 0, n, axis=axis) + jax.lax.slice_in_dim(z, n, 2 * n, axis=axis)
  return jax.lax.squeeze(z, (axis,))


def _hw_sums(z):
  """Float32 sums over H and W of [B, H, W, C] -> [B, C], as elementwise adds (see below)."""
  return _halving_sum(_halving_sum(z.astype(jnp.float32), 1), 1)


@jax.custom_vjp
def per_sample_affine(y, gain, bias):
  """y [B, H, W, C] * gain [B, C] + bias [B, C] in y's dtype (the conditional BN's affine; gain
  and bias, the outputs of its linears, cast to y's dtype as the XLA path casts them).

  Its gain and bias gradients, the sums over (H, W) of g * y and of g, are halving trees of
  elementwise adds of float32 terms (the products are not rounded to y's dtype), rounded once to
  gain's / bias's dtype (bf16 in a bf16 model, whose linears compute in bf16), instead of
  XLA:CPU's reduce over non-minor axes (~1 G elements/s: 131 ms of a traced SNGAN bf16 G update;
  benchmarks/README.md "Conditional BN sums as halving adds"). Used by the oneDNN backend; the XLA
  backend keeps autodiff's sums of the same expression (recorded results bit-identical).
  """
  return _per_sample_affine_autodiff(y, gain, bias)


def _per_sample_affine_autodiff(y, gain, bias):
  """The expression itself (the XLA backend's conditional-BN affine, differentiated by JAX)."""
  t = y.dtype
  return y * gain[:, None, None, :].astype(t) + bias[:, None, None, :].astype(t)


def _psa_fwd(y, gain, bias):
  return per_sample_affine(y, gain, bias), (y, gain, bias)


def _psa_bwd(res, g):
  y, gain, bias = res
  g32 = g.astype(jnp.float32)
  return (g * gain[:, None, None, :].astype(g.dtype),
          _hw_sums(g32 * y.astype(jnp.float32)).astype(gain.dtype),
          _hw_sums(g32).astype(bias.dtype))


per_sample_affine.defvjp(_psa_fwd, _psa_bwd)


def max_pool2x(x):
  """2x2 max pooling, stride 2 (nn.MaxPool2d(2, 2)) [B, H, W, C] -> [B, H/2, W/2, C]."""
  b, h, w, c = x.shape
  return x.reshape(b, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))


class BatchNorm(nn.Module):
  """Batch norm over (B, H, W) with optional per-group statistics.

  Attributes:
    use_scale_bias: learned per-channel scale and bias (torch affine=True).
    groups: statistics over `B / groups` consecutive samples each (per-device BN when groups
      match the device shards, StudioGAN's default without sync-BN); 1 = whole batch.
    epsilon, momentum: StudioGAN's 1e-4 and torch momentum 0.1 (flax convention 0.9).
    dtype: output dtype; statistics are always computed in float32.

  Call with `use_running_average`: True normalises with the running averages
  ('batch_stats' collection: mean, var); False with batch statistics, and the running
  averages are updated only when 'batch_stats' is mutable. So `apply(..., train=True)`
  without `mutable` runs on batch statistics and leaves the running ones untouched
  (config.model.bn_eval='batch'). The running variance uses the unbiased batch variance
  (as torch does); with groups > 1 the running statistics move towards the mean of the
  group statistics.
  """
  use_scale_bias: bool = True
  groups: int = 1
  epsilon: float = BN_EPS
  momentum: float = BN_MOMENTUM
  dtype: Dtype = jnp.float32
  backend: str = 'xla'  # config.model.conv_backend: 'onednn' runs batch statistics in oneDNN

  @nn.compact
  def __call__(self, x, use_running_average: bool):
    c = x.shape[-1]
    x32 = x.astype(jnp.float32)
    keep_stats = use_running_average or self.is_mutable_collection('batch_stats')
    if keep_stats:
      ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (c,), jnp.float32)
      ra_var = self.variable('batch_stats', 'var', jnp.ones, (c,), jnp.float32)
    if self.backend == 'onednn' and not use_running_average and self.groups == 1:
      # oneDNN's primitives (conv_ops.batch_norm_onednn): the same two-pass float32 statistics
      # and normalisation, in x's compute dtype, a few passes over x instead of ~10 XLA fusions.
      scale, bias = ((self.param('scale', nn.initializers.ones, (c,), jnp.float32),
                      self.param('bias', nn.initializers.zeros, (c,), jnp.float32))
                     if self.use_scale_bias else (None, None))
      y, mean, var = conv_ops.batch_norm_onednn(x, scale, bias, self.epsilon)
      if keep_stats and not self.is_initializing():
        mean, var = jax.lax.stop_gradient((mean, var))
        self._update_running(ra_mean, ra_var, mean[None], var[None], x.size // c)
      return y.astype(self.dtype)
    if use_running_average:
      y = (x32 - ra_mean.value) * jax.lax.rsqrt(ra_var.value + self.epsilon)
    else:
      b, g = x.shape[0], self.groups
      if b % g:
        raise ValueError(f'batch of {b} samples does not split into bn_groups={g} equal groups '
                         '(config.train.bn_sync=False needs a batch divisible by the devices)')
      xg = x32.reshape((g, b // g) + x.shape[1:])
      axes = tuple(range(1, xg.ndim - 1))
      mean = jnp.mean(xg, axes, keepdims=True)
      var = jnp.mean(jnp.square(xg - mean), axes, keepdims=True)  # two-pass: no cancellation
      y = ((xg - mean) * jax.lax.rsqrt(var + self.epsilon)).reshape(x.shape)
      if keep_stats and not self.is_initializing():
        self._update_running(ra_mean, ra_var, mean.reshape(g, c), var.reshape(g, c),
                             xg[0].size // c)
    if self.use_scale_bias:
      y = y * self.param('scale', nn.initializers.ones, (c,), jnp.float32)
      y = y + self.param('bias', nn.initializers.zeros, (c,), jnp.float32)
    return y.astype(self.dtype)

  def _update_running(self, ra_mean, ra_var, mean, var, n):
    """Momentum update of the running averages from the batch statistics of each group
    (mean, biased var: [groups, C], n values each): towards the mean of the group means and of
    the unbiased group variances (as torch)."""
    unbiased = var * (n / max(n - 1, 1))
    m = self.momentum
    ra_mean.value = m * ra_mean.value + (1 - m) * jnp.mean(mean, 0)
    ra_var.value = m * ra_var.value + (1 - m) * jnp.mean(unbiased, 0)


class ConditionalBatchNorm(nn.Module):
  """BN without affine, then per-sample gain `1 + W_g a` and bias `W_b a`.

  StudioGAN's ops.ConditionalBatchNorm2d.
  `a` [B, A] is the affine input: BigGAN's [shared class embedding, z chunk], or the one-hot
  label in the ResNet/DCGAN generators. The gain is `1 + gamma(a)` (SPEC 3: dropping the +1 is a
  known porting bug). W_g, W_b are linears without bias (spectral-normalised when apply_g_sn).
  """
  groups: int = 1
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Dtype = jnp.float32
  backend: str = 'xla'  # config.model.conv_backend: 'onednn' takes `per_sample_affine`

  @nn.compact
  def __call__(self, x, affine, use_running_average: bool):
    c = x.shape[-1]
    y = BatchNorm(use_scale_bias=False, groups=self.groups, dtype=self.dtype,
                  backend=self.backend, name='bn')(x, use_running_average)
    dense = lambda name: nn.Dense(c, use_bias=False, kernel_init=self.kernel_init,
                                  dtype=self.dtype, name=name)
    gain = 1.0 + dense('gain_linear')(affine)
    bias = dense('bias_linear')(affine)
    affine_fn = per_sample_affine if self.backend == 'onednn' else _per_sample_affine_autodiff
    return affine_fn(y, gain, bias)   # y is in self.dtype (BatchNorm's output)


class SelfAttention(nn.Module):
  """SAGAN/BigGAN self-attention as in StudioGAN's ops.SelfAttention.

  theta = 1x1 conv C -> C/8 at every position; phi (C/8) and g (C/2) are 1x1 convs followed by
  2x2 max pooling (keys/values at a quarter of the positions); attention = softmax over keys;
  the C/2 result goes through a 1x1 conv back to C; out = x + sigma * that, with sigma a
  learned scalar initialised to 0 (so the block starts as the identity). Convs have no bias.
  x: [B, H, W, C] with H, W even and C >= 8.
  """
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Dtype = jnp.float32
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    b, h, w, c = x.shape
    proj = lambda f, name: conv(f, 1, self.kernel_init, self.dtype, name, use_bias=False,
                                backend=self.conv_backend)
    theta = proj(c // 8, 'theta')(x).reshape(b, h * w, c // 8)
    phi = max_pool2x(proj(c // 8, 'phi')(x)).reshape(b, h * w // 4, c // 8)
    g = max_pool2x(proj(c // 2, 'g')(x)).reshape(b, h * w // 4, c // 2)
    logits = jnp.einsum('bqc,bkc->bqk', theta, phi).astype(jnp.float32)
    attn = jax.nn.softmax(logits, axis=-1).astype(self.dtype)  # softmax in float32 (bf16 safe)
    attn_g = jnp.einsum('bqk,bkc->bqc', attn, g).reshape(b, h, w, c // 2)
    attn_g = proj(c, 'attn')(attn_g)
    sigma = self.param('sigma', nn.initializers.zeros, (1,), jnp.float32)
    return x + sigma.astype(self.dtype) * attn_g


def conv(features: int, kernel: int, kernel_init: Callable, dtype: Dtype, name: str,
         stride: int = 1, padding: int | None = None, use_bias: bool = True,
         backend: str = 'xla'):
  """nn.Conv with torch-style symmetric padding (default (kernel - 1) // 2 = 'same' at stride 1).

  backend (config.model.conv_backend): 'xla' -- stride-1 convolutions compute their weight
  gradient as matrix products on CPU (conv.py); 'onednn' -- oneDNN on CPU (reacgan_jax/ops/onednn).
  """
  p = (kernel - 1) // 2 if padding is None else padding
  if backend == 'onednn':
    return OnednnConv(features, kernel, stride, p, use_bias, kernel_init, dtype, name=name)
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 padding=((p, p), (p, p)), use_bias=use_bias, kernel_init=kernel_init,
                 dtype=dtype, conv_general_dilated=conv_ops.for_backend(backend), name=name)


class OnednnConv(nn.Module):
  """nn.Conv's NHWC 2-D convolution on the oneDNN backend, its bias inside oneDNN's primitives.

  The parameters are nn.Conv's: 'kernel' [k, k, C_in, C_out] then 'bias' [C_out] (float32,
  zeros), created in that order in a module of the same name, so the parameter tree and its
  initial values are the same as nn.Conv's (tests/ops/test_onednn.py). What differs is where
  the bias goes (conv_ops.conv_bias_onednn): the float32 bias is added to the convolution's
  float32 accumulator before its one rounding to the compute dtype, and its gradient comes from
  the weight gradient's primitive, so neither costs XLA a pass over the activation.

  upsample=True (3x3, stride 1, padding 1): the conv of the nearest 2x upsampled x, computed as
  one transposed convolution of x (conv_ops.upsample_conv_onednn: 16 multiply-adds per input
  pixel and output channel where the upsampled conv spends 36, no upsampled copy of x).
  """
  features: int
  kernel: int
  stride: int
  padding: int
  use_bias: bool
  kernel_init: Callable
  dtype: Dtype
  upsample: bool = False

  @nn.compact
  def __call__(self, x):
    k = self.param('kernel', self.kernel_init,
                   (self.kernel, self.kernel, x.shape[-1], self.features), jnp.float32)
    b = (self.param('bias', nn.initializers.zeros, (self.features,), jnp.float32)
         if self.use_bias else None)
    if self.upsample:
      if (self.kernel, self.stride, self.padding) != (3, 1, 1):
        raise ValueError('OnednnConv(upsample=True) takes a 3x3 conv, stride 1, padding 1')
      b = jnp.zeros((self.features,), jnp.float32) if b is None else b
      return conv_ops.upsample_conv_onednn(x, k, b, self.dtype)  # k cast after its sums
    x, k = promote_dtype(x, k, dtype=self.dtype)
    s, p = (self.stride, self.stride), ((self.padding, self.padding),) * 2
    if b is not None:   # float32: added inside oneDNN before the one rounding to x's dtype
      return conv_ops.conv_bias_onednn(x, k, b, s, p)
    return conv_ops.conv_onednn(
        x, k, s, p, lhs_dilation=(1, 1), rhs_dilation=(1, 1),
        dimension_numbers=jax.lax.conv_dimension_numbers(x.shape, k.shape,
                                                         ('NHWC', 'HWIO', 'NHWC')))


# The smallest output height at which GenBlock's bf16 upsampled conv runs as a transposed conv on
# oneDNN (measured on the Intel AMX CPU, oneDNN 3.2: per call 8x8 1.6 -> 3.3 ms, 16x16 5.8 -> 6.8,
# 32x32 24.6 -> 20.1; SNGAN bf16 G update 0.55 -> 0.51 s with this threshold).
BF16_DECONV_MIN_HW = 32


class GenBlock(nn.Module):
  """Residual up-block of the ResNet/BigGAN generators (big_resnet.GenBlock).

  main: BN -> ReLU -> nearest 2x -> conv3x3 -> BN -> ReLU -> conv3x3;
  shortcut: nearest 2x -> conv1x1. BN is conditional when `affine` is given, plain (affine)
  BN otherwise (the unconditional ResNet generator). Upsampling is nearest + conv, as in the
  reference (ConvTranspose would also be slow on XLA:CPU).
  """
  features: int
  groups: int = 1
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Dtype = jnp.float32
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x, affine, train: bool):
    def norm(h, name):
      if affine is None:
        return BatchNorm(groups=self.groups, dtype=self.dtype, backend=self.conv_backend,
                         name=name)(h, not train)
      return ConditionalBatchNorm(self.groups, self.kernel_init, self.dtype, self.conv_backend,
                                  name=name)(
          h, affine, not train)

    c = lambda k, name: conv(self.features, k, self.kernel_init, self.dtype, name,
                             backend=self.conv_backend)
    h = nn.relu(norm(x, 'bn1'))
    # On oneDNN the conv of the upsampled h runs as one transposed conv (2.25x fewer
    # multiply-adds, no upsampled copy): in float32 at every size (SNGAN's float32 G update 1.24x
    # faster on the AMX CPU); in bf16 only for outputs of at least 32x32, as oneDNN 3.2's AMX
    # deconvolution kernels are slower than its convolutions on smaller maps (benchmarks/
    # README.md, "Upsampling convs as transposed convs").
    if self.conv_backend == 'onednn' and (jnp.dtype(self.dtype) == jnp.float32
                                          or 2 * h.shape[1] >= BF16_DECONV_MIN_HW):
      h = OnednnConv(self.features, 3, 1, 1, True, self.kernel_init, self.dtype, upsample=True,
                     name='conv1')(h)
    else:
      h = c(3, 'conv1')(upsample2x(h, self.conv_backend))
    h = nn.relu(norm(h, 'bn2'))
    h = c(3, 'conv2')(h)
    # A 1x1 conv commutes with nearest upsampling: conv first is exact and 4x cheaper.
    x0 = upsample2x(c(1, 'conv0')(x), self.conv_backend)
    return h + x0


def _disc_layers(block, train):
  """(conv(k, name), bn(h, name)) of a D block: its width and init; BN only with `use_bn`."""
  c = lambda k, name: conv(block.features, k, block.kernel_init, block.dtype, name,
                           backend=block.conv_backend)
  bn = lambda h, name: (BatchNorm(groups=block.groups, dtype=block.dtype,
                                  backend=block.conv_backend, name=name)(h, not train)
                        if block.use_bn else h)
  return c, bn


class _DiscBlockFields(nn.Module):
  """The fields both D blocks take (width, BN on/off and its groups, init, dtype, convs)."""
  features: int
  use_bn: bool = False
  groups: int = 1
  kernel_init: Callable = nn.initializers.orthogonal()
  dtype: Dtype = jnp.float32
  conv_backend: str = 'xla'


class DiscOptBlock(_DiscBlockFields):
  """First ("optimized") D block (big_resnet.DiscOptBlock), downsamples 2x.

  main: conv3x3 -> [BN] -> ReLU -> conv3x3 -> avgpool; shortcut: avgpool -> [BN] -> conv1x1.
  BN only when D has no spectral norm (`use_bn`), as in the reference.
  """
  @nn.compact
  def __call__(self, x, train: bool):
    c, bn = _disc_layers(self, train)
    h = c(3, 'conv1')(x)
    h = nn.relu(bn(h, 'bn1'))
    pool = lambda h: avg_pool2x(h, self.conv_backend)
    h = pool(c(3, 'conv2')(h))
    x0 = c(1, 'conv0')(bn(pool(x), 'bn0'))
    return h + x0


class DiscBlock(_DiscBlockFields):
  """Residual D block (big_resnet.DiscBlock): pre-activation, optional 2x downsampling.

  main: [BN] -> ReLU -> conv3x3 -> [BN] -> ReLU -> conv3x3 -> [avgpool];
  shortcut (when downsampling or the width changes): [BN] -> conv1x1 -> [avgpool], else identity.

  Reference quirk reproduced: without BN (D with spectral norm, every published config) the
  reference's in-place ReLU (`nn.ReLU(inplace=True)` on the tensor the shortcut also holds)
  rectifies the shortcut input too, so the shortcut sees relu(x), not x. With BN the main path
  works on a new tensor and the shortcut sees x.
  """
  downsample: bool = True

  @nn.compact
  def __call__(self, x, train: bool):
    c, bn = _disc_layers(self, train)
    pool = (lambda h: avg_pool2x(h, self.conv_backend)) if self.downsample else (lambda h: h)
    h = nn.relu(bn(x, 'bn1'))
    x0 = x if self.use_bn else h  # the in-place ReLU aliasing, see the class docstring
    h = c(3, 'conv1')(h)
    h = nn.relu(bn(h, 'bn2'))
    h = pool(c(3, 'conv2')(h))
    if self.downsample or x.shape[-1] != self.features:
      x0 = pool(c(1, 'conv0')(bn(x0, 'bn0')))
    return h + x0
