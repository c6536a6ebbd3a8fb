"""oneDNN convolutions on CPU through a jax.ffi custom call (issue 18; the `onednn` extra).

`conv2d(x, w, strides, padding)` is an NHWC x HWIO convolution with a custom VJP whose forward,
input gradient and weight gradient are each one call into oneDNN (dnnl_conv.cc), float32 or
bfloat16 operands (float32 accumulation). It is what `model.conv_backend='onednn'` routes the
GAN backbones' convolutions to (models/conv.py); XLA stays the default and the fallback.

The extension is compiled on first use with the machine's C++ compiler against the PyPI wheels
`onednn-cpu-gomp` / `onednn-devel-cpu-gomp` (`pip install -e '.[onednn]'`) and jaxlib's FFI
headers, into a cache folder keyed by the source, jaxlib and oneDNN versions
($REACGAN_JAX_CACHE or ~/.cache/reacgan_jax). `available()` says whether that works here and,
when not, why; `load()` raises that reason as one error saying what to install.
"""

import ctypes
import functools
import hashlib
import importlib.metadata
import os
import pathlib
import shutil
import subprocess

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from reacgan_jax.platform import paths

TARGET = 'reacgan_dnnl_conv'
TARGET_BIAS = 'reacgan_dnnl_conv_bias'         # kind 0 with the layer's bias
TARGET_WGRAD_BIAS = 'reacgan_dnnl_wgrad_bias'  # kind 2 with the bias gradient
TARGET_T_BIAS = 'reacgan_dnnl_deconv_bias'     # kind 3: the transposed conv with its bias
TARGET_BN_FWD, TARGET_BN_BWD = 'reacgan_dnnl_bn_fwd', 'reacgan_dnnl_bn_bwd'
_SRC = pathlib.Path(__file__).with_name('dnnl_conv.cc')
_SRC_WINOGRAD = _SRC.with_name('winograd.cc')  # Winograd tile transforms (ops/winograd.py)
TARGET_WINOGRAD = 'reacgan_winograd'
_DIST, _DEVEL = 'onednn-cpu-gomp', 'onednn-devel-cpu-gomp'
_INSTALL_HINT = ("pip install -e '.[onednn]' (the PyPI wheels onednn-cpu-gomp and "
                 'onednn-devel-cpu-gomp) and a C++ compiler (g++), or keep '
                 "model.conv_backend='xla'")


class OneDNNUnavailable(RuntimeError):
  """The oneDNN extension cannot be built or loaded here; the message says what to install."""


def _dist_file(dist: str, suffix: str) -> pathlib.Path:
  """The installed file of `dist` whose path ends with `suffix` (wheel data lands in the prefix)."""
  try:
    files = importlib.metadata.distribution(dist).files or ()
  except importlib.metadata.PackageNotFoundError as e:
    raise OneDNNUnavailable(f'oneDNN: the package {dist} is not installed: {_INSTALL_HINT}') from e
  for f in files:
    if str(f).replace(os.sep, '/').endswith(suffix):
      return pathlib.Path(importlib.metadata.distribution(dist).locate_file(f)).resolve()
  raise OneDNNUnavailable(f'oneDNN: {dist} has no file {suffix}: {_INSTALL_HINT}')


def _paths():
  lib = _dist_file(_DIST, '/libdnnl.so.3')
  header = _dist_file(_DEVEL, 'include/oneapi/dnnl/dnnl.hpp')
  return lib, header.parent.parent.parent   # .../include


def _cache_dir() -> pathlib.Path:
  return paths.onednn_cache_dir()


def _digest(path: pathlib.Path) -> str:
  return hashlib.sha256(path.read_bytes()).hexdigest()


def _verified(out: pathlib.Path) -> bool:
  """Whether the cached extension is the file this process's build wrote (size and sha256).

  A truncated .so crashes the process that loads it (SIGBUS), so nothing unverified is loaded.
  """
  sidecar = out.with_name(out.name + '.sha256')
  try:
    size, digest = sidecar.read_text().split()
    return out.stat().st_size == int(size) and _digest(out) == digest
  except (OSError, ValueError):
    return False


def build() -> pathlib.Path:
  """Compiles dnnl_conv.cc and winograd.cc (once per source / jaxlib / oneDNN version / CPU) and
  returns the .so path.

  The cache is checked first (a verified build needs no compiler); a damaged cached file (size or
  sha256 not the ones written beside it at build time) is rebuilt, with a warning.
  """
  lib, include = _paths()
  # -march=native (the Winograd transforms' loops vectorise to the CPU's widest registers): the
  # CPU's flags are part of the key, so a cache shared between different CPUs keeps one build
  # per instruction set.
  tag = hashlib.sha256(_SRC.read_bytes() + _SRC_WINOGRAD.read_bytes()
                       + jax.lib.__version__.encode() + importlib.metadata.version(_DIST).encode()
                       + str(lib).encode() + ' '.join(sorted(_cpu_flags() or ())).encode())
  out = _cache_dir() / f'dnnl_conv_{tag.hexdigest()[:16]}.so'
  if _verified(out):
    return out
  if out.exists():
    logging.warning('oneDNN: the cached extension %s is damaged or unverified (its size/sha256 '
                    'differ from %s.sha256): rebuilding it.', out, out.name)
  cxx = os.environ.get('CXX') or shutil.which('g++') or shutil.which('c++')
  if not cxx:
    raise OneDNNUnavailable(f'oneDNN: no C++ compiler found (g++ / c++ / $CXX) to build {out}: '
                            f'{_INSTALL_HINT}')
  out.parent.mkdir(parents=True, exist_ok=True)
  tmp = out.with_suffix(f'.{os.getpid()}.tmp')
  cmd = [cxx, '-O2', '-march=native', '-std=c++17', '-shared', '-fPIC', '-fopenmp', '-w',
         f'-I{jax.ffi.include_dir()}', f'-I{include}', str(_SRC), str(_SRC_WINOGRAD), str(lib),
         f'-Wl,-rpath,{lib.parent}', '-o', str(tmp)]
  proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
  if proc.returncode != 0:
    raise OneDNNUnavailable(f'oneDNN: compiling {_SRC.name} failed ({" ".join(cmd)}):\n'
                            f'{proc.stderr[-3000:]}')
  sidecar_tmp = out.with_name(f'{out.name}.sha256.{os.getpid()}.tmp')
  sidecar_tmp.write_text(f'{tmp.stat().st_size} {_digest(tmp)}\n')
  os.replace(tmp, out)   # atomic: a concurrent build of the same key writes the same file
  os.replace(sidecar_tmp, out.with_name(out.name + '.sha256'))
  return out


@functools.cache
def load() -> str:
  """Builds and registers the custom call once per process; returns oneDNN's version string."""
  # RTLD_DEEPBIND: the extension's oneDNN calls bind to the wheel's libdnnl even when another
  # oneDNN is already in the process (torch's libtorch_cpu.so exports its own, older dnnl_*
  # symbols; without it, importing torch first would silently route our calls to that copy).
  so = ctypes.CDLL(str(build()), mode=os.RTLD_LOCAL | os.RTLD_DEEPBIND)
  for target, fn in ((TARGET, so.ReacganDnnlConv), (TARGET_BIAS, so.ReacganDnnlConvBias),
                     (TARGET_WGRAD_BIAS, so.ReacganDnnlWgradBias),
                     (TARGET_T_BIAS, so.ReacganDnnlDeconvBias),
                     (TARGET_BN_FWD, so.ReacganDnnlBnFwd), (TARGET_BN_BWD, so.ReacganDnnlBnBwd),
                     (TARGET_WINOGRAD, so.ReacganWinograd)):
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(fn), platform='cpu')
  v = [ctypes.c_int() for _ in range(3)]
  so.ReacganDnnlVersion(*[ctypes.byref(i) for i in v])
  return '.'.join(str(i.value) for i in v)


def available() -> tuple[bool, str]:
  """(True, oneDNN version) when the extension builds and loads here, else (False, why)."""
  try:
    return True, load()
  except (OneDNNUnavailable, OSError) as e:
    return False, str(e)


# oneDNN 3.2 builds bf16 convolutions only on CPUs with AVX-512 (avx512_core: F, BW, VL, DQ;
# native bf16 with avx512_bf16 / AMX) or AVX2 with VNNI-2 (avx_ne_convert). On an AVX2-only CPU
# creating the primitive fails ("could not create a primitive descriptor"), so it is refused
# before anything is traced.
_BF16_ISAS = ({'avx512f', 'avx512bw', 'avx512vl', 'avx512dq'}, {'avx_ne_convert'})


@functools.cache
def _cpu_flags() -> frozenset[str] | None:
  """The CPU's feature flags from /proc/cpuinfo (None where it is missing)."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((line.split(':', 1)[1].split() for line in f if line.startswith('flags')), None)
  except OSError:
    return None
  return None if flags is None else frozenset(flags)


@functools.cache
def bf16_supported() -> bool:
  """Whether this CPU runs oneDNN's bf16 convolutions (True where /proc/cpuinfo is missing)."""
  flags = _cpu_flags()
  return flags is None or any(isa <= flags for isa in _BF16_ISAS)


def varying_axes(*arrays) -> tuple[str, ...]:
  """The shard_map axes any of `arrays` varies over (empty outside shard_map)."""
  axes = set()
  for a in arrays:
    axes |= getattr(getattr(jax.typeof(a), 'manual_axis_type', None), 'varying', frozenset())
  return tuple(sorted(axes))


def _attrs(strides, padding):
  (pt, pb), (pl, pr) = padding
  return dict(stride_h=np.int64(strides[0]), stride_w=np.int64(strides[1]),
              pad_top=np.int64(pt), pad_bottom=np.int64(pb), pad_left=np.int64(pl),
              pad_right=np.int64(pr))


def _call(kind, a, b, out_shape, out_dtype, strides, padding):
  # Under vmap (the seeded sampler runs G once per row, vmapped) one call per mapped element:
  # the handler takes 4-D operands only.
  out = jax.ffi.ffi_call(TARGET, jax.ShapeDtypeStruct(out_shape, out_dtype),
                         vmap_method='sequential')(
      a, b, kind=np.int64(kind), **_attrs(strides, padding))
  # Inside shard_map (the sharded evaluation, evaluation/on_mesh.py) the call's result is
  # per-device like its input: typed so, or lax.platform_dependent's branches (the XLA one is
  # varying) disagree. Forward and input gradient only: nothing takes weight gradients there.
  axes = varying_axes(a, b) if kind != 2 else ()
  return jax.lax.pcast(out, axes, to='varying') if axes else out


def out_hw(hw, kernel, strides, padding):
  return tuple((n + lo + hi - k) // s + 1
               for n, k, s, (lo, hi) in zip(hw, kernel, strides, padding, strict=True))


# The three oneDNN primitives as three linear maps, each a custom_vjp whose backward is made of
# the other two (not of raw custom calls), so that gradients are differentiable again, as R1 and
# StyleGAN2's path-length term need (a gradient penalty differentiates D's input gradient with
# respect to the weights: reverse over reverse; the raw custom call has no derivative). For
# y = conv2d(x, w) and cotangents gy, gx, gw of y, x, w:
#   conv2d(x, w)           -> y:  dx = conv2d_transpose(gy, w), dw = conv2d_wgrad(x, gy)
#   conv2d_transpose(g, w) -> x:  dg = conv2d(gx, w),           dw = conv2d_wgrad(gx, g)
#   conv2d_wgrad(x, g)     -> w:  dx = conv2d_transpose(g, gw), dg = conv2d(x, gw)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x, w, strides, padding):
  """NHWC x HWIO -> NHWC convolution in oneDNN (x, w float32 or bfloat16, the same dtype).

  strides: (sh, sw); padding: ((top, bottom), (left, right)), non-negative. The output has x's
  dtype. Gradients: oneDNN's backward-data and backward-weights primitives (`conv2d_transpose`,
  `conv2d_wgrad`), themselves differentiable.
  """
  ho, wo = out_hw(x.shape[1:3], w.shape[:2], strides, padding)
  return _call(0, x, w, (x.shape[0], ho, wo, w.shape[3]), x.dtype, strides, padding)


def _fwd(x, w, strides, padding):
  return conv2d(x, w, strides, padding), (x, w)


def _bwd(strides, padding, res, g):
  x, w = res
  g = g.astype(x.dtype)
  return (conv2d_transpose(g, w, strides, padding, x.shape[1:3]),
          conv2d_wgrad(x, g, strides, padding, w.shape[:2]).astype(w.dtype))


conv2d.defvjp(_fwd, _bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_transpose(g, w, strides, padding, out_hw):
  """The transpose of `conv2d(., w, strides, padding)` applied to g [N, Ho, Wo, O]: an
  [N, *out_hw, C] array (oneDNN's backward-data primitive run forward: a transposed, i.e.
  up-sampling, convolution that spends no FLOP on inserted zeros). w is the strided conv's HWIO
  kernel [KH, KW, C, O]; out_hw must be a size `conv2d` maps back to (Ho, Wo).
  Gradients: the forward convolution (of g) and the backward-weights primitive.
  """
  return _call(1, g, w, (g.shape[0], *out_hw, w.shape[2]), g.dtype, strides, padding)


def _t_fwd(g, w, strides, padding, out_hw):
  return conv2d_transpose(g, w, strides, padding, out_hw), (g, w)


def _t_bwd(strides, padding, out_hw, res, dy):
  del out_hw
  g, w = res
  dy = dy.astype(g.dtype)
  return (conv2d(dy, w, strides, padding),
          conv2d_wgrad(dy, g, strides, padding, w.shape[:2]).astype(w.dtype))


conv2d_transpose.defvjp(_t_fwd, _t_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_wgrad(x, g, strides, padding, kernel_hw):
  """The weight gradient [KH, KW, C, O] of `conv2d(x, w, strides, padding)` for the output
  cotangent g [N, Ho, Wo, O] (oneDNN's backward-weights primitive), in x's dtype."""
  return _call(2, x, g, (*kernel_hw, x.shape[3], g.shape[3]), x.dtype, strides, padding)


def _w_fwd(x, g, strides, padding, kernel_hw):
  return conv2d_wgrad(x, g, strides, padding, kernel_hw), (x, g)


def _w_bwd(strides, padding, kernel_hw, res, gw):
  del kernel_hw
  x, g = res
  gw = gw.astype(x.dtype)
  return (conv2d_transpose(g, gw, strides, padding, x.shape[1:3]),
          conv2d(x, gw, strides, padding))


conv2d_wgrad.defvjp(_w_fwd, _w_bwd)


# A conv layer with its bias, through the same primitives with the bias inside them (the two
# bias targets): the forward adds it before its one rounding to x's dtype, and the weight
# gradient's primitive returns the bias gradient (the sum of g over N, H, W, float32) beside dw,
# so neither the bias add nor its gradient costs XLA a pass over the activation (on the Intel
# AMX CPU those passes were up to a fifth of the SNGAN bf16 D update: benchmarks/README.md,
# "On the Intel AMX CPU"). The bias is float32 whatever x's dtype.


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4))
def conv2d_bias(x, w, b, strides, padding):
  """`conv2d(x, w, strides, padding) + b` with the bias b [O] added inside oneDNN (in float32,
  rounded once to x's dtype). Gradients: `conv2d_transpose` and `conv2d_wgrad_bias`."""
  ho, wo = out_hw(x.shape[1:3], w.shape[:2], strides, padding)
  out = jax.ffi.ffi_call(TARGET_BIAS, jax.ShapeDtypeStruct((x.shape[0], ho, wo, w.shape[3]),
                                                           x.dtype),
                         vmap_method='sequential')(
      x, w, b.astype(jnp.float32), **_attrs(strides, padding))
  axes = varying_axes(x, w, b)
  return jax.lax.pcast(out, axes, to='varying') if axes else out


def _b_fwd(x, w, b, strides, padding):
  return conv2d_bias(x, w, b, strides, padding), (x, w, b)


def _b_bwd(strides, padding, res, g):
  x, w, b = res
  g = g.astype(x.dtype)
  dw, db = conv2d_wgrad_bias(x, g, strides, padding, w.shape[:2])
  return (conv2d_transpose(g, w, strides, padding, x.shape[1:3]), dw.astype(w.dtype),
          db.astype(b.dtype))


conv2d_bias.defvjp(_b_fwd, _b_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv2d_wgrad_bias(x, g, strides, padding, kernel_hw):
  """(`conv2d_wgrad(x, g, ...)`, the bias gradient: g summed over N, H, W in float32 [O]), both
  from one backward-weights primitive."""
  return jax.ffi.ffi_call(
      TARGET_WGRAD_BIAS,
      (jax.ShapeDtypeStruct((*kernel_hw, x.shape[3], g.shape[3]), x.dtype),
       jax.ShapeDtypeStruct((g.shape[3],), jnp.float32)),
      vmap_method='sequential')(x, g, **_attrs(strides, padding))


def _wb_fwd(x, g, strides, padding, kernel_hw):
  return conv2d_wgrad_bias(x, g, strides, padding, kernel_hw), (x, g)


def _wb_bwd(strides, padding, kernel_hw, res, cot):
  del kernel_hw
  x, g = res
  gw, gb = cot
  gw = gw.astype(x.dtype)
  dg = conv2d(x, gw, strides, padding) + gb.astype(g.dtype)
  return conv2d_transpose(g, gw, strides, padding, x.shape[1:3]), dg


conv2d_wgrad_bias.defvjp(_wb_fwd, _wb_bwd)


# The transposed convolution with a bias on its output (the up-sampling conv of the BigGAN-family
# generators, conv_ops.upsample_conv_onednn): oneDNN's deconvolution primitive adds the bias
# before the one rounding. Its gradients: dg = conv2d(gx, w), dw = conv2d_wgrad(gx, g) and the
# bias gradient as the float32 product ones @ gx (oneDNN 3.2's deconvolution backward-weights
# primitive with a bias took 92 ms where this pair takes ~30, bf16 64x32x32x256 on the AMX CPU).


def bias_sum(dy):
  """dy summed over every axis but the last, as the matrix-vector product ones @ dy[-1, C] with
  a float32 accumulator (float64 for float64 dy): the gradient of a bias added over dy's last
  axis (also conv_ops.bias_add's)."""
  rows = dy.reshape(-1, dy.shape[-1])
  acc = jnp.promote_types(dy.dtype, jnp.float32)
  return jnp.dot(jnp.ones((rows.shape[0],), dy.dtype), rows, preferred_element_type=acc)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3, 4, 5))
def conv2d_transpose_bias(g, w, b, strides, padding, out_hw):
  """`conv2d_transpose(g, w, strides, padding, out_hw) + b`, the bias b [C] (w's third axis)
  added inside oneDNN (float32, rounded once to g's dtype)."""
  out = jax.ffi.ffi_call(TARGET_T_BIAS,
                         jax.ShapeDtypeStruct((g.shape[0], *out_hw, w.shape[2]), g.dtype),
                         vmap_method='sequential')(
      g, w, b.astype(jnp.float32), **_attrs(strides, padding))
  axes = varying_axes(g, w, b)
  return jax.lax.pcast(out, axes, to='varying') if axes else out


def _tb_fwd(g, w, b, strides, padding, out_hw):
  return conv2d_transpose_bias(g, w, b, strides, padding, out_hw), (g, w, b)


def _tb_bwd(strides, padding, out_hw, res, dx):
  del out_hw
  g, w, b = res
  dx = dx.astype(g.dtype)
  dw = conv2d_wgrad(dx, g, strides, padding, w.shape[:2])
  return (conv2d(dx, w, strides, padding), dw.astype(w.dtype),
          bias_sum(dx).astype(b.dtype))


conv2d_transpose_bias.defvjp(_tb_fwd, _tb_bwd)


# Batch normalisation in training mode (batch statistics over N, H, W), oneDNN's primitives:
# the statistics in one pass each over the activation, the normalisation in one, the backward in
# two, where XLA:CPU's two-pass float32 statistics, normalisation and their autodiff
# materialised float32 copies of the activation some ten times per BN (the largest share of the
# bf16 G update on the Intel AMX CPU: benchmarks/README.md, "On the Intel AMX CPU").


def batch_norm_reference(x, scale, shift, eps):
  """`batch_norm`'s jnp definition (layers.BatchNorm's, groups = 1): (y in x's dtype, float32
  mean, float32 biased variance), two-pass statistics. What runs off CPU (conv_ops.
  batch_norm_onednn) and what `batch_norm_grad` differentiates for second derivatives."""
  x32 = x.astype(jnp.float32)
  axes = tuple(range(x.ndim - 1))   # NHWC: (N, H, W); any rank, channels last
  mean = jnp.mean(x32, axes)
  var = jnp.mean(jnp.square(x32 - mean), axes)
  y = (x32 - mean) * jax.lax.rsqrt(var + eps)
  if scale is not None:
    y = y * scale + shift
  return y.astype(x.dtype), mean, var


def _bn_ffi(target, x, operands, eps, affine):
  """One BN custom call: outputs (x-shaped in x's dtype, float32 [C], float32 [C])."""
  stat = jax.ShapeDtypeStruct((x.shape[-1],), jnp.float32)
  return jax.ffi.ffi_call(
      target, (jax.ShapeDtypeStruct(x.shape, x.dtype), stat, stat),
      vmap_method='sequential')(*operands, eps=np.float32(eps), affine=np.int64(affine))


def _bn_call_fwd(x, scale, shift, eps):
  affine = scale is not None
  ones = jnp.ones((x.shape[-1],), jnp.float32)   # unread without affine
  return _bn_ffi(TARGET_BN_FWD, x, (x, scale if affine else ones, shift if affine else ones),
                 eps, affine)


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm(x, scale, shift, eps):
  """Training-mode batch norm of NHWC x over (N, H, W) in oneDNN: (y, (mean, var)).

  y = (x - mean) / sqrt(var + eps) [* scale + shift] in x's dtype (float32 or bfloat16);
  mean and the biased variance var are float32 [C]. scale, shift: float32 [C], or both None
  (no affine). The statistics are outputs for the running averages only: their cotangents are
  not propagated (layers.BatchNorm stops their gradient). The gradient of y is oneDNN's backward
  primitive, whose own derivative (a gradient penalty through a BN) is the jnp definition's.
  """
  y, mean, var = _bn_call_fwd(x, scale, shift, eps)
  return y, (mean, var)


def _bn_fwd(x, scale, shift, eps):
  y, (mean, var) = batch_norm(x, scale, shift, eps)  # itself: differentiable again (see conv2d)
  return (y, (mean, var)), (x, scale, shift, mean, var)


def _bn_bwd(eps, res, cot):
  x, scale, shift, mean, var = res
  dy = cot[0].astype(x.dtype)   # the statistics' cotangents are dropped (see the docstring)
  dx, dscale, dshift = batch_norm_grad(x, scale, shift, dy, mean, var, eps)
  if scale is None:
    return dx, None, None
  return dx, dscale, dshift


batch_norm.defvjp(_bn_fwd, _bn_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(6,))
def batch_norm_grad(x, scale, shift, dy, mean, var, eps):
  """(dx, dscale, dshift) of `batch_norm`'s y for the cotangent dy, from oneDNN's backward
  primitive (mean, var: the forward's statistics). Differentiable: its VJP is the jnp
  definition's second derivative (the statistics recomputed from x)."""
  affine = scale is not None
  ones = jnp.ones((x.shape[-1],), jnp.float32)   # unread without affine
  return _bn_ffi(TARGET_BN_BWD, x, (x, dy, mean, var, scale if affine else ones), eps, affine)


def _bng_fwd(x, scale, shift, dy, mean, var, eps):
  return batch_norm_grad(x, scale, shift, dy, mean, var, eps), (x, scale, shift, dy, mean, var)


def _bng_bwd(eps, res, cot):
  x, scale, shift, dy, mean, var = res

  def grads(x, scale, shift, dy):
    _, vjp = jax.vjp(lambda x, s, b: batch_norm_reference(x, s, b, eps)[0], x, scale, shift)
    return vjp(dy)

  _, vjp = jax.vjp(grads, x, scale, shift, dy)
  if scale is None:   # the primitive's zero dscale / dshift stand for no affine: nothing flows
    cot = (cot[0], None, None)
  dx, dscale, dshift, ddy = vjp(cot)
  return dx, dscale, dshift, ddy, jnp.zeros_like(mean), jnp.zeros_like(var)


batch_norm_grad.defvjp(_bng_fwd, _bng_bwd)


def supported(x, w, strides, padding) -> bool:
  """Whether `conv2d` takes this convolution (else the caller keeps XLA's)."""
  return (x.ndim == 4 and w.ndim == 4 and x.dtype == w.dtype
          and x.dtype in (jnp.float32, jnp.bfloat16) and x.shape[3] == w.shape[2]
          and all(s >= 1 for s in strides)
          and all(p >= 0 for pair in padding for p in pair)
          and min(out_hw(x.shape[1:3], w.shape[:2], strides, padding)) >= 1)


__all__ = ['OneDNNUnavailable', 'available', 'batch_norm', 'batch_norm_grad',
           'batch_norm_reference', 'bf16_supported', 'bias_sum',
           'build', 'conv2d', 'conv2d_bias',
           'conv2d_transpose', 'conv2d_transpose_bias', 'conv2d_wgrad', 'conv2d_wgrad_bias',
           'load', 'supported']
