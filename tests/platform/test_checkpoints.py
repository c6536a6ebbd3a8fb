"""Checkpoints: exact round trip, optax structure, corrupt fallback, config guard, best FID."""

import json
import logging
import pathlib

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import default, tiny
from reacgan_jax.platform import checkpoints, parallel


@flax.struct.dataclass
class _State:
  step: jax.Array
  params: dict
  opt: object
  ema: object
  rng: jax.Array


def _state(step, seed=0):
  k = jax.random.PRNGKey(seed)
  params = {'conv': {'kernel': jax.random.normal(k, (3, 3, 2, 4))}, 'b': jnp.arange(4.0)}
  opt = optax.adam(1e-3).init(params)
  s = _State(step=jnp.array(step, jnp.int32), params=params, opt=opt, ema=None,
             rng=jax.random.PRNGKey(seed + 1))
  return jax.device_put(s, parallel.replicated_sharding(parallel.create_mesh()))


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_round_trip_is_exact_and_keeps_optax_structure(tmp_path):
  cfg = tiny.get_config()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  st = _state(7)
  ck.save(7, st)
  restored, step = ck.restore(checkpoints.abstract_like(st))
  assert step == 7
  # Without the abstract target optax's ScaleByAdamState would come back as a list.
  assert type(restored.opt[0]) is type(st.opt[0])
  _assert_equal(restored, st)
  ck.close()


def test_keeps_the_newest_n(tmp_path):
  cfg = tiny.get_config()
  cfg.train.keep_checkpoints = 2
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  for s in (1, 2, 3, 4):
    ck.save(s, _state(s))
  assert ck.all_steps() == [3, 4]
  ck.close()


def test_corrupt_newest_falls_back_with_a_warning(tmp_path, caplog):
  cfg = tiny.get_config()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  good, bad = _state(2, seed=0), _state(4, seed=5)
  ck.save(2, good)
  ck.save(4, bad)
  # Truncate every file of the newest checkpoint's state (a disk-full / partial-copy failure).
  files = [f for f in (tmp_path / 'checkpoints' / '4' / 'state').rglob('*') if f.is_file()]
  assert files
  for f in files:
    f.write_bytes(f.read_bytes()[:3])
  with caplog.at_level(logging.WARNING):
    restored, step = ck.restore(checkpoints.abstract_like(good))
  assert step == 2
  _assert_equal(restored, good)
  assert any('cannot be read' in r.getMessage() for r in caplog.records)
  # The unreadable one is set aside, so step 4 can be saved again by the resumed run.
  assert ck.all_steps() == [2]
  ck.save(4, good)
  assert ck.all_steps() == [2, 4]
  ck.close()


def test_a_crashed_save_leaves_the_previous_checkpoint(tmp_path):
  # Orbax writes into '<step>.orbax-checkpoint-tmp-*' and renames when done: an unfinished
  # temporary directory (what SIGKILL mid-save leaves) is not a checkpoint.
  cfg = tiny.get_config()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  ck.save(2, _state(2))
  ck.close()
  (tmp_path / 'checkpoints' / '4.orbax-checkpoint-tmp-123').mkdir()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  assert ck.latest_step() == 2
  ck.close()


def test_refuses_to_resume_another_model(tmp_path):
  cfg = tiny.get_config()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  ck.save(1, _state(1))
  ck.close()
  other = tiny.get_config()
  other.model.g_conv_dim = 8
  other.train.steps = 99  # train keys may change on resume (more steps)
  ck = checkpoints.Checkpointer(tmp_path, other)
  with pytest.raises(ValueError, match=r'model\.g_conv_dim: saved 4, now 8'):
    ck.check_config(1)
  ck.close()
  same_model = tiny.get_config()
  same_model.train.steps = 99
  ck = checkpoints.Checkpointer(tmp_path, same_model)
  ck.check_config(1)
  ck.close()


def test_best_fid_keeps_the_lowest(tmp_path):
  cfg = tiny.get_config()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  for step, fid in ((1, 50.0), (2, 30.0), (3, 40.0)):
    ck.save_best(step, _state(step, seed=step), {'fid': fid})
  restored, step = ck.restore_best(checkpoints.abstract_like(_state(0)))
  assert step == 2
  _assert_equal(restored, _state(2, seed=2))
  ck.close()


def test_list_checkpoint_steps(tmp_path):
  assert checkpoints.list_checkpoint_steps(str(tmp_path)) == []
  ck = checkpoints.Checkpointer(tmp_path, tiny.get_config())
  ck.save(3, _state(3))
  ck.close()
  assert checkpoints.list_checkpoint_steps(str(tmp_path)) == [3]
  assert pathlib.Path(tmp_path, 'checkpoints', '3', 'config').exists()


def test_resume_compares_what_changes_the_run_not_how_it_is_read(tmp_path, monkeypatch):
  # Issue 26: the same npz by another path, the cache and prefetch knobs and (for in-memory
  # sources) the shuffle buffer were each refused as "a different configuration".
  npz = tmp_path / 'data.npz'
  npz.write_bytes(b'x')
  (tmp_path / 'other.npz').write_bytes(b'y')
  monkeypatch.chdir(tmp_path)
  saved = checkpoints.config_to_dict(default.get_config())
  saved['data'].update(source='npz', npz_path=str(npz))
  now = json.loads(json.dumps(saved))
  now['data'].update(npz_path='data.npz', cache_dir='none', prefetch=0, shuffle_buffer=7,
                     tfds_data_dir='/elsewhere', download=False, download_url='http://mirror/')
  # issue 28: a run started on XLA's convolutions resumes under 'auto' (oneDNN: equal to
  # rounding), or on a GPU host
  saved['model']['conv_backend'], now['model']['conv_backend'] = 'xla', 'auto'
  assert checkpoints.config_differences(saved, now) == []
  now['data']['npz_path'] = 'other.npz'  # another file: other data
  now['model']['z_dim'] += 1
  assert checkpoints.config_differences(saved, now) == [
      f"model.z_dim: saved {saved['model']['z_dim']!r}, now {now['model']['z_dim']!r}",
      f"data.npz_path: saved {str(npz)!r}, now 'other.npz'"]
  # A streamed TFDS split is ordered by its shuffle buffer: that one stays.
  saved['data'].update(source='tfds', npz_path=''), now['data'].update(source='tfds', npz_path='')
  now['model']['z_dim'] -= 1
  assert checkpoints.config_differences(saved, now) == [
      "data.shuffle_buffer: saved 10000, now 7"]
