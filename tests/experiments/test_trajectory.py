"""experiments/trajectory.py (issue 25): our step beside StudioGAN's, same start, data and noise.

Default suite (seconds, no StudioGAN needed): the latents the harness hands StudioGAN are the
ones our step draws (recorded from the step itself), the real batches are the float32 arrays
StudioGAN's CIFAR loader makes, the distance measure. Slow and skipped without a StudioGAN
checkout ($REACGAN_JAX_STUDIOGAN_SRC): two steps of every system at tiny widths against
StudioGAN in float64, once faithful and once with a porting error planted on our side.
"""

import json
import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest
from train_helpers import HANG_S, tiny_config, write_npz

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'experiments'))

import same_budget  # noqa: E402
import trajectory  # noqa: E402

from reacgan_jax.models import adapter as adapter_lib  # noqa: E402
from reacgan_jax.train import state as state_lib  # noqa: E402
from reacgan_jax.train import step as step_lib  # noqa: E402

STUDIOGAN_SRC = os.environ.get('REACGAN_JAX_STUDIOGAN_SRC') or '/work/studiogan/src'
needs_studiogan = pytest.mark.skipif(
    not os.path.isfile(os.path.join(STUDIOGAN_SRC, 'worker.py')),
    reason=f'no StudioGAN checkout at {STUDIOGAN_SRC}: set REACGAN_JAX_STUDIOGAN_SRC')


def test_the_draws_handed_over_are_the_ones_our_step_makes(tmp_path):
  config = tiny_config(write_npz(tmp_path / 'toy.npz'), **{'train.d_updates_per_step': 2,
                                                      'model.g_attn_block': 0,
                                                      'model.d_attn_block': 0})
  model = adapter_lib.build(config)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(3))
  state = state.replace(step=state.step + 5)  # a later step: the key folds the step in
  taken = []
  sample_prior = model.sample_prior

  def recording(key, n):
    z, y = sample_prior(key, n)
    taken.append((z, y))
    return z, y

  model.sample_prior = recording
  n_d, batch = 2, config.train.batch_size
  real = {'image': np.zeros((n_d, batch, 32, 32, 3), np.float32),
          'label': np.zeros((n_d, batch), np.int32)}
  step_fn = step_lib.make_train_step(config, model)

  def draws_of_the_step(state, real):
    taken.clear()
    step_fn(state, real, jax.random.fold_in(state.rng, state.step))
    return list(taken)  # the step's own draws, as outputs (XLA drops the rest of the step)

  taken = jax.jit(draws_of_the_step)(state, real)
  model.sample_prior = sample_prior
  want = trajectory.our_draws(model, state, n_d, batch)
  assert len(taken) == len(want) == n_d + 1
  for (z, y), (wz, wy) in zip(taken, want, strict=True):
    np.testing.assert_array_equal(z, wz)
    np.testing.assert_array_equal(y, wy)
  assert not np.array_equal(want[0][0], want[1][0])  # each update its own draw


def test_real_batches_are_studiogans_loader_arrays_in_file_order():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (10, 32, 32, 3), dtype=np.uint8)
  labels = rng.integers(0, 10, 10)
  x, y = trajectory.real_batches(images, labels, step=1, n_d=2, batch=3)
  assert x.shape == (2, 3, 32, 32, 3) and x.dtype == np.float32 and y.shape == (2, 3)
  loader = same_budget.NpzCifar10(images, labels, random_flip=False)
  order = [6, 7, 8, 9, 0, 1]  # step 1 of 6-image steps over 10 images: wraps around
  for k, i in enumerate(order):
    img, lab = loader[i]
    np.testing.assert_array_equal(x.reshape(6, 32, 32, 3)[k], img.numpy().transpose(1, 2, 0))
    assert y.reshape(6)[k] == lab


def test_distance_is_relative_and_names_the_leaf_that_differs_most():
  a = {'w': np.ones(4), 'b': np.zeros(2)}
  assert trajectory.distance(a, a) == {'rel': 0.0, 'worst': ('', 0.0)}
  b = {'w': np.ones(4), 'b': np.array([0.0, 1.0])}
  d = trajectory.distance(a, b)  # ||a - b|| = 1, ||b|| = sqrt(5)
  assert d['rel'] == pytest.approx(5 ** -0.5) and d['worst'] == ("['b']", 1.0)
  with pytest.raises(RuntimeError, match='trees differ'):
    trajectory.distance(a, {'w': np.ones(4)})


@needs_studiogan
@pytest.mark.parametrize('plant', [pytest.param(None, marks=pytest.mark.slow),
                                   pytest.param('loss.margin_pos=0.9',
                                                marks=pytest.mark.exhaustive)])
def test_our_first_step_is_as_close_to_studiogan_float64_as_its_own_float32(plant, tmp_path,
                                                                          cifar10_npz):
  """Two steps at tiny widths; StudioGAN in float64 is the reference. A porting error planted on
  our side (a D2D-CE margin, --ours_override) must put ours far from it: the test can fail."""
  out = tmp_path / 'traj.json'
  tiny = ['--override', 'model.g_conv_dim=8', '--override', 'model.d_conv_dim=8',
          '--override', 'model.shared_dim=16', '--override', 'model.embed_dim=16',
          '--override', 'model.z_dim=16', '--override', 'train.batch_size=8']
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run(
      [sys.executable, str(ROOT / 'experiments' / 'trajectory.py'), '--studiogan_src',
       STUDIOGAN_SRC, '--steps', '2', '--control', 'ulp', '--data', str(cifar10_npz), '--out',
       str(out), *tiny, *(['--ours_override', plant] if plant else [])],
      capture_output=True, text=True, timeout=HANG_S, env=env, cwd=ROOT)
  assert proc.returncode == 0, proc.stderr[-3000:]
  o = json.loads(out.read_text())
  assert o['reference'] == 'studiogan_float64' and len(o['records']) == 2
  # The start: StudioGAN's weights, converted exactly, and the float64 copy the same weights.
  assert all(d['rel'] == 0 for side in o['start'].values() for d in side.values())
  first = o['records'][0]
  d = first['to_reference']
  # D after its two updates of step 1: float32 rounding, converted back to float32 for the
  # comparison (~3e-8 relative). Ours within 3x of StudioGAN float32's own distance (+ that
  # conversion rounding): a faithful port; a planted margin moves D's params ~50x further.
  close = [k for k in ('d.params', 'd.sn', 'g.stats')
           if d['ours'][k]['rel'] <= 3 * d['studiogan'][k]['rel'] + 1e-7]
  g_loss = first['g_loss']
  if plant is None:
    assert close == ['d.params', 'd.sn', 'g.stats'], d
    assert g_loss['ours'] == pytest.approx(g_loss['studiogan_float64'], rel=1e-4)
  else:
    assert 'd.params' not in close, d
    assert g_loss['ours'] != pytest.approx(g_loss['studiogan_float64'], rel=1e-3)
  # Our own initialisation (seed 0) against StudioGAN's: the same distribution (orthogonal
  # weights, zero biases): every weight's std, ours over theirs, within 10%.
  for net in ('g', 'd'):
    lo, hi = o['init'][net]['std_ratio_range']
    assert 0.9 < lo <= hi < 1.1, (net, lo, hi)


def _record(step, **rel):
  """A step's record: {system: relative distance} for every network part."""
  parts = ('g.params', 'd.params', 'ema.params', 'd.sn')
  return {'step': step, 'g_loss': {n: 1.0 for n in rel},
          'to_reference': {n: {k: {'rel': r, 'worst': ('', r)} for k in parts}
                           for n, r in rel.items()}}


def test_verdict_compares_ours_with_studiogans_own_float32_and_plots(tmp_path):
  records = [_record(s, studiogan=2e-6 * s, ours=1e-6 * s, control=1.5e-6 * s)
             for s in range(1, 13)]
  v = trajectory.verdict(records, early=10)['d.params']
  assert v['ours']['step1'] == 1e-6 and v['studiogan']['last'] == pytest.approx(2.4e-5)
  assert v['ours']['early_median'] == pytest.approx(5.5e-6)  # steps 1..10
  assert v['ours_over_studiogan'] == {'step1': 0.5, 'early_median': pytest.approx(0.5),
                                      'last': pytest.approx(0.5)}
  # With StudioGAN float32 as the reference there is no StudioGAN system to divide by.
  assert 'ours_over_studiogan' not in trajectory.verdict(
      [_record(1, ours=1e-6, control=2e-6)])['g.params']
  png = tmp_path / 'd.png'
  trajectory.plot({'reference': 'studiogan_float64', 'records': records}, str(png))
  assert png.read_bytes()[:4] == b'\x89PNG'
