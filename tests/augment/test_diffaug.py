"""DiffAugment: float64 numpy references written from the DiffAugment-pytorch definitions.

The random draws are taken from the same keys the op uses (diff_augment splits its key once per
op, in policy order); the references then apply the reference formulas in float64.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default
from reacgan_jax.augment import diffaug as augment
from reacgan_jax.augment import registry as augment_registry

# float32 arithmetic on values of order 1 against float64 references.
ATOL = 1e-5
# One compile per call instead of op-by-op dispatch keeps these tests fast on CPU.
diff_augment = jax.jit(augment.diff_augment, static_argnums=2)
rand_brightness = jax.jit(augment.rand_brightness)
rand_saturation = jax.jit(augment.rand_saturation)
rand_contrast = jax.jit(augment.rand_contrast)


def _images(b=6, h=16, w=24, c=3, seed=0):
  return jax.random.uniform(jax.random.PRNGKey(seed), (b, h, w, c), minval=-1.0, maxval=1.0)


def test_empty_policy_is_identity():
  x = _images()
  assert augment.diff_augment(x, jax.random.PRNGKey(0), '') is x
  cfg = default.get_config()
  cfg.train.diffaug_policy = ''
  aug = augment_registry.build(cfg)
  assert aug.init_state() is None and aug.augment(x, jax.random.PRNGKey(0), None) is x


def test_unknown_policy_names_config_key():
  with pytest.raises(ValueError, match='diffaug_policy'):
    augment.diff_augment(_images(), jax.random.PRNGKey(0), 'color,flip')


def test_color_matches_reference():
  x, rng = _images(), jax.random.PRNGKey(3)
  out = np.asarray(diff_augment(x, rng, 'color'), np.float64)
  kb, ks, kc = jax.random.split(rng, 3)
  b = x.shape[0]
  ub, us, uc = (np.asarray(jax.random.uniform(k, (b, 1, 1, 1)), np.float64) for k in (kb, ks, kc))
  ref = np.asarray(x, np.float64) + (ub - 0.5)  # brightness
  m = ref.mean(axis=-1, keepdims=True)  # per-pixel channel mean (torch dim=1 of NCHW)
  ref = (ref - m) * (us * 2) + m  # saturation
  m = ref.mean(axis=(1, 2, 3), keepdims=True)
  ref = (ref - m) * (uc + 0.5) + m  # contrast
  np.testing.assert_allclose(out, ref, atol=ATOL)


def test_color_factor_ranges():
  """Brightness shifts in [-0.5, 0.5); grey images keep saturation; constant keep contrast."""
  b = 512
  rng = jax.random.PRNGKey(1)
  const = jnp.broadcast_to(jnp.linspace(-0.5, 0.5, b)[:, None, None, None], (b, 4, 4, 3))
  shift = np.asarray(rand_brightness(const, rng) - const)
  assert np.allclose(shift, shift[:, :1, :1, :1], atol=1e-6)  # one shift per image
  assert shift.min() >= -0.5 and shift.max() < 0.5
  assert shift.min() < -0.45 and shift.max() > 0.45  # the whole interval is used
  grey = jnp.broadcast_to(_images(b, 4, 4, 1), (b, 4, 4, 3))
  np.testing.assert_allclose(rand_saturation(grey, rng), grey, atol=1e-6)
  np.testing.assert_allclose(rand_contrast(const, rng), const, atol=1e-6)
  # Saturation factor in [0, 2): the deviation from the channel mean scales by it.
  x = _images(b, 2, 2, 3)
  dev = x - x.mean(-1, keepdims=True)
  out = rand_saturation(x, rng)
  out_dev = out - out.mean(-1, keepdims=True)
  ratio = np.asarray((out_dev * dev).sum((1, 2, 3)) / (dev * dev).sum((1, 2, 3)))
  assert ratio.min() >= -1e-5 and ratio.max() < 2.0 and ratio.max() > 1.9


def _shift_ref(img, dy, dx):
  """out[i, j] = img[i + dy, j + dx], zero outside: the reference's pad-1-and-clamp gather."""
  h, w = img.shape[:2]
  out = np.zeros_like(img)
  for i in range(h):
    for j in range(w):
      if 0 <= i + dy < h and 0 <= j + dx < w:
        out[i, j] = img[i + dy, j + dx]
  return out


@pytest.mark.parametrize('h,w', [(32, 32), (16, 24)])
def test_translation_geometry(h, w):
  b = 64
  x = jnp.broadcast_to(1.0 + jnp.arange(h * w, dtype=jnp.float32).reshape(1, h, w, 1), (b, h, w, 2))
  rng = jax.random.PRNGKey(7)
  (key,) = jax.random.split(rng, 1)
  out = np.asarray(diff_augment(x, rng, 'translation'), np.float64)
  dy, dx = (np.asarray(v) for v in augment.translation_shifts(key, b, h, w))
  sy, sx = int(h / 8 + 0.5), int(w / 8 + 0.5)
  assert np.abs(dy).max() == sy and np.abs(dx).max() == sx  # full range, no more
  assert dy.min() == -sy and dx.min() == -sx
  for n in range(b):
    np.testing.assert_array_equal(out[n], _shift_ref(np.asarray(x[n], np.float64), dy[n], dx[n]))


def test_translation_shifts_recovered_from_pixels():
  """Independent of the key bookkeeping: every output is some in-range zero-padded shift."""
  h = w = 16
  x = 1.0 + np.arange(h * w, dtype=np.float32).reshape(1, h, w, 1).repeat(32, 0)
  out = np.asarray(diff_augment(jnp.asarray(x), jax.random.PRNGKey(2), 'translation'))
  s = int(h / 8 + 0.5)
  for n in range(len(x)):
    v = out[n, h // 2, w // 2, 0]  # the centre pixel always comes from inside (|shift| <= 2)
    src = int(v) - 1
    dy, dx = src // w - h // 2, src % w - w // 2
    assert abs(dy) <= s and abs(dx) <= s
    np.testing.assert_array_equal(out[n], _shift_ref(x[n], dy, dx))


@pytest.mark.parametrize('h,w', [(32, 32), (30, 20)])
def test_cutout_geometry(h, w):
  b = 512
  x = jnp.ones((b, h, w, 3))
  rng = jax.random.PRNGKey(11)
  (key,) = jax.random.split(rng, 1)
  out = np.asarray(diff_augment(x, rng, 'cutout'))
  cy, cx, (ch, cw) = augment.cutout_offsets(key, b, h, w)
  cy, cx = np.asarray(cy), np.asarray(cx)
  assert (ch, cw) == (int(h * 0.5 + 0.5), int(w * 0.5 + 0.5))
  # The reference draws offsets with randint(0, size + (1 - cut % 2)): [0, size] for even cuts.
  assert cy.min() == 0 and cy.max() == h - (ch % 2)
  assert cx.min() == 0 and cx.max() == w - (cw % 2)
  for n in range(0, b, 7):
    ref = np.ones((h, w))
    r0, c0 = cy[n] - ch // 2, cx[n] - cw // 2
    ref[max(r0, 0):max(r0 + ch, 0), max(c0, 0):max(c0 + cw, 0)] = 0
    np.testing.assert_array_equal(out[n, ..., 0], ref)
    np.testing.assert_array_equal(out[n, ..., 1], ref)
  zero_rows = (out[..., 0] == 0).any(axis=2).sum(axis=1)
  assert zero_rows.max() == ch and zero_rows.min() >= 1  # a full square inside, clipped at borders


def test_jit_matches_eager_and_shapes():
  x, rng = _images(4, 16, 16, 3), jax.random.PRNGKey(5)
  policy = 'color,translation,cutout'
  eager = augment.diff_augment(x, rng, policy)
  jitted = jax.jit(augment.diff_augment, static_argnums=2)(x, rng, policy)
  assert jitted.shape == x.shape and jitted.dtype == x.dtype
  np.testing.assert_allclose(jitted, eager, atol=1e-6)
  other = diff_augment(x, jax.random.PRNGKey(6), policy)
  assert not np.allclose(other, eager)  # the key matters


def test_gradient_flows_to_input():
  """For a fixed key the augmentation is affine in x: <w, f(v) - f(0)> == <grad <w, f>, v>."""
  x, rng = _images(4, 16, 16, 3), jax.random.PRNGKey(9)
  w, v = _images(4, 16, 16, 3, seed=1), _images(4, 16, 16, 3, seed=2)
  for policy in ['color', 'translation', 'cutout', 'color,translation,cutout']:
    cfg = default.get_config()
    cfg.train.diffaug_policy = policy
    aug = augment_registry.build(cfg)
    fn = lambda x, key, aug=aug: aug.augment(x, key, None)
    g = jax.grad(lambda x, fn=fn: jnp.sum(w * fn(x, rng)))(x)
    assert float(jnp.abs(g).sum()) > 0
    lhs = float(jnp.sum(w * (fn(v, rng) - fn(jnp.zeros_like(v), rng))))
    rhs = float(jnp.sum(g * v))
    assert abs(lhs - rhs) <= 1e-4 * max(1.0, abs(lhs)), policy
