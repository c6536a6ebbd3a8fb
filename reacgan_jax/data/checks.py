"""Checks of loaded data arrays against the config, called by the pipeline (pipeline._load):
labels against config.data.num_classes, an npz's resolution against config.data.image_size.
Each failure is one ConfigError naming the key to set.
"""

import numpy as np

from reacgan_jax.errors import ConfigError


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
  the user thinks; config.data.npz_resize=True asks for it (LANCZOS, sources.resize_pil).
  Folder and TFDS sources always resize (variable-size images), so they are not checked here.
  """
  s = config.data.image_size
  h, w = images_shape[1:3]
  if (h, w) != (s, s) and not config.data.get('npz_resize', False):
    raise ConfigError(
        f'{description} holds {h}x{w} images but config.data.image_size={s}: set '
        f'--config.data.image_size={h}' + (' ' if h == w else ' (after cropping) ')
        + f'for its resolution, or --config.data.npz_resize=True to resize them to {s}x{s}.')


def check_arrays(config, arrays, split: str):
  """Both data checks on a loaded sources.Arrays, before any resize (pipeline._load). The
  resolution check holds for arrays read from an npz file (`arrays.from_npz`: source=npz, or the
  offline npz fallback of CIFAR or TFDS); folders and TFDS are resized by design.
  """
  if arrays.from_npz:
    check_resolution(config, arrays.images.shape, arrays.description)
  if split == config.data.train_split:
    check_labels(config, arrays.labels, arrays.num_classes, arrays.description)
