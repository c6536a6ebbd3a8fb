"""Mesh, batch placement and the device-count independence of random draws (8 fake devices)."""

import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.sharding import AxisType

from reacgan_jax.platform import parallel


def test_mesh_spans_all_devices_with_an_auto_data_axis():
  mesh = parallel.create_mesh()
  assert jax.device_count() == 8  # conftest
  assert mesh.axis_names == ('data',) and mesh.devices.size == 8
  assert mesh.axis_types == (AxisType.Auto,)


def test_indivisible_global_batch_is_a_clear_error():
  mesh = parallel.create_mesh()
  parallel.check_global_batch(16, mesh)
  with pytest.raises(ValueError, match=r'config\.train\.batch_size=12 is not divisible .* 8'):
    parallel.check_global_batch(12, mesh)


def test_shard_batch_splits_the_sample_axis():
  mesh = parallel.create_mesh()
  rng = np.random.default_rng(0)
  local = {'image': rng.normal(size=(2, 16, 4, 4, 3)).astype(np.float32),
           'label': rng.integers(0, 10, size=(2, 16)).astype(np.int32)}
  batch = parallel.shard_batch(local, mesh, sample_axis=1)
  assert batch['image'].shape == (2, 16, 4, 4, 3)
  shards = batch['image'].addressable_shards
  assert len(shards) == 8 and all(s.data.shape == (2, 2, 4, 4, 3) for s in shards)
  for s in shards:  # device k holds samples 2k, 2k+1 of every D update
    np.testing.assert_array_equal(np.asarray(s.data), local['image'][s.index])
  np.testing.assert_array_equal(parallel.to_host(batch)['label'], local['label'])


def test_sharded_random_draws_equal_unsharded():
  # The trainer draws z, fake labels and augmentation keys for the global batch inside the
  # sharded jit; with threefry_partitionable they must not depend on the device count.
  jax.config.update('jax_threefry_partitionable', True)
  mesh = parallel.create_mesh()
  key = jax.random.fold_in(jax.random.PRNGKey(3), 11)

  def draw(k):
    return jax.random.normal(k, (16, 5)), jax.random.randint(k, (16,), 0, 10)

  z1, y1 = jax.jit(draw)(key)
  z8, y8 = jax.jit(draw, out_shardings=parallel.batch_sharding(mesh, 0))(key)
  assert len(z8.addressable_shards) == 8
  np.testing.assert_array_equal(np.asarray(z1), np.asarray(z8))
  np.testing.assert_array_equal(np.asarray(y1), np.asarray(y8))


def test_replicated_to_host():
  mesh = parallel.create_mesh()
  x = jax.device_put(jnp.arange(6.0), parallel.replicated_sharding(mesh))
  np.testing.assert_array_equal(parallel.to_host({'x': x})['x'], np.arange(6.0))


def test_distributed_needs_complete_flags():
  with pytest.raises(ValueError, match='--num_processes'):
    parallel.maybe_initialize_distributed('127.0.0.1:1234', -1, -1)


@pytest.mark.slow
def test_two_process_run_equals_one_process_four_devices(tmp_path):
  # 2 CPU processes x 2 fake devices joined by jax.distributed on 127.0.0.1, 5 steps of the
  # tiny config, vs 1 process x 4 devices: the same global mesh size and batch, so the same
  # program. Both processes must end with identical params, equal to the single process's.
  import os  # noqa: PLC0415
  import subprocess  # noqa: PLC0415
  import sys  # noqa: PLC0415

  from multihost_helpers import cpu_env, free_port, wait_all  # noqa: PLC0415
  from train_helpers import HANG_S, write_npz  # noqa: PLC0415

  repo = str(pathlib.Path(__file__).resolve().parents[2])
  worker = os.path.join(repo, 'tests', 'multihost_worker.py')
  npz = write_npz(tmp_path / 'toy.npz')

  addr = f'127.0.0.1:{free_port()}'
  procs = [subprocess.Popen([sys.executable, worker, str(tmp_path / f'p{i}.npz'),
                             str(tmp_path / 'multi'), npz, '5', addr, '2', str(i)],
                            env=cpu_env(2), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True) for i in range(2)]
  single = subprocess.run([sys.executable, worker, str(tmp_path / 'single.npz'),
                           str(tmp_path / 'single'), npz, '5'], env=cpu_env(4),
                          capture_output=True, text=True, timeout=HANG_S)
  wait_all(procs)  # first: a failed single run must not leave these behind
  assert single.returncode == 0, single.stderr[-3000:]
  p0, p1, s = (np.load(tmp_path / f) for f in ('p0.npz', 'p1.npz', 'single.npz'))
  assert int(p0['processes']) == 2 and int(p0['devices']) == 4 and int(s['devices']) == 4
  assert set(p0.files) == set(s.files)
  for k in [f for f in p0.files if '/' in f]:  # parameter leaves ('g/...', 'd/...', 'ema/...')
    np.testing.assert_array_equal(p0[k], p1[k], err_msg=k)
    # Same program on the same 4-device mesh; only the cross-process collectives differ
    # (float32 sums in another order) and compound over 5 steps x 2 updates, hence a
    # tolerance (~100 float32 ulps of an O(0.3) weight) rather than bit equality.
    np.testing.assert_allclose(p0[k], s[k], rtol=1e-5, atol=1e-5, err_msg=k)
