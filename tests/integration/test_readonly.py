"""Published runs on read-only storage (issue 26): --mode=eval and --mode=sample read them.

A read-only bind mount of a trained workdir (root here; skipped where mounting is not allowed):
sample needs --output_dir (one line saying so), eval prints its results and writes nothing, and
neither needs the workdir's lock file. Before, both died at the lock with an OSError traceback.
"""

import os
import pathlib
import subprocess
import sys

import pytest
from train_helpers import HANG_S, write_npz

from reacgan_jax.evaluation import inception_weights

REPO = pathlib.Path(__file__).resolve().parents[2]
# Three main.py runs that each compile (17 min on the loaded 2-core machine): beyond CI's budget.
pytestmark = pytest.mark.exhaustive


def _main(*args, cwd):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run([sys.executable, str(REPO / 'main.py'), *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=HANG_S)


@pytest.fixture
def read_only(tmp_path):
  """(src, ro): a folder and a read-only bind mount of it."""
  src, ro = tmp_path / 'run', tmp_path / 'published'
  src.mkdir()
  ro.mkdir()
  mount = subprocess.run(['mount', '--bind', str(src), str(ro)], capture_output=True)
  if mount.returncode != 0:
    pytest.skip('cannot bind-mount here (not root?): ' + mount.stderr.decode()[-200:])
  try:
    if subprocess.run(['mount', '-o', 'remount,bind,ro', str(ro)]).returncode != 0:
      pytest.skip('cannot remount read-only here')
    yield src, ro
  finally:
    subprocess.run(['umount', str(ro)], check=False)


def test_eval_and_sample_of_a_read_only_workdir(tmp_path, read_only):
  src, ro = read_only
  npz = write_npz(tmp_path / 'toy.npz')
  weights = inception_weights.save_params(
      tmp_path / 'tiny.msgpack', inception_weights.random_params(width=1 / 16, seed=0), 'random')
  common = [f'--config={REPO}/configs/tiny.py', f'--config.data.npz_path={npz}',
            '--config.data.npz_layout=nhwc', '--config.train.d_updates_per_step=1',
            '--config.eval.num_samples=12', f'--config.eval.inception_weights={weights}',
            '--config.eval.metrics=fid']
  r = _main(*common, f'--workdir={src}', '--config.train.steps=2', '--config.train.eval_every=-1',
            cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  before = sorted(p.relative_to(src) for p in src.rglob('*'))

  r = _main(*common, f'--workdir={ro}', '--mode=sample', cwd=tmp_path)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-3000:]
  assert 'is read-only: add --output_dir=DIR' in r.stderr.strip().splitlines()[-1]

  out = tmp_path / 'samples_out'
  r = _main(*common, f'--workdir={ro}', '--mode=sample', f'--output_dir={out}', cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert (out / 'samples' / 'final_2' / 'grid.png').exists()

  r = _main(*common, f'--workdir={ro}', '--mode=eval', cwd=tmp_path)
  assert r.returncode == 0, r.stderr[-3000:]
  assert 'step 2:' in r.stdout and 'fid' in r.stdout and 'is read-only' in r.stderr
  assert sorted(p.relative_to(src) for p in src.rglob('*')) == before  # nothing written
