"""DINOv2 ViT (evaluation/dinov2.py) against the official model code, and its converter.

The parity tests run facebookresearch/dinov2's own DinoVisionTransformer (models/
vision_transformer.py, layers/) beside ours: set REACGAN_JAX_DINOV2_SRC to a checkout of
https://github.com/facebookresearch/dinov2 (nothing of it is vendored here); without it they
skip. The model is built as torch.hub's `dinov2_vitl14` builds it (img_size 518, so the 37 x 37
pos_embed is interpolated to 16 x 16 at 224; init_values 1.0, block_chunks 0, no registers,
interpolate_offset 0.1, no antialias), with random weights whose LayerScale gammas are
U(0.2, 0.6) rather than the 1e-5 init, so every block moves the output. The default suite runs
2 blocks of width 256 (4 heads of 64, ViT-L's head size: the same code as ViT-L/14's 24 blocks
of 1024, in seconds); -m slow runs ViT-L/14's width with 2 blocks, and the full ViT-L/14.

Tolerance: 1e-4 absolute on the CLS features (O(1) after the final LayerNorm, up to ~5). Both
sides are float32 and sum matmuls, softmax and LayerNorm in different orders (oneDNN vs XLA);
measured: 2.7e-6 at ViT-L width with 2 blocks, 5.5e-6 for the full ViT-L/14, so 1e-4 leaves
margin for other CPUs and BLAS builds. What it catches, measured at ViT-L width with 2 blocks:
the interpolation without DINOv2's 0.1 offset moves features by 6.3e-2, tanh-approximated GELU
instead of erf by 3.5e-4.
"""

import argparse
import dataclasses
import functools
import os
import pathlib
import sys
import warnings

import numpy as np
import pytest
from PIL import Image

from reacgan_jax.errors import InputError
from reacgan_jax.evaluation import convert as inception_convert
from reacgan_jax.evaluation import dinov2, dinov2_convert

VITL = dinov2.ARCHS['vitl14']
SRC_ENV = 'REACGAN_JAX_DINOV2_SRC'
TOL = 1e-4  # module docstring


def _torch():
  return pytest.importorskip('torch', reason="the parity tests need torch (the 'torch' extra)")


@functools.cache
def _official():
  """dinov2.models.vision_transformer and dinov2.layers from $REACGAN_JAX_DINOV2_SRC."""
  _torch()
  src = os.environ.get(SRC_ENV)
  if not src or not (pathlib.Path(src) / 'dinov2' / 'models' / 'vision_transformer.py').exists():
    pytest.skip(f'{SRC_ENV} is not set to a checkout of github.com/facebookresearch/dinov2 '
                '(git clone it and export the path) - the parity tests run its model code')
  os.environ.setdefault('XFORMERS_DISABLED', '1')  # the plain-torch attention path
  sys.path.insert(0, str(pathlib.Path(src).resolve()))
  with warnings.catch_warnings():  # "xFormers is disabled/not available", once per layer file
    warnings.simplefilter('ignore', UserWarning)
    from dinov2 import layers  # noqa: PLC0415
    from dinov2.models import vision_transformer  # noqa: PLC0415
  return vision_transformer, layers


def _official_model(arch):
  """DinoVisionTransformer as the hub's dinov2_vitl14 builds it, `arch.depth` blocks."""
  vits, layers = _official()
  return vits.DinoVisionTransformer(
      img_size=arch.pos_grid * arch.patch, patch_size=arch.patch, embed_dim=arch.dim,
      depth=arch.depth, num_heads=arch.heads, mlp_ratio=arch.mlp_ratio, init_values=1.0,
      ffn_layer='mlp', block_chunks=0, num_register_tokens=0, interpolate_antialias=False,
      interpolate_offset=arch.interpolate_offset,
      block_fn=functools.partial(layers.NestedTensorBlock, attn_class=layers.MemEffAttention),
  ).eval()


def _random_state(arch, seed=0):
  """A random state dict of the official layout (non-trivial LayerScale, norms, embeddings)."""
  rng = np.random.default_rng(seed)
  state = {}
  for name, shape in dinov2_convert.expected_torch_shapes(arch).items():
    if name.endswith('gamma'):
      v = rng.uniform(0.2, 0.6, shape)
    elif name.endswith('norm1.weight') or name.endswith('norm2.weight') or name == 'norm.weight':
      v = rng.uniform(0.5, 1.5, shape)
    elif len(shape) >= 2 and name.endswith('weight'):
      v = rng.normal(0.0, float(np.prod(shape[1:])) ** -0.5, shape)
    elif name == 'pos_embed':
      v = rng.normal(0.0, 1.0, shape)
    else:
      v = rng.normal(0.0, 0.1, shape)
    state[name] = v.astype(np.float32)
  return state


def _images(n, seed=0):
  """uint8 [n, 32, 32, 3]: blocky noise (structure at several scales) and plain noise."""
  rng = np.random.default_rng(seed)
  coarse = rng.integers(0, 256, (n, 8, 8, 3)).repeat(4, axis=1).repeat(4, axis=2)
  fine = rng.integers(-40, 41, (n, 32, 32, 3))
  return np.clip(coarse + fine, 0, 255).astype(np.uint8)


def _parity(arch, n):
  """(ours [n, D], official [n, D], ours without the last block's residuals)."""
  torch = _torch()
  model = _official_model(arch)
  state = _random_state(arch)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()}, strict=True)
  x = dinov2.preprocess(_images(n))
  with torch.no_grad():
    theirs = model(torch.from_numpy(x).permute(0, 3, 1, 2).contiguous()).numpy()
  params = dinov2_convert.params_from_state_dict(state, arch)
  ours = np.asarray(dinov2.extract(params, x, arch))
  cut = dict(params, blocks=dict(params['blocks']))
  cut['blocks']['ls2'] = params['blocks']['ls2'].copy()
  cut['blocks']['ls2'][-1] = 0.0  # the last block's MLP branch switched off
  return ours, theirs, np.asarray(dinov2.extract(cut, x, arch))


def _check_parity(arch, n):
  ours, theirs, cut = _parity(arch, n)
  err = np.abs(ours - theirs).max()
  print(f'{dinov2.arch_name(arch)} depth {arch.depth}: max |ours - official| = {err:.2e} '
        f'over {n} x {arch.dim} features (scale {np.abs(theirs).max():.2f})')
  assert ours.shape == theirs.shape == (n, arch.dim)
  assert err <= TOL, err
  # The comparison sees every block: switching one branch off moves features far beyond TOL,
  # and the images are told apart.
  assert np.abs(cut - theirs).max() > 100 * TOL
  assert np.abs(theirs[0] - theirs[1]).max() > 100 * TOL


def test_features_match_the_official_model_two_blocks():
  _check_parity(dinov2.Arch(dim=256, depth=2, heads=4), n=3)


@pytest.mark.slow
def test_features_match_the_official_model_vitl_width_two_blocks():
  _check_parity(dataclasses.replace(VITL, depth=2), n=3)


@pytest.mark.exhaustive  # CI budget (issue 24); two blocks of the same model are slow above
def test_features_match_the_official_model_full_vitl14():
  _check_parity(VITL, n=4)


def test_official_state_dict_is_what_the_converter_expects():
  # The hub model's own state dict: names and shapes (at depth 2; blocks repeat).
  arch = dataclasses.replace(VITL, depth=2)
  model = _official_model(arch)
  got = {k: tuple(v.shape) for k, v in model.state_dict().items()}
  assert got == dinov2_convert.expected_torch_shapes(arch)


def test_pos_embed_interpolation_is_torch_bicubic_with_the_offset():
  # DINOv2's interpolate_pos_encoding at 224: the 37 x 37 grid -> 16 x 16 with
  # F.interpolate(mode='bicubic', scale_factor=(16.1 / 37,) * 2, antialias=False).
  # Tolerance 1e-5: float32 sums of 16 products of O(1) values, in another order.
  torch = _torch()
  rng = np.random.default_rng(3)
  pos = rng.normal(size=(1, 1 + 37 * 37, 8)).astype(np.float32)
  patch = torch.from_numpy(pos[:, 1:]).reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
  for offset in (0.1, 0.0):
    kwargs = ({'scale_factor': ((16 + offset) / 37,) * 2} if offset else {'size': (16, 16)})
    ref = torch.nn.functional.interpolate(patch, mode='bicubic', antialias=False, **kwargs)
    ref = ref.permute(0, 2, 3, 1).reshape(1, 256, 8).numpy()
    got = np.asarray(dinov2.interpolate_pos_embed(pos, 16, offset))
    np.testing.assert_array_equal(got[:, 0], pos[:, 0])  # the CLS entry passes through
    np.testing.assert_allclose(got[:, 1:], ref, atol=1e-5, rtol=0)
    if offset:
      # The offset matters: without it the sample points differ (that is why it is ported).
      plain = np.asarray(dinov2.interpolate_pos_embed(pos, 16, 0.0))[:, 1:]
      assert np.abs(plain - ref).max() > 1e-2
  assert dinov2.interpolate_pos_embed(pos, 37, 0.1) is pos  # the pretrained size: untouched


def test_preprocess_is_pil_bicubic_to_224_then_imagenet_normalisation():
  imgs = _images(2)
  got = dinov2.preprocess(imgs)
  assert got.shape == (2, 224, 224, 3) and got.dtype == np.float32
  # torchvision Resize((224, 224), BICUBIC) on a PIL image is PIL's resize: uint8 out, so
  # ToTensor sees k / 255 for integers k.
  u8 = np.stack([np.asarray(Image.fromarray(i).resize((224, 224), Image.BICUBIC)) for i in imgs])
  ref = (u8 / 255.0 - np.array(dinov2.IMAGENET_MEAN)) / np.array(dinov2.IMAGENET_STD)
  np.testing.assert_allclose(got, ref, atol=1e-6, rtol=0)
  # Generator output in [-1, 1] is quantised as for FID first.
  floats = imgs.astype(np.float32) / 127.5 - 1.0
  np.testing.assert_allclose(dinov2.preprocess(floats), got, atol=1e-6, rtol=0)
  with pytest.raises(ValueError, match=r'\[B, H, W, 3\]'):
    dinov2.preprocess(imgs[..., :1])


def test_batching_and_padding_do_not_change_features():
  arch = dinov2.Arch(dim=32, depth=2, heads=4)
  params = dinov2.random_params(arch, seed=1)
  imgs = _images(5, seed=2)
  full = dinov2.extract_batched(params, imgs, arch=arch, batch_size=5)
  ragged = dinov2.extract_batched(params, iter([imgs[:3], imgs[3:]]), arch=arch, batch_size=2)
  assert full.shape == (5, 32)
  np.testing.assert_allclose(ragged, full, atol=1e-5, rtol=0)  # other batch shapes: float32 order


# --------------------------------------------------------------------------------------------
# Converter and parameter files
# --------------------------------------------------------------------------------------------


def _save_state(path, state):
  torch = _torch()
  torch.save({k: torch.from_numpy(v) for k, v in state.items()}, str(path))
  return path


def test_converter_writes_a_file_that_loads_to_the_same_features(tmp_path):
  arch = dataclasses.replace(dinov2.ARCHS['vits14'], dim=32, depth=2, heads=4)
  state = _random_state(arch, seed=5)
  src = _save_state(tmp_path / 'small.pth', state)
  digest = inception_convert.sha256(src)
  out = dinov2_convert.convert(src, tmp_path / 'small.msgpack', arch, expected_sha256=digest)
  got_arch, params, source = dinov2.load_params(out)
  assert got_arch == arch and source == f'small.pth sha256={digest}'
  want = dinov2_convert.params_from_state_dict(state, arch)
  x = dinov2.preprocess(_images(2))
  np.testing.assert_array_equal(np.asarray(dinov2.extract(params, x, arch)),
                                np.asarray(dinov2.extract(want, x, arch)))


def _main_error(capsys, argv):
  with pytest.raises(SystemExit) as e:
    dinov2_convert.main(argv)
  assert e.value.code == 1
  err = capsys.readouterr().err.strip()
  assert '\n' not in err and 'Traceback' not in err, err
  return err


def test_converter_refuses_wrong_hash_keys_shapes_and_code_in_one_line(tmp_path, capsys):
  torch = _torch()
  out = ['--output', str(tmp_path / 'out.msgpack')]
  # A real-layout file is not needed to test refusals: a ViT-L state dict's names at depth 1
  # already lack blocks 1-23.
  state = _random_state(dataclasses.replace(VITL, dim=8, depth=1, heads=1))
  path = _save_state(tmp_path / 'small.pth', state)
  err = _main_error(capsys, ['--input', str(path), '--sha256', '0' * 64, *out])
  assert 'differs from --sha256' in err
  err = _main_error(capsys, ['--input', str(path), *out])
  assert 'not the DINOv2 vitl14 backbone checkpoint' in err and 'missing: blocks.1.' in err
  assert 'wrong shape: cls_token (1, 1, 8) (expected (1, 1, 1024))' in err
  with pytest.raises(InputError, match='unexpected: extra'):
    dinov2_convert.check_state_shapes(
        {**dinov2_convert.expected_torch_shapes(VITL), 'extra': (1,)}, VITL, 'x')
  dinov2_convert.check_state_shapes(dinov2_convert.expected_torch_shapes(VITL), VITL, 'x')
  # A pickle that needs code to load (not weights_only-safe) is refused, not executed.
  torch.save({'model': argparse.Namespace(lr=1)}, str(tmp_path / 'code.pth'))
  err = _main_error(capsys, ['--input', str(tmp_path / 'code.pth'), *out])
  assert 'weights_only=True' in err
  err = _main_error(capsys, ['--input', str(tmp_path / 'absent.pth'), *out])
  assert 'no such file' in err
  assert not (tmp_path / 'out.msgpack').exists()


def test_load_params_names_the_fix(tmp_path):
  with pytest.raises(FileNotFoundError, match='dinov2_convert'):
    dinov2.load_params(tmp_path / 'absent.msgpack')
  (tmp_path / 'junk.msgpack').write_bytes(b'not msgpack')
  with pytest.raises(InputError, match='not a reacgan_jax DINOv2 weights file'):
    dinov2.load_params(tmp_path / 'junk.msgpack')


# --------------------------------------------------------------------------------------------
# The metric: registry, --mode=eval and the fid command, with tiny random weights
# --------------------------------------------------------------------------------------------

TINY = dinov2.Arch(dim=32, depth=2, heads=4)


@pytest.fixture(scope='module')
def tiny_dinov2(tmp_path_factory):
  path = tmp_path_factory.mktemp('dinov2') / 'tiny_dinov2.msgpack'
  params = dinov2.random_params(TINY, seed=3)
  return dinov2.save_params(path, params, TINY, 'test: random'), params


def test_registry_and_eval_mode_compute_fd_dinov2(tmp_path, tiny_dinov2):
  import jax  # noqa: PLC0415

  from configs import tiny  # noqa: PLC0415
  from reacgan_jax.evaluation import evaluator, fid, registry  # noqa: PLC0415
  from reacgan_jax.train import modes  # noqa: PLC0415

  weights, params = tiny_dinov2
  cfg = tiny.get_config()
  cfg.eval.metrics = 'fd_dinov2'
  cfg.eval.dinov2_weights = str(weights)
  cfg.eval.num_samples = 24
  cfg.eval.batch_size = 8
  assert registry.parse_metrics(cfg.eval.metrics) == ('fd_dinov2',)
  rng = np.random.default_rng(1)
  ref_images = rng.integers(0, 256, (40, 32, 32, 3), dtype=np.uint8)
  ref_labels = np.arange(40, dtype=np.int32) % cfg.data.num_classes
  ev = evaluator.Evaluator(cfg, cache_dir=tmp_path / 'cache', reference=(ref_images, ref_labels))
  proj = rng.normal(size=(cfg.model.z_dim, 32 * 32 * 3)).astype(np.float32)

  def sample_fn(z, y):  # a deterministic "generator": images from z through a fixed map
    del y
    return np.tanh(np.asarray(z) @ proj).reshape(-1, 32, 32, 3)

  results = modes.run_evaluation(cfg, sample_fn, 7, str(tmp_path), strict=True,
                                 cache={'evaluator': ev})
  assert set(results) == {'fd_dinov2', 'protocol'}
  protocol = results['protocol']
  assert f'FD-DINOv2 dinov2={weights} (dim32-depth2-heads4 from test: random' in protocol
  assert 'n=40' in protocol and 'inception=' not in protocol  # no Inception loaded for it
  # The value is the Fréchet distance of DINOv2 features of the same samples and references.
  gen = ev.generate(sample_fn, 24, jax.random.split(jax.random.fold_in(
      jax.random.PRNGKey(cfg.seed), 2))[0], keep_images=True)
  ours = dinov2.extract_batched(params, gen['images'], arch=TINY, batch_size=5)
  ref = dinov2.extract_batched(params, ref_images, arch=TINY, batch_size=5)
  want = fid.frechet_distance(*fid.compute_statistics(ours), *fid.compute_statistics(ref))
  # Other batches (5, not 8): float32 sums in another order, so not bit for bit.
  assert results['fd_dinov2'] == pytest.approx(want, rel=1e-4)
  assert results['fd_dinov2'] > 0.0
  # The reference statistics are cached with the weights they came from.
  cached = fid.load_statistics(ev.dinov2_stats_path())
  assert cached['n'] == 40 and 'test: random' in cached['description']


def test_fid_cli_fd_dinov2_on_images_and_refused_on_statistics(tmp_path, tiny_dinov2, capsys):
  from reacgan_jax.evaluation import fid, inception_weights  # noqa: PLC0415

  weights, params = tiny_dinov2
  inception = inception_weights.save_params(
      tmp_path / 'inception.msgpack', inception_weights.random_params(width=1 / 16, seed=0),
      'test: random')
  rng = np.random.default_rng(4)
  imgs = rng.integers(0, 256, (40, 4, 4, 3)).astype(np.uint8).repeat(4, 1).repeat(4, 2)
  np.savez(tmp_path / 'a.npz', x=imgs[:20])
  np.savez(tmp_path / 'c.npz', x=imgs[20:] // 2)
  common = ['--weights', str(inception), '--batch-size', '10', '--dinov2-weights', str(weights)]
  fid.main([str(tmp_path / 'a.npz'), str(tmp_path / 'c.npz'), '--fd-dinov2', *common])
  lines = capsys.readouterr().out.strip().splitlines()
  assert lines[-1].startswith('FID: ') and lines[-2].startswith('FD-DINOv2: '), lines
  assert f'dinov2={weights} (dim32-depth2-heads4 from test: random)' in lines[-3]
  a = dinov2.extract_batched(params, imgs[:20], arch=TINY, batch_size=10)
  c = dinov2.extract_batched(params, imgs[20:] // 2, arch=TINY, batch_size=10)
  want = fid.frechet_distance(*fid.compute_statistics(a), *fid.compute_statistics(c))
  assert float(lines[-2].split()[1]) == pytest.approx(want, rel=1e-5)  # printed to 6 decimals
  fid.main(['--save-stats', str(tmp_path / 'a.npz'), str(tmp_path / 'a_stats.npz'),
            '--weights', str(inception), '--batch-size', '10'])
  with pytest.raises(InputError, match='--fd-dinov2 needs the images'):
    fid.main([str(tmp_path / 'a_stats.npz'), str(tmp_path / 'c.npz'), '--fd-dinov2', *common])
