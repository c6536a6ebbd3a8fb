"""Evaluation split over devices and processes (on_mesh.py and the Evaluator that uses it).

Each device generates and embeds its rows of every batch; the metrics must not depend on how
many devices or processes share the work. The equality tests compare FID/IS/PRDC/KID of the
tiny config's generator with a tiny random Inception (tests/multihost_eval_worker.py) on 1 vs 8
devices and on 2 jax.distributed processes, to 1e-6 relative. Why not bitwise: the generated
images are bitwise equal, but the Inception features agree only to ~1.5e-7 relative (measured:
max 1.4e-7 of the largest pool feature, 18 images): the per-device program on an 8-device CPU
client orders a convolution's float32 sums differently (on one device, batches of 3 and 18
give identical bits), as another GPU batch shape would pick another cuDNN algorithm. The
metrics are float64 functions of those features: FID, IS, KID and PRDC move by <= 1e-7
relative. is_std is the spread of per-split scores, a difference of nearly equal numbers
whose error is IS's error, not a fraction of itself: it is held to 1e-6 of is_mean.
"""

import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from multihost_eval_worker import evaluate_tiny
from multihost_helpers import cpu_env, free_port, wait_all

from configs import tiny
from reacgan_jax.evaluation import evaluator, inception, on_mesh
from reacgan_jax.platform import parallel

METRICS = ('fid', 'is_mean', 'is_std', 'precision', 'recall', 'density', 'coverage',
           'kid_mean', 'kid_std')
RTOL = 1e-6  # see the module docstring


def _meshes():
  assert jax.device_count() == 8  # conftest
  return parallel.create_mesh(jax.devices()[:1]), parallel.create_mesh()


def _row_shards(x):
  """[(device, shard shape)] of a global array, checking it is split by rows."""
  assert tuple(x.sharding.spec)[:1] == (parallel.DATA_AXIS,), x.sharding
  return sorted((s.device.id, s.data.shape) for s in x.addressable_shards)


def test_rows_are_padded_split_and_gathered_without_padding():
  _, mesh = _meshes()
  x = np.arange(20 * 3, dtype=np.float32).reshape(20, 3)
  g = on_mesh.put_rows(x, mesh)  # 20 rows -> 24 on 8 devices, 3 each
  assert g.shape == (24, 3)
  assert _row_shards(g) == [(d, (3, 3)) for d in range(8)]
  np.testing.assert_array_equal(np.asarray(g), np.concatenate([x, np.zeros((4, 3))]))
  # A generator's output in any layout comes back split by rows, padded, values unchanged.
  for out in (x, jax.device_put(x, parallel.replicated_sharding(mesh)), g):
    r = on_mesh.to_rows(out, mesh, 24)
    assert _row_shards(r) == [(d, (3, 3)) for d in range(8)]
    np.testing.assert_array_equal(np.asarray(r)[:20], x)
  rows = on_mesh.Rows(mesh, 2)
  rows.add({'a': g, 'b': None}, 20)
  rows.add({'a': on_mesh.put_rows(x[:5] + 1, mesh, 24), 'b': None}, 5)
  out = rows.gather()
  np.testing.assert_array_equal(out['a'], np.concatenate([x, x[:5] + 1]))
  assert out['b'] is None


def test_host_resize_keeps_each_devices_rows_on_that_device():
  # 'friendly'/'clean' resize with PIL on the host: each process resizes only its devices' rows.
  _, mesh = _meshes()
  u8 = np.random.default_rng(0).integers(0, 256, (8, 8, 8, 3)).astype(np.uint8)
  g = on_mesh._host_resize(on_mesh.put_rows(u8, mesh), 'friendly')
  assert _row_shards(g) == [(d, (1, 299, 299, 3)) for d in range(8)]
  np.testing.assert_array_equal(np.asarray(g), np.asarray(inception.preprocess(u8, 'friendly')))


def _toy_features(u8):
  x = u8.astype(np.float64).reshape(u8.shape[0], -1)[:, :16] / 255.0
  return {'pool': np.tanh(x).astype(np.float32), 'logits': None}


def _toy_generator():
  proj = np.random.default_rng(0).normal(size=(16, 8 * 8 * 3)).astype(np.float32)
  return jax.jit(lambda z, y: jax.numpy.tanh(z @ proj + y[:, None]).reshape(-1, 8, 8, 3))


def test_generation_is_split_over_eight_devices_and_the_samples_do_not_change():
  # A host feature network (no Inception compile): what is split here is generation.
  cfg = tiny.get_config()
  cfg.eval.metrics, cfg.eval.batch_size = 'fid', 18
  gen, seen = {}, {}
  for mesh in _meshes():
    calls = []
    inner = _toy_generator()

    def sample_fn(z, y, inner=inner, calls=calls):
      x = inner(z, y)
      calls.append((z, y, x))
      return x

    ev = evaluator.Evaluator(cfg, mesh=mesh, features_fn=_toy_features, features_tag='toy')
    gen[mesh.size] = ev.generate(sample_fn, 50, jax.random.PRNGKey(3))
    seen[mesh.size] = calls
  assert len(seen[8]) == 3  # batches 18, 18, 14 (labels padded to 18): 24 rows, 3 per device
  for z, y, x in seen[8]:
    assert z.shape == (24, 16) and y.shape == (24,) and x.shape == (24, 8, 8, 3)
    assert _row_shards(z) == [(d, (3, 16)) for d in range(8)]
    assert _row_shards(x) == [(d, (3, 8, 8, 3)) for d in range(8)]
  for (z1, y1, _), (z8, y8, _) in zip(seen[1], seen[8], strict=True):
    assert z1.shape == (18, 16)  # one device: nothing to pad
    np.testing.assert_array_equal(np.asarray(z8)[:18], np.asarray(z1))
    np.testing.assert_array_equal(np.asarray(y8)[:18], np.asarray(y1))
  np.testing.assert_array_equal(gen[8]['labels'], gen[1]['labels'])
  assert gen[8]['pool'].shape == (50, 16)
  # The same images up to float32 rounding of the matmul over other row counts.
  np.testing.assert_allclose(gen[8]['pool'], gen[1]['pool'], rtol=1e-6, atol=1e-6)


def test_batch_bn_keeps_the_whole_batch_together_when_padding_would_enter_it(caplog):
  # bn_eval='batch': padding rows would change G's batch statistics, so a batch that does not
  # split evenly is generated whole (replicated) and only the Inception is split.
  cfg = tiny.get_config()
  cfg.eval.metrics, cfg.eval.batch_size, cfg.model.bn_eval = 'fid', 18, 'batch'
  _, mesh = _meshes()
  calls = []
  inner = _toy_generator()

  def sample_fn(z, y):
    calls.append(z)
    return inner(z, y)

  ev = evaluator.Evaluator(cfg, mesh=mesh, features_fn=_toy_features, features_tag='toy')
  gen = ev.generate(sample_fn, 20, jax.random.PRNGKey(3))
  assert [z.shape for z in calls] == [(18, 16), (18, 16)]
  assert all(z.sharding.is_fully_replicated for z in calls)
  assert gen['pool'].shape == (20, 16)
  assert 'not a multiple of the 8 devices' in caplog.text


@pytest.fixture(scope='module')
def weights(tiny_inception):
  return tiny_inception(num_logits=10)


@pytest.fixture(scope='module')
def one_device(weights, tmp_path_factory):
  mesh, _ = _meshes()
  return evaluate_tiny(weights, mesh, tmp_path_factory.mktemp('cache1'))


def _assert_same_metrics(got, want):
  for k in METRICS:
    scale = want['is_mean'] if k == 'is_std' else abs(want[k])
    assert abs(got[k] - want[k]) <= RTOL * scale, (k, got[k], want[k])


@pytest.mark.slow
def test_eight_devices_split_generation_and_inception_and_give_one_devices_metrics(
    weights, one_device, tmp_path):
  _, mesh = _meshes()
  record = []
  results = evaluate_tiny(weights, mesh, tmp_path, record=record)
  assert results['is_mean'] > 1.001 and results['is_std'] > 0  # the logits differ by image
  _assert_same_metrics(results, one_device)
  kinds = [k for k, _ in record]
  # 3 generated batches (50 = 18 + 18 + 14), then the 2 reference batches (36 = 18 + 18).
  assert kinds == ['z', 'images', 'pool'] * 3 + ['pool'] * 2
  shapes = {'z': (3, 16), 'images': (3, 32, 32, 3), 'pool': (3, 128)}
  for kind, x in record:  # 18 rows padded to 24: each device generates and embeds 3 of them
    assert x.shape[0] == 24
    assert _row_shards(x) == [(d, shapes[kind]) for d in range(8)], kind


@pytest.mark.exhaustive  # two jax.distributed processes: beyond CI's budget (issue 24)
def test_two_processes_give_one_devices_metrics(weights, one_device, tmp_path):
  # 2 CPU processes x 2 fake devices joined by jax.distributed on 127.0.0.1: a 4-device global
  # mesh, each process generating and embedding its devices' rows.
  worker = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'multihost_eval_worker.py')
  addr = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / f'p{i}.json'), weights,
                             str(tmp_path / 'cache'), addr, '2', str(i)],
                            env=cpu_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  wait_all(procs)
  p0, p1 = (json.loads((tmp_path / f'p{i}.json').read_text()) for i in range(2))
  assert (p0['processes'], p0['devices']) == (2, 4)
  assert p0 == p1  # the features were gathered: both processes score the same
  _assert_same_metrics(p0, one_device)
