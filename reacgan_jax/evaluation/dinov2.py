"""DINOv2 ViT-L/14 in Flax and dgm-eval's preprocessing, for FD-DINOv2 (Stein et al. 2023).

"Exposing flaws of generative model evaluation metrics" (Stein et al., NeurIPS 2023) replaces
Inception-v3 by DINOv2 ViT-L/14 (Oquab et al. 2023); its code, layer6ai-labs/dgm-eval, computes
the Fréchet distance of the network's features as FID does. What dgm-eval does, and this module
with it:
  * network: `torch.hub.load('facebookresearch/dinov2', 'dinov2_vitl14')` = DinoVisionTransformer
    (dinov2/models/vision_transformer.py) built for img_size 518 (a 37 x 37 grid of 14-pixel
    patches: the pretrained `pos_embed`), LayerNorm eps 1e-6, exact-erf GELU MLP, LayerScale,
    no register tokens, interpolate_offset 0.1, interpolate_antialias False;
  * feature: `model(x)` = `head(x_norm_clstoken)` with an identity head: the CLS token after the
    final LayerNorm, 1024-d, not L2-normalised (dgm-eval's get_representations, normalized=False);
  * preprocessing (dgm_eval/models/dinov2.py, default clean_resize=False): the uint8 RGB image as
    a PIL image, torchvision `Resize((224, 224), BICUBIC)` (= PIL `Image.resize` bicubic on the
    uint8 image, so the result is rounded back to uint8), `ToTensor` (/255) and `Normalize` with
    the ImageNet mean/std;
  * positional embedding at 224: the 37 x 37 grid is resized to 16 x 16 per forward pass by
    `interpolate_pos_encoding`: torch bicubic (A = -0.75, half-pixel, border-clamped, no
    antialias) with scale_factor (16 + 0.1) / 37, so the kernel samples source positions
    (i + 0.5) * 37 / 16.1 - 0.5, not (i + 0.5) * 37 / 16 - 0.5 (`bicubic_matrix`).

Parameter names follow the torch state dict (`patch_embed`, `cls_token`, `pos_embed`,
`blocks/<norm1, attn/qkv, attn/proj, ls1, norm2, mlp/fc1, mlp/fc2, ls2>`, `norm`); the blocks are
one `nn.scan`, their params stacked on a leading depth axis (faster to compile than 24 copies).
Matmuls run at HIGHEST precision: dgm-eval runs float32 torch, whose CUDA matmuls are full fp32.

Public API: `DinoViT`, `ARCHS`, `preprocess(images) -> [B, 224, 224, 3]`,
`extract(params, x, arch) -> [B, D]` (jitted), `extract_batched(params, images, ...)`,
`load_dinov2(path=None) -> (arch name, params)`, `save_params`, `random_params`.
Weights come from `python -m reacgan_jax.evaluation.dinov2_convert` (the only torch user).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import pathlib

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization
from PIL import Image
from tqdm import tqdm

from reacgan_jax.errors import InputError, MissingFileError
from reacgan_jax.evaluation import inception, weights_file
from reacgan_jax.platform import paths

INPUT_SIZE = 224  # dgm-eval's Resize((224, 224))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
FILE_FORMAT = 'reacgan_jax/dinov2/v1'
DEFAULT_FILENAME = 'dinov2_vitl14.msgpack'
OFFICIAL_URL = 'https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth'
HIGHEST = jax.lax.Precision.HIGHEST


@dataclasses.dataclass(frozen=True)
class Arch:
  """A DinoVisionTransformer's shape (the hub's builder, dinov2/hub/backbones.py)."""
  dim: int
  depth: int
  heads: int
  patch: int = 14
  pos_grid: int = 37  # pretrained img_size 518 / patch 14
  mlp_ratio: int = 4
  interpolate_offset: float = 0.1


ARCHS = {
    'vits14': Arch(384, 12, 6),
    'vitb14': Arch(768, 12, 12),
    'vitl14': Arch(1024, 24, 16),  # dgm-eval's default and the paper's
}


def default_weights_path() -> pathlib.Path:
  return paths.cache_root() / DEFAULT_FILENAME


# ---------------------------------------------------------------------------------------------
# Positional-embedding interpolation (torch upsample_bicubic2d, align_corners=False)
# ---------------------------------------------------------------------------------------------


def _cubic_weights(t: np.ndarray) -> np.ndarray:
  """[..., 4] torch get_cubic_upsample_coefficients(t), A = -0.75, in float32 as torch's CPU."""
  a = np.float32(-0.75)
  one = np.float32(1.0)

  def near(x):  # cubic_convolution1: |x| <= 1
    return ((a + 2) * x - (a + 3)) * x * x + one

  def far(x):  # cubic_convolution2: 1 < |x| < 2
    return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a

  return np.stack([far(t + one), near(t), near(one - t), far(one - t + one)], axis=-1)


@functools.lru_cache(maxsize=8)
def bicubic_matrix(n_in: int, n_out: int, offset: float) -> np.ndarray:
  """[n_out, n_in] float32 weights of DINOv2's `interpolate_pos_encoding` along one axis.

  With offset > 0 torch is called with scale_factor s = (n_out + offset) / n_in (Python float):
  the output has floor(n_in * s) = n_out entries and the kernel uses 1 / s, cast to float32, as
  its step (compute_scales_value); with offset 0 the step is n_in / n_out. Source position
  (i + 0.5) * step - 0.5 in float32 (not clamped: cubic), index floor of it capped at n_in - 1,
  fraction clamped to [0, 1], taps at index - 1 .. index + 2 clamped to the border.
  """
  f32 = np.float32
  if offset:
    s = float(n_out + offset) / n_in
    if int(n_in * s) != n_out:
      raise ValueError(f'pos_embed interpolation: {n_in} * {s} does not floor to {n_out}')
    step = f32(1.0 / s)
  else:
    step = f32(n_in) / f32(n_out)
  dst = np.arange(n_out, dtype=f32) + f32(0.5)
  src = (np.float64(step) * dst.astype(np.float64) - 0.5).astype(f32)  # torch: one fma in f32
  idx = np.minimum(np.floor(src).astype(np.int64), n_in - 1)
  t = np.clip(src - idx.astype(f32), f32(0.0), f32(1.0))
  w = _cubic_weights(t)
  m = np.zeros((n_out, n_in), np.float64)
  for j in range(4):
    np.add.at(m, (np.arange(n_out), np.clip(idx - 1 + j, 0, n_in - 1)), w[:, j])
  return m.astype(np.float32)


def interpolate_pos_embed(pos_embed, grid: int, offset: float):
  """[1, 1 + M*M, D] pretrained embedding -> [1, 1 + grid*grid, D] for a grid x grid input.

  Unchanged when grid == M (torch returns pos_embed itself); else the patch part is resized by
  `bicubic_matrix` along rows and columns, the CLS entry kept.
  """
  n = pos_embed.shape[1] - 1
  m = int(round(n ** 0.5))
  if m * m != n:
    raise ValueError(f'pos_embed: {n} patch entries is not a square grid')
  if grid == m:
    return pos_embed
  w = jnp.asarray(bicubic_matrix(m, grid, offset))
  patch = pos_embed[0, 1:].reshape(m, m, -1)
  patch = jnp.einsum('oh,hwd,pw->opd', w, patch, w, precision=HIGHEST)
  return jnp.concatenate([pos_embed[:, :1], patch.reshape(1, grid * grid, -1)], axis=1)


# ---------------------------------------------------------------------------------------------
# The network
# ---------------------------------------------------------------------------------------------


def _dense(features, name):
  return nn.Dense(features, precision=HIGHEST, name=name)


class Attention(nn.Module):
  """dinov2 layers/attention.py: qkv projection, softmax(q k^T / sqrt(head_dim)) v, proj."""
  dim: int
  heads: int

  @nn.compact
  def __call__(self, x):
    b, n, _ = x.shape
    hd = self.dim // self.heads
    qkv = _dense(3 * self.dim, 'qkv')(x).reshape(b, n, 3, self.heads, hd)
    q, k, v = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]  # [B, N, H, hd]
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k, precision=HIGHEST) * (hd ** -0.5)
    attn = jax.nn.softmax(logits, axis=-1)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn, v, precision=HIGHEST).reshape(b, n, self.dim)
    return _dense(self.dim, 'proj')(out)


class Mlp(nn.Module):
  dim: int
  hidden: int

  @nn.compact
  def __call__(self, x):
    x = nn.gelu(_dense(self.hidden, 'fc1')(x), approximate=False)  # torch nn.GELU(): erf
    return _dense(self.dim, 'fc2')(x)


class Block(nn.Module):
  """dinov2 layers/block.py in eval mode: x + ls1 * attn(norm1 x), then x + ls2 * mlp(norm2 x).

  Called by nn.scan: takes and returns (x, None).
  """
  arch: Arch

  @nn.compact
  def __call__(self, x, _):
    a = self.arch
    ones = nn.initializers.ones
    h = Attention(a.dim, a.heads, name='attn')(nn.LayerNorm(1e-6, name='norm1')(x))
    x = x + h * self.param('ls1', ones, (a.dim,))
    h = Mlp(a.dim, a.mlp_ratio * a.dim, name='mlp')(nn.LayerNorm(1e-6, name='norm2')(x))
    return x + h * self.param('ls2', ones, (a.dim,)), None


class DinoViT(nn.Module):
  """DinoVisionTransformer's forward in eval mode: images -> CLS token after the final norm.

  Input: [B, S, S, 3] float32, preprocessed (`preprocess`); S a multiple of the patch (224).
  Output: [B, dim] float32 (x_norm_clstoken).
  """
  arch: Arch

  @nn.compact
  def __call__(self, x):
    a = self.arch
    if x.shape[1] != x.shape[2] or x.shape[1] % a.patch:
      raise ValueError(f'DinoViT: expected square images, side a multiple of {a.patch}, got '
                       f'{x.shape}')
    x = nn.Conv(a.dim, (a.patch, a.patch), strides=(a.patch, a.patch), padding='VALID',
                precision=HIGHEST, name='patch_embed')(x)
    b, g, _, d = x.shape
    x = x.reshape(b, g * g, d)
    cls = self.param('cls_token', nn.initializers.normal(1e-6), (1, 1, d))
    pos = self.param('pos_embed', nn.initializers.normal(0.02), (1, 1 + a.pos_grid ** 2, d))
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    x = x + interpolate_pos_embed(pos, g, a.interpolate_offset)
    blocks = nn.scan(Block, variable_axes={'params': 0}, split_rngs={'params': True},
                     length=a.depth)
    x, _ = blocks(a, name='blocks')(x, None)
    return nn.LayerNorm(1e-6, name='norm')(x)[:, 0]


# ---------------------------------------------------------------------------------------------
# Preprocessing and feature extraction
# ---------------------------------------------------------------------------------------------


def preprocess(images, size: int = INPUT_SIZE) -> np.ndarray:
  """Images -> DINOv2 input, as dgm-eval's DINOv2Encoder.transform (clean_resize=False).

  Args:
    images: [B, H, W, 3] uint8, or float in [-1, 1] (generator output: quantised to uint8 first,
      as FID's images are).
  Returns:
    [B, size, size, 3] float32: PIL bicubic resize of the uint8 image (result uint8), / 255,
    minus the ImageNet mean, over its std (float32 arithmetic, as ToTensor and Normalize).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'images: expected [B, H, W, 3], got shape {images.shape}')
  if images.dtype != np.uint8:
    if not np.issubdtype(images.dtype, np.floating):
      raise ValueError(f'images: expected uint8 or float in [-1, 1], got dtype {images.dtype}')
    images = inception.quantize(images)
  out = np.empty((images.shape[0], size, size, 3), np.uint8)
  for i, img in enumerate(images):
    out[i] = np.asarray(Image.fromarray(img, 'RGB').resize((size, size), Image.BICUBIC))
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return (out.astype(np.float32) / np.float32(255.0) - mean) / std


@functools.partial(jax.jit, static_argnames='arch')
def extract(params, x, arch: Arch = ARCHS['vitl14']):
  """[B, D] float32 CLS features of preprocessed images [B, 224, 224, 3]."""
  return DinoViT(arch).apply({'params': params}, x)


def extract_batched(params, images, *, arch: Arch = ARCHS['vitl14'], batch_size: int = 50,
                    progress: bool = False, total: int | None = None) -> np.ndarray:
  """[N, D] float32 features of uint8 images (an array, or an iterable of `total` arrays).

  Batches are padded to `batch_size` (one compiled shape); rows are independent, so padding and
  batch size never change a feature.
  """
  if batch_size < 1:
    raise ValueError(f'batch_size={batch_size}: must be >= 1')
  if isinstance(images, np.ndarray) or isinstance(images, jax.Array):
    images = np.asarray(images)
    chunks = (images[i:i + batch_size] for i in range(0, images.shape[0], batch_size))
    total = -(-images.shape[0] // batch_size)
  else:
    chunks = (c[i:i + batch_size] for c in images for i in range(0, len(c), batch_size))
  feats = []
  for chunk in tqdm(chunks, total=total, desc='dinov2', disable=not progress):
    n = chunk.shape[0]
    x = preprocess(chunk)
    if n < batch_size:
      x = np.concatenate([x, np.zeros((batch_size - n,) + x.shape[1:], x.dtype)])
    feats.append(np.asarray(extract(params, jnp.asarray(x), arch))[:n])
  if not feats:
    raise ValueError('extract_batched: no images')
  return np.concatenate(feats)


# ---------------------------------------------------------------------------------------------
# Parameter files
# ---------------------------------------------------------------------------------------------


def expected_shapes(arch: Arch) -> dict:
  """Our parameter tree's shapes for `arch`, without computing anything."""
  x = jax.ShapeDtypeStruct((1, arch.patch, arch.patch, 3), jnp.float32)
  shapes = jax.eval_shape(DinoViT(arch).init, jax.random.key(0), x)['params']
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


def random_params(arch: Arch, seed: int = 0, layer_scale: tuple[float, float] = (0.2, 0.6)
                  ) -> dict:
  """Random float32 params for tests and benchmarks; never for a real metric.

  Dense kernels ~ N(0, 1 / fan_in), LayerNorm scales ~ U(0.5, 1.5), biases and embeddings
  ~ N(0, 0.1) (pos_embed N(0, 1): its interpolation must matter), LayerScale ~ U(layer_scale),
  so every block moves the CLS token (the official init of 1e-5 would hide the blocks).
  """
  rng = np.random.default_rng(seed)

  def leaf(k, v):
    if k == 'kernel':  # [in, out], stacked [depth, in, out], or the conv's HWIO
      fan_in = int(np.prod(v[:-1])) if len(v) == 4 else v[-2]
      return rng.normal(0.0, fan_in ** -0.5, v)
    if k in ('ls1', 'ls2'):
      return rng.uniform(*layer_scale, v)
    if k == 'scale':
      return rng.uniform(0.5, 1.5, v)
    return rng.normal(0.0, 1.0 if k == 'pos_embed' else 0.1, v)  # bias, cls_token

  def make(tree):
    return {k: make(v) if isinstance(v, dict) else np.asarray(leaf(k, v), np.float32)
            for k, v in tree.items()}
  return make(expected_shapes(arch))


def arch_name(arch: Arch) -> str:
  for name, a in ARCHS.items():
    if a == arch:
      return name
  return f'dim{arch.dim}-depth{arch.depth}-heads{arch.heads}'


def save_params(path, params, arch: Arch, source: str) -> pathlib.Path:
  """Writes params with a format tag, the architecture and where they came from (msgpack)."""
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  blob = serialization.msgpack_serialize({
      'format': FILE_FORMAT, 'source': source, 'arch': dataclasses.asdict(arch),
      'params': jax.tree.map(lambda a: np.asarray(a, np.float32), params)})
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(blob)
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written weights file
  return path


def how_to_get_weights(path) -> str:
  return (f'DINOv2 weights not found at {path}. Download {OFFICIAL_URL} (1.2 GB) and convert '
          "it once (needs torch only for this: pip install 'reacgan-jax[torch]'): python -m "
          'reacgan_jax.evaluation.dinov2_convert --input dinov2_vitl14_pretrain.pth '
          '(or set config.eval.dinov2_weights / --dinov2-weights to a converted file).')


def load_params(path=None) -> tuple[Arch, dict, str]:
  """(arch, params, source) of a converted file; InputError / MissingFileError for a bad one."""
  path = pathlib.Path(path or default_weights_path()).expanduser()
  if not path.exists():
    raise MissingFileError(how_to_get_weights(path))
  data = weights_file.read(path, FILE_FORMAT, 'DINOv2 weights', 're-create it with python -m '
                           'reacgan_jax.evaluation.dinov2_convert')
  arch = Arch(**data['arch'])
  got = jax.tree.map(lambda a: tuple(a.shape), data['params'])
  if got != expected_shapes(arch):
    raise InputError(f'{path}: parameter shapes do not match its architecture {arch}; '
                     're-create it with python -m reacgan_jax.evaluation.dinov2_convert')
  return arch, data['params'], str(data.get('source', ''))
