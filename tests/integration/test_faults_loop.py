"""Issue 14 through the real CLI loop: kill -9 at random moments, Ctrl-C, two writers, errors.

Library-level faults (checkpoint items, digests, the lock file, validation, the FID command) are
tests/integration/test_faults.py; here main.py runs as a user runs it.
"""

import os
import pathlib
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest
from kill_harness import complete_steps, kill_loop
from train_helpers import HANG_S, tiny_config, write_npz

from reacgan_jax.models import adapter
from reacgan_jax.platform import checkpoints, parallel
from reacgan_jax.train import state

REPO = str(pathlib.Path(__file__).resolve().parents[2])
LIGHT = {'train.d_updates_per_step': 1, 'model.g_attn_block': 0, 'model.d_attn_block': 0}


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  return write_npz(tmp_path_factory.mktemp('data') / 'toy.npz')


@pytest.fixture(scope='module')
def cache(tmp_path_factory):
  # One XLA compilation cache for every process of this module: later rounds load the step.
  return str(tmp_path_factory.mktemp('cache'))


def _cmd(workdir, npz, steps, *extra):
  return [sys.executable, os.path.join(REPO, 'main.py'), f'--config={REPO}/configs/tiny.py',
          f'--workdir={workdir}', f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
          f'--config.train.steps={steps}', '--config.train.eval_every=-1',
          '--config.train.checkpoint_every=2', '--config.train.keep_checkpoints=100',
          '--config.train.sample_every=0', '--config.train.log_every=2',
          *[f'--config.{k}={v}' for k, v in LIGHT.items()], *extra]


def _env(cache):
  return dict(os.environ, JAX_PLATFORMS='cpu', REACGAN_JAX_CACHE=cache,
              XLA_FLAGS='--xla_force_host_platform_device_count=2')


def _restore(workdir, npz, steps, step):
  config = tiny_config(npz, **{'train.steps': steps, 'train.keep_checkpoints': 100,
                               'train.checkpoint_every': 2}, **LIGHT)
  config.train.eval_every = -1
  mesh = parallel.create_mesh(jax.devices()[:2])
  ckpt = checkpoints.Checkpointer(workdir, config)
  try:
    s, _ = ckpt.restore(state.abstract_state(config, adapter.build(config, mesh), mesh), step=step)
  finally:
    ckpt.close()
  return parallel.to_host(s)


def _equal(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


def test_a_bad_value_is_one_line_without_traceback(npz, tmp_path, cache):
  out = subprocess.run(_cmd(tmp_path, npz, 2, '--config.train.batch_size=0'), env=_env(cache),
                       capture_output=True, text=True, timeout=HANG_S)
  assert out.returncode == 1
  assert 'Traceback' not in out.stderr
  assert 'train.batch_size' in out.stderr and 'main.py: error:' in out.stderr


@pytest.mark.exhaustive  # issue 24: 20 restarts, past CI time (CI keeps test_faults kill -9)
def test_kill_9_at_8_moments_of_progress_loses_nothing(npz, tmp_path, cache):
  steps = 40  # 20 checkpoints (checkpoint_every=2)
  straight = str(tmp_path / 'straight')
  subprocess.run(_cmd(straight, npz, steps), env=_env(cache), check=True, timeout=HANG_S,
                 capture_output=True)
  killed = str(tmp_path / 'killed')
  # 8 kills at moments picked from the run's progress (mid-save or just after a save, 1-2
  # checkpoints ahead): at most 3 checkpoints a round, so at least 5 rounds fit before the margin.
  rounds = kill_loop(_cmd(killed, npz, steps), killed, checkpoints=range(2, steps + 1, 2),
                     rounds=8, keep=100, ahead=(1, 2), margin=2, seed=1, env=_env(cache))
  assert all(r.killed for r in rounds[:-1]) and len(rounds) - 1 >= 5, [
      (r.target, r.phase, r.hit, r.killed, r.steps) for r in rounds]
  assert rounds[-1].returncode == 0, rounds[-1].stderr_tail
  left = complete_steps(killed)
  assert left[-1] == steps
  for s in left:  # every checkpoint that survived equals the uninterrupted run's, bit for bit
    _equal(_restore(killed, npz, steps, s), _restore(straight, npz, steps, s))


@pytest.mark.exhaustive  # CI budget (issue 24): the slow suite keeps kill -9 during saves
def test_ctrl_c_saves_and_stops_and_a_second_writer_is_refused(npz, tmp_path, cache):
  workdir = str(tmp_path / 'run')
  proc = subprocess.Popen(_cmd(workdir, npz, 400), env=_env(cache), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  t0 = time.time()
  while 2 not in complete_steps(workdir):
    assert proc.poll() is None and time.time() - t0 < 600
    time.sleep(0.2)
  second = subprocess.run(_cmd(workdir, npz, 400), env=_env(cache), capture_output=True,
                          text=True, timeout=HANG_S)
  assert second.returncode == 1 and 'Traceback' not in second.stderr
  assert 'reacgan.lock' in second.stderr or 'in use' in second.stderr, second.stderr
  proc.send_signal(signal.SIGINT)
  out, _ = proc.communicate(timeout=HANG_S)
  assert proc.returncode == 0, out[-3000:]
  assert 'SIGINT received' in out and 'Traceback' not in out and 'KeyboardInterrupt' not in out
  stopped = max(complete_steps(workdir))
  assert 2 < stopped < 400  # saved where it stopped, long before the end
  assert not os.path.exists(os.path.join(workdir, 'reacgan.lock'))  # released
  # --mode=eval without the Inception weights fails, naming them (it used to exit 0).
  ev = subprocess.run(_cmd(workdir, npz, 400, '--mode=eval',
                           '--config.eval.inception_weights=/nonexistent/inception.msgpack'),
                      env=_env(cache), capture_output=True, text=True, timeout=HANG_S)
  assert ev.returncode == 1 and 'Traceback' not in ev.stderr
  assert '/nonexistent/inception.msgpack' in ev.stderr
