"""config.eval.protocol: 'ours' (class-balanced labels, IS over is_splits) vs 'studiogan'.

StudioGAN's evaluate() (src/worker.py) draws labels with y_sampler='totally_random', i.e.
torch.randint(0, num_classes) for every sample independently (src/utils/sample.py sample_y), and
computes the IS with num_splits = 1 (src/metrics/ins.py calculate_kl_div: exp of the mean over
samples of sum_k p log(p / mean p)). These tests check our draw and our IS against those rules,
not against stored numbers.
"""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import tiny
from reacgan_jax import validate
from reacgan_jax.errors import ConfigError
from reacgan_jax.evaluation import evaluator, registry

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _binomial_ok(counts, n, p, sigmas=5.0):
  return np.all(np.abs(counts - n * p) < sigmas * np.sqrt(n * p * (1 - p)))


def test_studiogan_labels_are_iid_uniform():
  n, c = 20_000, 10
  y = evaluator.uniform_labels(n, c, jax.random.PRNGKey(0))
  assert y.dtype == np.int32 and y.shape == (n,) and y.min() >= 0 and y.max() < c
  counts = np.bincount(y, minlength=c)
  assert _binomial_ok(counts, n, 1 / c), counts  # uniform
  assert counts.max() - counts.min() > 1, counts  # and not balanced (spread ~ sqrt(n p))
  # Independent draws: pairs of consecutive labels are uniform over the c^2 pairs (a shuffled
  # balanced sequence is not far from that, but a per-block permutation would be: no block of c
  # consecutive labels is then missing a class, while i.i.d. blocks almost always do).
  pairs = np.bincount(y[:-1] * c + y[1:], minlength=c * c)
  assert _binomial_ok(pairs, n - 1, 1 / c ** 2), pairs
  blocks = y[: n // c * c].reshape(-1, c)
  full = np.mean([len(set(b.tolist())) == c for b in blocks])
  assert full < 0.01, full  # i.i.d.: c! / c^c = 3.6e-4 of the blocks hold every class
  # Reproducible from the key; another key, other labels.
  np.testing.assert_array_equal(y, evaluator.uniform_labels(n, c, jax.random.PRNGKey(0)))
  assert not np.array_equal(y, evaluator.uniform_labels(n, c, jax.random.PRNGKey(1)))


def test_label_draw_does_not_depend_on_the_device_count():
  # The draw is NumPy on the host, seeded by the key's bits: one CPU device gives the labels
  # these 8 fake devices (conftest) give.
  here = evaluator.uniform_labels(1000, 7, jax.random.PRNGKey(3))
  assert jax.device_count() == 8
  code = ('import jax, numpy as np; from reacgan_jax.evaluation import evaluator; '
          'assert jax.device_count() == 1; '
          'print(evaluator.uniform_labels(1000, 7, jax.random.PRNGKey(3)).tolist())')
  env = dict(os.environ, XLA_FLAGS='--xla_force_host_platform_device_count=1',
             JAX_PLATFORMS='cpu')
  out = subprocess.run([sys.executable, '-c', code], cwd=REPO, env=env, capture_output=True,
                       text=True, check=True)
  assert eval(out.stdout.strip()) == here.tolist()  # noqa: S307 -- our own list literal


def _tiny_config(protocol=None, metrics='is'):
  cfg = tiny.get_config()
  cfg.eval.metrics = metrics
  cfg.eval.is_splits = 4
  cfg.eval.batch_size = 16
  if protocol is None:
    del cfg.eval['protocol']  # a config saved before the key existed
  else:
    cfg.eval.protocol = protocol
  return cfg


def _fake_network(num_logits=12):
  """features_fn of a fake classifier (random linear maps); records the logits it returns."""
  rng = np.random.default_rng(0)
  w_pool = rng.normal(size=(48, 8)) / 7.0
  w_logits = rng.normal(size=(8, num_logits)) * 4.0
  seen = []

  def features_fn(u8):
    x = u8.astype(np.float64) / 127.5 - 1.0
    b, h, w, _ = x.shape
    x = x.reshape(b, 4, h // 4, 4, w // 4, 3).mean(axis=(2, 4)).reshape(b, -1)
    pool = np.tanh(x @ w_pool)
    logits = (pool @ w_logits).astype(np.float32)
    seen.append(logits)
    return {'pool': pool.astype(np.float32), 'logits': logits}

  features_fn.seen = seen
  return features_fn


def _generator(z_dim):
  """A tiny deterministic generator: image from (z, y) through fixed maps."""
  rng = np.random.default_rng(1)
  proj = rng.normal(size=(z_dim, 32 * 32 * 3)).astype(np.float32) / 2.0
  embed = rng.normal(size=(10, 32 * 32 * 3)).astype(np.float32)

  def sample_fn(z, y):
    return np.tanh(np.asarray(z) @ proj + embed[np.asarray(y)]).reshape(-1, 32, 32, 3)

  return sample_fn


def _studiogan_is(logits):
  """ins.py calculate_kl_div with splits=1, from the probabilities, in float64."""
  x = np.asarray(logits, np.float64)
  p = np.exp(x - x.max(axis=1, keepdims=True))
  p /= p.sum(axis=1, keepdims=True)
  kl = p * (np.log(p) - np.log(np.mean(p, axis=0, keepdims=True)))
  return float(np.exp(np.mean(np.sum(kl, axis=1))))


def test_studiogan_protocol_draws_uniform_labels_and_one_is_split():
  cfg = _tiny_config('studiogan')
  net = _fake_network()
  ev = evaluator.Evaluator(cfg, features_fn=net, features_tag='fake-12')
  rng = jax.random.PRNGKey(4)
  res = ev.evaluate(_generator(cfg.model.z_dim), 300, rng)
  logits = np.concatenate(net.seen)[:300]
  # IS over one split (config.eval.is_splits = 4 is StudioGAN-overridden) = exp(mean KL).
  assert res['is_mean'] == pytest.approx(_studiogan_is(logits), rel=1e-6)
  assert res['is_std'] == 0.0  # one split: np.std of one score (StudioGAN's torch.std: NaN)
  for part in ('300 samples (labels i.i.d. uniform over 10 classes)', 'eval protocol=studiogan',
               'IS splits=1'):
    assert part in res['protocol'], (part, res['protocol'])
  # The labels the generator got are uniform_labels of the evaluator's label key.
  k_gen, _ = jax.random.split(rng)
  gen = ev.generate(_generator(cfg.model.z_dim), 300, k_gen)
  np.testing.assert_array_equal(gen['labels'],
                                evaluator.uniform_labels(300, 10, jax.random.split(k_gen)[1]))
  assert np.ptp(np.bincount(gen['labels'], minlength=10)) > 1  # not balanced


def test_default_protocol_is_unchanged():
  # 'ours' and a config without the key: class-balanced labels (the pre-protocol draw, bit for
  # bit) and the IS over config.eval.is_splits splits.
  sample_fn = _generator(16)
  results = []
  for protocol in (None, 'ours'):
    cfg = _tiny_config(protocol)
    net = _fake_network()
    ev = evaluator.Evaluator(cfg, features_fn=net, features_tag='fake-12')
    k_gen = jax.random.split(jax.random.PRNGKey(4))[0]
    gen = ev.generate(sample_fn, 300, k_gen)
    np.testing.assert_array_equal(
        gen['labels'], evaluator.balanced_labels(300, 10, jax.random.split(k_gen)[1]))
    res = ev.evaluate(sample_fn, 300, jax.random.PRNGKey(4))
    assert 'IS splits=4' in res['protocol'] and 'eval protocol=ours' in res['protocol']
    assert '300 samples (class-balanced over 10 classes)' in res['protocol']
    results.append(res['is_mean'])
  assert results[0] == results[1]
  assert results[0] != pytest.approx(_studiogan_is(np.concatenate(net.seen)[-300:]), rel=1e-6)


def test_studiogan_protocol_notes_a_sample_count_other_than_the_reference_size(tmp_path):
  cfg = _tiny_config('studiogan', metrics='fid,is')
  rng = np.random.default_rng(2)
  reference = (rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8),
               np.arange(64, dtype=np.int32) % 10)
  ev = evaluator.Evaluator(cfg, features_fn=_fake_network(), features_tag='fake-12',
                           cache_dir=tmp_path, reference=reference)
  res = ev.evaluate(_generator(cfg.model.z_dim), 48, jax.random.PRNGKey(0))
  assert 'StudioGAN generates n_ref=64 images, this run 48' in res['protocol']
  res = ev.evaluate(_generator(cfg.model.z_dim), 64, jax.random.PRNGKey(0))
  assert 'StudioGAN generates' not in res['protocol']


def test_new_keys_are_validated():
  cfg = tiny.get_config()
  assert cfg.eval.protocol == 'ours' and tuple(registry.PROTOCOLS) == ('ours', 'studiogan')
  validate.validate_config(cfg, mode='eval')
  for key, value, match in (('protocol', 'studio', 'ours, studiogan'),
                            ('kid_subset_size', 1, 'm - 1'), ('kid_subsets', 0, '>= 1')):
    bad = tiny.get_config()
    bad.eval[key] = value
    with pytest.raises(ConfigError, match=match):
      validate.validate_config(bad, mode='eval')
