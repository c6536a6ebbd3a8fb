"""CIFAR-10 ReACGAN + ADA: StudioGAN src/configs/CIFAR10/ReACGAN-ADA.yaml.

The same model and optimiser as configs/cifar10_reacgan.py (ReACGAN.yaml) with the differences
the ADA file makes: the logistic adversarial loss, 400k steps, no random flip of the reals
(`PRE.apply_rflip: False`: ADA's x-flip replaces it), and AugmentPipe 'bgc' on reals and fakes
at an adaptive p (initial 0, target r_t 0.7, 500 kimg to move p by 1, adjusted every 4 steps).

Variant ``small``: CPU size, as in cifar10_reacgan.py; ``small_limited``: the same on the first
500 training images of each class (`data.train_per_class`), where ADA's benefit shows at CPU scale.
"""

from configs import cifar10_reacgan, variants


def _limited(config):
  cifar10_reacgan.apply_small(config)
  config.data.train_per_class = 500


def apply_ada(config, target):
  """StudioGAN's CIFAR-10 ADA block: AugmentPipe 'bgc' from p = 0 towards r_t = `target`, 500
  kimg to move p by 1, adjusted every 4 steps (AUG.ada_* of the *-ADA.yaml files)."""
  config.train.augment = 'ada'
  config.ada.apply_ada = True
  config.ada.preset = 'bgc'
  config.ada.initial_p = 0.0
  config.ada.target = target
  config.ada.kimg = 500
  config.ada.interval = 4


def get_config(variant=''):
  config = cifar10_reacgan.get_config()
  config.loss.adv = 'logistic'
  config.train.steps = 400_000
  config.data.random_flip = False
  apply_ada(config, target=0.7)
  return variants.apply(config, variant, {'small': cifar10_reacgan.apply_small,
                                          'small_limited': _limited}, 'cifar10_reacgan_ada')
