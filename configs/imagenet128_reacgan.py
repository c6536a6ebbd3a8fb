"""ImageNet 128x128 ReACGAN (batch 256), StudioGAN's published config.

Numbers: shared/SPEC.md section 4, row "ImageNet128 ReACGAN-256" (StudioGAN
src/configs/ImageNet/ReACGAN-256.yaml): big_resnet 128, attention G@4 D@1,
batch 256, lr G 5e-5 / D 2e-4, betas (0.0, 0.999), 2 D steps, 500k steps, z 120,
ch 96, embed 2048, lambda 1.0, T 0.5, m_p 0.98, EMA from step 20000.
Reported IS 67.42 / FID 13.91 (bs 256). Data: TFDS imagenet2012 (manual
download), center crop + resize to 128.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.image_size = 128
  config.data.num_classes = 1000
  config.data.eval_split = 'validation'
  config.data.crop = 'center'
  config.model.backbone = 'biggan'
  config.model.cond_method = 'reacgan'
  config.model.z_dim = 120
  config.model.g_conv_dim = 96
  config.model.d_conv_dim = 96
  config.model.embed_dim = 2048
  config.model.g_attn_block = 4
  config.model.d_attn_block = 1
  config.loss.cond_lambda = 1.0
  config.loss.temperature = 0.5
  config.loss.margin_pos = 0.98
  config.optim.g_lr = 5e-5
  config.optim.d_lr = 2e-4
  config.optim.beta1, config.optim.beta2 = 0.0, 0.999
  config.train.batch_size = 256
  config.train.d_updates_per_step = 2
  config.train.steps = 500_000
  config.train.ema_start = 20_000
  config.eval.num_samples = 50_000
  # StudioGAN's evaluation protocol (worker.evaluate): labels i.i.d. uniform, IS over 1 split,
  # as many samples as the reference split holds; the result's protocol line names it.
  config.eval.protocol = 'studiogan'
  return config
