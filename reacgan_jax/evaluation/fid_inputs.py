"""Inputs of the `fid` CLI: image folders (read lazily), .npz image arrays, statistics files."""

from __future__ import annotations

import pathlib
import zipfile
from collections.abc import Iterator

import numpy as np
from PIL import Image

from reacgan_jax.errors import InputError

IMAGE_KEYS = ('x', 'images', 'x_train')
IMAGE_SUFFIXES = ('.png', '.jpg', '.jpeg', '.bmp', '.webp', '.tif', '.tiff')



def split_key(spec: str) -> tuple[pathlib.Path, str | None]:
  # FILE.npz:KEY picks an array; a bare path keeps its colon-free meaning.
  if ':' in spec and spec.rsplit(':', 1)[0].endswith('.npz'):
    p, key = spec.rsplit(':', 1)
    return pathlib.Path(p).expanduser(), key
  return pathlib.Path(spec).expanduser(), None


def check_npz(path: pathlib.Path, spec: str):
  """np.load would try a file that is no zip as a pickle: say what it is instead."""
  if not zipfile.is_zipfile(path):
    raise InputError(f'{spec}: not an .npz archive (a truncated or other kind of file?)')


def is_statistics_file(spec: str) -> bool:
  path, key = split_key(spec)
  if key is not None or path.suffix != '.npz' or not path.is_file():
    return False
  check_npz(path, spec)
  with np.load(path, allow_pickle=False) as d:
    return 'mu' in d and 'sigma' in d


def _as_nhwc(x: np.ndarray, cifar_rows: bool, where: str) -> np.ndarray:
  if cifar_rows and x.ndim != 4:  # NHWC inputs pass through: the flag names a layout, not a file
    if x.ndim != 2 or x.shape[1] % 3:
      raise InputError(f'{where}: --cifar-rows expects [N, 3*H*W] rows, got {x.shape}')
    side = int(round((x.shape[1] // 3) ** 0.5))
    if 3 * side * side != x.shape[1]:
      raise InputError(f'{where}: rows of {x.shape[1]} values are not 3 square planes')
    # CIFAR `data` layout: R(HW) G(HW) B(HW), each plane row-major.
    return x.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
  if x.ndim == 2:
    raise InputError(f'{where}: [N, {x.shape[1]}] rows look like the CIFAR row layout; pass '
                     '--cifar-rows')
  if x.ndim != 4 or x.shape[-1] != 3:
    hint = ' (NCHW? transpose to NHWC)' if x.ndim == 4 and x.shape[1] == 3 else ''
    raise InputError(f'{where}: expected uint8 images [N, H, W, 3], got {x.shape}{hint}')
  return x


def load_images(spec: str, *, cifar_rows: bool = False, num_images: int | None = None,
                chunk: int = 500):
  """Images of a CLI input: (array [N, H, W, 3] uint8 or an iterator of batches, N, description).

  Folders are read lazily, `chunk` files at a time (sorted names, converted to RGB); all images
  must share one size.
  """
  path, key = split_key(spec)
  if path.is_dir():
    files = sorted(p for p in path.rglob('*') if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
      raise InputError(f'{path}: no images ({", ".join(IMAGE_SUFFIXES)}) in this folder')
    if num_images:
      files = files[:num_images]
    return _folder_batches(files, chunk), len(files), f'folder:{path.resolve()}'
  if path.suffix == '.npz' and path.is_file():
    check_npz(path, spec)
    with np.load(path, allow_pickle=False) as d:
      keys = [key] if key else [k for k in IMAGE_KEYS if k in d]
      if not keys or keys[0] not in d:
        raise InputError(f'{spec}: no image array (looked for {key or ", ".join(IMAGE_KEYS)}; '
                         f'has {sorted(d.keys())}); pick one with {path}:KEY')
      x = d[keys[0]]
    if x.dtype != np.uint8:
      raise InputError(f'{spec}: images must be uint8, got {x.dtype}')
    x = _as_nhwc(x, cifar_rows, spec)
    if num_images:
      x = x[:num_images]
    return x, x.shape[0], f'npz:{path.resolve()}:{keys[0]}'
  raise InputError(f'{spec}: not an image folder, an .npz of images, or an .npz of statistics')


def _folder_batches(files, chunk: int = 500) -> Iterator[np.ndarray]:
  shape = None
  for i in range(0, len(files), chunk):
    batch = []
    for f in files[i:i + chunk]:
      try:
        with Image.open(f) as img:
          a = np.asarray(img.convert('RGB'))
      except (OSError, SyntaxError, ValueError) as e:  # UnidentifiedImageError is an OSError
        raise InputError(f'{f}: cannot read this image ({e}); delete or replace it.') from e
      if shape is None:
        shape = a.shape
      elif a.shape != shape:
        raise InputError(f'{f}: size {a.shape[:2]} differs from {shape[:2]} of the first image; '
                         'resize the folder to one size first')
      batch.append(a)
    yield np.stack(batch)
