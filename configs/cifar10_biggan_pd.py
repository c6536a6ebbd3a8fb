"""CIFAR-10 BigGAN with the projection discriminator (PD).

Numbers: shared/SPEC.md section 4, row "CIFAR10 BigGAN (PD)" (StudioGAN
src/configs/CIFAR10/BigGAN.yaml): batch 64, lr 2e-4, betas (0.5, 0.999), 5 D steps,
100k steps, z 80, ch 96, EMA from step 1000. Reported IS 9.75 / FID 8.03.
The projection term has no separate loss weight (SPEC 1).
Variant ``small``: CPU size, as in cifar10_reacgan.py.
"""

from configs import cifar10_reacgan, variants


def get_config(variant=''):
  config = cifar10_reacgan.get_config()
  config.model.cond_method = 'pd'
  config.loss.cond_lambda = 0.0
  config.optim.g_lr = 2e-4
  config.optim.d_lr = 2e-4
  config.train.batch_size = 64
  # StudioGAN's evaluation protocol (worker.evaluate): labels i.i.d. uniform, IS over 1 split,
  # as many samples as the reference split holds; the result's protocol line names it.
  config.eval.protocol = 'studiogan'
  return variants.apply(config, variant, {'small': cifar10_reacgan.apply_small},
                        'cifar10_biggan_pd')
