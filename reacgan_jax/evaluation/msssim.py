"""Multi-scale SSIM (Wang, Simoncelli & Bovik 2003) in JAX, and the ACGAN intra-class diagnostic.

Per scale s (s = 1 is the input, each next scale a 2x2 average pool of the previous one), with
Gaussian-weighted local statistics over a `filter_size` x `filter_size` window ('valid' positions
only, per colour channel):
  l = (2 mu_a mu_b + C1) / (mu_a^2 + mu_b^2 + C1),  cs = (2 s_ab + C2) / (s_a^2 + s_b^2 + C2),
  C1 = (K1 L)^2, C2 = (K2 L)^2 with L the dynamic range (`max_val`);
  MS-SSIM = relu(mean l*cs at the last scale)^w_M * prod_{s<M} relu(mean cs at s)^w_s,
computed per channel and then averaged over channels. This is exactly `tf.image.ssim_multiscale`
(relu before the powers, per-channel product, odd sides padded symmetrically before pooling),
which the tests check against TensorFlow.

Small images (`small_images`): TF asserts that every scale is at least `filter_size` wide, so its
default 5 scales with an 11x11 window need 176x176 images (the ACGAN paper measured 128x128
ImageNet samples with the Google NumPy implementation below). For 32x32 CIFAR the scales are
32, 16, 8, 4, 2 pixels. We offer:
  * 'shrink' (default): at a scale smaller than the window, use a window of side
    min(filter_size, H, W) with sigma scaled by the same factor (sigma = side * filter_sigma /
    filter_size). This is the rule of the NumPy MS-SSIM in tensorflow/models
    (research/compression/image_encoder/msssim.py, `_SSIMForMultiScale`), so a 32x32 image keeps
    the paper's 5 scales and weights; at 32x32 the windows are 11, 11, 8, 4, 2 pixels wide.
    Where the window fits, the result is identical to TF.
  * 'error': TF's behaviour, a ValueError naming the smallest size that works. With 32x32 images
    use fewer scales (`weights` of length 2: 32 and 16 px) or a smaller window.
Unlike that NumPy code we keep TF's per-channel statistics and relu (a negative cs at a coarse
scale would otherwise give NaN under a fractional power: frequent for unrelated image pairs).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

MSSSIM_WEIGHTS = (0.0448, 0.2856, 0.3001, 0.2363, 0.1333)  # Wang et al. 2003, Table 1
SMALL_IMAGE_MODES = ('shrink', 'error')


def gaussian_window(size: int, sigma: float) -> np.ndarray:
  """[size, size] normalised Gaussian, centred between pixels for even sizes (float64)."""
  coords = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  g = np.exp(-(coords[:, None] ** 2 + coords[None, :] ** 2) / (2.0 * sigma ** 2))
  return g / g.sum()


def scale_windows(height: int, width: int, num_scales: int, filter_size: int,
                  filter_sigma: float, small_images: str) -> list[tuple[int, float]]:
  """(window side, sigma) at each scale for an image of height x width (see module docstring)."""
  if small_images not in SMALL_IMAGE_MODES:
    raise ValueError(f'small_images={small_images!r}: expected one of {SMALL_IMAGE_MODES}')
  out, h, w = [], height, width
  for s in range(num_scales):
    if min(h, w) < 1:
      raise ValueError(f'{height}x{width} images vanish after {s} of {num_scales} MS-SSIM scales; '
                       'use fewer scales (shorter weights)')
    if min(h, w) >= filter_size:
      out.append((filter_size, filter_sigma))
    elif small_images == 'shrink':
      side = min(filter_size, h, w)
      out.append((side, side * filter_sigma / filter_size))
    else:
      need = filter_size * 2 ** (num_scales - 1)
      raise ValueError(f'MS-SSIM with {num_scales} scales and a {filter_size}x{filter_size} '
                       f'window needs images of at least {need}x{need}, got {height}x{width} '
                       f"(scale {s + 1} is {h}x{w}); use small_images='shrink', fewer scales or "
                       'a smaller filter_size')
    h, w = (h + 1) // 2, (w + 1) // 2
  return out


def _filter(x, window: np.ndarray):
  """'valid' depthwise correlation of x [N, H, W, C] with a [k, k] window (per channel)."""
  c = x.shape[-1]
  k = jnp.asarray(np.tile(window[:, :, None, None], (1, 1, 1, c)), x.dtype)
  return jax.lax.conv_general_dilated(
      x, k, window_strides=(1, 1), padding='VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'),
      feature_group_count=c, precision=jax.lax.Precision.HIGHEST)


def _ssim_and_cs(a, b, window, c1, c2):
  """Per-channel mean SSIM and mean contrast-structure term: each [N, C]."""
  mu_a, mu_b = _filter(a, window), _filter(b, window)
  var_sum = _filter(a * a + b * b, window) - (mu_a ** 2 + mu_b ** 2)
  cov2 = 2.0 * (_filter(a * b, window) - mu_a * mu_b)
  lum = (2.0 * mu_a * mu_b + c1) / (mu_a ** 2 + mu_b ** 2 + c1)
  cs = (cov2 + c2) / (var_sum + c2)
  return jnp.mean(lum * cs, axis=(1, 2)), jnp.mean(cs, axis=(1, 2))


def _downsample(x):
  """2x2 average pool; odd sides first padded symmetrically at the end (TF's rule)."""
  _, h, w, _ = x.shape
  if h % 2 or w % 2:
    x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), mode='symmetric')
  n, h, w, c = x.shape
  return x.reshape(n, h // 2, 2, w // 2, 2, c).mean(axis=(2, 4))


@functools.partial(jax.jit, static_argnames=('max_val', 'weights', 'filter_size', 'filter_sigma',
                                             'k1', 'k2', 'small_images'))
def ms_ssim(a, b, *, max_val: float = 2.0, weights: tuple[float, ...] = MSSSIM_WEIGHTS,
            filter_size: int = 11, filter_sigma: float = 1.5, k1: float = 0.01, k2: float = 0.03,
            small_images: str = 'shrink'):
  """MS-SSIM of each pair (a[i], b[i]).

  Args:
    a, b: [N, H, W, C] float images (any range; `max_val` is its width: 2.0 for [-1, 1],
      255 for uint8 values).
    weights: one exponent per scale (the number of scales is len(weights)).
    small_images: 'shrink' | 'error', see the module docstring.

  Returns:
    [N] float32 MS-SSIM in [0, 1]; 1 for identical images.
  """
  if a.shape != b.shape or a.ndim != 4:
    raise ValueError(f'ms_ssim: expected two [N, H, W, C] batches of one shape, got {a.shape} '
                     f'and {b.shape}')
  a = jnp.asarray(a, jnp.float32)
  b = jnp.asarray(b, jnp.float32)
  c1, c2 = (k1 * max_val) ** 2, (k2 * max_val) ** 2
  windows = scale_windows(a.shape[1], a.shape[2], len(weights), filter_size, filter_sigma,
                          small_images)
  terms = []
  for s, (side, sigma) in enumerate(windows):
    if s:
      a, b = _downsample(a), _downsample(b)
    ssim, cs = _ssim_and_cs(a, b, gaussian_window(side, sigma), c1, c2)
    terms.append(jax.nn.relu(cs if s < len(windows) - 1 else ssim))
  w = jnp.asarray(weights, jnp.float32)
  per_channel = jnp.prod(jnp.stack(terms, axis=-1) ** w, axis=-1)  # [N, C]
  return per_channel.mean(axis=-1)


def intra_class_msssim(images, labels, *, pairs_per_class: int = 100, rng=0,
                       num_classes: int | None = None, batch_size: int = 500,
                       **ms_ssim_kwargs) -> tuple[float, np.ndarray]:
  """ACGAN's diversity diagnostic: mean MS-SSIM of random same-class pairs (Odena et al. 2017).

  For each class, `pairs_per_class` pairs (i, j), i != j, are drawn uniformly (with replacement
  across pairs) among that class's images. Higher = less diverse; the ACGAN paper reports that
  no real ImageNet class exceeds 0.25 at 128x128.

  Args:
    images: [N, H, W, 3] uint8, or float in [-1, 1].
    labels: [N] int class of each image.
    rng: np.random.Generator or int seed.
    num_classes: classes to report (default max(labels) + 1); a class with < 2 images gets NaN.
    ms_ssim_kwargs: passed to `ms_ssim` (max_val is set from the dtype).

  Returns:
    (mean over classes with >= 2 images, per-class means [num_classes] float64).
  """
  images = np.asarray(images)
  labels = np.asarray(labels).astype(np.int64)
  if images.shape[0] != labels.shape[0]:
    raise ValueError(f'images ({images.shape[0]}) and labels ({labels.shape[0]}) differ in length')
  if images.dtype == np.uint8:
    images = images.astype(np.float32) / 127.5 - 1.0
  ms_ssim_kwargs.setdefault('max_val', 2.0)
  rng = rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)
  num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
  firsts, seconds, owner = [], [], []
  for c in range(num_classes):
    idx = np.flatnonzero(labels == c)
    if idx.size < 2:
      continue
    i = rng.integers(0, idx.size, pairs_per_class)
    j = (i + rng.integers(1, idx.size, pairs_per_class)) % idx.size  # j != i, uniform
    firsts.append(idx[i])
    seconds.append(idx[j])
    owner.append(np.full(pairs_per_class, c))
  per_class = np.full(num_classes, np.nan)
  if not owner:
    return float('nan'), per_class
  firsts, seconds, owner = map(np.concatenate, (firsts, seconds, owner))
  scores = []
  for k in range(0, owner.size, batch_size):
    a, b = images[firsts[k:k + batch_size]], images[seconds[k:k + batch_size]]
    n = a.shape[0]
    if n < batch_size and owner.size > batch_size:  # pad: one compiled shape for every batch
      pad = ((0, batch_size - n), (0, 0), (0, 0), (0, 0))
      a, b = np.pad(a, pad), np.pad(b, pad)
    scores.append(np.asarray(ms_ssim(a, b, **ms_ssim_kwargs))[:n])
  scores = np.concatenate(scores).astype(np.float64)
  for c in np.unique(owner):
    per_class[c] = scores[owner == c].mean()
  return float(np.nanmean(per_class)), per_class
