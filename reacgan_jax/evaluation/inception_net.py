"""The FID Inception-v3 network ("2015-12-05") in Flax: blocks, the model, and its constants.

See inception.py for why it differs from a textbook Inception-v3 (each difference moves FID).
"""

import functools
from collections.abc import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from reacgan_jax.ops import conv as conv_ops

INPUT_SIZE = 299
POOL_DIM = 2048
NUM_LOGITS = 1008  # the 2015-12-05 graph has 1008 classes (1000 + 8 unused)
BN_EPS = 1e-3



class ConvBN(nn.Module):
  """Conv (no bias) -> BN without gamma (eps 1e-3, running statistics) -> ReLU.

  Attributes:
    features: output channels.
    kernel: (kh, kw).
    strides: stride in both directions.
    padding: (ph, pw) symmetric zero padding (torch convention of the reference).
    precision: matmul precision; HIGHEST by default because TF32/bf16 on accelerators moves
      features by ~1e-3, which is visible in FID.
    conv_backend: 'xla' (lax.conv_general_dilated) or 'onednn' (oneDNN float32 on CPU,
      models/conv.py; config.eval.conv_backend).
  """
  features: int
  kernel: tuple[int, int] = (1, 1)
  strides: int = 1
  padding: tuple[int, int] = (0, 0)
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    in_ch = x.shape[-1]
    w = self.param('kernel', nn.initializers.lecun_normal(), (*self.kernel, in_ch, self.features))
    beta = self.param('beta', nn.initializers.zeros, (self.features,))
    mean = self.param('mean', nn.initializers.zeros, (self.features,))
    var = self.param('var', nn.initializers.ones, (self.features,))
    ph, pw = self.padding
    conv = (jax.lax.conv_general_dilated if self.conv_backend == 'xla'
            else conv_ops.for_backend(self.conv_backend))
    y = conv(x, w.astype(x.dtype), (self.strides, self.strides), ((ph, ph), (pw, pw)),
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
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    if self.pool is not None:
      x = self.pool(x)
    for i, (f, k, s, p) in enumerate(self.specs):
      x = ConvBN(f, k, s, p, self.precision, self.conv_backend,
                 name='conv' if i == 0 else f'conv_{i}')(x)
    return x


def _c(n, width):
  return max(1, int(round(n * width)))


class InceptionA(nn.Module):
  pool_features: int
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, cb = self.precision, self.conv_backend
    b0 = ConvBN(c(64), precision=p, conv_backend=cb, name='conv')(x)
    b1 = Tower(((c(48), (1, 1), 1, (0, 0)), (c(64), (5, 5), 1, (2, 2))), precision=p,
               conv_backend=cb, name='tower')(x)
    b2 = Tower(((c(64), (1, 1), 1, (0, 0)), (c(96), (3, 3), 1, (1, 1)),
                (c(96), (3, 3), 1, (1, 1))), precision=p, conv_backend=cb, name='tower_1')(x)
    b3 = Tower(((c(self.pool_features), (1, 1), 1, (0, 0)),), pool=_avg_pool_same, precision=p,
               conv_backend=cb, name='tower_2')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionB(nn.Module):
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, cb = self.precision, self.conv_backend
    b0 = ConvBN(c(384), (3, 3), 2, precision=p, conv_backend=cb, name='conv')(x)
    b1 = Tower(((c(64), (1, 1), 1, (0, 0)), (c(96), (3, 3), 1, (1, 1)),
                (c(96), (3, 3), 2, (0, 0))), precision=p, conv_backend=cb, name='tower')(x)
    return jnp.concatenate([b0, b1, _max_pool_down(x)], axis=-1)


class InceptionC(nn.Module):
  channels_7x7: int
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, cb = self.precision, self.conv_backend
    c7 = c(self.channels_7x7)
    row, col = ((1, 7), 1, (0, 3)), ((7, 1), 1, (3, 0))
    b0 = ConvBN(c(192), precision=p, conv_backend=cb, name='conv')(x)
    b1 = Tower(((c7, (1, 1), 1, (0, 0)), (c7, *row), (c(192), *col)), precision=p, conv_backend=cb,
               name='tower')(x)
    b2 = Tower(((c7, (1, 1), 1, (0, 0)), (c7, *col), (c7, *row), (c7, *col), (c(192), *row)),
               precision=p, conv_backend=cb, name='tower_1')(x)
    b3 = Tower(((c(192), (1, 1), 1, (0, 0)),), pool=_avg_pool_same, precision=p, conv_backend=cb,
               name='tower_2')(x)
    return jnp.concatenate([b0, b1, b2, b3], axis=-1)


class InceptionD(nn.Module):
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, cb = self.precision, self.conv_backend
    b0 = Tower(((c(192), (1, 1), 1, (0, 0)), (c(320), (3, 3), 2, (0, 0))), precision=p,
               conv_backend=cb, name='tower')(x)
    b1 = Tower(((c(192), (1, 1), 1, (0, 0)), (c(192), (1, 7), 1, (0, 3)),
                (c(192), (7, 1), 1, (3, 0)), (c(192), (3, 3), 2, (0, 0))), precision=p,
               conv_backend=cb, name='tower_1')(x)
    return jnp.concatenate([b0, b1, _max_pool_down(x)], axis=-1)


class InceptionE(nn.Module):
  """The E block; `max_pool=True` is the FID graph's last block (`mixed_10`, FIDInceptionE_2)."""
  max_pool: bool = False
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, cb = self.precision, self.conv_backend
    b0 = ConvBN(c(320), precision=p, conv_backend=cb, name='conv')(x)
    a = ConvBN(c(384), precision=p, conv_backend=cb, name='tower_conv')(x)
    b1 = ConvBN(c(384), (1, 3), 1, (0, 1), p, cb, name='tower_mixed_conv')(a)
    b2 = ConvBN(c(384), (3, 1), 1, (1, 0), p, cb, name='tower_mixed_conv_1')(a)
    b = ConvBN(c(448), precision=p, conv_backend=cb, name='tower_1_conv')(x)
    b = ConvBN(c(384), (3, 3), 1, (1, 1), p, cb, name='tower_1_conv_1')(b)
    b3 = ConvBN(c(384), (1, 3), 1, (0, 1), p, cb, name='tower_1_mixed_conv')(b)
    b4 = ConvBN(c(384), (3, 1), 1, (1, 0), p, cb, name='tower_1_mixed_conv_1')(b)
    pooled = _max_pool_same(x) if self.max_pool else _avg_pool_same(x)
    b5 = ConvBN(c(192), precision=p, conv_backend=cb, name='tower_2_conv')(pooled)
    return jnp.concatenate([b0, b1, b2, b3, b4, b5], axis=-1)


class InceptionV3(nn.Module):
  """FID Inception-v3. `__call__(x [B, 299, 299, 3] in [-1, 1]) -> {'pool', 'logits'}`.

  Attributes:
    num_logits: 1008 to add the `fc` head (Inception Score), None for features only
      (`default_1.pt` has no fc).
    width: channel multiplier; 1.0 is the real network. Smaller values only exist so that tests of
      the CLI can run a random-weight network quickly.
    precision: conv / fc precision (see ConvBN).
    conv_backend: 'xla' | 'onednn' (see ConvBN).

  Returns:
    {'pool': [B, 2048 * width] float32 (pool3 features), 'logits': [B, num_logits] or None}.
  """
  num_logits: int | None = None
  width: float = 1.0
  precision: jax.lax.Precision = jax.lax.Precision.HIGHEST
  conv_backend: str = 'xla'

  @nn.compact
  def __call__(self, x):
    c = functools.partial(_c, width=self.width)
    p, w, cb = self.precision, self.width, self.conv_backend
    x = ConvBN(c(32), (3, 3), 2, precision=p, conv_backend=cb, name='conv')(x)
    x = ConvBN(c(32), (3, 3), precision=p, conv_backend=cb, name='conv_1')(x)
    x = ConvBN(c(64), (3, 3), 1, (1, 1), p, cb, name='conv_2')(x)
    x = _max_pool_down(x)
    x = ConvBN(c(80), precision=p, conv_backend=cb, name='conv_3')(x)
    x = ConvBN(c(192), (3, 3), precision=p, conv_backend=cb, name='conv_4')(x)
    x = _max_pool_down(x)
    x = InceptionA(32, w, p, cb, name='mixed')(x)
    x = InceptionA(64, w, p, cb, name='mixed_1')(x)
    x = InceptionA(64, w, p, cb, name='mixed_2')(x)
    x = InceptionB(w, p, cb, name='mixed_3')(x)
    for i, c7 in enumerate((128, 160, 160, 192)):
      x = InceptionC(c7, w, p, cb, name=f'mixed_{4 + i}')(x)
    x = InceptionD(w, p, cb, name='mixed_8')(x)
    x = InceptionE(False, w, p, cb, name='mixed_9')(x)
    x = InceptionE(True, w, p, cb, name='mixed_10')(x)
    # pool3: the 8x8 average pool of the graph == global mean at 299x299 input.
    pool = jnp.mean(x, axis=(1, 2))
    logits = None
    if self.num_logits is not None:
      logits = nn.Dense(self.num_logits, precision=p, name='fc')(pool)
    return {'pool': pool, 'logits': logits}


def _module_for(params, conv_backend: str = 'xla') -> InceptionV3:
  """The module whose structure matches `params` (fc head present or not, channel width)."""
  num_logits = params['fc']['bias'].shape[0] if 'fc' in params else None
  width = params['conv']['beta'].shape[0] / 32
  return InceptionV3(num_logits=num_logits, width=width, conv_backend=conv_backend)
