"""Our StyleGAN2 G and D vs StudioGAN's own stylegan2.py on the same weights.

Fixture tests/fixtures/stylegan2_parity.npz from scripts/make_stylegan2_fixture.py (torch CPU,
StudioGAN src/models/stylegan2.py, tiny widths). Tolerance: float32 on both sides through
~10 stacked convs / 10 dense layers with different summation orders (torch's fused grouped conv
in eval, XLA's conv here); measured max abs difference 3e-6 on G outputs up to 7.3, so
atol 2e-5 + rtol 1e-5 leaves a ~10x margin.
"""

import ast
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.losses import gan as losses
from reacgan_jax.models import stylegan2_d, stylegan2_g
from reacgan_jax.studiogan import stylegan2_keys as stylegan2_convert

FIX = Path(__file__).resolve().parents[1] / 'fixtures' / 'stylegan2_parity.npz'
TOL = dict(atol=2e-5, rtol=1e-5)


@pytest.fixture(scope='module')
def fx():
  f = np.load(FIX)
  return {k: f[k] for k in f.files}


def _sub(fx, prefix):
  return {k[len(prefix) + 1:]: v for k, v in fx.items() if k.startswith(prefix + '/')}


def _cfg(fx):
  return ast.literal_eval(str(fx['cfg']))


def _gen(fx, arch):
  c = _cfg(fx)
  g = stylegan2_g.Generator(z_dim=c['z_dim'], w_dim=c['w_dim'], num_classes=c['num_classes'],
                            img_resolution=c['g_res'], mapping_layers=c['mapping_layers'],
                            channel_base=c['channel_base'], channel_max=c['channel_max'],
                            architecture=arch)
  z, y = jnp.asarray(fx['z']), jnp.asarray(fx['y'])
  k = jax.random.PRNGKey(0)
  like = jax.eval_shape(lambda: g.init({'params': k, 'noise': k}, z, y))
  v = stylegan2_convert.torch_to_flax(_sub(fx, f'g_{arch}/sd'), like=like)
  return g, v, z, y


def _nchw(x):
  return np.asarray(x).transpose(0, 3, 1, 2)


@pytest.mark.parametrize('arch', ['skip', 'resnet', 'orig'])
def test_generator_matches_studiogan(fx, arch):
  g, v, z, y = _gen(fx, arch)
  ref = _sub(fx, f'g_{arch}')
  for train in (False, True):  # torch: eval = fused grouped modconv, train = non-fused
    tag = 'train' if train else 'eval'
    out = g.apply(v, z, y, train=train, noise_mode='const')
    np.testing.assert_allclose(_nchw(out), ref[f'out_{tag}_const'], **TOL)
    if arch == 'skip':
      out = g.apply(v, z, y, train=train, noise_mode='none')
      np.testing.assert_allclose(_nchw(out), ref[f'out_{tag}_none'], **TOL)
  out = g.apply(v, z, y, truncation_psi=0.7, truncation_cutoff=3, noise_mode='const')
  np.testing.assert_allclose(_nchw(out), ref['out_psi07_cut3'], **TOL)


def test_mapping_truncation_and_w_avg_update_match(fx):
  g, v, z, y = _gen(fx, 'skip')
  ref = _sub(fx, 'g_skip')
  ws = g.apply(v, z, y, truncation_psi=0.5, method='mapping')
  np.testing.assert_allclose(np.asarray(ws), ref['ws_psi05'], **TOL)
  _, new = g.apply(v, z, y, update_w_avg=True, method='mapping', mutable=[stylegan2_g.STATE])
  np.testing.assert_allclose(np.asarray(new[stylegan2_g.STATE]['mapping']['w_avg']),
                             ref['w_avg_updated'], **TOL)


@pytest.mark.parametrize('name,arch,cond', [('d_orig_spd', 'orig', 'spd'),
                                            ('d_orig_reacgan', 'orig', 'reacgan'),
                                            ('d_skip_acgan', 'skip', 'acgan'),
                                            ('d_resnet_none', 'resnet', 'none')])
def test_discriminator_matches_studiogan(fx, name, arch, cond):
  c = _cfg(fx)
  d = stylegan2_d.Discriminator(img_resolution=c['res'], num_classes=c['num_classes'],
                                cond_method=cond, architecture=arch,
                                channel_base=c['channel_base'], channel_max=c['channel_max'],
                                mbstd_group_size=c['mbstd_group'], embed_dim=c['embed_dim'])
  x = jnp.asarray(fx['x_nchw'].transpose(0, 2, 3, 1))
  y = jnp.asarray(fx['y'])
  like = jax.eval_shape(lambda: d.init(jax.random.PRNGKey(0), x, y))
  v = stylegan2_convert.torch_to_flax(_sub(fx, f'{name}/sd'), like=like)
  out = d.apply(v, x, y, train=True)
  ref = _sub(fx, name)
  np.testing.assert_allclose(np.asarray(out.h), ref['h'], **TOL)
  np.testing.assert_allclose(np.asarray(out.adv), ref['adv_output'], **TOL)
  if cond == 'acgan':
    np.testing.assert_allclose(np.asarray(out.class_logits), ref['cls_output'], **TOL)
  if cond == 'reacgan':  # StudioGAN returns them L2-normalised (normalize_d_embed=True)
    unit = lambda a: np.asarray(a) / np.linalg.norm(np.asarray(a), axis=1, keepdims=True)
    np.testing.assert_allclose(unit(out.embed), ref['embed'], **TOL)
    np.testing.assert_allclose(unit(out.proxy), ref['proxy'], **TOL)
    # StudioGAN's D2D-CE is built from cosine similarities, so its D-side normalisation does
    # not change the loss; ours normalises inside losses.d2d_ce: same value either way.
    kw = dict(temperature=0.25, margin_pos=0.98)
    np.testing.assert_allclose(
        float(losses.d2d_ce(out.embed, out.proxy, y, **kw)),
        float(losses.d2d_ce(jnp.asarray(ref['embed']), jnp.asarray(ref['proxy']), y, **kw)),
        rtol=1e-5)
  np.testing.assert_array_equal(np.asarray(d.apply(v, x, y, train=False).adv),
                                np.asarray(out.adv))


def test_converter_rejects_wrong_width(fx):
  c = _cfg(fx)
  g = stylegan2_g.Generator(z_dim=c['z_dim'], w_dim=c['w_dim'], num_classes=c['num_classes'],
                            img_resolution=c['g_res'], mapping_layers=c['mapping_layers'],
                            channel_base=c['channel_base'] * 2, channel_max=c['channel_max'] * 2)
  z, y = jnp.asarray(fx['z']), jnp.asarray(fx['y'])
  like = jax.eval_shape(lambda: g.init({'params': jax.random.PRNGKey(0),
                                        'noise': jax.random.PRNGKey(0)}, z, y))
  with pytest.raises(ValueError, match='shapes differ'):
    stylegan2_convert.torch_to_flax(_sub(fx, 'g_skip/sd'), like=like)


def test_converter_drops_ddp_prefix(fx):
  sd = _sub(fx, 'g_skip/sd')
  plain = stylegan2_convert.torch_to_flax(sd)
  wrapped = stylegan2_convert.torch_to_flax({f'module.{k}': v for k, v in sd.items()})
  assert jax.tree.structure(plain) == jax.tree.structure(wrapped)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(plain),
                                                  jax.tree.leaves(wrapped), strict=True))
