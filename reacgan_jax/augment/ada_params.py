"""ADA random draws, per-sample parameters and transformation matrices (StyleGAN2-ADA AugmentPipe).

Port of the parameter-selection half of StudioGAN's `src/utils/ada_aug.py` (NVIDIA's AugmentPipe,
Karras et al., 2020, "Training Generative Adversarial Networks with Limited Data", Appendix B).
Drawing is split from applying so that a test can inject the reference's random numbers:

1. `sample_raw(key, spec, batch, height, width, channels)` draws every uniform / normal number
   the reference draws, under the names in `RAW_ORDER` (same shapes, less the trailing
   singleton axes; the reference's noise field is NCHW, ours NHWC).
2. `select_params(raw, p, spec)` applies the reference's formulas: each transform is
   applied to a sample with probability `p * multiplier` (rotation: pre- and post-rotation each
   with `1 - sqrt(1 - p)`, so that P(any rotation) = p), else it takes its neutral value.
3. `geometric_matrix(params, batch, height, width)` composes the inverse 2-D transform G_inv
   (output pixel -> input pixel, coordinates centred on the image, in pixels) and
   `color_matrix(params, batch)` the 4x4 colour transform C (colour_out = C @ [r, g, b, 1]),
   in the reference's order.

All arithmetic is float32 like the reference's (its `p` is a float32 buffer).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

BLIT = ('xflip', 'rotate90', 'xint')
GEOM = ('scale', 'rotate', 'aniso', 'xfrac')
COLOR = ('brightness', 'contrast', 'lumaflip', 'hue', 'saturation')


@dataclasses.dataclass(frozen=True)
class AdaSpec:
  """Probability multipliers and strengths; defaults are AdaAugment.__init__'s (all off)."""
  xflip: float = 0.
  rotate90: float = 0.
  xint: float = 0.
  xint_max: float = 0.125
  scale: float = 0.
  rotate: float = 0.
  aniso: float = 0.
  xfrac: float = 0.
  scale_std: float = 0.2
  rotate_max: float = 1.
  aniso_std: float = 0.2
  xfrac_std: float = 0.125
  brightness: float = 0.
  contrast: float = 0.
  lumaflip: float = 0.
  hue: float = 0.
  saturation: float = 0.
  brightness_std: float = 0.2
  contrast_std: float = 0.5
  hue_max: float = 1.
  saturation_std: float = 1.
  imgfilter: float = 0.
  imgfilter_bands: tuple = (1., 1., 1., 1.)
  imgfilter_std: float = 1.
  noise: float = 0.
  cutout: float = 0.
  noise_std: float = 0.1
  cutout_size: float = 0.5
  # True: a sample with no general-geometric transform gets exact pixel blits (ada_geometry.blit).
  # False: the reference's behaviour, blits resampled through the sym6 filters like the rest
  # (not exact: the filter is asymmetric; mean |diff| ~0.08 on a noisy [-1, 1] test image).
  exact_blits: bool = True

  def uses(self, names):
    return any(getattr(self, n) > 0 for n in names)


_B, _G, _C = dict(xflip=1, rotate90=1, xint=1), dict(scale=1, rotate=1, aniso=1, xfrac=1), dict(
    brightness=1, contrast=1, lumaflip=1, hue=1, saturation=1)
# StudioGAN src/config.py `define_augments`, ada_augpipe.
PRESETS = {
    'blit': _B, 'geom': _G, 'color': _C, 'filter': dict(imgfilter=1), 'noise': dict(noise=1),
    'cutout': dict(cutout=1), 'bg': {**_B, **_G}, 'bgc': {**_B, **_G, **_C},
    'bgcf': {**_B, **_G, **_C, 'imgfilter': 1},
    'bgcfn': {**_B, **_G, **_C, 'imgfilter': 1, 'noise': 1},
    'bgcfnc': {**_B, **_G, **_C, 'imgfilter': 1, 'noise': 1, 'cutout': 1},
}


def preset(name: str, **overrides) -> AdaSpec:
  """The AdaSpec of a StudioGAN `ada_aug_type` name, e.g. preset('bgc')."""
  if name not in PRESETS:
    raise ValueError(f"ADA preset '{name}': expected one of {', '.join(PRESETS)}")
  return AdaSpec(**{**PRESETS[name], **overrides})


def raw_layout(spec: AdaSpec, batch, height, width, channels):
  """[(name, kind, shape)] of the reference's draws, in the order it draws them.

  kind is 'u' (torch.rand, U[0, 1)) or 'n' (torch.randn, N(0, 1)). '_v' is the value draw,
  '_g' the gate compared with the probability. Shapes drop the reference's singleton axes.
  """
  b = (batch,)
  out = []
  def add(name, vkind, vshape, on):
    if on:
      out.extend([(name + '_v', vkind, vshape), (name + '_g', 'u', b)])
  add('xflip', 'u', b, spec.xflip > 0)
  add('rotate90', 'u', b, spec.rotate90 > 0)
  add('xint', 'u', b + (2,), spec.xint > 0)
  add('scale', 'n', b, spec.scale > 0)
  add('rotpre', 'u', b, spec.rotate > 0)
  add('aniso', 'n', b, spec.aniso > 0)
  add('rotpost', 'u', b, spec.rotate > 0)
  add('xfrac', 'n', b + (2,), spec.xfrac > 0)
  add('brightness', 'n', b, spec.brightness > 0)
  add('contrast', 'n', b, spec.contrast > 0)
  add('lumaflip', 'u', b, spec.lumaflip > 0)
  add('hue', 'u', b, spec.hue > 0 and channels > 1)
  add('saturation', 'n', b, spec.saturation > 0 and channels > 1)
  for i in range(len(spec.imgfilter_bands)):
    add(f'band{i}', 'n', b, spec.imgfilter > 0)
  add('noise', 'n', b, spec.noise > 0)
  if spec.noise > 0:
    out.append(('noise_field', 'n', (batch, height, width, channels)))
  if spec.cutout > 0:
    out.extend([('cutout_g', 'u', b), ('cutout_center', 'u', b + (2,))])
  return out


def sample_raw(key, spec: AdaSpec, batch, height, width, channels):
  """Draws the raw numbers of `raw_layout` from one key (one sub-key per draw)."""
  layout = raw_layout(spec, batch, height, width, channels)
  keys = jax.random.split(key, max(len(layout), 1))
  raw = {}
  for k, (name, kind, shape) in zip(keys[:len(layout)], layout, strict=True):
    draw = jax.random.uniform if kind == 'u' else jax.random.normal
    raw[name] = draw(k, shape, jnp.float32)
  return raw


def _gate(raw, name, prob, value, neutral):
  g = raw[name + '_g']
  g = g.reshape(g.shape + (1,) * (jnp.ndim(value) - 1))
  return jnp.where(g < prob, value, neutral)


def _select_geometric(raw, p, spec, params):
  if spec.xflip > 0:
    params['xflip'] = _gate(raw, 'xflip', spec.xflip * p, jnp.floor(raw['xflip_v'] * 2), 0.)
  if spec.rotate90 > 0:
    params['rotate90'] = _gate(raw, 'rotate90', spec.rotate90 * p,
                               jnp.floor(raw['rotate90_v'] * 4), 0.)
  if spec.xint > 0:
    params['xint'] = _gate(raw, 'xint', spec.xint * p,
                           (raw['xint_v'] * 2 - 1) * spec.xint_max, 0.)
  if spec.scale > 0:
    params['scale'] = _gate(raw, 'scale', spec.scale * p,
                            jnp.exp2(raw['scale_v'] * spec.scale_std), 1.)
  p_rot = 1 - jnp.sqrt(jnp.clip(1 - spec.rotate * p, 0, 1))  # P(pre OR post) = p
  if spec.rotate > 0:
    for name in ('rotpre', 'rotpost'):
      theta = (raw[name + '_v'] * 2 - 1) * np.float32(np.pi) * spec.rotate_max
      params[name] = _gate(raw, name, p_rot, theta, 0.)
  if spec.aniso > 0:
    params['aniso'] = _gate(raw, 'aniso', spec.aniso * p,
                            jnp.exp2(raw['aniso_v'] * spec.aniso_std), 1.)
  if spec.xfrac > 0:
    params['xfrac'] = _gate(raw, 'xfrac', spec.xfrac * p, raw['xfrac_v'] * spec.xfrac_std, 0.)


def _select_color(raw, p, spec, params):
  if spec.brightness > 0:
    params['brightness'] = _gate(raw, 'brightness', spec.brightness * p,
                                 raw['brightness_v'] * spec.brightness_std, 0.)
  if spec.contrast > 0:
    params['contrast'] = _gate(raw, 'contrast', spec.contrast * p,
                               jnp.exp2(raw['contrast_v'] * spec.contrast_std), 1.)
  if spec.lumaflip > 0:
    params['lumaflip'] = _gate(raw, 'lumaflip', spec.lumaflip * p,
                               jnp.floor(raw['lumaflip_v'] * 2), 0.)
  if 'hue_v' in raw:
    theta = (raw['hue_v'] * 2 - 1) * np.float32(np.pi) * spec.hue_max
    params['hue'] = _gate(raw, 'hue', spec.hue * p, theta, 0.)
  if 'saturation_v' in raw:
    params['saturation'] = _gate(raw, 'saturation', spec.saturation * p,
                                 jnp.exp2(raw['saturation_v'] * spec.saturation_std), 1.)


def _select_image_space(raw, p, spec, params):
  if spec.imgfilter > 0:
    params['bands'] = jnp.stack([
        _gate(raw, f'band{i}', spec.imgfilter * p * s,
              jnp.exp2(raw[f'band{i}_v'] * spec.imgfilter_std), 1.)
        for i, s in enumerate(spec.imgfilter_bands)], axis=-1)  # [B, bands]
  if spec.noise > 0:
    params['noise_sigma'] = _gate(raw, 'noise', spec.noise * p,
                                  jnp.abs(raw['noise_v']) * spec.noise_std, 0.)
    params['noise_field'] = raw['noise_field']
  if spec.cutout > 0:
    params['cutout_size'] = _gate(raw, 'cutout', spec.cutout * p,
                                  jnp.full(raw['cutout_g'].shape, spec.cutout_size, jnp.float32),
                                  0.)
    params['cutout_center'] = raw['cutout_center']


def select_params(raw, p, spec: AdaSpec):
  """Per-sample parameters (dict of float32 arrays with leading axis B) from raw draws and p.

  Keys present only for enabled transforms: xflip {0,1}, rotate90 {0..3}, xint [B, 2]
  (fraction of the size, rounded to pixels in `geometric_matrix`), scale, rotpre, aniso, rotpost
  (radians), xfrac [B, 2] (fraction of the size), brightness, contrast, lumaflip, hue,
  saturation, bands [B, 4] (gains), noise_sigma, noise_field, cutout_size, cutout_center [B, 2].
  """
  p = jnp.asarray(p, jnp.float32)
  params = {}
  _select_geometric(raw, p, spec, params)
  _select_color(raw, p, spec, params)
  _select_image_space(raw, p, spec, params)
  return params


def matrix(rows):
  """Stacks a nested list of scalars / [B] arrays into [B, n, m] (reference `matrix`).

  With scalars only it is a constant [n, m] matrix (broadcasts against [B, n, m]).
  """
  batch = next((jnp.shape(e)[0] for r in rows for e in r if jnp.ndim(e)), None)
  if batch is None:
    return jnp.asarray(rows, jnp.float32)
  full = [[jnp.broadcast_to(jnp.asarray(e, jnp.float32), (batch,)) for e in r] for r in rows]
  return jnp.stack([jnp.stack(r, -1) for r in full], -2)


def translate2d(tx, ty):
  return matrix([[1, 0, tx], [0, 1, ty], [0, 0, 1]])


def scale2d(sx, sy):
  return matrix([[sx, 0, 0], [0, sy, 0], [0, 0, 1]])


def rotate2d(theta):
  return matrix([[jnp.cos(theta), jnp.sin(-theta), 0], [jnp.sin(theta), jnp.cos(theta), 0],
                 [0, 0, 1]])


def geometric_matrix(params, batch, height, width):
  """G_inv [B, 3, 3] (output pixel -> input pixel) composed as the reference does."""
  g = jnp.broadcast_to(jnp.eye(3, dtype=jnp.float32), (batch, 3, 3))
  if 'xflip' in params:
    g = g @ scale2d(1 / (1 - 2 * params['xflip']), 1)
  if 'rotate90' in params:
    g = g @ rotate2d(np.float32(np.pi / 2) * params['rotate90'])  # rotate2d_inv(-pi/2 * i)
  if 'xint' in params:
    t = params['xint']
    g = g @ translate2d(-jnp.round(t[:, 0] * width), -jnp.round(t[:, 1] * height))
  if 'scale' in params:
    g = g @ scale2d(1 / params['scale'], 1 / params['scale'])
  if 'rotpre' in params:
    g = g @ rotate2d(params['rotpre'])  # rotate2d_inv(-theta)
  if 'aniso' in params:
    g = g @ scale2d(1 / params['aniso'], params['aniso'])
  if 'rotpost' in params:
    g = g @ rotate2d(params['rotpost'])
  if 'xfrac' in params:
    t = params['xfrac']
    g = g @ translate2d(-t[:, 0] * width, -t[:, 1] * height)
  return g


def color_matrix(params, batch):
  """C [B, 4, 4] (colour_out = C @ [r, g, b, 1]) composed as the reference does."""
  eye = jnp.eye(4, dtype=jnp.float32)
  c = jnp.broadcast_to(eye, (batch, 4, 4))
  v = jnp.asarray(np.asarray([1, 1, 1, 0]) / np.sqrt(3), jnp.float32)  # luma axis
  vv = jnp.outer(v, v)
  if 'brightness' in params:
    b = params['brightness']
    c = matrix([[1, 0, 0, b], [0, 1, 0, b], [0, 0, 1, b], [0, 0, 0, 1]]) @ c
  if 'contrast' in params:
    s = params['contrast']
    c = matrix([[s, 0, 0, 0], [0, s, 0, 0], [0, 0, s, 0], [0, 0, 0, 1]]) @ c
  if 'lumaflip' in params:
    c = (eye - 2 * vv * params['lumaflip'][:, None, None]) @ c  # Householder reflection
  if 'hue' in params:
    c = _rotate3d(v, params['hue']) @ c
  if 'saturation' in params:
    c = (vv + (eye - vv) * params['saturation'][:, None, None]) @ c
  return c


def _rotate3d(v, theta):
  vx, vy, vz = v[0], v[1], v[2]
  s, c = jnp.sin(theta), jnp.cos(theta)
  cc = 1 - c
  return matrix([[vx * vx * cc + c, vx * vy * cc - vz * s, vx * vz * cc + vy * s, 0],
                 [vy * vx * cc + vz * s, vy * vy * cc + c, vy * vz * cc - vx * s, 0],
                 [vz * vx * cc - vy * s, vz * vy * cc + vx * s, vz * vz * cc + c, 0],
                 [0, 0, 0, 1]])
