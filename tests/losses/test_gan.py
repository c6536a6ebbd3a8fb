"""Losses against float64 numpy references written from SPEC.md section 1.

Tolerances. D2D-CE runs in float32 on float32 inputs; the references run in float64 on the
same (float32-representable) inputs, so only float32 arithmetic error is measured. A cosine
c_ij of unit vectors of width d <= 64 is off by < ~1e-6, which 1/T (T >= 0.2 here) turns into
< ~5e-6 in a_ij; L_i is a log-sum-exp whose derivative with respect to each term is a
probability (the weights sum to <= 1), so |error(L_i)| <= max term error, and the loss, a mean
of values of order 1-10, is within 1e-5 relative. An absolute floor of 2e-6 covers losses
that are (near) zero: rows without negatives, where pos_i cancels against -pos_i.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.losses import gan as losses

RTOL, ATOL = 1e-5, 2e-6
_STATIC = ('row_max_shift', 'false_negative_removal')


# ---- float64 references, straight from SPEC.md section 1 --------------------------------------


def _normalize_np(x, eps=1e-8):
  return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), eps)


def d2d_ce_np(embed, proxy, labels, temperature, margin_pos, margin_neg=None,
              row_max_shift=True, false_negative_removal=True, row_max=None):
  """D2D-CE by the SPEC's numbered steps, one row i at a time, float64.

  `row_max`, when given, replaces M_i (the finite-difference check holds it fixed, which is
  what stop_gradient means). Returns (loss, M) with M the row maxima used.
  """
  embed = _normalize_np(np.asarray(embed, np.float64))
  proxy = _normalize_np(np.asarray(proxy, np.float64))
  b = embed.shape[0]
  m_n = 1.0 - margin_pos if margin_neg is None else margin_neg
  t = temperature
  total, used_max = 0.0, np.zeros(b)
  for i in range(b):
    others = np.arange(b) != i  # step 2: diagonal removed
    a = (embed @ embed[i] - m_n) / t  # c_ij - m_n over T, for every j (j = i unused)
    p = embed[i] @ proxy[i]
    neg = others & (labels != labels[i]) if false_negative_removal else others  # step 3
    pos = max(margin_pos - p, 0.0) / t  # step 4
    if not row_max_shift:
      m = 0.0
    elif row_max is not None:
      m = row_max[i]
    else:  # step 6: pre-relu max over the whole off-diagonal row (same-class entries too)
      m = a[others].max() if others.any() else 0.0
    used_max[i] = m
    s = np.exp(-pos) + np.sum(np.exp(np.maximum(a[neg], 0.0) - m))  # steps 5 / 6
    total += pos + np.log(s)  # = 0 exactly (in exact arithmetic) when neg is empty (step 7)
  return total / b, used_max


def _random_case(rng, b, num_classes, d, label_mode):
  embed = rng.normal(size=(b, d)).astype(np.float32)
  proxy = rng.normal(size=(b, d)).astype(np.float32)
  if label_mode == 'same':
    labels = np.full(b, rng.integers(num_classes))
  elif label_mode == 'distinct':
    labels = rng.permutation(max(num_classes, b))[:b]
  else:  # random, repeats likely when b is large relative to num_classes
    labels = rng.integers(0, num_classes, b)
  return embed, proxy, np.asarray(labels, np.int32)


@functools.partial(jax.jit, static_argnames=_STATIC)
def _d2d_value_and_grad(embed, proxy, labels, temperature, margin_pos, margin_neg=None,
                        row_max_shift=True, false_negative_removal=True):
  """(loss, (d/d embed, d/d proxy)), jitted (eager op-by-op dispatch is slow on this CPU);
  T and margins traced so that one compilation serves every value."""
  if margin_neg is None:
    margin_neg = 1.0 - margin_pos
  fn = lambda e, p: losses.d2d_ce(e, p, labels, temperature=temperature, margin_pos=margin_pos,
                                  margin_neg=margin_neg, row_max_shift=row_max_shift,
                                  false_negative_removal=false_negative_removal)
  return jax.value_and_grad(fn, argnums=(0, 1))(embed, proxy)


def _d2d(embed, proxy, labels, **kw):
  return _d2d_value_and_grad(embed, proxy, labels, **kw)[0]


# Few distinct (B, d) pairs keep compilations (the slow part on CPU) few.
_SHAPES = [(1, 8), (2, 8), (7, 8), (16, 8), (64, 32), (256, 64)]
_LABEL_MODES = ['random', 'same', 'distinct']


def _cases(n=54, seed=0):
  rng = np.random.default_rng(seed)
  for k in range(n):
    b, d = _SHAPES[k % len(_SHAPES)]
    mode = _LABEL_MODES[(k // len(_SHAPES)) % len(_LABEL_MODES)]
    num_classes = int(rng.choice([1, 2, 3, 10, 100, 1000]))
    if mode == 'distinct':
      num_classes = max(num_classes, b)
    t = float(rng.uniform(0.2, 1.0))
    mp = float(rng.uniform(0.5, 1.0))
    mn = None if k % 2 else float(rng.uniform(-0.5, 0.5))
    yield (b, d, mode, num_classes, t, mp, mn, *_random_case(rng, b, num_classes, d, mode))


@jax.jit
def _d2d_both_forms(embed, proxy, labels, t, mp, mn):
  """(reference form, paper form) values: one compilation per shape serves both."""
  kw = dict(temperature=t, margin_pos=mp, margin_neg=mn)
  return (losses.d2d_ce(embed, proxy, labels, row_max_shift=True, **kw),
          losses.d2d_ce(embed, proxy, labels, row_max_shift=False, **kw))


def test_d2d_ce_matches_float64_reference():
  nonzero, worst = 0, 0.0
  for b, d, mode, c, t, mp, mn, embed, proxy, labels in _cases():
    got = _d2d_both_forms(embed, proxy, labels, t, mp, 1.0 - mp if mn is None else mn)
    for shift, g in zip((True, False), got, strict=True):
      want, _ = d2d_ce_np(embed, proxy, labels, t, mp, mn, row_max_shift=shift)
      assert g.dtype == jnp.float32
      np.testing.assert_allclose(
          float(g), want, rtol=RTOL, atol=ATOL,
          err_msg=f'row_max_shift={shift} B={b} d={d} labels={mode} C={c} T={t} m_p={mp} m_n={mn}')
      nonzero += abs(want) > 1e-3
      worst = max(worst, abs(float(g) - want) / max(abs(want), 1e-3))
  assert nonzero >= 50  # the cases are not all trivial (all-same labels give exactly 0)
  print(f'worst relative error {worst:.2e}')


def test_d2d_ce_margin_neg_default_is_one_minus_margin_pos():
  rng = np.random.default_rng(1)
  embed, proxy, labels = _random_case(rng, 16, 3, 8, 'random')
  # Through d2d_ce's own default (the helper above fills margin_neg itself).
  a = jax.jit(lambda e, p, y: losses.d2d_ce(e, p, y, temperature=0.5, margin_pos=0.9))(
      embed, proxy, labels)
  b = _d2d(embed, proxy, labels, temperature=0.5, margin_pos=0.9, margin_neg=0.1)
  c = _d2d(embed, proxy, labels, temperature=0.5, margin_pos=0.9, margin_neg=0.3)
  np.testing.assert_allclose(a, b, rtol=1e-6)
  assert abs(float(a) - float(c)) > 1e-3


def test_d2d_ce_row_max_shift_changes_value():
  # SPEC 1.6: M_i is subtracted from the negatives only, so the two forms differ.
  rng = np.random.default_rng(2)
  embed, proxy, labels = _random_case(rng, 16, 4, 8, 'random')
  kw = dict(temperature=0.5, margin_pos=0.98)
  ref = _d2d(embed, proxy, labels, row_max_shift=True, **kw)
  paper = _d2d(embed, proxy, labels, row_max_shift=False, **kw)
  assert abs(float(ref) - float(paper)) > 1e-2


def _fd_grad(fn, x, h=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (fn(xp) - fn(xm)) / (2 * h)
  return g


@pytest.mark.parametrize('row_max_shift', [True, False], ids=['reference', 'paper'])
def test_d2d_ce_gradient_matches_finite_differences(row_max_shift):
  # float64 on both sides (x64 only inside this test) so that central differences with
  # h = 1e-6 are accurate to ~1e-9; M_i is held fixed in the numpy function (stop_gradient).
  rng = np.random.default_rng(3)
  kw = dict(temperature=0.4, margin_pos=0.9, margin_neg=0.05, row_max_shift=row_max_shift)
  for b, d, c in [(6, 4, 3), (5, 3, 2)]:
    embed = rng.normal(size=(b, d))
    proxy = rng.normal(size=(b, d))
    labels = rng.integers(0, c, b)
    _, m_fixed = d2d_ce_np(embed, proxy, labels, **kw)
    with jax.enable_x64(True):
      _, (ge, gp) = _d2d_value_and_grad(jnp.asarray(embed), jnp.asarray(proxy),
                                        jnp.asarray(labels), **kw)
      ge, gp = np.asarray(ge), np.asarray(gp)
    assert ge.dtype == np.float64
    ref = functools.partial(d2d_ce_np, labels=labels, row_max=m_fixed, **kw)
    fe = _fd_grad(lambda e, ref=ref, p=proxy: ref(e, p)[0], embed)
    fp = _fd_grad(lambda p, ref=ref, e=embed: ref(e, p)[0], proxy)
    np.testing.assert_allclose(ge, fe, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(gp, fp, rtol=1e-6, atol=1e-8)
    if row_max_shift:
      # The gradient is NOT the derivative of the value (M_i moves with embed): this fails if
      # the stop_gradient on M_i were dropped.
      full = _fd_grad(lambda e, p=proxy, y=labels: d2d_ce_np(e, p, y, **kw)[0], embed)
      assert np.abs(full - ge).max() > 1e-3


def test_d2d_ce_float32_gradient_close_to_float64():
  rng = np.random.default_rng(4)
  embed, proxy, labels = _random_case(rng, 16, 5, 8, 'random')
  kw = dict(temperature=0.5, margin_pos=0.98)
  _, g32 = _d2d_value_and_grad(embed, proxy, labels, **kw)
  with jax.enable_x64(True):
    _, g64 = _d2d_value_and_grad(embed.astype(np.float64), proxy.astype(np.float64), labels,
                                 **kw)
    g64 = [np.asarray(g) for g in g64]
  for a, b in zip(g32, g64, strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)


def test_d2d_ce_permutation_invariant():
  rng = np.random.default_rng(5)
  embed, proxy, labels = _random_case(rng, 16, 4, 8, 'random')
  perm = rng.permutation(16)
  for shift in (True, False):
    kw = dict(temperature=0.5, margin_pos=0.98, row_max_shift=shift)
    a = _d2d(embed, proxy, labels, **kw)
    b = _d2d(embed[perm], proxy[perm], labels[perm], **kw)
    np.testing.assert_allclose(a, b, rtol=1e-6)


@pytest.mark.parametrize('row_max_shift', [True, False])
def test_d2d_ce_finite_for_zero_vectors(row_max_shift):
  labels = np.array([0, 1, 1, 2, 2, 2, 3, 4, 5, 5, 6, 7, 8, 9, 9, 0], np.int32)
  kw = dict(temperature=0.5, margin_pos=0.98, row_max_shift=row_max_shift)
  zeros = np.zeros((16, 8), np.float32)
  ones = np.ones((16, 8), np.float32)
  for embed, proxy in [(zeros, zeros), (zeros, ones), (ones, zeros)]:
    val, grads = _d2d_value_and_grad(embed, proxy, labels, **kw)
    assert np.isfinite(val)
    assert all(np.isfinite(g).all() for g in grads)
  # Zero vectors normalise to 0: every c_ij = p_i = 0, checked against the reference.
  want, _ = d2d_ce_np(zeros, zeros, labels, 0.5, 0.98, row_max_shift=row_max_shift)
  np.testing.assert_allclose(_d2d(zeros, zeros, labels, **kw), want, rtol=RTOL)


def test_d2d_ce_no_negatives_is_zero():
  rng = np.random.default_rng(6)
  kw = dict(temperature=0.3, margin_pos=0.98)
  e1, p1, _ = _random_case(rng, 1, 1, 8, 'same')
  val, (ge, gp) = _d2d_value_and_grad(e1, p1, np.array([3], np.int32), **kw)  # batch of one
  assert float(val) == 0.0
  assert np.all(ge == 0) and np.all(gp == 0)
  e, p, y = _random_case(rng, 16, 5, 8, 'same')
  val, (ge, gp) = _d2d_value_and_grad(e, p, y, **kw)  # all labels equal
  assert float(val) == 0.0
  assert np.all(ge == 0) and np.all(gp == 0)


def test_d2d_ce_false_negative_removal_ablation():
  rng = np.random.default_rng(7)
  kw = dict(temperature=0.5, margin_pos=0.98)
  embed, proxy, labels = _random_case(rng, 16, 3, 8, 'random')  # repeats certain (16 > 3)
  on = _d2d(embed, proxy, labels, **kw)
  off = _d2d(embed, proxy, labels, false_negative_removal=False, **kw)
  assert abs(float(on) - float(off)) > 1e-2
  want, _ = d2d_ce_np(embed, proxy, labels, 0.5, 0.98, false_negative_removal=False)
  np.testing.assert_allclose(off, want, rtol=RTOL, atol=ATOL)
  # With all labels distinct there are no false negatives to remove: identical.
  embed, proxy, labels = _random_case(rng, 16, 16, 8, 'distinct')
  on = _d2d(embed, proxy, labels, **kw)
  off = _d2d(embed, proxy, labels, false_negative_removal=False, **kw)
  np.testing.assert_array_equal(on, off)


def test_d2d_ce_batch_sharded_equals_single_device():
  # SPEC 1.8: on a batch-sharded global array under jit the loss is over the global batch.
  devices = np.array(jax.devices())
  if devices.size < 2:
    pytest.skip('needs several devices (tests/conftest.py sets 8 fake CPU devices)')
  mesh = jax.sharding.Mesh(devices, ('data',))
  shard = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('data'))
  rng = np.random.default_rng(8)
  b = 16 if 16 % devices.size == 0 else 4 * devices.size
  embed, proxy, labels = _random_case(rng, b, 3, 8, 'random')
  fn = jax.jit(jax.value_and_grad(
      lambda e, p, y: losses.d2d_ce(e, p, y, temperature=0.5, margin_pos=0.98), argnums=(0, 1)))
  v1, g1 = fn(embed, proxy, labels)
  vs, gs = fn(*(jax.device_put(x, shard) for x in (embed, proxy, labels)))
  want, _ = d2d_ce_np(embed, proxy, labels, 0.5, 0.98)
  np.testing.assert_allclose(vs, want, rtol=RTOL, atol=ATOL)
  np.testing.assert_allclose(vs, v1, rtol=1e-6)
  for a, b_ in zip(g1, gs, strict=True):
    np.testing.assert_allclose(a, b_, rtol=1e-5, atol=1e-7)


def test_d2d_ce_bad_inputs():
  e = np.zeros((4, 8), np.float32)
  y = np.zeros(4, np.int32)
  with pytest.raises(ValueError, match='proxy'):
    losses.d2d_ce(e, e[:, :4], y, temperature=0.5, margin_pos=0.98)
  with pytest.raises(ValueError, match='labels'):
    losses.d2d_ce(e, e, y[:3], temperature=0.5, margin_pos=0.98)
  with pytest.raises(ValueError, match='config.loss.temperature'):
    losses.d2d_ce(e, e, y, temperature=0.0, margin_pos=0.98)


# ---- ACGAN cross-entropy and adversarial losses --------------------------------------------------


def test_acgan_ce_matches_numpy():
  rng = np.random.default_rng(9)
  for b, c in [(1, 1), (7, 10), (64, 1000)]:
    logits = (3 * rng.normal(size=(b, c))).astype(np.float32)
    labels = rng.integers(0, c, b).astype(np.int32)
    x = logits.astype(np.float64)
    logp = x - x.max(1, keepdims=True)
    logp -= np.log(np.exp(logp).sum(1, keepdims=True))
    want = -np.mean(logp[np.arange(b), labels])
    val, grad = jax.jit(jax.value_and_grad(losses.acgan_ce))(logits, labels)
    np.testing.assert_allclose(val, want, rtol=1e-5, atol=1e-6)
    # d/dlogits = (softmax - onehot) / B
    onehot = np.eye(c)[labels]
    np.testing.assert_allclose(grad, (np.exp(logp) - onehot) / b, rtol=1e-5, atol=1e-7)


def _softplus_np(x):
  return np.logaddexp(0.0, x)


_ADV_NP = {
    'hinge': (lambda r, f: np.mean(np.maximum(1 - r, 0)) + np.mean(np.maximum(1 + f, 0)),
              lambda f: -np.mean(f)),
    'logistic': (lambda r, f: np.mean(_softplus_np(-r)) + np.mean(_softplus_np(f)),
                 lambda f: np.mean(_softplus_np(-f))),
    'wasserstein': (lambda r, f: np.mean(f) - np.mean(r), lambda f: -np.mean(f)),
}


@pytest.mark.parametrize('name', sorted(_ADV_NP))
def test_adversarial_losses_match_numpy(name):
  d_fn, g_fn = losses.adversarial_losses(name)
  d_np, g_np = _ADV_NP[name]
  rng = np.random.default_rng(10)
  for b in (1, 5, 128):
    r = (3 * rng.normal(size=b)).astype(np.float32)
    f = (3 * rng.normal(size=b)).astype(np.float32)
    r64, f64 = r.astype(np.float64), f.astype(np.float64)
    np.testing.assert_allclose(d_fn(r, f), d_np(r64, f64), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(g_fn(f), g_np(f64), rtol=1e-5, atol=1e-6)


def test_hinge_gradients():
  r = np.array([-2.0, 0.5, 1.5, 3.0], np.float32)
  f = np.array([-3.0, -1.5, -0.5, 2.0], np.float32)
  b = r.size
  gr, gf = jax.grad(losses.d_hinge, argnums=(0, 1))(r, f)
  np.testing.assert_array_equal(gr, np.where(r < 1, -1.0 / b, 0.0))
  np.testing.assert_array_equal(gf, np.where(f > -1, 1.0 / b, 0.0))
  np.testing.assert_allclose(jax.grad(losses.g_hinge)(f), np.full(b, -1.0 / b))


def test_logistic_gradients():
  r = np.array([-2.0, 0.0, 3.0], np.float32)
  f = np.array([-1.0, 0.0, 4.0], np.float32)
  b = r.size
  sig = lambda x: 1 / (1 + np.exp(-x.astype(np.float64)))
  gr, gf = jax.grad(losses.d_logistic, argnums=(0, 1))(r, f)
  np.testing.assert_allclose(gr, -sig(-r) / b, rtol=1e-6)  # -(1 - D(x)) / B
  np.testing.assert_allclose(gf, sig(f) / b, rtol=1e-6)
  # Non-saturating: the G gradient stays large where D confidently rejects fakes (f << 0).
  np.testing.assert_allclose(jax.grad(losses.g_logistic)(f), -sig(-f) / b, rtol=1e-6)
  gw = jax.grad(losses.d_wasserstein, argnums=(0, 1))(r, f)
  np.testing.assert_allclose(gw[0], np.full(b, -1.0 / b))
  np.testing.assert_allclose(gw[1], np.full(b, 1.0 / b))


def test_adversarial_losses_unknown_name():
  with pytest.raises(ValueError, match='config.loss.adv'):
    losses.adversarial_losses('lsgan')
