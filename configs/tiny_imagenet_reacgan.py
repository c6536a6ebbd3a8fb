"""Tiny-ImageNet (64x64, 200 classes) ReACGAN, StudioGAN's published config.

Numbers: shared/SPEC.md section 4, row "Tiny-ImageNet ReACGAN" (StudioGAN
src/configs/Tiny_ImageNet/ReACGAN.yaml): big_resnet 64, attention G@3 D@1,
batch 1024, lr G 1e-4 / D 4e-4, betas (0.0, 0.999), 1 D step, 100k steps, z 100,
ch 80, embed 768, lambda 0.75, T 0.75, m_p 1.0, EMA from step 20000.
Reported IS 14.16 / FID 26.59 (ReACGAN paper protocol: 10,000 samples vs the 10,000
validation images).

Data (source=tiny_imagenet, reacgan_jax/data/datasets.py): --config.data.root= the official
tiny-imagenet-200.zip itself, its unpacked folder (train/<wnid>/images/*.JPEG, val/images/ +
val/val_annotations.txt), or StudioGAN's class-folder layout (train/<wnid>/*.JPEG,
valid/<wnid>/*.JPEG). Labels are the sorted wnids' indices (ImageFolder's order). 64x64 already:
no crop, no resize.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'tiny_imagenet'
  config.data.name = 'tiny_imagenet'
  config.data.image_size = 64
  config.data.num_classes = 200
  config.data.eval_split = 'valid'  # FID reference: all 10,000 validation images
  config.model.backbone = 'biggan'
  config.model.cond_method = 'reacgan'
  config.model.z_dim = 100
  config.model.g_conv_dim = 80
  config.model.d_conv_dim = 80
  config.model.embed_dim = 768
  config.model.g_attn_block = 3
  config.model.d_attn_block = 1
  config.loss.cond_lambda = 0.75
  config.loss.temperature = 0.75
  config.loss.margin_pos = 1.0
  config.optim.g_lr = 1e-4
  config.optim.d_lr = 4e-4
  config.optim.beta1, config.optim.beta2 = 0.0, 0.999
  config.train.batch_size = 1024
  config.train.d_updates_per_step = 1
  config.train.steps = 100_000
  config.train.ema_start = 20_000
  config.eval.num_samples = 10_000
  config.eval.num_ref = -1
  # StudioGAN's evaluation protocol (worker.evaluate): labels i.i.d. uniform, IS over 1 split,
  # as many samples as the reference split holds; the result's protocol line names it.
  config.eval.protocol = 'studiogan'
  return config
