"""CIFAR-10 StyleGAN2 + D2D-CE + DiffAugment, the seeds' best CIFAR-10 row (FID 2.24, IS 10.51):
StudioGAN src/configs/CIFAR10/StyleGAN2-D2DCE-DiffAug-Rev.yaml.

As configs/cifar10_stylegan2_d2dce.py with what the "-Rev" file changes: DiffAugment
(color, translation, cutout) on reals and fakes; R1 stronger and more often, r1_lambda 0.08
every 2 D updates, added inside the D update (r1_place inside_loop), so D's optimiser is
scaled by c = 2/3; D first (d_first True); 1M steps. Variant ``small``.
"""

from configs import cifar10_stylegan2, cifar10_stylegan2_d2dce, variants


def get_config(variant=''):
  config = cifar10_stylegan2_d2dce.d2dce()
  config.train.diffaug_policy = 'color,translation,cutout'
  config.loss.r1_lambda = 0.08
  config.loss.r1_interval = 2  # STYLEGAN.d_reg_interval
  config.loss.r1_place = 'inside'  # inside_loop
  config.optim.d_lazy_interval = 2
  config.train.d_first = True
  config.train.steps = 1_000_000
  return variants.apply(config, variant, {'small': cifar10_stylegan2.apply_small},
                        'cifar10_stylegan2_d2dce_diffaug')
