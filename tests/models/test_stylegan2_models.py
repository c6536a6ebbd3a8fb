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


@pytest.mark.parametrize('g_arch,d_arch', [('skip', 'orig'), ('resnet', 'skip')])
def test_bfloat16_blocks_with_float32_mapping_epilogue_and_outputs(g_arch, d_arch):
  """Issue 28: config.model.dtype='bfloat16' runs the synthesis and D blocks in bf16 (stylegan2-
  ada's mixed-precision split): the mapping network stays float32 (ws bit-identical), the
  convolutions of the blocks take bf16 operands, the epilogue/heads and outputs are float32, and
  G and D compute the same functions as in float32 up to bf16 rounding."""
  cfg = config(size=16, classes=3, g_architecture=g_arch, d_architecture=d_arch, **TINY)
  g32, d32 = stylegan2.build(cfg)
  g16, d16 = stylegan2.build(cfg, dtype=jnp.bfloat16)
  z = jax.random.normal(jax.random.PRNGKey(1), (4, 8))
  y = jnp.array([0, 1, 2, 1])
  k = jax.random.PRNGKey(0)
  gv = fake_init(g32, {'params': k, 'noise': k}, z, y)
  x = jax.random.uniform(jax.random.PRNGKey(2), (4, 16, 16, 3), minval=-1, maxval=1)
  dv = fake_init(d32, k, x, y)
  for leaf in jax.tree.leaves((gv, dv)):
    assert leaf.dtype == jnp.float32

  def fwd(g, d):
    img, ws = g.apply(gv, z, y, noise_mode='const', return_ws=True)
    return img, ws, d.apply(dv, img, y)

  img32, ws32, out32 = fwd(g32, d32)
  img16, ws16, out16 = fwd(g16, d16)
  np.testing.assert_array_equal(ws16, ws32)  # the mapping network is float32 in both
  assert img16.dtype == out16.adv.dtype == out16.h.dtype == jnp.float32
  assert not np.array_equal(img16, img32)  # bf16 really used
  # bf16 keeps 8 mantissa bits (2^-9 relative per rounding, compounding over ~10 layers of
  # random N(0, 1) weights): the same function, close on average, not to float32 rounding.
  a, b = np.asarray(img16).ravel(), np.asarray(img32).ravel()
  assert np.mean(np.abs(a - b)) < 0.02 * np.mean(np.abs(b)) and np.corrcoef(a, b)[0, 1] > 0.999
  a, b = np.asarray(out16.h), np.asarray(out32.h)
  assert np.max(np.abs(a - b)) < 0.05 * np.abs(b).max()
  # Where the dtypes are: every weight conv of the blocks bf16; the epilogue's convs float32
  # (the FIR filters of the RGB skip, depthwise convs on the float32 image, are not counted).
  def convs(fn, *args):
    eqns, out = list(jax.make_jaxpr(fn)(*args).jaxpr.eqns), []
    while eqns:
      e = eqns.pop()
      eqns += [q for j in jax.core.jaxprs_in_params(e.params) for q in j.eqns]
      if e.primitive.name == 'conv_general_dilated' and e.params['feature_group_count'] == 1:
        out.append((str(e.invars[0].aval.dtype), e.outvars[0].aval.shape))
    return out

  g_convs = convs(lambda *a: g16.apply(*a, noise_mode='const'), gv, z, y)
  d_convs = convs(d16.apply, dv, x, y)
  assert g_convs and {t for t, _ in g_convs} == {'bfloat16'}, g_convs
  epilogue = 2 if d_arch == 'skip' else 1  # its conv (and the skip architecture's fromRGB)
  assert [c for c in d_convs if c[0] != 'bfloat16'] == [('float32', (4, 4, 4, 8))] * epilogue
  assert len(d_convs) > 1
