"""CIFAR-10 SNGAN: ResNet-32 backbone, projection discriminator.

Numbers: shared/SPEC.md section 4, row "CIFAR10 SNGAN / ProjGAN" (StudioGAN
src/configs/CIFAR10/SNGAN.yaml): batch 64, lr 2e-4, betas (0.5, 0.999), 5 D steps,
100k steps, z 128, G/D conv dim 64, SN on D only, no EMA, no attention.
Reported IS 8.68 / FID 13.25 (10k test).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.model.backbone = 'resnet'
  config.model.cond_method = 'pd'
  config.model.z_dim = 128
  config.model.g_conv_dim = 64
  config.model.d_conv_dim = 64
  config.model.g_attn_block = 0
  config.model.d_attn_block = 0
  config.model.apply_g_sn = False
  config.model.apply_d_sn = True
  # StudioGAN's SNGAN.yaml sets no init, so its default applies: 'ortho' for G and D
  # (src/config.py MODEL.g_init / d_init), not Miyato's glorot.
  config.model.g_init = 'ortho'
  config.model.d_init = 'ortho'
  config.loss.cond_lambda = 0.0
  config.optim.g_lr = 2e-4
  config.optim.d_lr = 2e-4
  config.train.batch_size = 64
  config.train.d_updates_per_step = 5
  config.train.ema = False
  # StudioGAN's evaluation protocol (worker.evaluate): labels i.i.d. uniform, IS over 1 split,
  # as many samples as the reference split holds; the result's protocol line names it.
  config.eval.protocol = 'studiogan'
  return config
