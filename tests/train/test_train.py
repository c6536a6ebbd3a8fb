"""The trainer: device-count independence, EMA, NaN guard, logs/grids/compile count, resume.

Tiny configs (configs/tiny.py) on a small synthetic npz written to tmp_path.
"""

import glob
import json
import logging
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from train_helpers import HANG_S, tiny_config, write_npz

from reacgan_jax.losses import registry as objectives
from reacgan_jax.models import adapter
from reacgan_jax.platform import checkpoints, parallel, writers
from reacgan_jax.train import loop as train
from reacgan_jax.train import modes, state, step

REPO = str(pathlib.Path(__file__).resolve().parents[2])
# Lighter tiny model for the subprocess tests (compile time dominates on CPU).
LIGHT = {'train.d_updates_per_step': 1, 'model.g_attn_block': 0, 'model.d_attn_block': 0}


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  return write_npz(tmp_path_factory.mktemp('data') / 'toy.npz')


def _batch(config, n_d, seed=0):
  rng = np.random.default_rng(seed)
  B, s = config.train.batch_size, config.data.image_size
  return {'image': rng.uniform(-1, 1, (n_d, B, s, s, 3)).astype(np.float32),
          'label': rng.integers(0, config.data.num_classes, (n_d, B)).astype(np.int32)}


def _one_step(config, devices, batch):
  mesh = parallel.create_mesh(devices)
  model = adapter.build(config, mesh)
  s = state.init_state(config, model, mesh)
  s, metrics = step.compile_train_step(config, model, mesh)(s, parallel.shard_batch(batch, mesh))
  return parallel.to_host(s), parallel.to_host(metrics)


@pytest.mark.parametrize('cond', [
    # CI's budget (issue 24): the global-batch D2D-CE in the slow suite, the others exhaustive.
    pytest.param('none', marks=pytest.mark.exhaustive),
    pytest.param('acgan', marks=pytest.mark.exhaustive),
    pytest.param('pd', marks=pytest.mark.exhaustive),
    pytest.param('reacgan', marks=pytest.mark.slow)])
def test_one_step_on_1_and_8_devices_agree(npz, cond):
  # Same global batch and seed, synchronised BN: the 8-device step is the 1-device step up to
  # float32 reduction order. Adam's first step is lr * g / (|g| + eps): with the config's
  # eps = 1e-6 it turns float-noise gradients (a conv bias right before BN has true gradient
  # 0 and a computed one of ~1e-7) into +-lr steps whose sign is noise. eps = 1 makes the step
  # ~lr * g, so parameter differences measure gradient differences. Tolerance: 1e-6 absolute
  # plus 1e-5 relative (Adam's first moment holds raw gradients up to ~20, where one float32
  # ulp is 2e-6) on every parameter, SN vector, optimiser moment and EMA leaf, while one step
  # moves the parameters by up to ~1e-3 (checked below).
  config = tiny_config(npz, **{'model.cond_method': cond, 'train.d_updates_per_step': 1,
                               'train.ema_start': 0, 'optim.eps': 1.0, 'optim.g_lr': 0.01,
                               'optim.d_lr': 0.01})
  batch = _batch(config, 1)
  s1, m1 = _one_step(config, jax.devices()[:1], batch)
  s8, m8 = _one_step(config, jax.devices(), batch)
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(s1)]
  for path, a, b in zip(paths, jax.tree.leaves(s1), jax.tree.leaves(s8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-6, err_msg=k)
  # The step really trained: parameters moved, losses are finite.
  mesh1 = parallel.create_mesh(jax.devices()[:1])
  init = state.init_state(config, adapter.build(config, mesh1), mesh1)
  moved = [np.max(np.abs(a - np.asarray(b))) for a, b in
           zip(jax.tree.leaves(s1.d.params), jax.tree.leaves(init.d.params), strict=True)]
  assert max(moved) > 1e-5
  assert all(np.isfinite(v) for v in m1.values())
  expected = {'d_loss', 'd_adv', 'd_cond', 'g_loss', 'g_adv', 'g_cond', 'd_acc_real', 'd_acc_fake'}
  assert expected <= set(m1)
  if cond == 'none' or cond == 'pd':
    assert m1['d_cond'] == 0 and m1['g_cond'] == 0
  else:
    assert m1['d_cond'] > 0 and m1['g_cond'] > 0


@pytest.mark.slow
def test_ema_copies_before_start_then_averages(npz):
  config = tiny_config(npz, **{'train.ema_start': 1, 'train.ema_decay': 0.75,
                               'train.d_updates_per_step': 1})
  mesh = parallel.create_mesh()
  model = adapter.build(config, mesh)
  s = state.init_state(config, model, mesh)
  train_step = step.compile_train_step(config, model, mesh)
  batch = parallel.shard_batch(_batch(config, 1), mesh)
  s, _ = train_step(s, batch)  # step index 0 < ema_start: plain copy
  s1 = parallel.to_host(s)
  for a, b in zip(jax.tree.leaves(s1.ema.params), jax.tree.leaves(s1.g.params), strict=True):
    np.testing.assert_array_equal(a, b)
  s, _ = train_step(s, batch)  # step index 1: ema = 0.75 ema + 0.25 params
  s2 = parallel.to_host(s)
  for e1, e2, p2 in zip(jax.tree.leaves((s1.ema.params, s1.ema.collections)),
                        jax.tree.leaves((s2.ema.params, s2.ema.collections)),
                        jax.tree.leaves((s2.g.params, s2.g.collections)), strict=True):
    np.testing.assert_allclose(e2, 0.75 * e1.astype(np.float64) + 0.25 * p2, rtol=1e-6, atol=1e-7)


def test_tiny_run_writes_scalars_grids_progress_and_compiles_once(npz, tmp_path, caplog):
  from tensorflow.core.util import event_pb2  # noqa: PLC0415 (TF is a clu dependency)
  from tensorflow.python.lib.io import tf_record  # noqa: PLC0415

  # The one default (not slow) trainer test: XLA compiles of the step dominate (~10-60 s each
  # on a busy 2-core CPU), so it uses one D update and no attention blocks.
  config = tiny_config(npz, **{'train.steps': 4, 'train.log_every': 2, 'train.sample_every': 2,
                               'train.checkpoint_every': 2, 'train.d_updates_per_step': 1,
                               'model.g_attn_block': 0, 'model.d_attn_block': 0})
  workdir = str(tmp_path / 'run')
  jax.config.update('jax_log_compiles', True)
  try:
    with caplog.at_level(logging.DEBUG):
      train.train_and_evaluate(config, workdir)
  finally:
    jax.config.update('jax_log_compiles', False)
  messages = [r.getMessage() for r in caplog.records]
  compiles = [m for m in messages if 'Finished XLA compilation of jit(train_step)' in m]
  assert len(compiles) == 1, compiles  # steps 2-4 reuse the step-1 executable
  progress = [m for m in messages if m.startswith('step 4/4')]
  assert progress and 'img/s' in progress[0] and 'ETA' in progress[0]
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_2.png'))
  assert os.path.exists(os.path.join(workdir, 'samples', 'step_4.png'))
  tags = set()
  for f in glob.glob(os.path.join(workdir, 'events.out.tfevents.*')):
    for rec in tf_record.tf_record_iterator(f):
      tags |= {v.tag for v in event_pb2.Event.FromString(rec).summary.value}
  for t in ('d_loss', 'd_adv', 'd_cond', 'g_loss', 'g_adv', 'g_cond', 'd_acc_real', 'd_acc_fake',
            'img_per_sec', 'samples'):
    assert t in tags, (t, tags)
  assert checkpoints.list_checkpoint_steps(workdir) == [2, 4]
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  logged = [r for r in records if 'd_loss' in r]
  assert [r['step'] for r in logged] == [2, 4]
  assert all(np.isfinite(r['g_loss']) and r['img_per_sec'] >= 0 for r in logged)


def test_writer_without_tensorflow_logs_jsonl_and_truncates_on_resume(tmp_path, monkeypatch):
  # A bare accelerator image has no TensorFlow, so clu's writers cannot be imported there.
  import clu  # noqa: PLC0415

  monkeypatch.setitem(sys.modules, 'clu.metric_writers', None)
  monkeypatch.delattr(clu, 'metric_writers', raising=False)  # set by an earlier import
  workdir = str(tmp_path)
  w = writers.create_writer(workdir, 0)  # tensorboard events by writers.TensorboardWriter
  assert any(isinstance(x, writers.TensorboardWriter) for x in w._writers)
  for k in (1, 2, 3):
    w.write_scalars(k, {'d_loss': float(k)})
  w.close()
  with open(os.path.join(workdir, 'metrics.jsonl'), 'a') as f:
    f.write('{"step": 4, "d_lo')  # a crash mid-write
  w = writers.create_writer(workdir, 2)  # resumed from the step-2 checkpoint
  w.write_scalars(3, {'d_loss': 30.0})
  w.close()
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert records == [{'step': 1, 'd_loss': 1.0}, {'step': 2, 'd_loss': 2.0},
                     {'step': 3, 'd_loss': 30.0}]
  assert glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))


@pytest.mark.slow
def test_nan_stops_with_step_and_last_good_checkpoint(npz, tmp_path):
  # A learning rate of 1e30 sends the weights to ~1e30 after the first update, so step 2's
  # losses overflow. Nothing non-finite may be saved.
  config = tiny_config(npz, **{'train.steps': 4, 'train.log_every': 2,
                               'train.checkpoint_every': 4, 'optim.g_lr': 1e30,
                               'optim.d_lr': 1e30, 'train.sample_every': 0})
  workdir = str(tmp_path / 'nan')
  with pytest.raises(FloatingPointError, match=r'at step [12]\. Last good checkpoint: none'):
    train.train_and_evaluate(config, workdir)
  assert checkpoints.list_checkpoint_steps(workdir) == []


def _run_cli(workdir, npz, steps, extra=(), wait=True):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  cmd = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={REPO}/configs/tiny.py',
         f'--workdir={workdir}', f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
         f'--config.train.steps={steps}', '--config.train.eval_every=-1',
         '--config.train.checkpoint_every=5', '--config.train.sample_every=0',
         '--config.train.log_every=5', *[f'--config.{k}={v}' for k, v in LIGHT.items()], *extra]
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  if wait:
    out, _ = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, out[-3000:]
  return proc


def _final(workdir, config):
  mesh = parallel.create_mesh(jax.devices()[:2])
  s, at = modes.load_state(config, workdir, mesh, adapter.build(config, mesh))
  return parallel.to_host(s), at


def _wait_for_checkpoint(workdir, step, proc, timeout=HANG_S):
  t0 = time.time()
  while step not in checkpoints.list_checkpoint_steps(workdir):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
    assert time.time() - t0 < timeout
    time.sleep(0.2)


@pytest.fixture(scope='module')
def straight_run(npz, tmp_path_factory):
  """20 uninterrupted steps through the CLI: (final host state, step)."""
  workdir = str(tmp_path_factory.mktemp('straight'))
  _run_cli(workdir, npz, 20)
  return _final(workdir, tiny_config(npz, **{'train.steps': 20}, **LIGHT))


@pytest.mark.parametrize('sig', [pytest.param(signal.SIGKILL, marks=pytest.mark.slow),
                                 # SIGTERM's save-and-stop: exhaustive (CI budget, issue 24)
                                 pytest.param(signal.SIGTERM, marks=pytest.mark.exhaustive)])
def test_killed_and_resumed_run_is_bit_identical(npz, tmp_path, sig, straight_run):
  a, step_a = straight_run
  resumed = str(tmp_path / 'resumed')
  proc = _run_cli(resumed, npz, 20, wait=False)
  _wait_for_checkpoint(resumed, 10, proc)
  proc.send_signal(sig)
  out, _ = proc.communicate(timeout=HANG_S)
  if sig == signal.SIGTERM:
    assert proc.returncode == 0, out[-3000:]
    assert 'after SIGTERM' in out
  assert max(checkpoints.list_checkpoint_steps(resumed)) < 20  # it really stopped early
  _run_cli(resumed, npz, 20)
  b, step_b = _final(resumed, tiny_config(npz, **{'train.steps': 20}, **LIGHT))
  assert step_a == step_b == 20
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_linear_decay_reaches_zero_at_the_last_update_of_each_optimizer(npz):
  # D takes d_updates_per_step Adam updates per train step, so its schedule spans
  # steps * d_updates_per_step updates; G's spans steps.
  config = tiny_config(npz, **{'optim.schedule': 'linear_decay', 'train.steps': 10,
                               'train.d_updates_per_step': 3, 'optim.g_lr': 1.0,
                               'optim.d_lr': 2.0})
  assert state._learning_rate(config, 1.0, 1)(5) == pytest.approx(0.5)
  assert state._learning_rate(config, 2.0, 3)(15) == pytest.approx(1.0)
  assert state._learning_rate(config, 2.0, 3)(30) == pytest.approx(0.0)
  config.optim.schedule = 'cosine'
  with pytest.raises(ValueError, match=r'config\.optim\.schedule'):
    state.make_optimizers(config)


@pytest.mark.exhaustive  # CI budget (issue 24); the slow suite's 8-device behaviour case
def test_per_device_bn_is_grouped_bn(npz):  # biggan-pd-bn_per_device pins the same path
  # config.train.bn_sync=False on 8 devices = BN statistics per device = groups of B/8
  # consecutive samples, which a 1-device run reproduces with bn_groups=8. It must differ
  # from synchronised BN (otherwise the flag would do nothing).
  config = tiny_config(npz, **{'train.bn_sync': False, 'train.d_updates_per_step': 1,
                               'optim.eps': 1.0, 'train.batch_size': 16})
  batch = _batch(config, 1)
  s8, _ = _one_step(config, jax.devices(), batch)
  mesh1 = parallel.create_mesh(jax.devices()[:1])
  m = adapter.build(config, mesh1)
  m = adapter.ModelAdapter(config, m.generator.clone(bn_groups=8),
                           m.discriminator.clone(bn_groups=8))
  s = state.init_state(config, m, mesh1)
  s1 = parallel.to_host(step.compile_train_step(config, m, mesh1)(
      s, parallel.shard_batch(batch, mesh1))[0])
  for a, b in zip(jax.tree.leaves(s1.g.collections), jax.tree.leaves(s8.g.collections),
                  strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)
  config.train.bn_sync = True
  s_sync, _ = _one_step(config, jax.devices(), batch)
  assert any(not np.allclose(a, b, atol=1e-6) for a, b in
             zip(jax.tree.leaves(s_sync.g.collections), jax.tree.leaves(s8.g.collections),
                 strict=True))


@pytest.mark.parametrize('knobs,expect', [
    ({}, dict(margin_pos=0.98, margin_neg=None, false_negative_removal=True)),
    ({'loss.margins': False}, dict(margin_pos=1.0, margin_neg=-1.0, false_negative_removal=True)),
    ({'loss.false_negative_removal': False},
     dict(margin_pos=0.98, margin_neg=None, false_negative_removal=False)),
    ({'loss.margin_neg': 0.3}, dict(margin_pos=0.98, margin_neg=0.3, false_negative_removal=True)),
])
def test_cond_loss_passes_the_ablation_knobs_to_d2d_ce(npz, knobs, expect):
  import types  # noqa: PLC0415

  from reacgan_jax.losses import gan as losses  # noqa: PLC0415

  config = tiny_config(npz, **{'model.cond_method': 'reacgan', 'loss.temperature': 0.3,
                               'loss.margin_pos': 0.98}, **knobs)
  rng = np.random.default_rng(0)
  out = types.SimpleNamespace(embed=rng.normal(size=(12, 8)).astype(np.float32),
                              proxy=rng.normal(size=(12, 8)).astype(np.float32))
  labels = rng.integers(0, 3, size=12)
  got = objectives.make_cond_loss(config)(out, labels)
  want = losses.d2d_ce(out.embed, out.proxy, labels, temperature=0.3, **expect)
  np.testing.assert_allclose(got, want, rtol=1e-6)
  others = [dict(expect, margin_pos=0.5), dict(expect, false_negative_removal=not
                                                  expect['false_negative_removal'])]
  for other in others:  # the knob matters on this batch, so the check above can fail
    assert abs(float(losses.d2d_ce(out.embed, out.proxy, labels, temperature=0.3, **other))
               - float(got)) > 1e-4
