"""DiffAugment (Zhao et al., 2020, "Differentiable Augmentation for Data-Efficient GAN Training").

Pure JAX ports of the official DiffAugment-pytorch ops (the ones StudioGAN's `utils/diffaug.py`
uses), so the same augmentation is applied to real and fake images inside the jitted step and
gradients flow through it to G:

- `color`: brightness (+U[-0.5, 0.5)), saturation (x U[0, 2) around the per-pixel channel mean),
  contrast (x U[0.5, 1.5) around the per-image mean), in that order.
- `translation`: integer shift of up to `round(ratio * size)` pixels (ratio 1/8) along H and W,
  independently per image; pixels shifted in from outside are zero (the reference pads with 0).
- `cutout`: one zeroed square of `round(size / 2)` pixels per image, its centre uniform over the
  image (the square may be clipped at the border).

Images are NHWC here (the reference is NCHW: its `dim=1` channel mean is our last axis). Random
numbers are drawn per image, one key per op, so one call with one key is reproducible.
"""

import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError

TRANSLATION_RATIO = 1 / 8  # DiffAugment-pytorch rand_translation default
CUTOUT_RATIO = 1 / 2  # DiffAugment-pytorch rand_cutout default


def _half_up(size: int, ratio: float) -> int:
  """`int(size * ratio + 0.5)`, the reference's rounding of pixel counts."""
  return int(size * ratio + 0.5)


def rand_brightness(x, rng):
  """x + U[-0.5, 0.5) per image. x: [B, H, W, C]."""
  u = jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype)
  return x + (u - 0.5)


def rand_saturation(x, rng):
  """Scales each pixel's deviation from its channel mean by U[0, 2) per image."""
  u = jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype)
  mean = jnp.mean(x, axis=-1, keepdims=True)
  return (x - mean) * (u * 2) + mean


def rand_contrast(x, rng):
  """Scales each image's deviation from its mean over (H, W, C) by U[0.5, 1.5)."""
  u = jax.random.uniform(rng, (x.shape[0], 1, 1, 1), x.dtype)
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) * (u + 0.5) + mean


def translation_shifts(rng, batch: int, height: int, width: int, ratio=TRANSLATION_RATIO):
  """Per-image integer shifts dy [B], dx [B], each uniform in [-s, s], s = round(ratio * size)."""
  sy, sx = _half_up(height, ratio), _half_up(width, ratio)
  ky, kx = jax.random.split(rng)
  dy = jax.random.randint(ky, (batch,), -sy, sy + 1)
  dx = jax.random.randint(kx, (batch,), -sx, sx + 1)
  return dy, dx


def translate(x, dy, dx, max_dy: int, max_dx: int):
  """out[b, i, j] = x[b, i + dy[b], j + dx[b]], zero where that falls outside the image.

  x: [B, H, W, C]; dy, dx: int [B] with |dy| <= max_dy, |dx| <= max_dx (static bounds of the pad).
  """
  height, width = x.shape[1], x.shape[2]
  padded = jnp.pad(x, ((0, 0), (max_dy, max_dy), (max_dx, max_dx), (0, 0)))

  def one(img, oy, ox):
    return jax.lax.dynamic_slice(img, (max_dy + oy, max_dx + ox, 0), (height, width, x.shape[3]))

  return jax.vmap(one)(padded, dy, dx)


def rand_translation(x, rng, ratio=TRANSLATION_RATIO):
  """Random zero-padded translation by up to round(ratio * size) pixels (reference ratio 1/8)."""
  batch, height, width = x.shape[:3]
  dy, dx = translation_shifts(rng, batch, height, width, ratio)
  return translate(x, dy, dx, _half_up(height, ratio), _half_up(width, ratio))


def cutout_offsets(rng, batch: int, height: int, width: int, ratio=CUTOUT_RATIO):
  """Per-image cutout centres (cy [B], cx [B]) and the static square size (h, w).

  As the reference: centre uniform in [0, size + (1 - cut % 2)), i.e. [0, size] for an even cut.
  """
  ch, cw = _half_up(height, ratio), _half_up(width, ratio)
  ky, kx = jax.random.split(rng)
  cy = jax.random.randint(ky, (batch,), 0, height + (1 - ch % 2))
  cx = jax.random.randint(kx, (batch,), 0, width + (1 - cw % 2))
  return cy, cx, (ch, cw)


def cutout_mask(cy, cx, cut_hw, height: int, width: int, dtype=jnp.float32):
  """[B, H, W, 1] mask: 0 on rows [cy - h//2, cy - h//2 + h) x the same for columns, else 1."""
  ch, cw = cut_hw
  rows = jnp.arange(height)[None, :] - (cy[:, None] - ch // 2)  # [B, H] row offset in square
  cols = jnp.arange(width)[None, :] - (cx[:, None] - cw // 2)
  in_rows = (rows >= 0) & (rows < ch)
  in_cols = (cols >= 0) & (cols < cw)
  hole = in_rows[:, :, None] & in_cols[:, None, :]
  return (1 - hole.astype(dtype))[..., None]


def rand_cutout(x, rng, ratio=CUTOUT_RATIO):
  """Zeroes one random square of round(ratio * size) pixels per image (reference ratio 1/2)."""
  batch, height, width = x.shape[:3]
  cy, cx, cut = cutout_offsets(rng, batch, height, width, ratio)
  return x * cutout_mask(cy, cx, cut, height, width, x.dtype)


AUGMENT_FNS = {
    'color': (rand_brightness, rand_saturation, rand_contrast),
    'translation': (rand_translation,),
    'cutout': (rand_cutout,),
}


def parse_policy(policy: str) -> tuple[str, ...]:
  """'color,translation' -> ('color', 'translation'); '' -> (). Raises on unknown names."""
  names = tuple(p.strip() for p in policy.split(',') if p.strip())
  unknown = [p for p in names if p not in AUGMENT_FNS]
  if unknown:
    raise ConfigError(f'config.train.diffaug_policy={policy!r}: unknown op(s) {unknown}; '
                     f'expected a comma list of {", ".join(AUGMENT_FNS)}')
  return names


def diff_augment(x, rng, policy: str):
  """Applies the DiffAugment `policy` to a batch.

  Args:
    x: [B, H, W, C] float images (any range; the generator's [-1, 1] in practice).
    rng: PRNG key; split once per op, so reusing `rng` reproduces the augmentation exactly.
    policy: comma list of 'color', 'translation', 'cutout' applied in the given order
      ('' = identity, as the reference).

  Returns:
    [B, H, W, C] augmented images, same dtype; differentiable w.r.t. `x`.
  """
  names = parse_policy(policy)
  fns = [fn for name in names for fn in AUGMENT_FNS[name]]
  if not fns:
    return x
  for fn, key in zip(fns, jax.random.split(rng, len(fns)), strict=True):
    x = fn(x, key)
  return x
