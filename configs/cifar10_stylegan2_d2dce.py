"""CIFAR-10 StyleGAN2 + D2D-CE (ReACGAN's loss on StyleGAN2): StudioGAN
src/configs/CIFAR10/StyleGAN2-D2DCE.yaml.

As configs/cifar10_stylegan2.py (StyleGAN2.yaml) except the D head and its loss: D2DCE head
(normalised 512-d embedding of the epilogue feature, proxies from a one-layer mapping of the
label), cond_lambda 0.25, temperature 0.25, m_p 0.98; 2 D updates per step. Variant ``small``.
"""

from configs import cifar10_stylegan2, variants


def d2dce(d_updates: int = 2):
  config = cifar10_stylegan2.base('reacgan', d_updates=d_updates)
  config.loss.cond_lambda = 0.25
  config.loss.temperature = 0.25
  config.loss.margin_pos = 0.98
  return config


def get_config(variant=''):
  return variants.apply(d2dce(), variant, {'small': cifar10_stylegan2.apply_small},
                        'cifar10_stylegan2_d2dce')
