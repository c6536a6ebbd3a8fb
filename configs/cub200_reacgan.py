"""CUB200 (Caltech-UCSD Birds-200-2011, 128x128, 200 classes) ReACGAN, StudioGAN's config.

Numbers: StudioGAN src/configs/CUB200/ReACGAN.yaml (copied as
tests/fixtures/studiogan_configs/CUB200_ReACGAN.yaml; tests/data/test_datasets.py checks this file
against `python -m reacgan_jax.studiogan.yaml_import` of it): big_resnet 128, attention G@4 D@1,
z 120,
shared 128, ch 80, embed 1024, lambda 0.25, T 0.25, m_p 0.95, batch 256, lr G 5e-5 / D 2e-4,
betas (0.0, 0.999), 2 D steps, 40k steps, EMA 0.9999 from step 4000.

Data: TFDS `caltech_birds2011` (train 5,994 / test 5,794 images of varied size). Preprocessing
as StudioGAN's for datasets outside MISC.no_proc_data (src/loader.py, src/data_util.py
Dataset_): CenterCropLongEdge (the centred min(H, W) square), then a resize to 128 (LANCZOS:
StudioGAN's README commands pass --pre_resizer lanczos), random horizontal flip.
FID protocol (StudioGAN README "Evaluation": reference = the training set, as many generated
images as it holds; src/loader.py num_eval = len(ref dataset)): 5,994 samples vs all 5,994
train images.
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'tfds'
  config.data.name = 'caltech_birds2011'
  config.data.image_size = 128
  config.data.num_classes = 200
  config.data.crop = 'center'
  config.data.eval_split = 'train'
  config.model.backbone = 'biggan'
  config.model.cond_method = 'reacgan'
  config.model.z_dim = 120
  config.model.shared_dim = 128
  config.model.g_conv_dim = 80
  config.model.d_conv_dim = 80
  config.model.embed_dim = 1024
  config.model.g_attn_block = 4
  config.model.d_attn_block = 1
  config.loss.cond_lambda = 0.25
  config.loss.temperature = 0.25
  config.loss.margin_pos = 0.95
  config.optim.g_lr = 5e-5
  config.optim.d_lr = 2e-4
  config.optim.beta1, config.optim.beta2 = 0.0, 0.999
  config.train.batch_size = 256
  config.train.d_updates_per_step = 2
  config.train.steps = 40_000
  config.train.ema_start = 4000
  config.eval.num_samples = 5994  # = len(train split), StudioGAN's protocol
  config.eval.num_ref = -1  # the whole train split
  # StudioGAN's evaluation protocol (worker.evaluate): labels i.i.d. uniform, IS over 1 split,
  # as many samples as the reference split holds; the result's protocol line names it.
  config.eval.protocol = 'studiogan'
  return config
