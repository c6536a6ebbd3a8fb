"""The CPU weight-gradient path of models/conv.py against XLA's own convolution gradient."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from reacgan_jax.ops import conv as conv_ops

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _grads(conv_fn, x, w, g, padding, strides=(1, 1), lhs_dilation=None, groups=1):
  def f(x, w):
    y = conv_fn(x, w, strides, padding, lhs_dilation=lhs_dilation, dimension_numbers=NHWC,
                feature_group_count=groups)
    return jnp.vdot(y, g), y
  (_, y), (dx, dw) = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(x, w)
  return y, dx, dw


@pytest.mark.parametrize('b,hw,c,o,k,pad', [
    (8, 8, 5, 7, 3, ((1, 1), (1, 1))),     # 'same' 3x3, batch divisible by the 4 chunks
    (6, 6, 4, 3, 3, ((1, 1), (1, 1))),     # batch 6: 2 chunks
    (3, 5, 3, 4, 1, ((0, 0), (0, 0))),     # 1x1, odd batch: 1 chunk
    (4, 7, 2, 5, 3, ((0, 0), (0, 0))),     # valid padding, output smaller than input
    (4, 6, 3, 2, 5, ((2, 1), (0, 3))),     # 5x5, asymmetric padding
    (2, 4, 3, 2, 3, 'SAME'),               # string padding
])
def test_gradients_match_xla(b, hw, c, o, k, pad):
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, hw, hw + 1, c), jnp.float32)
  w = jax.random.normal(kw, (k, k, c, o), jnp.float32)
  out = lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=NHWC)
  g = jax.random.normal(kg, out.shape, jnp.float32)
  y0, dx0, dw0 = _grads(lax.conv_general_dilated, x, w, g, pad)
  y1, dx1, dw1 = _grads(conv_ops.conv_general_dilated, x, w, g, pad)
  # Same sums in a different order: float32 rounding only, relative to the largest entry.
  for a, b_ in ((y0, y1), (dx0, dx1), (dw0, dw1)):
    assert a.shape == b_.shape
    np.testing.assert_allclose(b_, a, atol=2e-6 * float(jnp.max(jnp.abs(a))), rtol=0)


def test_weight_gradient_against_float64_definition():
  """dw[dy, dx, i, o] = sum_{n,y,x} xpad[n, y + dy, x + dx, i] g[n, y, x, o] (numpy, float64)."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((4, 6, 5, 3))
  w = rng.standard_normal((3, 3, 3, 2))
  g = rng.standard_normal((4, 6, 5, 2))
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  want = np.zeros_like(w)
  for dy in range(3):
    for dx in range(3):
      want[dy, dx] = np.einsum('nyxi,nyxo->io', xp[:, dy:dy + 6, dx:dx + 5], g)
  got = _grads(conv_ops.conv_general_dilated, jnp.float32(x), jnp.float32(w), jnp.float32(g),
               ((1, 1), (1, 1)))[2]
  np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max(), rtol=0)


def test_bfloat16_and_second_order():
  kx, kw = jax.random.split(jax.random.key(2))
  x = jax.random.normal(kx, (4, 6, 6, 3))
  w = jax.random.normal(kw, (3, 3, 3, 4))
  pad = ((1, 1), (1, 1))
  for conv_fn in (lax.conv_general_dilated, conv_ops.conv_general_dilated):
    f = lambda x, w, conv_fn=conv_fn: jnp.sum(
        conv_fn(x, w, (1, 1), pad, dimension_numbers=NHWC) ** 2)
    dw = jax.grad(f, 1)(x.astype(jnp.bfloat16), w.astype(jnp.bfloat16))
    assert dw.dtype == jnp.bfloat16
    # Gradient penalty style: the gradient wrt x of a loss, differentiated wrt w.
    gp = jax.grad(lambda w, f=f: jnp.sum(jax.grad(f, 0)(x, w) ** 2))(w)
    if conv_fn is lax.conv_general_dilated:
      dw_ref, gp_ref = dw, gp
  np.testing.assert_allclose(np.float32(dw), np.float32(dw_ref),
                             atol=0.02 * float(jnp.max(jnp.abs(np.float32(dw_ref)))))
  np.testing.assert_allclose(gp, gp_ref, rtol=1e-5, atol=1e-5 * float(jnp.max(jnp.abs(gp_ref))))


@pytest.mark.parametrize('kwargs', [dict(strides=(2, 2)), dict(lhs_dilation=(2, 2)),
                                    dict(groups=2)])
def test_other_convolutions_fall_back_to_lax(kwargs):
  x = jax.random.normal(jax.random.key(3), (2, 6, 6, 4))
  w = jax.random.normal(jax.random.key(4), (3, 3, 4 // kwargs.get('groups', 1), 4))
  kw = dict(kwargs)
  strides = kw.pop('strides', (1, 1))
  y0 = lax.conv_general_dilated(x, w, strides, ((1, 1), (1, 1)), dimension_numbers=NHWC,
                                feature_group_count=kw.get('groups', 1),
                                lhs_dilation=kw.get('lhs_dilation'))
  g = jnp.cos(y0)
  got = _grads(conv_ops.conv_general_dilated, x, w, g, ((1, 1), (1, 1)), strides, **kw)
  want = _grads(lax.conv_general_dilated, x, w, g, ((1, 1), (1, 1)), strides, **kw)
  for a, b in zip(got, want, strict=True):
    np.testing.assert_array_equal(a, b)  # the very same lax computation


def test_flax_conv_uses_it_and_matches():
  x = jax.random.normal(jax.random.key(5), (4, 8, 8, 3))
  mods = [nn.Conv(6, (3, 3), padding=((1, 1), (1, 1)), conv_general_dilated=f)
          for f in (lax.conv_general_dilated, conv_ops.conv_general_dilated)]
  params = mods[0].init(jax.random.key(6), x)
  grads = [jax.grad(lambda p, m=m: jnp.sum(jnp.tanh(m.apply(p, x))))(params) for m in mods]
  jax.tree.map(lambda a, b: np.testing.assert_allclose(b, a, rtol=1e-5, atol=1e-6), *grads)


@pytest.mark.parametrize('dtype', ['float64', 'bfloat16'])
def test_bias_add_gradient_is_the_sum_as_a_matrix_product(dtype):
  """conv_ops.bias_add: y + b, its bias gradient sum_{B,H,W} dy through a dot (not a reduce).

  float64: equal to the exact sum (and to autodiff's) to 1e-12 relative (sums in another
  order). bf16: accumulated in float32 and rounded once, so within one bf16 ulp (2^-7 relative)
  of the exact sum of the bf16 inputs.
  """
  rng = np.random.default_rng(0)
  with jax.enable_x64(dtype == 'float64'):
    y = jnp.asarray(rng.normal(size=(4, 5, 6, 7)), dtype)
    b = jnp.asarray(rng.normal(size=(7,)), dtype)
    dy = jnp.asarray(rng.normal(size=(4, 5, 6, 7)), dtype)
    got_y, vjp = jax.vjp(conv_ops.bias_add, y, b)
    want_y, want_vjp = jax.vjp(lambda y, b: y + b, y, b)
    np.testing.assert_array_equal(got_y, want_y)
    (gy, gb), (wy, wb) = vjp(dy), want_vjp(dy)
    np.testing.assert_array_equal(gy, wy)
    assert gb.dtype == b.dtype
    exact = np.asarray(dy, np.float64).sum((0, 1, 2))
    tol = 1e-12 if dtype == 'float64' else 2.0 ** -7
    np.testing.assert_allclose(np.asarray(gb, np.float64), exact, rtol=tol, atol=tol * 10)
    if dtype == 'float64':
      np.testing.assert_allclose(np.asarray(wb), exact, rtol=tol, atol=tol * 10)
    backward = str(jax.make_jaxpr(vjp)(dy))
    assert 'dot_general' in backward and 'reduce_sum' not in backward
