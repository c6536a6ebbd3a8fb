"""--mode=sample from a checkpoint: aimed sampling (--seeds, --classes, --truncation).

The checkpoint holds a freshly initialised tiny state (no training step is compiled): only
which images come out, and under which names, is tested here; tests/test_sampling.py checks
that a seed's pixels do not depend on the batch or the device count.
"""

import os

import numpy as np
import pytest

from configs import tiny, tiny_stylegan2
from reacgan_jax import errors
from reacgan_jax.models import adapter as adapter_lib
from reacgan_jax.platform import checkpoints, parallel
from reacgan_jax.train import modes
from reacgan_jax.train import state as state_lib


def _workdir(tmp_path, config):
  mesh = parallel.create_mesh()
  st = state_lib.init_state(config, adapter_lib.build(config, mesh), mesh)
  ck = checkpoints.Checkpointer(str(tmp_path), config)
  ck.save(3, st)
  ck.close()
  return str(tmp_path)


@pytest.mark.exhaustive  # CI budget (issue 24): the slow suite's test_main samples by seed too
@pytest.mark.parametrize('family', ['biggan', 'stylegan2'])
def test_sample_checkpoint_writes_one_image_per_seed_and_class(tmp_path, family):
  config = (tiny_stylegan2 if family == 'stylegan2' else tiny).get_config()
  config.eval.batch_size = 8
  workdir = _workdir(tmp_path, config)
  paths = modes.sample_checkpoint(config, workdir, seeds='3,1', classes='0,9')
  out = os.path.join(workdir, 'samples', 'final_3', 'seeds')
  assert paths['npz'] == os.path.join(out, 'samples.npz')
  assert sorted(p for p in os.listdir(out) if p.startswith('seed')) == [
      'seed0001_class000.png', 'seed0001_class009.png', 'seed0003_class000.png',
      'seed0003_class009.png']
  with np.load(paths['npz']) as f:
    images, seeds, labels = f['images'], f['seeds'], f['labels']
  assert list(seeds) == [3, 1, 3, 1] and list(labels) == [0, 0, 9, 9]
  assert not (images[0] == images[1]).all()  # two seeds, two images
  # Truncation reaches G. StyleGAN2 psi 0: w = w_avg for every seed, and the fresh G's noise
  # strengths are 0, so the seeds' images of a class become one. BigGAN: z in [-1e-3, 1e-3]
  # changes the images (the fresh G saturates at 0/255, so no closeness can be asked of it).
  t = 0.0 if family == 'stylegan2' else 1e-3
  paths = modes.sample_checkpoint(config, workdir, seeds='3,1', classes='0,9', truncation=t)
  with np.load(paths['npz']) as f:
    truncated = f['images']
  if family == 'stylegan2':
    assert (truncated[0] == truncated[1]).all() and (truncated[2] == truncated[3]).all()
  else:
    assert not (truncated == images).all()


def test_bad_aims_fail_before_reading_the_workdir(tmp_path):
  config = tiny.get_config()
  missing = str(tmp_path / 'none')
  with pytest.raises(errors.InputError, match='12 is out of range'):
    modes.sample_checkpoint(config, missing, classes='0,12')
  with pytest.raises(errors.InputError, match='--seeds'):
    modes.sample_checkpoint(config, missing, seeds='x')
  with pytest.raises(errors.ConfigError, match='must be > 0'):
    modes.sample_checkpoint(config, missing, truncation=-1.0)
