"""The model zoo: `build_models(config) -> (generator, discriminator)` and `sn_predicate`.

Backbones (config.model.backbone): biggan (big_resnet), resnet, deep_conv, dcgan (ACGAN paper).
Heads (config.model.cond_method): none, acgan, pd, reacgan (see heads.py).

    G.apply({'params': p, 'batch_stats': s}, z [B, z_dim], y [B], train=bool,
            mutable=['batch_stats'] if updating) -> images [B, S, S, 3] float32 in [-1, 1]
    D.apply({'params': p[, 'batch_stats': s]}, x [B, S, S, 3], y [B], train=bool,
            rngs={'dropout': key} for dcgan in train mode) -> heads.DOutput

G's BN at sampling (config.model.bn_eval, applied by sampling.py): running = `train=False`;
batch = `train=True` without `mutable` (batch statistics, running averages untouched);
standing = running averages replaced by batch statistics averaged over many batches.
Both modules take `bn_groups` (per-group BN statistics, see layers.BatchNorm).
"""

from reacgan_jax import spectral_norm
from reacgan_jax.models import biggan, dcgan, heads, layers, resnet
from reacgan_jax.models.heads import COND_METHODS, DOutput

BACKBONES = ('dcgan', 'deep_conv', 'resnet', 'biggan')

__all__ = ['BACKBONES', 'COND_METHODS', 'DOutput', 'build_models', 'sn_predicate']


def build_models(config):
  """(generator, discriminator) flax modules for config.model / config.data.

  Raises:
    ValueError: an unknown backbone / cond_method / init / dtype, or an image size or z_dim the
      backbone cannot take (the message names the config key).
  """
  m = config.model
  size, classes = config.data.image_size, config.data.num_classes
  heads.check_cond_method(m.cond_method)
  conditional = m.cond_method != 'none'
  dtype = layers.get_dtype(m.dtype)
  g_init, d_init = layers.get_init(m.g_init, 'g'), layers.get_init(m.d_init, 'd')
  use_bn = not m.apply_d_sn  # the reference drops D's BN when D is spectral-normalised
  d_common = dict(num_classes=classes, cond_method=m.cond_method, conv_dim=m.d_conv_dim,
                  embed_dim=m.embed_dim, use_bn=use_bn, kernel_init=d_init, dtype=dtype)
  if m.backbone == 'biggan':
    biggan.check_z_dim(m.z_dim, size)
    g = biggan.BigGANGenerator(size, classes, conditional, m.g_conv_dim, m.z_dim, m.shared_dim,
                               m.g_attn_block, g_init, dtype)
    d = resnet.ResNetDiscriminator(image_size=size, attn_block=m.d_attn_block, **d_common)
  elif m.backbone == 'resnet':
    resnet.check_image_size(size)
    g = resnet.ResNetGenerator(size, classes, conditional, m.g_conv_dim, m.g_attn_block, g_init,
                               dtype)
    d = resnet.ResNetDiscriminator(image_size=size, attn_block=m.d_attn_block, **d_common)
  elif m.backbone == 'deep_conv':
    dcgan.check_image_size(size, m.backbone)
    g = dcgan.DeepConvGenerator(classes, conditional, m.g_conv_dim, m.g_attn_block, g_init, dtype)
    d = dcgan.DeepConvDiscriminator(attn_block=m.d_attn_block, **d_common)
  elif m.backbone == 'dcgan':
    dcgan.check_image_size(size, m.backbone)
    g = dcgan.DCGANGenerator(classes, conditional, m.g_conv_dim, g_init, dtype)
    d = dcgan.DCGANDiscriminator(dropout=m.d_dropout, **d_common)
  else:
    raise ValueError(f'config.model.backbone={m.backbone!r}: expected one of '
                     f'{", ".join(BACKBONES)}')
  return g, d


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
