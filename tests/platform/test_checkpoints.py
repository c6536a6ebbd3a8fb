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
  # session 20: StyleGAN2's Winograd convolutions (equal to rounding); runs saved before the
  # key existed resume too
  del saved['model']['stylegan2']['winograd']
  # issue 25: SN at sampling, 'stored' (the old default) or 'iterate' (the new): the train step
  # is the same under both, so a run of either resumes and evaluates under the other
  saved['model']['sn_eval'], now['model']['sn_eval'] = 'stored', 'iterate'
  assert checkpoints.config_differences(saved, now) == []
  saved['model']['sn_eval'] = 'recompute'  # legacy: its train-step forwards differ
  assert checkpoints.config_differences(saved, now) == [
      "model.sn_eval: saved 'recompute', now 'iterate'"]
  saved['model']['sn_eval'] = 'stored'
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


_ENOSPC = ("RESOURCE_EXHAUSTED: Error writing \"d.params/0\" in OCDBT database at local file "
           "\"/x/4.orbax-checkpoint-tmp/state\": Failed to write 8064 bytes to file 19: No space "
           "left on device [os_error_code='28']")  # what orbax raised on a full tmpfs (probe)


def test_a_full_disk_is_one_line_and_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
  """Issue 26: the save failed with orbax's traceback and left its partial folder behind."""
  import sys  # noqa: PLC0415
  import types  # noqa: PLC0415

  monkeypatch.setattr(sys, 'unraisablehook', sys.unraisablehook)  # put back after the test
  ck = checkpoints.Checkpointer(tmp_path, tiny.get_config())
  ck.save(2, _state(2))
  real_save, before = ck.manager.save, sys.unraisablehook

  def full_disk_save(step, **kw):
    (tmp_path / 'checkpoints' / f'{step}.orbax-checkpoint-tmp').mkdir()
    try:  # orbax's own error, wrapped once more as its async writes do
      raise ValueError(_ENOSPC)
    except ValueError as e:
      raise RuntimeError('save failed') from e

  monkeypatch.setattr(ck.manager, 'save', full_disk_save)
  with pytest.raises(checkpoints.errors.DiskFullError) as e:
    ck.save(4, _state(4))
  assert str(e.value) == (
      f"No space left on the disk of {tmp_path / 'checkpoints'} while writing checkpoint 4: its "
      'partial files were removed; checkpoint 2 (the newest) is intact. Free space there (or use '
      'a --workdir on another disk) and run the command again.')
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2']
  # After a full disk the noise filters stay (late callbacks arrive after the save raised):
  # tensorstore's calls into orbax's closed loop are dropped, anything else is not.
  assert sys.unraisablehook is not before
  filters = {name: logging.getLogger(name).filters[-1] for name in ('absl', 'asyncio')}
  record = logging.LogRecord('asyncio', logging.ERROR, 'x', 1, 'Task exception was never '
                             'retrieved', None, (ValueError, ValueError(_ENOSPC), None))
  assert not filters['asyncio'].filter(record)
  record.exc_info = (ValueError, ValueError('other'), None)
  assert filters['asyncio'].filter(record)
  seen = []
  hook = checkpoints._late_write_callbacks_dropped(seen.append)
  hook(types.SimpleNamespace(exc_value=RuntimeError('Event loop is closed')))
  other = types.SimpleNamespace(exc_value=RuntimeError('another'))
  hook(other)
  assert seen == [other]
  for name, f in filters.items():  # as a new process would start
    logging.getLogger(name).removeFilter(f)
  # another error keeps its traceback and leaves the hooks as they were
  monkeypatch.setattr(ck.manager, 'save', lambda step, **kw: (_ for _ in ()).throw(
      ValueError('INVALID_ARGUMENT: something else')))
  before = sys.unraisablehook
  with pytest.raises(ValueError, match='something else'):
    ck.save(6, _state(6))
  assert sys.unraisablehook is before
  assert not logging.getLogger('absl').filters and not logging.getLogger('asyncio').filters
  monkeypatch.setattr(ck.manager, 'save', real_save)
  ck.save(6, _state(6))
  assert ck.all_steps() == [2, 6]
  ck.close()
