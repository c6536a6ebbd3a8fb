"""R1 and path-length regularisers (reacgan_jax/losses/stylegan2.py): values against finite
differences of the functions they differentiate, and their parameter gradients (the double
backprop the trainer uses) against finite differences of the penalty itself.

float64 inside each test (x64 scoped): central differences with h = 1e-6 are good to ~1e-8
here, so the tolerance is rtol 1e-6.
"""

import jax
import jax.numpy as jnp
import numpy as np

from reacgan_jax.losses import stylegan2 as sl

H = 1e-6


def fd_grad(f, x):
  """Central differences of scalar f (jnp array -> scalar) at numpy x; f is jitted once."""
  f = jax.jit(f)
  g = np.zeros_like(x)
  for i in np.ndindex(x.shape):
    e = np.zeros_like(x)
    e[i] = H
    g[i] = (float(f(x + e)) - float(f(x - e))) / (2 * H)
  return g


def adv(theta, x):
  """A small nonlinear 'discriminator': adv_b = sum_{hw} tanh(x_b W) v."""
  w, v = theta
  return jnp.einsum('bhwk,k->b', jnp.tanh(x @ w), v)


def test_r1_value_and_gradient_vs_finite_differences():
  r = np.random.default_rng(0)
  with jax.enable_x64(True):
    x = r.standard_normal((3, 2, 2, 3))
    theta = (r.standard_normal((3, 4)), r.standard_normal(4))
    pen = lambda th, x: sl.r1_penalty(lambda z: adv(th, z), jnp.asarray(x), gamma=0.3,
                                      interval=16)
    # value: gradient of sum_b adv_b w.r.t. x by finite differences, then the definition
    gx = fd_grad(lambda z: jnp.sum(adv(theta, z)), x)
    want = 16 * 0.3 * np.mean(np.sum(gx ** 2, axis=(1, 2, 3)) / 2)
    np.testing.assert_allclose(float(pen(theta, x)), want, rtol=1e-6)
    # gradient w.r.t. D's parameters (double backprop) vs differences of the penalty
    gw = jax.grad(lambda w: pen((w, theta[1]), x))(jnp.asarray(theta[0]))
    fw = fd_grad(lambda w: pen((w, theta[1]), x), theta[0])
    np.testing.assert_allclose(np.asarray(gw), fw, rtol=1e-6, atol=1e-9)
    gx_pen = jax.grad(lambda z: pen(theta, z))(jnp.asarray(x))  # also w.r.t. the images
    np.testing.assert_allclose(np.asarray(gx_pen), fd_grad(lambda z: pen(theta, z), x),
                               rtol=1e-6, atol=1e-9)


def synth(a, ws):
  """ws [B, K, W] -> images [B, 2, 3, 1]: tanh of a linear map (nonlinear in ws and a)."""
  return jnp.tanh(jnp.einsum('bkw,kwp->bp', ws, a)).reshape(ws.shape[0], 2, 3, 1)


def test_path_length_value_and_gradient_vs_finite_differences():
  r = np.random.default_rng(1)
  key = jax.random.PRNGKey(4)
  with jax.enable_x64(True):
    ws = r.standard_normal((4, 3, 2))
    a = r.standard_normal((3, 2, 6))
    pl_mean = 0.4
    run = lambda a_, ws_: sl.path_length_penalty(lambda w: synth(a_, w), jnp.asarray(ws_), key,
                                                 jnp.float64(pl_mean), weight=2.0, decay=0.01,
                                                 interval=4)
    loss, new_mean, lengths = run(jnp.asarray(a), ws)
    noise = np.asarray(jax.random.normal(key, (4, 2, 3, 1), jnp.float64)) / np.sqrt(6)
    g = fd_grad(lambda w: jnp.sum(synth(jnp.asarray(a), w) * noise), ws)
    want_len = np.sqrt(np.mean(np.sum(g ** 2, axis=2), axis=1))
    np.testing.assert_allclose(np.asarray(lengths), want_len, rtol=1e-6)
    want_mean = pl_mean + 0.01 * (want_len.mean() - pl_mean)
    np.testing.assert_allclose(float(new_mean), want_mean, rtol=1e-6)
    np.testing.assert_allclose(float(loss), 4 * 2.0 * np.mean((want_len - want_mean) ** 2),
                               rtol=1e-6)
    ga = jax.grad(lambda a_: run(a_, ws)[0])(jnp.asarray(a))
    fa = fd_grad(lambda a_: run(a_, ws)[0], a)
    np.testing.assert_allclose(np.asarray(ga), fa, rtol=1e-6, atol=1e-9)
    _, _, half = sl.path_length_penalty(lambda w: synth(jnp.asarray(a), w), jnp.asarray(ws),
                                        key, 0.0, weight=2.0, batch_shrink=2)
    assert half.shape == (2,)


def test_path_length_on_the_stylegan2_synthesis():
  """The penalty runs through our synthesis network and its gradient reaches G's params."""
  from reacgan_jax.models import stylegan2_g  # noqa: PLC0415
  net = stylegan2_g.SynthesisNetwork(w_dim=4, img_resolution=8, channel_base=16, channel_max=4)
  ws = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 4))
  k = jax.random.PRNGKey(1)
  like = jax.eval_shape(lambda: net.init({'params': k}, ws, noise_mode='none'))
  r = np.random.default_rng(0)  # N(0, 1) weights: eager init compiles one kernel per shape
  v = jax.tree.map(lambda s: jnp.asarray(r.standard_normal(s.shape), s.dtype), like)
  f = lambda p: sl.path_length_penalty(
      lambda w: net.apply({'params': p, **{c: v[c] for c in v if c != 'params'}}, w,
                          noise_mode='none'), ws, k, 0.0, weight=2.0)[0]
  loss, grads = jax.jit(jax.value_and_grad(f))(v['params'])
  assert np.isfinite(float(loss)) and float(loss) > 0
  assert float(jnp.abs(grads['b8']['conv1']['weight']).sum()) > 0
