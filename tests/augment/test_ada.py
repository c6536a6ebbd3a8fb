"""ADA pipeline (reacgan_jax/augment/ada.py) against its definitions, written here in float64 numpy.

Definitions (AugmentPipe, StudioGAN src/utils/ada_aug.py): G_inv maps an output pixel to the input
pixel, in pixel coordinates centred on the image; C maps [r, g, b, 1] to the output colour.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.augment import ada
from reacgan_jax.augment import ada_params as ap

SYM6 = np.asarray([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148])


def _images(b=4, s=24, c=3, seed=0):
  x = np.random.default_rng(seed).uniform(-1, 1, (b, s, s, c)).astype(np.float32)
  x[0, 0, 0, 0] = -0.0  # a negative zero must survive p = 0 too
  return x


def _np(params):
  return {k: np.asarray(v, np.float64) for k, v in params.items()}


@pytest.mark.parametrize('name', ['bgc', 'bgcfnc'])
def test_p_zero_is_identity_bit_for_bit(name):
  x = _images()
  f = jax.jit(ada.ada_augment, static_argnums=3)
  y = np.asarray(f(jnp.asarray(x), jax.random.key(3), 0.0, ap.preset(name)))
  assert y.tobytes() == x.tobytes()


def _blit_numpy(img, flip, rot, tx, ty):
  """out = translate(rot90(flip(x))): the order of G_inv = flip @ rot90 @ translate."""
  out = img[:, ::-1] if flip else img
  out = np.rot90(out, int(rot), axes=(0, 1))  # G_inv = rotate2d(pi/2): out[r, c] = in[c, W-1-r]
  s = out.shape[0]
  pad = np.pad(out, ((s - 1, s - 1), (s - 1, s - 1), (0, 0)), mode='reflect')
  return pad[s - 1 - ty:2 * s - 1 - ty, s - 1 - tx:2 * s - 1 - tx]  # out(q) = in(q - t)


@pytest.mark.parametrize('kwargs', [dict(xflip=1), dict(rotate90=1), dict(xint=1),
                                    dict(xflip=1, rotate90=1, xint=1)])
def test_blits_are_exact(kwargs):
  x = _images(b=8, s=16)
  spec = ap.AdaSpec(**kwargs)
  params = ada.draw(jax.random.key(5), 1.0, spec, x.shape)
  y = np.asarray(ada.apply(jnp.asarray(x), params, spec))
  prm = _np(params)
  for b in range(x.shape[0]):
    tx, ty = (np.round(prm['xint'][b] * 16).astype(int) if 'xint' in prm else (0, 0))
    want = _blit_numpy(x[b], prm.get('xflip', np.zeros(8))[b], prm.get('rotate90', np.zeros(8))[b],
                       tx, ty)
    np.testing.assert_array_equal(y[b], want)
  if 'xflip' in kwargs:
    assert 0 < prm['xflip'].sum() < 8  # both branches exercised


def _color_matrix_numpy(prm, b):
  """C from the definitions: brightness, contrast, luma flip, hue rotation, saturation."""
  v = np.asarray([1, 1, 1, 0]) / np.sqrt(3)
  vv, eye = np.outer(v, v), np.eye(4)
  c = eye
  if 'brightness' in prm:
    t = eye.copy()
    t[:3, 3] = prm['brightness'][b]
    c = t @ c
  if 'contrast' in prm:
    c = np.diag([prm['contrast'][b]] * 3 + [1]) @ c
  if 'lumaflip' in prm:
    c = (eye - 2 * vv * prm['lumaflip'][b]) @ c
  if 'hue' in prm:  # Rodrigues: rotation by theta about the unit axis v
    th, k = prm['hue'][b], np.zeros((4, 4))
    k[:3, :3] = [[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]]
    r = eye + np.sin(th) * k + (1 - np.cos(th)) * (k @ k)
    c = r @ c
  if 'saturation' in prm:
    c = (vv + (eye - vv) * prm['saturation'][b]) @ c
  return c


@pytest.mark.parametrize('names', [('brightness',), ('contrast',), ('lumaflip',), ('hue',),
                                   ('saturation',), ap.COLOR])
def test_color_transforms_match_their_matrices(names):
  x = _images(b=6)
  spec = ap.AdaSpec(**{n: 1 for n in names})
  params = ada.draw(jax.random.key(7), 1.0, spec, x.shape)
  y = np.asarray(ada.apply(jnp.asarray(x), params, spec))
  prm = _np(params)
  for b in range(x.shape[0]):
    c = _color_matrix_numpy(prm, b)
    want = x[b].astype(np.float64) @ c[:3, :3].T + c[:3, 3]
    # float32 matrix products of values in [-1, 1]; 1e-5 is ~100 ulp
    np.testing.assert_allclose(y[b], want, atol=1e-5, rtol=0)
  assert np.abs(y - x).max() > 1e-2  # the transform did something


def test_grayscale_color_uses_mean_of_rows():
  x = _images(b=3, c=1)
  spec = ap.AdaSpec(brightness=1, contrast=1, lumaflip=1)
  params = ada.draw(jax.random.key(8), 1.0, spec, x.shape)
  y = np.asarray(ada.apply(jnp.asarray(x), params, spec))
  prm = _np(params)
  for b in range(3):
    c = _color_matrix_numpy(prm, b)[:3].mean(0)  # reference: C[:, :3, :].mean(dim=1)
    np.testing.assert_allclose(y[b], x[b] * c[:3].sum() + c[3], atol=1e-5)


# ---- general geometry: float64 numpy pad + upfirdn + grid_sample + downfirdn -------------------

def _fir(x, f, axis):
  """'valid' cross-correlation along axis."""
  n = x.shape[axis] - f.size + 1
  return sum(np.take(x, np.arange(k, k + n), axis=axis) * f[k] for k in range(f.size))


def _bilinear(img, ix, iy):
  h, w, _ = img.shape
  out = 0
  x0, y0 = np.floor(ix), np.floor(iy)
  for xi, yi in ((x0, y0), (x0 + 1, y0), (x0, y0 + 1), (x0 + 1, y0 + 1)):
    wgt = (1 - np.abs(ix - xi)) * (1 - np.abs(iy - yi))
    ok = (xi >= 0) & (xi < w) & (yi >= 0) & (yi < h)
    val = img[np.where(ok, yi, 0).astype(int), np.where(ok, xi, 0).astype(int)]
    out = out + val * (wgt * ok)[..., None]
  return out


def _geometry_numpy(img, g_inv):
  """Reflect-pad by s-1, upsample 2x (sym6), bilinear by G_inv, downsample 2x (sym6), crop."""
  s = img.shape[0]
  x = np.pad(img.astype(np.float64), ((s - 1, s - 1), (s - 1, s - 1), (0, 0)), mode='reflect')
  f = SYM6 / SYM6.sum()
  for axis in (1, 0):  # zero-stuff and filter: y[m] = sum_n x[n] * 2 f[m + 6 - 2n]
    shape = list(x.shape)
    shape[axis] *= 2
    z = np.zeros(shape)
    z[(slice(None),) * axis + (slice(0, None, 2),)] = x
    pads = [(0, 0)] * 3
    pads[axis] = (6, 5)
    x = _fir(np.pad(z, pads), (2 * f)[::-1], axis)
  n = x.shape[0]  # upsampled padded size; the output grid covers s + 6 pixels at 2x
  # AugmentPipe's convention (its conjugations by scale 2 and translate -0.5): upsampled output
  # pixel j sits at q = (j + 1) / 2 - (s + 6) / 2 in centred original-resolution coordinates,
  # and a source point src at upsampled input pixel 2 src + (n - 1) / 2 - 1/2.
  q = (np.arange(2 * (s + 6)) + 1) / 2 - (s + 6) / 2
  qx, qy = np.meshgrid(q, q)
  src = np.einsum('ij,hwj->hwi', g_inv, np.stack([qx, qy, np.ones_like(qx)], -1))
  ix = 2 * src[..., 0] + (n - 1) / 2 - 0.5
  iy = 2 * src[..., 1] + (n - 1) / 2 - 0.5
  x = _bilinear(x, ix, iy)
  for axis in (1, 0):
    x = np.take(x, np.arange(1, x.shape[axis] - 1), axis=axis)
    x = np.take(_fir(x, f, axis), np.arange(0, x.shape[axis] - f.size + 1, 2), axis=axis)
  return x


def _geom_matrix_numpy(prm, b, s):
  def rot(t):
    return np.asarray([[np.cos(t), -np.sin(t), 0], [np.sin(t), np.cos(t), 0], [0, 0, 1]])
  g = np.eye(3)
  if 'scale' in prm:
    g = g @ np.diag([1 / prm['scale'][b], 1 / prm['scale'][b], 1])
  if 'rotpre' in prm:
    g = g @ rot(prm['rotpre'][b])
  if 'aniso' in prm:
    g = g @ np.diag([1 / prm['aniso'][b], prm['aniso'][b], 1])
  if 'rotpost' in prm:
    g = g @ rot(prm['rotpost'][b])
  if 'xfrac' in prm:
    g = g @ np.asarray([[1, 0, -prm['xfrac'][b, 0] * s], [0, 1, -prm['xfrac'][b, 1] * s],
                        [0, 0, 1]])
  return g


@pytest.mark.parametrize('names', [('scale',), ('rotate',), ('aniso',), ('xfrac',), ap.GEOM])
def test_geometric_transforms_match_float64_numpy(names):
  s = 12
  x = _images(b=3, s=s)
  spec = ap.AdaSpec(**{n: 1 for n in names})
  params = ada.draw(jax.random.key(11), 1.0, spec, x.shape)
  y = np.asarray(ada.apply(jnp.asarray(x), params, spec))
  prm = _np(params)
  g_ours = np.asarray(ap.geometric_matrix(params, 3, s, s))
  for b in range(3):
    g = _geom_matrix_numpy(prm, b, s)
    np.testing.assert_allclose(g_ours[b], g, atol=2e-6)
    # float32 pipeline (pad, 2x12-tap filters, bilinear) vs float64: 2e-5 on values in [-1, 1]
    np.testing.assert_allclose(y[b], _geometry_numpy(x[b], g), atol=2e-5, rtol=0)
  assert np.abs(y - x).max() > 1e-2


@pytest.mark.parametrize('name,size', [
    ('bgc', 12), pytest.param('bgcfnc', 24, marks=pytest.mark.exhaustive)])  # imgfilter: > 21 px
def test_gradients_reach_the_images_and_match_finite_differences(name, size):
  x = jnp.asarray(_images(b=2, s=size))
  spec = ap.preset(name)
  key = jax.random.key(2)
  w = jax.random.normal(jax.random.key(9), x.shape)

  def loss(img):
    return jnp.sum(w * ada.ada_augment(img, key, 0.9, spec))

  grad = jax.jit(jax.grad(loss))(x)
  loss = jax.jit(loss)
  assert bool(jnp.all(jnp.isfinite(grad))) and float(jnp.abs(grad).max()) > 0
  # The pipeline is affine in the images for fixed draws, so a central difference is exact up
  # to float32 rounding of the two sums (|loss| ~ 1e2, ulp ~ 1e-5): rtol 1e-3.
  for seed in range(3):
    v = jax.random.normal(jax.random.key(100 + seed), x.shape)
    eps = 1.0
    fd = (loss(x + eps * v) - loss(x - eps * v)) / (2 * eps)
    np.testing.assert_allclose(float(jnp.vdot(grad, v)), float(fd), rtol=1e-3)


def test_bad_input_is_named():
  with pytest.raises(ValueError, match='preset'):
    ap.preset('bgcx')
  with pytest.raises(ValueError, match='rotate90 needs square'):
    ada.ada_augment(jnp.zeros((1, 8, 16, 3)), jax.random.key(0), 0.5, ap.preset('blit'))
  with pytest.raises(ValueError, match='C = 1 or 3'):
    ada.ada_augment(jnp.zeros((1, 8, 8, 4)), jax.random.key(0), 0.5, ap.preset('color'))
