"""Config and data checks before anything runs: one ConfigError naming key, value and what is
allowed (issue 14, class 6).

`validate_config(config, mode=...)` is called once by main.py after flag parsing; the data checks
(`check_labels`, `check_resolution`) are called by the input pipeline on the loaded arrays.
Choices are read from the modules that implement them where those export a list (models,
evaluator, augment, inception), so a new backbone or metric needs no edit here.
"""

from __future__ import annotations

import numpy as np

from reacgan_jax.errors import ConfigError

MODES = ('train', 'eval', 'sample')

# key -> smallest allowed value (integers). 0 of sample_every / checkpoint_every means "at the
# end only" (tests/test_train.py and the multi-host worker use it); eval_every -1 = never.
MINIMUM = {
    'train.batch_size': 1, 'train.d_updates_per_step': 1, 'train.log_every': 1,
    'train.sample_every': 0, 'train.checkpoint_every': 0, 'train.keep_checkpoints': 1,
    'train.eval_every': -1, 'train.grid_classes': 1, 'train.grid_per_class': 1,
    'train.ema_start': 0,
    'eval.num_samples': 2, 'eval.batch_size': 1, 'eval.is_splits': 1, 'eval.prdc_k': 1,
    'eval.msssim_pairs': 1,
    'data.image_size': 1, 'data.num_classes': 1, 'data.shuffle_buffer': 1, 'data.prefetch': 0,
    'model.z_dim': 1, 'model.standing_batches': 1, 'model.sn_power_iterations': 1,
}
WHY = {
    'train.keep_checkpoints': ' (0 would delete every checkpoint right after saving it)',
    'train.sample_every': ' (0 = only at the end)',
    'train.checkpoint_every': ' (0 = only at the end)',
    'train.eval_every': ' (0 = at the end only, -1 = never)',
    'eval.num_samples': ' (FID needs at least 2 samples)',
}


def _choices() -> dict:
  """key -> allowed strings, from the implementing modules where they export them."""
  from reacgan_jax import datasets, models, objectives, spectral_norm  # noqa: PLC0415
  from reacgan_jax.evaluation import inception  # noqa: PLC0415

  return {
      'data.source': ('tfds', 'npz', 'folder', *datasets.SOURCES),
      'data.npz_layout': ('nhwc', 'cifar_rows', 'auto'),
      'data.crop': ('none', 'center'),
      'data.load': ('memory', 'stream', 'auto'),
      'model.backbone': tuple(models.BACKBONES),
      'model.cond_method': tuple(objectives.COND_LOSSES),
      'model.g_init': ('ortho', 'N02', 'glorot'),
      'model.d_init': ('ortho', 'N02', 'glorot'),
      'model.bn_eval': ('running', 'batch', 'standing'),
      'model.sn_embedding_u': spectral_norm.EMBEDDING_U,
      'model.sn_eval': spectral_norm.EVAL_MODES,
      'model.dtype': ('float32', 'bfloat16'),
      'loss.adv': ('hinge', 'logistic', 'wasserstein'),
      'optim.schedule': ('constant', 'linear_decay'),
      'eval.resize': tuple(inception.RESIZE_MODES),
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
  from reacgan_jax import augment  # noqa: PLC0415
  from reacgan_jax.evaluation import evaluator  # noqa: PLC0415

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
      augment.parse_policy(policy)
    except ValueError as e:
      raise ConfigError(str(e)) from None


def validate_config(config, *, mode: str = 'train'):
  """Raises ConfigError for the first value that cannot work (see MINIMUM and _choices).

  Args:
    config: the run's ConfigDict. mode: 'train', 'eval' or 'sample' (train.steps must be > 0
      only for training).
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
  num_ref = _get(config, 'eval.num_ref')
  if num_ref is not _MISSING and (not isinstance(num_ref, int) or num_ref == 0 or num_ref < -1):
    raise ConfigError(f'config.eval.num_ref={num_ref!r}: must be -1 (the whole eval split) or > 0.')
  for key, allowed in _choices().items():
    v = _get(config, key)
    if v is not _MISSING and v not in allowed:
      raise ConfigError(f'config.{key}={v!r}: expected one of {", ".join(allowed)}.')
  _check_lists(config)
  for key, ok, allowed in (('train.ema_decay', lambda v: 0.0 <= v <= 1.0, 'in [0, 1]'),
                           ('optim.beta1', lambda v: 0.0 <= v < 1.0, 'in [0, 1)'),
                           ('optim.beta2', lambda v: 0.0 <= v < 1.0, 'in [0, 1)'),
                           ('optim.g_lr', lambda v: v > 0.0, '> 0'),
                           ('optim.d_lr', lambda v: v > 0.0, '> 0')):
    v = _get(config, key)
    if v is not _MISSING and (isinstance(v, bool) or not isinstance(v, int | float)
                              or not ok(float(v))):
      raise ConfigError(f'config.{key}={v!r}: must be a number {allowed}.')


# ---- data checks (called by the input pipeline on the loaded arrays) ---------------------------


def check_labels(config, labels, declared_classes, description: str):
  """Labels against config.data.num_classes when the data declares no class names.

  A source with class names (label_names, class folders, TFDS ClassLabel) is checked against
  those names by the pipeline; without them, num_classes larger than the classes present means
  embeddings and class-balanced sampling for classes that never occur. Call it on the training
  split only: an eval split (or a test's 16-image one) may lack classes legitimately.
  """
  c = config.data.num_classes
  labels = np.asarray(labels)
  present = np.unique(labels)
  if len(present) and (present[0] < 0 or present[-1] >= c):
    raise ConfigError(f'{description}: labels span [{present[0]}, {present[-1]}], outside '
                      f'[0, {c}) of config.data.num_classes={c}.')
  if declared_classes is None and len(present) < c:
    raise ConfigError(
        f'config.data.num_classes={c}, but {description} holds labels of only {len(present)} '
        f'classes ({_span(present)}) and declares no class names: set '
        f'--config.data.num_classes={len(present)} (or relabel the data to 0..{c - 1}).')


def _span(present) -> str:
  if len(present) <= 6:
    return ', '.join(str(int(p)) for p in present)
  return f'{int(present[0])}..{int(present[-1])}'


def check_resolution(config, images_shape, description: str):
  """An npz of another resolution than config.data.image_size is refused unless asked for.

  Resizing 64x64 data to a 32x32 model (or the reverse) silently trains on other images than
  the user thinks; config.data.npz_resize=True asks for it (LANCZOS, data_sources.resize_pil).
  Folder and TFDS sources always resize (variable-size images), so they are not checked here.
  """
  s = config.data.image_size
  h, w = images_shape[1:3]
  if (h, w) != (s, s) and not config.data.get('npz_resize', False):
    raise ConfigError(
        f'{description} holds {h}x{w} images but config.data.image_size={s}: set '
        f'--config.data.image_size={h}' + (' ' if h == w else ' (after cropping) ')
        + f'for its resolution, or --config.data.npz_resize=True to resize them to {s}x{s}.')


def check_arrays(config, arrays, split: str, *, from_npz: bool):
  """Both data checks on a loaded data_sources.Arrays, before any resize (input_pipeline._load).

  from_npz: the arrays come from an npz file (source=npz, or the offline npz fallback of tfds).
  """
  if from_npz:
    check_resolution(config, arrays.images.shape, arrays.description)
  if split == config.data.train_split:
    check_labels(config, arrays.labels, arrays.num_classes, arrays.description)
