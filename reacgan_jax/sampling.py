"""Sampling from a trained generator: sample functions, class grids, interpolations, dumps.

`make_sample_fn` turns a TrainState into `sample_fn(z, y) -> images` (the function the
Evaluator takes); everything else here only arranges its outputs. The EMA generator is used
when the state has one. G's BN at sampling follows `config.model.bn_eval` (SPEC 3: FID moves
with it, so every number names the mode):
  running   running averages accumulated in training (G applied with train=False);
  batch     statistics of the sampled batch itself;
  standing  running statistics replaced by the plain average of batch statistics over
            `config.model.standing_batches` random batches (BigGAN's "standing stats").
Spectral norm at sampling follows config.model.sn_eval (ops/spectral_norm.py): 'iterate' (the
default, StudioGAN's evaluation: its SN layers stay in train mode) runs the training forward's
power iteration from the stored vectors once per sample function, without keeping them;
'stored' divides by the stored vectors' sigma (torch eval mode, SPEC 2's "no update"). The EMA
generator starts from its own SN vectors, the EMA of G's (state.ema.sn), as StudioGAN's G_ema
does; being averages they are shorter than unit length, which 'stored' would turn into weights
too large (issue 25).

Aimed sampling (`--seeds`, `--classes`, `--truncation`): one image per (seed, class), its z
drawn from `PRNGKey(seed)` alone (and StyleGAN2's noise from a key of that seed), so a seed
gives the same image whatever the batch around it or the device count. Truncation follows
StudioGAN's samplers: a StyleGAN2 G truncates in w space (psi in [0, 1], towards the tracked
w_avg, `model.stylegan2.truncation_cutoff` ws); the other generators draw z from a normal
truncated to [-t, t] (t > 0; BigGAN's truncation trick, StudioGAN's `truncated_normal`).
"""

import functools
import os

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from PIL import Image

from reacgan_jax import errors
from reacgan_jax.models import adapter as adapter_lib
from reacgan_jax.ops import spectral_norm
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


def draw_z(key, shape, z_threshold=None):
  """z ~ N(0, I) of `shape`, or with `z_threshold` t the normal truncated to [-t, t]."""
  if z_threshold is None:
    return jax.random.normal(key, shape, jnp.float32)
  return jax.random.truncated_normal(key, -z_threshold, z_threshold, shape, jnp.float32)


def sample_latents(config, rng, n, z_threshold=None):
  """z ~ N(0, I) [n, z_dim] and labels uniform over the classes [n] (the training prior);
  with `z_threshold` z comes from the truncated normal (the labels are the same)."""
  z, y = adapter_lib.sample_prior(rng, n, config.model.z_dim, config.data.num_classes)
  if z_threshold is not None:
    z = draw_z(jax.random.split(rng)[0], z.shape, z_threshold)  # sample_prior's z key
  return z, y


BN_EVAL_MODES = ('running', 'batch', 'standing')  # config.model.bn_eval


def check_classes(y, num_classes: int):
  """InputError when a class id is outside [0, num_classes): the generator would index its class
  embedding out of range (NaN images above it, another class below 0: jnp clamps or wraps)."""
  if isinstance(y, jax.core.Tracer) or (isinstance(y, jax.Array) and not y.is_fully_addressable):
    return  # traced or spread over hosts: the caller's values, checked where they are made
  y = np.asarray(y)
  if not np.issubdtype(y.dtype, np.integer):
    raise errors.InputError(f'Sampler: class ids must be integers, got {y.dtype}.')
  bad = np.unique(y[(y < 0) | (y >= num_classes)])
  if bad.size:
    ids = ', '.join(str(int(b)) for b in bad[:5])
    raise errors.InputError(f'Sampler: class id(s) {ids} outside [0, {num_classes}) '
                            f'(config.data.num_classes={num_classes}); use 0..{num_classes - 1}.')


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
      raise errors.ConfigError(f'config.model.bn_eval={mode!r}: expected one of running, batch, '
                               'standing')
    self.config, self.adapter, self.mesh = config, adapter, mesh
    ema_sn = config.model.get('apply_g_sn') and config.train.get('ema')
    if ema_sn and spectral_norm.sn_eval(config) == 'stored':
      logging.warning(
          "config.model.sn_eval='stored': the EMA generator's weights are divided by the sigma "
          'of its averaged spectral-norm vectors, shorter than 1, so its samples come out too '
          "bright or saturated (issue 25); StudioGAN's evaluation and our default is "
          "'iterate': --config.model.sn_eval=iterate (a run saved under 'stored' evaluates "
          'under it unchanged).')
    # Parameters are arguments, not closed-over constants (those would be baked into the HLO
    # and recompiled for every state).
    self._apply = jax.jit(functools.partial(_apply_g, adapter, train=mode == 'batch'))

  def _variables(self, state, use_ema, rng):
    """(normalised params, collections) of the G to sample: SN applied, standing statistics
    in place for bn_eval='standing'."""
    config = self.config
    params, collections, sn = generator_variables(state, use_ema)
    params = self.adapter.normalize_for_sampling('g', params, sn)
    if config.model.bn_eval == 'standing' and collections.get('batch_stats'):
      rng = jax.random.PRNGKey(config.seed) if rng is None else rng
      collections = standing_statistics(config, self.adapter, params, collections, rng,
                                        config.eval.batch_size)
    return params, collections

  def _shard(self, *arrays):
    """The arrays batch-sharded on the mesh when their batch divides the device count."""
    mesh = self.mesh
    if mesh is not None and arrays[0].shape[0] % mesh.devices.size == 0 and \
        jax.process_count() == 1:
      sh = parallel.batch_sharding(mesh, 0)
      return tuple(jax.device_put(a, sh) for a in arrays)
    return arrays

  def sample_fn(self, state, *, use_ema=True, rng=None):
    """Returns `sample_fn(z [B, z_dim], y [B]) -> images [B, H, W, 3] in [-1, 1]`.

    Args:
      state: a TrainState (only g_*/ema_* fields are read).
      use_ema: sample from the EMA generator when the state has one.
      rng: key for the standing-statistics batches (bn_eval='standing' only).
    """
    params, collections = self._variables(state, use_ema, rng)
    # A G with randomness of its own (StyleGAN2's per-pixel noise, random at evaluation as in
    # StudioGAN) gets a fresh key per call: fold_in(seed key, call number), deterministic for a
    # given sequence of calls.
    base = jax.random.fold_in(jax.random.PRNGKey(self.config.seed), 3)
    calls = [0]

    def sample_fn(z, y):
      check_classes(y, self.config.data.num_classes)
      z, y = self._shard(z, y)
      key = None
      if self.adapter.g_needs_key:
        key, calls[0] = jax.random.fold_in(base, calls[0]), calls[0] + 1
      return self._apply(params, collections, z, y, key)

    return sample_fn

  def seeded_fn(self, state, *, use_ema=True):
    """Returns `fn(z [B, z_dim], y [B], keys [B, 2]) -> images [B, H, W, 3]` in which image i
    depends on row i alone: G's own randomness (StyleGAN2's noise) comes from keys[i] (G runs
    once per row, vmapped), and BN uses fixed statistics. The aimed sampler's function.

    Raises ConfigError for bn_eval='batch': batch statistics tie each image to its batch.
    """
    if self.config.model.bn_eval == 'batch':
      raise errors.ConfigError(
          "--seeds/--classes need config.model.bn_eval='running' or 'standing': with 'batch' "
          'each image depends on the other images of its batch, so a seed has no image of its '
          'own.')
    params, collections = self._variables(state, use_ema, None)
    adapter = self.adapter

    @jax.jit
    def per_row(params, collections, z, y, keys):
      def one(z1, y1, k):
        return _apply_g(adapter, params, collections, z1[None], y1[None], k, train=False)[0]
      return jax.vmap(one)(z, y, keys)

    def fn(z, y, keys):
      z, y, keys = self._shard(z, y, keys)
      if adapter.g_needs_key:
        return per_row(params, collections, z, y, keys)
      return self._apply(params, collections, z, y, None)

    return fn

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


def grid_latents(config, rng, z_threshold=None):
  """Fixed inputs of the training sample grid: rows = classes, columns = z (the same z per
  column, so a column shows one latent across classes). Returns z [R*C, z_dim], y [R*C]."""
  rows, cols = grid_classes(config), config.train.grid_per_class
  z = draw_z(rng, (cols, config.model.z_dim), z_threshold)
  z = jnp.tile(z, (len(rows), 1))
  y = jnp.repeat(jnp.asarray(rows), cols)
  return z, y


def interpolation_latents(config, rng, num_steps=8, z_threshold=None):
  """Latent interpolation: per grid class, z linearly interpolated between two random endpoints.

  Returns z [R*num_steps, z_dim] and y [R*num_steps] (row r = class grid_classes()[r]).
  """
  rows = grid_classes(config)
  k0, k1 = jax.random.split(rng)
  z0 = draw_z(k0, (len(rows), 1, config.model.z_dim), z_threshold)
  z1 = draw_z(k1, (len(rows), 1, config.model.z_dim), z_threshold)
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


def generate(sample_fn, config, rng, num_samples, batch_size, z_threshold=None):
  """Draws `num_samples` (z, y) from the prior (z truncated at `z_threshold` when given) and
  returns uint8 images [N, H, W, 3], y [N]."""
  images, labels = [], []
  for i, start in enumerate(range(0, num_samples, batch_size)):
    n = min(batch_size, num_samples - start)
    z, y = sample_latents(config, jax.random.fold_in(rng, i), batch_size, z_threshold)
    images.append(to_uint8(parallel.to_host(sample_fn(z, y)))[:n])
    labels.append(np.asarray(y)[:n])
  return np.concatenate(images), np.concatenate(labels)


def write_samples(config, sample_fn, outdir, rng, num_samples=None, w_interpolation=None,
                  z_threshold=None):
  """--mode=sample: a class grid, a latent-interpolation strip and an npz of samples; with
  `w_interpolation` (Sampler.w_interpolation_fn, StyleGAN2) also a strip interpolated in w space.
  `z_threshold`: z from the normal truncated to [-t, t] (truncation_plan).

  Returns:
    dict name -> path of what was written.
  """
  num_samples = config.eval.num_samples if num_samples is None else num_samples
  k_grid, k_interp, k_dump = jax.random.split(rng, 3)
  out = {}
  z, y = grid_latents(config, k_grid, z_threshold)
  grid = make_grid(parallel.to_host(sample_fn(z, y)), len(grid_classes(config)),
                   config.train.grid_per_class)
  out['grid'] = save_png(grid, os.path.join(outdir, 'grid.png'))
  steps = 8
  z, y = interpolation_latents(config, k_interp, steps, z_threshold)
  strip = make_grid(parallel.to_host(sample_fn(z, y)), len(grid_classes(config)), steps)
  out['interpolation'] = save_png(strip, os.path.join(outdir, 'interpolation.png'))
  if w_interpolation is not None:
    rows = z.reshape(-1, steps, z.shape[-1])  # each row's endpoints are its first and last z
    z0, z1 = rows[:, 0], rows[:, -1]
    strip = make_grid(parallel.to_host(w_interpolation(z0, z1, y[::steps], steps)),
                      len(grid_classes(config)), steps)
    out['interpolation_w'] = save_png(strip, os.path.join(outdir, 'interpolation_w.png'))
  images, labels = generate(sample_fn, config, k_dump, num_samples, config.eval.batch_size,
                            z_threshold)
  out['npz'] = os.path.join(outdir, 'samples.npz')
  np.savez_compressed(out['npz'], images=images, labels=labels)
  return out


# ---- aimed sampling: --seeds, --classes, --truncation ------------------------------------------

MAX_SEED = 2**32 - 1  # PRNGKey(seed) of a uint32: the same key from an int and from an array


def parse_ids(text, flag, upper=None):
  """'0,3,7', '1-8' or a mix ('1-4,9') -> the integers in order, repeats dropped.

  Args:
    text: the flag's value.
    flag: its name, for the message (e.g. 'seeds').
    upper: ids must be < upper (the class count); None = MAX_SEED + 1.
  Raises InputError naming the flag and the bad part.
  """
  limit = MAX_SEED + 1 if upper is None else upper
  ids, seen = [], set()
  for part in str(text).replace(' ', '').split(','):
    lo, sep, hi = part.partition('-')
    if not lo.isdigit() or (sep and not hi.isdigit()):
      raise errors.InputError(f'--{flag}={text!r}: {part!r} is not an id or a range; expected '
                              'non-negative integers and ranges, e.g. 0,3,7 or 1-8 or 1-4,9.')
    lo, hi = int(lo), int(hi) if sep else int(lo)
    if hi < lo:
      raise errors.InputError(f'--{flag}={text!r}: the range {part!r} runs backwards; write '
                              f'{hi}-{lo}.')
    if hi >= limit:
      what = (f'this model has {upper} classes (ids 0-{upper - 1})' if upper is not None
              else f'seeds go up to {MAX_SEED}')
      raise errors.InputError(f'--{flag}={text!r}: {hi} is out of range: {what}.')
    new = [i for i in range(lo, hi + 1) if i not in seen]
    ids.extend(new)
    seen.update(new)
  return ids


def truncation_plan(config, truncation):
  """(config to sample with, z threshold or None) for `truncation` (None = off).

  StyleGAN2 (StudioGAN's stylegan_generate_images): psi in [0, 1] towards w_avg, so the
  returned config has model.stylegan2.truncation_psi = truncation and z stays N(0, I). The
  other generators (StudioGAN's sample_normal): z from the normal truncated to [-t, t], t > 0.
  Raises ConfigError (one line) where the value has no meaning for the backbone.
  """
  if truncation is None:
    return config, None
  t = float(truncation)
  if config.model.backbone != 'stylegan2':
    if not t > 0:
      raise errors.ConfigError(f'--truncation={truncation}: z is truncated to [-t, t], so t must '
                               'be > 0 (larger = less truncation; leave it out for none).')
    return config, t
  s = config.model.stylegan2
  if not 0 <= t <= 1:
    raise errors.ConfigError(f'--truncation={truncation}: StyleGAN2 truncates w with psi in '
                             '[0, 1] (0 = the average w, 1 = none), as StudioGAN does.')
  if s.w_avg_beta is None and t != 1:
    raise errors.ConfigError(f'--truncation={truncation}: this StyleGAN2 tracks no w_avg '
                             '(model.stylegan2.w_avg_beta is None), so w cannot be truncated.')
  config = config.copy_and_resolve_references()
  config.model.stylegan2.truncation_psi = t
  return config, None


def seed_inputs(seeds, z_dim, z_threshold=None):
  """z [S, z_dim] float32 and G keys [S, 2] uint32: row i from PRNGKey(seeds[i]) alone
  (z from fold_in(key, 0), G's own randomness from fold_in(key, 1)), so a seed's inputs do not
  depend on the other seeds, their order or the devices."""

  def one(seed):
    key = jax.random.PRNGKey(seed)
    return (draw_z(jax.random.fold_in(key, 0), (z_dim,), z_threshold),
            jax.random.fold_in(key, 1))

  return jax.jit(jax.vmap(one))(jnp.asarray(seeds, jnp.uint32))


def sample_name(seed, cls, num_classes):
  """PNG name of one aimed sample, e.g. seed0003_class007.png."""
  width = max(3, len(str(num_classes - 1)))
  return f'seed{seed:04d}_class{cls:0{width}d}.png'


def write_seed_samples(config, seeded_fn, outdir, seeds, classes, z_threshold=None):
  """One PNG per (seed, class), a grid (rows = classes, columns = seeds) and samples.npz
  (images uint8 [N, H, W, 3], seeds [N], labels [N]; class-major order).

  Args:
    seeded_fn: Sampler.seeded_fn(state).
    seeds, classes: lists of ints (parse_ids).
  Returns:
    dict name -> path.
  """
  z_seed, k_seed = seed_inputs(seeds, config.model.z_dim, z_threshold)
  idx = np.tile(np.arange(len(seeds)), len(classes))
  labels = np.repeat(np.asarray(classes, np.int32), len(seeds))
  n, bs = len(idx), config.eval.batch_size
  images = []
  for start in range(0, n, bs):
    rows = np.arange(start, start + bs).clip(max=n - 1)  # the ragged tail repeats its last row
    out = seeded_fn(z_seed[idx[rows]], jnp.asarray(labels[rows]), k_seed[idx[rows]])
    images.append(to_uint8(parallel.to_host(out))[:min(bs, n - start)])
  images = np.concatenate(images)
  paths = {}
  for image, i, c in zip(images, idx, labels, strict=True):
    save_png(image, os.path.join(outdir, sample_name(seeds[i], c, config.data.num_classes)))
  paths['pngs'] = outdir
  grid = make_grid(images.astype(np.float32) / 127.5 - 1.0, len(classes), len(seeds))
  paths['grid'] = save_png(grid, os.path.join(outdir, 'grid.png'))
  paths['npz'] = os.path.join(outdir, 'samples.npz')
  np.savez_compressed(paths['npz'], images=images, seeds=np.asarray(seeds)[idx], labels=labels)
  return paths
