"""StyleGAN2 G/D assembly: parameter counts vs StudioGAN, truncation, style mixing, build()."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from reacgan_jax.models import stylegan2, stylegan2_g

# Counted with StudioGAN's own src/models/stylegan2.py under torch 2.13 CPU (sum of
# p.numel() over .parameters()), built as src/models/model.py builds it for
# configs/CIFAR10/StyleGAN2.yaml (SPD) / StyleGAN2-D2DCE.yaml: img 32, 10 classes, z=w=512,
# mapping_network 2, channel_base 32768, channel_max 512, d_architecture orig, mbstd group 32,
# d_embed_dim 512; W/O and AC D's with the same widths. G buffers: w_avg + noise_const.
STUDIOGAN_COUNTS = {'g_mapping': 793088, 'g_synthesis': 19422227, 'g_buffers': 3216,
                    'd_spd': 23089664, 'd_reacgan': 21251585, 'd_none': 20720641,
                    'd_acgan': 20725761}


def config(cond='spd', size=32, classes=10, **over):
  c = ml_collections.ConfigDict()
  c.model = ml_collections.ConfigDict({'cond_method': cond,
                                       'z_dim': over.pop('z_dim', 512),
                                       'embed_dim': over.pop('embed_dim', 512)})
  c.model.stylegan2 = stylegan2.default_config()
  c.model.stylegan2.update(over)
  c.data = ml_collections.ConfigDict({'image_size': size, 'num_classes': classes})
  return c


def fake_init(module, rngs, *args):
  """Variables with init's shapes filled from numpy N(0, 1): eager flax init compiles one
  random kernel per parameter shape (~40 s on the loaded test machine); these tests only need
  some weights."""
  like = jax.eval_shape(lambda: module.init(rngs, *args))
  r = np.random.default_rng(0)
  return jax.tree.map(lambda s: jnp.asarray(r.standard_normal(s.shape), s.dtype), like)


def count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def test_param_counts_match_studiogan_cifar():
  k = jax.random.PRNGKey(0)
  z, y, x = jnp.zeros((2, 512)), jnp.zeros((2,), jnp.int32), jnp.zeros((2, 32, 32, 3))
  g, _ = stylegan2.build(config())
  vg = jax.eval_shape(lambda: g.init({'params': k, 'noise': k}, z, y))
  assert count(vg['params']['mapping']) == STUDIOGAN_COUNTS['g_mapping']
  assert count(vg['params']['synthesis']) == STUDIOGAN_COUNTS['g_synthesis']
  assert count(vg[stylegan2_g.STATE]) == STUDIOGAN_COUNTS['g_buffers']
  for cond in ('spd', 'reacgan', 'none', 'acgan'):
    _, d = stylegan2.build(config(cond))
    vd = jax.eval_shape(lambda d=d: d.init(k, x, y))
    assert count(vd['params']) == STUDIOGAN_COUNTS[f'd_{cond}'], cond


TINY = dict(z_dim=8, w_dim=8, channel_base=64, channel_max=8, mbstd_group_size=2, embed_dim=6)


@pytest.fixture(scope='module')
def tiny_g():
  g, _ = stylegan2.build(config(size=16, classes=3, **TINY))
  z = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
  y = jnp.array([0, 1, 2, 1])
  k = jax.random.PRNGKey(0)
  v = fake_init(g, {'params': k, 'noise': k}, z, y)
  w_avg = jax.random.normal(jax.random.PRNGKey(3), (8,))
  st = jax.tree.map(lambda a: a, v[stylegan2_g.STATE])
  st['mapping']['w_avg'] = w_avg
  return g, {'params': v['params'], stylegan2_g.STATE: st}, z, y


def test_truncation_identity_and_w_avg(tiny_g):
  g, v, z, y = tiny_g
  ws = g.apply(v, z, y, method='mapping')
  assert ws.shape == (4, 6, 8)  # 16 px: b4 conv1, b8 and b16 conv0/conv1, b16 torgb
  np.testing.assert_array_equal(g.apply(v, z, y, truncation_psi=1.0, method='mapping'), ws)
  w_avg = v[stylegan2_g.STATE]['mapping']['w_avg']
  ws0 = g.apply(v, z, y, truncation_psi=0.0, method='mapping')
  np.testing.assert_allclose(ws0, jnp.broadcast_to(w_avg, ws.shape), rtol=1e-6, atol=1e-6)
  wc = g.apply(v, z, y, truncation_psi=0.0, truncation_cutoff=2, method='mapping')
  np.testing.assert_allclose(wc[:, :2], ws0[:, :2], rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(wc[:, 2:], ws[:, 2:])
  img1 = g.apply(v, z, y, noise_mode='const')
  g_const, _ = stylegan2.build(config(size=16, classes=3, noise_mode='const', **TINY))
  np.testing.assert_array_equal(g_const.apply(v, z, y), img1)  # config default, no rng
  np.testing.assert_array_equal(g.apply(v, z, y, truncation_psi=1.0, noise_mode='const'), img1)
  assert img1.shape == (4, 16, 16, 3) and img1.dtype == jnp.float32


def test_w_avg_update_needs_mutable(tiny_g):
  g, v, z, y = tiny_g
  with pytest.raises(ValueError, match='mutable'):
    g.apply(v, z, y, update_w_avg=True, noise_mode='const')
  _, st = g.apply(v, z, y, update_w_avg=True, noise_mode='const', mutable=[stylegan2_g.STATE])
  ws = g.apply(v, z, y, method='mapping')[:, 0]
  old = v[stylegan2_g.STATE]['mapping']['w_avg']
  want = ws.mean(0) + 0.998 * (old - ws.mean(0))
  np.testing.assert_allclose(st[stylegan2_g.STATE]['mapping']['w_avg'], want, rtol=1e-5,
                             atol=1e-6)


def test_style_mixing_prob_0_and_1(tiny_g):
  g, v, z, y = tiny_g
  ws = g.apply(v, z, y, method='mapping')
  num_ws = ws.shape[1]
  for seed in range(3):
    rngs = {'noise': jax.random.PRNGKey(9), 'mixing': jax.random.PRNGKey(seed)}
    img0, ws0 = g.apply(v, z, y, train=True, style_mixing_prob=0.0, return_ws=True, rngs=rngs)
    np.testing.assert_array_equal(ws0, ws)  # no mixing at p = 0 (no 'mixing' rng needed)
    _, ws1 = g.apply(v, z, y, train=True, style_mixing_prob=1.0, return_ws=True, rngs=rngs)
    same = np.all(np.isclose(ws1, ws), axis=(0, 2))  # [num_ws]
    cut = int(np.argmin(same))
    assert 1 <= cut < num_ws and same[:cut].all() and not same[cut:].any(), same
    np.testing.assert_array_equal(ws1[:, cut:], jnp.broadcast_to(ws1[:, cut:cut + 1],
                                                                 ws1[:, cut:].shape))
    # eval never mixes
    _, ws_e = g.apply(v, z, y, train=False, style_mixing_prob=1.0, return_ws=True, rngs=rngs)
    np.testing.assert_array_equal(ws_e, ws)


@pytest.mark.parametrize('cond', ['none', 'acgan', 'spd', 'reacgan'])
def test_discriminator_heads_shapes(cond):
  _, d = stylegan2.build(config(cond, size=16, classes=3, **TINY))
  x = jnp.zeros((4, 16, 16, 3))
  y = jnp.array([0, 1, 2, 1])
  out = d.apply(fake_init(d, jax.random.PRNGKey(0), x, y), x, y, train=True)
  assert out.adv.shape == (4,) and out.h.shape == (4, 8)
  assert (out.class_logits is not None) == (cond == 'acgan')
  assert (out.embed is not None) == (out.proxy is not None) == (cond == 'reacgan')
  if cond == 'reacgan':
    assert out.embed.shape == out.proxy.shape == (4, 6)


def test_build_rejects_bad_config():
  with pytest.raises(ValueError, match='cond_method'):
    stylegan2.build(config('pd'))
  with pytest.raises(ValueError, match='d_architecture'):
    stylegan2.build(config(d_architecture='fancy'))
  with pytest.raises(ValueError, match='g_architecture'):
    stylegan2.build(config(g_architecture='fancy'))
  with pytest.raises(ValueError, match='noise_mode'):
    stylegan2.build(config(noise_mode='bogus'))
  with pytest.raises(ValueError, match='image_size'):
    stylegan2.build(config(size=24))
