"""ArtBench-10 (32x32, 10 styles) ReACGAN + DiffAugment.

StudioGAN ships no ArtBench config; this is its 32x32 ReACGAN + DiffAug recipe,
src/configs/CIFAR10/ReACGAN-DiffAug.yaml (copied to tests/fixtures/studiogan_configs/; the test
checks this file against `python -m reacgan_jax.studiogan.yaml_import` of it), on ArtBench-10's
data:
big_resnet 32, attention G@2 D@1, z 80, ch 96, embed 512, lambda 0.5, T 0.5, m_p 0.98, batch 128,
lr 2.8284e-4, 5 D steps, 200k steps, EMA from 1000, DiffAugment color,translation,cutout.

Data: ArtBench-10's CIFAR-binary release (source=cifar_binary; --config.data.root=the folder
holding data_batch_1..5.bin, test_batch.bin): 50,000 train / 10,000 test images, 5,000 / 1,000
per style. The python-pickle release is refused (never unpickled); a folder export
root/<train|test>/<style>/*.png also works with the same source.
FID protocol: as StudioGAN's CIFAR10 protocol at 32x32 that this repo reports (SPEC 5, 10k vs
the 10k test split), 10,000 samples vs all 10,000 ArtBench-10 test images. (StudioGAN's newer
README protocol, train split reference with as many samples as train images, is
--config.eval_split=train --config.eval.num_samples=50000.)
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'cifar_binary'
  config.data.name = 'artbench10'
  config.data.image_size = 32
  config.data.num_classes = 10
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.model.backbone = 'biggan'
  config.model.cond_method = 'reacgan'
  config.model.z_dim = 80
  config.model.shared_dim = 128
  config.model.g_conv_dim = 96
  config.model.d_conv_dim = 96
  config.model.embed_dim = 512
  config.model.g_attn_block = 2
  config.model.d_attn_block = 1
  config.loss.cond_lambda = 0.5
  config.loss.temperature = 0.5
  config.loss.margin_pos = 0.98
  config.optim.g_lr = 0.00028284271
  config.optim.d_lr = 0.00028284271
  config.optim.beta1, config.optim.beta2 = 0.5, 0.999
  config.train.batch_size = 128
  config.train.d_updates_per_step = 5
  config.train.steps = 200_000
  config.train.ema_start = 1000
  config.train.diffaug_policy = 'color,translation,cutout'
  config.eval.num_samples = 10_000
  config.eval.num_ref = -1  # the whole test split
  return config
