"""Shared by the trainer tests: a small synthetic CIFAR-like npz and tiny configs."""

import pathlib
import tarfile

import numpy as np

from configs import tiny
from reacgan_jax.data import cifar

# The hang guard of every subprocess a test waits on: long enough that only a hang trips it,
# on a loaded machine too (no test may depend on machine speed); CI's own limit ends a real hang.
HANG_S = 3600


def write_npz(path, n=64, size=32, classes=10, seed=0):
  """Random uint8 images [n, size, size, 3] (nhwc layout) with labels; returns the path."""
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, size=(n, size, size, 3), dtype=np.uint8)
  y = rng.integers(0, classes, size=(n,)).astype(np.int64)
  np.savez(path, x_train=x, y_train=y, x_test=x[:16], y_test=y[:16])
  return str(path)


def tiny_config(npz_path, **overrides):
  """configs/tiny.py on `npz_path`, evaluation off; overrides 'section.key' -> value."""
  config = tiny.get_config()
  config.data.npz_path, config.data.npz_layout = str(npz_path), 'nhwc'
  config.train.eval_every = -1
  for key, value in overrides.items():
    section, name = key.split('.')
    setattr(config[section], name, value)
  return config


def write_cifar_release(folder, source, splits, class_names, *, archive=True):
  """Writes arrays as CIFAR's binary release lays them out (data/cifar.py), by hand.

  splits: {'train': (images uint8 [N, 32, 32, 3], labels [N]), 'test': (...)}; the train
  images are spread over the release's train files in order. CIFAR-100 records carry a coarse
  label byte (written as label // 5, as a check that the fine byte is the one read) before the
  fine one. Returns the .tar.gz (archive=True) or the unpacked release folder.
  """
  release = cifar.RELEASES[source]
  inner = pathlib.Path(folder) / release.prefix
  inner.mkdir(parents=True, exist_ok=True)
  for split, names in (('train', release.train), ('test', release.test)):
    x, y = splits[split]
    for name, xs, ys in zip(names, np.array_split(np.asarray(x, np.uint8), len(names)),
                            np.array_split(np.asarray(y, np.uint8), len(names)), strict=True):
      labels = ys[:, None] if release.label_bytes == 1 else np.stack([ys // 5, ys], axis=1)
      planes = xs.transpose(0, 3, 1, 2).reshape(len(xs), 3 * 32 * 32)
      (inner / name).write_bytes(np.concatenate([labels, planes], axis=1).tobytes())
  (inner / release.names_file).write_text('\n'.join(class_names) + '\n')
  if not archive:
    return inner
  out = pathlib.Path(folder) / release.file_name
  with tarfile.open(out, 'w:gz') as tar:
    tar.add(inner, arcname=release.prefix)
  return out
