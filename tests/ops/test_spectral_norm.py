"""Spectral norm against float64 numpy (power iteration written from SPEC.md section 2 /
torch's `spectral_norm`, and np.linalg.svd), finite differences, and torch itself.

Tolerances: the float32 power iteration agrees with the float64 one to ~1e-6 relative (a few
matrix-vector products of width <= 54); sigma estimates are compared with the SVD at 1e-4,
reached once (sigma_2 / sigma_1)^(2k) is below that (the matrices below are random Gaussian,
k = 60 iterations in one call or 120 calls of one iteration).
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.ops import spectral_norm as sn

EPS = 1e-6  # the reference's eps (SPEC 2)


def _params(seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  return {
      'Dense_0': {'kernel': rng.normal(size=(9, 5)).astype(dtype),
                  'bias': rng.normal(size=(5,)).astype(dtype)},
      'block': {'Conv_0': {'kernel': rng.normal(size=(3, 3, 6, 4)).astype(dtype),  # HWIO
                           'bias': np.zeros(4, dtype)}},
      'embed': {'embedding': rng.normal(size=(10, 7)).astype(dtype)},
      'BatchNorm_0': {'scale': np.ones(4, dtype)},
      'not_me': {'kernel': rng.normal(size=(4, 4)).astype(dtype)},
  }


_PRED = sn.make_predicate(include=('kernel', 'embedding'), exclude=('not_me',))
_SN_LEAVES = ['Dense_0/kernel', 'block/Conv_0/kernel', 'embed/embedding']


def _get(tree, path):
  for key in path.split('/'):
    tree = tree[key]
  return tree


def _matrix(w):
  return np.asarray(w, np.float64).reshape(-1, w.shape[-1])


def _sigma_max(w):
  return np.linalg.svd(_matrix(w), compute_uv=False)[0]


def power_iteration_np(w, u, n, eps=EPS):
  """torch.nn.utils.spectral_norm's train-mode update in float64, on our (rows, out) view M
  (torch's weight matrix is M^T): v = normalize(M u), u = normalize(M^T v), sigma = u.M^T.v."""
  m = _matrix(w)
  u = np.asarray(u, np.float64)
  normalize = lambda x: x / max(np.linalg.norm(x), eps)
  for _ in range(n):
    v = normalize(m @ u)
    u = normalize(m.T @ v)
  sigma = u @ m.T @ v
  return np.asarray(w, np.float64) / sigma, u, v, sigma


@functools.partial(jax.jit, static_argnames=('n_power_iterations', 'update', 'eval_mode'))
def _sn_jit(params, state, n_power_iterations=1, update=True, eval_mode='stored'):
  return sn.spectral_normalize(params, state, n_power_iterations=n_power_iterations, eps=EPS,
                               update=update, eval_mode=eval_mode)


def test_init_state_structure():
  params = _params()
  state = sn.init_sn_state(params, jax.random.PRNGKey(0), _PRED)
  assert sn.sn_paths(state) == sorted(_SN_LEAVES)
  us = []
  for path in _SN_LEAVES:
    u, v = np.asarray(_get(state, path)['u']), np.asarray(_get(state, path)['v'])
    w = _get(params, path)
    assert u.shape == (w.shape[-1],) and u.dtype == np.float32
    assert v.shape == (w.size // w.shape[-1],) and v.dtype == np.float32
    np.testing.assert_allclose([np.linalg.norm(u), np.linalg.norm(v)], 1.0, rtol=1e-6)
    us.append(u)
  assert len({u.tobytes() for u in us}) == len(us)  # one key per leaf
  # Same key, same state; another key, another state.
  again = sn.init_sn_state(params, jax.random.PRNGKey(0), _PRED)
  other = sn.init_sn_state(params, jax.random.PRNGKey(1), _PRED)
  np.testing.assert_array_equal(again['embed']['embedding']['u'], state['embed']['embedding']['u'])
  assert not np.array_equal(other['embed']['embedding']['u'], state['embed']['embedding']['u'])
  # rows_u: the embedding's u over its rows (torch's nn.Embedding), v over the width; the
  # kernels' vectors are the same draws as without it.
  rows = sn.init_sn_state(params, jax.random.PRNGKey(0), _PRED, rows_u=sn.embedding_rows)
  assert rows['embed']['embedding']['u'].shape == (10,)
  assert rows['embed']['embedding']['v'].shape == (7,)
  np.testing.assert_array_equal(rows['Dense_0']['kernel']['u'], state['Dense_0']['kernel']['u'])
  assert sn.init_sn_state(params, jax.random.PRNGKey(0), lambda p, x: False) == {}


def test_make_predicate():
  pred = sn.make_predicate(exclude=('shared',))
  w = np.zeros((3, 4))
  assert pred(('Dense_0', 'kernel'), w)
  assert pred(('proxy', 'embedding'), w)
  assert not pred(('shared', 'embedding'), w)
  assert not pred(('Dense_0', 'bias'), np.zeros(4))
  assert not pred(('Dense_0', 'kernel'), np.zeros(4))  # no matrix view of a vector
  assert sn.make_predicate(include=('attn',))(('attn', 'q', 'kernel'), w)
  assert not sn.make_predicate(include=('attn',))(('Conv_0', 'kernel'), w)


@pytest.mark.parametrize('n', [1, 3])
def test_matches_float64_power_iteration(n):
  params = _params(1)
  state = sn.init_sn_state(params, jax.random.PRNGKey(1), _PRED)
  out, new_state = _sn_jit(params, state, n_power_iterations=n)
  for path in _SN_LEAVES:
    w_n, u, v, _ = power_iteration_np(_get(params, path), _get(state, path)['u'], n)
    np.testing.assert_allclose(_get(out, path), w_n, rtol=2e-5, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(_get(new_state, path)['u'], u, rtol=2e-5, atol=1e-6, err_msg=path)
    np.testing.assert_allclose(_get(new_state, path)['v'], v, rtol=2e-5, atol=1e-6, err_msg=path)


def test_non_selected_leaves_pass_through():
  params = _params(2)
  state = sn.init_sn_state(params, jax.random.PRNGKey(2), _PRED)
  out, _ = sn.spectral_normalize(params, state, eps=EPS)  # eager: identity is observable
  for path in ['Dense_0/bias', 'block/Conv_0/bias', 'BatchNorm_0/scale', 'not_me/kernel']:
    assert _get(out, path) is _get(params, path), path
  out_j, _ = _sn_jit(params, state)
  assert jax.tree.structure(out_j) == jax.tree.structure(params)
  for path in ['Dense_0/bias', 'BatchNorm_0/scale', 'not_me/kernel']:
    np.testing.assert_array_equal(_get(out_j, path), _get(params, path))
  for path in _SN_LEAVES:  # and the selected ones did change
    assert not np.allclose(_get(out_j, path), _get(params, path))


def test_converges_to_largest_singular_value():
  params = _params(3)
  state = sn.init_sn_state(params, jax.random.PRNGKey(3), _PRED)
  out, _ = _sn_jit(params, state, n_power_iterations=60)
  for path in _SN_LEAVES:
    w, w_n = np.asarray(_get(params, path), np.float64), np.asarray(_get(out, path), np.float64)
    estimate = np.linalg.norm(w) / np.linalg.norm(w_n)  # w_n = w / sigma exactly
    np.testing.assert_allclose(estimate, _sigma_max(w), rtol=1e-4, err_msg=path)
    np.testing.assert_allclose(_sigma_max(w_n), 1.0, atol=1e-3, err_msg=path)


def test_one_iteration_per_call_converges_with_persistent_state():
  params = _params(4)
  state = sn.init_sn_state(params, jax.random.PRNGKey(4), _PRED)
  errors = []
  for _ in range(120):
    out, state = _sn_jit(params, state)  # one power iteration, state carried over
    errors.append(max(abs(_sigma_max(_get(out, p)) - 1.0) for p in _SN_LEAVES))
  assert errors[0] > 1e-3  # one iteration from a random u is not enough...
  assert errors[-1] < 1e-4  # ...but they accumulate through the state
  for path in _SN_LEAVES:
    np.testing.assert_allclose(np.linalg.norm(_get(state, path)['u']), 1.0, rtol=1e-5)


def test_update_false_keeps_state_and_uses_it():
  params = _params(5)
  state = sn.init_sn_state(params, jax.random.PRNGKey(5), _PRED)
  _, state = _sn_jit(params, state)  # a state that is not the initial one
  params = jax.tree.map(lambda w: w * 1.1, params)  # stale vectors: the two rules differ
  for mode in ('stored', 'recompute'):
    out, same = sn.spectral_normalize(params, state, eps=EPS, update=False, eval_mode=mode)
    assert same is state
    out_j, same_j = _sn_jit(params, state, update=False, eval_mode=mode)
    for path in _SN_LEAVES:
      u, v = (np.asarray(_get(state, path)[k]) for k in ('u', 'v'))
      for k, x in (('u', u), ('v', v)):  # bit-identical
        assert np.asarray(_get(same_j, path)[k]).tobytes() == x.tobytes()
      # No iteration. stored (torch eval): sigma = v.M u with both stored vectors; recompute:
      # v = normalize(M u), sigma = v.M u = ||M u||.
      m = _matrix(_get(params, path))
      sigma = v @ m @ u if mode == 'stored' else np.linalg.norm(m @ u)
      want = np.asarray(_get(params, path), np.float64) / sigma
      np.testing.assert_allclose(_get(out_j, path), want, rtol=2e-5, atol=1e-6, err_msg=path)
      np.testing.assert_allclose(_get(out, path), want, rtol=2e-5, atol=1e-6, err_msg=path)


def test_jit_matches_eager():
  params = _params(6)
  state = sn.init_sn_state(params, jax.random.PRNGKey(6), _PRED)
  eager = sn.spectral_normalize(params, state, n_power_iterations=2, eps=EPS)
  jitted = _sn_jit(params, state, n_power_iterations=2)
  assert jax.tree.structure(eager) == jax.tree.structure(jitted)
  for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def _fd_grad(fn, x, h=1e-6):
  g = np.zeros_like(x)
  for idx in np.ndindex(x.shape):
    xp, xm = x.copy(), x.copy()
    xp[idx] += h
    xm[idx] -= h
    g[idx] = (fn(xp) - fn(xm)) / (2 * h)
  return g


def test_gradient_matches_finite_differences():
  # float64 (x64 only inside this test): central differences with h = 1e-6 are good to ~1e-9.
  rng = np.random.default_rng(7)
  w = rng.normal(size=(2, 2, 3, 4))  # a small HWIO conv kernel, matrix (12, 4)
  r = rng.normal(size=w.shape)  # loss = sum(r * normalized kernel)
  u0 = rng.normal(size=4)
  u0 /= np.linalg.norm(u0)
  with jax.enable_x64(True):
    def loss(w, u):
      vec = {'u': u, 'v': jnp.zeros(12, u.dtype)}  # v is not read in train mode
      out, _ = sn.spectral_normalize({'c': {'kernel': w}}, {'c': {'kernel': vec}}, eps=EPS)
      return jnp.sum(jnp.asarray(r) * out['c']['kernel'])
    grad = jax.jit(jax.grad(loss))
    g = np.asarray(grad(jnp.asarray(w), jnp.asarray(u0)))
    assert g.dtype == np.float64

    # (1) u, v are constants to autodiff: the derivative of w / (u.M^T.v) with the u, v of
    # this call's power iteration held fixed.
    _, u1, v1, _ = power_iteration_np(w, u0, 1)
    fixed = lambda x: np.sum(r * x / (u1 @ _matrix(x).T @ v1))
    np.testing.assert_allclose(g, _fd_grad(fixed, w), rtol=1e-6, atol=1e-9)
    # ...which is not the derivative through the power iteration (u0 is far from converged).
    through = lambda x: np.sum(r * power_iteration_np(x, u0, 1)[0])
    assert np.abs(_fd_grad(through, w) - g).max() > 1e-3

    # (2) With u at the top right singular vector, the gradient is that of the exact
    # w / sigma_max(w) (sigma is stationary in u, v at convergence).
    u_top = np.linalg.svd(_matrix(w))[2][0]
    g_top = np.asarray(grad(jnp.asarray(w), jnp.asarray(u_top)))
    exact = lambda x: np.sum(r * x / _sigma_max(x))
    np.testing.assert_allclose(g_top, _fd_grad(exact, w), rtol=1e-5, atol=1e-8)


def test_missing_param_raises():
  params = _params(8)
  state = sn.init_sn_state(params, jax.random.PRNGKey(8), _PRED)
  del params['embed']
  with pytest.raises(ValueError, match='embed/embedding'):
    sn.spectral_normalize(params, state)


def test_matches_torch_spectral_norm():
  torch = pytest.importorskip('torch', reason='torch parity check (optional extra "torch")')
  torch.manual_seed(0)
  conv = torch.nn.utils.spectral_norm(torch.nn.Conv2d(3, 5, 3), eps=EPS)
  lin = torch.nn.utils.spectral_norm(torch.nn.Linear(7, 4), eps=EPS)
  params = {'conv': {'kernel': conv.weight_orig.detach().numpy().transpose(2, 3, 1, 0)},
            'lin': {'kernel': lin.weight_orig.detach().numpy().T}}
  # torch's u (size out) is ours: M = its weight matrix transposed.
  vec = lambda m: {'u': m.weight_u.numpy().copy(), 'v': np.zeros(m.weight_v.shape, np.float32)}
  state = {'conv': {'kernel': vec(conv)}, 'lin': {'kernel': vec(lin)}}
  for _ in range(3):  # torch updates u on every forward in train mode
    conv(torch.zeros(1, 3, 4, 4))
    lin(torch.zeros(1, 7))
    out, state = _sn_jit(params, state)
    np.testing.assert_allclose(out['conv']['kernel'],
                               conv.weight.detach().numpy().transpose(2, 3, 1, 0), atol=1e-6)
    np.testing.assert_allclose(out['lin']['kernel'], lin.weight.detach().numpy().T, atol=1e-6)
    np.testing.assert_allclose(state['conv']['kernel']['u'], conv.weight_u.numpy(), atol=1e-6)
    np.testing.assert_allclose(state['lin']['kernel']['u'], lin.weight_u.numpy(), atol=1e-6)
    np.testing.assert_allclose(state['lin']['kernel']['v'], lin.weight_v.numpy(), atol=1e-6)
