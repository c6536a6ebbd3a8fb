"""Shared by the trainer tests: a small synthetic CIFAR-like npz and tiny configs."""

import numpy as np

from configs import tiny

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
