"""CIFAR-10 ACGAN-Mod-Big: the BigGAN (big_resnet 32) backbone with an ACGAN head.

Numbers: shared/SPEC.md section 4, row "CIFAR10 ACGAN-Mod-Big" (StudioGAN
src/configs/CIFAR10/ACGAN-Mod-Big.yaml): batch 64, lr 2e-4, betas (0.5, 0.999),
5 D steps, 100k steps, z 80, ch 96, cond_lambda 1.0, EMA from step 1000.
Variant ``small``: CPU size, as in cifar10_reacgan.py.
"""

from configs import cifar10_reacgan, variants


def get_config(variant=''):
  config = cifar10_reacgan.get_config()
  config.model.cond_method = 'acgan'
  config.loss.cond_lambda = 1.0
  config.optim.g_lr = 2e-4
  config.optim.d_lr = 2e-4
  config.train.batch_size = 64
  return variants.apply(config, variant, {'small': cifar10_reacgan.apply_small}, 'cifar10_acgan')
