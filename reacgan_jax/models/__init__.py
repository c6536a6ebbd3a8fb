"""The model zoo: `build_models(config) -> (generator, discriminator)` and `sn_predicate`.

Backbones (config.model.backbone): biggan (big_resnet), resnet, deep_conv, dcgan (ACGAN paper),
stylegan2 (its knobs in the config.model.stylegan2 block, models/stylegan2.py).
Heads (config.model.cond_method): none, acgan, pd, reacgan (see heads.py); stylegan2 takes
spd (StyleGAN2-ADA's projection) instead of pd.

    G.apply({'params': p, 'batch_stats': s}, z [B, z_dim], y [B], train=bool,
            mutable=['batch_stats'] if updating) -> images [B, S, S, 3] float32 in [-1, 1]
    D.apply({'params': p[, 'batch_stats': s]}, x [B, S, S, 3], y [B], train=bool,
            rngs={'dropout': key} for dcgan in train mode) -> heads.DOutput

G's BN at sampling (config.model.bn_eval, applied by sampling.py): running = `train=False`;
batch = `train=True` without `mutable` (batch statistics, running averages untouched);
standing = running averages replaced by batch statistics averaged over many batches.
Both modules take `bn_groups` (per-group BN statistics, see layers.BatchNorm).
"""

import dataclasses
from collections.abc import Callable

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import biggan, dcgan, heads, layers, resnet, stylegan2
from reacgan_jax.models.heads import DOutput
from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.ops import spectral_norm

__all__ = ['BACKBONES', 'DOutput', 'build_models', 'sn_predicate']

# config.model keys every backbone reads (the trainer reads the SN / init / dtype ones for all).
COMMON_KEYS = ('backbone', 'cond_method', 'z_dim', 'g_conv_dim', 'd_conv_dim', 'embed_dim',
               'apply_g_sn', 'apply_d_sn', 'sn_eps', 'sn_power_iterations', 'sn_embedding_u',
               'sn_eval', 'g_init', 'd_init',
               'bn_eval', 'standing_batches', 'dtype', 'conv_backend')


@dataclasses.dataclass(frozen=True)
class Backbone:
  """A registered backbone: `build(config, common) -> (G, D)` and the extra model keys it reads.

  `common` holds what every D takes (num_classes, cond_method, conv_dim, embed_dim, use_bn,
  kernel_init, dtype) plus 'g_init'. A backbone with many knobs of its own owns a block,
  `config.model.<name>`, instead of flat keys.
  """
  build: Callable
  keys: tuple[str, ...] = ()
  cond_methods: tuple[str, ...] = ('none', 'acgan', 'pd', 'reacgan')


def _biggan(config, common):
  m, size, classes = config.model, config.data.image_size, config.data.num_classes
  biggan.check_z_dim(m.z_dim, size)
  g = biggan.BigGANGenerator(size, classes, m.cond_method != 'none', m.g_conv_dim, m.z_dim,
                             m.shared_dim, m.g_attn_block, common.pop('g_init'), common['dtype'],
                             conv_backend=common['conv_backend'])
  return g, resnet.ResNetDiscriminator(image_size=size, attn_block=m.d_attn_block, **common)


def _resnet(config, common):
  m, size, classes = config.model, config.data.image_size, config.data.num_classes
  resnet.check_image_size(size)
  g = resnet.ResNetGenerator(size, classes, m.cond_method != 'none', m.g_conv_dim, m.g_attn_block,
                             common.pop('g_init'), common['dtype'],
                             conv_backend=common['conv_backend'])
  return g, resnet.ResNetDiscriminator(image_size=size, attn_block=m.d_attn_block, **common)


def _deep_conv(config, common):
  m, classes = config.model, config.data.num_classes
  dcgan.check_image_size(config.data.image_size, m.backbone)
  g = dcgan.DeepConvGenerator(classes, m.cond_method != 'none', m.g_conv_dim, m.g_attn_block,
                              common.pop('g_init'), common['dtype'],
                              conv_backend=common['conv_backend'])
  return g, dcgan.DeepConvDiscriminator(attn_block=m.d_attn_block, **common)


def _dcgan(config, common):
  m, classes = config.model, config.data.num_classes
  dcgan.check_image_size(config.data.image_size, m.backbone)
  g = dcgan.DCGANGenerator(classes, m.cond_method != 'none', m.g_conv_dim, common.pop('g_init'),
                           common['dtype'], conv_backend=common['conv_backend'])
  return g, dcgan.DCGANDiscriminator(dropout=m.d_dropout, **common)


def _stylegan2(config, common):
  # StyleGAN2 has its own init (equalised lr), no BN, no SN, no attention: only the resolved
  # convolution backend and the compute dtype are taken from `common`.
  m = config.model
  if m.apply_g_sn or m.apply_d_sn:
    raise ConfigError('config.model.backbone=stylegan2 takes no spectral norm (StudioGAN refuses '
                     'it too): set config.model.apply_g_sn=False and config.model.apply_d_sn=False')
  return stylegan2.build(config, common['conv_backend'], common['dtype'])


BACKBONES = {
    'dcgan': Backbone(_dcgan, keys=('d_dropout',)),
    'deep_conv': Backbone(_deep_conv, keys=('g_attn_block', 'd_attn_block')),
    'resnet': Backbone(_resnet, keys=('g_attn_block', 'd_attn_block')),
    'biggan': Backbone(_biggan, keys=('shared_dim', 'g_attn_block', 'd_attn_block')),
    'stylegan2': Backbone(_stylegan2, keys=('stylegan2',),
                          cond_methods=('none', 'acgan', 'spd', 'reacgan')),
}


def unread_keys(config, defaults) -> list[str]:
  """Warnings for the flat model keys set away from `defaults` that the backbone does not read.

  `defaults`: the model section of the default config (main.py reads configs/default.py and
  hands it in through validate.validate_config; the library never imports configs/).
  """
  backbone = config.model.backbone
  read = set(COMMON_KEYS) | set(BACKBONES[backbone].keys) if backbone in BACKBONES else set()
  flat = [k for k, v in config.model.items() if not hasattr(v, 'items') and k in defaults]
  out = []
  for k in flat:
    if k in read or config.model[k] == defaults[k]:
      continue
    users = [n for n, b in BACKBONES.items() if k in b.keys]
    out.append(f'config.model.{k}={config.model[k]!r} is read only by '
               f'{", ".join(users) or "no backbone"}; backbone {backbone} ignores it.')
  return out


def build_models(config):
  """(generator, discriminator) flax modules for config.model / config.data.

  Raises:
    ValueError: an unknown backbone / cond_method / init / dtype, or an image size or z_dim the
      backbone cannot take (the message names the config key).
  """
  m = config.model
  heads.check_cond_method(m.cond_method)
  if m.backbone not in BACKBONES:
    raise ConfigError(f'config.model.backbone={m.backbone!r}: expected one of '
                     f'{", ".join(BACKBONES)}')
  if m.cond_method not in BACKBONES[m.backbone].cond_methods:
    raise ConfigError(f'config.model.cond_method={m.cond_method!r}: backbone {m.backbone} takes '
                     f'{", ".join(BACKBONES[m.backbone].cond_methods)}')
  conv_ops.check_backend(m.conv_backend, dtype=m.dtype)
  backend = conv_ops.resolve(m.conv_backend, dtype=m.dtype)
  common = dict(num_classes=config.data.num_classes, cond_method=m.cond_method,
                conv_dim=m.d_conv_dim, embed_dim=m.embed_dim,
                use_bn=not m.apply_d_sn,  # the reference drops D's BN when D is SN'd
                kernel_init=layers.get_init(m.d_init, 'd'), dtype=layers.get_dtype(m.dtype),
                conv_backend=backend, g_init=layers.get_init(m.g_init, 'g'))
  return BACKBONES[m.backbone].build(config, common)


def sn_predicate(config, which: str):
  """Predicate `(path, leaf) -> bool` for `spectral_norm.init_sn_state` (SPEC 2-3).

  'g' (when config.model.apply_g_sn): every conv / linear kernel of G, including the gain/bias
  linears of the conditional BNs and the attention convs, but not the shared class embedding.
  'd' (when config.model.apply_d_sn): every conv / linear kernel of D and its class embedding
  (pd / reacgan). Biases, BN parameters and attention's sigma never. With SN off for `which`,
  nothing is selected.
  """
  if which not in ('g', 'd'):
    raise ValueError(f"sn_predicate: which={which!r}, expected 'g' or 'd'")
  if not (config.model.apply_g_sn if which == 'g' else config.model.apply_d_sn):
    return lambda path, leaf: False
  exclude = ('shared_embedding',) if which == 'g' else ()
  return spectral_norm.make_predicate(include=('kernel', 'embedding'), exclude=exclude)
