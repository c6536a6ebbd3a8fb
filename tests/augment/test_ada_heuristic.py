"""Adaptive p (reacgan_jax/augment/ada_heuristic.py) against a numpy simulation of StudioGAN's rule.

StudioGAN src/worker.py: per D update, dis_sign_real += (sum(sign(D(real))), batch); at
`current_step % ada_interval == 0`: r = float32 sum / float32 count, then
p = min(1, max(p + sign(r - target) * count / (kimg * 1000), 0)) and the sums are reset.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.augment import ada_heuristic as ah
from reacgan_jax.platform import parallel


def _simulate(stream, p0, interval, target, kimg, float32_compare=False):
  """The reference's loop in numpy (p held in float32 like our state).

  float32_compare: compare r with target in float32 instead (not the reference; used to show
  that the test sees the difference)."""
  p, s, n, out = np.float32(p0), np.float32(0), np.float32(0), []
  for step, logits in enumerate(stream):
    s += np.float32(np.sign(logits).sum())
    n += np.float32(logits.shape[0])
    if target is not None and step % interval == 0:
      r = float(s / n)  # .item(): float32 ratio, then double arithmetic
      if float32_compare:
        r = target if np.float32(s / n) == np.float32(target) else r
      adjust = np.sign(r - target) * float(n) / (kimg * 1000)
      p = np.float32(min(1.0, max(float(p + np.float32(adjust)), 0.0)))
      s, n = np.float32(0), np.float32(0)
    out.append(p)
  return np.asarray(out)


def _stream(steps, batch, seed):
  """D outputs drifting from mostly negative to mostly positive, with exact zeros, and steps
  whose interval mean is exactly 0.5 or 0.6 (sign(r - target) edge cases)."""
  rng = np.random.default_rng(seed)
  out = []
  for t in range(steps):
    logits = rng.normal(loc=np.sin(t / 6) * 2, size=batch).astype(np.float32)
    logits[rng.random(batch) < 0.1] = 0.0
    if t % 7 == 3:
      logits = np.repeat(np.asarray([1., -1.], np.float32), batch // 2)  # r = 0 this step
    out.append(logits)
  # four steps (one interval, starting at a multiple of 4) with mean sign exactly 0.5 / 0.6
  for t0, frac in ((20, 0.75), (28, 0.8)):
    for t in range(t0 + 1, t0 + 5):
      k = int(frac * batch)
      out[t] = np.asarray([1.] * k + [-1.] * (batch - k), np.float32)
  return out


@pytest.mark.parametrize('target,interval', [(0.6, 4), (0.5, 4), (0.6, 3), (None, 4)])
def test_p_follows_the_reference_rule_on_8_devices(target, interval):
  mesh = parallel.create_mesh()
  assert mesh.devices.size == 8
  batch, kimg = 40, 0.4  # 160 images per interval of 4 against 400: p hits 0 and 1
  stream = _stream(48, batch, seed=1)
  sharding = parallel.batch_sharding(mesh, sample_axis=0)

  @jax.jit
  def d_update(state, logits, step):
    state = ah.accumulate(state, logits)
    return ah.maybe_adjust(state, step, interval, target, kimg)

  state = jax.device_put(ah.init_state(0.3), parallel.replicated_sharding(mesh))
  got = []
  for step, logits in enumerate(stream):
    state = d_update(state, jax.device_put(logits, sharding), step)
    shards = {float(s.data) for s in state.p.addressable_shards}
    assert len(shards) == 1  # every device holds the same p
    got.append(np.float32(state.p))
  want = _simulate(stream, 0.3, interval, target, kimg)
  np.testing.assert_array_equal(np.asarray(got), want)
  if target is None:
    assert np.all(want == np.float32(0.3))
  else:
    assert want.min() == 0 and want.max() == 1 and len(set(want.tolist())) >= 5
  if target == 0.6 and interval == 4:  # the r == fl32(0.6) interval changes p in the reference
    assert not np.array_equal(want, _simulate(stream, 0.3, interval, target, kimg, True))


def test_adjust_uses_images_seen_and_resets():
  state = ah.init_state(0.5)
  for _ in range(3):
    state = ah.accumulate(state, jnp.asarray([1., 1., -1., 1.]))  # r = 0.5 > 0.4
  assert int(state.count) == 12 and int(state.sign_sum) == 6
  new = ah.adjust(state, target=0.4, kimg=1)
  np.testing.assert_allclose(float(new.p), 0.5 + 12 / 1000, rtol=1e-6)
  assert int(new.count) == 0 and int(new.sign_sum) == 0
  assert float(ah.adjust(state, target=0.6, kimg=1).p) < 0.5


def test_sign_matches_double_precision_comparison():
  # fl32(0.6) > 0.6 in double: the reference moves p up when r rounds to fl32(0.6)
  r = jnp.float32(3) / jnp.float32(5)
  assert float(ah._sign_minus(r, 0.6)) == np.sign(float(np.float32(0.6)) - 0.6) == 1
  assert float(ah._sign_minus(jnp.float32(0.5), 0.5)) == 0


def test_apa_mix():
  key = jax.random.key(0)
  reals = jax.random.normal(jax.random.key(1), (4000, 2, 2, 3))
  fakes = jax.random.normal(jax.random.key(2), (4000, 2, 2, 3))
  assert ah.apa_mix(key, reals, fakes, 0.0).tobytes() == np.asarray(reals).tobytes()
  assert ah.apa_mix(key, reals, fakes, 1.0).tobytes() == np.asarray(fakes).tobytes()
  mixed = ah.apa_mix(key, reals, fakes, 0.3)
  swapped = np.all(np.asarray(mixed) == np.asarray(fakes), axis=(1, 2, 3))
  kept = np.all(np.asarray(mixed) == np.asarray(reals), axis=(1, 2, 3))
  assert np.all(swapped | kept)
  assert abs(swapped.mean() - 0.3) < 4 * np.sqrt(0.3 * 0.7 / 4000)  # 4 binomial sigmas
  g = jax.grad(lambda f: jnp.sum(ah.apa_mix(key, reals, f, 0.5)))(fakes)
  assert float(jnp.abs(g).max()) == 0  # fakes are detached


def test_default_config_keys():
  c = ah.default_config()
  assert c.preset == 'bgc' and c.interval == 4 and c.kimg == 500 and c.target == 0.7


def test_make_fns_on_a_sharded_batch():
  from reacgan_jax.augment import ada, ada_params  # noqa: PLC0415
  c = ah.default_config()
  c.apply_ada, c.apply_apa, c.preset = True, True, 'bgc'
  augment, apa, update = ah.make_fns(c)
  mesh = parallel.create_mesh()
  x = jax.random.uniform(jax.random.key(0), (16, 8, 8, 3), minval=-1, maxval=1)
  xs = jax.device_put(x, parallel.batch_sharding(mesh, sample_axis=0))
  state = ah.init_state(0.5)
  key = jax.random.key(4)
  got = jax.jit(augment)(xs, key, state)
  # same draws sharded or not; jit vs eager differ only by float32 fusion rounding
  want = ada.ada_augment(x, key, 0.5, ada_params.preset('bgc'))
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5, rtol=0)
  assert float(jnp.abs(got - x).max()) > 0.1
  mixed = apa(key, x, -x, state)
  assert 0 < int(jnp.sum(jnp.all(mixed == -x, axis=(1, 2, 3)))) < 16
  new = jax.jit(update)(state, jnp.ones(16), 0)
  np.testing.assert_allclose(float(new.p), 0.5 + 16 / 500e3, rtol=1e-6)
  c.target = 1.5
  with pytest.raises(ValueError, match='target=1.5'):
    ah.make_fns(c)
