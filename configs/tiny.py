"""A few-second CPU config for tests: BigGAN-family ReACGAN at toy width.

Use the `cond_method` / `backbone` overrides to get a tiny model of any family,
e.g. ``--config.model.cond_method=acgan --config.model.backbone=resnet``.
Data: the npz source (tests write a small synthetic npz or use shared/data).
"""

from configs import default


def get_config():
  config = default.get_config()
  config.data.source = 'npz'
  config.data.npz_layout = 'cifar_rows'
  config.data.npz_path = '../shared/data/cifar10.npz'
  config.model.backbone = 'biggan'
  config.model.cond_method = 'reacgan'
  config.model.z_dim = 16
  config.model.shared_dim = 8
  config.model.g_conv_dim = 4
  config.model.d_conv_dim = 4
  config.model.embed_dim = 8
  config.model.g_attn_block = 2
  config.model.d_attn_block = 1
  config.train.batch_size = 8
  config.train.d_updates_per_step = 2
  config.train.steps = 4
  config.train.ema_start = 2
  config.train.log_every = 2
  config.train.sample_every = 2
  config.train.checkpoint_every = 2
  config.train.grid_classes = 4
  config.train.grid_per_class = 4
  config.eval.num_samples = 64
  config.eval.batch_size = 32
  config.eval.is_splits = 1
  # 256 reference images (class-balanced, in file order), not the whole 10k test split: the
  # end-of-run FID of a few-second config must not embed 10k images at 299x299 on a CPU.
  config.eval.num_ref = 256
  return config
