"""KID (evaluation/kid.py) against its definition, its bias, the metric registry and the fid CLI.

The definition transcribed here (float64, pair by pair): for each subset, X = m generated rows,
Y = m real rows, k(u, v) = (u.v / d + 1)^3, and the unbiased estimate
    MMD^2_u = sum_{i != j} k(x_i, x_j) / (m (m - 1)) + sum_{i != j} k(y_i, y_j) / (m (m - 1))
              - 2 sum_{i, j} k(x_i, y_j) / m^2,
KID = its mean over subsets. Subsets are drawn as stylegan2-ada-pytorch draws them: generated
indices, then real indices, each `np.random.choice(n, m, replace=False)` on the legacy global
generator after `np.random.seed(seed)`.
"""

import json

import jax
import numpy as np
import pytest

from configs import tiny
from reacgan_jax.errors import InputError
from reacgan_jax.evaluation import evaluator, fid, kid, registry
from reacgan_jax.train import modes


def _kernel(u, v, d):
  return (float(np.dot(u, v)) / d + 1.0) ** 3


def _mmd2_unbiased(x, y):
  """The estimate of the module docstring, one kernel value at a time (float64)."""
  m, d = x.shape
  xx = yy = xy = 0.0
  for i in range(m):
    for j in range(m):
      if i != j:
        xx += _kernel(x[i], x[j], d)
        yy += _kernel(y[i], y[j], d)
      xy += _kernel(x[i], y[j], d)
  return xx / (m * (m - 1)) + yy / (m * (m - 1)) - 2.0 * xy / (m * m)


def _definition(gen, real, num_subsets, max_subset_size, seed):
  gen, real = np.asarray(gen, np.float64), np.asarray(real, np.float64)
  m = min(len(gen), len(real), max_subset_size)
  saved = np.random.get_state()
  try:
    np.random.seed(seed)
    values = []
    for _ in range(num_subsets):
      x = gen[np.random.choice(len(gen), m, replace=False)]
      y = real[np.random.choice(len(real), m, replace=False)]
      values.append(_mmd2_unbiased(x, y))
  finally:
    np.random.set_state(saved)
  return float(np.mean(values)), float(np.std(values))


def _features(seed, n, d, shift=0.0):
  """Fixed float32 features of Inception-like scale (non-negative, as pool3 after ReLU/avg)."""
  rng = np.random.default_rng(seed)
  return (np.abs(rng.normal(size=(n, d))) + shift).astype(np.float32)


def test_kid_equals_the_definition():
  gen, real = _features(0, 70, 24), _features(1, 55, 24, shift=0.3)
  for subsets, size, seed in ((5, 40, 7), (3, 1000, 11)):  # 1000 > n: m = min(n_gen, n_real)
    mean, std = kid.kernel_inception_distance(gen, real, num_subsets=subsets,
                                              max_subset_size=size, seed=seed)
    ref_mean, ref_std = _definition(gen, real, subsets, size, seed)
    assert mean == pytest.approx(ref_mean, rel=1e-6), (mean, ref_mean)
    assert std == pytest.approx(ref_std, rel=1e-6), (std, ref_std)
    assert ref_mean > 0.0
  # Deterministic given the seed; another seed draws other subsets.
  again = kid.kernel_inception_distance(gen, real, num_subsets=5, max_subset_size=40, seed=7)
  other = kid.kernel_inception_distance(gen, real, num_subsets=5, max_subset_size=40, seed=8)
  assert again == kid.kernel_inception_distance(gen, real, num_subsets=5, max_subset_size=40,
                                                seed=7)
  assert again != other


def test_kid_is_unbiased_where_the_biased_estimate_is_not():
  # Two independent samples of one distribution (n = 4000 rows each, d = 32): the mean over
  # subsets of the unbiased MMD^2 must vanish up to sampling noise. Stated tolerance: 3 x std x
  # sqrt(m / n + 1 / S), with std the spread of one subset's estimate: the subsets share the n
  # rows, so the mean's error is that of an estimate on ~n rows (m / n) plus the subset draw
  # (1 / S), not std / sqrt(S). Here ~0.0055; the biased V-statistic (diagonal kept) of the same
  # subsets sits near +0.04 and a shift of 0.2 per feature at ~0.8.
  n, subsets, m = 4000, 100, 200
  gen, real = _features(2, n, 32), _features(3, n, 32)
  mean, std = kid.kernel_inception_distance(gen, real, num_subsets=subsets, max_subset_size=m,
                                            seed=0)
  tolerance = 3 * std * np.sqrt(m / n + 1 / subsets)
  assert abs(mean) < tolerance, (mean, tolerance)
  # The biased estimate on the very same subsets (kid.py's draw rule: generated, then real).
  draws, biased = np.random.RandomState(0), []
  for _ in range(subsets):
    x = gen[draws.choice(n, m, replace=False)].astype(np.float64)
    y = real[draws.choice(n, m, replace=False)].astype(np.float64)
    kxx, kyy, kxy = ((x @ x.T / 32 + 1) ** 3, (y @ y.T / 32 + 1) ** 3, (x @ y.T / 32 + 1) ** 3)
    biased.append(kxx.mean() + kyy.mean() - 2 * kxy.mean())
  assert np.mean(biased) > 5 * tolerance, (np.mean(biased), tolerance)
  shifted, _ = kid.kernel_inception_distance(gen, real + 0.2, num_subsets=subsets,
                                             max_subset_size=m, seed=0)
  assert shifted > 50 * tolerance, (shifted, tolerance)


def test_kid_errors_name_the_cause():
  with pytest.raises(InputError, match='one width'):
    kid.kernel_inception_distance(np.zeros((4, 3)), np.zeros((4, 2)))
  with pytest.raises(InputError, match='m >= 2'):
    kid.kernel_inception_distance(np.zeros((1, 3)), np.zeros((4, 3)))


def _toy_features_fn(dim=16):
  rng = np.random.default_rng(0)
  w = rng.normal(size=(4 * 4 * 3, dim)) / np.sqrt(48)

  def features_fn(u8):
    x = u8.astype(np.float64) / 127.5 - 1.0
    b, h, wd, _ = x.shape
    x = x.reshape(b, 4, h // 4, 4, wd // 4, 3).mean(axis=(2, 4)).reshape(b, -1)
    pool = np.maximum(x @ w, 0.0)
    return {'pool': pool.astype(np.float32), 'logits': None}

  return features_fn


def test_registry_and_eval_mode_compute_kid_on_the_tiny_config(tmp_path):
  cfg = tiny.get_config()
  cfg.eval.metrics = 'fid,kid'
  cfg.eval.kid_subsets = 10
  cfg.eval.kid_subset_size = 32
  cfg.eval.num_samples = 48
  cfg.eval.batch_size = 16
  assert registry.parse_metrics(cfg.eval.metrics) == ('fid', 'kid')
  rng = np.random.default_rng(1)
  ref_images = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
  ref_labels = np.arange(64, dtype=np.int32) % cfg.data.num_classes
  features_fn = _toy_features_fn()
  ev = evaluator.Evaluator(cfg, features_fn=features_fn, features_tag='toy-16',
                           cache_dir=tmp_path / 'cache', reference=(ref_images, ref_labels))

  proj = rng.normal(size=(cfg.model.z_dim, 32 * 32 * 3)).astype(np.float32)

  def sample_fn(z, y):  # a deterministic "generator": images from z through a fixed map
    del y
    return np.tanh(np.asarray(z) @ proj).reshape(-1, 32, 32, 3)

  # --mode=eval and the trainer both go through modes.run_evaluation (an Evaluator in `cache`).
  results = modes.run_evaluation(cfg, sample_fn, 7, str(tmp_path), strict=True,
                                 cache={'evaluator': ev})
  assert {'fid', 'kid_mean', 'kid_std', 'protocol'} <= set(results)
  assert 'KID 10 subsets of min(n, 32)' in results['protocol']
  written = json.loads((tmp_path / 'eval' / 'step_7.json').read_text())
  assert written['kid_mean'] == results['kid_mean']
  # The registry's value is kid.py on the same generated and reference features, with the seed
  # the metrics key gives it.
  gen = ev.generate(sample_fn, 48, jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(cfg.seed), 2))[0])
  k_ms = jax.random.split(jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2))[1]
  seed = np.asarray(jax.random.key_data(jax.random.fold_in(k_ms, 1))).astype(np.uint32).ravel()
  mean, std = kid.kernel_inception_distance(gen['pool'], features_fn(ref_images)['pool'],
                                            num_subsets=10, max_subset_size=32, seed=seed)
  assert results['kid_mean'] == pytest.approx(mean, rel=1e-6)
  assert results['kid_std'] == pytest.approx(std, rel=1e-6)


@pytest.fixture(scope='module')
def tiny_weights(tmp_path_factory, tiny_inception):
  root = tmp_path_factory.mktemp('kid_cli')
  weights = tiny_inception()
  rng = np.random.default_rng(4)
  base = rng.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8)
  imgs = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
  np.savez(root / 'a.npz', x=imgs[:20])
  np.savez(root / 'c.npz', x=imgs[20:] // 2)
  return root, str(weights)


def test_fid_cli_kid_on_images_and_refused_on_statistics(tiny_weights, capsys):
  root, weights = tiny_weights
  common = ['--weights', weights, '--batch-size', '10']
  fid.main([str(root / 'a.npz'), str(root / 'c.npz'), '--kid', '--kid-subsets', '5',
            '--kid-subset-size', '15', *common])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1].startswith('FID: ') and lines[-2].startswith('KID: '), lines
  assert '5 subsets of 15' in lines[-2]
  value = float(lines[-2].split()[1])
  fid.main(['--save-stats', str(root / 'a.npz'), str(root / 'a_stats.npz'), *common])
  with pytest.raises(InputError, match='--kid needs the Inception features'):
    fid.main([str(root / 'a_stats.npz'), str(root / 'c.npz'), '--kid', *common])
  with pytest.raises(SystemExit):
    fid.main(['--save-stats', str(root / 'a.npz'), str(root / 'x.npz'), '--kid', *common])
  assert value > 0.0
