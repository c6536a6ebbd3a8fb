"""A few-second CPU config for tests: StyleGAN2 + D2D-CE at toy width (configs/tiny.py's data,
batch and schedule), with the StyleGAN2 recipe of configs/cifar10_stylegan2_d2dce.py: logistic
loss, R1 (every 2 D updates here, its own step), G first, EMA by kimg, lazy optimiser scaling."""

from configs import cifar10_stylegan2, tiny


def get_config():
  config = tiny.get_config()
  recipe = cifar10_stylegan2.base('reacgan', d_updates=2)
  config.model, config.loss, config.optim = recipe.model, recipe.loss, recipe.optim
  for key in ('d_first', 'ema_kimg', 'ema_rampup'):
    config.train[key] = recipe.train[key]
  m = config.model
  m.z_dim = m.embed_dim = 8
  m.stylegan2.w_dim = 8
  m.stylegan2.channel_base = 64  # channels 2 / 4 / 8 / 8 at 32 / 16 / 8 / 4 px
  m.stylegan2.channel_max = 8
  m.stylegan2.mbstd_group_size = 4
  config.loss.cond_lambda, config.loss.temperature = 0.25, 0.25
  config.loss.r1_interval = 2
  config.optim.d_lazy_interval = 2
  config.train.ema_kimg = 0.5
  return config
