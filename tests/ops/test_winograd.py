"""Winograd F(m x m, 3 x 3) convolutions (reacgan_jax/ops/winograd.py, ops/onednn/winograd.cc).

Each tile transform against its float64 numpy definition (windows of the zero-padded image and
Lavin & Gray's matrices, also checked here against the direct convolution they factor); the
transforms' VJPs are their transposes (<T a, b> = <a, T^T b>); the convolution, its two
gradients and a gradient of a gradient (R1's form) against float64 direct convolutions.

Tolerances: the transforms only add and scale by small integers (B^T, A^T), so they are exact
to a few float32 ulps of their inputs (rtol 1e-6 on sums of <= 36 terms). The convolution
rounds its inputs' transforms before the products: F(2x2, 3x3) (entries 0, +-1, +-1/2) stays
within 2e-6 of the output's largest value here, F(4x4, 3x3) (entries up to 5 in B^T, 8 in A^T,
1/24 in G) within 4e-5 (measured: 1.1e-5 / 1.9e-5 of the scale on 512-channel convs). Needs the
oneDNN extension's build (the transforms are compiled with it).
"""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.ops import onednn
from reacgan_jax.ops import winograd as W

OK, WHY = onednn.available()
pytestmark = pytest.mark.skipif(not OK, reason=f'oneDNN extension unavailable: {WHY}')

# max |error| / max |value| allowed for the convolution and its gradients, per tile size
CONV_TOL = {2: 2e-6, 4: 4e-5}


def rng(seed=0):
  return np.random.default_rng(seed)


def windows(x, t: W.Tiles):
  """float64 [N, TH, TW, A, A, C]: each tile's (m + 2)^2 window of the zero-padded image."""
  a = t.m + 2
  hp = (t.th - 1) * t.m + a
  wp = (t.tw - 1) * t.m + a
  xp = np.zeros((t.n, hp + t.pad_top, wp + t.pad_left, t.c))
  h, w = min(t.h, hp - t.pad_top), min(t.w, wp - t.pad_left)
  xp[:, t.pad_top:t.pad_top + h, t.pad_left:t.pad_left + w] = x[:, :h, :w]
  out = np.zeros((t.n, t.th, t.tw, a, a, t.c))
  for i, j in itertools.product(range(t.th), range(t.tw)):
    out[:, i, j] = xp[:, i * t.m:i * t.m + a, j * t.m:j * t.m + a]
  return out


def input_def(x, t, mats=None):
  bt = W.MATRICES[t.m][0] if mats is None else mats[0]
  v = np.einsum('ik,ntskld,jl->ijntsd', bt, windows(x, t), bt)
  return v.reshape(t.tile_shape)


def output_def(mt, t, mats=None):
  at = W.MATRICES[t.m][2] if mats is None else mats[2]
  a = t.m + 2
  mt = mt.reshape(a, a, t.n, t.th, t.tw, t.c)
  y = np.einsum('pi,ijntsc,qj->ntpsqc', at, mt, at)
  return y.reshape(t.image_shape)


def direct_conv(x, w, padding):
  """float64 cross-correlation, stride 1 (lax.conv_general_dilated's NHWC/HWIO)."""
  (pt, pb), (pl, pr) = padding
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = xp.shape[1] - 2, xp.shape[2] - 2
  return sum(np.einsum('nhwc,co->nhwo', xp[:, i:i + ho, j:j + wo], w[i, j])
             for i in range(3) for j in range(3))


@pytest.mark.parametrize('m', W.TILE_SIZES)
def test_matrices_factor_the_direct_convolution(m):
  """F(m, 3) in 1-D: A^T [(G g) . (B^T d)] == the m outputs of correlating d with g."""
  bt, g, at = W.MATRICES[m]
  d, k = rng(1).standard_normal(m + 2), rng(2).standard_normal(3)
  want = np.array([d[i:i + 3] @ k for i in range(m)])
  np.testing.assert_allclose(at @ ((g @ k) * (bt @ d)), want, rtol=1e-12, atol=1e-12)


# (n, h, w, c, padding, m): odd channel counts exercise the lane remainder (16 + 4, 3), padding
# 0 and 2 and uneven sides the window bounds.
GEOMETRIES = [
    (2, 8, 8, 20, ((1, 1), (1, 1)), 4),
    (2, 8, 8, 20, ((1, 1), (1, 1)), 2),
    (1, 6, 10, 3, ((0, 0), (0, 0)), 2),
    (3, 6, 10, 17, ((2, 2), (0, 0)), 4),
    (2, 7, 8, 5, ((2, 1), (1, 1)), 4),
    (1, 4, 4, 33, ((1, 1), (2, 2)), 2),
]


def _tiles(n, h, w, c, padding, m, channels=None):
  (pt, pb), (pl, pr) = padding
  ho, wo = h + pt + pb - 2, w + pl + pr - 2
  return (W.Tiles(m, n, h, w, c, ho // m, wo // m, pt, pl),
          W.Tiles(m, n, ho, wo, channels or c, ho // m, wo // m))


@pytest.mark.parametrize('n,h,w,c,padding,m', GEOMETRIES)
def test_transforms_match_their_definitions(n, h, w, c, padding, m):
  t_in, t_out = _tiles(n, h, w, c, padding, m)
  # float32 operands, the definitions in float64 on the same values
  x, v, mt, y = (rng(seed).standard_normal(shape).astype(np.float32).astype(np.float64)
                 for seed, shape in ((3, t_in.image_shape), (4, t_in.tile_shape),
                                     (5, t_out.tile_shape), (6, t_out.image_shape)))
  f32 = lambda a: jnp.asarray(a, jnp.float32)  # noqa: E731
  got = {k: np.asarray(jax.jit(lambda a, k=k, t=t: W.transform(k, a, t))(f32(a)))
         for k, a, t in ((W.INPUT, x, t_in), (W.INPUT_T, v, t_in), (W.OUTPUT, mt, t_out),
                         (W.OUTPUT_T, y, t_out))}
  # float32 sums of <= 36 terms: within 8 ulps of the sum of the terms' magnitudes
  absm = tuple(np.abs(a) for a in W.MATRICES[m])

  def close(got, want, magnitude):
    assert np.all(np.abs(got - want) <= 8 * 2.0 ** -24 * magnitude), np.max(np.abs(got - want))

  close(got[W.INPUT], input_def(x, t_in), input_def(np.abs(x), t_in, absm))
  close(got[W.OUTPUT], output_def(mt, t_out), output_def(np.abs(mt), t_out, absm))
  # the transposes: <T a, b> = <a, T^T b> for the definitions, then the kernels against them
  np.testing.assert_allclose(np.vdot(input_def(x, t_in), v), np.vdot(x, got[W.INPUT_T]),
                             rtol=1e-5)
  np.testing.assert_allclose(np.vdot(output_def(mt, t_out), y), np.vdot(mt, got[W.OUTPUT_T]),
                             rtol=1e-5)
  want_t = jax.vjp(lambda a: input_def_jnp(a, t_in), f32(x))[1](f32(v))[0]
  np.testing.assert_allclose(got[W.INPUT_T], want_t, rtol=1e-5, atol=1e-4)


def input_def_jnp(x, t):
  """input_def in jnp (float32), to take its VJP: the transpose of the definition."""
  bt = jnp.asarray(W.MATRICES[t.m][0], jnp.float32)
  a = t.m + 2
  (pt, pl) = t.pad_top, t.pad_left
  hp, wp = (t.th - 1) * t.m + a, (t.tw - 1) * t.m + a
  xp = jnp.pad(x[:, :hp - pt, :wp - pl], ((0, 0), (pt, max(0, hp - pt - t.h)),
                                           (pl, max(0, wp - pl - t.w)), (0, 0)))
  win = jnp.stack([jnp.stack([xp[:, i * t.m:i * t.m + a, j * t.m:j * t.m + a]
                              for j in range(t.tw)], 1) for i in range(t.th)], 1)
  v = jnp.einsum('ik,ntskld,jl->ijntsd', bt, win, bt)
  return v.reshape(t.tile_shape)


def test_transform_vjps_are_the_transposes():
  t_in, t_out = _tiles(2, 8, 8, 20, ((1, 1), (1, 1)), 4)
  x = jnp.asarray(rng(7).standard_normal(t_in.image_shape), jnp.float32)
  v = jnp.asarray(rng(8).standard_normal(t_in.tile_shape), jnp.float32)
  for kind, a, b, t in ((W.INPUT, x, v, t_in), (W.OUTPUT_T, x, v, t_out)):
    _, vjp = jax.vjp(lambda a, kind=kind, t=t: W.transform(kind, a, t), a)
    np.testing.assert_array_equal(np.asarray(vjp(b)[0]),
                                  np.asarray(W.transform(kind ^ 1, b, t)))


def test_kernel_tiles():
  w = rng(9).standard_normal((3, 3, 5, 7))
  for m in W.TILE_SIZES:
    g = W.MATRICES[m][1]
    want = np.einsum('ai,ijco,bj->abco', g, w, g).reshape(-1, 5, 7)
    got = np.asarray(W.kernel_tiles(jnp.asarray(w, jnp.float32), m))
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)


def _conv_case(n, h, w, c, o, padding, seed=10):
  r = rng(seed)
  x = r.standard_normal((n, h, w, c))
  k = r.standard_normal((3, 3, c, o)) / np.sqrt(9 * c)
  (pt, pb), (pl, pr) = padding
  g = r.standard_normal((n, h + pt + pb - 2, w + pl + pr - 2, o))
  return x, k, g


def _rel_err(got, want):
  return float(np.max(np.abs(np.asarray(got, np.float64) - want)) / np.max(np.abs(want)))


@pytest.mark.parametrize('m', W.TILE_SIZES)
@pytest.mark.parametrize('n,h,w,c,o,padding', [
    (2, 8, 8, 64, 48, ((1, 1), (1, 1))),
    (1, 12, 8, 21, 5, ((1, 1), (1, 1))),
    (2, 8, 8, 8, 8, ((2, 0), (0, 2))),
])
def test_conv3x3_and_its_gradients(n, h, w, c, o, padding, m):
  x, k, g = _conv_case(n, h, w, c, o, padding)
  if not W.supported(jnp.zeros(x.shape), jnp.zeros(k.shape), (1, 1), padding, m):
    pytest.skip('output not a multiple of the tile')
  y, vjp = jax.vjp(lambda x, k: W.conv3x3(x, k, padding, m), jnp.asarray(x, jnp.float32),
                   jnp.asarray(k, jnp.float32))
  dx, dk = vjp(jnp.asarray(g, jnp.float32))
  want_y = direct_conv(x, k, padding)
  # the definition's VJP: dx = correlation of g with the flipped, transposed kernel; dk by sums
  (pt, pb), (pl, pr) = padding
  want_dx = direct_conv(g, k[::-1, ::-1].transpose(0, 1, 3, 2), ((2 - pt, 2 - pb),
                                                                   (2 - pl, 2 - pr)))
  xp = np.pad(x, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  ho, wo = g.shape[1:3]
  want_dk = np.stack([np.stack([np.einsum('nhwc,nhwo->co', xp[:, i:i + ho, j:j + wo], g)
                                for j in range(3)]) for i in range(3)])
  for got, want in ((y, want_y), (dx, want_dx), (dk, want_dk)):
    assert _rel_err(got, want) < CONV_TOL[m]


@pytest.mark.parametrize('m', W.TILE_SIZES)
def test_gradient_of_a_gradient(m):
  """R1's form: d/dk of |d<conv(x, k), g>/dx|^2, against the same through XLA's convolution."""
  x, k, g = _conv_case(2, 8, 8, 24, 16, ((1, 1), (1, 1)), seed=11)
  x, k, g = (jnp.asarray(a, jnp.float32) for a in (x, k, g))
  pad = ((1, 1), (1, 1))

  def penalty(conv, k):
    gx = jax.grad(lambda x: jnp.vdot(conv(x, k), g))(x)
    return jnp.sum(jnp.square(gx))

  xla = lambda x, k: jax.lax.conv_general_dilated(  # noqa: E731
      x, k, (1, 1), pad, dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      precision=jax.lax.Precision.HIGHEST)
  want = np.asarray(jax.grad(lambda k: penalty(xla, k))(k), np.float64)
  got = jax.grad(lambda k: penalty(lambda x, k: W.conv3x3(x, k, pad, m), k))(k)
  assert _rel_err(got, want) < 2 * CONV_TOL[m]


def test_under_vmap_and_through_conv_ops():
  """The sampler vmaps G (one custom call per element); conv_ops.conv_winograd is the entry."""
  x, k, _ = _conv_case(3, 8, 8, 16, 8, ((1, 1), (1, 1)), seed=12)
  x, k = jnp.asarray(x, jnp.float32), jnp.asarray(k, jnp.float32)
  pad = ((1, 1), (1, 1))
  one = jax.jit(lambda x: conv_ops.conv_winograd(x, k, pad, 4))(x)
  mapped = jax.vmap(lambda xi: W.conv3x3(xi[None], k, pad, 4)[0])(x)
  # one product per element under vmap: the dots' blocking (so the last bits) may differ
  assert _rel_err(mapped, np.asarray(one, np.float64)) < CONV_TOL[4]
  assert _rel_err(one, direct_conv(np.asarray(x, np.float64), np.asarray(k, np.float64),
                                   pad)) < CONV_TOL[4]


def test_supported_and_pays():
  x = jnp.zeros((4, 32, 32, 512), jnp.float32)
  w = jnp.zeros((3, 3, 512, 512), jnp.float32)
  same = ((1, 1), (1, 1))
  assert W.supported(x, w, (1, 1), same, 4) and W.pays(x, w, (1, 1), same, 4)
  assert not W.supported(x, w, (2, 2), same, 4)                       # strided
  assert not W.supported(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16), (1, 1), same, 4)
  assert not W.supported(x[:, :30], w, (1, 1), same, 4)               # 30 rows: not 4k
  assert W.supported(x[:, :30], w, (1, 1), same, 2)
  assert not W.supported(x, w[:1], (1, 1), same, 4)                   # 1x3 kernel
  assert not W.supported(x, w, (1, 1), ((3, 1), (1, 1)), 4)           # padding beyond 2
  # what pays: >= 256 channels each side and C * O * N * Ho * Wo >= 2^28
  assert W.pays(x[:, :16, :16], w, (1, 1), same, 4)                   # 512^2 * 1024 = 2^28
  assert not W.pays(x[:, :8, :16], w, (1, 1), same, 4)
  assert not W.pays(x[..., :128], w[:, :, :128], (1, 1), same, 4)     # 128 channels in
  assert not W.pays(x[:1, :16, :16, :256], w[:, :, :256, :256], (1, 1), same, 4)
