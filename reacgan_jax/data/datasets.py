"""Dataset layouts beyond npz / class folders / TFDS: Tiny-ImageNet's zip, CIFAR-style binaries.

config.data.source = 'tiny_imagenet' (config.data.root = a directory or the .zip):
  - the official release, read as it unpacks (no reshuffling into class folders):
    [tiny-imagenet-200/]train/<wnid>/images/*.JPEG and val/images/*.JPEG with
    val/val_annotations.txt (file, wnid, box), either unpacked or straight from the .zip;
  - or the plain class-folder layout StudioGAN's ImageFolder reads (src/data_util.py
    Dataset_.load_dataset): root/train/<wnid>/*.JPEG, root/valid/<wnid>/*.JPEG.
  Labels are the sorted wnids' indices, as torchvision's ImageFolder assigns them. Splits: train,
  valid (also val / validation). The official test/ has no labels and is refused.
config.data.source = 'cifar_binary' (config.data.root = a directory), ArtBench-10 32x32:
  - the CIFAR *binary* release: data_batch_*.bin (train) and test_batch.bin (test), each record
    1 label byte + 3072 bytes (R, G, B planes of 32x32, row-major), class names one per line in
    batches.meta.txt (optional). The python-pickle release is refused: unpickling a downloaded
    file can run arbitrary code;
  - or a folder export root/<split>/<class>/*.png|jpg (data_sources.load_folder).
Everything is decoded on the host into `data_sources.Arrays`, cached like the folder source.
"""

import concurrent.futures
import io
import os
import re
import zipfile

import numpy as np
from absl import logging
from PIL import Image

from reacgan_jax.data import cifar
from reacgan_jax.data import sources as ds
from reacgan_jax.errors import ConfigError, InputError, MissingFileError

SOURCES = ('tiny_imagenet', 'cifar_binary')
CIFAR_RECORD = 1 + 3 * 32 * 32  # label byte + R, G, B planes
_VALID = ('valid', 'val', 'validation')
_SPLIT_DIRS = ('train', 'test', *_VALID)  # a lone top folder with one of these names is a split
TINY_LAYOUT = ('root/train/<wnid>/images/*.JPEG + root/val/images/*.JPEG + '
               'root/val/val_annotations.txt (the official tiny-imagenet-200 zip, unpacked or '
               'not), '
               'or root/train/<wnid>/*.JPEG + root/valid/<wnid>/*.JPEG (class folders)')
BINARY_LAYOUT = ('root/data_batch_*.bin + root/test_batch.bin (CIFAR binary: 1 label byte + 3072 '
                 'bytes per image; batches.meta.txt optional), or root/<split>/<class>/*.png|jpg')


def load(data, split: str, cache) -> ds.Arrays:
  """`split` of config.data (`data`, source in SOURCES) as Arrays (resized by the caller)."""
  if data.source == 'tiny_imagenet':
    return load_tiny_imagenet(data.root, split, data.image_size, data.crop, cache)
  if data.source == 'cifar_binary':
    return load_cifar_binary(data.root, split, data.image_size, data.crop, cache)
  raise ConfigError(f'config.data.source={data.source!r}: expected one of {SOURCES}')


def describe(data, split: str) -> str:
  return f'{data.source} {ds.resolve_path(data.root)} (split {split})'


# ---- a directory or a zip, read alike ------------------------------------------------------


class _Tree:
  """Relative posix paths -> bytes, from a directory or a .zip (its one top folder skipped)."""

  def __init__(self, root: str, what: str):
    p = ds.resolve_path(root)
    self.path, self.zip = p, None
    if not root or not p.exists():
      raise MissingFileError(f'config.data.root={root!r} does not exist: point it at {what}')
    if p.is_file() and zipfile.is_zipfile(p):
      self.zip = zipfile.ZipFile(p)
      names = [n for n in self.zip.namelist() if not n.endswith('/')]
    elif p.is_dir():
      names = sorted(str(f.relative_to(p).as_posix()) for f in p.rglob('*') if f.is_file())
    else:
      raise ConfigError(f'config.data.root={root!r} is neither a directory nor a zip: expected '
                       f'{what}')
    tops = {n.split('/', 1)[0] for n in names}
    self.prefix = ''
    top = tops.pop() if len(tops) == 1 else None
    if top and top not in _SPLIT_DIRS and all('/' in n for n in names):  # tiny-imagenet-200/...
      self.prefix = top + '/'
    self.names = [n[len(self.prefix):] for n in names]
    st = p.stat()
    self.ident = ds._digest(p.resolve(), st.st_size, st.st_mtime_ns, len(names),
                            *(names if self.zip else self._stats(names)))

  def _stats(self, names):
    return [(n, (self.path / n).stat().st_size, (self.path / n).stat().st_mtime_ns)
            for n in names]

  def read(self, name: str) -> bytes:
    if self.zip is not None:
      return self.zip.read(self.prefix + name)
    return (self.path / self.prefix / name).read_bytes()


def _decode(tree: _Tree, name: str, size: int, crop: str) -> np.ndarray:
  try:
    with Image.open(io.BytesIO(tree.read(name))) as img:
      img.load()
      rgb = img.convert('RGB')  # Tiny-ImageNet has grayscale JPEGs; ImageFolder converts too
  except (OSError, SyntaxError, ValueError) as e:
    raise InputError(f'Cannot read image {tree.path}/{tree.prefix}{name}: {e}') from e
  return np.asarray(ds.resize_pil(rgb, size, crop), dtype=np.uint8)


def _decode_all(tree, files, size, crop, cache, desc, num_classes) -> ds.Arrays:
  """[(name, label)] -> Arrays, memoised in-process and on disk like data_sources.load_folder."""
  ident = ds._digest(tree.ident, size, crop, *files)
  cached = cache / 'layouts' / f'{tree.path.stem}-{ident}' if cache else None
  with ds._MEMO_LOCK:
    hit = ds._MEMO.get((ident, 'layout'))
  if hit is None and cached is not None and (cached / 'labels.npy').exists():
    hit = np.load(cached / 'images.npy'), np.load(cached / 'labels.npy')
  if hit is None:
    logging.info('Decoding %d images of %s.', len(files), desc)
    with concurrent.futures.ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
      decoded = list(pool.map(lambda f: _decode(tree, f[0], size, crop), files))
    hit = np.stack(decoded), np.array([c for _, c in files], np.int32)
    if cached is not None:
      ds._save_atomic(cached / 'images.npy', hit[0])
      ds._save_atomic(cached / 'labels.npy', hit[1])
  with ds._MEMO_LOCK:
    ds._MEMO[(ident, 'layout')] = hit
  return ds.Arrays(hit[0], hit[1], num_classes, desc)


# ---- Tiny-ImageNet -------------------------------------------------------------------------


def _is_image(name: str) -> bool:
  return name.lower().endswith(ds.IMAGE_EXTENSIONS)


def tiny_imagenet_files(tree: _Tree, split: str):
  """-> (sorted wnids, [(relative file, label)]) of the official layout, checked."""
  train = {}
  for n in tree.names:
    parts = n.split('/')
    if len(parts) == 4 and parts[0] == 'train' and parts[2] == 'images' and _is_image(n):
      train.setdefault(parts[1], []).append(n)
  wnids = sorted(train)
  if not wnids:
    raise InputError(f'{tree.path}: no train/<wnid>/images/*.JPEG; expected {TINY_LAYOUT}')
  if split == 'train':
    ids = {w: i for i, w in enumerate(wnids)}
    return wnids, [(n, ids[w]) for w in wnids for n in sorted(train[w])]
  if split not in _VALID:
    raise InputError(f"split {split!r} of Tiny-ImageNet: expected train or valid (the official "
                     'test/ images have no labels)')
  ann = 'val/val_annotations.txt'
  if ann not in tree.names:
    raise InputError(f'{tree.path}: no {ann}; expected {TINY_LAYOUT}')
  ids = {w: i for i, w in enumerate(wnids)}
  files = []
  for line_no, line in enumerate(tree.read(ann).decode().splitlines(), 1):
    fields = line.split('\t')
    if not line.strip():
      continue
    if len(fields) < 2 or fields[1] not in ids:
      raise InputError(f'{tree.path}/{tree.prefix}{ann} line {line_no}: {line!r} is not '
                       '"<file>\\t<wnid of a train class>\\t<box>"')
    files.append((f'val/images/{fields[0]}', ids[fields[1]]))
  missing = sorted(set(f for f, _ in files) - set(tree.names))
  if missing:
    raise InputError(f'{tree.path}: {len(missing)} annotated images are missing, e.g. '
                     f'{missing[0]}; expected {TINY_LAYOUT}')
  return wnids, sorted(files)


def load_tiny_imagenet(root: str, split: str, size: int, crop: str, cache) -> ds.Arrays:
  """Tiny-ImageNet `split` (train | valid) from the official layout or class folders."""
  tree = _Tree(root, TINY_LAYOUT)
  official = any(re.fullmatch(r'train/[^/]+/images/[^/]+', n) for n in tree.names)
  if not official:  # class folders: root/<train|valid>/<wnid>/*.JPEG
    if tree.zip is not None:
      raise InputError(f'{tree.path}: a zip without train/<wnid>/images/; expected {TINY_LAYOUT}')
    base = tree.path / tree.prefix
    names = [split] + ([v for v in _VALID if v != split] if split in _VALID else [])
    sub = next((n for n in names if (base / n).is_dir()), None)
    if sub is None:
      raise InputError(f'{base}: neither the official layout nor {split}/<wnid>/ folders; '
                       f'expected {TINY_LAYOUT}')
    return ds.load_folder(str(base), sub, size, crop, cache)
  wnids, files = tiny_imagenet_files(tree, split)
  desc = f'tiny_imagenet {tree.path} [{split}] ({len(wnids)} classes)'
  return _decode_all(tree, files, size, crop, cache, desc, len(wnids))


# ---- CIFAR binary (ArtBench-10) ------------------------------------------------------------


def _batch_number(name: str) -> int:
  m = re.search(r'(\d+)', name)
  return int(m.group(1)) if m else 0


def read_cifar_binary(data: bytes, name: str) -> tuple[np.ndarray, np.ndarray]:
  """One CIFAR-10-style .bin -> (uint8 [N, 32, 32, 3], int32 [N]); pure bytes -> arrays."""
  if len(data) % CIFAR_RECORD:
    raise InputError(f'{name}: {len(data)} bytes is not a multiple of {CIFAR_RECORD} (1 label '
                     'byte + 3072 image bytes); CIFAR-100 binaries (2 label bytes) are not read')
  return cifar.records(data, 1, name)


def load_cifar_binary(root: str, split: str, size: int, crop: str, cache) -> ds.Arrays:
  """train = data_batch_*.bin (in batch order), test = test_batch.bin; or a folder export."""
  tree = _Tree(root, BINARY_LAYOUT)
  bins = [n for n in tree.names if '/' not in n and n.endswith('.bin')]
  if not bins:
    pickles = [n for n in tree.names if re.fullmatch(r'(data|test)_batch(_\d+)?', n)]
    if pickles:
      raise InputError(f'{tree.path} holds python pickles ({pickles[0]}, ...): they are not '
                       'unpickled (that can run code). Use the CIFAR-binary release or a folder '
                       f'export instead; expected {BINARY_LAYOUT}')
    base = tree.path / tree.prefix
    if tree.zip is None and (base / split).is_dir():
      return ds.load_folder(str(base), split, size, crop, cache)
    raise InputError(f'{tree.path}: no .bin batches and no {split}/<class>/ folders; expected '
                     f'{BINARY_LAYOUT}')
  if split == 'train':
    files = sorted((n for n in bins if n.startswith('data_batch')), key=_batch_number)
  elif split == 'test':
    files = [n for n in bins if n.startswith('test_batch')]
  else:
    raise InputError(f'split {split!r} of a CIFAR-binary dataset: expected train or test')
  if not files:
    raise InputError(f'{tree.path} has no {split} batches ({", ".join(bins)}); expected '
                     f'{BINARY_LAYOUT}')
  parts = [read_cifar_binary(tree.read(n), f'{tree.path}/{n}') for n in files]
  images = ds.resize_images(np.concatenate([p[0] for p in parts]), size, crop)
  labels = np.concatenate([p[1] for p in parts])
  names = None
  if 'batches.meta.txt' in tree.names:
    names = [s for s in tree.read('batches.meta.txt').decode().split('\n') if s.strip()]
  desc = f'cifar_binary {tree.path} [{", ".join(files)}]'
  return ds.Arrays(images, labels, len(names) if names else None, desc)
