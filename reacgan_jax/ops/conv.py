"""Stride-1 NHWC convolution whose weight gradient is computed as shifted matrix products on CPU.

Why: on XLA:CPU the weight gradient of a 3x3 convolution (the "backward filter" convolution,
contracting over batch x height x width) runs ~3.4x slower than the forward convolution of the
same FLOPs (B 64, 32x32, 384 -> 384 channels, 2 cores of an Intel Xeon: forward 0.90 s, input
gradient 0.90 s, weight gradient 3.43 s; benchmarks/conv_wgrad.py). It dominated the generator
update of the CIFAR-10 BigGAN (profile in benchmarks/README.md). Written as kh matrix products
instead — for each kernel row dy, the kw horizontally shifted copies of the padded input side by
side, [B*H*W, kw*C]^T @ [B*H*W, O], summed over a few chunks of the batch — the same gradient
takes 1.00 s: XLA:CPU's dot runs well, its backward-filter convolution does not.

The forward pass and the input gradient stay XLA's convolutions; other platforms (GPU, TPU,
whose convolution libraries have fast weight-gradient kernels) keep XLA's weight gradient too
(`lax.platform_dependent` picks the CPU branch only when lowering for CPU). The gradient is the
same sum in a different order: float32 rounding differences only (tests/ops/test_conv.py).

`conv_general_dilated` has lax.conv_general_dilated's signature (flax's `nn.Conv` takes it as
`conv_general_dilated=`) and falls back to lax for anything but a stride-1, undilated,
ungrouped NHWC/HWIO convolution with non-negative padding.

`for_backend(resolve(config.model.conv_backend))` picks the function layers.conv hands to
nn.Conv ('auto', the default, resolves to 'onednn' on one x86-64 CPU device with the extension,
else 'xla'; see `resolve`): 'xla' is the above; 'onednn' sends every undilated, ungrouped
NHWC/HWIO float32 or bfloat16 convolution (any stride) to oneDNN's forward / backward-data /
backward-weights primitives through a custom call (reacgan_jax/ops/onednn, the `onednn` extra)
when lowering for CPU, and keeps the 'xla' path on other platforms and for anything else.
"""

import functools
import os

import jax
import jax.numpy as jnp
from absl import logging
from jax import lax

from reacgan_jax.errors import ConfigError
from reacgan_jax.ops import onednn, winograd

_NHWC = ('NHWC', 'HWIO', 'NHWC')

# Batch chunks of the weight-gradient product: 4 chunks measured fastest of 1/4/8/16/64 on
# this CPU (B 64); fewer when the batch does not divide.
_CHUNKS = 4


def _xla_conv(x, w, padding, precision):
  return lax.conv_general_dilated(x, w, (1, 1), padding, dimension_numbers=_NHWC,
                                  precision=precision)


def _wgrad_shifted(x, g, kh, kw, padding, precision, out_dtype):
  """dL/dw [kh, kw, C, O] of y = conv(x [B, H, W, C], w), g = dL/dy [B, Ho, Wo, O]."""
  b, ho, wo, o = g.shape
  c = x.shape[-1]
  xp = jnp.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))
  chunks = next(k for k in (_CHUNKS, 2, 1) if b % k == 0)

  # A scan over batch chunks, not one expression: its operands are materialised once, before
  # the loop. Written flat, XLA fuses the producer of x (BN, ReLU, upsampling) into each of the
  # kw * kh shifted slices and recomputes it in a slow loop for every one of them (measured:
  # the slices then took a fifth of the generator update).
  def chunk(acc, inputs):
    xc, gc = inputs
    gm = gc.reshape(-1, o)
    rows = []
    for dy in range(kh):
      shifted = jnp.concatenate([xc[:, dy:dy + ho, dx:dx + wo, :] for dx in range(kw)], axis=-1)
      rows.append(jnp.dot(shifted.reshape(-1, kw * c).T, gm, precision=precision,
                          preferred_element_type=jnp.float32))
    return acc + jnp.stack(rows), None

  acc0 = jnp.zeros((kh, kw * c, o), jnp.float32)
  split = lambda t: t.reshape(chunks, b // chunks, *t.shape[1:])  # noqa: E731
  acc, _ = lax.scan(chunk, acc0, (split(xp), split(g)))
  return acc.reshape(kh, kw, c, o).astype(out_dtype)


def _wgrad_xla(x, w, g, padding, precision):
  _, vjp = jax.vjp(lambda w_: _xla_conv(x, w_, padding, precision), w)
  return vjp(g)[0]


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _conv_s1(x, w, padding, precision):
  return _xla_conv(x, w, padding, precision)


def _conv_s1_fwd(x, w, padding, precision):
  return _xla_conv(x, w, padding, precision), (x, w)


def _conv_s1_bwd(padding, precision, res, g):
  x, w = res
  _, vjp_x = jax.vjp(lambda x_: _xla_conv(x_, w, padding, precision), x)
  dx = vjp_x(g)[0]
  kh, kw = w.shape[:2]
  dw = lax.platform_dependent(
      x, w, g,
      cpu=lambda x, w, g: _wgrad_shifted(x, g, kh, kw, padding, precision, w.dtype),
      default=lambda x, w, g: _wgrad_xla(x, w, g, padding, precision))
  return dx, dw


_conv_s1.defvjp(_conv_s1_fwd, _conv_s1_bwd)


def _is_nhwc(dimension_numbers, lhs_shape, rhs_shape) -> bool:
  if dimension_numbers is None:
    return False
  try:
    return (lax.conv_dimension_numbers(lhs_shape, rhs_shape, dimension_numbers)
            == lax.conv_dimension_numbers(lhs_shape, rhs_shape, _NHWC))
  except (TypeError, ValueError):
    return False


def _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers, feature_group_count,
                batch_group_count, preferred_element_type) -> bool:
  """An undilated, ungrouped 2-D NHWC/HWIO convolution without a preferred output type."""
  return (lhs.ndim == 4 and rhs.ndim == 4
          and all(d == 1 for d in (lhs_dilation or (1, 1)))
          and all(d == 1 for d in (rhs_dilation or (1, 1)))
          and feature_group_count == 1 and batch_group_count == 1
          and preferred_element_type is None
          and _is_nhwc(dimension_numbers, lhs.shape, rhs.shape))


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                         precision=None, preferred_element_type=None):
  """lax.conv_general_dilated; stride-1 NHWC convolutions get the CPU weight gradient above."""
  fallback = functools.partial(
      lax.conv_general_dilated, lhs, rhs, window_strides, padding, lhs_dilation=lhs_dilation,
      rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if (tuple(window_strides) != (1, 1) or lhs.dtype != rhs.dtype
      or not _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                         feature_group_count, batch_group_count, preferred_element_type)):
    return fallback()
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], (1, 1), padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if any(p < 0 for pair in padding for p in pair):
    return fallback()
  return _conv_s1(lhs, rhs, padding, precision)


BACKENDS = ('auto', 'xla', 'onednn')


def _check_name(name: str, key: str) -> None:
  if name not in BACKENDS:
    raise ConfigError(f'{key}={name!r}: expected one of {", ".join(BACKENDS)}')


def resolve(name: str, key: str = 'config.model.conv_backend', *, dtype: str = 'float32') -> str:
  """The backend a config's conv_backend `name` runs here: 'xla' or 'onednn'.

  'auto' (the default) picks oneDNN on a single x86-64 CPU device where the extension builds and
  loads (the `onednn` extra and a C++ compiler) and the dtype has oneDNN convolutions on this
  CPU, XLA otherwise (GPU/TPU, another CPU, several CPU devices or processes, no extension),
  and logs the choice and why once per process and key.
  'xla' / 'onednn' are returned as given (checked by `check_backend`).
  """
  _check_name(name, key)
  if name != 'auto':
    return name
  chosen, why = _auto(dtype, jax.device_count())
  _log_choice(key, chosen, why)
  return chosen


@functools.cache
def _auto(dtype: str, devices: int) -> tuple[str, str]:
  platform = jax.default_backend()
  if platform != 'cpu':
    return 'xla', f'{platform} devices'
  if _machine() not in ('x86_64', 'amd64'):
    return 'xla', f'the oneDNN path is built for x86-64 CPUs, this is {_machine()}'
  if devices > 1:  # the partitioner replicates the custom call: every device would do it all
    return 'xla', (f'{devices} CPU devices: the oneDNN call is not partitioned over a mesh, each '
                   'device would compute the whole batch')
  ok, why = onednn.available()
  if not ok:
    return 'xla', f'the oneDNN extension is not available ({why.splitlines()[0]})'
  if dtype == 'bfloat16' and not onednn.bf16_supported():
    return 'xla', 'this CPU has no oneDNN bf16 convolution (it needs AVX-512 or AVX2-VNNI-2)'
  return 'onednn', f'an x86-64 CPU with the oneDNN {why} extension'


def _machine() -> str:
  return os.uname().machine.lower() if hasattr(os, 'uname') else ''


@functools.cache
def _log_choice(key: str, chosen: str, why: str) -> None:
  logging.info("%s='auto': %s convolutions (%s); set %s='xla' or 'onednn' to choose.", key,
               'oneDNN' if chosen == 'onednn' else 'XLA', why, key)


def check_backend(name: str, key: str = 'config.model.conv_backend',
                  dtype: str = 'float32') -> None:
  """Raises ValueError naming the config `key` when backend `name` cannot run here.

  dtype: the compute dtype ('bfloat16' with 'onednn' needs a CPU with oneDNN bf16 convolutions).
  """
  _check_name(name, key)
  if name == 'onednn':
    ok, why = onednn.available()
    if not ok:
      raise ValueError(f"{key}='onednn' cannot be used here: {why}")
    if dtype == 'bfloat16' and not onednn.bf16_supported():
      raise ValueError(f"{key}='onednn' with config.model.dtype=bfloat16: this CPU has no "
                       'oneDNN bf16 convolution (it needs AVX-512 or AVX2-VNNI-2); use '
                       f"--config.model.dtype=float32 with oneDNN, or {key}='xla' for bf16")


def conv_onednn(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                dimension_numbers=None, feature_group_count=1, batch_group_count=1,
                precision=None, preferred_element_type=None):
  """lax.conv_general_dilated; plain NHWC/HWIO convolutions run in oneDNN when lowered for CPU."""
  xla = functools.partial(
      conv_general_dilated, window_strides=window_strides, padding=padding,
      lhs_dilation=lhs_dilation, rhs_dilation=rhs_dilation, dimension_numbers=dimension_numbers,
      feature_group_count=feature_group_count, batch_group_count=batch_group_count,
      precision=precision, preferred_element_type=preferred_element_type)
  if not _plain_nhwc(lhs, rhs, lhs_dilation, rhs_dilation, dimension_numbers,
                     feature_group_count, batch_group_count, preferred_element_type):
    return xla(lhs, rhs)
  strides = tuple(int(s) for s in window_strides)
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], strides, padding)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  if not onednn.supported(lhs, rhs, strides, padding):
    return xla(lhs, rhs)
  onednn.load()  # registers the custom call before it is lowered
  return lax.platform_dependent(
      lhs, rhs, cpu=lambda x, w: onednn.conv2d(x, w, strides, padding), default=xla)


def conv_winograd(x, w, padding, m):
  """lax.conv_general_dilated(x, w, (1, 1), padding) for NHWC x, HWIO w [3, 3, C, O] (float32,
  shapes ops/winograd.supported takes) by Winograd F(m x m, 3 x 3) when lowered for CPU
  (ops/winograd.py), XLA's convolution elsewhere."""
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  xla = functools.partial(conv_general_dilated, window_strides=(1, 1), padding=padding,
                          dimension_numbers=_NHWC)
  onednn.load()  # registers the custom call (built with the oneDNN extension)
  return lax.platform_dependent(
      x, w, cpu=lambda x, w: winograd.conv3x3(x, w, padding, m), default=xla)


def conv_bias_onednn(x, w, b, strides, padding):
  """NHWC x HWIO convolution plus the bias b [O] (`conv_onednn(...) + b`), the bias inside
  oneDNN's primitives when lowered for CPU (onednn.conv2d_bias: added before the one rounding to
  x's dtype, its gradient from the weight gradient's primitive); elsewhere, and for shapes oneDNN
  does not take, the XLA convolution and `bias_add`."""
  strides = tuple(int(s) for s in strides)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)

  def xla(x, w, b):
    y = conv_general_dilated(x, w, strides, padding, dimension_numbers=_NHWC)
    return bias_add(y, b.astype(y.dtype))

  if not onednn.supported(x, w, strides, padding):
    return xla(x, w, b)
  onednn.load()
  return lax.platform_dependent(
      x, w, b, cpu=lambda x, w, b: onednn.conv2d_bias(x, w, b, strides, padding), default=xla)


def batch_norm_onednn(x, scale, shift, eps):
  """Training-mode batch norm of NHWC x over (N, H, W): (y in x's dtype, float32 mean, float32
  biased variance), in oneDNN's batch_normalization primitives when lowered for CPU
  (onednn.batch_norm), elsewhere the same two-pass float32 definition in jnp
  (onednn.batch_norm_reference). scale / shift: float32 [C], or both None."""
  xla = functools.partial(onednn.batch_norm_reference, eps=eps)

  if x.ndim != 4 or x.dtype not in (jnp.float32, jnp.bfloat16):
    return xla(x, scale, shift)
  onednn.load()

  def cpu(x, scale, shift):
    y, (mean, var) = onednn.batch_norm(x, scale, shift, eps)
    return y, mean, var

  return lax.platform_dependent(x, scale, shift, cpu=cpu, default=xla)


def conv_up_onednn(x, w, lhs_dilation, padding):
  """lax.conv_general_dilated(x, w, (1, 1), padding, lhs_dilation=lhs_dilation) for NHWC x and
  HWIO w (an up-sampling convolution, as StyleGAN2's), through oneDNN when lowered for CPU.

  The lhs-dilated conv is the transpose of a strided conv (stride = the dilation) with the
  kernel flipped, its in/out channels swapped and padding k - 1 - p: oneDNN's backward-data
  primitive computes it without multiplying the inserted zeros (a quarter of the FLOPs of the
  zero-inserted conv for up 2). Padding beyond k - 1 (negative transposed padding) only adds
  rows that no input reaches: computed as zeros around the transposed result. Elsewhere (other
  platforms, shapes oneDNN does not take) lax's lhs-dilated conv.
  """
  s = tuple(int(d) for d in lhs_dilation)
  padding = tuple((int(lo), int(hi)) for lo, hi in padding)
  xla = functools.partial(lax.conv_general_dilated, window_strides=(1, 1), padding=padding,
                          lhs_dilation=s, dimension_numbers=_NHWC)
  plan = _transposed(x, w, s, padding) if x.ndim == 4 and w.ndim == 4 else None
  if plan is None:
    return xla(x, w)
  t_pad, zeros, inner = plan
  onednn.load()

  def cpu(x, w):
    y = onednn.conv2d_transpose(x, _strided_kernel(w), s, t_pad, inner)
    return jnp.pad(y, ((0, 0), *zeros, (0, 0))) if any(map(any, zeros)) else y

  return lax.platform_dependent(x, w, cpu=cpu, default=xla)


def _strided_kernel(w):
  """The kernel [KH, KW, O, I] of the strided conv whose transpose is the lhs-dilated conv of
  the HWIO w: flipped, in/out swapped."""
  return jnp.swapaxes(w[::-1, ::-1], 2, 3)


def _transposed(x, w, s, padding):
  """How oneDNN runs lax.conv_general_dilated(x, w, (1, 1), padding, lhs_dilation=s) (NHWC x,
  HWIO w: arrays or ShapeDtypeStructs): (t_pad, the strided conv's padding; zeros, the rows
  around the transposed result no input reaches; inner, the transposed result's H, W), or None
  where oneDNN does not take the shape."""
  k = w.shape[:2]
  out = [(n - 1) * d + 1 + lo + hi - kk + 1
         for n, d, (lo, hi), kk in zip(x.shape[1:3], s, padding, k, strict=True)]
  t_pad = [(kk - 1 - lo, kk - 1 - hi) for kk, (lo, hi) in zip(k, padding, strict=True)]
  zeros = tuple((max(-lo, 0), max(-hi, 0)) for lo, hi in t_pad)
  t_pad = tuple((max(lo, 0), max(hi, 0)) for lo, hi in t_pad)
  inner = tuple(n - a - b for n, (a, b) in zip(out, zeros, strict=True))
  src = jax.ShapeDtypeStruct((1, *inner, w.shape[3]), x.dtype)  # the strided conv's input
  kernel = jax.ShapeDtypeStruct((*k, w.shape[3], w.shape[2]), w.dtype)  # [KH, KW, O, I]
  if (min(inner) < 1 or not onednn.supported(src, kernel, s, t_pad)
      or onednn.out_hw(inner, k, s, t_pad) != tuple(x.shape[1:3])):
    return None
  return t_pad, zeros, inner


def nearest2x(x):
  """Nearest-neighbour 2x upsampling [B, H, W, C] -> [B, 2H, 2W, C] as one broadcast."""
  b, h, w, c = x.shape
  return jnp.broadcast_to(x[:, :, None, :, None, :], (b, h, 2, w, 2, c)).reshape(
      b, 2 * h, 2 * w, c)


# Nearest 2x upsampling then a 3x3 conv (padding 1) is one transposed conv, stride 2, of a 4x4
# kernel: along each axis output row 2i reads input rows (i - 1, i) with taps (w0, w1 + w2) and
# row 2i + 1 reads (i, i + 1) with (w0 + w1, w2). _up_taps maps the 3 taps to the 4 of the kernel
# of the lhs-dilated (dilation 2, padding 2) conv that equals it: the matrix
# [[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]] applied along one axis.


def _up_taps(w, axis):
  """The 3 taps along `axis` mapped to 4 as slices and adds: (w0, w0 + w1, w1 + w2, w2)."""
  a, b, c = (jax.lax.index_in_dim(w, i, axis, keepdims=True) for i in range(3))
  return jnp.concatenate([a, a + b, b + c, c], axis=axis)


def upsample_kernel(w):
  """The 4x4 HWIO kernel k with conv(dilate2(x), k, padding 2) == conv(nearest2x(x), w, padding 1)
  for a 3x3 HWIO w (in w's dtype; float32 w: sums of two taps, exact up to one rounding).

  The tap map along H, then along W, as slices and adds: the same values and gradients, bit for
  bit, as einsum('pr,qs,rsio->pqio', U, U, w) with U that 4x3 matrix, which XLA:CPU ran as two
  dots of 3 by 4 matrices plus transposes (21.6 ms for a 3x3x384x384 kernel on 2 Intel AMX
  cores, 1.4 ms this way; tests/ops/test_onednn.py checks both).
  """
  return _up_taps(_up_taps(w, 0), 1)


def upsample_conv_onednn(x, w, b, dtype):
  """conv3x3(nearest2x(x), w, padding 1) + b for NHWC x, HWIO w [3, 3, C, O] and b [O] (float32),
  in `dtype`: on CPU one oneDNN transposed convolution, stride 2, of the 4x4 kernel
  `upsample_kernel(w)` (formed from float32 w, then cast once), the bias inside oneDNN
  (onednn.conv2d_transpose_bias): 16 taps per 2x2 output pixels where the upsampled 3x3 conv
  spends 36, and no upsampled copy of x. Elsewhere, and for shapes oneDNN does not take, the
  definition (XLA's conv of the upsampled x, the bias added in `dtype`).
  """
  x = x.astype(dtype)

  def xla(x, w, b):
    y = conv_general_dilated(nearest2x(x), w.astype(dtype), (1, 1), ((1, 1), (1, 1)),
                             dimension_numbers=_NHWC)
    return bias_add(y, b.astype(y.dtype))

  if w.shape[:2] != (3, 3) or x.ndim != 4:
    return xla(x, w, b)
  k4 = jax.ShapeDtypeStruct((4, 4, *w.shape[2:]), dtype)
  plan = _transposed(x, k4, (2, 2), ((2, 2), (2, 2)))   # the lhs-dilated conv it equals
  if plan is None:
    return xla(x, w, b)
  t_pad, _, inner = plan   # no zero rows: padding 2 < 4
  onednn.load()

  def cpu(x, w, b):
    k = _strided_kernel(upsample_kernel(w.astype(jnp.float32))).astype(dtype)
    return onednn.conv2d_transpose_bias(x, k, b.astype(jnp.float32), (2, 2), t_pad, inner)

  return lax.platform_dependent(x, w, b, cpu=cpu, default=xla)


def for_backend(name: str):
  """The conv_general_dilated that nn.Conv gets for a resolved backend `name` (see `resolve`)."""
  if name not in ('xla', 'onednn'):
    raise ValueError(f"conv backend {name!r}: expected 'xla' or 'onednn' (resolve 'auto' first)")
  return conv_onednn if name == 'onednn' else conv_general_dilated


@jax.custom_vjp
def bias_add(y, bias):
  """y + bias over the last axis, whose bias gradient is a matrix-vector product.

  Autodiff makes the bias gradient a sum of the output gradient over (B, H, W), which XLA:CPU
  rewrites into reduce-windows of 32 (its tree-reduction pass) that run at ~1 GB/s: 0.24 s of a
  1.35 s SNGAN bf16 D update on oneDNN were those sums (benchmarks/README.md, "Bias gradients
  as matrix products"). ones[B*H*W] @ dy[B*H*W, C] with a float32 accumulator is the same sum
  through the matmul kernels. The oneDNN backend's conv layers use it where oneDNN does not
  run (`conv_bias_onednn` off CPU or on shapes it refuses); the XLA path keeps autodiff's sum, so
  the recorded float32 behaviours stay bit-identical.
  """
  return y + bias


def _bias_add_fwd(y, bias):
  return y + bias, bias  # only its dtype is needed: [C], nothing saved of size


def _bias_add_bwd(bias, dy):
  return dy, onednn.bias_sum(dy).astype(bias.dtype)


bias_add.defvjp(_bias_add_fwd, _bias_add_bwd)

