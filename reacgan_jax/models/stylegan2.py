"""StyleGAN2 backbone: `default_config()` (the config.model.stylegan2 block) and `build(config)`.

Reference: StudioGAN src/models/model.py (how Generator / Discriminator are built), its CIFAR10
configs src/configs/CIFAR10/StyleGAN2*.yaml and src/config.py. Modules: stylegan2_g.py (G),
stylegan2_d.py (D + heads), stylegan2_layers.py (blocks), stylegan2_convert.py (torch weights).

  G.apply({'params': p, 'stylegan2_state': s}, z [N, z_dim], y [N] int, train=bool,
          rngs={'noise': k1[, 'mixing': k2]}, [noise_mode=None (config) |'random'|'const'|'none',
          truncation_psi=1.0, truncation_cutoff=None, update_w_avg=False,
          style_mixing_prob=None (config value), return_ws=False],
          mutable=['stylegan2_state'] when update_w_avg) -> images [N, S, S, 3] float32
  G.init(rngs={'params': k}, z, y)  (noise_mode='random' also needs 'noise' at init)
  D.apply({'params': p}, x [N, S, S, 3], y [N] int, train=bool) -> heads.DOutput
"""

import jax.numpy as jnp
import ml_collections

from reacgan_jax.errors import ConfigError
from reacgan_jax.models import stylegan2_d, stylegan2_g, stylegan2_layers


def default_config() -> ml_collections.ConfigDict:
  """config.model.stylegan2 with StudioGAN's CIFAR10 values (StyleGAN2.yaml + model.py)."""
  c = ml_collections.ConfigDict()
  c.w_dim = 512  # MODEL.w_dim, intermediate latent W
  c.mapping_layers = 2  # STYLEGAN.mapping_network (8 in StyleGAN2, 2 for CIFAR)
  c.mapping_lr_multiplier = 0.01  # MappingNetwork lr_multiplier (equalised-lr gain)
  c.w_avg_beta = 0.998  # decay of the tracked w_avg (None = not tracked, no truncation)
  c.channel_base = 32768  # model.py: 32768 for CIFAR10/100 and >= 512 px, else 16384
  c.channel_max = 512  # channels at resolution r = min(channel_base // r, channel_max)
  c.g_architecture = 'skip'  # SynthesisBlock default (model.py does not override): orig/skip/resnet
  c.d_architecture = 'orig'  # STYLEGAN.d_architecture ('resnet' except CIFAR10)
  c.mbstd_group_size = 32  # STYLEGAN.d_epilogue_mbstd_group_size (None = whole batch)
  c.mbstd_num_channels = 1  # DiscriminatorEpilogue default, 0 = no minibatch-std layer
  c.conv_clamp = None  # None in fp32 runs (model.py sets 256 only with mixed precision)
  c.style_mixing_prob = 0.0  # STYLEGAN.style_mixing_p (0.9 in StyleGAN2, 0 for CIFAR)
  c.truncation_psi = 1.0  # sampling-time psi (RUN.truncation_factor; 1 = off)
  c.truncation_cutoff = None  # RUN.truncation_cutoff: truncate only the first N ws (None = all)
  c.noise_mode = 'random'  # synthesis noise: 'random' | 'const' | 'none' (reference: random)
  c.spd_mapping_layers = 8  # SPD label mapping depth (mapping_kwargs={} -> 8 in StudioGAN)
  c.embed_mapping_layers = 1  # D2DCE proxy mapping depth (num_layers=1 in StudioGAN)
  # On the oneDNN path (model.conv_backend resolved to 'onednn'): float32 3x3 stride-1 convs
  # with enough channels and pixels (ops/winograd.pays) by Winograd F(m x m, 3 x 3), m = 4
  # (4x fewer multiplies; rounding up to ~2e-5 of the output's scale) or 2 (2.25x; closer than
  # oneDNN's direct conv); 0 = off. bf16 convs and other platforms are untouched.
  c.winograd = 4
  return c


def build(config, conv_backend: str = 'xla', dtype=jnp.float32):
  """(Generator, Discriminator) from config.model.stylegan2, config.data and config.model's
  cond_method, z_dim (MODEL.z_dim) and embed_dim (MODEL.d_embed_dim, the D2DCE head's width).
  dtype: the compute dtype of the synthesis and D blocks (config.model.dtype resolved:
  stylegan2_g / stylegan2_d docstrings).

  The generator is conditional (StudioGAN cAdaIN) iff cond_method != 'none'. conv_backend: the
  resolved config.model.conv_backend ('xla' | 'onednn'; with model.stylegan2.winograd, the
  layers' backend: stylegan2_layers.layer_backend).
  """
  s, z_dim, embed_dim = config.model.stylegan2, config.model.z_dim, config.model.embed_dim
  conv_backend = stylegan2_layers.layer_backend(conv_backend, s.winograd)
  size, classes = config.data.image_size, config.data.num_classes
  cond = config.model.cond_method
  if s.g_architecture not in stylegan2_d.ARCHITECTURES:
    raise ConfigError(f'model.stylegan2.g_architecture={s.g_architecture!r}: expected one of '
                     f'{stylegan2_d.ARCHITECTURES}')
  g = stylegan2_g.Generator(
      z_dim=z_dim, w_dim=s.w_dim, num_classes=classes if cond != 'none' else 0,
      img_resolution=size, mapping_layers=s.mapping_layers,
      mapping_lr_multiplier=s.mapping_lr_multiplier, w_avg_beta=s.w_avg_beta,
      channel_base=s.channel_base, channel_max=s.channel_max, architecture=s.g_architecture,
      conv_clamp=s.conv_clamp, style_mixing_prob=s.style_mixing_prob, noise_mode=s.noise_mode,
      eval_truncation_psi=s.truncation_psi, eval_truncation_cutoff=s.truncation_cutoff,
      conv_backend=conv_backend, dtype=dtype)
  d = stylegan2_d.Discriminator(
      img_resolution=size, num_classes=classes, cond_method=cond,
      architecture=s.d_architecture, channel_base=s.channel_base, channel_max=s.channel_max,
      conv_clamp=s.conv_clamp, mbstd_group_size=s.mbstd_group_size,
      mbstd_num_channels=s.mbstd_num_channels, embed_dim=embed_dim,
      spd_mapping_layers=s.spd_mapping_layers, embed_mapping_layers=s.embed_mapping_layers,
      conv_backend=conv_backend, dtype=dtype)
  d.check()
  if s.noise_mode not in stylegan2_g.NOISE_MODES:
    raise ConfigError(f'model.stylegan2.noise_mode={s.noise_mode!r}: expected one of '
                     f'{stylegan2_g.NOISE_MODES}')
  stylegan2_g.SynthesisNetwork(s.w_dim, size).block_args()  # raises on a bad image size
  return g, d
