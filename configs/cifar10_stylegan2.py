"""CIFAR-10 StyleGAN2 with StyleGAN2-ADA's conditional projection D (SPD): StudioGAN
src/configs/CIFAR10/StyleGAN2.yaml, with the defaults src/config.py and src/models/model.py
fill in (batch 64, Adam eps 1e-8, channel_base 32768 / channel_max 512 at 32 px, G 'skip').

  cAdaIN G, SPD D ('orig', minibatch std group 32), z = w = 512, 2 mapping layers, no style
  mixing; logistic loss; R1 on reals, r1_lambda 0.01 every 16 D updates in its own step
  (r1_place outside_loop); Adam lr 0.0025, betas (0, 0.99), both optimisers scaled for lazy
  regularisation (G by g_reg_interval 4 with path length off, D by 16): lr * c, betas ** c,
  c = k / (k + 1); 1 D update per step, G first (d_first False); G EMA by 500 kimg with
  rampup 0.05; 200k steps.

Variant ``small``: the same recipe at CPU size (32 channels, z = w = 64, batch 32, 200 steps,
smoke-test FID of 500 vs 500 images).
"""

from configs import cifar10_reacgan, default, variants


def base(cond_method: str, d_updates: int):
  """The StyleGAN2 CIFAR-10 recipe shared by the StyleGAN2*.yaml configs."""
  config = default.get_config()
  m = config.model
  m.backbone = 'stylegan2'
  m.cond_method = cond_method
  m.z_dim = 512  # MODEL.z_dim (w_dim 512 in the stylegan2 block's default)
  m.embed_dim = 512  # MODEL.d_embed_dim
  m.apply_g_sn = m.apply_d_sn = False
  config.loss.adv = 'logistic'
  config.loss.d_terms = 'r1'
  config.loss.r1_lambda = 0.01
  config.loss.r1_interval = 16  # STYLEGAN.d_reg_interval
  config.loss.r1_place = 'separate'  # outside_loop
  o = config.optim
  o.g_lr = o.d_lr = 0.0025
  o.beta1, o.beta2 = 0.0, 0.99
  o.eps = 1e-8
  o.g_lazy_interval = 4  # STYLEGAN.g_reg_interval (path length off, scaling still applied)
  o.d_lazy_interval = 16
  t = config.train
  t.batch_size = 64
  t.d_updates_per_step = d_updates
  t.d_first = False
  t.steps = 200_000
  t.ema = True
  t.ema_kimg = 500.0
  t.ema_rampup = 0.05
  return config


def apply_small(config):
  """CPU size: 32 channels at every resolution, z = w = embed = 64, batch 32, 200 steps."""
  cifar10_reacgan.apply_small(config)  # batch 32, logging, smoke-FID sizes, offline npz
  m, defaults = config.model, default.get_config().model
  for key in ('g_conv_dim', 'd_conv_dim', 'shared_dim'):  # BigGAN's widths, unread here
    m[key] = defaults[key]
  m.z_dim = m.embed_dim = 64
  m.stylegan2.w_dim = 64
  m.stylegan2.channel_max = 32
  config.train.d_updates_per_step = min(config.train.d_updates_per_step, 2)
  config.train.steps = 200
  config.optim.g_lr = config.optim.d_lr = 0.0025  # apply_small's BigGAN lr undone
  return config


def get_config(variant=''):
  config = base('spd', d_updates=1)
  return variants.apply(config, variant, {'small': apply_small}, 'cifar10_stylegan2')
