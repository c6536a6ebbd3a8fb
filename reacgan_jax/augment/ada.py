"""ADA: StyleGAN2-ADA's augmentation pipeline (AugmentPipe) in pure JAX, per-sample random.

Port of StudioGAN's `src/utils/ada_aug.py` `AdaAugment.forward` (NVIDIA's AugmentPipe; Karras
et al., 2020, "Training Generative Adversarial Networks with Limited Data", Appendix B), in its
order: pixel blitting and general geometric transforms (one G_inv per sample, executed once),
colour (one 4x4 matrix per sample), image-space filtering, additive noise, cutout. Every
transform is applied to a sample with probability p * its multiplier, so p = 0 returns the input
bit for bit and gradients flow to the images (the reference sets requires_grad_(False) on the
pipe's buffers only; G gets gradients through it).

Images: [B, H, W, C] float32 in [-1, 1] (StudioGAN feeds [-1, 1] images to AdaAugment and the
colour transforms pivot on 0; C is 1 or 3). Entry points:
- `ada_augment(x, key, p, spec)`: draw and apply (pure; jit with `spec` static).
- `draw(key, p, spec, shape)` / `apply(x, params, spec)`: the two halves, so draws can be
  injected (tests feed the reference's random numbers through `ada_params.select_params`).
Presets: `ada_params.preset(name)` for StudioGAN's names (blit ... bgc ... bgcfnc).
"""

import jax.numpy as jnp
import numpy as np

from reacgan_jax.augment import ada_geometry
from reacgan_jax.augment import ada_params as ap
from reacgan_jax.augment.ada_params import AdaSpec

_NEUTRAL_GEOM = {'scale': 1., 'rotpre': 0., 'aniso': 1., 'rotpost': 0., 'xfrac': 0.}


def _filter_bank():
  """The reference's 4-band filter bank [4, 43] built from sym2 (Hz_fbank)."""
  lo = np.asarray([-0.12940952255092145, 0.22414386804185735, 0.836516303737469,
                   0.48296291314469025])
  hi = lo * ((-1) ** np.arange(lo.size))
  lo2 = np.convolve(lo, lo[::-1]) / 2
  hi2 = np.convolve(hi, hi[::-1]) / 2
  fbank = np.eye(4, 1)
  for i in range(1, fbank.shape[0]):
    fbank = np.dstack([fbank, np.zeros_like(fbank)]).reshape(fbank.shape[0], -1)[:, :-1]
    fbank = np.stack([np.convolve(row, lo2) for row in fbank])
    start = (fbank.shape[1] - hi2.size) // 2
    fbank[i, start:start + hi2.size] += hi2
  return fbank.astype(np.float32)


FILTER_BANK = _filter_bank()
EXPECTED_POWER = np.asarray([10, 1, 1, 1], np.float32) / 13  # 1/f power spectrum


def _check_shape(shape, spec):
  if len(shape) != 4 or shape[-1] not in (1, 3):
    raise ValueError(f'ADA: images must be [B, H, W, C] with C = 1 or 3, got shape {shape}')
  _, h, w, _ = shape
  if spec.rotate90 > 0 and h != w:
    raise ValueError(f'ADA: rotate90 needs square images, got {h}x{w}; use a preset without it')
  if spec.imgfilter > 0 and min(h, w) <= FILTER_BANK.shape[1] // 2:
    raise ValueError(f'ADA: imgfilter reflect-pads by {FILTER_BANK.shape[1] // 2} pixels; '
                     f'images of {h}x{w} are too small for it')


def draw(key, p, spec: AdaSpec, shape):
  """Per-sample parameters for images of `shape` [B, H, W, C] (see ada_params.select_params)."""
  _check_shape(shape, spec)
  b, h, w, c = shape
  return ap.select_params(ap.sample_raw(key, spec, b, h, w, c), p, spec)


def _blit_identity(params, batch, height, width):
  out = _neutral(params, ('xflip', 'rotate90'), (0., 0.), batch)
  if 'xint' in params:
    t = params['xint']
    out &= (jnp.round(t[:, 0] * width) == 0) & (jnp.round(t[:, 1] * height) == 0)
  return out


def _geometric(x, params, spec):
  """Blits + general geometry: one resampling by G_inv, or exact blits (see AdaSpec.exact_blits)."""
  b, h, w, _ = x.shape
  exact = spec.exact_blits and spec.uses(ap.BLIT)
  x_direct = ada_geometry.blit(x, params) if exact else x
  if not (spec.uses(ap.GEOM) or (spec.uses(ap.BLIT) and not spec.exact_blits)):
    return x_direct
  direct = _neutral(params, tuple(_NEUTRAL_GEOM), tuple(_NEUTRAL_GEOM.values()), b, all_axes=True)
  if not exact:
    direct &= _blit_identity(params, b, h, w)
  x_res = ada_geometry.resample(x, ap.geometric_matrix(params, b, h, w))
  return jnp.where(direct[:, None, None, None], x_direct, x_res)


def _color(x, params, spec):
  b, _, _, ch = x.shape
  if not spec.uses(ap.COLOR):
    return x
  m = ap.color_matrix(params, b)
  if ch == 3:
    y = jnp.einsum('bij,bhwj->bhwi', m[:, :3, :3], x) + m[:, None, None, :3, 3]
  else:
    m = jnp.mean(m[:, :3, :], axis=1)  # [B, 4]
    y = x * jnp.sum(m[:, :3], axis=1)[:, None, None, None] + m[:, None, None, None, 3]
  identity = _neutral(params, ap.COLOR, (0., 1., 0., 0., 1.), b)  # C == I exactly
  return jnp.where(identity[:, None, None, None], x, y)


def _neutral(params, names, neutrals, batch, all_axes=False):
  """[B] bool: every present parameter in `names` equals its neutral value (all entries)."""
  out = jnp.ones((batch,), bool)
  for name, neutral in zip(names, neutrals, strict=True):
    if name in params:
      eq = params[name] == neutral
      out &= jnp.all(eq.reshape(batch, -1), axis=1) if all_axes else eq
  return out


def _band_matrix(taps, n):
  """[B, n, n + K - 1] with row o holding taps [B, K] at columns o .. o + K - 1."""
  k = taps.shape[1]
  idx = jnp.arange(n + k - 1)[None, :] - jnp.arange(n)[:, None]  # column - row
  band = jnp.take(taps, jnp.clip(idx, 0, k - 1), axis=1)  # [B, n, n + K - 1]
  return jnp.where((idx >= 0) & (idx < k), band, 0.)


def _imgfilter(x, params):
  """Per-sample 4-band amplification (reference: gains normalised to the expected power)."""
  bands = params['bands']  # [B, 4]
  g = jnp.ones_like(bands)
  for i in range(bands.shape[1]):
    t = jnp.ones_like(bands).at[:, i].set(bands[:, i])
    t = t / jnp.sqrt(jnp.sum(EXPECTED_POWER * jnp.square(t), axis=-1, keepdims=True))
    g = g * t
  hz = g @ FILTER_BANK  # [B, taps]
  pad = FILTER_BANK.shape[1] // 2
  _, h, w, _ = x.shape
  y = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)), mode='reflect')
  # width pass, then height pass (the reference's grouped conv2d correlates), each as a banded
  # [out, out + taps - 1] matrix per sample: far faster than 43 shifted slices, forward and back
  y = jnp.einsum('bow,bhwc->bhoc', _band_matrix(hz, w), y)
  y = jnp.einsum('boh,bhwc->bowc', _band_matrix(hz, h), y)
  return jnp.where(jnp.all(bands == 1, axis=1)[:, None, None, None], x, y)


def _corruptions(x, params, spec):
  b, h, w, _ = x.shape
  if spec.noise > 0:
    sigma = params['noise_sigma'][:, None, None, None]
    x = jnp.where(sigma > 0, x + params['noise_field'] * sigma, x)
  if spec.cutout > 0:
    size = params['cutout_size'][:, None, None]
    center = params['cutout_center']
    cx = (jnp.arange(w, dtype=jnp.float32) + 0.5) / w
    cy = (jnp.arange(h, dtype=jnp.float32) + 0.5) / h
    mask_x = jnp.abs(cx[None, None, :] - center[:, 0, None, None]) >= size / 2
    mask_y = jnp.abs(cy[None, :, None] - center[:, 1, None, None]) >= size / 2
    x = x * (mask_x | mask_y).astype(x.dtype)[..., None]
  return x


def apply(x, params, spec: AdaSpec):
  """Applies drawn `params` to x [B, H, W, C] in the reference's order."""
  _check_shape(x.shape, spec)
  x = _geometric(x, params, spec)
  x = _color(x, params, spec)
  if spec.imgfilter > 0:
    x = _imgfilter(x, params)
  return _corruptions(x, params, spec)


def ada_augment(x, key, p, spec: AdaSpec):
  """AugmentPipe(x) with strength p (float32 scalar, may be traced). x: [B, H, W, C] in [-1, 1]."""
  return apply(x, draw(key, p, spec, x.shape), spec)
