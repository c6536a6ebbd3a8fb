"""MS-SSIM vs a float64 NumPy reference written from Wang et al. 2003 and vs TensorFlow.

Tolerances: our MS-SSIM runs in float32; the products of up to 5 powers of means of ~1e3 window
terms agree with float64 to ~1e-6, so 2e-5 absolute leaves margin without hiding a wrong window,
pooling or exponent (those move the value by > 1e-3 on these images).
"""

import numpy as np
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from reacgan_jax.evaluation import msssim

WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)


def _gauss(size, sigma):
  # Written from the definition: a 2-D Gaussian sampled at pixel centres, centred on the window.
  r = np.arange(size) - (size - 1) / 2
  g = np.exp(-(r[:, None] ** 2 + r[None] ** 2) / (2 * sigma ** 2))
  return g / g.sum()


def _ref_ms_ssim(a, b, max_val, weights=WEIGHTS, size=11, sigma=1.5, k1=0.01, k2=0.03,
                 shrink=True):
  """float64 MS-SSIM of one pair [H, W, C]: per channel, 'valid' windows, relu'd terms."""
  a, b = a.astype(np.float64), b.astype(np.float64)
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  terms = []
  for s in range(len(weights)):
    if s:
      a, b = [np.pad(x, ((0, x.shape[0] % 2), (0, x.shape[1] % 2), (0, 0)), mode='symmetric')
              for x in (a, b)]
      a, b = [0.25 * (x[0::2, 0::2] + x[1::2, 0::2] + x[0::2, 1::2] + x[1::2, 1::2])
              for x in (a, b)]
    side, sig = size, sigma
    if min(a.shape[:2]) < size:
      assert shrink
      side = min(a.shape[:2])
      sig = side * sigma / size
    g = _gauss(side, sig)
    per_c = []
    for ch in range(a.shape[2]):
      wa = sliding_window_view(a[..., ch], (side, side))  # [h', w', side, side]
      wb = sliding_window_view(b[..., ch], (side, side))
      mu_a = (wa * g).sum((-1, -2))
      mu_b = (wb * g).sum((-1, -2))
      var_a = (wa ** 2 * g).sum((-1, -2)) - mu_a ** 2
      var_b = (wb ** 2 * g).sum((-1, -2)) - mu_b ** 2
      cov = (wa * wb * g).sum((-1, -2)) - mu_a * mu_b
      lum = (2 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
      cs = (2 * cov + c2) / (var_a + var_b + c2)
      val = (lum * cs).mean() if s == len(weights) - 1 else cs.mean()
      per_c.append(max(val, 0.0))
    terms.append(per_c)
  terms = np.asarray(terms)  # [scales, C]
  return float(np.prod(terms ** np.asarray(weights)[:, None], axis=0).mean())


def _pairs(n, h, w, seed=0, noise=0.3):
  """Correlated pairs in [-1, 1]: smooth random images and noisy copies of them."""
  rng = np.random.default_rng(seed)
  base = rng.uniform(-1, 1, (n, h // 4 + 1, w // 4 + 1, 3))
  base = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)[:, :h, :w]
  a = np.clip(base + 0.1 * rng.normal(size=base.shape), -1, 1)
  b = np.clip(base + noise * rng.normal(size=base.shape), -1, 1)
  return a.astype(np.float32), b.astype(np.float32)


def test_shrink_matches_float64_reference_at_32x32():
  a, b = _pairs(4, 32, 32)
  got = np.asarray(msssim.ms_ssim(a, b, max_val=2.0))
  want = [_ref_ms_ssim(a[i], b[i], 2.0) for i in range(4)]
  np.testing.assert_allclose(got, want, atol=2e-5)
  assert np.all((got > 0.05) & (got < 0.99))  # a non-trivial regime


def test_windows_at_32x32_documented():
  # 32, 16, 8, 4, 2 px scales: the 11-px window shrinks to 8, 4, 2 with sigma scaled likewise.
  w = msssim.scale_windows(32, 32, 5, 11, 1.5, 'shrink')
  assert [s for s, _ in w] == [11, 11, 8, 4, 2]
  np.testing.assert_allclose([g for _, g in w], [1.5, 1.5, 8 * 1.5 / 11, 4 * 1.5 / 11,
                                                  2 * 1.5 / 11])
  with pytest.raises(ValueError, match='176x176'):
    msssim.scale_windows(32, 32, 5, 11, 1.5, 'error')


def test_identical_is_one_symmetric_and_decreasing_with_noise():
  a, _ = _pairs(2, 32, 32)
  np.testing.assert_allclose(np.asarray(msssim.ms_ssim(a, a)), 1.0, atol=1e-5)
  scores = []
  for noise in (0.05, 0.2, 0.5, 1.0):
    x, y = _pairs(2, 32, 32, seed=1, noise=noise)
    s_xy, s_yx = np.asarray(msssim.ms_ssim(x, y)), np.asarray(msssim.ms_ssim(y, x))
    np.testing.assert_allclose(s_xy, s_yx, atol=1e-6)
    scores.append(s_xy.mean())
  assert np.all(np.diff(scores) < 0), scores


@pytest.mark.parametrize('shape,weights,size,sigma', [
    ((176, 176), WEIGHTS, 11, 1.5),  # the paper's parameters, where TF accepts them
    ((32, 32), WEIGHTS[:2], 11, 1.5),  # 32x32 with the scales an 11-px window allows
    ((37, 45), (0.3, 0.3, 0.4), 5, 1.0),  # odd sides: TF pads symmetrically before pooling
])
def test_matches_tensorflow(shape, weights, size, sigma):
  tf = pytest.importorskip('tensorflow')
  a, b = _pairs(3, *shape, seed=2)
  want = tf.image.ssim_multiscale(a, b, max_val=2.0, power_factors=weights, filter_size=size,
                                  filter_sigma=sigma).numpy()
  got = np.asarray(msssim.ms_ssim(a, b, max_val=2.0, weights=weights, filter_size=size,
                                  filter_sigma=sigma, small_images='error'))
  np.testing.assert_allclose(got, want, atol=2e-5)
  if shape == (37, 45):  # and the float64 reference agrees with TF on the padding rule
    np.testing.assert_allclose(_ref_ms_ssim(a[0], b[0], 2.0, weights, size, sigma), want[0],
                               atol=2e-5)


def test_intra_class_msssim_pairs_and_classes():
  rng = np.random.default_rng(0)
  # Class 0: one image repeated (MS-SSIM 1); class 1: independent noise (near 0); class 2: one
  # image only (no pair: NaN, left out of the mean).
  img = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  same = np.repeat(img, 5, axis=0)
  noise = rng.integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
  lone = rng.integers(0, 256, (1, 32, 32, 3), dtype=np.uint8)
  images = np.concatenate([same, noise, lone])
  labels = np.array([0] * 5 + [1] * 5 + [2])
  mean, per_class = msssim.intra_class_msssim(images, labels, pairs_per_class=7, rng=1,
                                              batch_size=4)
  np.testing.assert_allclose(per_class[0], 1.0, atol=1e-5)
  assert per_class[1] < 0.2
  assert np.isnan(per_class[2])
  np.testing.assert_allclose(mean, (per_class[0] + per_class[1]) / 2)
  # Pairs never compare an image with itself: with two distinct images per class the
  # diagnostic equals MS-SSIM of that one pair.
  two = np.concatenate([noise[:1], noise[1:2]])
  _, pc = msssim.intra_class_msssim(two, np.array([0, 0]), pairs_per_class=3, rng=0)
  x = two.astype(np.float32) / 127.5 - 1
  np.testing.assert_allclose(pc[0], np.asarray(msssim.ms_ssim(x[:1], x[1:]))[0], atol=1e-6)
