"""ops/lerp.py: fma is correctly rounded; torch_lerp is torch.lerp to the bit (issue 25)."""

from fractions import Fraction

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.ops import lerp


def _nearest_even(x: Fraction) -> np.float32:
  """x rounded to float32, to nearest, ties to an even significand (exact rationals)."""
  f = np.float32(float(x))  # within one float32 step of the answer
  cands = [np.nextafter(f, np.float32(-np.inf)), f, np.nextafter(f, np.float32(np.inf))]
  dist = [abs(Fraction(float(c)) - x) for c in cands]
  best = [c for c, d in zip(cands, dist, strict=True) if d == min(dist)]
  return next(c for c in best if len(best) == 1 or not np.array(c).view(np.int32) & 1)


def test_fma_is_correctly_rounded():
  rng = np.random.default_rng(0)
  n = 400
  a, b, c = (rng.normal(size=n).astype(np.float32)
             * np.float32(10.0) ** rng.integers(-6, 3, n).astype(np.float32) for _ in range(3))
  # Ties and near-ties: 1 + half an ulp of 1 (+- a little), both signs.
  h = np.float32(2.0 ** -12)
  a = np.concatenate([a, [h, h, 3 * h / 2, h, -h]]).astype(np.float32)
  b = np.concatenate([b, [h, h * (1 + 2.0 ** -20), h, -h * (1 + 2.0 ** -20), h]])
  c = np.concatenate([c, [1.0, 1.0, 1.0, 1.0, -1.0]]).astype(np.float32)
  got = np.asarray(jax.jit(lerp.fma)(a, b, c.astype(np.float32)))
  want = np.array([_nearest_even(Fraction(float(x)) * Fraction(float(y)) + Fraction(float(z)))
                   for x, y, z in zip(a, b, c, strict=True)], np.float32)
  np.testing.assert_array_equal(got, want)
  unfused = (a * b.astype(np.float32) + c).astype(np.float32)
  assert (unfused != want).sum() > 10  # two roundings differ: the check bites


@pytest.mark.parametrize('weight', [0.0, 0.3, 0.49999997, 0.5, 0.9, 0.9999, 1.0])
def test_torch_lerp_is_torchs_kernel(weight):
  """torch 2.13's CPU lerp, float32, scalar weight, contiguous and odd sizes (vector loop and
  scalar tail): equal to the bit."""
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(1)
  for n in (7, 1000, 4099):
    start = rng.normal(size=n).astype(np.float32)
    end = (start + rng.normal(size=n) * 10.0 ** rng.integers(-5, 1)).astype(np.float32)
    want = torch.from_numpy(start).lerp(torch.from_numpy(end), weight).numpy()
    got = np.asarray(jax.jit(lerp.torch_lerp)(start, end, weight))
    np.testing.assert_array_equal(got, want, err_msg=f'n={n}')


def test_the_unfused_form_is_not_torchs():
  """`w < 0.5 ? s + w (e - s) : e - (e - s)(1 - w)` with two roundings (the textbook form of
  torch's kernel) and the legacy mix differ from torch.lerp: what torch_lerp is for."""
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(2)
  s = rng.normal(size=4096).astype(np.float32)
  e = (s + 0.1 * rng.normal(size=4096)).astype(np.float32)
  for w in (np.float32(0.3), np.float32(0.9)):
    want = torch.from_numpy(s).lerp(torch.from_numpy(e), float(w)).numpy()
    two = s + w * (e - s) if w < 0.5 else e - (e - s) * (np.float32(1) - w)
    assert (two != want).sum() > 0, w
    assert (w * e + (np.float32(1) - w) * s != want).sum() > 0, w
    np.testing.assert_array_equal(lerp.torch_lerp(s, e, w), want)


def test_ema_rules():
  e, p = np.float32([1.0, 2.0]), np.float32([3.0, -1.0])
  np.testing.assert_array_equal(lerp.ema(e, p, 0.9, 'lerp'), lerp.torch_lerp(p, e, 0.9))
  d = jnp.float32(0.9)
  np.testing.assert_array_equal(lerp.ema(e, p, d, 'mix'), d * e + (1.0 - d) * p)
  np.testing.assert_array_equal(lerp.ema(np.int32(3), np.int32(5), 0.9), 5)  # counters: copied
  with pytest.raises(ValueError, match='ema_rule'):
    lerp.ema(e, p, 0.9, 'average')
