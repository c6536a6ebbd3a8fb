"""The oneDNN convolution custom call (reacgan_jax/ops/onednn, model.conv_backend='onednn').

Every pass (forward, input gradient, weight gradient) against its float64 numpy definition;
bf16 against the definition on the bf16-rounded operands; whole models and a few train steps
against the XLA path on the same parameters and batches. Needs the `onednn` extra (installed
by the README's test command); without it the module is skipped with the reason.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import train_helpers

from reacgan_jax.models import adapter, build_models
from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.ops import onednn, winograd
from reacgan_jax.platform import parallel
from reacgan_jax.train import state, step

OK, WHY = onednn.available()
pytestmark = pytest.mark.skipif(not OK, reason=f'oneDNN extension unavailable: {WHY}')


def _pad(x, padding):
  return np.pad(x, ((0, 0), padding[0], padding[1], (0, 0)))


def _definition(x, w, g, strides, padding):
  """float64: y = conv(x, w); dx, dw = the vjp of <y, g>, by the sums that define them."""
  xp = _pad(x, padding)
  kh, kw, _, o = w.shape
  sh, sw = strides
  ho, wo = g.shape[1:3]
  y = np.zeros((x.shape[0], ho, wo, o))
  dxp = np.zeros_like(xp)
  dw = np.zeros_like(w)
  for dy in range(kh):
    for dx in range(kw):
      patch = xp[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, :]
      y += np.einsum('nhwc,co->nhwo', patch, w[dy, dx])
      dw[dy, dx] = np.einsum('nhwc,nhwo->co', patch, g)
      dxp[:, dy:dy + sh * (ho - 1) + 1:sh, dx:dx + sw * (wo - 1) + 1:sw, :] += np.einsum(
          'nhwo,co->nhwc', g, w[dy, dx])
  (pt, _), (pl, _) = padding
  dx_ = dxp[:, pt:pt + x.shape[1], pl:pl + x.shape[2], :]
  return y, dx_, dw


def _ours(x, w, g, strides, padding):
  y, vjp = jax.vjp(lambda x, w: onednn.conv2d(x, w, strides, padding), x, w)
  return (y, *vjp(g))


SHAPES = [  # b, h, w, c, o, k, strides, padding
    (2, 8, 8, 3, 5, 3, (1, 1), ((1, 1), (1, 1))),     # 'same' 3x3 (every G / D conv)
    (3, 6, 7, 16, 8, 1, (1, 1), ((0, 0), (0, 0))),    # 1x1 (shortcuts, attention)
    (2, 8, 8, 4, 6, 4, (2, 2), ((1, 1), (1, 1))),     # 4x4 stride 2 (deep_conv D)
    (2, 9, 8, 5, 4, 3, (2, 1), ((0, 2), (1, 0))),     # mixed strides, asymmetric padding
    (1, 7, 7, 8, 8, 5, (1, 1), ((2, 2), (2, 2))),     # 5x5
]


@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', SHAPES)
def test_float32_passes_match_the_float64_definition(b, h, w, c, o, k, strides, padding):
  rng = np.random.default_rng(0)
  x, wt = rng.standard_normal((b, h, w, c)), rng.standard_normal((k, k, c, o))
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  g = rng.standard_normal((b, ho, wo, o))
  want = _definition(x, wt, g, strides, padding)
  got = _ours(*(jnp.asarray(t, jnp.float32) for t in (x, wt, g)), strides, padding)
  # float32 sums of at most k*k*c (forward, input gradient) or b*ho*wo (weight gradient)
  # products of O(1) terms: 1e-5 of the largest entry is ~100 float32 ulps.
  for name, a, ref in zip(('y', 'dx', 'dw'), got, want, strict=True):
    assert a.shape == ref.shape and a.dtype == jnp.float32, name
    np.testing.assert_allclose(np.asarray(a), ref, rtol=0, atol=1e-5 * np.abs(ref).max(),
                               err_msg=name)


def _ours_bias(x, w, b, g, strides, padding):
  y, vjp = jax.vjp(lambda x, w, b: onednn.conv2d_bias(x, w, b, strides, padding), x, w, b)
  return (y, *vjp(g))


@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', SHAPES)
def test_float32_passes_with_the_bias_inside_match_the_float64_definition(b, h, w, c, o, k,
                                                                          strides, padding):
  """conv2d_bias: y = conv(x, w) + bias, and its gradients dx, dw and the bias gradient (the sum
  of g over N, H, W, which the backward-weights primitive returns beside dw)."""
  rng = np.random.default_rng(5)
  x, wt, bias = (rng.standard_normal(s) for s in ((b, h, w, c), (k, k, c, o), (o,)))
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  g = rng.standard_normal((b, ho, wo, o))
  y, dx, dw = _definition(x, wt, g, strides, padding)
  want = (y + bias, dx, dw, g.sum((0, 1, 2)))
  got = _ours_bias(*(jnp.asarray(t, jnp.float32) for t in (x, wt, bias, g)), strides, padding)
  # As the passes without a bias (1e-5 of the largest entry: ~100 float32 ulps of sums of at
  # most b*ho*wo terms); the bias and its gradient stay float32.
  for name, a, ref in zip(('y', 'dx', 'dw', 'db'), got, want, strict=True):
    assert a.shape == ref.shape and a.dtype == jnp.float32, name
    np.testing.assert_allclose(np.asarray(a), ref, rtol=0, atol=1e-5 * np.abs(ref).max(),
                               err_msg=name)


needs_bf16 = pytest.mark.skipif(not onednn.bf16_supported(),
                                reason='this CPU has no oneDNN bf16 convolution (no AVX-512)')


@needs_bf16
@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', SHAPES[:3])
def test_bfloat16_passes_match_the_definition_on_rounded_operands(b, h, w, c, o, k, strides,
                                                                   padding):
  rng = np.random.default_rng(1)
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  bf = [jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
        for s in ((b, h, w, c), (k, k, c, o), (b, ho, wo, o))]
  want = _definition(*(np.asarray(t, np.float64) for t in bf), strides, padding)
  got = _ours(*bf, strides, padding)
  # oneDNN accumulates the bf16 products in float32 and rounds the result to bf16 once:
  # |error| <= 2^-8 |ref| (the rounding) + float32 accumulation (1e-5 of the largest entry).
  for name, a, ref in zip(('y', 'dx', 'dw'), got, want, strict=True):
    assert a.dtype == jnp.bfloat16, name
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= 2 ** -8 * np.abs(ref) + 1e-5 * np.abs(ref).max()), (name, err.max())


@needs_bf16
@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', SHAPES[:3])
def test_bfloat16_passes_with_the_bias_inside_match_the_definition(b, h, w, c, o, k, strides,
                                                                    padding):
  """bf16 x, w and g with a float32 bias: the bias is added to the float32 accumulator before
  the one rounding of y to bf16, and its gradient comes back float32 (not rounded to bf16)."""
  rng = np.random.default_rng(6)
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  bf = [jnp.asarray(rng.standard_normal(s), jnp.bfloat16)
        for s in ((b, h, w, c), (k, k, c, o), (b, ho, wo, o))]
  bias = jnp.asarray(rng.standard_normal(o), jnp.float32)
  x64, w64, g64 = (np.asarray(t, np.float64) for t in bf)
  y, dx, dw = _definition(x64, w64, g64, strides, padding)
  want = (y + np.asarray(bias, np.float64), dx, dw, g64.sum((0, 1, 2)))
  got = _ours_bias(bf[0], bf[1], bias, bf[2], strides, padding)
  for name, a, ref in zip(('y', 'dx', 'dw', 'db'), got, want, strict=True):
    assert a.dtype == (jnp.float32 if name == 'db' else jnp.bfloat16), name
    # bf16 outputs: one rounding (2^-8 relative) + float32 accumulation; db: float32 only.
    rounding = 0 if name == 'db' else 2 ** -8
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= rounding * np.abs(ref) + 1e-5 * np.abs(ref).max()), (name, err.max())


def _ours_t_bias(g, w, b, ct, strides, padding, out_hw):
  x, vjp = jax.vjp(lambda g, w, b: onednn.conv2d_transpose_bias(g, w, b, strides, padding,
                                                                 out_hw), g, w, b)
  return (x, *vjp(ct))


def _t_bias_definition(g, w, b, ct, strides, padding):
  """float64: x = the transpose of conv(., w) applied to g, plus b; the vjp of <x, ct>: dg =
  conv(ct, w), dw = the conv's weight gradient of (ct, g), db = ct summed over N, H, W."""
  dg, x, dw = _definition(ct, w, g, strides, padding)
  return x + b, dg, dw, ct.sum((0, 1, 2))


@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', [SHAPES[0], SHAPES[2], SHAPES[3]])
def test_float32_transposed_conv_with_the_bias_inside_matches_the_float64_definition(
    b, h, w, c, o, k, strides, padding):
  """conv2d_transpose_bias (oneDNN's deconvolution primitive, the bias before the one rounding)
  and its gradients, for the strided conv of the shape (b, h, w, c) -> (ho, wo, o)."""
  rng = np.random.default_rng(8)
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  g, wt, bias, ct = (rng.standard_normal(s) for s in ((b, ho, wo, o), (k, k, c, o), (c,),
                                                      (b, h, w, c)))
  want = _t_bias_definition(g, wt, bias, ct, strides, padding)
  got = _ours_t_bias(*(jnp.asarray(t, jnp.float32) for t in (g, wt, bias, ct)), strides,
                     padding, (h, w))
  # As the conv's passes: 1e-5 of the largest entry, ~100 float32 ulps of sums of at most
  # b*h*w terms; the bias and its gradient stay float32.
  for name, a, ref in zip(('x', 'dg', 'dw', 'db'), got, want, strict=True):
    assert a.shape == ref.shape and a.dtype == jnp.float32, name
    np.testing.assert_allclose(np.asarray(a), ref, rtol=0, atol=1e-5 * np.abs(ref).max(),
                               err_msg=name)


# The upsample conv's tap map (conv_ops.upsample_kernel's definition): output rows 2i and 2i + 1
# of nearest 2x + 3x3 read taps (w0, w1 + w2) and (w0 + w1, w2); as the 4 taps of the equivalent
# lhs-dilated conv's kernel, U @ (w0, w1, w2).
_UP3 = np.array([[1, 0, 0], [1, 1, 0], [0, 1, 1], [0, 0, 1]], np.float32)


def _upsample_conv_definition(x, w, b, ct):
  """float64: y = conv3x3(nearest2x(x), w, padding 1) + b and the vjp of <y, ct> (dx: the 2x2
  window sums of the upsampled input's gradient)."""
  up = x.repeat(2, axis=1).repeat(2, axis=2)
  y, dup, dw = _definition(up, w, ct, (1, 1), ((1, 1), (1, 1)))
  n, h2, w2, c = dup.shape
  dx = dup.reshape(n, h2 // 2, 2, w2 // 2, 2, c).sum((2, 4))
  return y + b, dx, dw, ct.sum((0, 1, 2))


def _ours_upsample_conv(x, w, b, ct, dtype):
  y, vjp = jax.vjp(lambda x, w, b: conv_ops.upsample_conv_onednn(x, w, b, dtype), x, w, b)
  return (y, *vjp(ct.astype(y.dtype)))


@pytest.mark.parametrize('hw', [(4, 4), (5, 3)])
def test_upsample_conv_is_the_3x3_conv_of_the_upsampled_input(hw):
  """conv_ops.upsample_conv_onednn (one transposed conv, stride 2, of the 4x4 kernel whose taps
  are sums of the 3x3's) against conv3x3(nearest2x(x)) + b in float64: output and the
  gradients of x, w and b, float32 (1e-5 of the largest entry: the 3x3 taps are summed once in
  float32 before the products, a few ulps); and it runs the deconvolution target, not an
  upsampled copy of x."""
  rng = np.random.default_rng(9)
  n, c, o = 2, 5, 6
  x, wt, bias = (rng.standard_normal(s) for s in ((n, *hw, c), (3, 3, c, o), (o,)))
  ct = rng.standard_normal((n, 2 * hw[0], 2 * hw[1], o))
  want = _upsample_conv_definition(x, wt, bias, ct)
  args = [jnp.asarray(t, jnp.float32) for t in (x, wt, bias, ct)]
  got = _ours_upsample_conv(*args, jnp.float32)
  for name, a, ref in zip(('y', 'dx', 'dw', 'db'), got, want, strict=True):
    assert a.shape == ref.shape and a.dtype == jnp.float32, name
    np.testing.assert_allclose(np.asarray(a), ref, rtol=0, atol=1e-5 * np.abs(ref).max(),
                               err_msg=name)
  jaxpr = str(jax.make_jaxpr(lambda x, w, b: conv_ops.upsample_conv_onednn(x, w, b,
                                                                           jnp.float32))(
      *args[:3]))
  assert onednn.TARGET_T_BIAS in jaxpr


@needs_bf16
def test_bfloat16_upsample_conv_matches_the_definition_on_rounded_operands():
  """bf16 x and cotangent, float32 w and b: the 4x4 kernel's taps are summed in float32 and
  rounded to bf16 once (so the definition takes those rounded sums), the bias added before the
  output's one rounding; dw and db come back float32 (w's and b's dtype)."""
  rng = np.random.default_rng(10)
  x = jnp.asarray(rng.standard_normal((2, 4, 4, 8)), jnp.bfloat16)
  wt = jnp.asarray(rng.standard_normal((3, 3, 8, 8)), jnp.float32)
  bias = jnp.asarray(rng.standard_normal(8), jnp.float32)
  ct = jnp.asarray(rng.standard_normal((2, 8, 8, 8)), jnp.bfloat16)
  got = _ours_upsample_conv(x, wt, bias, ct, jnp.bfloat16)
  # The definition on the operands oneDNN sees: the 4x4 kernel rounded to bf16, as a
  # transposed conv (the lhs-dilated conv of x with padding 2).
  k4 = np.asarray(conv_ops.upsample_kernel(wt).astype(jnp.bfloat16), np.float64)
  x64, ct64 = np.asarray(x, np.float64), np.asarray(ct, np.float64)
  xd = np.zeros((2, 7, 7, 8))
  xd[:, ::2, ::2] = x64
  y, dxd, dk = _definition(xd, k4, ct64, (1, 1), ((2, 2), (2, 2)))
  assert got[0].dtype == jnp.bfloat16 and got[1].dtype == jnp.bfloat16
  assert got[2].dtype == jnp.float32 and got[3].dtype == jnp.float32
  m = np.asarray(_UP3, np.float64)
  want = (y + np.asarray(bias, np.float64), dxd[:, ::2, ::2],
          np.einsum('pr,qs,pqio->rsio', m, m, dk), ct64.sum((0, 1, 2)))
  # What each result's one bf16 rounding (2^-8 relative) applies to: y, dx themselves; dw the
  # 4x4 kernel's gradient (rounded to bf16 entry by entry, then summed back onto 1-4 taps in
  # float32: at most 2^-8 of the sum of the magnitudes); db is float32 throughout.
  magnitude = (np.abs(want[0]), np.abs(want[1]), np.einsum('pr,qs,pqio->rsio', m, m, np.abs(dk)),
               0 * want[3])
  for name, a, ref, mag in zip(('y', 'dx', 'dw', 'db'), got, want, magnitude, strict=True):
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= 2 ** -8 * mag + 1e-5 * np.abs(ref).max()), (name, err.max())


def test_upsample_kernel_is_the_tap_matrix_product_bit_for_bit():
  """conv_ops.upsample_kernel (slices and adds, H then W) equals the product with the tap map
  _UP3 on both axes it replaces, einsum('pr,qs,rsio->pqio'), bit for bit in float32, and so
  does its VJP (each entry a sum of 1, 2 or 4 taps; a different order of the two axes differs
  in the last bit); and the float64 definition to the float32 roundings of those sums."""
  rng = np.random.default_rng(11)
  w = jnp.asarray(rng.standard_normal((3, 3, 6, 5)), jnp.float32)
  g = jnp.asarray(rng.standard_normal((4, 4, 6, 5)), jnp.float32)
  m = jnp.asarray(_UP3)
  matrix = lambda w: jnp.einsum('pr,qs,rsio->pqio', m, m, w)  # noqa: E731
  k, vjp = jax.vjp(conv_ops.upsample_kernel, w)
  k_ref, vjp_ref = jax.vjp(matrix, w)
  np.testing.assert_array_equal(np.asarray(k), np.asarray(k_ref))
  np.testing.assert_array_equal(np.asarray(vjp(g)[0]), np.asarray(vjp_ref(g)[0]))
  m64 = np.asarray(_UP3, np.float64)
  w64 = np.asarray(w, np.float64)
  want = np.einsum('pr,qs,rsio->pqio', m64, m64, w64)
  # Two float32 roundings at most (a + b, then (a + b) + (c + d)), each 2^-24 of a partial sum.
  bound = 2 ** -23 * np.einsum('pr,qs,rsio->pqio', m64, m64, np.abs(w64))
  assert np.all(np.abs(np.asarray(k, np.float64) - want) <= bound)


def test_gradients_of_gradients_through_the_upsample_conv_match_lax():
  """A penalty on the input, weight and bias gradients of the upsample conv, differentiated
  again (conv2d_transpose_bias's VJP is made of differentiable pieces), equals lax's on the
  definition conv3x3(nearest2x(x)) + b."""
  rng = np.random.default_rng(11)
  x, wt, bias = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                 for s in ((2, 4, 4, 3), (3, 3, 3, 5), (5,)))
  ct = jnp.asarray(rng.standard_normal((2, 8, 8, 5)), jnp.float32)

  def definition(x, w, b):
    up = jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    return jax.lax.conv_general_dilated(up, w, (1, 1), ((1, 1), (1, 1)),
                                        dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + b

  _assert_penalty_gradients_match(
      definition, lambda x, w, b: conv_ops.upsample_conv_onednn(x, w, b, jnp.float32),
      ct, x, wt, bias)


def _assert_penalty_gradients_match(xla, ours, ct, x, w, bias):
  """R1's shape with a bias: a penalty on the input, weight and bias gradients of <conv, ct>,
  differentiated w.r.t. x, w and the bias, equal for the lax definition and our path."""
  def penalty(conv, x, w, bias):
    gx, gw, gb = jax.grad(lambda *a: jnp.sum(jnp.sin(conv(*a)) * ct), (0, 1, 2))(x, w, bias)
    return jnp.sum(gx ** 2) + jnp.sum(jnp.sin(gw)) + jnp.sum(jnp.sin(gb))

  want, got = (jax.jit(jax.grad(functools.partial(penalty, conv), (0, 1, 2)))(x, w, bias)
               for conv in (xla, ours))
  _assert_gradients_close(want, got)


def _bn_definition(x, scale, shift, eps, g):
  """float64: training-mode BN over (N, H, W), its statistics, and the vjp of <y, g>."""
  mean = x.mean((0, 1, 2))
  var = ((x - mean) ** 2).mean((0, 1, 2))
  inv = 1 / np.sqrt(var + eps)
  xhat = (x - mean) * inv
  s = np.ones_like(mean) if scale is None else scale
  y = xhat * s + (0 if shift is None else shift)
  gs = g * s
  dx = inv * (gs - gs.mean((0, 1, 2)) - xhat * (gs * xhat).mean((0, 1, 2)))
  return y, mean, var, dx, (g * xhat).sum((0, 1, 2)), g.sum((0, 1, 2))


def _ours_bn(x, scale, shift, eps, g):
  (y, (mean, var)), vjp = jax.vjp(lambda x, s, b: onednn.batch_norm(x, s, b, eps), x, scale,
                                  shift)
  dx, ds, db = vjp((g, (jnp.zeros_like(mean), jnp.zeros_like(var))))
  return y, mean, var, dx, ds, db


@pytest.mark.parametrize('affine', [True, False])
@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=needs_bf16)])
def test_batch_norm_matches_the_float64_definition(affine, dtype):
  """onednn.batch_norm (oneDNN's training-mode BN): y, the batch mean and biased variance, and
  the gradients of x, scale and shift, against float64 sums on the same (rounded) operands."""
  rng = np.random.default_rng(7)
  eps = 1e-4
  t = jnp.dtype(dtype)
  x = jnp.asarray(rng.standard_normal((4, 6, 5, 16)) * 3 + 2, t)  # |mean| ~ std: no cancellation
  g = jnp.asarray(rng.standard_normal(x.shape), t)
  scale, shift = ((jnp.asarray(rng.standard_normal(16), jnp.float32) for _ in range(2))
                  if affine else (None, None))
  f64 = lambda a: None if a is None else np.asarray(a, np.float64)  # noqa: E731
  want = _bn_definition(f64(x), f64(scale), f64(shift), eps, f64(g))
  got = _ours_bn(x, scale, shift, eps, g)
  # float32: sums of 480 terms per channel, 1e-5 of the largest entry (~100 ulps); bf16 y and dx
  # are rounded once to bf16 (2^-8 relative) on top of that.
  rounding = 2 ** -8 if dtype == 'bfloat16' else 0
  for name, a, ref in zip(('y', 'mean', 'var', 'dx', 'dscale', 'dshift'), got, want,
                          strict=True):
    if not affine and name in ('dscale', 'dshift'):
      assert a is None, name
      continue
    assert a.shape == ref.shape, name
    assert a.dtype == (t if name in ('y', 'dx') else jnp.float32), name
    r = rounding if name in ('y', 'dx') else 0
    err = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(err <= r * np.abs(ref) + 1e-5 * np.abs(ref).max()), (name, err.max())


@pytest.mark.parametrize('affine', [True, False])
def test_batch_norm_gradients_of_gradients_match_the_jnp_definition(affine):
  """A penalty on BN's input gradient, differentiated w.r.t. x, scale and shift: through
  batch_norm_grad's VJP (the jnp definition's second derivative) it equals autodiff of the jnp
  definition run twice (the first derivative is oneDNN's)."""
  rng = np.random.default_rng(8)
  eps = 1e-4
  x = jnp.asarray(rng.standard_normal((3, 4, 4, 8)) + 1, jnp.float32)
  scale, shift = ((jnp.asarray(rng.standard_normal(8), jnp.float32) for _ in range(2))
                  if affine else (None, None))
  bns = {'jnp': lambda x, s, b: onednn.batch_norm_reference(x, s, b, eps)[0],
         'onednn': lambda x, s, b: onednn.batch_norm(x, s, b, eps)[0]}

  def penalty(bn, x, s, b):
    gx = jax.grad(lambda x: jnp.sum(jnp.sin(bn(x, s, b))))(x)
    return jnp.sum(gx ** 2)

  args = (0, 1, 2) if affine else (0,)
  want, got = (jax.jit(jax.grad(functools.partial(penalty, bns[n]), args))(x, scale, shift)
               for n in ('jnp', 'onednn'))
  _assert_gradients_close(want, got)


@pytest.mark.parametrize('groups', [1, 2])
def test_batchnorm_module_on_onednn_is_the_xla_module(groups):
  """layers.BatchNorm with backend='onednn': the same parameters, outputs, input and parameter
  gradients and running statistics as the XLA module (to float32 summation order); eval mode
  (running averages) and per-group statistics (groups > 1) keep the XLA code."""
  from reacgan_jax.models import layers  # noqa: PLC0415

  rng = np.random.default_rng(9)
  x = jnp.asarray(rng.standard_normal((4, 6, 6, 8)) * 2 + 1, jnp.float32)
  g = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
  mods = {b: layers.BatchNorm(groups=groups, backend=b) for b in ('xla', 'onednn')}
  v = mods['xla'].init(jax.random.key(0), x, False)
  assert jax.tree.structure(mods['onednn'].init(jax.random.key(0), x, False)) == \
      jax.tree.structure(v)

  def run(b, v):
    def f(p, x):
      return mods[b].apply({**v, 'params': p}, x, False, mutable=['batch_stats'])
    (y, cols), vjp = jax.vjp(f, v['params'], x)
    gp, gx = vjp((g, jax.tree.map(jnp.zeros_like, cols)))
    return y, cols, gp, gx

  want, got = run('xla', v), run('onednn', v)
  for a, b in zip(jax.tree.leaves(want), jax.tree.leaves(got), strict=True):
    np.testing.assert_allclose(b, a, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(a))) + 1e-7)
  jaxpr = str(jax.make_jaxpr(lambda x: mods['onednn'].apply(v, x, False,
                                                           mutable=['batch_stats']))(x))
  assert (onednn.TARGET_BN_FWD in jaxpr) == (groups == 1)
  eval_jaxpr = str(jax.make_jaxpr(lambda x: mods['onednn'].apply(v, x, True))(x))
  assert onednn.TARGET_BN_FWD not in eval_jaxpr
  np.testing.assert_allclose(mods['onednn'].apply(v, x, True), mods['xla'].apply(v, x, True),
                             rtol=0, atol=0)


def _model_outputs(config, params=None):
  g, d = build_models(config)
  z = jax.random.normal(jax.random.key(1), (8, config.model.z_dim))
  y = jnp.arange(8, dtype=jnp.int32) % config.data.num_classes
  x = jax.random.uniform(jax.random.key(2), (8, 32, 32, 3), minval=-1, maxval=1)
  xx, yy = jnp.concatenate([x, x]), jnp.concatenate([y, y])
  rngs = {'params': jax.random.key(0), 'dropout': jax.random.key(3)}
  if params is None:
    params = (g.init(rngs, z, y, train=True), d.init(rngs, xx, yy, train=True))
  gv, dv = params

  def loss(gp, dp):
    img, _ = g.apply({**gv, 'params': gp}, z, y, train=True, mutable=['batch_stats'])
    out, _ = d.apply({**dv, 'params': dp}, jnp.concatenate([img, x]), yy, train=True,
                     mutable=['batch_stats'], rngs={'dropout': jax.random.key(3)})
    return jnp.sum(jnp.sin(out.adv)) + jnp.sum(out.h ** 2) * 1e-3, img

  (value, img), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      gv['params'], dv['params'])
  return params, (value, img, grads)


@pytest.mark.parametrize('backbone,cond', [
    pytest.param('biggan', 'reacgan', marks=pytest.mark.exhaustive),  # exhaustive: CI budget
    pytest.param('resnet', 'pd', marks=pytest.mark.exhaustive),  # exhaustive: CI budget
    pytest.param('deep_conv', 'acgan', marks=pytest.mark.exhaustive),   # 4x4 stride-2 convs
    ('dcgan', 'acgan'),                                           # 3x3 stride-2 convs
])
def test_models_match_the_xla_path_on_the_same_weights(backbone, cond):
  config = train_helpers.tiny_config('unused.npz', **{'model.backbone': backbone,
                                                      'model.cond_method': cond,
                                                      'model.g_conv_dim': 8,
                                                      'model.d_conv_dim': 8})
  params, (v0, img0, grads0) = _model_outputs(config)
  config.model.conv_backend = 'onednn'
  _, (v1, img1, grads1) = _model_outputs(config, params)
  # Same convolutions, other summation order: float32 rounding, relative to the largest entry.
  np.testing.assert_allclose(img1, img0, rtol=0, atol=1e-5)
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  _assert_gradients_close(grads0, grads1)


def _assert_gradients_close(grads0, grads1):
  """1e-4 of each leaf's largest entry, plus 4e-6 of the network's largest.

  The second term is for a conv bias in front of BN, whose true gradient is zero: both paths
  return the rounding noise of a float32 sum of dx over the N*H*W positions (<= 2048 in these
  tests), up to ~eps * sqrt(n) * max|dx| ~ 6e-8 * 45 ~ 3e-6 of the largest gradient. XLA's sum
  happened to land at ~1e-7 and was allowed 1e-6; oneDNN's BN backward (another summation
  order) lands at 1.3e-6 on deep_conv's D (session 17).
  """
  for net0, net1 in zip(grads0, grads1, strict=True):
    scale = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(net0))
    for a, b in zip(jax.tree.leaves(net0), jax.tree.leaves(net1), strict=True):
      np.testing.assert_allclose(b, a, rtol=0,
                                 atol=1e-4 * float(jnp.max(jnp.abs(a))) + 4e-6 * scale)


def _mean_rel_err(a, b):
  """mean |a - b| relative to mean |b| (float64)."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  return np.mean(np.abs(a - b)) / max(np.mean(np.abs(b)), 1e-30)


def _assert_bf16_as_close_as_xlas(g32, gx, gd, context=''):
  """Every nonzero leaf of g32 (XLA float32): the oneDNN bf16 leaf of gd no further from it than
  XLA's bf16 leaf of gx is (mean relative error at most 1.5x plus 2e-3; both round every
  activation to bf16, in other orders)."""
  for a, bx, bd in zip(*(jax.tree.leaves(t) for t in (g32, gx, gd)), strict=True):
    if np.max(np.abs(a)) > 0:
      e_d, e_x = _mean_rel_err(bd, a), _mean_rel_err(bx, a)
      assert e_d <= 1.5 * e_x + 2e-3, (context, e_d, e_x)


def _train(config, n=3, devices=None):
  """n train steps on fixed random batches (1 device unless `devices`) -> metrics per step."""
  mesh = parallel.create_mesh(devices or jax.devices()[:1])
  model = adapter.build(config, mesh)
  s = state.init_state(config, model, mesh)
  fn = step.compile_train_step(config, model, mesh)
  rng = np.random.default_rng(0)
  b = config.train.batch_size
  out = []
  for _ in range(n):
    batch = {'image': rng.uniform(-1, 1, (1, b, 32, 32, 3)).astype(np.float32),
             'label': rng.integers(0, 10, (1, b)).astype(np.int32)}
    s, m = fn(s, parallel.shard_batch(batch, mesh, sample_axis=1))
    out.append({k: float(v) for k, v in parallel.to_host(m).items()})
  return out


@pytest.mark.exhaustive  # CI budget (issue 24): three steps twice; the slow suite keeps the
@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=needs_bf16)])
def test_train_steps_track_the_xla_path(dtype):  # sharded step below, the default the models
  config = train_helpers.tiny_config('unused.npz', **{'model.dtype': dtype})
  xla = _train(config)
  config.model.conv_backend = 'onednn'
  dnnl = _train(config)
  # float32: three steps (2 D updates each) of Adam from the same state; the convolutions
  # differ by rounding only, so the losses agree to 1e-4 relative. bf16: both paths round
  # every conv output to bf16 (8 bits), at different points of the sums: 5e-2 relative.
  tol = 1e-4 if dtype == 'float32' else 5e-2
  for a, b in zip(xla, dnnl, strict=True):
    for k in ('d_loss', 'g_loss'):
      assert abs(a[k] - b[k]) <= tol * max(1.0, abs(a[k])), (k, a[k], b[k])


@pytest.mark.slow
def test_a_sharded_step_runs_the_custom_call_on_8_devices():
  """Under the 8-device mesh the custom call is replicated by the partitioner: same losses."""
  config = train_helpers.tiny_config('unused.npz', **{'model.conv_backend': 'onednn'})
  one, eight = _train(config, n=1)[0], _train(config, n=1, devices=jax.devices())[0]
  for k in ('d_loss', 'g_loss'):
    assert abs(one[k] - eight[k]) <= 1e-5 * max(1.0, abs(one[k])), k


def test_bf16_on_a_cpu_without_onednn_bf16_is_refused_by_name(monkeypatch):
  monkeypatch.setattr(onednn, 'bf16_supported', lambda: False)
  config = train_helpers.tiny_config('unused.npz', **{'model.conv_backend': 'onednn',
                                                      'model.dtype': 'bfloat16'})
  with pytest.raises(ValueError, match="no oneDNN bf16 convolution.*dtype=float32"):
    build_models(config)
  config.model.dtype = 'float32'
  build_models(config)  # float32 is fine


def test_bad_backend_names_the_key():
  with pytest.raises(ValueError, match=r"config.model.conv_backend='cudnn'.*xla, onednn"):
    conv_ops.check_backend('cudnn')
  config = train_helpers.tiny_config('unused.npz', **{'model.conv_backend': 'cudnn'})
  with pytest.raises(ValueError, match='conv_backend'):
    build_models(config)


def _stylegan2_outputs(config, backend, variables=None):
  """G(z, y) and D's outputs on it and on reals, and the gradients of a scalar of both."""
  config.model.conv_backend = backend
  g, d = build_models(config)
  n, s = 8, config.data.image_size
  z = jax.random.normal(jax.random.key(1), (n, config.model.z_dim))
  y = jnp.arange(n, dtype=jnp.int32) % config.data.num_classes
  x = jax.random.uniform(jax.random.key(2), (n, s, s, 3), minval=-1, maxval=1)
  rngs = {'params': jax.random.key(0), 'noise': jax.random.key(3), 'mixing': jax.random.key(4)}
  if variables is None:
    gv = g.init(rngs, z, y, train=True)
    dv = d.init(rngs, jnp.concatenate([x, x]), jnp.concatenate([y, y]), train=True)
    variables = gv, dv
  gv, dv = variables

  def loss(gp, dp):
    img = g.apply({**gv, 'params': gp}, z, y, train=True, rngs={'noise': jax.random.key(5)})
    out = d.apply({**dv, 'params': dp}, jnp.concatenate([img, x]), jnp.concatenate([y, y]))
    return jnp.sum(jnp.sin(out.adv)) + jnp.sum(out.h ** 2) * 1e-3, img

  (value, img), grads = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(
      gv['params'], dv['params'])
  return variables, (g.conv_backend, value, img, grads)


# (skip, orig) is the slowest (~75 s of XLA compile on 2 cores): in the slow suite (CI), so that
# the README's test command stays under 12 minutes; the other two cover every architecture but G
# skip / D orig in the default suite.
@pytest.mark.parametrize('g_arch,d_arch', [
    pytest.param('skip', 'orig', marks=pytest.mark.slow), ('resnet', 'resnet'), ('orig', 'skip')])
def test_stylegan2_matches_the_xla_path_on_the_same_weights(g_arch, d_arch):
  """Issue 28: StyleGAN2's convolutions through oneDNN (plain ones) and zero insertion + XLA
  (up-sampling ones): every architecture's convs (3x3, 1x1 up/down skips, fromRGB, toRGB)."""
  from configs import tiny_stylegan2  # noqa: PLC0415

  config = tiny_stylegan2.get_config()
  config.model.stylegan2.g_architecture, config.model.stylegan2.d_architecture = g_arch, d_arch
  config.model.stylegan2.winograd = 0  # oneDNN's direct convolutions (Winograd: below)
  variables, (b0, v0, img0, grads0) = _stylegan2_outputs(config, 'xla')
  _, (b1, v1, img1, grads1) = _stylegan2_outputs(config, 'onednn', variables)
  assert (b0, b1) == ('xla', 'onednn')
  # Same linear maps, other summation order: float32 rounding, relative to the largest entry.
  np.testing.assert_allclose(img1, img0, rtol=0, atol=1e-5 * float(jnp.max(jnp.abs(img0))))
  np.testing.assert_allclose(v1, v0, rtol=1e-5)
  _assert_gradients_close(grads0, grads1)


@pytest.mark.parametrize('m', [4, 2])
def test_stylegan2_winograd_matches_the_xla_path(m, monkeypatch):
  """config.model.stylegan2.winograd: the float32 3x3 stride-1 convs by Winograd F(m x m, 3 x 3)
  (ops/winograd.py). The tiny widths would not pay (ops/winograd.pays), so the thresholds are
  lowered to route every such conv there; the lowered loss must contain the custom call.
  Tolerance: 4e-5 (F(4x4)) / 2e-6 (F(2x2)) of the largest output on top of the direct path's
  1e-5 (tests/ops/test_winograd.py states why); gradients as for the direct path."""
  from configs import tiny_stylegan2  # noqa: PLC0415

  monkeypatch.setattr(winograd, 'MIN_CHANNELS', 0)
  monkeypatch.setattr(winograd, 'MIN_WORK', 0)
  config = tiny_stylegan2.get_config()
  config.model.stylegan2.g_architecture, config.model.stylegan2.d_architecture = 'resnet', 'orig'
  config.model.stylegan2.winograd = m
  variables, (_, v0, img0, grads0) = _stylegan2_outputs(config, 'xla')
  _, (b1, v1, img1, grads1) = _stylegan2_outputs(config, 'onednn', variables)
  assert b1 == f'onednn+winograd{m}'
  tol = 1e-5 + {4: 4e-5, 2: 2e-6}[m]
  np.testing.assert_allclose(img1, img0, rtol=0, atol=tol * float(jnp.max(jnp.abs(img0))))
  np.testing.assert_allclose(v1, v0, rtol=tol)
  _assert_gradients_close(grads0, grads1)
  g, _ = build_models(config)
  z = jnp.zeros((2, config.model.z_dim))
  y = jnp.zeros((2,), jnp.int32)
  hlo = jax.jit(lambda gv: g.apply(gv, z, y, rngs={'noise': jax.random.key(0)})).lower(
      variables[0]).as_text()
  assert 'reacgan_winograd' in hlo


def test_stylegan2_winograd_setting_is_checked():
  from configs import tiny_stylegan2  # noqa: PLC0415

  config = tiny_stylegan2.get_config()
  config.model.stylegan2.winograd = 3
  with pytest.raises(ValueError, match=r'model.stylegan2.winograd=3: expected 0 \(off\), 2 or 4'):
    build_models(config)


@pytest.mark.slow  # 36 s (three tiny StyleGAN2 builds and their gradients): CI's slow suite
@needs_bf16
def test_stylegan2_bf16_is_as_close_to_float32_as_xlas_bf16():
  """Issue 28: StyleGAN2 with config.model.dtype='bfloat16' through oneDNN (plain, strided and
  transposed bf16 convs and their gradients) computes what XLA's bf16 path computes: each is as
  far from the float32 result as the other (bf16 rounding of every conv output), and the custom
  calls take bf16 operands."""
  from configs import tiny_stylegan2  # noqa: PLC0415

  config = tiny_stylegan2.get_config()
  variables, (_, v32, img32, grads32) = _stylegan2_outputs(config, 'xla')
  config.model.dtype = 'bfloat16'
  _, (_, vx, imgx, gradsx) = _stylegan2_outputs(config, 'xla', variables)
  _, (b1, vd, imgd, gradsd) = _stylegan2_outputs(config, 'onednn', variables)
  # the default Winograd setting leaves bf16 convs to oneDNN (ops/winograd.supported: float32)
  assert b1 == 'onednn+winograd4' and imgd.dtype == jnp.float32

  e_x, e_d = _mean_rel_err(imgx, img32), _mean_rel_err(imgd, img32)
  assert 0 < e_d <= 1.5 * e_x + 1e-4 and e_d < 0.02, (e_d, e_x)
  assert abs(float(vd) - float(v32)) <= 1.5 * abs(float(vx) - float(v32)) + 1e-3 * abs(float(v32))
  _assert_bf16_as_close_as_xlas(grads32, gradsx, gradsd)
  g, _ = build_models(config)
  z = jnp.zeros((4, config.model.z_dim))
  hlo = jax.jit(lambda p: g.apply(p, z, jnp.zeros((4,), jnp.int32),
                                  noise_mode='const')).lower(variables[0]).as_text()
  calls = [ln for ln in hlo.splitlines() if onednn.TARGET in ln]
  assert calls and all('xbf16>' in ln and 'xf32>' not in ln for ln in calls), calls
  assert onednn.TARGET_WINOGRAD not in hlo


@needs_bf16
@pytest.mark.parametrize('hw,k,up,pad', [((4, 4), 3, 2, ((3, 3), (3, 3))),
                                         ((5, 4), 3, 2, ((2, 3), (1, 2)))])
def test_bf16_up_convs_match_the_definition_on_rounded_operands(hw, k, up, pad):
  """The bf16 transposed conv (G's up-sampling convs with model.dtype='bfloat16'): values and
  both gradients equal lax's lhs-dilated conv in float64 on the same bf16 operands, to the
  output's bf16 rounding plus float32 accumulation."""
  from reacgan_jax.models import stylegan2_layers as L  # noqa: PLC0415

  bf = [jax.random.normal(jax.random.key(i), s).astype(jnp.bfloat16)
        for i, s in enumerate(((2, *hw, 5), (k, k, 5, 6)))]
  conv = functools.partial(L._conv, padding=pad, lhs_dilation=(up, up))
  y = jax.jit(functools.partial(conv, backend='onednn'))(*bf)
  ct = jax.random.normal(jax.random.key(2), y.shape).astype(jnp.bfloat16)
  got = (y, *jax.jit(jax.grad(lambda x, w: jnp.sum(conv(x, w, backend='onednn')
                                                    .astype(jnp.float32) * ct), (0, 1)))(*bf))
  with jax.enable_x64():
    ref = [jnp.asarray(t, jnp.float64) for t in (*bf, ct)]
    want = (conv(*ref[:2], backend='xla'),
            *jax.grad(lambda x, w: jnp.sum(conv(x, w, backend='xla') * ref[2]), (0, 1))(
                *ref[:2]))
    want = [np.asarray(t) for t in want]
  for name, a, ref in zip(('y', 'dx', 'dw'), got, want, strict=True):
    assert a.dtype == jnp.bfloat16 and a.shape == ref.shape, name
    e = np.abs(np.asarray(a, np.float64) - ref)
    assert np.all(e <= 2 ** -8 * np.abs(ref) + 1e-5 * np.abs(ref).max()), (name, e.max())


@pytest.mark.parametrize('hw,k,up,pad', [
    ((5, 4), 3, 2, ((2, 3), (1, 2))),  # StyleGAN2-like: partly beyond k - 1 (zero rows added)
    ((4, 4), 3, 2, ((3, 3), (3, 3))),  # conv2d_resample's 3x3 up-2 padding
    ((4, 4), 3, 2, ((0, 0), (1, 1))),  # inside k - 1: the output is cropped
    ((3, 5), 1, 2, ((0, 1), (0, 1))),
    ((6, 6), 4, 3, ((1, 0), (2, 5)))])
def test_stylegan2_up_convs_are_the_lhs_dilated_conv(hw, k, up, pad):
  """Issue 28: an up-sampling conv runs as oneDNN's transposed conv (backward-data as a forward
  op, no FLOP on inserted zeros); values and both gradients = lax's lhs-dilated conv."""
  from reacgan_jax.models import stylegan2_layers as L  # noqa: PLC0415

  x = jax.random.normal(jax.random.key(0), (2, *hw, 5))
  w = jax.random.normal(jax.random.key(1), (k, k, 5, 6))
  convs = {b: functools.partial(L._conv, padding=pad, lhs_dilation=(up, up), backend=b)
           for b in ('xla', 'onednn')}
  want, got = (jax.jit(c)(x, w) for c in convs.values())
  assert got.shape == want.shape
  np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)
  ct = jax.random.normal(jax.random.key(2), want.shape)
  grads = [jax.jit(jax.grad(lambda x, w, c=c: jnp.sum(c(x, w) * ct), (0, 1)))(x, w)
           for c in convs.values()]
  _assert_gradients_close(grads[0], grads[1])
  hlo = jax.jit(jax.value_and_grad(lambda x, w: jnp.sum(convs['onednn'](x, w)), (0, 1))).lower(
      x, w)
  calls = hlo.as_text().count(onednn.TARGET)
  assert calls == 3, calls  # forward (backward-data), its transpose (forward conv), weights


def test_vmapped_convs_run_one_call_per_row():
  """The seeded sampler vmaps G over rows: the custom call under vmap (forward, per-row
  gradients, the transposed conv) equals calling it row by row (it raised NotImplementedError:
  `reacgan-jax sample --seeds` failed on the CPU path)."""
  x = jax.random.normal(jax.random.key(0), (3, 2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(1), (3, 3, 4, 5))
  plain = functools.partial(conv_ops.conv_onednn, window_strides=(1, 1),
                            padding=((1, 1), (1, 1)),
                            dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  up = functools.partial(conv_ops.conv_up_onednn, lhs_dilation=(2, 2), padding=((3, 3), (3, 3)))
  for conv in (plain, up):
    loss = lambda x, w, conv=conv: jnp.sum(conv(x, w) ** 2)  # noqa: E731
    fn = lambda x, w, conv=conv, loss=loss: (conv(x, w), jax.grad(loss, (0, 1))(x, w))  # noqa: E731
    got = jax.jit(jax.vmap(fn, (0, None)))(x, w)
    rows = [fn(x[i], w) for i in range(x.shape[0])]
    want = jax.tree.map(lambda *r: jnp.stack(r), *rows)
    jax.tree.map(np.testing.assert_array_equal, got, want)


def test_a_strided_lhs_dilated_conv_is_refused():
  from reacgan_jax.models import stylegan2_layers as L  # noqa: PLC0415

  x, w = jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 2))
  with pytest.raises(ValueError, match='not a resampling layer'):
    L._conv(x, w, stride=2, lhs_dilation=(2, 2), backend='onednn')
  with pytest.raises(ValueError, match="conv backend 'cudnn'"):
    L._conv(x, w, backend='cudnn')


def test_a_missing_wheel_says_what_to_install(monkeypatch):
  monkeypatch.setattr(onednn, '_DIST', 'onednn-cpu-gomp-not-installed')
  with pytest.raises(onednn.OneDNNUnavailable, match=r"pip install -e '.\[onednn\]'"):
    onednn.build()


def test_the_build_is_cached_by_source_and_versions(tmp_path, monkeypatch, caplog):
  monkeypatch.setenv('REACGAN_JAX_CACHE', str(tmp_path))
  monkeypatch.delenv('REACGAN_JAX_ONEDNN_CACHE', raising=False)  # the suite's shared build
  first = onednn.build()
  assert first.parent == tmp_path / 'onednn' and first.exists()
  monkeypatch.setenv('REACGAN_JAX_ONEDNN_CACHE', str(tmp_path / 'own'))
  assert onednn.build().parent == tmp_path / 'own'
  monkeypatch.delenv('REACGAN_JAX_ONEDNN_CACHE')
  mtime = first.stat().st_mtime_ns
  assert onednn.build() == first and first.stat().st_mtime_ns == mtime  # not rebuilt
  # Issue 26: the cache is checked before the compiler (a verified build needs none) ...
  monkeypatch.delenv('CXX', raising=False)
  which = onednn.shutil.which
  monkeypatch.setattr(onednn.shutil, 'which', lambda name: None)
  assert onednn.build() == first
  # ... and a damaged one (truncated: loading it crashed every run with SIGBUS; zero bytes) is
  # never returned: without a compiler one line says so, with one it is rebuilt.
  good = first.read_bytes()
  for damage in (good[:len(good) // 2], b''):
    first.write_bytes(damage)
    with pytest.raises(onednn.OneDNNUnavailable, match=r'no C\+\+ compiler.*to build .*dnnl_conv'):
      onednn.build()
  monkeypatch.setattr(onednn.shutil, 'which', which)
  with caplog.at_level('WARNING'):
    assert onednn.build() == first
  assert 'is damaged or unverified' in caplog.text and len(first.read_bytes()) == len(good)


def test_inception_features_match_the_xla_path():
  """config.eval.conv_backend='onednn': pool3 features and logits = XLA's to float32 rounding."""
  from reacgan_jax.evaluation import (
    inception,  # noqa: PLC0415
    inception_weights,
  )

  params = jax.tree.map(jnp.asarray, inception_weights.random_params(num_logits=16, width=0.125))
  x = jax.random.uniform(jax.random.key(0), (3, 299, 299, 3), minval=-1, maxval=1)
  want = inception.extract(params, x)
  got = inception.extract(params, x, conv_backend='onednn')
  for k in ('pool', 'logits'):
    # 94 float32 convolutions deep; each differs from XLA's by summation order only.
    np.testing.assert_allclose(got[k], want[k], rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(want[k]))), err_msg=k)
  assert float(jnp.std(want['pool'][0] - want['pool'][1])) > 1e-3  # inputs do differ


def test_sharded_inception_runs_the_custom_call_per_device():
  """The evaluation's shard_map over the mesh (each device its own rows) with oneDNN: the call
  is typed per device like its input (it failed to trace: 'switch branches must have equal
  output types', found by the README's main job under conv_backend='auto')."""
  from reacgan_jax.evaluation import inception_weights, on_mesh  # noqa: PLC0415

  mesh = parallel.create_mesh(jax.devices()[:2])
  params = jax.tree.map(jnp.asarray, inception_weights.random_params(num_logits=16, width=0.125))
  x = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1, maxval=1)
  x = jax.device_put(x, jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(
      parallel.DATA_AXIS)))
  want = on_mesh.features_fn(params, mesh, 'clean', 'xla')(x)
  got = on_mesh.features_fn(params, mesh, 'clean', 'onednn')(x)
  for k in ('pool', 'logits'):
    np.testing.assert_allclose(got[k], want[k], rtol=0,
                               atol=1e-5 * float(jnp.max(jnp.abs(want[k]))), err_msg=k)


@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', [SHAPES[0], SHAPES[2], SHAPES[3]])
def test_gradients_of_gradients_match_lax(b, h, w, c, o, k, strides, padding):
  """Reverse over reverse (R1, path length: a penalty on an input gradient, differentiated
  with respect to the weights) through every primitive: the second derivatives of the conv,
  its transpose and its weight gradient equal lax's (the raw custom call had no derivative:
  StyleGAN2 with R1 failed on the CPU path)."""
  rng = np.random.default_rng(3)
  x, wt = (jnp.asarray(rng.standard_normal(s), jnp.float32)
           for s in ((b, h, w, c), (k, k, c, o)))
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  ct = jnp.asarray(rng.standard_normal((b, ho, wo, o)), jnp.float32)
  convs = {'xla': functools.partial(jax.lax.conv_general_dilated, window_strides=strides,
                                    padding=padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')),
           'onednn': lambda x, w: onednn.conv2d(x, w, strides, padding)}

  def penalty(conv, x, w):  # R1's shape: |d <conv(x, w), ct> / dx|^2 + a weight-gradient term
    gx, gw = jax.grad(lambda x, w: jnp.sum(jnp.sin(conv(x, w)) * ct), (0, 1))(x, w)
    return jnp.sum(gx ** 2) + jnp.sum(jnp.sin(gw))

  want, got = (jax.jit(jax.grad(functools.partial(penalty, convs[n]), (0, 1)))(x, wt)
               for n in ('xla', 'onednn'))
  _assert_gradients_close(want, got)


@pytest.mark.parametrize('b,h,w,c,o,k,strides,padding', [SHAPES[0], SHAPES[3]])
def test_gradients_of_gradients_with_the_bias_inside_match_lax(b, h, w, c, o, k, strides, padding):
  """The same through conv2d_bias and conv2d_wgrad_bias: a penalty on the input gradient and on
  the weight and bias gradients, differentiated w.r.t. x, w and the bias (conv2d_wgrad_bias's
  own VJP: its bias-gradient cotangent flows back to g as a broadcast)."""
  rng = np.random.default_rng(4)
  x, wt, bias = (jnp.asarray(rng.standard_normal(s), jnp.float32)
                 for s in ((b, h, w, c), (k, k, c, o), (o,)))
  ho, wo = onednn.out_hw((h, w), (k, k), strides, padding)
  ct = jnp.asarray(rng.standard_normal((b, ho, wo, o)), jnp.float32)
  _assert_penalty_gradients_match(
      lambda x, w, bias: jax.lax.conv_general_dilated(
          x, w, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')) + bias,
      lambda x, w, bias: onednn.conv2d_bias(x, w, bias, strides, padding), ct, x, wt, bias)


@pytest.mark.slow  # 30 s (second derivatives of tiny StyleGAN2 on both backends): CI's slow suite
def test_stylegan2_penalties_differentiate_through_the_onednn_path():
  """R1 (D's input gradient) and path length (G's gradient w.r.t. ws, through the transposed
  up-sampling convs), differentiated w.r.t. the weights on the oneDNN path, equal the XLA
  path's: the default CPU backend trains StyleGAN2 with its regularisers (it raised 'cannot be
  differentiated' at the first R1 step)."""
  from configs import tiny_stylegan2  # noqa: PLC0415

  config = tiny_stylegan2.get_config()
  n, s = 4, config.data.image_size
  z = jax.random.normal(jax.random.key(1), (n, config.model.z_dim))
  y = jnp.arange(n, dtype=jnp.int32) % config.data.num_classes
  x = jax.random.uniform(jax.random.key(2), (n, s, s, 3), minval=-1, maxval=1)
  ct = jax.random.normal(jax.random.key(3), (n, s, s, 3))
  out = {}
  for backend in ('xla', 'onednn'):
    config.model.conv_backend = backend
    g, d = build_models(config)
    rngs = {'params': jax.random.key(0), 'noise': jax.random.key(4)}
    gv, dv = g.init(rngs, z, y), d.init(rngs, x, y)
    ws = g.apply(gv, z, y, method='mapping')

    def penalties(gp, dp, g=g, d=d, gv=gv, dv=dv, ws=ws):
      r1 = jax.grad(lambda x: jnp.sum(d.apply({**dv, 'params': dp}, x, y).adv))(x)
      pl = jax.grad(lambda ws: jnp.sum(g.apply({**gv, 'params': gp}, ws, noise_mode='const',
                                               method='synthesize') * ct))(ws)
      return jnp.sum(r1 ** 2) + jnp.sum(pl ** 2)

    out[backend] = jax.jit(jax.value_and_grad(penalties, (0, 1)))(gv['params'], dv['params'])
  (v0, g0), (v1, g1) = out['xla'], out['onednn']
  np.testing.assert_allclose(v1, v0, rtol=1e-4)
  _assert_gradients_close(g0, g1)


@pytest.mark.parametrize('stride,use_bias', [(1, True), (2, True), (1, False)])
def test_onednn_conv_module_is_nn_conv_with_the_bias_inside_onednn(stride, use_bias):
  """layers.conv on the oneDNN backend (layers.OnednnConv): nn.Conv's parameter tree and initial
  values, its outputs and input / kernel gradients exactly (float32: the bias added to the
  float32 accumulator is the same one rounding as adding it after); the bias gradient, which the
  backward-weights primitive sums, to 1e-5 relative (another summation order than XLA's)."""
  import flax.linen as nn  # noqa: PLC0415

  from reacgan_jax.models import layers  # noqa: PLC0415

  init = nn.initializers.orthogonal()
  ours = layers.conv(8, 3, init, jnp.float32, 'c', stride=stride, use_bias=use_bias,
                     backend='onednn')
  assert isinstance(ours, layers.OnednnConv)
  ref = nn.Conv(8, (3, 3), strides=(stride, stride), padding=((1, 1), (1, 1)),
                use_bias=use_bias, kernel_init=init, dtype=jnp.float32,
                conv_general_dilated=conv_ops.conv_onednn, name='c')
  rng = np.random.default_rng(stride)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 5)), jnp.float32)
  v_ours = ours.init(jax.random.PRNGKey(3), x)
  v_ref = ref.init(jax.random.PRNGKey(3), x)
  assert jax.tree.structure(v_ours) == jax.tree.structure(v_ref)
  for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_ref), strict=True):
    np.testing.assert_array_equal(a, b)
  dy = jnp.asarray(rng.normal(size=(4, 8 // stride, 8 // stride, 8)), jnp.float32)
  y1, vjp1 = jax.vjp(ours.apply, v_ours, x)
  y2, vjp2 = jax.vjp(ref.apply, v_ref, x)
  np.testing.assert_array_equal(y1, y2)
  (g1, gx1), (g2, gx2) = vjp1(dy), vjp2(dy)
  np.testing.assert_array_equal(gx1, gx2)
  p1, p2 = g1['params'], g2['params']
  np.testing.assert_array_equal(p1['kernel'], p2['kernel'])
  assert ('bias' in p1) == use_bias
  if use_bias:
    np.testing.assert_allclose(p1['bias'], p2['bias'], rtol=1e-5, atol=1e-5)
    bwd = str(jax.make_jaxpr(vjp1)(dy))
    assert onednn.TARGET_WGRAD_BIAS in bwd and 'reduce_sum' not in bwd
    assert onednn.TARGET_BIAS in str(jax.make_jaxpr(ours.apply)(v_ours, x))


@pytest.mark.parametrize('dtype', ['float32', pytest.param('bfloat16', marks=needs_bf16)])
def test_resnet_blocks_match_the_xla_path(dtype):
  """GenBlock, DiscOptBlock and DiscBlock on the oneDNN backend (its convolutions, bias
  gradients, window-sum pooling and upsampling gradient) against the XLA backend on the same
  parameters: outputs and every gradient. float32: the bounds of the model test above
  (summation order). bf16: as close to XLA's float32 result as XLA's own bf16 path is (mean
  relative error at most 1.5x XLA bf16's plus 2e-3, as the StyleGAN2 test), both rounding
  every activation to bf16."""
  from reacgan_jax.models import layers  # noqa: PLC0415

  rng = np.random.default_rng(4)
  x = jnp.asarray(rng.normal(size=(4, 8, 8, 6)), jnp.float32)
  affine = jnp.asarray(rng.normal(size=(4, 5)), jnp.float32)
  blocks = {
      'gen': lambda b, dt: layers.GenBlock(8, dtype=dt, conv_backend=b),
      'opt': lambda b, dt: layers.DiscOptBlock(8, dtype=dt, conv_backend=b),
      'disc': lambda b, dt: layers.DiscBlock(8, dtype=dt, conv_backend=b),
  }

  for name, make in blocks.items():
    args = (x, affine, True) if name == 'gen' else (x, True)
    variables = make('xla', jnp.float32).init(jax.random.PRNGKey(1), *args)
    params, rest = variables['params'], {k: v for k, v in variables.items() if k != 'params'}

    def run(backend, dt, make=make, args=args, params=params, rest=rest):
      def loss(p, x):
        y, _ = make(backend, dt).apply({'params': p, **rest}, x, *args[1:],
                                       mutable=['batch_stats'])
        return jnp.sum(jnp.sin(y.astype(jnp.float32))), y
      (_, y), (gp, gx) = jax.value_and_grad(loss, argnums=(0, 1), has_aux=True)(params, x)
      return y.astype(jnp.float32), (gp, {'x': gx})

    y32, g32 = run('xla', jnp.float32)
    if name == 'gen':  # the conditional BN's affine and the upsampling take the oneDNN forms:
      # the upsampled conv is one transposed conv in float32, and in bf16 from 32x32 outputs on
      big = jnp.zeros((4, layers.BF16_DECONV_MIN_HW // 2, layers.BF16_DECONV_MIN_HW // 2, 6))
      jaxprs = {}
      for b, dt, xb in (('xla', jnp.float32, x), ('onednn', jnp.float32, x),
                        ('onednn16', jnp.bfloat16, x), ('onednn16big', jnp.bfloat16, big)):
        module = make(b[:6], dt)
        fwd = lambda x, m=module, v=variables: m.apply(v, x, affine, True, mutable=['batch_stats'])
        jaxprs[b] = str(jax.make_jaxpr(fwd)(xb))
      for fn in ('per_sample_affine', onednn.TARGET_T_BIAS):
        assert fn in jaxprs['onednn'] and fn not in jaxprs['xla'], fn
      # (the shortcut's upsampling of its 1x1 conv's output stays in both)
      ups = {b: jaxprs[b].count('upsample2x_window_sums') for b in jaxprs}
      assert 0 < ups['onednn'] < ups['onednn16'], ups
      assert onednn.TARGET_T_BIAS not in jaxprs['onednn16']
      assert onednn.TARGET_T_BIAS in jaxprs['onednn16big']
    else:  # no BN in these D blocks: the oneDNN backend leaves no reduce at all
      ct = make('xla', jnp.float32).apply(variables, x, False)
      jaxprs = {}
      for b in ('xla', 'onednn'):
        module = make(b, jnp.float32)
        grad = jax.grad(lambda x, ct, m=module, v=variables: jnp.vdot(m.apply(v, x, False), ct))
        jaxprs[b] = str(jax.make_jaxpr(grad)(x, ct))
      assert 'reduce_sum' in jaxprs['xla'] and 'reduce_sum' not in jaxprs['onednn'], name
    if dtype == 'float32':
      y1, g1 = run('onednn', jnp.float32)
      np.testing.assert_allclose(y1, y32, rtol=0, atol=1e-5, err_msg=name)
      _assert_gradients_close(g32, g1)
      continue
    (yx, gx), (yd, gd) = run('xla', jnp.bfloat16), run('onednn', jnp.bfloat16)
    e_d, e_x = _mean_rel_err(yd, y32), _mean_rel_err(yx, y32)
    assert 0 < e_d <= 1.5 * e_x + 2e-3, (name, e_d, e_x)
    _assert_bf16_as_close_as_xlas(g32, gx, gd, name)
