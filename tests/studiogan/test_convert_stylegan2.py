"""StudioGAN StyleGAN2 checkpoints through convert_studiogan (issue 17 item 2, StyleGAN2 part).

Fixture tests/fixtures/stylegan2_parity.npz (scripts/make_stylegan2_fixture.py: StudioGAN's own
src/models/stylegan2.py on torch CPU, tiny widths): state dicts and StudioGAN's eval-mode
outputs. Tolerance as tests/parity/test_stylegan2_parity.py (measured max 3e-6 on G outputs up to
7.3; atol 2e-5 + rtol 1e-5).
"""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny_stylegan2
from reacgan_jax import sampling
from reacgan_jax.models import adapter
from reacgan_jax.platform import parallel
from reacgan_jax.studiogan import convert as convert_studiogan
from reacgan_jax.train import modes, state

FX = np.load(Path(__file__).resolve().parents[1] / 'fixtures' / 'stylegan2_parity.npz')
CFG = ast.literal_eval(str(FX['cfg']))
TOL = dict(atol=2e-5, rtol=1e-5)


def _sd(prefix):
  return {k[len(prefix) + 1:]: FX[k] for k in FX.files if k.startswith(prefix + '/')}


def _config(size, cond):
  c = tiny_stylegan2.get_config()
  c.data.image_size, c.data.num_classes = size, CFG['num_classes']
  c.model.cond_method = cond
  c.model.z_dim, c.model.embed_dim = CFG['z_dim'], CFG['embed_dim']
  s = c.model.stylegan2
  s.w_dim, s.channel_base, s.channel_max = CFG['w_dim'], CFG['channel_base'], CFG['channel_max']
  s.mapping_layers, s.mbstd_group_size = CFG['mapping_layers'], CFG['mbstd_group']
  s.noise_mode = 'const'  # the fixture's eval outputs use the stored noise
  return c


def _nhwc(x):
  return np.asarray(x).transpose(0, 2, 3, 1)


def test_discriminator_converts_to_studiogans_outputs():
  config = _config(CFG['res'], 'reacgan')
  params, buffers, sn = convert_studiogan.convert_discriminator(_sd('d_orig_reacgan/sd'), config)
  assert buffers == {} and sn == {}
  model = adapter.build(config)
  out, _ = model.apply_d(params, {}, jnp.asarray(_nhwc(FX['x_nchw'])), jnp.asarray(FX['y']),
                         train=False)
  ref = _sd('d_orig_reacgan')
  np.testing.assert_allclose(out.adv, ref['adv_output'].reshape(-1), **TOL)
  unit = lambda v: v / np.linalg.norm(v, axis=1, keepdims=True)  # noqa: E731
  # StudioGAN returns them L2-normalised (normalize_d_embed=True); d2d_ce normalises ours.
  np.testing.assert_allclose(unit(np.asarray(out.embed)), ref['embed'], **TOL)
  np.testing.assert_allclose(unit(np.asarray(out.proxy)), ref['proxy'], **TOL)


@pytest.mark.slow  # a train-state build, an orbax save and restore: ~1-2 min on the loaded CPU
def test_converted_checkpoint_samples_studiogans_images(tmp_path):
  config = _config(CFG['g_res'], 'reacgan')
  g = convert_studiogan.convert_generator(_sd('g_skip/sd'), config)
  assert set(g[1]) == {'mapping', 'synthesis'}  # w_avg and the noise constants came along
  model = adapter.build(config)
  fresh = state.create_train_state(config, model, jax.random.PRNGKey(0))
  d = (fresh.d.params, {}, {})  # the fixture's D is at 32 px; only G is checked here
  convert_studiogan.write_checkpoint(config, str(tmp_path), g, d, g_ema=g, step=7)
  mesh = parallel.create_mesh(jax.devices()[:1])
  loaded, at = modes.load_state(config, str(tmp_path), mesh, adapter.build(config, mesh))
  assert at == 7
  sample = sampling.Sampler(config, adapter.build(config, mesh), mesh).sample_fn(loaded)
  images = sample(jnp.asarray(FX['z']), jnp.asarray(FX['y']))
  np.testing.assert_allclose(np.asarray(images), _nhwc(FX['g_skip/out_eval_const']), **TOL)
  with pytest.raises(ValueError, match='the config does not match the checkpoint'):
    wide = _config(CFG['g_res'], 'reacgan')
    wide.model.stylegan2.channel_max = 16
    convert_studiogan.write_checkpoint(wide, str(tmp_path / 'x'), g, d)
