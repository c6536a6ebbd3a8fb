"""Config checks before anything runs: one ConfigError naming key, value and what is
allowed (issue 14, class 6).

`validate_config(config, mode=..., defaults=...)` is called once by main.py after flag parsing
(the checks of loaded arrays live with the data: data/checks.py). Every list of allowed values is
read from the module that implements the choice (registries and their tuples), so a new
backbone, loss, metric or data option needs no edit here.
"""

from __future__ import annotations

from absl import logging

from reacgan_jax import models, sampling
from reacgan_jax.augment import ada_heuristic, diffaug
from reacgan_jax.augment import registry as augmentations
from reacgan_jax.data import cifar, pipeline, sources
from reacgan_jax.errors import ConfigError
from reacgan_jax.evaluation import evaluator, inception, registry
from reacgan_jax.losses import gan
from reacgan_jax.losses import registry as objectives
from reacgan_jax.models import layers
from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.ops import lerp, spectral_norm
from reacgan_jax.platform import writers
from reacgan_jax.train import state

MODES = ('train', 'eval', 'sample')

# key -> smallest allowed value (integers). 0 of sample_every / checkpoint_every means "at the
# end only" (tests/train/test_train.py and the multi-host worker use it); eval_every -1 = never.
MINIMUM = {
    'train.batch_size': 1, 'train.d_updates_per_step': 1, 'train.log_every': 1,
    'train.sample_every': 0, 'train.checkpoint_every': 0, 'train.keep_checkpoints': 1,
    'train.eval_every': -1, 'train.grid_classes': 1, 'train.grid_per_class': 1,
    'train.ema_start': 0,
    'eval.num_samples': 2, 'eval.batch_size': 1, 'eval.is_splits': 1, 'eval.prdc_k': 1,
    'eval.msssim_pairs': 1, 'eval.kid_subsets': 1, 'eval.kid_subset_size': 2,
    'data.image_size': 1, 'data.num_classes': 1, 'data.shuffle_buffer': 1, 'data.prefetch': 0,
    'model.z_dim': 1, 'model.standing_batches': 1, 'model.sn_power_iterations': 1,
    'loss.r1_interval': 1, 'loss.pl_interval': 1, 'loss.pl_batch_shrink': 1,
}
WHY = {
    'train.keep_checkpoints': ' (0 would delete every checkpoint right after saving it)',
    'train.sample_every': ' (0 = only at the end)',
    'train.checkpoint_every': ' (0 = only at the end)',
    'train.eval_every': ' (0 = at the end only, -1 = never)',
    'eval.num_samples': ' (FID needs at least 2 samples)',
    'eval.kid_subset_size': ' (the unbiased MMD estimate divides by m - 1)',
}


def _choices() -> dict:
  """key -> allowed strings, from the implementing modules where they export them."""
  return {
      'data.source': pipeline.SOURCES,
      'model.conv_backend': conv_ops.BACKENDS,
      'eval.conv_backend': conv_ops.BACKENDS,
      'data.npz_layout': sources.NPZ_LAYOUTS,
      'data.crop': pipeline.CROPS,
      'data.load': pipeline.LOAD_MODES,
      'model.backbone': tuple(models.BACKBONES),
      'model.cond_method': tuple(objectives.COND_LOSSES),
      'model.g_init': tuple(layers.INITS),
      'model.d_init': tuple(layers.INITS),
      'model.bn_eval': sampling.BN_EVAL_MODES,
      'model.sn_embedding_u': spectral_norm.EMBEDDING_U,
      'model.sn_eval': spectral_norm.SN_EVAL,
      'train.ema_rule': lerp.EMA_RULES,
      'model.dtype': tuple(layers.DTYPES),
      'loss.adv': tuple(gan.ADVERSARIAL),
      'optim.schedule': state.SCHEDULES,
      'eval.resize': tuple(inception.RESIZE_MODES),
      'eval.protocol': tuple(registry.PROTOCOLS),
      'train.augment': ('', *augmentations.AUGMENTATIONS),
  }


def _get(config, key):
  node = config
  for part in key.split('.'):
    if part not in node:
      return _MISSING
    node = node[part]
  return node


_MISSING = object()


def _check_lists(config):
  """Comma-list keys: every item must be known."""
  metrics = _get(config, 'eval.metrics')
  if isinstance(metrics, str):
    names = [m.strip() for m in metrics.split(',') if m.strip()]
    bad = [m for m in names if m not in evaluator.METRICS]
    if bad:
      raise ConfigError(f'config.eval.metrics={metrics!r}: unknown {", ".join(bad)}; allowed: a '
                        f'comma list of {", ".join(evaluator.METRICS)}')
  policy = _get(config, 'train.diffaug_policy')
  if isinstance(policy, str):
    try:
      diffaug.parse_policy(policy)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def validate_config(config, *, mode: str = 'train', defaults=None):
  """Raises ConfigError for the first value that cannot work (see MINIMUM and _choices).

  Args:
    config: the run's ConfigDict. mode: 'train', 'eval' or 'sample' (train.steps must be > 0
      only for training). defaults: the default config (configs/default.py, handed in by
      main.py): model keys set away from it that the backbone does not read are logged.
  """
  if mode not in MODES:
    raise ConfigError(f'--mode={mode!r}: expected one of {", ".join(MODES)}')
  for key, lo in MINIMUM.items():
    v = _get(config, key)
    if v is _MISSING:
      continue
    if isinstance(v, bool) or not isinstance(v, int) or v < lo:
      raise ConfigError(f'config.{key}={v!r}: must be an integer >= {lo}{WHY.get(key, "")}.')
  steps = _get(config, 'train.steps')
  if mode == 'train' and steps is not _MISSING and (not isinstance(steps, int) or steps <= 0):
    raise ConfigError(f'config.train.steps={steps!r}: must be an integer > 0 (generator updates '
                      'to train).')
  for key, what in (('eval.num_ref', 'the whole eval split'),
                    ('data.train_per_class', 'every training image'),
                    ('optim.g_lazy_interval', "G's lazy term's interval"),
                    ('optim.d_lazy_interval', "D's lazy term's interval")):
    v = _get(config, key)
    if v is not _MISSING and (isinstance(v, bool) or not isinstance(v, int) or v == 0 or v < -1):
      raise ConfigError(f'config.{key}={v!r}: must be -1 ({what}) or > 0.')
  for key, allowed in _choices().items():
    v = _get(config, key)
    if v is not _MISSING and v not in allowed:
      names = ', '.join(repr(a) if a == '' else a for a in allowed)
      raise ConfigError(f'config.{key}={v!r}: expected one of {names}.')
  _check_lists(config)
  source, name = _get(config, 'data.source'), _get(config, 'data.name')
  if source in cifar.SOURCES and name is not _MISSING and name != source:
    raise ConfigError(f'config.data.source={source!r} with config.data.name={name!r}: the name '
                      'labels the reference statistics and protocol lines; set '
                      f'--config.data.name={source}.')
  project = _get(config, 'train.wandb')
  if mode != 'sample' and project and not writers.wandb_available():
    raise ConfigError(f'config.train.wandb={project!r} needs the wandb package: '
                      f"{writers.WANDB_INSTALL}, or set --config.train.wandb=''.")
  if _get(config, 'ada') is not _MISSING:
    ada_heuristic.check_config(config.ada)
  for key, ok, allowed in (('train.ema_decay', lambda v: 0.0 <= v <= 1.0, 'in [0, 1]'),
                           ('optim.beta1', lambda v: 0.0 <= v < 1.0, 'in [0, 1)'),
                           ('optim.beta2', lambda v: 0.0 <= v < 1.0, 'in [0, 1)'),
                           ('optim.g_lr', lambda v: v > 0.0, '> 0'),
                           ('optim.d_lr', lambda v: v > 0.0, '> 0'),
                           ('optim.eps', lambda v: v > 0.0, '> 0'),
                           ('loss.temperature', lambda v: v > 0.0, '> 0')):
    v = _get(config, key)
    if v is not _MISSING and (isinstance(v, bool) or not isinstance(v, int | float)
                              or not ok(float(v))):
      raise ConfigError(f'config.{key}={v!r}: must be a number {allowed}.')
  eval_every = _get(config, 'train.eval_every')
  if mode == 'eval' or (mode == 'train' and eval_every is not _MISSING and eval_every >= 0):
    evaluator.check_inputs(config)  # files the evaluation reads: a typo fails before training
  if defaults is not None:
    for message in models.unread_keys(config, defaults.model):
      logging.warning('%s', message)
