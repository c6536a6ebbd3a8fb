"""Sample grids and latents: layout, quantisation, fixed inputs (no model needed)."""

import os
import subprocess
import sys

import jax
import numpy as np
import pytest
from PIL import Image
from train_helpers import HANG_S

from configs import tiny, tiny_stylegan2
from reacgan_jax import errors, sampling
from reacgan_jax.models import adapter
from reacgan_jax.platform import parallel
from reacgan_jax.train import state

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_make_grid_places_images_row_major_with_separators():
  imgs = np.stack([np.full((2, 3, 3), v, np.float32) for v in np.linspace(-1, 1, 6)])
  grid = sampling.make_grid(imgs, rows=2, cols=3, pad=1)
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3) and grid.dtype == np.uint8
  expect = np.round((np.linspace(-1, 1, 6) + 1) * 127.5).astype(np.uint8)
  for i in range(6):
    r, c = divmod(i, 3)
    tile = grid[1 + r * 3:1 + r * 3 + 2, 1 + c * 4:1 + c * 4 + 3]
    assert (tile == expect[i]).all()
  assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()
  with pytest.raises(ValueError, match='2x2'):
    sampling.make_grid(imgs, 2, 2)


def test_to_uint8_clips_and_rounds():
  np.testing.assert_array_equal(sampling.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])),
                                [0, 0, 128, 255, 255])


def test_grid_latents_rows_are_classes_columns_share_z():
  cfg = tiny.get_config()
  cfg.data.num_classes, cfg.train.grid_classes, cfg.train.grid_per_class = 10, 4, 3
  z, y = sampling.grid_latents(cfg, jax.random.PRNGKey(0))
  assert z.shape == (12, cfg.model.z_dim)
  np.testing.assert_array_equal(np.asarray(y), np.repeat([0, 3, 6, 9], 3))
  np.testing.assert_array_equal(np.asarray(z[0]), np.asarray(z[3]))  # column 0, rows 0 and 1
  assert not np.allclose(np.asarray(z[0]), np.asarray(z[1]))
  z2, _ = sampling.grid_latents(cfg, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z2))


def test_interpolation_is_linear_between_endpoints():
  cfg = tiny.get_config()
  z, y = sampling.interpolation_latents(cfg, jax.random.PRNGKey(1), num_steps=5)
  z = np.asarray(z).reshape(-1, 5, cfg.model.z_dim)
  mid = 0.5 * (z[:, 0] + z[:, 4])
  np.testing.assert_allclose(z[:, 2], mid, rtol=1e-5, atol=1e-6)
  assert len(set(np.asarray(y).reshape(-1, 5)[:, 0])) == z.shape[0]


# ---- aimed sampling: --seeds, --classes, --truncation ------------------------------------------

def test_parse_ids_takes_lists_ranges_and_names_bad_input():
  assert sampling.parse_ids('0,3,7', 'classes', upper=10) == [0, 3, 7]
  assert sampling.parse_ids('1-8', 'seeds') == list(range(1, 9))
  assert sampling.parse_ids('5, 1-3,2,9', 'seeds') == [5, 1, 2, 3, 9]  # order kept, repeats out
  for bad in ('a', '1-', '-3', '3-1', '1,,2', '1.5'):
    with pytest.raises(errors.InputError, match='--seeds'):
      sampling.parse_ids(bad, 'seeds')
  with pytest.raises(errors.InputError, match=r'10 is out of range: this model has 10 classes'):
    sampling.parse_ids('0,10', 'classes', upper=10)
  with pytest.raises(errors.InputError, match='out of range'):
    sampling.parse_ids(str(2**32), 'seeds')


def test_seed_inputs_depend_on_the_seed_alone():
  z, keys = sampling.seed_inputs([7, 3, 2**32 - 1], 16)
  z3, k3 = sampling.seed_inputs([3], 16)
  np.testing.assert_array_equal(np.asarray(z[1]), np.asarray(z3[0]))
  np.testing.assert_array_equal(np.asarray(keys[1]), np.asarray(k3[0]))
  # The same draws as from the Python-int key, one seed at a time (jax.random.PRNGKey(seed)).
  key = jax.random.PRNGKey(2**32 - 1)
  np.testing.assert_array_equal(np.asarray(z[2]),
                                np.asarray(jax.random.normal(jax.random.fold_in(key, 0), (16,))))
  assert not np.allclose(np.asarray(z[0]), np.asarray(z[1]))
  zt, _ = sampling.seed_inputs(list(range(64)), 16, z_threshold=0.5)
  assert np.abs(np.asarray(zt)).max() <= 0.5 and np.abs(np.asarray(zt)).max() > 0.4


def test_truncation_plan_follows_studiogan_per_backbone():
  cfg = tiny.get_config()
  assert sampling.truncation_plan(cfg, None) == (cfg, None)
  same, t = sampling.truncation_plan(cfg, 0.7)
  assert same is cfg and t == 0.7  # BigGAN family: a truncated-normal z
  for bad in (0.0, -1.0):
    with pytest.raises(errors.ConfigError, match='must be > 0'):
      sampling.truncation_plan(cfg, bad)
  sg2 = tiny_stylegan2.get_config()
  psi_cfg, t = sampling.truncation_plan(sg2, 0.5)
  assert t is None and psi_cfg.model.stylegan2.truncation_psi == 0.5  # StyleGAN2: w psi
  assert sg2.model.stylegan2.truncation_psi == 1.0  # the run's config untouched
  with pytest.raises(errors.ConfigError, match=r'psi in \[0, 1\]'):
    sampling.truncation_plan(sg2, 1.5)
  sg2.model.stylegan2.w_avg_beta = None
  with pytest.raises(errors.ConfigError, match='tracks no w_avg'):
    sampling.truncation_plan(sg2, 0.5)


def test_sample_names_carry_seed_and_class():
  assert sampling.sample_name(3, 7, 10) == 'seed0003_class007.png'
  assert sampling.sample_name(12345, 7, 1000) == 'seed12345_class007.png'
  assert sampling.sample_name(1, 1234, 2000) == 'seed0001_class1234.png'


# Writes the aimed samples of a freshly initialised tiny model (noise strengths raised, so
# StyleGAN2's per-seed noise shows in the pixels) on however many devices XLA_FLAGS gives, for
# each SEEDS=OUTDIR argument (one compiled G: every batch is padded to eval.batch_size).
SEEDED_SCRIPT = '''
import sys, jax, numpy as np
jax.config.update('jax_threefry_partitionable', True)
from configs import tiny, tiny_stylegan2
from reacgan_jax import sampling
from reacgan_jax.models import adapter as adapter_lib
from reacgan_jax.platform import parallel
from reacgan_jax.train import state as state_lib
config = (tiny_stylegan2 if sys.argv[1] == 'stylegan2' else tiny).get_config()
config.eval.batch_size = 8
# One backend in both processes ('auto' picks oneDNN on one CPU device only): the runs differ in
# the device count alone, so their pixels must be equal bit for bit.
config.model.conv_backend = 'xla'
config, z_threshold = sampling.truncation_plan(config, 0.8)
mesh = parallel.create_mesh()
adapter = adapter_lib.build(config, mesh)
g_vars, _ = jax.jit(adapter.init)(jax.random.PRNGKey(1), jax.random.PRNGKey(2))
def louder(path, x):
  return x + 0.5 if 'noise_strength' in jax.tree_util.keystr(path) else x
g = state_lib.NetState(jax.tree_util.tree_map_with_path(louder, g_vars['params']),
                       adapter_lib.state_collections(g_vars), {}, None)
state = state_lib.TrainState(step=0, g=g, d=None, ema=None, rng=None, extra={})
fn = sampling.Sampler(config, adapter, mesh).seeded_fn(state)
for job in sys.argv[2:]:
  seeds, outdir = job.split('=')
  sampling.write_seed_samples(config, fn, outdir, sampling.parse_ids(seeds, 'seeds'), [0, 9],
                              z_threshold)
print(jax.device_count())
'''


def _seeded_run(family, devices, **jobs):
  env = dict(os.environ, XLA_FLAGS=f'--xla_force_host_platform_device_count={devices}',
             JAX_PLATFORMS='cpu', PYTHONPATH=str(REPO))
  args = [f'{seeds}={outdir}' for outdir, seeds in jobs.items()]
  r = subprocess.run([sys.executable, '-c', SEEDED_SCRIPT, family, *args], env=env, cwd=REPO,
                     capture_output=True, text=True, timeout=HANG_S)
  assert r.returncode == 0, r.stderr[-3000:]
  assert r.stdout.split()[-1] == str(devices)
  out = []
  for outdir in jobs:
    with np.load(os.path.join(outdir, 'samples.npz')) as f:
      out.append({k: f[k] for k in f.files})
  return out


# Three compiles of a tiny G in two processes: minutes on the loaded 2-core test machine (the
# vmapped StyleGAN2 G ~12 min there), hence slow / exhaustive.
# Per case: a param's exhaustive mark beside a test-level slow mark would keep it under -m slow.
@pytest.mark.parametrize('family', [pytest.param('biggan', marks=pytest.mark.exhaustive),
                                    pytest.param('stylegan2', marks=pytest.mark.exhaustive)])
def test_a_seed_gives_the_same_pixels_on_1_and_8_devices(tmp_path, family):
  [one] = _seeded_run(family, 1, **{str(tmp_path / 'one'): '0-7'})
  # On 8 devices, and in another batch around seeds 3 and 5 (other seeds, other order, a
  # ragged tail).
  eight, other = _seeded_run(family, 8, **{str(tmp_path / 'eight'): '0-7',
                                           str(tmp_path / 'other'): '5,11,3'})
  assert one['images'].shape == (16, 32, 32, 3) and one['images'].std() > 0
  np.testing.assert_array_equal(one['seeds'], np.tile(np.arange(8), 2))
  np.testing.assert_array_equal(one['labels'], np.repeat([0, 9], 8))
  np.testing.assert_array_equal(one['images'], eight['images'])  # bitwise: uint8 pixels equal
  for k, (s, c) in enumerate(zip(other['seeds'], other['labels'], strict=True)):
    if s < 8:  # seeds 5 and 3 of both classes: the image of that seed in the first run
      np.testing.assert_array_equal(other['images'][k], one['images'][(c == 9) * 8 + s])
  assert not (one['images'][3] == one['images'][11]).all()  # the class changes the image
  png = np.asarray(Image.open(tmp_path / 'one' / 'seed0003_class009.png'))
  np.testing.assert_array_equal(png, one['images'][8 + 3])


def test_sampler_refuses_a_class_id_out_of_range():
  """Issue 26: class 10 of a 10-class G gave NaN images, -1 silently another class."""
  config = tiny.get_config()
  config.model.g_attn_block = config.model.d_attn_block = 0
  mesh = parallel.create_mesh(jax.devices()[:1])
  model = adapter.build(config, mesh)
  fn = sampling.Sampler(config, model, mesh).sample_fn(state.init_state(config, model, mesh))
  z = jax.random.normal(jax.random.PRNGKey(0), (2, config.model.z_dim))
  assert np.isfinite(np.asarray(fn(z, np.array([0, 9], np.int32)))).all()
  for bad in ([0, 10], [-1, 3], [1000, 2]):
    with pytest.raises(errors.InputError, match=r'outside \[0, 10\)'):
      fn(z, np.array(bad, np.int32))


@pytest.mark.parametrize(('sn_eval', 'ema', 'warned'), [('stored', True, True),
                                                        ('iterate', True, False),
                                                        ('stored', False, False)])
def test_sampling_an_ema_generator_with_stored_sn_vectors_warns(caplog, sn_eval, ema, warned):
  """Issue 25: 'stored' saturates an EMA G (its averaged SN vectors are shorter than 1); a run
  saved under the old default keeps it, so the sampler says what to pass instead."""
  config = tiny.get_config()
  config.model.sn_eval, config.train.ema = sn_eval, ema
  with caplog.at_level('WARNING', logger='absl'):
    sampling.Sampler(config, adapter.build(config))
  said = [r.getMessage() for r in caplog.records if 'sn_eval' in r.getMessage()]
  assert bool(said) == warned, said
  if warned:
    assert '--config.model.sn_eval=iterate' in said[0]
