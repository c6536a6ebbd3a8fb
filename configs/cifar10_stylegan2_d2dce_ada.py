"""CIFAR-10 StyleGAN2 + D2D-CE + ADA (the seeds' FID 2.33 row): StudioGAN
src/configs/CIFAR10/StyleGAN2-D2DCE-ADA.yaml.

As configs/cifar10_stylegan2_d2dce.py with AugmentPipe 'bgc' on reals and fakes at an adaptive
p (initial 0, target r_t 0.8, 500 kimg to move p by 1, adjusted every 4 steps) and 1M steps.
Variant ``small``; ``small_limited``: the same on the first 500 training images per class.
"""

from configs import cifar10_reacgan_ada, cifar10_stylegan2, cifar10_stylegan2_d2dce, variants


def _limited(config):
  cifar10_stylegan2.apply_small(config)
  config.data.train_per_class = 500


def get_config(variant=''):
  config = cifar10_stylegan2_d2dce.d2dce()
  config.train.steps = 1_000_000
  cifar10_reacgan_ada.apply_ada(config, target=0.8)
  return variants.apply(config, variant, {'small': cifar10_stylegan2.apply_small,
                                          'small_limited': _limited},
                        'cifar10_stylegan2_d2dce_ada')
