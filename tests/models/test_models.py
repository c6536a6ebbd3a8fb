"""reacgan_jax/models: shapes, parameter / SN counts vs SPEC, heads, BN, attention, torch parity.

Most tests use tiny widths and parameters drawn with numpy from the `eval_shape` of `init`
(no XLA compile of the initialisers, which costs seconds per model on this CPU); the real
initialisers are exercised on one model by default and on every case under `-m slow`.
"""

import importlib
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

import configs
from configs import default
from reacgan_jax import models
from reacgan_jax.losses import gan as losses
from reacgan_jax.models import layers
from reacgan_jax.ops import spectral_norm

REPO = pathlib.Path(__file__).resolve().parents[2]
CONFIG_MODULES = [n for n in configs.experiment_configs() if n != 'default']
KEY = jax.random.PRNGKey(0)


def _load_config(name):
  return importlib.import_module(f'configs.{name}').get_config()


def tiny_config(backbone='biggan', image_size=32, cond='reacgan', **model):
  """default config at toy width; z_dim a multiple of BigGAN's chunk count."""
  cfg = default.get_config()
  cfg.data.image_size = image_size
  cfg.model.backbone = backbone
  cfg.model.cond_method = cond
  cfg.model.g_conv_dim = cfg.model.d_conv_dim = 8
  cfg.model.shared_dim = cfg.model.embed_dim = 8
  n_chunks = len(models.resnet.G_IN.get(image_size, (0, 0, 0))) + 1
  cfg.model.z_dim = 3 * n_chunks
  if backbone == 'dcgan':
    cfg.model.d_conv_dim = 2  # widths 2..64 (the paper's 16..512 at d_conv_dim=16)
  for k, v in model.items():
    cfg.model[k] = v
  return cfg


def _cases():
  """(backbone, size, cond, g_attn, d_attn, g_sn, d_sn, d_dropout): configs + extra coverage.

  `fast` cases run by default (one per config plus one per other backbone); the rest under
  `-m slow` (each case is a separate XLA compile, seconds on this CPU).
  """
  cases = set()
  for name in CONFIG_MODULES:
    m = _load_config(name).model
    if m.backbone == 'stylegan2':  # no BN / SN / attention: tests/test_stylegan2_*.py
      continue
    cases.add((m.backbone, _load_config(name).data.image_size, m.cond_method, m.g_attn_block,
               m.d_attn_block, m.apply_g_sn, m.apply_d_sn, m.d_dropout))
  fast = set(cases) | {('deep_conv', 32, 'reacgan', 2, 1, True, True, 0.5),
                       # dropout's random masks alone cost ~10 s of compile here: off
                       # in the default case (dcgan-reacgan under -m slow has them).
                       ('dcgan', 32, 'acgan', 0, 0, False, True, 0.0),
                       ('resnet', 32, 'none', 0, 0, False, False, 0.5)}
  extra = {('biggan', 32, 'none', 2, 1, True, True, 0.5),
           ('biggan', 64, 'none', 3, 1, True, True, 0.5),
           ('biggan', 128, 'none', 4, 1, True, True, 0.5),
           ('resnet', 32, 'acgan', 0, 0, False, True, 0.5),
           ('deep_conv', 32, 'pd', 0, 0, False, False, 0.5),
           ('dcgan', 32, 'reacgan', 0, 0, False, False, 0.5)}
  # CI's budget (issue 24): the extra cases are exhaustive (the default suite keeps `fast`).
  return ([c for c in sorted(fast)]
          + [pytest.param(c, marks=pytest.mark.exhaustive) for c in sorted(extra - fast)])


CASES = _cases()


def _real_init_cases():
  """Every case, exhaustive (CI budget, issue 24): the default suite's
  test_real_init_deterministic_and_orthogonal checks the rule; this walks every model."""
  return [pytest.param(c.values[0] if hasattr(c, 'values') else c,
                       marks=pytest.mark.exhaustive) for c in CASES]


def case_config(case):
  backbone, size, cond, g_attn, d_attn, g_sn, d_sn, dropout = case
  return tiny_config(backbone, size, cond, g_attn_block=g_attn, d_attn_block=d_attn,
                     apply_g_sn=g_sn, apply_d_sn=d_sn, d_dropout=dropout)


def _inputs(cfg, b=4, seed=0):
  rng = np.random.default_rng(seed)
  s = cfg.data.image_size
  z = jnp.asarray(rng.standard_normal((b, cfg.model.z_dim)), jnp.float32)
  y = jnp.asarray(rng.integers(0, cfg.data.num_classes, b), jnp.int32)
  x = jnp.asarray(rng.uniform(-1, 1, (b, s, s, 3)), jnp.float32)
  return z, y, x


def _shapes(module, *args):
  return jax.eval_shape(lambda: module.init({'params': KEY, 'dropout': KEY}, *args, train=False))


def numpy_variables(module, *args, seed=0):
  """Variables of `module` with params ~ N(0, 1/fan_in) drawn by numpy (no XLA init compile).

  BN statistics take their init values (mean 0, var 1); attention's sigma is drawn too, so
  the attention path contributes.
  """
  shapes = _shapes(module, *args)
  rng = np.random.default_rng(seed)

  def draw(path, s):
    name = jax.tree_util.keystr(path)
    if 'batch_stats' in name:
      return jnp.ones(s.shape, s.dtype) if "'var'" in name else jnp.zeros(s.shape, s.dtype)
    fan_in = int(np.prod(s.shape[:-1])) if len(s.shape) > 1 else 1
    scale = 1.0 if "'embedding'" in name else 1.0 / np.sqrt(fan_in)
    return jnp.asarray(rng.standard_normal(s.shape) * scale, s.dtype)

  variables = jax.tree_util.tree_map_with_path(draw, shapes)
  variables.pop('perturbations', None)
  return variables


def _num(tree):
  return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(tree))


# ---- shapes, dtypes, jit, determinism ----------------------------------------------------------


def _forward_all(g, d, eval_modes):
  """One jitted function: G train (updating stats) + D train on the fakes [+ both in eval]."""

  @jax.jit
  def fn(gv, dv, z, y, x, key):
    fake, upd = g.apply(gv, z, y, train=True, mutable=['batch_stats'])
    d_train = d.apply(dv, fake, y, train=True, rngs={'dropout': key})
    if not eval_modes:
      return fake, upd, fake, d_train, d_train
    return fake, upd, g.apply(gv, z, y, train=False), d_train, d.apply(dv, x, y, train=False)

  return fn


@pytest.mark.parametrize('case', CASES, ids=lambda c: '-'.join(map(str, c)))
def test_shapes_dtypes_finite_deterministic(case):
  cfg = case_config(case)
  g, d = models.build_models(cfg)
  z, y, x = _inputs(cfg)
  gv, dv = numpy_variables(g, z, y), numpy_variables(d, x, y)
  # Eval modes too where D carries BN (train and eval differ there); else train mode only.
  fn = _forward_all(g, d, eval_modes=not cfg.model.apply_d_sn)
  out1 = fn(gv, dv, z, y, x, KEY)
  out2 = fn(gv, dv, z, y, x, KEY)
  fake, upd, fake_eval, d_train, d_eval = out1
  b, s, cond = 4, cfg.data.image_size, cfg.model.cond_method
  for img in (fake, fake_eval):
    assert img.shape == (b, s, s, 3) and img.dtype == jnp.float32
    assert np.all(np.abs(np.asarray(img)) <= 1.0)
  assert jax.tree.structure(upd['batch_stats']) == jax.tree.structure(gv['batch_stats'])
  for out in (d_train, d_eval):
    assert out.adv.shape == (b,)
    assert out.h.ndim == 2 and out.h.shape[0] == b
    assert (out.class_logits is not None) == (cond == 'acgan')
    assert (out.embed is not None) == (out.proxy is not None) == (cond == 'reacgan')
    if cond == 'acgan':
      assert out.class_logits.shape == (b, cfg.data.num_classes)
    if cond == 'reacgan':
      assert out.embed.shape == out.proxy.shape == (b, cfg.model.embed_dim)
  for leaf in jax.tree.leaves(out1):
    assert leaf.dtype == jnp.float32
    assert np.all(np.isfinite(np.asarray(leaf)))
  for a, b_ in zip(jax.tree.leaves(out1), jax.tree.leaves(out2), strict=True):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b_))
  # Fakes respond to z (a dead generator would pass every check above).
  assert float(jnp.std(fake, axis=0).mean()) > 1e-3


def _init_twice(cfg, key):
  g, d = models.build_models(cfg)
  z, y, x = _inputs(cfg)
  init = jax.jit(lambda k: (g.init({'params': k}, z, y, train=False),
                            d.init({'params': k, 'dropout': k}, x, y, train=False)))
  return init(key), init(key), init(jax.random.PRNGKey(1))


def _check_real_init(cfg):
  a, b, c = _init_twice(cfg, KEY)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))
  ka, kc = jax.tree.leaves(a[0]['params']['linear0']), jax.tree.leaves(c[0]['params']['linear0'])
  assert any(not np.array_equal(np.asarray(p), np.asarray(q)) for p, q in zip(ka, kc, strict=True))
  for leaf in jax.tree.leaves(a):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(leaf)))
  return a


def test_real_init_deterministic_and_orthogonal():
  # The smallest family (no attention, no cBN): initialiser compiles cost seconds per leaf here.
  (gv, dv) = _check_real_init(tiny_config('resnet', cond='none', g_attn_block=0, d_attn_block=0))
  # ortho: the (kh*kw*in, out) view has orthonormal columns (rows >= cols) or rows.
  for leaf in (gv['params']['block0']['conv1']['kernel'], dv['params']['block1']['conv1']['kernel'],
               gv['params']['linear0']['kernel']):
    w = np.asarray(leaf, np.float64).reshape(-1, leaf.shape[-1])
    gram = w.T @ w if w.shape[0] >= w.shape[1] else w @ w.T
    np.testing.assert_allclose(gram, np.eye(len(gram)), atol=1e-5)
  # Biases start at 0, BN stats at (0, 1).
  assert not np.any(np.asarray(gv['params']['block0']['conv1']['bias']))
  np.testing.assert_array_equal(np.asarray(gv['batch_stats']['bn_out']['var']), 1.0)


@pytest.mark.parametrize('case', _real_init_cases(), ids=lambda c: '-'.join(map(str, c)))
def test_real_init_every_case(case):
  _check_real_init(case_config(case))


def test_initialisers():
  w = np.asarray(layers.get_init('N02', 'g')(KEY, (64, 64, 4)), np.float64)
  assert abs(w.std() - 0.02) < 0.002 and abs(w.mean()) < 0.002
  w = np.asarray(layers.get_init('glorot', 'd')(KEY, (3, 3, 16, 32)), np.float64)
  bound = np.sqrt(6.0 / (9 * 16 + 9 * 32))  # Xavier uniform, torch's conv fans
  assert w.max() <= bound and w.min() >= -bound and w.max() > 0.9 * bound
  with pytest.raises(ValueError, match='config.model.g_init'):
    layers.get_init('kaiming', 'g')


def test_bfloat16_compute_float32_params_and_outputs():
  cfg = tiny_config(dtype='bfloat16')
  g, d = models.build_models(cfg)
  g32, d32 = models.build_models(tiny_config())
  z, y, x = _inputs(cfg)
  gv, dv = numpy_variables(g, z, y), numpy_variables(d, x, y)
  for leaf in jax.tree.leaves((gv, dv)):
    assert leaf.dtype == jnp.float32

  @jax.jit
  def fn(gv, dv):
    img = g.apply(gv, z, y, train=False)
    img32 = g32.apply(gv, z, y, train=False)
    return img, img32, d.apply(dv, img32, y), d32.apply(dv, img32, y)

  img, img32, out, out32 = fn(gv, dv)
  assert img.dtype == jnp.float32
  for leaf in jax.tree.leaves(out):
    assert leaf.dtype == jnp.float32 and np.all(np.isfinite(np.asarray(leaf)))
  # bf16 keeps 8 mantissa bits (~0.4% per op, compounding over ~15 layers of random
  # weights): the same function, so the outputs agree closely on average, not elementwise.
  a, b = np.asarray(img).ravel(), np.asarray(img32).ravel()
  assert np.mean(np.abs(a - b)) < 0.05 and np.corrcoef(a, b)[0, 1] > 0.98
  a, b = np.asarray(out.adv), np.asarray(out32.adv)
  assert np.max(np.abs(a - b)) < 0.1 * np.abs(b).max()
  assert not np.array_equal(np.asarray(img), np.asarray(img32))  # bf16 really used


def test_config_errors_name_the_key():
  for key, value, match in (('backbone', 'vit', 'config.model.backbone'),
                            ('cond_method', 'mh', 'config.model.cond_method'),
                            ('dtype', 'float16', 'config.model.dtype'),
                            ('d_init', 'he', 'config.model.d_init'),
                            ('z_dim', 17, 'config.model.z_dim')):
    with pytest.raises(ValueError, match=match):
      models.build_models(tiny_config(**{key: value}))
  with pytest.raises(ValueError, match='config.data.image_size'):
    models.build_models(tiny_config('dcgan', 64))
  with pytest.raises(ValueError, match='config.data.image_size'):
    models.build_models(tiny_config('resnet', 48))


# ---- parameter and SN counts (SPEC.md section 3 table) -----------------------------------------

# (config module, cond override) -> (G params, G SN modules, D params, D SN modules), verbatim
# from SPEC.md. Counts match exactly: torch's spectral_norm keeps u/v as buffers and BN running
# statistics are buffers, as our sn_state / batch_stats are not 'params'.
SPEC_COUNTS = {
    ('cifar10_reacgan', None): (9_416_196, 27, 2_517_186, 17),
    ('cifar10_biggan_pd', None): (9_416_196, 27, 2_415_170, 16),
    ('cifar10_acgan', None): (9_416_196, 27, 2_415_170, 16),
    ('cifar10_sngan_pd', None): (4_304_387, 0, 1_055_105, 12),
    ('tiny_imagenet_reacgan', None): (17_335_204, 34, 31_678_130, 22),
    ('imagenet128_reacgan', None): (70_433_988, 41, 91_642_146, 24),
    ('imagenet128_reacgan', 'pd'): (70_433_988, 41, 87_982_370, 23),
    ('imagenet128_reacgan', 'acgan'): (70_433_988, 41, 87_982_370, 23),
}


def counts(cfg):
  g, d = models.build_models(cfg)
  s = cfg.data.image_size
  z, y = jnp.zeros((2, cfg.model.z_dim)), jnp.zeros((2,), jnp.int32)
  gp = _shapes(g, z, y)['params']
  dp = _shapes(d, jnp.zeros((2, s, s, 3)), y)['params']

  def n_sn(params, which):
    pred = models.sn_predicate(cfg, which)
    state = jax.eval_shape(lambda p: spectral_norm.init_sn_state(p, KEY, pred), params)
    paths = spectral_norm.sn_paths(state)  # one {'u', 'v'} per normalised leaf
    assert len(jax.tree.leaves(state)) == 2 * len(paths)
    return len(paths), paths

  (g_sn, g_paths), (d_sn, d_paths) = n_sn(gp, 'g'), n_sn(dp, 'd')
  return (_num(gp), g_sn, _num(dp), d_sn), g_paths, d_paths


@pytest.mark.parametrize('name,cond', sorted(SPEC_COUNTS, key=str))
def test_param_and_sn_counts_match_spec(name, cond):
  cfg = _load_config(name)
  if cond:
    cfg.model.cond_method = cond
  got, g_paths, d_paths = counts(cfg)
  assert got == SPEC_COUNTS[(name, cond)]
  assert not any('shared_embedding' in p for p in g_paths)  # G's shared embedding: no SN
  assert all(p.endswith(('kernel', 'embedding')) for p in g_paths + d_paths)
  if cfg.model.cond_method in ('pd', 'reacgan'):
    assert 'head/class_embedding/embedding' in d_paths


def test_sn_off_selects_nothing():
  cfg = tiny_config(apply_g_sn=False, apply_d_sn=False)
  (_, g_sn, _, d_sn), _, _ = counts(cfg)
  assert g_sn == d_sn == 0
  with pytest.raises(ValueError):
    models.sn_predicate(cfg, 'x')


def test_resnet_d_without_sn_has_bn():
  cfg = _load_config('cifar10_sngan_pd')
  cfg.model.apply_d_sn = False
  _, d = models.build_models(cfg)
  shapes = _shapes(d, jnp.zeros((2, 32, 32, 3)), jnp.zeros((2,), jnp.int32))
  # OptBlock bn0/bn1, block1 bn0/1/2, blocks 2-3 bn1/2 (no shortcut conv there): 9 BNs.
  assert len(jax.tree.leaves(shapes['batch_stats'])) == 2 * 9
  assert _num(shapes['params']) == 1_055_105 + 2 * (3 + 128 * 8)  # + BN scale/bias


# ---- heads ---------------------------------------------------------------------------------------


def _head_outputs(cond, y2_shift=1):
  cfg = tiny_config(cond=cond)
  _, d = models.build_models(cfg)
  _, y, x = _inputs(cfg)
  y2 = (y + y2_shift) % cfg.data.num_classes
  dv = numpy_variables(d, x, y)
  fn = jax.jit(lambda dv, y: d.apply(dv, x, y))
  return dv['params']['head'], y, y2, fn(dv, y), fn(dv, y2)


def test_projection_head_adds_embedding_dot_h():
  head, y, y2, o1, o2 = _head_outputs('pd')
  table = np.asarray(head['class_embedding']['embedding'], np.float64)
  h = np.asarray(o1.h, np.float64)
  np.testing.assert_array_equal(o1.h, o2.h)  # the backbone does not see the label
  lin = h @ np.asarray(head['adv_linear']['kernel'], np.float64)[:, 0] + float(
      head['adv_linear']['bias'][0])
  want1 = lin + np.sum(table[np.asarray(y)] * h, axis=1)
  want_diff = np.sum((table[np.asarray(y)] - table[np.asarray(y2)]) * h, axis=1)
  scale = np.abs(want1).max()
  # float32 sums of F terms: relative error ~1e-6 of the largest term.
  np.testing.assert_allclose(o1.adv, want1, atol=1e-5 * scale)
  np.testing.assert_allclose(np.asarray(o1.adv) - np.asarray(o2.adv), want_diff, atol=1e-5 * scale)
  assert np.abs(want_diff).max() > 1e-3 * scale  # swapping labels really changed the logit


def test_acgan_head_class_logits():
  head, y, _, o1, o2 = _head_outputs('acgan')
  assert 'bias' not in head['class_linear']  # reference: no bias
  w = np.asarray(head['class_linear']['kernel'], np.float64)
  h = np.asarray(o1.h, np.float64)
  assert o1.class_logits.shape == (4, 10)
  np.testing.assert_allclose(o1.class_logits, h @ w, rtol=1e-5, atol=1e-5 * np.abs(h @ w).max())
  np.testing.assert_array_equal(o1.class_logits, o2.class_logits)  # labels do not enter
  np.testing.assert_array_equal(o1.adv, o2.adv)


def test_reacgan_head_embed_and_proxy():
  head, y, y2, o1, o2 = _head_outputs('reacgan')
  w, b = (np.asarray(head['embed_linear'][k], np.float64) for k in ('kernel', 'bias'))
  table = np.asarray(head['class_embedding']['embedding'])
  h = np.asarray(o1.h, np.float64)
  assert o1.embed.shape == (4, 8) and o1.proxy.shape == (4, 8)
  want = h @ w + b
  np.testing.assert_allclose(o1.embed, want, atol=1e-5 * np.abs(want).max())
  np.testing.assert_array_equal(o1.proxy, table[np.asarray(y)])  # the row of y, unnormalised
  np.testing.assert_array_equal(o2.proxy, table[np.asarray(y2)])
  np.testing.assert_array_equal(o1.embed, o2.embed)
  np.testing.assert_array_equal(o1.adv, o2.adv)  # no projection term


# ---- layers vs float64 references ----------------------------------------------------------------


def _bn_reference(x, groups, eps, mean0, var0, momentum):
  b = x.shape[0]
  xg = x.reshape((groups, b // groups) + x.shape[1:])
  mu = xg.mean(axis=(1, 2, 3), keepdims=True)
  var = xg.var(axis=(1, 2, 3), keepdims=True)
  y = ((xg - mu) / np.sqrt(var + eps)).reshape(x.shape)
  n = xg[0].size // x.shape[-1]
  new_mean = momentum * mean0 + (1 - momentum) * mu.reshape(groups, -1).mean(0)
  new_var = momentum * var0 + (1 - momentum) * (var.reshape(groups, -1) * n / (n - 1)).mean(0)
  return y, new_mean, new_var


@pytest.mark.parametrize('groups', [1, 2])
def test_batchnorm_matches_reference(groups):
  rng = np.random.default_rng(0)
  x = rng.normal(2.0, 3.0, (4, 3, 5, 6))
  mean0, var0 = rng.normal(size=6), rng.uniform(0.5, 2, 6)
  bn = layers.BatchNorm(use_scale_bias=False, groups=groups)
  v = {'batch_stats': {'mean': jnp.asarray(mean0, jnp.float32),
                       'var': jnp.asarray(var0, jnp.float32)}}
  y, upd = bn.apply(v, jnp.asarray(x, jnp.float32), False, mutable=['batch_stats'])
  want, want_mean, want_var = _bn_reference(x, groups, layers.BN_EPS, mean0, var0, 0.9)
  np.testing.assert_allclose(y, want, atol=2e-5)
  np.testing.assert_allclose(upd['batch_stats']['mean'], want_mean, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(upd['batch_stats']['var'], want_var, rtol=1e-5)
  # Without 'batch_stats' mutable: batch statistics, and no error / no update.
  y2 = bn.apply(v, jnp.asarray(x, jnp.float32), False)
  np.testing.assert_array_equal(y, y2)
  # Running statistics in eval mode.
  y3 = bn.apply(v, jnp.asarray(x, jnp.float32), True)
  np.testing.assert_allclose(y3, (x - mean0) / np.sqrt(var0 + layers.BN_EPS), atol=2e-5)
  with pytest.raises(ValueError, match='bn_groups'):
    layers.BatchNorm(groups=3).init(KEY, jnp.zeros((4, 2, 2, 1)), False)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_window_sum_pooling_and_upsampling_match_their_definitions(dtype):
  """The oneDNN backend's 2x2 average pooling and nearest-upsampling gradient (strided adds,
  float32 accumulation) against their float64 definitions on the same (rounded) inputs.

  Pooling: a float32 mean of 4 float32 terms is within 3 roundings of the terms' absolute sum
  (asserted at 1e-6 of it); of 4 bf16 terms the float32 sum is exact and the result rounded
  once, within half a bf16 ulp (2^-9 relative; asserted at 2^-8 of the absolute sum). Its
  gradient g / 4, upsampled, is exact in either dtype. The upsampling's values are the XLA
  path's bit for bit; its gradient, the 2x2 window sums of g, within the same bounds as the
  pooling. Neither has a reduce left (the point of them).
  """
  rng = np.random.default_rng(5)
  x = jnp.asarray(rng.normal(size=(2, 6, 4, 3)), dtype)
  g_small = jnp.asarray(rng.normal(size=(2, 3, 2, 3)), dtype)
  g_big = jnp.asarray(rng.normal(size=(2, 12, 8, 3)), dtype)
  x64, gs64, gb64 = (np.asarray(a, np.float64) for a in (x, g_small, g_big))
  windows = lambda a: a.reshape(a.shape[0], a.shape[1] // 2, 2, a.shape[2] // 2, 2, a.shape[3])
  nearest = lambda a: a.repeat(2, axis=1).repeat(2, axis=2)
  rtol = 1e-6 if dtype == 'float32' else 2.0 ** -8

  def assert_window_sums(got, a, scale):
    err = np.abs(np.asarray(got, np.float64) - windows(a).sum((2, 4)) * scale)
    bound = rtol * np.abs(windows(a)).sum((2, 4)) * scale
    assert np.all(err <= bound), float(np.max(err / bound))

  y, vjp = jax.vjp(lambda a: layers.avg_pool2x(a, 'onednn'), x)
  assert y.dtype == x.dtype
  assert_window_sums(y, x64, 0.25)
  (gx,) = vjp(g_small)
  np.testing.assert_array_equal(np.asarray(gx, np.float64), nearest(gs64) / 4)

  u, vjp = jax.vjp(lambda a: layers.upsample2x(a, 'onednn'), x)
  np.testing.assert_array_equal(u, layers.upsample2x(x))
  (gu,) = vjp(g_big)
  assert gu.dtype == x.dtype
  assert_window_sums(gu, gb64, 1.0)

  for fn in (lambda a: layers.avg_pool2x(a, 'onednn'), lambda a: layers.upsample2x(a, 'onednn')):
    _, f_vjp = jax.vjp(fn, x)
    jaxprs = str(jax.make_jaxpr(fn)(x)) + str(jax.make_jaxpr(f_vjp)(fn(x)))
    assert 'reduce_sum' not in jaxprs
  # The XLA backend keeps its reduce (recorded float32 results stay bit-identical).
  assert 'reduce_sum' in str(jax.make_jaxpr(layers.avg_pool2x)(x))
  # Differentiable twice (R1 differentiates D's input gradient again): equal to the XLA path's.
  x32 = x.astype(jnp.float32)
  twice = {}
  for b in ('xla', 'onednn'):
    f = lambda a, b=b: jnp.sum(jnp.sin(layers.avg_pool2x(layers.upsample2x(jnp.sin(a), b), b)))
    twice[b] = jax.grad(lambda a, f=f: jnp.sum(jax.grad(f)(a) ** 2))(x32)
  np.testing.assert_allclose(twice['onednn'], twice['xla'], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('dtype', ['float32', 'bfloat16'])
def test_per_sample_affine_matches_its_definition(dtype):
  """The oneDNN backend's conditional-BN affine y * gain + bias (per sample and channel): values
  as the XLA path computes them, bit for bit; the input gradient g * gain likewise; the gain and
  bias gradients, sums over (H, W) by halving adds in float32 (odd sizes padded), against the
  float64 sums of the same (rounded) inputs within float32 rounding of the terms' absolute sum
  (1e-6); no reduce in the backward (the point); differentiable again, as the plain expression."""
  rng = np.random.default_rng(6)
  y = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), dtype)      # odd W: the padded halving
  gain = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  bias = jnp.asarray(rng.normal(size=(2, 3)), jnp.float32)
  g = jnp.asarray(rng.normal(size=(2, 6, 5, 3)), dtype)

  def plain(y, gain, bias):  # ConditionalBatchNorm's XLA path
    return y * gain[:, None, None, :].astype(y.dtype) + bias[:, None, None, :].astype(y.dtype)

  out, vjp = jax.vjp(layers.per_sample_affine, y, gain, bias)
  want, want_vjp = jax.vjp(plain, y, gain, bias)
  np.testing.assert_array_equal(out, want)
  (dy, dgain, dbias), (wdy, _, _) = vjp(g), want_vjp(g)
  np.testing.assert_array_equal(dy, wdy)
  assert dgain.dtype == dbias.dtype == jnp.float32
  y64, g64 = np.asarray(y, np.float64), np.asarray(g, np.float64)
  for got, terms in ((dgain, g64 * y64), (dbias, g64)):
    err = np.abs(np.asarray(got, np.float64) - terms.sum((1, 2)))
    assert np.all(err <= 1e-6 * np.abs(terms).sum((1, 2))), err
  assert 'reduce_sum' not in str(jax.make_jaxpr(vjp)(g))
  f32 = [a.astype(jnp.float32) for a in (y, gain, bias)]
  twice = [jax.grad(lambda *a, f=f: jnp.sum(jax.grad(
      lambda *b: jnp.sum(jnp.sin(f(*b))), argnums=(0, 1, 2))(*a)[1] ** 2), argnums=(0, 1))(*f32)
           for f in (layers.per_sample_affine, plain)]
  for a, b in zip(*twice, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_conditional_bn_gain_is_one_plus_gamma():
  rng = np.random.default_rng(1)
  x, a = rng.normal(size=(4, 2, 2, 3)), rng.normal(size=(4, 5))
  cbn = layers.ConditionalBatchNorm()
  v = cbn.init(KEY, jnp.asarray(x, jnp.float32), jnp.asarray(a, jnp.float32), False)
  wg = np.asarray(v['params']['gain_linear']['kernel'], np.float64)
  wb = np.asarray(v['params']['bias_linear']['kernel'], np.float64)
  y = cbn.apply(v, jnp.asarray(x, jnp.float32), jnp.asarray(a, jnp.float32), False)
  norm, _, _ = _bn_reference(x, 1, layers.BN_EPS, 0, 1, 0.9)
  want = norm * (1 + a @ wg)[:, None, None, :] + (a @ wb)[:, None, None, :]
  np.testing.assert_allclose(y, want, atol=5e-5)


def test_self_attention_matches_reference():
  rng = np.random.default_rng(2)
  b, h, w, c = 2, 4, 6, 16
  x = rng.normal(size=(b, h, w, c))
  att = layers.SelfAttention()
  v = att.init(KEY, jnp.asarray(x, jnp.float32))
  assert float(v['params']['sigma'][0]) == 0.0  # the block starts as the identity
  p = jax.tree.map(lambda a: np.asarray(a, np.float64), v['params'])
  p['sigma'] = np.array([0.7])
  got = att.apply({'params': jax.tree.map(jnp.asarray, p)}, jnp.asarray(x, jnp.float32))

  def k(name):
    return p[name]['kernel'][0, 0]

  def pool(t):  # 2x2 max pool, NHWC
    return t.reshape(b, h // 2, 2, w // 2, 2, -1).max(axis=(2, 4))

  theta = (x @ k('theta')).reshape(b, h * w, -1)
  phi = pool(x @ k('phi')).reshape(b, h * w // 4, -1)
  g = pool(x @ k('g')).reshape(b, h * w // 4, -1)
  logits = theta @ phi.transpose(0, 2, 1)
  attn = np.exp(logits - logits.max(-1, keepdims=True))
  attn /= attn.sum(-1, keepdims=True)
  want = x + 0.7 * ((attn @ g).reshape(b, h, w, -1) @ k('attn'))
  np.testing.assert_allclose(got, want, atol=1e-4)


def test_bn_groups_equal_per_group_forward_and_batch_mode_leaves_stats():
  cfg = tiny_config('resnet', cond='pd', g_attn_block=0)
  g1, _ = models.build_models(cfg)
  g2 = g1.clone(bn_groups=2)
  z, y, _ = _inputs(cfg, b=8)
  gv = numpy_variables(g1, z, y)

  @jax.jit
  def fn(gv):
    whole, upd = g2.apply(gv, z, y, train=True, mutable=['batch_stats'])
    halves = [g1.apply(gv, z[i:i + 4], y[i:i + 4], train=True, mutable=['batch_stats'])
              for i in (0, 4)]
    frozen = g2.apply(gv, z, y, train=True)  # bn_eval='batch': no mutable, no update
    return whole, upd, halves, frozen

  whole, upd, halves, frozen = fn(gv)
  np.testing.assert_allclose(whole, jnp.concatenate([h[0] for h in halves]), atol=1e-5)
  np.testing.assert_array_equal(whole, frozen)
  mean_stats = jax.tree.map(lambda a, b: (a + b) / 2, halves[0][1], halves[1][1])
  for a, b in zip(jax.tree.leaves(upd), jax.tree.leaves(mean_stats), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


# ---- parity with the torch rebuild of StudioGAN (benchmarks/torch_reference.py) ----------------


def _torch_reference():
  torch = pytest.importorskip('torch',
                              reason="torch is an optional extra: pip install -e '.[torch]'")
  path = REPO / 'benchmarks' / 'torch_reference.py'
  spec = importlib.util.spec_from_file_location('torch_reference', path)
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return torch, mod


def _strip_sn(torch, module):
  """Replaces every torch spectral_norm wrapper by its current W / sigma (a plain weight)."""
  for m in module.modules():
    for hook in list(m._forward_pre_hooks.values()):
      if type(hook).__name__ == 'SpectralNorm':
        torch.nn.utils.remove_spectral_norm(m)
  return module


def _t(p):
  return np.asarray(p.detach().numpy(), np.float32)


def _conv(m):
  out = {'kernel': _t(m.weight).transpose(2, 3, 1, 0)}
  if m.bias is not None:
    out['bias'] = _t(m.bias)
  return out


def _linear(m):
  out = {'kernel': _t(m.weight).T}
  if m.bias is not None:
    out['bias'] = _t(m.bias)
  return out


def _attention(a):
  return {'theta': _conv(a.theta), 'phi': _conv(a.phi), 'g': _conv(a.g), 'attn': _conv(a.out),
          'sigma': _t(a.sigma)}


def _torch_g_to_flax(tg, hierarchical):
  ch = tg.ch
  lin = _linear(tg.linear0)
  # torch views the linear output as (C, 4, 4); ours as (4, 4, C).
  perm = np.arange(ch * 16).reshape(ch, 4, 4).transpose(1, 2, 0).reshape(-1)
  p = {'linear0': {'kernel': lin['kernel'][:, perm], 'bias': lin['bias'][perm]},
       'bn_out': {'scale': _t(tg.bn4.weight), 'bias': _t(tg.bn4.bias)},
       'conv_out': _conv(tg.conv5)}
  if hierarchical:
    p['shared_embedding'] = {'embedding': _t(tg.shared.weight)}
  for i, blk in enumerate(tg.blocks):
    p[f'block{i}'] = {
        'conv0': _conv(blk.conv0), 'conv1': _conv(blk.conv1), 'conv2': _conv(blk.conv2),
        **{bn: {'gain_linear': _linear(getattr(blk, bn).gain),
                'bias_linear': _linear(getattr(blk, bn).bias)} for bn in ('bn1', 'bn2')}}
  if tg.attn is not None:
    p['attention'] = _attention(tg.attn)
  return p


def _torch_d_to_flax(td, cond):
  p = {}
  for i, blk in enumerate(td.blocks):
    p[f'block{i}'] = {'conv1': _conv(blk.conv1), 'conv2': _conv(blk.conv2)}
    if blk.conv0 is not None:
      p[f'block{i}']['conv0'] = _conv(blk.conv0)
  if td.attn is not None:
    p['attention'] = _attention(td.attn)
  head = {'adv_linear': _linear(td.linear1),
          'class_embedding': {'embedding': _t(td.embedding.weight)}}
  if cond == 'reacgan':
    head['embed_linear'] = _linear(td.linear2)
  p['head'] = head
  return p


@pytest.mark.parametrize('model,backbone,cond', [('reacgan', 'biggan', 'reacgan'),
                                                 ('sngan', 'resnet', 'pd')])
def test_matches_torch_rebuild_of_studiogan(model, backbone, cond):
  """Same weights in the torch rebuild and ours -> same images (train-mode BN) and D outputs.

  float32 on both sides over ~10 layers: agreement to ~1e-5 relative; we allow 1e-4.
  """
  torch, tr = _torch_reference()
  torch.manual_seed(0)
  widths = dict(g_conv_dim=4, d_conv_dim=8, shared_dim=8, embed_dim=8)
  tg, td, tcfg = tr.build(model, **widths)
  tg, td = _strip_sn(torch, tg).train(), _strip_sn(torch, td).train()
  with torch.no_grad():  # non-zero attention gates, so the attention path is compared too
    for m in (tg, td):
      if m.attn is not None:
        m.attn.sigma.fill_(0.5)
  cfg = _load_config({'reacgan': 'cifar10_reacgan', 'sngan': 'cifar10_sngan_pd'}[model])
  for k, v in widths.items():
    cfg.model[k] = v
  g, d = models.build_models(cfg)
  rng = np.random.default_rng(0)
  b = 4
  z = rng.standard_normal((b, cfg.model.z_dim)).astype(np.float32)
  y = np.array([0, 3, 3, 7])
  with torch.no_grad():
    t_img = tg(torch.from_numpy(z), torch.from_numpy(y)).numpy().transpose(0, 2, 3, 1)
    t_out = td(torch.from_numpy(t_img.transpose(0, 3, 1, 2).copy()), torch.from_numpy(y))
  gp = _torch_g_to_flax(tg, backbone == 'biggan')
  gv = numpy_variables(g, jnp.asarray(z), jnp.asarray(y, jnp.int32))
  assert jax.tree.structure(gv['params']) == jax.tree.structure(gp)
  img, _ = jax.jit(lambda p, s: g.apply({'params': p, 'batch_stats': s}, z, y, train=True,
                                        mutable=['batch_stats']))(gp, gv['batch_stats'])
  np.testing.assert_allclose(img, t_img, atol=1e-4)
  dp = _torch_d_to_flax(td, cond)
  out = jax.jit(lambda p, x: d.apply({'params': p}, x, y, train=True))(dp, jnp.asarray(t_img))
  t_adv = t_out['adv'].numpy()
  np.testing.assert_allclose(out.adv, t_adv, rtol=1e-4, atol=1e-4 * np.abs(t_adv).max())
  if cond == 'reacgan':
    np.testing.assert_allclose(losses.l2_normalize(out.embed), t_out['embed'].numpy(), atol=1e-4)
    np.testing.assert_allclose(losses.l2_normalize(out.proxy), t_out['proxy'].numpy(), atol=1e-5)


# ---- a few training steps per family -------------------------------------------------------------

TRAIN_CASES = [('biggan', 'reacgan'),
               pytest.param('resnet', 'pd', marks=pytest.mark.exhaustive),  # CI budget
               pytest.param('deep_conv', 'acgan', marks=pytest.mark.exhaustive),
               pytest.param('dcgan', 'acgan', marks=pytest.mark.exhaustive)]


def _train(cfg, steps=20, b=8):
  """hinge + cond loss (SPEC 1 'where each term applies') with SN from spectral_norm.py, Adam."""
  g, d = models.build_models(cfg)
  cond, lam = cfg.model.cond_method, 0.5
  z, y, x = _inputs(cfg, b=b)
  gv, dv = numpy_variables(g, z, y, seed=1), numpy_variables(d, x, y, seed=2)
  gp, gs, dp = gv['params'], gv['batch_stats'], dv['params']
  ds = dv.get('batch_stats', {})
  k1, k2 = jax.random.split(KEY)
  g_sn = spectral_norm.init_sn_state(gp, k1, models.sn_predicate(cfg, 'g'))
  d_sn = spectral_norm.init_sn_state(dp, k2, models.sn_predicate(cfg, 'd'))
  tx = optax.adam(2e-4, b1=0.5, b2=0.999)
  g_opt, d_opt = tx.init(gp), tx.init(dp)
  sn = lambda p, s: spectral_norm.spectral_normalize(p, s, eps=1e-6) if s else (p, s)

  def d_apply(p, s, img, lab, key):
    v = {'params': p, **({'batch_stats': s} if s else {})}
    out, upd = d.apply(v, img, lab, train=True, rngs={'dropout': key}, mutable=['batch_stats'])
    return out, upd.get('batch_stats', s)

  def cond_loss(out, lab):
    if cond == 'acgan':
      return losses.acgan_ce(out.class_logits, lab)
    if cond == 'reacgan':
      return losses.d2d_ce(out.embed, out.proxy, lab, temperature=0.5, margin_pos=0.98)
    return 0.0

  @jax.jit
  def step(carry, key):
    gp, gs, g_sn, dp, ds, d_sn, g_opt, d_opt = carry
    kz, ky, kx, kd1, kd2, kd3 = jax.random.split(key, 6)
    zf = jax.random.normal(kz, z.shape)
    yf = jax.random.randint(ky, y.shape, 0, cfg.data.num_classes)
    real = jnp.clip(x + 0.1 * jax.random.normal(kx, x.shape), -1, 1)
    gw, g_sn = sn(gp, g_sn)
    fake, _ = g.apply({'params': gw, 'batch_stats': gs}, zf, yf, train=True,
                      mutable=['batch_stats'])
    fake = jax.lax.stop_gradient(fake)

    def d_loss(dp):
      w, s1 = sn(dp, d_sn)
      out_r, st = d_apply(w, ds, real, y, kd1)
      out_f, st = d_apply(w, st, fake, yf, kd2)
      return losses.d_hinge(out_r.adv, out_f.adv) + lam * cond_loss(out_r, y), (s1, st)

    (ld, (d_sn, ds)), grads = jax.value_and_grad(d_loss, has_aux=True)(dp)
    upd, d_opt = tx.update(grads, d_opt, dp)
    dp = optax.apply_updates(dp, upd)

    def g_loss(gp):
      w, _ = sn(gp, g_sn)
      img, st = g.apply({'params': w, 'batch_stats': gs}, zf, yf, train=True,
                        mutable=['batch_stats'])
      out, _ = d_apply(sn(dp, d_sn)[0], ds, img, yf, kd3)
      return losses.g_hinge(out.adv) + lam * cond_loss(out, yf), st['batch_stats']

    (lg, gs), grads = jax.value_and_grad(g_loss, has_aux=True)(gp)
    upd, g_opt = tx.update(grads, g_opt, gp)
    gp = optax.apply_updates(gp, upd)
    return (gp, gs, g_sn, dp, ds, d_sn, g_opt, d_opt), (ld, lg)

  carry = (gp, gs, g_sn, dp, ds, d_sn, g_opt, d_opt)
  first_params = carry[0]
  hist = []
  for i in range(steps):
    carry, (ld, lg) = step(carry, jax.random.fold_in(KEY, i))
    hist.append((float(ld), float(lg)))
  return hist, first_params, carry


@pytest.mark.parametrize('backbone,cond', TRAIN_CASES)
def test_tiny_model_trains_without_nan(backbone, cond):
  cfg = tiny_config(backbone, cond=cond, apply_g_sn=True, apply_d_sn=backbone != 'dcgan')
  hist, gp0, carry = _train(cfg)
  assert np.all(np.isfinite(hist))
  for leaf in jax.tree.leaves(carry):
    assert np.all(np.isfinite(np.asarray(leaf)))
  # Both players moved, and SN's u vectors stayed unit vectors.
  moved = [float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(gp0),
                                                         jax.tree.leaves(carry[0]), strict=True)]
  assert max(moved) > 1e-3
  for u in jax.tree.leaves(carry[5]):
    np.testing.assert_allclose(float(jnp.linalg.norm(u)), 1.0, rtol=1e-4)
