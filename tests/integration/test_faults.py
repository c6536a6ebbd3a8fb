"""Issue 14, "nothing lost, nothing silently wrong": each fault class reproduced and answered.

Checkpoints (classes 1, 3, 4): after every fault, each checkpoint that was complete before it
still restores bit-exactly (`_assert_nothing_lost`). Lock (2), config values (6), the workdir's
config (7), FID (8) and user errors (9): exit status, one clear message, no traceback.
"""

import dataclasses
import errno
import json
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import textwrap

import fault_states
import jax
import kill_harness
import numpy as np
import orbax.checkpoint as ocp
import pytest
from absl import flags
from ml_collections import config_flags
from PIL import Image
from train_helpers import HANG_S

import configs
from configs import default, from_workdir, tiny
from reacgan_jax import errors, validate
from reacgan_jax.data import checks
from reacgan_jax.data import sources as data_sources
from reacgan_jax.evaluation import fid, inception_weights
from reacgan_jax.platform import checkpoint_meta, checkpoints, workdir_lock

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')


_state = fault_states.make_state


def _assert_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _saved(tmp_path, steps=(2, 4, 6), keep=3, **kw):
  cfg = tiny.get_config()
  cfg.train.keep_checkpoints = keep
  ck = checkpoints.Checkpointer(tmp_path, cfg, **kw)
  states = {s: _state(s, seed=s) for s in steps}
  for s, st in states.items():
    ck.save(s, st)
  return ck, states


def _assert_nothing_lost(ck, states, except_steps=()):
  """Every checkpoint complete before the fault (but `except_steps`) restores bit-exactly."""
  for s, st in states.items():
    if s not in except_steps:
      restored, at = ck.restore(checkpoints.abstract_like(st), step=s)
      assert at == s
      _assert_equal(restored, st)


def _damage(path: pathlib.Path, how: str):
  files = [f for f in path.rglob('*') if f.is_file()] if path.is_dir() else [path]
  assert files, path
  for f in files:
    if how == 'delete':
      f.unlink()
    elif how == 'zero':
      f.write_bytes(b'')
    else:
      f.write_bytes(b'\x00garbage{' + f.read_bytes()[::-1][:50])


# ---- class 1: keep_checkpoints ---------------------------------------------------------------


def test_orbax_max_to_keep_zero_deletes_everything_so_keep_must_be_positive(tmp_path):
  # The fault: orbax's max_to_keep=0 removes each checkpoint right after writing it.
  m = ocp.CheckpointManager(tmp_path / 'raw', options=ocp.CheckpointManagerOptions(
      max_to_keep=0, create=True, enable_async_checkpointing=False), item_names=('state',))
  m.save(1, args=ocp.args.Composite(state=ocp.args.StandardSave({'a': np.arange(3)})), force=True)
  m.wait_until_finished()
  assert m.all_steps() == []
  m.close()
  cfg = tiny.get_config()
  for keep in (0, -1, 1.5, True):
    with pytest.raises(errors.ConfigError, match=r'keep_checkpoints=.*>= 1'):
      checkpoints.Checkpointer(tmp_path, cfg, keep=keep)
  cfg.train.keep_checkpoints = 0
  with pytest.raises(errors.ConfigError, match='delete every checkpoint'):
    validate.validate_config(cfg, mode='train')
  with pytest.raises(errors.ConfigError):
    checkpoints.Checkpointer(tmp_path, cfg)
  assert not (tmp_path / 'checkpoints').exists()  # refused before creating anything


# ---- class 3: fallback that falls back ---------------------------------------------------------


@pytest.mark.parametrize('item,how', [('config', 'delete'), ('config', 'zero'),
                                      ('config', 'garbage'), ('meta', 'zero'),
                                      ('meta', 'garbage'), ('meta', 'dir'), ('meta', 'copy'),
                                      ('state', 'zero')])
def test_unreadable_item_of_newest_falls_back_every_rerun(tmp_path, caplog, item, how):
  ck, states = _saved(tmp_path)
  target = tmp_path / 'checkpoints' / '6' / item
  if how in ('dir', 'copy'):  # the whole meta item gone, though orbax recorded it: damage
    import shutil
    shutil.rmtree(target)
    if how == 'copy':  # an interrupted copy lacks orbax's record too: still not layout 1
      (target.parent / '_CHECKPOINT_METADATA').unlink()
  else:
    _damage(target, how)
  ck.close()
  for _ in range(2):  # the rerun after the fallback works as well
    ck = checkpoints.Checkpointer(tmp_path, tiny.get_config())
    ck.check_config(ck.latest_step())  # what the trainer calls first: must not crash
    with caplog.at_level(logging.WARNING):
      restored, at = ck.restore(checkpoints.abstract_like(states[4]))
    assert at == 4
    _assert_equal(restored, states[4])
    ck.close()
  assert any(f'its {item} item' in r.getMessage() for r in caplog.records)
  assert (tmp_path / 'checkpoints' / 'corrupt-6').is_dir()  # set aside, not deleted
  ck = checkpoints.Checkpointer(tmp_path, tiny.get_config())
  _assert_nothing_lost(ck, states, except_steps=(6,))
  ck.close()


def test_set_aside_name_taken_uses_a_counter_and_the_step_is_saved_again(tmp_path):
  ck, states = _saved(tmp_path, steps=(2, 4))
  abstract = checkpoints.abstract_like(states[2])
  for n in range(3):
    _damage(tmp_path / 'checkpoints' / '4' / 'state', 'zero')
    assert ck.restore(abstract)[1] == 2
    assert 4 not in ck.all_steps()
    ck.save(4, states[4])  # a resumed run redoes step 4 and must be able to save it
    assert ck.all_steps() == [2, 4], n
  names = sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if 'corrupt' in p.name)
  assert names == ['corrupt-4', 'corrupt-4-1', 'corrupt-4-2']
  _assert_nothing_lost(ck, states)
  ck.close()


def test_read_only_workdir_falls_back_without_renaming(tmp_path, monkeypatch, caplog):
  ck, states = _saved(tmp_path)
  _damage(tmp_path / 'checkpoints' / '6' / 'state', 'garbage')

  def read_only(src, dst):
    raise OSError(errno.EROFS, 'Read-only file system', str(src))
  monkeypatch.setattr(checkpoints.os, 'rename', read_only)
  with caplog.at_level(logging.WARNING):
    restored, at = ck.restore(checkpoints.abstract_like(states[4]))
  assert at == 4
  _assert_equal(restored, states[4])
  assert any('Could not move' in r.getMessage() for r in caplog.records)
  assert (tmp_path / 'checkpoints' / '6').is_dir()  # left where it was
  _assert_nothing_lost(ck, states, except_steps=(6,))
  ck.close()


def test_every_checkpoint_unusable_is_one_clear_error_and_nothing_is_deleted(tmp_path):
  ck, states = _saved(tmp_path, steps=(2,))
  _damage(tmp_path / 'checkpoints' / '2' / 'config', 'zero')
  with pytest.raises(checkpoint_meta.CheckpointReadError,
                     match=r'config item.*nothing was deleted'):
    ck.restore(checkpoints.abstract_like(states[2]))
  assert (tmp_path / 'checkpoints' / '2').is_dir()
  ck.close()


# ---- class 4: integrity and layout -------------------------------------------------------------


def test_digests_are_recorded_and_a_mismatch_is_never_good(tmp_path, caplog):
  ck, states = _saved(tmp_path)
  meta = json.loads((tmp_path / 'checkpoints' / '6' / 'meta' / 'metadata').read_text())
  assert meta['layout'] == checkpoints.STATE_LAYOUT and 'reacgan-jax' in meta['written_by']
  leaf = ".params['conv']['kernel']"
  assert meta['digests'][leaf]['shape'] == [3, 3, 2, 4]
  assert meta['digests'][leaf] == checkpoint_meta.digest(np.asarray(states[6].params['conv']
                                                                   ['kernel']))
  # A partial copy: checkpoint 6 got the state files of checkpoint 2 (orbax reads them fine).
  import shutil
  shutil.rmtree(tmp_path / 'checkpoints' / '6' / 'state')
  d = tmp_path / 'checkpoints'
  shutil.copytree(d / '2' / 'state', d / '6' / 'state')
  with caplog.at_level(logging.WARNING):
    restored, at = ck.restore(checkpoints.abstract_like(states[4]))
  assert at == 4
  _assert_equal(restored, states[4])
  warned = ' '.join(r.getMessage() for r in caplog.records)
  assert leaf in warned and 'differs from what was saved' in warned
  _assert_nothing_lost(ck, states, except_steps=(6,))
  ck.close()


def test_non_finite_state_is_never_saved_nor_restored_as_good(tmp_path, caplog):
  ck, states = _saved(tmp_path, steps=(2, 4), keep=2)
  with pytest.raises(FloatingPointError, match=r"\.params\['b'\]"):
    ck.save(6, _state(6, poison=True))
  assert ck.all_steps() == [2, 4]  # rotation did not drop a good one for a bad one
  # A non-finite checkpoint on disk anyway (an older version wrote it): skipped, leaf named.
  bad = _state(6, poison=True)
  digests, nonfinite = checkpoint_meta.digests_and_nonfinite(bad)
  assert nonfinite == [".params['b']"]
  ck.manager.save(6, args=ocp.args.Composite(
      state=ocp.args.StandardSave(bad), config=ocp.args.JsonSave(ck.config_dict),
      meta=ocp.args.JsonSave(checkpoint_meta.make_meta(ck.layout, digests))), force=True)
  ck.manager.wait_until_finished()
  with caplog.at_level(logging.WARNING):
    restored, at = ck.restore(checkpoints.abstract_like(states[4]))
  assert at == 4
  assert any(".params['b'] holds NaN/Inf" in r.getMessage() for r in caplog.records)
  _assert_nothing_lost(ck, {4: states[4]})
  ck.close()


def _layout1_checkpoint(tmp_path, step, state, cfg):
  """A checkpoint as the code of LAYOUT1_LAST_COMMIT wrote it: items state and config only."""
  m = ocp.CheckpointManager(tmp_path / 'checkpoints', options=ocp.CheckpointManagerOptions(
      max_to_keep=3, create=True, enable_async_checkpointing=False),
      item_names=('state', 'config'))
  m.save(step, args=ocp.args.Composite(state=ocp.args.StandardSave(state),
                                       config=ocp.args.JsonSave(checkpoints.config_to_dict(cfg))),
         force=True)
  m.wait_until_finished()
  m.close()


def test_checkpoint_of_another_layout_is_refused_and_left_alone(tmp_path):
  cfg = tiny.get_config()
  st = _state(3)
  _layout1_checkpoint(tmp_path, 3, st, cfg)
  # The layout is said first, even with a config that differs (an old run's config always
  # does): "different configuration" would send the user to from_workdir.py, which cannot help.
  changed = tiny.get_config()
  changed.model.g_conv_dim = 8
  ck = checkpoints.Checkpointer(tmp_path, changed)
  with pytest.raises(errors.CheckpointLayoutError, match='layout 1'):
    ck.check_config(3)
  ck.close()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  with pytest.raises(errors.CheckpointLayoutError) as e:
    ck.restore(checkpoints.abstract_like(st))
  msg = str(e.value)
  assert 'layout 1' in msg and 'f192c95' in msg and 'new --workdir' in msg
  assert isinstance(e.value, errors.UserError)
  assert ck.all_steps() == [3] and not list((tmp_path / 'checkpoints').glob('corrupt*'))
  ck.close()
  # A future layout: the message names it and the version that wrote it.
  future = checkpoints.STATE_LAYOUT + 1
  ck3 = checkpoints.Checkpointer(tmp_path / 'b', cfg, layout=future)
  ck3.save(5, st)
  ck3.close()
  ck = checkpoints.Checkpointer(tmp_path / 'b', cfg)
  with pytest.raises(errors.CheckpointLayoutError,
                     match=rf'layout {future} \(written by reacgan-jax'):
    ck.restore(checkpoints.abstract_like(st))
  assert ck.all_steps() == [5]
  ck.close()


# ---- class 6 (seed) and 7: resume checks and the workdir's config ------------------------------


def test_changed_seed_on_resume_is_refused_and_the_hint_works(tmp_path):
  cfg = tiny.get_config()
  ck = checkpoints.Checkpointer(tmp_path, cfg)
  ck.save(1, _state(1))
  ck.write_config()
  ck.close()
  other = tiny.get_config()
  other.seed = 7
  ck = checkpoints.Checkpointer(tmp_path, other)
  with pytest.raises(errors.ConfigError, match=r'config.seed=7.*seed 0'):
    ck.check_config(1)
  ck.check_config(1, resume=False)  # evaluating with another seed is fine
  ck.close()
  other = tiny.get_config()
  other.model.g_conv_dim = 8
  ck = checkpoints.Checkpointer(tmp_path, other)
  with pytest.raises(errors.ConfigError) as e:
    ck.check_config(1)
  hint = f'--config=configs/from_workdir.py:{tmp_path}'
  assert hint in str(e.value)
  # The suggested flag rebuilds the saved config, with the default's types.
  fv = flags.FlagValues()
  argv = ['prog', hint.replace('configs/', f'{REPO}/configs/'), '--config.train.steps=9']
  config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv, lock_config=True)
  fv(argv)
  rebuilt = fv.config
  assert rebuilt.model.g_conv_dim == 4 and rebuilt.train.steps == 9
  want = tiny.get_config()
  want.train.steps = 9
  assert rebuilt.to_dict() == want.to_dict()
  for section in ('optim', 'train', 'eval'):
    for k, v in want[section].items():
      assert type(rebuilt[section][k]) is type(v), (section, k)
  ck = checkpoints.Checkpointer(tmp_path, rebuilt)
  ck.check_config(1)
  ck.close()


def test_from_workdir_reads_a_checkpoint_when_config_json_is_gone_and_errors_clearly(tmp_path):
  ck = checkpoints.Checkpointer(tmp_path, tiny.get_config())
  ck.save(1, _state(1))
  ck.close()
  assert not (tmp_path / 'config.json').exists()
  assert from_workdir.get_config(str(tmp_path)).model.g_conv_dim == 4
  with pytest.raises(errors.ConfigError, match='no readable config.json'):
    from_workdir.get_config(str(tmp_path / 'nope'))
  with pytest.raises(errors.ConfigError, match='after a colon'):
    from_workdir.get_config()
  (tmp_path / 'x').mkdir()
  (tmp_path / 'x' / 'config.json').write_text(json.dumps({'train': {'steps': 'many'}}))
  with pytest.raises(errors.ConfigError, match=r"config.train.steps='many'.*int"):
    from_workdir.get_config(str(tmp_path / 'x'))


# ---- class 6: values not checked ---------------------------------------------------------------


BAD_VALUES = [
    ('train.batch_size', 0), ('train.batch_size', -8), ('train.d_updates_per_step', 0),
    ('train.log_every', 0), ('train.sample_every', -1), ('train.checkpoint_every', -5),
    ('train.keep_checkpoints', 0), ('train.keep_checkpoints', -1), ('train.eval_every', -2),
    ('train.steps', 0), ('eval.num_samples', 0), ('eval.batch_size', 0), ('eval.is_splits', 0),
    ('eval.num_ref', 0), ('eval.prdc_k', 0), ('model.backbone', 'bigan'),
    ('model.cond_method', 'reacgann'), ('data.source', 'npy'), ('data.crop', 'centre'),
    ('model.bn_eval', 'stand'), ('loss.adv', 'hing'), ('optim.schedule', 'cosine'),
    ('eval.resize', 'bilinear'), ('eval.metrics', 'fid,iss'), ('train.diffaug_policy', 'flip'),
    ('model.dtype', 'float16'), ('optim.g_lr', 0.0), ('optim.beta2', 1.0),
]


@pytest.mark.parametrize('key,value', BAD_VALUES)
def test_bad_values_get_one_error_naming_key_and_value(key, value):
  cfg = default.get_config()
  section, name = key.split('.')
  cfg[section][name] = value
  with pytest.raises(errors.ConfigError) as e:
    validate.validate_config(cfg, mode='train')
  assert name in str(e.value) and (repr(value) in str(e.value) or str(value) in str(e.value))


def test_shipped_configs_are_valid_and_steps_only_matter_for_training():
  for name in configs.experiment_configs():
    mod = __import__(f'configs.{name}', fromlist=['get_config'])
    validate.validate_config(mod.get_config(), mode='train')
  cfg = tiny.get_config()
  cfg.train.steps = 0
  validate.validate_config(cfg, mode='eval')
  with pytest.raises(errors.ConfigError, match='--mode'):
    validate.validate_config(cfg, mode='evaluate')


def test_data_checks_classes_and_resolution():
  cfg = default.get_config()
  cfg.data.num_classes = 100
  labels = np.repeat(np.arange(10), 3)
  with pytest.raises(errors.ConfigError, match=r'num_classes=100.*only 10 classes.*=10'):
    checks.check_labels(cfg, labels, None, 'npz toy.npz')
  checks.check_labels(cfg, labels, 100, 'npz toy.npz')  # declared names: pipeline's check
  cfg.data.num_classes = 5
  with pytest.raises(errors.ConfigError, match='outside'):
    checks.check_labels(cfg, labels, None, 'npz toy.npz')
  cfg.data.image_size = 32
  with pytest.raises(errors.ConfigError, match=r'64x64 .*image_size=32.*npz_resize=True'):
    checks.check_resolution(cfg, (5, 64, 64, 3), 'npz toy.npz')
  checks.check_resolution(cfg, (5, 32, 32, 3), 'npz toy.npz')
  cfg.data.npz_resize = True
  checks.check_resolution(cfg, (5, 64, 64, 3), 'npz toy.npz')
  # The pipeline's entry point: the eval split may lack classes, the train split may not.
  cfg.data.num_classes, cfg.data.npz_resize = 12, False
  arrays = data_sources.Arrays(np.zeros((30, 32, 32, 3), np.uint8), labels, None, 'npz toy.npz',
                               from_npz=True)
  checks.check_arrays(cfg, arrays, 'test')
  with pytest.raises(errors.ConfigError, match='only 10 classes'):
    checks.check_arrays(cfg, arrays, 'train')
  big = data_sources.Arrays(np.zeros((30, 64, 64, 3), np.uint8), labels, 12, 'npz big.npz')
  checks.check_arrays(cfg, big, 'train')  # not from an npz (folder/tfds): resized by design
  with pytest.raises(errors.ConfigError, match='64x64'):
    checks.check_arrays(cfg, dataclasses.replace(big, from_npz=True), 'test')


def test_tiny_config_embeds_a_small_reference_set():
  assert 0 < tiny.get_config().eval.num_ref <= 512


# ---- class 2: workdir lock ---------------------------------------------------------------------


def _lock(wd, **kw):
  return workdir_lock.WorkdirLock(wd, process_index=0, process_count=1, **kw)


_HOLDER = textwrap.dedent('''
    import sys, time
    from reacgan_jax import errors
    from reacgan_jax.platform import workdir_lock
    wd, hold = sys.argv[1], float(sys.argv[2])
    go = wd + '.go'
    if len(sys.argv) > 3:
      print('ready', flush=True)
    while len(sys.argv) > 3 and not __import__('os').path.exists(go):
      time.sleep(0.005)
    with errors.exit_on_user_error('holder'):
      with workdir_lock.WorkdirLock(wd, process_index=0, process_count=1):
        print('held', flush=True)
        time.sleep(hold)
''')


def test_second_writer_is_refused_naming_the_owner_and_lock_is_released(tmp_path):
  wd = tmp_path / 'run'
  holder = subprocess.Popen([sys.executable, '-c', _HOLDER, str(wd), '60'], env=ENV,
                            stdout=subprocess.PIPE, text=True)
  try:
    assert holder.stdout.readline().strip() == 'held'
    with pytest.raises(errors.WorkdirLockedError) as e, _lock(wd):
      pass
    msg = str(e.value)
    assert f'pid {holder.pid} on host {socket.gethostname()}' in msg and 'another --workdir' in msg
    # As a command: exit 1, one line, no traceback.
    r = subprocess.run([sys.executable, '-c', _HOLDER, str(wd), '0'], env=ENV,
                       capture_output=True, text=True, timeout=HANG_S)
    assert r.returncode == 1 and 'Traceback' not in r.stderr
    assert r.stderr.count('\n') == 1 and f'pid {holder.pid}' in r.stderr
    # kill -9: the lock stays behind, stale; the next run takes it over.
    holder.send_signal(signal.SIGKILL)
    holder.wait(30)
    assert (wd / workdir_lock.LOCK_NAME).exists()
    with _lock(wd) as lk:
      assert json.loads((wd / workdir_lock.LOCK_NAME).read_text())['token'] == lk.token
    assert not (wd / workdir_lock.LOCK_NAME).exists()  # released on exit
  finally:
    holder.kill()
    holder.wait(30)


def test_stale_lock_rules(tmp_path):
  wd = tmp_path / 'run'
  wd.mkdir()
  lock = wd / workdir_lock.LOCK_NAME
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  dead_pid = int(dead.stdout)
  host = socket.gethostname()
  # Another host: never taken over; the message says how to remove it by hand.
  lock.write_text(json.dumps({'pid': dead_pid, 'host': 'other-host', 'started': 'then'}))
  with pytest.raises(errors.WorkdirLockedError, match=r'other-host.*delete .*reacgan\.lock'), \
       _lock(wd):
    pass
  # This host, pid reused by a live process with another start time: stale.
  lock.write_text(json.dumps({'pid': os.getpid(), 'host': host, 'pid_start': '1'}))
  with _lock(wd):
    pass
  # Empty lock file (unknown owner): refused, not taken.
  lock.write_text('')
  with pytest.raises(errors.WorkdirLockedError, match='empty or unreadable'), _lock(wd):
    pass
  # Only process 0 holds the file.
  lock.unlink()
  with workdir_lock.WorkdirLock(wd, process_index=1, process_count=1):
    assert not lock.exists()


def test_takeover_rechecks_under_the_guard(tmp_path):
  # Two runs both saw the same stale lock; B took it over first. A must not replace B's lock.
  wd = tmp_path / 'run'
  wd.mkdir()
  stale = {'pid': 2 ** 22 + 7, 'host': socket.gethostname(), 'started': 'then'}
  (wd / workdir_lock.LOCK_NAME).write_text(json.dumps(stale))
  a, b = _lock(wd), _lock(wd)
  with b:
    tmp = a._write_tmp()  # noqa: SLF001
    assert a._take_over(stale, tmp) is False  # noqa: SLF001
    assert json.loads((wd / workdir_lock.LOCK_NAME).read_text())['token'] == b.token
    os.unlink(tmp)


def test_concurrent_takeover_of_a_stale_lock_has_one_winner(tmp_path):
  wd = tmp_path / 'run'
  wd.mkdir()
  dead = subprocess.run([sys.executable, '-c', 'import os; print(os.getpid())'],
                        capture_output=True, text=True, check=True)
  (wd / workdir_lock.LOCK_NAME).write_text(json.dumps(
      {'pid': int(dead.stdout), 'host': socket.gethostname(), 'started': 'then'}))
  procs = [subprocess.Popen([sys.executable, '-c', _HOLDER, str(wd), '3', 'wait'], env=ENV,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
           for _ in range(6)]
  for p in procs:  # all imported and polling for the go file, however long imports take
    assert p.stdout.readline().strip() == 'ready'
  (tmp_path / 'run.go').write_text('')
  outs = [p.communicate(timeout=HANG_S) for p in procs]
  winners = [o for o, _ in outs if 'held' in o]
  assert len(winners) == 1, outs
  assert sum('in use by another run' in e for _, e in outs) == 5


# ---- class 8 and 9: FID command ----------------------------------------------------------------


def _stats(path, description='', nan=False, seed=0):
  f = np.random.default_rng(seed).normal(size=(40, 5))
  mu, sigma = fid.compute_statistics(f)
  if nan:
    mu[2] = np.nan
  return fid.save_statistics(path, mu, sigma, 40, description)


def _fid_cli(*args):
  return subprocess.run([sys.executable, '-m', 'reacgan_jax.fid', *map(str, args)], cwd=REPO,
                        env=ENV, capture_output=True, text=True, timeout=HANG_S)


def _assert_user_error(r, *needles):
  assert r.returncode == 1, (r.returncode, r.stdout, r.stderr[-2000:])
  assert 'Traceback' not in r.stderr and 'FID:' not in r.stdout
  lines = [x for x in r.stderr.splitlines() if 'error:' in x]
  assert len(lines) == 1, r.stderr
  for n in needles:
    assert n in lines[0], (n, lines[0])


def test_fid_cli_refuses_nan_statistics_and_protocol_mismatch(tmp_path):
  legacy = fid.describe('a', 40, 'legacy', 'w.msgpack', 'sha256:aaaa')
  _stats(tmp_path / 'nan.npz', legacy, nan=True)
  _stats(tmp_path / 'a.npz', legacy)
  _stats(tmp_path / 'clean.npz', fid.describe('b', 40, 'clean', 'w.msgpack', 'sha256:aaaa'), seed=1)
  _stats(tmp_path / 'net.npz', fid.describe('b', 40, 'legacy', 'w.msgpack', 'sha256:bbbb'), seed=1)
  _assert_user_error(_fid_cli(tmp_path / 'nan.npz', tmp_path / 'a.npz'), 'nan.npz', 'NaN', 'mu')
  _assert_user_error(_fid_cli(tmp_path / 'a.npz', tmp_path / 'clean.npz'), 'resize=legacy',
                     'resize=clean')
  _assert_user_error(_fid_cli(tmp_path / 'a.npz', tmp_path / 'net.npz'), 'network=sha256:aaaa')
  r = _fid_cli(tmp_path / 'a.npz', tmp_path / 'clean.npz', '--allow-protocol-mismatch')
  assert r.returncode == 0 and r.stdout.strip().splitlines()[-1].startswith('FID: ')


def test_fid_cli_names_the_missing_input_not_the_weights(tmp_path):
  _stats(tmp_path / 'a.npz')
  r = _fid_cli(tmp_path / 'misssing_dir', tmp_path / 'a.npz', '--weights', tmp_path / 'no.msgpack')
  _assert_user_error(r, 'misssing_dir', 'no such file or folder')
  assert 'Inception weights' not in r.stderr
  r = _fid_cli(tmp_path / 'a.npz', tmp_path / 'a.npz', '--save-stats', 'x', 'y')
  assert r.returncode == 2  # argparse usage error


def test_fid_cli_names_a_broken_image_and_missing_weights(tmp_path):
  weights = inception_weights.save_params(tmp_path / 'tiny.msgpack',
                                          inception_weights.random_params(width=1 / 16, seed=0),
                                          'test: random')
  folder = tmp_path / 'imgs'
  folder.mkdir()
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(folder / '000.png')
  (folder / '001.png').write_bytes(b'\x89PNG\r\n\x1a\n truncated')
  _stats(tmp_path / 'a.npz')
  with pytest.raises(errors.InputError, match=r'001\.png: cannot read this image'):
    fid.main([str(folder), str(tmp_path / 'a.npz'), '--weights', str(weights)])
  r = _fid_cli(folder, tmp_path / 'a.npz', '--weights', weights)
  _assert_user_error(r, '001.png', 'delete or replace')
  r = _fid_cli(folder, tmp_path / 'a.npz', '--weights', tmp_path / 'no.msgpack')
  assert r.returncode == 1 and 'Traceback' not in r.stderr and 'convert' in r.stderr


def test_user_error_exits_with_one_line_and_other_errors_keep_their_traceback():
  code = ('import sys\nfrom reacgan_jax import errors\n'
          'with errors.exit_on_user_error("prog"):\n'
          '  raise errors.ConfigError("config.x=1: must be 2") if sys.argv[1] == "u" else '
          'KeyError("bug")\n')
  r = subprocess.run([sys.executable, '-c', code, 'u'], env=ENV, capture_output=True, text=True)
  assert r.returncode == 1 and r.stderr == 'prog: error: config.x=1: must be 2\n'
  r = subprocess.run([sys.executable, '-c', code, 'b'], env=ENV, capture_output=True, text=True)
  assert r.returncode == 1 and 'Traceback' in r.stderr


def test_a_user_error_of_a_config_file_is_one_message_after_config_flags_wraps_it(tmp_path):
  fv = flags.FlagValues()
  argv = ['prog', f'--config={REPO}/configs/from_workdir.py:{tmp_path / "nope"}']
  config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
  with pytest.raises(flags.Error) as e:
    fv(argv)
  assert 'Traceback' in str(e.value)  # what main.parse_flags prints today
  msg = errors.message_of_flag_error(e.value)
  assert msg.startswith('--config=configs/from_workdir.py:') and 'Traceback' not in msg
  assert 'no readable config.json' in msg and '\n' not in msg
  assert errors.message_of_flag_error(flags.Error('plain')) is None


def test_a_mistyped_variant_is_one_message_naming_the_choices():
  fv = flags.FlagValues()
  argv = ['prog', f'--config={REPO}/configs/cifar10_reacgan.py:smal']
  config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=argv)
  with pytest.raises(flags.Error) as e:
    fv(argv)
  msg = errors.message_of_flag_error(e.value)  # None (config_flags' traceback) for a ValueError
  assert msg == ("cifar10_reacgan: unknown variant 'smal'; expected one of '', 'small', "
                 "'quickstart' (--config=configs/cifar10_reacgan.py:<variant>)")


# ---- the kill -9 harness on a checkpoint writer (the trainer's loop test is the lead's) ---------


_WRITER = textwrap.dedent('''
    import sys, time
    from configs import tiny
    from fault_states import make_state
    from reacgan_jax.platform import checkpoints, workdir_lock
    wd, last = sys.argv[1], int(sys.argv[2])
    cfg = tiny.get_config()
    cfg.train.keep_checkpoints = 2
    with workdir_lock.WorkdirLock(wd, process_index=0, process_count=1):
      ck = checkpoints.Checkpointer(wd, cfg)
      _, at = ck.restore(checkpoints.abstract_like(make_state(0)))
      for s in range((at or 0) + 1, last + 1):
        ck.save(s, make_state(s, seed=s))
        time.sleep(0.01)
      ck.close()
''')


@pytest.mark.slow
def test_kill_9_during_saves_loses_nothing(tmp_path):
  wd = tmp_path / 'run'
  env = dict(ENV, PYTHONPATH=f'{REPO}{os.pathsep}{REPO / "tests"}',
             XLA_FLAGS='--xla_force_host_platform_device_count=2')
  cmd = [sys.executable, '-c', _WRITER, str(wd), '150']
  # Kills at moments picked from the writer's progress (mid-save or just after a save), 5 to
  # 20 checkpoints ahead each round: the schedule can use at most ~110 of the 150 steps, so all
  # five rounds are planned and each kill finds the writer alive (no clock, no machine speed).
  history = kill_harness.kill_loop(cmd, str(wd), checkpoints=range(1, 151), rounds=5, keep=2,
                                   ahead=(5, 20), margin=10, seed=0, env=env)
  summary = [(r.target, r.phase, r.hit, r.killed, r.steps) for r in history]
  assert [r.killed for r in history] == [True] * 5 + [False], summary
  assert history[-1].returncode == 0, history[-1].stderr_tail
  ck = checkpoints.Checkpointer(wd, tiny.get_config(), keep=2)
  assert ck.all_steps() == [149, 150]
  _assert_nothing_lost(ck, {s: _state(s, seed=s) for s in ck.all_steps()})
  ck.close()
