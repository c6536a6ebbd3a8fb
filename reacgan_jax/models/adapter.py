"""The model adapter: how the trainer, the sampler and the evaluator call G and D.

One object per run wraps the two flax modules and the config knobs around them, so no caller
spells out flax variables, rng streams or spectral normalisation:

  adapter = adapter_lib.build(config, mesh)
  g_vars, d_vars = adapter.init(key_g, key_d)
  z, y = adapter.sample_prior(key, n)
  w, sn = adapter.normalize('g', params, sn, update=True)
  images, collections = adapter.apply_g(w, collections, z, y, train=True, key=...)
  out, collections = adapter.apply_d(w, collections, x, y, train=True, key=...)

Collections: every variable collection the model's `init` returns besides 'params' (and the
'perturbations' marker) is mutable state of that network — BN 'batch_stats' today, a tracked
`w_avg` tomorrow — carried in `NetState.collections` and updated when `apply_*(update=True)`.
Rng streams: a module lists the streams it draws from in a class attribute `RNG_STREAMS`
(DCGAN's D: ('dropout',), StyleGAN2's G: ('noise', 'mixing')); the adapter gives each one a
key derived from the call's key.
Which update moves G's state: G's class attribute `STATE_UPDATED_IN`, 'g' (default: BN
statistics move in the G update; the reference untracks them in D updates) or 'd' (StyleGAN2's
w_avg: StudioGAN generates the D updates' fakes with stylegan_update_emas=True, the G update's
with False); `UPDATE_KWARGS` are the keywords an updating forward passes (update_w_avg=True).
"""

import jax
import jax.numpy as jnp

from reacgan_jax import models
from reacgan_jax.ops import spectral_norm

NOT_STATE = ('params', 'perturbations', 'intermediates')


def sample_prior(key, n: int, z_dim: int, num_classes: int):
  """The training prior: z ~ N(0, I) [n, z_dim] float32, y uniform over classes [n] int32."""
  kz, ky = jax.random.split(key)
  return (jax.random.normal(kz, (n, z_dim), jnp.float32),
          jax.random.randint(ky, (n,), 0, num_classes, jnp.int32))


def _rngs(module, key):
  """{stream: key} for the streams `module` declares; the first gets `key` itself."""
  streams = getattr(module, 'RNG_STREAMS', ())
  return {s: key if i == 0 else jax.random.fold_in(key, i) for i, s in enumerate(streams)}


def state_collections(variables) -> dict:
  """The mutable state collections of an `init` result (everything but params/markers)."""
  return {k: v for k, v in variables.items() if k not in NOT_STATE}


class ModelAdapter:
  """G, D and the knobs around them (prior, spectral norm, collections, rng streams)."""

  def __init__(self, config, generator, discriminator):
    self.config, self.generator, self.discriminator = config, generator, discriminator
    self.z_dim, self.num_classes = config.model.z_dim, config.data.num_classes
    m = config.model
    self._sn_kwargs = spectral_norm.options(config)  # + sn_embedding_u, sn_eval
    self._sn_sampling_iterates = spectral_norm.sn_eval(config) == 'iterate'
    self._sn_on = {'g': m.apply_g_sn, 'd': m.apply_d_sn}
    # Whether G draws randomness of its own (noise, style mixing): its forwards need a key.
    self.g_needs_key = bool(getattr(generator, 'RNG_STREAMS', ()))
    self.g_state_updated_in = getattr(generator, 'STATE_UPDATED_IN', 'g')
    self._g_update_kwargs = dict(getattr(generator, 'UPDATE_KWARGS', ()))

  # ---- construction -------------------------------------------------------------------------

  def _init_inputs(self):
    # BN with bn_groups needs a batch the groups divide.
    n = max(2, getattr(self.generator, 'bn_groups', 1), getattr(self.discriminator, 'bn_groups', 1))
    s = self.config.data.image_size
    return (jnp.zeros((n, self.z_dim), jnp.float32), jnp.zeros((n,), jnp.int32),
            jnp.zeros((n, s, s, 3), jnp.float32))

  def init(self, key_g, key_d):
    """(G variables, D variables), initialised in eval mode from the two init keys."""
    z, y, x = self._init_inputs()
    g_vars = self.generator.init(
        {'params': key_g, **_rngs(self.generator, jax.random.fold_in(key_g, 1))}, z, y,
        train=False)
    d_vars = self.discriminator.init(
        {'params': key_d, **_rngs(self.discriminator, jax.random.fold_in(key_d, 1))}, x, y,
        train=False)
    return g_vars, d_vars

  def perturbation_template(self):
    """Shapes of D's 'perturbations' collection (h marked with self.perturb), or None."""
    key = jax.random.PRNGKey(0)
    shapes = jax.eval_shape(lambda: self.init(key, key)[1])
    return shapes.get('perturbations')

  # ---- spectral norm ------------------------------------------------------------------------

  def init_sn(self, which, params, key):
    """The SN `{'u', 'v'}` vectors of network `which` ({} when its spectral norm is off)."""
    if not self._sn_on[which]:
      return {}
    return spectral_norm.init_sn_state(params, key, models.sn_predicate(self.config, which),
                                       rows_u=self._sn_kwargs['rows_u'])

  def normalize(self, which, params, sn, *, update):
    """(weights divided by sigma, new SN state); `update` advances u (a train-mode forward)."""
    del which  # one SN rule for both networks today; the argument names whose state it is
    if not sn:
      return params, sn
    return spectral_norm.spectral_normalize(params, sn, update=update, **self._sn_kwargs)

  def normalize_for_sampling(self, which, params, sn):
    """Weights to sample with, as config.model.sn_eval says: 'iterate' (StudioGAN's evaluation,
    SN layers in train mode) divides by the sigma of a training forward (the power iteration
    from the stored vectors; the advanced vectors are not kept, so sampling stays a pure
    function of the state); 'stored' / 'recompute' as normalize(update=False)."""
    return self.normalize(which, params, sn, update=self._sn_sampling_iterates)[0]

  # ---- forwards -----------------------------------------------------------------------------

  def sample_prior(self, key, n):
    return sample_prior(key, n, self.z_dim, self.num_classes)

  def apply_g(self, params, collections, z, y, *, train, key=None, update=True):
    """G -> (images [B, S, S, 3], collections). In train mode with `update` (and state to
    update) the returned collections are the updated ones (BN running averages)."""
    variables = {'params': params, **collections}
    rngs = _rngs(self.generator, key) if key is not None else {}
    if train and update and collections:
      images, upd = self.generator.apply(variables, z, y, train=True, rngs=rngs,
                                         mutable=list(collections), **self._g_update_kwargs)
      return images, dict(upd)
    return self.generator.apply(variables, z, y, train=train, rngs=rngs), collections

  def apply_g_method(self, params, collections, method, *args, key=None):
    """`G.<method>(*args)` without state updates (StyleGAN2's 'mapping' / 'synthesize' for the
    path-length term), with G's rng streams drawn from `key`."""
    rngs = _rngs(self.generator, key) if key is not None else {}
    return self.generator.apply({'params': params, **collections}, *args, method=method,
                                rngs=rngs)

  def apply_d(self, params, collections, x, y, *, train, key=None, perturbations=None):
    """D -> (heads.DOutput, collections), updated ones in train mode."""
    variables = {'params': params, **collections}
    if perturbations is not None:
      variables['perturbations'] = perturbations
    rngs = _rngs(self.discriminator, key) if key is not None else {}
    if train and collections:
      out, upd = self.discriminator.apply(variables, x, y, train=True, rngs=rngs,
                                          mutable=list(collections))
      return out, dict(upd)
    return self.discriminator.apply(variables, x, y, train=train, rngs=rngs), collections


def build(config, mesh=None):
  """The run's ModelAdapter; per-device BN groups when config.train.bn_sync is False."""
  generator, discriminator = models.build_models(config)
  if mesh is not None and not config.train.bn_sync:
    # StudioGAN's default without sync-BN: statistics per device. Groups of B / n_dev
    # consecutive samples coincide with the 'data' shards.
    n = mesh.devices.size
    generator, discriminator = generator.clone(bn_groups=n), discriminator.clone(bn_groups=n)
  return ModelAdapter(config, generator, discriminator)
