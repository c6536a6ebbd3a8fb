"""ADA geometric execution: exact pixel blits and the filtered resampling of AugmentPipe.

Port of the "Execute geometric transformations" block of StudioGAN's `src/utils/ada_aug.py`
(NVIDIA AugmentPipe) and the upfirdn2d / grid_sample ops it calls (`src/utils/style_ops/`):
reflect-pad, upsample 2x with the orthogonal sym6 wavelet low-pass, bilinear `grid_sample`
(zeros outside, align_corners=False) with the composed inverse matrix, downsample 2x with the
same filter and crop. Images are NHWC here, NCHW there.

Two deliberate differences, both so that the op is jittable and exact where it can be:
- Padding: the reference pads by a data-dependent margin (the batch's worst corner plus the
  filter's reach, clipped to [0, size - 1]); a jitted op needs static shapes, so we always pad
  by that clip, size - 1 on every side. Content inside the reference's margin is the same reflect
  content, the reference samples only inside its margin, so outputs agree to float rounding.
- Blits: the reference resamples flips, 90-degree rotations and integer translations through the
  same filters; sym6 is not symmetric, so a resampled flip is only approximately a flip. A sample
  whose general-geometric part is the identity gets the exact pixel blit (`blit`, a gather),
  every other sample the reference's resampling of its full matrix (see ada.py).
"""

import jax
import jax.numpy as jnp
import numpy as np

from reacgan_jax.augment import ada_params as ap
from reacgan_jax.ops.fir import fir_axis

# StudioGAN ada_aug.py `wavelets['sym6']`.
SYM6 = np.asarray([
    0.015404109327027373, 0.0034907120842174702, -0.11799011114819057, -0.048311742585633,
    0.4910559419267466, 0.787641141030194, 0.3379294217276218, -0.07263752278646252,
    -0.021060292512300564, 0.04472490177066578, 0.0017677118642428036, -0.007800708325034148])
HZ_PAD = SYM6.size // 4  # 3, as in the reference


def _reflect_index(idx, n, pad):
  """Index into a row of n pixels after torch 'reflect' padding by `pad`; -1 beyond it."""
  valid = (idx >= -pad) & (idx <= n - 1 + pad)
  idx = jnp.abs(idx)
  idx = jnp.where(idx > n - 1, 2 * (n - 1) - idx, idx)
  return jnp.where(valid, idx, -1)


def blit(x, params):
  """Exact x-flip, 90-degree rotation and integer translation of x [B, H, W, C] (H == W).

  Same mapping as the reference's G_inv = flip @ rot90 @ translate (output pixel -> input pixel,
  centred coordinates), done on doubled integer coordinates, reflect padding for pixels that
  come from outside (the reference pads by at most size - 1, zeros beyond).
  """
  b, h, w, c = x.shape
  cols = 2 * jnp.arange(w) - (w - 1)
  rows = 2 * jnp.arange(h) - (h - 1)
  xx = jnp.broadcast_to(cols[None, None, :], (b, h, w))
  yy = jnp.broadcast_to(rows[None, :, None], (b, h, w))
  if 'xint' in params:
    t = params['xint']
    xx = xx - 2 * jnp.round(t[:, 0] * w).astype(jnp.int32)[:, None, None]
    yy = yy - 2 * jnp.round(t[:, 1] * h).astype(jnp.int32)[:, None, None]
  if 'rotate90' in params:
    k = params['rotate90'].astype(jnp.int32)[:, None, None]
    for step in range(1, 4):  # (X, Y) -> (-Y, X) per quarter turn, `step` times
      rx, ry = xx, yy
      for _ in range(step):
        rx, ry = -ry, rx
      xx, yy = jnp.where(k == step, rx, xx), jnp.where(k == step, ry, yy)
  if 'xflip' in params:
    xx = jnp.where(params['xflip'][:, None, None] > 0, -xx, xx)
  ix = _reflect_index((xx + (w - 1)) // 2, w, w - 1)
  iy = _reflect_index((yy + (h - 1)) // 2, h, h - 1)
  valid = (ix >= 0) & (iy >= 0)
  flat = jnp.where(valid, iy * w + ix, 0).reshape(b, h * w, 1)
  out = jnp.take_along_axis(x.reshape(b, h * w, c), flat, axis=1).reshape(b, h, w, c)
  return jnp.where(valid[..., None], out, jnp.zeros_like(out))


def _upsample2d(x):
  """upfirdn2d.upsample2d(x, setup_filter(sym6), up=2): zero-stuff, pad (6, 5), filter x 2.

  Polyphase: with the zeros skipped, even outputs are sum_j f[2j] x[r + j - 3] and odd outputs
  sum_j f[2j + 1] x[r + j - 2] (f = the reference's flipped, gain-2 taps), interleaved.
  """
  f = (SYM6 / SYM6.sum() * 2)[::-1]  # gain up**2 split over the two passes; ref flips f
  half = f.size // 2
  for axis in (2, 1):  # width pass, then height pass, as the reference
    pads = [(0, 0)] * x.ndim
    pads[axis] = (half // 2, half // 2)
    xp = jnp.pad(x, pads)
    n = x.shape[axis]
    even = fir_axis(jax.lax.slice_in_dim(xp, 0, n + half - 1, axis=axis), f[0::2], axis)
    odd = fir_axis(jax.lax.slice_in_dim(xp, 1, n + half, axis=axis), f[1::2], axis)
    shape = list(x.shape)
    shape[axis] = 2 * n
    x = jnp.stack([even, odd], axis=axis + 1).reshape(shape)
  return x


def _downsample2d(x):
  """upfirdn2d.downsample2d(x, sym6, down=2, padding=-2 * HZ_PAD, flip_filter=True)."""
  f = SYM6 / SYM6.sum()
  crop0 = -2 * HZ_PAD + (f.size - 2 + 1) // 2  # negative: a crop
  crop1 = -2 * HZ_PAD + (f.size - 2) // 2
  for axis in (2, 1):
    x = jax.lax.slice_in_dim(x, -crop0, x.shape[axis] + crop1, axis=axis)
    x = fir_axis(x, f, axis, stride=2)
  return x


def grid_sample(x, grid):
  """torch grid_sample(x, grid, 'bilinear', 'zeros', align_corners=False), NHWC.

  x: [B, H, W, C]; grid: [B, Ho, Wo, 2] normalised (x, y) in [-1, 1]. Returns [B, Ho, Wo, C].
  """
  b, h, w, c = x.shape
  ix = ((grid[..., 0] + 1) * w - 1) / 2
  iy = ((grid[..., 1] + 1) * h - 1) / 2
  x0, y0 = jnp.floor(ix), jnp.floor(iy)
  flat = x.reshape(b, h * w, c)
  out = 0.
  for dx, dy in ((0, 0), (1, 0), (0, 1), (1, 1)):
    xi, yi = x0 + dx, y0 + dy
    wgt = (1 - jnp.abs(ix - xi)) * (1 - jnp.abs(iy - yi))
    valid = (xi >= 0) & (xi <= w - 1) & (yi >= 0) & (yi <= h - 1)
    idx = jnp.where(valid, yi * w + xi, 0).astype(jnp.int32).reshape(b, -1, 1)
    val = jnp.take_along_axis(flat, idx, axis=1).reshape(grid.shape[:3] + (c,))
    out = out + val * jnp.where(valid, wgt, 0.)[..., None]
  return out


def affine_grid(theta, height, width):
  """torch affine_grid(theta [B, 2, 3], size=(.., height, width), align_corners=False)."""
  xs = (2 * jnp.arange(width, dtype=jnp.float32) + 1) / width - 1
  ys = (2 * jnp.arange(height, dtype=jnp.float32) + 1) / height - 1
  base = jnp.stack([jnp.broadcast_to(xs[None, :], (height, width)),
                    jnp.broadcast_to(ys[:, None], (height, width)),
                    jnp.ones((height, width), jnp.float32)], -1)  # [Ho, Wo, 3]
  return jnp.einsum('hwk,bjk->bhwj', base, theta)


def resample(x, g_inv):
  """The reference's filtered resampling of x [B, H, W, C] by G_inv [B, 3, 3].

  Padding is the reference's cap, size - 1 reflect pixels on every side (see module docstring),
  so the origin shift translate2d((mx0 - mx1) / 2, ...) is zero.
  """
  b, h, w, c = x.shape
  x = jnp.pad(x, ((0, 0), (h - 1, h - 1), (w - 1, w - 1), (0, 0)), mode='reflect')
  x = _upsample2d(x)
  g = ap.scale2d(2., 2.) @ g_inv @ ap.scale2d(.5, .5)
  g = ap.translate2d(-.5, -.5) @ g @ ap.translate2d(.5, .5)
  ho, wo = (h + HZ_PAD * 2) * 2, (w + HZ_PAD * 2) * 2
  g = ap.scale2d(2 / x.shape[2], 2 / x.shape[1]) @ g @ ap.scale2d(wo / 2, ho / 2)
  x = grid_sample(x, affine_grid(g[:, :2, :], ho, wo))
  return _downsample2d(x)
