"""ADA through the real CLI loop (issue 16): p is checkpointed and logged, kill -9 keeps it exact.

A tiny ADA run (configs/tiny.py, LIGHT model, 2 fake devices, global batch 8) where p moves at
every adjustment: initial_p 0.2 and target 0.5 (so p moves up or down, never sits clipped at 0),
kimg 1 and interval 2 (p moves by 2 * 8 / 1000 = 0.016 every other step). Checkpoints fall on
steps where the accumulator holds one step's signs (adjustments run at step indices 0, 2, ...,
i.e. after logged steps 1, 3, ...), so a resume that lost the accumulator would move p
differently at its next adjustment.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from kill_harness import complete_steps
from train_helpers import HANG_S, tiny_config, write_npz

from reacgan_jax.models import adapter
from reacgan_jax.platform import checkpoints, parallel
from reacgan_jax.train import state

REPO = str(pathlib.Path(__file__).resolve().parents[2])
STEPS, KILL_AFTER, BATCH = 12, 6, 8
OVERRIDES = {'train.d_updates_per_step': 1, 'model.g_attn_block': 0, 'model.d_attn_block': 0,
             'train.augment': 'ada', 'ada.apply_ada': True, 'ada.initial_p': 0.2,
             'ada.target': 0.5, 'ada.kimg': 1, 'ada.interval': 2}


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  return write_npz(tmp_path_factory.mktemp('data') / 'toy.npz')


@pytest.fixture(scope='module')
def env(tmp_path_factory):
  # One XLA compilation cache for every process of this module: later runs load the step.
  return dict(os.environ, JAX_PLATFORMS='cpu', REACGAN_JAX_CACHE=str(tmp_path_factory.mktemp('c')),
              XLA_FLAGS='--xla_force_host_platform_device_count=2')


def _cmd(workdir, npz):
  return [sys.executable, os.path.join(REPO, 'main.py'), f'--config={REPO}/configs/tiny.py',
          f'--workdir={workdir}', f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
          f'--config.train.steps={STEPS}', '--config.train.eval_every=-1',
          '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=100',
          '--config.train.sample_every=0', '--config.train.log_every=1',
          *[f'--config.{k}={v}' for k, v in OVERRIDES.items()]]


def _run(workdir, npz, env):
  out = subprocess.run(_cmd(workdir, npz), env=env, capture_output=True, text=True, timeout=HANG_S)
  assert out.returncode == 0, out.stderr[-3000:]


def _restore(workdir, npz, step):
  config = tiny_config(npz, **{'train.steps': STEPS, 'train.keep_checkpoints': 100,
                               'train.checkpoint_every': 2}, **OVERRIDES)
  mesh = parallel.create_mesh(jax.devices()[:2])
  ckpt = checkpoints.Checkpointer(workdir, config)
  try:
    s, _ = ckpt.restore(state.abstract_state(config, adapter.build(config, mesh), mesh), step=step)
  finally:
    ckpt.close()
  return parallel.to_host(s)


def _logged(workdir):
  """{step: record} of metrics.jsonl's scalar lines (the writer truncates it on resume)."""
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r for r in map(json.loads, f) if 'd_loss' in r}


@pytest.fixture(scope='module')
def straight(npz, env, tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('straight'))
  _run(workdir, npz, env)
  return workdir


@pytest.mark.slow
def test_p_is_checkpointed_and_logged_and_follows_the_logged_r_t(npz, straight):
  logged = _logged(straight)
  assert sorted(logged) == list(range(1, STEPS + 1))
  ps = []
  for s in complete_steps(straight):  # the p saved at step s is the p logged at step s
    aug = _restore(straight, npz, s).extra['augment']
    assert np.float32(logged[s]['ada_p']) == aug.p, (s, logged[s]['ada_p'], aug.p)
    assert int(aug.count) == BATCH and abs(int(aug.sign_sum)) <= BATCH  # one step accumulated
    ps.append(float(aug.p))
  assert len(set(ps)) > 2  # p really moved
  # The rule replayed in float64 from the logged per-step r_t (d_updates_per_step = 1): an
  # adjustment after step indices 0, 2, 4, ... with the signs of the steps since the last one.
  p, pending = 0.2, []
  for s in range(1, STEPS + 1):
    rt = logged[s]['ada_rt']
    assert -1 <= rt <= 1 and rt * BATCH == round(rt * BATCH)  # a mean of BATCH signs
    pending.append(rt)
    if (s - 1) % 2 == 0:
      r = np.mean(pending)
      p = min(1.0, max(0.0, p + np.sign(r - 0.5) * len(pending) * BATCH / 1000))
      pending = []
    assert logged[s]['ada_p'] == pytest.approx(p, abs=1e-6), s


@pytest.mark.slow
def test_kill_9_and_resume_keeps_p_accumulator_and_params_bit_exact(npz, env, straight, tmp_path):
  killed = str(tmp_path / 'killed')
  proc = subprocess.Popen(_cmd(killed, npz), env=env, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    t0 = time.time()
    while KILL_AFTER not in complete_steps(killed):
      assert proc.poll() is None, proc.communicate()[1][-3000:]
      assert time.time() - t0 < 900
      time.sleep(0.002)  # progress, not a clock, decides the kill
  finally:
    if proc.poll() is None:
      os.killpg(proc.pid, signal.SIGKILL)  # as tests/kill_harness.py does
    proc.communicate()
  assert proc.returncode == -signal.SIGKILL
  at_kill = complete_steps(killed)
  assert KILL_AFTER <= max(at_kill) < STEPS, at_kill  # it really stopped early
  resumed_from = _restore(killed, npz, max(at_kill)).extra['augment']
  assert int(resumed_from.count) > 0 and float(resumed_from.p) != 0.2  # state worth restoring
  _run(killed, npz, env)
  assert complete_steps(killed)[-1] == STEPS
  for s in complete_steps(killed):  # every checkpoint, before and after the kill, bit for bit
    a, b = _restore(straight, npz, s), _restore(killed, npz, s)
    assert int(a.step) == int(b.step) == s
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
      np.testing.assert_array_equal(x, y)
  # The resumed run's log of p and r_t continues the straight run's exactly.
  want, got = _logged(straight), _logged(killed)
  assert [(want[s]['ada_p'], want[s]['ada_rt']) for s in want] == [
      (got[s]['ada_p'], got[s]['ada_rt']) for s in want]
