"""The CLI end to end: flag errors name the key; train -> sample -> eval on a tiny run."""

import glob
import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image
from train_helpers import HANG_S, write_npz

REPO = str(pathlib.Path(__file__).resolve().parents[2])


# A stand-in `torch` first on the path: importing it leaves a mark and fails, so a run that
# reaches for torch anywhere (even under `try: import torch`) is seen (issue 27: torch-free path).
_TORCH_TRAP = '''import os
open(os.environ['TORCH_TRAP_MARK'], 'a').write('imported\\n')
raise ImportError('torch imported on the torch-free path')
'''


# TensorFlow unimportable too (it is the `tfds` extra): clu's writer may try it and fall back.
_NO_TENSORFLOW = "raise ImportError('TensorFlow is not installed here (test)')\n"


def _torch_trap(tmp_path):
  trap = tmp_path / 'torch_trap'
  (trap / 'torch').mkdir(parents=True)
  (trap / 'torch' / '__init__.py').write_text(_TORCH_TRAP)
  for name in ('tensorflow', 'tensorflow_datasets'):
    (trap / name).mkdir()
    (trap / name / '__init__.py').write_text(_NO_TENSORFLOW)
  path = os.pathsep.join(p for p in (str(trap), os.environ.get('PYTHONPATH', '')) if p)
  return {'PYTHONPATH': path, 'TORCH_TRAP_MARK': str(tmp_path / 'torch_imported')}


def _main(*args, cwd=None, cache=None, extra_env=None):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  env.update(extra_env or {})
  if cache is not None:
    env['REACGAN_JAX_CACHE'] = str(cache)
    env.pop('REACGAN_JAX_XLA_CACHE', None)  # the suite's shared XLA cache (conftest): not here
  return subprocess.run([sys.executable, os.path.join(REPO, 'main.py'), *args], env=env,
                        cwd=cwd, capture_output=True, text=True, timeout=HANG_S)


def test_unknown_or_mistyped_config_key_is_named(tmp_path):
  # Run from another directory: main.py must make `configs` importable by itself.
  r = _main('--config=configs/tiny.py', '--config.train.stepz=3', f'--workdir={tmp_path}',
            cwd=REPO)
  assert r.returncode != 0 and 'stepz' in r.stderr and 'Traceback' not in r.stderr
  r = _main(f'--config={REPO}/configs/tiny.py', '--config.train.steps=many',
            f'--workdir={tmp_path}', cwd=str(tmp_path))
  assert r.returncode != 0 and 'steps' in r.stderr and 'many' in r.stderr


def test_sampling_a_class_the_model_lacks_is_one_line(tmp_path):
  r = _main('--config=configs/tiny.py', f'--workdir={tmp_path}', '--mode=sample',
            '--classes=0,12', cwd=REPO)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert ("main.py: error: --classes='0,12': 12 is out of range: this model has 10 classes "
          '(ids 0-9).') in r.stderr


@pytest.mark.slow
def test_train_then_sample_then_eval(tmp_path):
  npz = write_npz(tmp_path / 'toy.npz')
  workdir = str(tmp_path / 'run')
  common = [f'--config={REPO}/configs/tiny.py', f'--workdir={workdir}',
            f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
            '--config.train.steps=2', '--config.train.d_updates_per_step=1',
            '--config.train.eval_every=-1', '--config.eval.num_samples=12']
  # A private cache: the toy reference statistics must not replace the user's real ones. The
  # converted Inception weights are linked in when the user's cache has them (else converted).
  cache = tmp_path / 'cache'
  cache.mkdir()
  weights = pathlib.Path(os.environ.get('REACGAN_JAX_CACHE', '~/.cache/reacgan_jax')).expanduser()
  weights = weights / 'inception_fid_2015-12-05.msgpack'
  if weights.exists():
    (cache / weights.name).symlink_to(weights)
  # Train with torch and TensorFlow unreachable; the evaluation below too (and converts the
  # Inception weights when the cache has none).
  trap = _torch_trap(tmp_path)
  r = _main(*common, cwd=str(tmp_path), cache=cache, extra_env=trap)
  assert r.returncode == 0, r.stderr[-3000:]
  assert not os.path.exists(trap['TORCH_TRAP_MARK']), 'training imported torch'
  assert 'img/s' in r.stderr
  assert os.path.isdir(os.path.join(workdir, 'checkpoints', '2'))
  # train.compilation_cache (default on): the compiled step is kept under the cache dir.
  assert any(p.name.startswith('jit_train_step') for p in (cache / 'xla').iterdir())

  r = _main(*common, '--mode=sample', cwd=str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  out = os.path.join(workdir, 'samples', 'final_2')
  grid = np.asarray(Image.open(os.path.join(out, 'grid.png')))
  # tiny: 4 classes x 4 columns of 32x32 tiles with 1-pixel separators.
  assert grid.shape == (4 * 33 + 1, 4 * 33 + 1, 3)
  assert os.path.exists(os.path.join(out, 'interpolation.png'))
  with np.load(os.path.join(out, 'samples.npz')) as f:
    assert f['images'].shape == (12, 32, 32, 3) and f['images'].dtype == np.uint8
    assert f['labels'].shape == (12,) and f['labels'].max() < 10
    assert f['images'].std() > 0  # not a constant image

  # Aimed: one PNG per (seed, class), named by both, and their npz (issue 27).
  r = _main(*common, '--mode=sample', '--seeds=3,1', '--classes=0,9', '--truncation=0.5',
            cwd=str(tmp_path))
  assert r.returncode == 0, r.stderr[-3000:]
  aimed = os.path.join(out, 'seeds')
  assert sorted(p for p in os.listdir(aimed) if p.startswith('seed')) == [
      'seed0001_class000.png', 'seed0001_class009.png', 'seed0003_class000.png',
      'seed0003_class009.png']
  with np.load(os.path.join(aimed, 'samples.npz')) as f:
    assert f['images'].shape == (4, 32, 32, 3)
    assert list(f['seeds']) == [3, 1, 3, 1] and list(f['labels']) == [0, 0, 9, 9]

  r = _main(*common, '--mode=eval', cwd=str(tmp_path), cache=cache, extra_env=trap)
  assert r.returncode == 0, r.stderr[-3000:]
  assert not os.path.exists(trap['TORCH_TRAP_MARK']), 'evaluation imported torch'
  assert 'step 2:' in r.stdout
  # The metrics also go to tensorboard and metrics.jsonl, after the training records.
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    records = [json.loads(line) for line in f]
  assert any('d_loss' in r for r in records)
  assert records[-1]['step'] == 2 and np.isfinite(records[-1]['eval/fid'])
  assert len(glob.glob(os.path.join(workdir, 'events.out.tfevents.*'))) >= 2
