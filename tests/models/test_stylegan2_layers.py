"""StyleGAN2 blocks (reacgan_jax/models/stylegan2_layers.py, stylegan2_g.SynthesisLayer) vs float64
numpy written from the definitions in StudioGAN src/utils/style_ops and src/models/stylegan2.py.

Ours runs in float32: tolerance 1e-5 relative / 1e-5 absolute on O(1) values (a few hundred
float32 products summed).
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.models import stylegan2_g
from reacgan_jax.models import stylegan2_layers as L
from reacgan_jax.ops import fir

TOL = dict(rtol=1e-5, atol=1e-5)
F4 = np.outer([1, 3, 3, 1], [1, 3, 3, 1]) / 64.0


def rng(seed=0):
  return np.random.default_rng(seed)


def np_corr(x, w, stride=1):
  """Valid cross-correlation, x [N, H, W, I], w [kh, kw, I, O], float64 loops over taps."""
  kh, kw = w.shape[:2]
  n, h, wd, _ = x.shape
  oh, ow = h - kh + 1, wd - kw + 1
  out = np.zeros((n, oh, ow, w.shape[3]))
  for i in range(kh):
    for j in range(kw):
      out += np.einsum('nhwi,io->nhwo', x[:, i:i + oh, j:j + ow], w[i, j])
  return out[:, ::stride, ::stride]


def np_pad(x, p0, p1, q0, q1):
  """Pad (positive) or crop (negative): x by (p0, p1), y by (q0, q1)."""
  x = np.pad(x, ((0, 0), (max(q0, 0), max(q1, 0)), (max(p0, 0), max(p1, 0)), (0, 0)))
  return x[:, max(-q0, 0):x.shape[1] - max(-q1, 0), max(-p0, 0):x.shape[2] - max(-p1, 0)]


def np_upfirdn(x, f, up=1, down=1, pad=(0, 0, 0, 0), gain=1.0):
  """Definition: insert up-1 zeros after each pixel, pad, convolve with f * gain, keep every
  down-th pixel. Convolution (not correlation) = correlation with the flipped filter."""
  n, h, w, c = x.shape
  u = np.zeros((n, h * up, w * up, c))
  u[:, ::up, ::up] = x
  u = np_pad(u, *pad)
  k = (f * gain)[::-1, ::-1]
  wk = np.zeros(k.shape + (c, c))
  for ch in range(c):
    wk[:, :, ch, ch] = k
  return np_corr(u, wk)[:, ::down, ::down]


def np_bias_act(x, b, act, gain, clamp):
  x = x + b
  if act == 'lrelu':
    x = np.where(x >= 0, x, 0.2 * x)
  x = x * gain
  return np.clip(x, -clamp, clamp) if clamp is not None else x


FILTERS = {
    'general': rng(1).standard_normal((4, 3)),  # asymmetric: catches a filter flip or x/y swap
    # rank one, asymmetric in both directions: the CPU path's two 1-D passes (ops/fir.py)
    'separable': np.outer(rng(3).standard_normal(4), rng(4).standard_normal(3)),
}


@pytest.mark.parametrize('backend', ['xla', 'onednn'])
@pytest.mark.parametrize('filt', sorted(FILTERS))
@pytest.mark.parametrize('up,down,pad', [(1, 1, (1, 2, 0, -1)), (2, 1, (2, 1, 2, 1)),
                                         (1, 2, (1, 1, 1, 1)), (2, 2, (0, 0, 1, 0))])
def test_upfirdn2d(up, down, pad, filt, backend):
  x = rng().standard_normal((2, 7, 6, 3))
  f = FILTERS[filt]
  assert (fir.separable(f) is not None) == (filt == 'separable')
  ref = np_upfirdn(x, f, up, down, pad, gain=1.7)
  got = L.upfirdn2d(jnp.asarray(x, jnp.float32), f.astype(np.float32), up, down, pad,
                    gain=1.7, backend=backend)
  np.testing.assert_allclose(np.asarray(got), ref, **TOL)


@pytest.mark.parametrize('backend', ['xla', 'onednn'])
def test_upsample_downsample_2d(backend):
  x = rng().standard_normal((2, 8, 8, 3))
  got_up = L.upsample2d(jnp.asarray(x, jnp.float32), L.setup_filter(), backend=backend)
  np.testing.assert_allclose(np.asarray(got_up), np_upfirdn(x, F4, up=2, pad=(2, 1, 2, 1),
                                                             gain=4.0), **TOL)
  got_dn = L.downsample2d(jnp.asarray(x, jnp.float32), L.setup_filter(), backend=backend)
  np.testing.assert_allclose(np.asarray(got_dn), np_upfirdn(x, F4, down=2, pad=(1, 1, 1, 1)),
                             **TOL)
  np.testing.assert_allclose(L.setup_filter(), F4, rtol=1e-7)
  # a constant image stays constant inside (DC gain 1)
  one = L.downsample2d(jnp.ones((1, 8, 8, 1)), L.setup_filter(), backend=backend)
  np.testing.assert_allclose(np.asarray(one)[0, 1:-1, 1:-1, 0], 1.0, rtol=1e-6)


def np_conv_resample(x, w, up, down, padding, flip_weight):
  """conv2d_resample's generic reference path, from its definition."""
  if not flip_weight:
    w = w[::-1, ::-1]
  p = [padding] * 4
  if up > 1:
    p = [p[0] + 2, p[1] + 1, p[2] + 2, p[3] + 1]  # (fw + up - 1) // 2, (fw - up) // 2
    x = np_upfirdn(x, F4, up=up, pad=(p[0], p[1], p[2], p[3]), gain=up * up)
    return np_corr(x, w)
  if down > 1:
    p = [p[0] + 1, p[1] + 1, p[2] + 1, p[3] + 1]  # (fw - down + 1) // 2, (fw - down) // 2
  x = np_pad(x, *p)
  if down > 1:
    x = np_upfirdn(x, F4)
  return np_corr(x, w, stride=down)


@pytest.mark.parametrize('k,up,down,flip', [(3, 1, 1, True), (3, 2, 1, False), (3, 1, 2, True),
                                            (1, 2, 1, False), (1, 1, 2, True)])
def test_conv2d_resample(k, up, down, flip):
  x = rng().standard_normal((2, 8, 8, 3))
  w = rng(2).standard_normal((k, k, 3, 4))
  ref = np_conv_resample(x, w, up, down, k // 2, flip)
  got = L.conv2d_resample(jnp.asarray(x, jnp.float32), jnp.asarray(w, jnp.float32),
                          L.setup_filter(), up=up, down=down, padding=k // 2, flip_weight=flip)
  assert got.shape == ref.shape == (2, 8 * up // down, 8 * up // down, 4)
  np.testing.assert_allclose(np.asarray(got), ref, **TOL)


@pytest.mark.parametrize('up,demod', [(1, True), (2, True), (1, False)])
def test_modulated_conv2d_fused_definition(up, demod):
  """Ours (non-fused) vs the fused definition: per-sample w_n = W * s_n, demodulated by
  rsqrt(sum w_n^2 + 1e-8) per output channel, then the sample's own conv."""
  x = rng().standard_normal((3, 6, 6, 4))
  w = rng(1).standard_normal((3, 3, 4, 5))
  s = rng(2).standard_normal((3, 4))
  noise = rng(3).standard_normal((3, 6 * up, 6 * up, 1))
  ref = []
  for i in range(3):
    wi = w * s[i][None, None, :, None]
    if demod:
      wi = wi / np.sqrt(np.sum(wi ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)
    ref.append(np_conv_resample(x[i:i + 1], wi, up, 1, 1, up == 1)[0])
  ref = np.stack(ref) + noise
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  got = L.modulated_conv2d(f32(x), f32(w), f32(s), noise=f32(noise), up=up, padding=1,
                           resample_filter=L.setup_filter(), demodulate=demod,
                           flip_weight=(up == 1))
  np.testing.assert_allclose(np.asarray(got), ref, **TOL)


@pytest.mark.parametrize('group,nch', [(2, 1), (4, 2), (None, 1)])
def test_minibatch_std(group, nch):
  x = rng().standard_normal((8, 3, 3, 4))
  g = 8 if group is None else group
  n = 8 // g
  ref = np.zeros((8, 3, 3, nch))
  for j in range(n):  # group j holds samples j, j + n, j + 2n, ... (reshape(G, -1, ...))
    members = x[j::n]  # [G, H, W, C]
    for f in range(nch):
      chans = members[..., f * 4 // nch:(f + 1) * 4 // nch]
      std = np.sqrt(np.mean((chans - chans.mean(0)) ** 2, axis=0) + 1e-8)
      ref[j::n, :, :, f] = std.mean()
  got = L.minibatch_std(jnp.asarray(x, jnp.float32), group, nch)
  np.testing.assert_allclose(np.asarray(got), np.concatenate([x, ref], -1), **TOL)
  with pytest.raises(ValueError, match='mbstd_group_size'):
    L.minibatch_std(jnp.zeros((6, 2, 2, 4)), 4)


@pytest.mark.parametrize('act,lr', [('linear', 1.0), ('lrelu', 0.01)])
def test_fully_connected_equalised_lr(act, lr):
  x = rng().standard_normal((3, 5))
  layer = L.FullyConnected(4, activation=act, lr_multiplier=lr, bias_init=0.5)
  v = layer.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
  w = np.asarray(v['params']['weight'], np.float64)
  assert abs(w.std() * lr - 1) < 0.6  # stored as N(0, 1) / lr_mul
  b = rng(1).standard_normal(4)
  v = {'params': {'weight': v['params']['weight'], 'bias': jnp.asarray(b, jnp.float32)}}
  ref = x @ (w * lr / math.sqrt(5)) + b * lr
  ref = np_bias_act(ref, 0, act, math.sqrt(2) if act == 'lrelu' else 1.0, None)
  np.testing.assert_allclose(np.asarray(layer.apply(v, jnp.asarray(x, jnp.float32))), ref,
                             **TOL)


@pytest.mark.parametrize('k,up,down,gain,clamp', [(3, 1, 1, 1.0, None), (3, 1, 2, 0.5, 0.3),
                                                  (1, 2, 1, math.sqrt(0.5), None)])
def test_conv2d_layer(k, up, down, gain, clamp):
  x = rng().standard_normal((2, 8, 8, 3))
  layer = L.Conv2dLayer(4, k, activation='lrelu', up=up, down=down, conv_clamp=clamp)
  v = layer.init(jax.random.PRNGKey(0), jnp.asarray(x, jnp.float32))
  w = np.asarray(v['params']['weight'], np.float64)
  b = rng(1).standard_normal(4)
  v = {'params': {'weight': v['params']['weight'], 'bias': jnp.asarray(b, jnp.float32)}}
  y = np_conv_resample(x, w / math.sqrt(3 * k * k), up, down, k // 2, up == 1)
  ref = np_bias_act(y, b, 'lrelu', math.sqrt(2) * gain, clamp * gain if clamp else None)
  got = layer.apply(v, jnp.asarray(x, jnp.float32), gain=gain)
  np.testing.assert_allclose(np.asarray(got), ref, **TOL)


def test_bias_act_gain_clamp():
  x = rng().standard_normal((2, 3, 3, 4)) * 3
  b = rng(1).standard_normal(4)
  got = L.bias_act(jnp.asarray(x, jnp.float32), jnp.asarray(b, jnp.float32), act='lrelu',
                   gain=1.3, clamp=2.0)
  np.testing.assert_allclose(np.asarray(got), np_bias_act(x, b, 'lrelu', 1.3, 2.0), **TOL)
  assert float(jnp.max(jnp.abs(got))) == pytest.approx(2.0)  # the clamp is active here


def test_synthesis_layer_noise_injection():
  """out = bias_act(modconv(x) + noise_const * strength, bias, lrelu, sqrt2, clamp);
  'none' drops the noise; 'random' draws N(0,1) [N, H, W, 1] from rng 'noise'."""
  x = jnp.asarray(rng().standard_normal((2, 4, 4, 3)), jnp.float32)
  w = jnp.asarray(rng(1).standard_normal((2, 5)), jnp.float32)
  layer = stylegan2_g.SynthesisLayer(6, 5, resolution=4, conv_clamp=1.5)
  v = layer.init({'params': jax.random.PRNGKey(0), 'noise': jax.random.PRNGKey(1)}, x, w)
  p = dict(v['params'])
  p['noise_strength'] = jnp.float32(0.7)
  p['bias'] = jnp.asarray(rng(2).standard_normal(6), jnp.float32)
  v = {'params': p, 'stylegan2_state': v['stylegan2_state']}
  pn = jax.tree.map(lambda a: np.asarray(a, np.float64), p)
  styles = np.asarray(w, np.float64) @ (pn['affine']['weight'] / math.sqrt(5)) + \
      pn['affine']['bias']
  assert np.allclose(pn['affine']['bias'], 1.0)  # bias_init=1
  const = np.asarray(v['stylegan2_state']['noise_const'], np.float64)
  ref = []
  for i in range(2):
    wi = pn['weight'] * styles[i][None, None, :, None]
    wi = wi / np.sqrt(np.sum(wi ** 2, axis=(0, 1, 2), keepdims=True) + 1e-8)
    ref.append(np_conv_resample(np.asarray(x[i:i + 1], np.float64), wi, 1, 1, 1, True)[0])
  ref = np.stack(ref)
  for mode, noise in (('const', 0.7 * const[None, :, :, None]), ('none', 0.0)):
    got = layer.apply(v, x, w, noise_mode=mode)
    np.testing.assert_allclose(np.asarray(got), np_bias_act(ref + noise, pn['bias'], 'lrelu',
                                                            math.sqrt(2), 1.5), **TOL)
  k = jax.random.PRNGKey(5)
  r1 = layer.apply(v, x, w, rngs={'noise': k})
  np.testing.assert_array_equal(r1, layer.apply(v, x, w, rngs={'noise': k}))
  assert not np.allclose(r1, layer.apply(v, x, w, rngs={'noise': jax.random.PRNGKey(6)}))
  assert not np.allclose(r1, layer.apply(v, x, w, noise_mode='none'))
  p0 = dict(p, noise_strength=jnp.float32(0.0))  # random noise * strength 0 = no noise
  v0 = {'params': p0, 'stylegan2_state': v['stylegan2_state']}
  np.testing.assert_allclose(np.asarray(layer.apply(v0, x, w, rngs={'noise': k})),
                             np.asarray(layer.apply(v0, x, w, noise_mode='none')), **TOL)
