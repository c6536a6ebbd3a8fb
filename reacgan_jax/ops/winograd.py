"""Winograd F(m x m, 3 x 3) convolutions: float32, stride 1, NHWC x HWIO (issue 28).

A 3x3 convolution computed tile by tile (Lavin & Gray 2016, "Fast Algorithms for Convolutional
Neural Networks"): for an output tile of m x m and its (m + 2) x (m + 2) input window d,

    Y = A^T [ (G g G^T) . (B^T d B) ] A      (. elementwise; g the 3x3 kernel of one (c, o))

so that, summed over input channels, each of the (m + 2)^2 tile positions is one matrix product
[tiles, C] x [C, O]: (m + 2)^2 / m^2 multiplies per output and channel pair instead of 9
(F(2x2, 3x3): 4, 2.25x fewer; F(4x4, 3x3): 2.25, 4x fewer). The products are XLA dots; the tile
transforms B^T d B and A^T M A (and their transposes, for the gradients) are one CPU custom call
(ops/onednn/winograd.cc, built with the oneDNN extension); the kernel transform G g G^T is one
[P, 9] x [9, C * O] dot. Every piece is linear with its transpose as its VJP, so gradients of
gradients (R1) work as for any XLA op.

The multiplies that remain are those of the definition, in float32; what changes is rounding:
the transforms add and scale activations before the products (F(4x4, 3x3)'s by up to 5 and 8),
so the result differs from a direct convolution by a few float32 ulps of the inputs' scale
times those factors (measured in tests/ops/test_winograd.py against float64 definitions).

`conv3x3(x, w, padding, m)` is the convolution (CPU only: it is called through
ops/conv.conv_winograd, which keeps XLA's convolution on other platforms); `supported` says
whether a shape takes it.
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from reacgan_jax.ops import onednn

TILE_SIZES = (2, 4)

# Lavin & Gray's matrices, float64: B^T [A, A], G [A, 3], A^T [m, A] with A = m + 2.
MATRICES = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
        np.array([[1, 0, 0], [.5, .5, .5], [.5, -.5, .5], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64)),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]], np.float64),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]], np.float64)),
}

# The custom call's kinds (winograd.cc): 0 input tiles, 1 their transpose, 2 output, 3 its
# transpose; kind ^ 1 is the transpose of kind.
INPUT, INPUT_T, OUTPUT, OUTPUT_T = 0, 1, 2, 3


class Tiles(NamedTuple):
  """The static geometry of one transform: tile size m, the image [n, h, w, c], tiles per
  column / row, the padding in front (the windows start at tile * m - pad)."""
  m: int
  n: int
  h: int
  w: int
  c: int
  th: int
  tw: int
  pad_top: int = 0
  pad_left: int = 0

  @property
  def tile_shape(self):
    return ((self.m + 2) ** 2, self.n * self.th * self.tw, self.c)

  @property
  def image_shape(self):
    return (self.n, self.h, self.w, self.c)


def _call(kind, a, t: Tiles):
  shape = t.tile_shape if kind in (INPUT, OUTPUT_T) else t.image_shape
  out = jax.ffi.ffi_call(onednn.TARGET_WINOGRAD, jax.ShapeDtypeStruct(shape, jnp.float32),
                         vmap_method='sequential')(
      a, kind=np.int64(kind), m=np.int64(t.m), tiles_h=np.int64(t.th), tiles_w=np.int64(t.tw),
      pad_top=np.int64(t.pad_top), pad_left=np.int64(t.pad_left))
  axes = onednn.varying_axes(a)  # inside shard_map: per-device like its input (onednn._call)
  return jax.lax.pcast(out, axes, to='varying') if axes else out


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 2))
def transform(kind: int, a, t: Tiles):
  """One tile transform (module docstring); linear, its VJP is transform(kind ^ 1, ., t)."""
  return _call(kind, a, t)


def _transform_fwd(kind, a, t):
  return transform(kind, a, t), None


def _transform_bwd(kind, t, _, g):
  return (transform(kind ^ 1, g.astype(jnp.float32), t),)


transform.defvjp(_transform_fwd, _transform_bwd)


@functools.cache
def _kernel_matrix(m: int) -> np.ndarray:
  """kron(G, G) as float32 [A * A, 9]: row a * A + b, column 3 i + j holds G[a, i] G[b, j]."""
  g = MATRICES[m][1]
  return np.kron(g, g).astype(np.float32)


def kernel_tiles(w, m: int):
  """G g G^T for every (c, o) of the HWIO kernel w [3, 3, C, O]: [(m + 2)^2, C, O]."""
  c, o = w.shape[2:]
  return (jnp.asarray(_kernel_matrix(m)) @ w.reshape(9, c * o)).reshape(-1, c, o)


def out_hw(hw, padding):
  return tuple(n + lo + hi - 2 for n, (lo, hi) in zip(hw, padding, strict=True))


def supported(x, w, strides, padding, m: int) -> bool:
  """Whether `conv3x3(x, w, padding, m)` takes this convolution: float32 NHWC x [3, 3, C, O],
  stride 1, padding at most 2 on each side, output height and width multiples of m."""
  if m not in TILE_SIZES or x.ndim != 4 or w.ndim != 4 or tuple(strides) != (1, 1):
    return False
  if x.dtype != jnp.float32 or w.dtype != jnp.float32 or w.shape[:2] != (3, 3):
    return False
  if x.shape[3] != w.shape[2] or not all(0 <= p <= 2 for pair in padding for p in pair):
    return False
  ho, wo = out_hw(x.shape[1:3], padding)
  return ho >= m and wo >= m and ho % m == 0 and wo % m == 0


# Where F(4x4, 3x3) measured faster than oneDNN's direct convolution, forward plus both
# gradients, float32, on a 2-core Xeon with AVX-512 (benchmarks/README.md, issue 28 session 20):
# 1.2-2.1x from min(C, O) * max(C, O) * N * Ho * Wo = 2^28 up with 256 channels or more (512
# channels from 1024 output pixels, 256 from 4096), below it 0.2-1.0x (few channels: the tile
# transforms cost more than the products they save).
MIN_CHANNELS, MIN_WORK = 256, 2 ** 28


def pays(x, w, strides, padding, m: int) -> bool:
  """Whether this convolution goes to Winograd on the CPU fast path: `supported`, at least
  MIN_CHANNELS input and output channels, and C * O * N * Ho * Wo >= MIN_WORK."""
  if not supported(x, w, strides, padding, m):
    return False
  c, o = w.shape[2:]
  ho, wo = out_hw(x.shape[1:3], padding)
  return min(c, o) >= MIN_CHANNELS and c * o * x.shape[0] * ho * wo >= MIN_WORK


def conv3x3(x, w, padding, m: int):
  """lax.conv_general_dilated(x, w, (1, 1), padding) (NHWC, HWIO) by Winograd F(m x m, 3 x 3),
  for shapes `supported` takes; x and w float32."""
  (pt, pb), (pl, pr) = padding
  n, h, wd, c = x.shape
  ho, wo = out_hw((h, wd), padding)
  th, tw = ho // m, wo // m
  v = transform(INPUT, x, Tiles(m, n, h, wd, c, th, tw, pt, pl))          # [P, T, C]
  u = kernel_tiles(w, m)                                                    # [P, C, O]
  prod = jax.lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))            # [P, T, O]
  return transform(OUTPUT, prod, Tiles(m, n, ho, wo, w.shape[3], th, tw))
