"""CIFAR-10 ReACGAN (big_resnet 32, D2D-CE), StudioGAN's published config.

Numbers: shared/SPEC.md section 4, row "CIFAR10 ReACGAN" (StudioGAN
src/configs/CIFAR10/ReACGAN.yaml): batch 128, lr 2.8284e-4 for G and D, Adam
betas (0.5, 0.999), 5 D steps, 100k steps, z 80, ch 96, embed 512, lambda 0.5,
T 0.5, m_p 0.98, EMA 0.9999 from step 1000. Reported: IS 9.97 / FID 7.79 (10k test).
Evaluated under StudioGAN's protocol (eval.protocol='studiogan': 10k samples, labels i.i.d.
uniform, IS over 1 split, vs the 10k test split).

Data as StudioGAN's src/data_util.py presents CIFAR-10 (tests/parity/test_data_reference.py runs
its Dataset_ beside ours): no crop or resize, random horizontal flip, [-1, 1] by
Normalize(0.5, 0.5), pixel-exact. What differs: the order and the flip draws. StudioGAN's
DataLoader(shuffle=True, drop_last=True) permutes each epoch and skips the last
len % basket_size images of it; ours is the stream of per-epoch permutations without a drop
(every image once per epoch in both); flips come from (seed, step) here, from torch's RNG there.

Variant ``small`` (``--config=configs/cifar10_reacgan.py:small``): the same code
and architecture family at CPU size (narrow channels, batch 32, no D repeats
beyond 2) for the README's main job; it trains in minutes on a 2-core CPU.
"""

from configs import default, variants


def get_config(variant=''):
  config = default.get_config()
  config.model.backbone = 'biggan'
  config.model.cond_method = 'reacgan'
  config.model.z_dim = 80
  config.model.g_conv_dim = 96
  config.model.d_conv_dim = 96
  config.model.embed_dim = 512
  config.model.g_attn_block = 2
  config.model.d_attn_block = 1
  config.loss.cond_lambda = 0.5
  config.loss.temperature = 0.5
  config.loss.margin_pos = 0.98
  config.optim.g_lr = 2.8284e-4
  config.optim.d_lr = 2.8284e-4
  config.optim.beta1, config.optim.beta2 = 0.5, 0.999
  config.train.batch_size = 128
  config.train.d_updates_per_step = 5
  config.train.steps = 100_000
  config.train.ema_start = 1000
  # StudioGAN's evaluation protocol (worker.evaluate): labels i.i.d. uniform, IS over 1 split,
  # as many samples as the reference split holds; the result's protocol line names it.
  config.eval.protocol = 'studiogan'
  return variants.apply(config, variant, {'small': apply_small, 'quickstart': apply_quickstart},
                        'cifar10_reacgan')


def apply_small(config):
  """Shrinks a CIFAR-10 config to CPU size (minutes on 2 cores)."""
  config.model.g_conv_dim = 16
  config.model.d_conv_dim = 16
  config.model.shared_dim = 32
  config.model.embed_dim = 64
  config.model.z_dim = 64
  config.train.batch_size = 32
  config.train.d_updates_per_step = 2
  # 500 steps: the main job's minutes with oneDNN convolutions (conv_backend 'auto', issue 28);
  # 300 before, on XLA's, in about the same time.
  config.train.steps = 500
  config.train.ema_start = 100
  config.train.ema_decay = 0.999
  config.train.log_every = 25
  config.train.sample_every = 100
  config.train.checkpoint_every = 100
  config.optim.g_lr = 2e-4
  config.optim.d_lr = 2e-4
  # A smoke-test FID: 500 samples against 500 class-balanced test images (Inception runs at a few
  # img/s on a 2-core CPU). Small-sample FID is biased upwards by tens of points: compare it only
  # with runs of the same sizes; the published protocol is 10k vs the 10k test split.
  config.eval.num_samples = 500
  config.eval.num_ref = 500
  config.eval.batch_size = 50
  config.eval.is_splits = 1
  # Class-balanced labels: at 500 samples an i.i.d. draw (protocol 'studiogan') adds the noise
  # of its class counts to a smoke test.
  config.eval.protocol = 'ours'
  config.eval.metrics = 'fid,prdc'
  config.data.offline_npz = '../shared/data/cifar10.npz'
  return config


def apply_quickstart(config):
  """The README's main job: the small config with an EMA horizon inside its 500 steps.

  The small config's EMA (decay 0.999 from step 100, kept for the experiments recorded with it)
  averages 400 steps here, leaving 0.999**400 = 0.67 of the step-100 G in the final EMA G, which
  draws the sample grid and the evaluation: a grid of colour blobs. At 0.99 that share is
  0.99**400 = 0.018 (smoke FID 251 -> 197, same seed, on the Intel AMX CPU; benchmarks/README.md,
  "The README's main job, session 18").
  """
  apply_small(config)
  config.train.ema_decay = 0.99
  return config
