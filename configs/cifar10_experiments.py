"""CIFAR-10 same-budget comparison (RESULTS.md): one backbone, one budget, the head varies.

``--config=configs/cifar10_experiments.py:<variant>``, variants:
  reacgan            D2D-CE (T 0.5, m_p 0.98, lambda 0.5; SPEC 4's CIFAR-10 ReACGAN loss settings)
  acgan              ACGAN cross-entropy head (lambda 1.0, SPEC 4's ACGAN-Mod-Big)
  pd                 projection discriminator
  none               unconditional baseline (no class information in D; G still gets labels)
  reacgan_no_fnr     D2D-CE without false-negative removal (same-class pairs stay negatives)
  reacgan_no_margin  D2D-CE without margins (m_p = 1, m_n = -1)
  reacgan_t0.25, reacgan_t1.0   temperature sweep around the default 0.5

Everything else is shared: the BigGAN 32x32 backbone at the README main job's CPU size
(configs/cifar10_reacgan.py variant small: channels 16, z 64, embedding 64, batch 32, 2 D
updates per G update), Adam 2e-4 with betas (0.5, 0.999), hinge loss, EMA G, 6,000 G steps,
evaluation every 1,500 steps on 10k class-balanced samples against the 10k test split (FID,
precision/recall/density/coverage), with classifier accuracy and intra-class MS-SSIM too.
experiments/cifar10_compare.py runs the variants and writes the summaries RESULTS.md reads.
"""

from configs import cifar10_reacgan, variants

VARIANTS = ('reacgan', 'acgan', 'pd', 'none', 'reacgan_no_fnr', 'reacgan_no_margin',
            'reacgan_t0.25', 'reacgan_t1.0')


def get_config(variant='reacgan'):
  variants.check(variant, VARIANTS, 'cifar10_experiments')
  config = cifar10_reacgan.get_config('small')
  config.train.steps = 6000
  config.train.ema_start = 1000
  config.train.log_every = 50
  config.train.sample_every = 1500
  config.train.checkpoint_every = 500
  config.train.eval_every = 1500
  config.eval.num_samples = 10_000
  config.eval.num_ref = -1  # the whole 10k test split
  config.eval.batch_size = 200
  config.eval.metrics = 'fid,prdc,accuracy,msssim'
  method, _, ablation = variant.partition('_')
  config.model.cond_method = method
  if method == 'acgan':
    config.loss.cond_lambda = 1.0
  if ablation == 'no_fnr':
    config.loss.false_negative_removal = False
  elif ablation == 'no_margin':
    config.loss.margins = False
  elif ablation.startswith('t'):
    config.loss.temperature = float(ablation[1:])
  return config
