"""Sampling from a trained generator: sample functions, class grids, interpolations, dumps.

`make_sample_fn` turns a TrainState into `sample_fn(z, y) -> images` (the function the
Evaluator takes); everything else here only arranges its outputs. The EMA generator is used
when the state has one. G's BN at sampling follows `config.model.bn_eval` (SPEC 3: FID moves
with it, so every number names the mode):
  running   running averages accumulated in training (G applied with train=False);
  batch     statistics of the sampled batch itself;
  standing  running statistics replaced by the plain average of batch statistics over
            `config.model.standing_batches` random batches (BigGAN's "standing stats").
Spectral norm at sampling: no power iteration (SPEC 2: no update in evaluation); sigma comes
from the stored vectors as config.model.sn_eval says (spectral_norm.py). The EMA generator
uses its own SN vectors, the EMA of G's (state.ema.sn), as StudioGAN's G_ema does.
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

from reacgan_jax.errors import ConfigError, InputError
from reacgan_jax.models import adapter as adapter_lib
from reacgan_jax.platform import parallel


def generator_variables(state, use_ema=True):
  """(params, collections, SN state) of the generator to sample from: the EMA's when present."""
  if use_ema and state.ema is not None:
    return state.ema.params, state.ema.collections, state.ema.sn
  return state.g.params, state.g.collections, state.g.sn


def _apply_g(adapter, params, collections, z, y, key, *, train):
  # train (bn_eval='batch'): batch statistics, running averages untouched. key: G's own
  # randomness (StyleGAN2's noise inputs; None for the other generators).
  return adapter.apply_g(params, collections, z, y, train=train, update=False, key=key)[0]


def _batch_statistics(adapter, params, collections, z, y):
  """Per-leaf batch statistics of one G forward, whatever BN momentum the model uses.

  A flax BN in train mode returns `m * old + (1 - m) * batch`; two forwards from old = 0 and
  old = 1 give `(1 - m) * batch` and `m + (1 - m) * batch`, hence m and the batch statistic,
  without knowing the model's layers or momentum. Only 'batch_stats' is recomputed.
  """

  def new_stats(old):
    cols = dict(collections, batch_stats=old)
    return adapter.apply_g(params, cols, z, y, train=True)[1]['batch_stats']

  stats = collections['batch_stats']
  zeros = new_stats(jax.tree.map(jnp.zeros_like, stats))
  ones = new_stats(jax.tree.map(jnp.ones_like, stats))
  return jax.tree.map(lambda a, b: a / jnp.maximum(1.0 - (b - a), 1e-12), zeros, ones)


def standing_statistics(config, adapter, params, collections, rng, batch_size):
  """BigGAN's standing statistics: mean of batch statistics over standing_batches batches."""
  n = config.model.standing_batches
  stats_fn = jax.jit(functools.partial(_batch_statistics, adapter))
  total = None
  for i in range(n):
    z, y = sample_latents(config, jax.random.fold_in(rng, i), batch_size)
    s = stats_fn(params, collections, z, y)
    total = s if total is None else jax.tree.map(jnp.add, total, s)
  return dict(collections, batch_stats=jax.tree.map(lambda t: t / n, total))


def sample_latents(config, rng, n):
  """z ~ N(0, I) [n, z_dim] and labels uniform over the classes [n] (the training prior)."""
  return adapter_lib.sample_prior(rng, n, config.model.z_dim, config.data.num_classes)


BN_EVAL_MODES = ('running', 'batch', 'standing')  # config.model.bn_eval


def check_classes(y, num_classes: int):
  """InputError when a class id is outside [0, num_classes): the generator would index its class
  embedding out of range (NaN images above it, another class below 0: jnp clamps or wraps)."""
  if isinstance(y, jax.core.Tracer) or (isinstance(y, jax.Array) and not y.is_fully_addressable):
    return  # traced or spread over hosts: the caller's values, checked where they are made
  y = np.asarray(y)
  if not np.issubdtype(y.dtype, np.integer):
    raise InputError(f'Sampler: class ids must be integers, got {y.dtype}.')
  bad = np.unique(y[(y < 0) | (y >= num_classes)])
  if bad.size:
    raise InputError(f'Sampler: class id(s) {", ".join(str(int(b)) for b in bad[:5])} outside '
                     f'[0, {num_classes}) (config.data.num_classes={num_classes}); use 0..'
                     f'{num_classes - 1}.')


class Sampler:
  """Builds sample functions from TrainStates; the jitted G forward is compiled once.

  Args:
    config: the run's config (model.bn_eval, model.sn_* keys).
    adapter: the run's adapter.ModelAdapter.
    mesh: optional data mesh; batches whose size divides the device count are sharded on it.
  """

  def __init__(self, config, adapter, mesh=None):
    mode = config.model.bn_eval
    if mode not in BN_EVAL_MODES:
      raise ConfigError(f"config.model.bn_eval={mode!r}: expected one of running, batch, standing")
    self.config, self.adapter, self.mesh = config, adapter, mesh
    # Parameters are arguments, not closed-over constants (those would be baked into the HLO
    # and recompiled for every state).
    self._apply = jax.jit(functools.partial(_apply_g, adapter, train=mode == 'batch'))

  def sample_fn(self, state, *, use_ema=True, rng=None):
    """Returns `sample_fn(z [B, z_dim], y [B]) -> images [B, H, W, 3] in [-1, 1]`.

    Args:
      state: a TrainState (only g_*/ema_* fields are read).
      use_ema: sample from the EMA generator when the state has one.
      rng: key for the standing-statistics batches (bn_eval='standing' only).
    """
    config = self.config
    params, collections, sn = generator_variables(state, use_ema)
    params, _ = self.adapter.normalize('g', params, sn, update=False)
    if config.model.bn_eval == 'standing' and collections.get('batch_stats'):
      rng = jax.random.PRNGKey(config.seed) if rng is None else rng
      collections = standing_statistics(config, self.adapter, params, collections, rng,
                                        config.eval.batch_size)
    mesh = self.mesh
    # A G with randomness of its own (StyleGAN2's per-pixel noise, random at evaluation as in
    # StudioGAN) gets a fresh key per call: fold_in(seed key, call number), deterministic for a
    # given sequence of calls.
    base = jax.random.fold_in(jax.random.PRNGKey(config.seed), 3)
    calls = [0]

    def sample_fn(z, y):
      check_classes(y, config.data.num_classes)
      if mesh is not None and z.shape[0] % mesh.devices.size == 0 and jax.process_count() == 1:
        sh = parallel.batch_sharding(mesh, 0)
        z, y = jax.device_put(z, sh), jax.device_put(y, sh)
      key = None
      if self.adapter.g_needs_key:
        key, calls[0] = jax.random.fold_in(base, calls[0]), calls[0] + 1
      return self._apply(params, collections, z, y, key)

    return sample_fn

  def w_interpolation_fn(self, state, *, use_ema=True):
    """For a G with a mapping / synthesis split (StyleGAN2), `fn(z0, z1, y, num_steps) ->
    images [R * num_steps, H, W, 3]`: per row r, the (truncated) ws of z0[r] and z1[r] for
    class y[r], linearly interpolated in w space and synthesised; None for other generators."""
    a = self.adapter
    if not hasattr(a.generator, 'synthesize'):
      return None
    params, cols, _ = generator_variables(state, use_ema)  # StyleGAN2: no SN
    s = self.config.model.stylegan2
    key = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 4)

    @functools.partial(jax.jit, static_argnums=3)
    def fn(z0, z1, y, num_steps):
      mapping = lambda z: a.apply_g_method(params, cols, 'mapping', z, y, s.truncation_psi,  # noqa: E731
                                           s.truncation_cutoff)
      w0, w1 = mapping(z0)[:, None], mapping(z1)[:, None]
      t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None, None]
      ws = ((1 - t) * w0 + t * w1).reshape((-1,) + w0.shape[2:])
      return a.apply_g_method(params, cols, 'synthesize', ws, key=key)

    return fn


def make_sample_fn(config, adapter, state, *, use_ema=True, mesh=None, rng=None):
  """One-off `Sampler(config, adapter, mesh).sample_fn(state, ...)`."""
  return Sampler(config, adapter, mesh).sample_fn(state, use_ema=use_ema, rng=rng)


def grid_classes(config):
  """Class of each grid row: `grid_classes` classes spread evenly over all classes."""
  n = min(config.train.grid_classes, config.data.num_classes)
  return np.linspace(0, config.data.num_classes - 1, n).round().astype(np.int32)


def grid_latents(config, rng):
  """Fixed inputs of the training sample grid: rows = classes, columns = z (the same z per
  column, so a column shows one latent across classes). Returns z [R*C, z_dim], y [R*C]."""
  rows, cols = grid_classes(config), config.train.grid_per_class
  z = jax.random.normal(rng, (cols, config.model.z_dim), jnp.float32)
  z = jnp.tile(z, (len(rows), 1))
  y = jnp.repeat(jnp.asarray(rows), cols)
  return z, y


def interpolation_latents(config, rng, num_steps=8):
  """Latent interpolation: per grid class, z linearly interpolated between two random endpoints.

  Returns z [R*num_steps, z_dim] and y [R*num_steps] (row r = class grid_classes()[r]).
  """
  rows = grid_classes(config)
  k0, k1 = jax.random.split(rng)
  z0 = jax.random.normal(k0, (len(rows), 1, config.model.z_dim))
  z1 = jax.random.normal(k1, (len(rows), 1, config.model.z_dim))
  t = jnp.linspace(0.0, 1.0, num_steps)[None, :, None]
  z = ((1 - t) * z0 + t * z1).reshape(-1, config.model.z_dim)
  y = jnp.repeat(jnp.asarray(rows), num_steps)
  return z, y


def to_uint8(images):
  """[..., H, W, 3] float in [-1, 1] -> uint8 (the quantisation of SPEC 5)."""
  x = (np.asarray(images, np.float32) + 1.0) * 127.5
  return np.clip(np.round(x), 0, 255).astype(np.uint8)


def make_grid(images, rows, cols, pad=1):
  """Tiles images [rows*cols, H, W, 3] in [-1, 1] row-major into one uint8 image.

  Returns:
    uint8 [rows*(H+pad)+pad, cols*(W+pad)+pad, 3] with white `pad`-pixel separators.
  """
  images = to_uint8(images)
  n, h, w, c = images.shape
  if n != rows * cols:
    raise ValueError(f'make_grid: {n} images do not fill a {rows}x{cols} grid')
  grid = np.full((rows * (h + pad) + pad, cols * (w + pad) + pad, c), 255, np.uint8)
  for i in range(n):
    r, col = divmod(i, cols)
    grid[pad + r * (h + pad):pad + r * (h + pad) + h,
         pad + col * (w + pad):pad + col * (w + pad) + w] = images[i]
  return grid


def save_png(array, path):
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  Image.fromarray(array).save(path)
  return path


def generate(sample_fn, config, rng, num_samples, batch_size):
  """Draws `num_samples` (z, y) from the prior and returns uint8 images [N, H, W, 3], y [N]."""
  images, labels = [], []
  for i, start in enumerate(range(0, num_samples, batch_size)):
    n = min(batch_size, num_samples - start)
    z, y = sample_latents(config, jax.random.fold_in(rng, i), batch_size)
    images.append(to_uint8(parallel.to_host(sample_fn(z, y)))[:n])
    labels.append(np.asarray(y)[:n])
  return np.concatenate(images), np.concatenate(labels)


def write_samples(config, sample_fn, outdir, rng, num_samples=None, w_interpolation=None):
  """--mode=sample: a class grid, a latent-interpolation strip and an npz of samples; with
  `w_interpolation` (Sampler.w_interpolation_fn, StyleGAN2) also a strip interpolated in w space.

  Returns:
    dict name -> path of what was written.
  """
  num_samples = config.eval.num_samples if num_samples is None else num_samples
  k_grid, k_interp, k_dump = jax.random.split(rng, 3)
  out = {}
  z, y = grid_latents(config, k_grid)
  grid = make_grid(parallel.to_host(sample_fn(z, y)), len(grid_classes(config)),
                   config.train.grid_per_class)
  out['grid'] = save_png(grid, os.path.join(outdir, 'grid.png'))
  steps = 8
  z, y = interpolation_latents(config, k_interp, steps)
  strip = make_grid(parallel.to_host(sample_fn(z, y)), len(grid_classes(config)), steps)
  out['interpolation'] = save_png(strip, os.path.join(outdir, 'interpolation.png'))
  if w_interpolation is not None:
    rows = z.reshape(-1, steps, z.shape[-1])  # each row's endpoints are its first and last z
    z0, z1 = rows[:, 0], rows[:, -1]
    strip = make_grid(parallel.to_host(w_interpolation(z0, z1, y[::steps], steps)),
                      len(grid_classes(config)), steps)
    out['interpolation_w'] = save_png(strip, os.path.join(outdir, 'interpolation_w.png'))
  images, labels = generate(sample_fn, config, k_dump, num_samples, config.eval.batch_size)
  out['npz'] = os.path.join(outdir, 'samples.npz')
  np.savez_compressed(out['npz'], images=images, labels=labels)
  return out
