"""CIFAR-10 / CIFAR-100 from their official binary releases, without TensorFlow.

config.data.source = 'cifar10' | 'cifar100' reads the images StudioGAN's torchvision loader
reads, in the same order: the release files in file order (CIFAR-10: data_batch_1..5, then
test_batch; CIFAR-100: train.bin, test.bin with the fine labels). TFDS's `cifar10` holds the same
images in another order (it shuffles on preparation), so a run of this source sees StudioGAN's
order online and offline alike.

Where the images come from, the first that exists:
1. config.data.root: the release's .tar.gz, or its unpacked folder (cifar-10-batches-bin/);
2. `<cache>/downloads/<release>.tar.gz`, downloaded before (size and sha256 checked);
3. config.data.offline_npz: a local npz of the same images in the same order (the shared
   cifar10.npz: x_train = data_batch_1..5 concatenated, x_test = test_batch, per its README);
4. a download into (2) when config.data.download is on, from config.data.download_url ('' = the
   official URL), streamed into a temporary file beside the target, checked against the
   release's size and sha256 (the values in tensorflow_datasets' url_checksums), then renamed
   into place, so an interrupted or corrupt download never leaves a file that is read later.
Otherwise one error that names the URL, the file's size and sha256, and where to put it.
<cache> is config.data.cache_dir, or the package's cache root (platform/paths.py) when that is
'' or 'none' (a download must be kept somewhere).
"""

import dataclasses
import errno
import hashlib
import os
import pathlib
import tarfile
import urllib.error
import urllib.request

import numpy as np
from absl import logging

from reacgan_jax.data import sources as ds
from reacgan_jax.errors import ConfigError, InputError, MissingFileError
from reacgan_jax.platform import paths

IMAGE_BYTES = 3 * 32 * 32  # R, G, B planes of 32x32, row-major
_CHUNK = 1 << 20


@dataclasses.dataclass(frozen=True)
class Release:
  """One official binary release: where it is, what it holds and how its records look."""
  url: str
  size: int
  sha256: str
  prefix: str  # the one folder inside the archive
  train: tuple[str, ...]
  test: tuple[str, ...]
  label_bytes: int  # the label is the last of them (CIFAR-100: coarse, fine)
  names_file: str

  @property
  def file_name(self) -> str:
    return self.url.rsplit('/', 1)[-1]


RELEASES = {
    'cifar10': Release(
        'https://www.cs.toronto.edu/~kriz/cifar-10-binary.tar.gz', 170_052_171,
        'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd',
        'cifar-10-batches-bin', tuple(f'data_batch_{i}.bin' for i in range(1, 6)),
        ('test_batch.bin',), 1, 'batches.meta.txt'),
    'cifar100': Release(
        'https://www.cs.toronto.edu/~kriz/cifar-100-binary.tar.gz', 168_513_733,
        '58a81ae192c23a4be8b1804d68e518ed807d710a4eb253b1f2a199162a40d8ec',
        'cifar-100-binary', ('train.bin',), ('test.bin',), 2, 'fine_label_names.txt'),
}
SOURCES = tuple(RELEASES)


def records(data: bytes, label_bytes: int, name: str) -> tuple[np.ndarray, np.ndarray]:
  """One release .bin -> (uint8 [N, 32, 32, 3], int32 [N]); pure bytes -> arrays."""
  record = label_bytes + IMAGE_BYTES
  if len(data) % record:
    raise InputError(f'{name}: {len(data)} bytes is not a multiple of {record} ({label_bytes} '
                     f'label byte(s) + {IMAGE_BYTES} image bytes): not this release\'s file')
  rec = np.frombuffer(data, np.uint8).reshape(-1, record)
  images = rec[:, label_bytes:].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  return np.ascontiguousarray(images), rec[:, label_bytes - 1].astype(np.int32)


def _split_files(release: Release, split: str) -> tuple[str, ...]:
  if split == 'train':
    return release.train
  if split == 'test':
    return release.test
  raise ConfigError(f'split {split!r} of CIFAR: expected train or test')


def downloads_dir(config) -> pathlib.Path:
  return (ds.cache_root(config) or paths.cache_root()) / 'downloads'


def _sha256(path: pathlib.Path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    while chunk := f.read(_CHUNK):
      h.update(chunk)
  return h.hexdigest()


def _where_to_put_it(release: Release, target: pathlib.Path) -> str:
  return (f'put {release.file_name} ({release.size:,} bytes, sha256 {release.sha256}, from '
          f'{release.url}) at {target}, or point --config.data.root at it or at its unpacked '
          f'{release.prefix}/ folder')


def download(url: str, target: pathlib.Path, release: Release) -> pathlib.Path:
  """Streams `url` into `target` (size and sha256 checked; nothing left behind on failure)."""
  target.parent.mkdir(parents=True, exist_ok=True)
  tmp = target.with_name(f'{target.name}.{os.getpid()}.part')
  logging.info('Downloading %s (%.0f MB) to %s.', url, release.size / 1e6, target)
  h, n, reported = hashlib.sha256(), 0, 0
  try:
    with urllib.request.urlopen(url, timeout=60) as response, open(tmp, 'wb') as f:
      while chunk := response.read(_CHUNK):
        f.write(chunk)
        h.update(chunk)
        n += len(chunk)
        if n - reported >= release.size // 5:
          reported = n
          logging.info('  %.0f of %.0f MB', n / 1e6, release.size / 1e6)
  except (urllib.error.URLError, OSError, ValueError) as e:
    tmp.unlink(missing_ok=True)
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      raise MissingFileError(f'No space left on {target.parent} for {release.file_name} '
                             f'({release.size / 1e6:.0f} MB): free space there, or set '
                             '$REACGAN_JAX_CACHE or --config.data.cache_dir to a disk with '
                             'room') from e
    raise MissingFileError(f'Could not download {url} ({getattr(e, "reason", e)}). Offline: '
                           f'{_where_to_put_it(release, target)}') from e
  except BaseException:  # Ctrl-C: no half file
    tmp.unlink(missing_ok=True)
    raise
  if n != release.size or h.hexdigest() != release.sha256:
    tmp.unlink(missing_ok=True)
    raise InputError(f'{url} gave {n:,} bytes with sha256 {h.hexdigest()}, not the release '
                     f'({release.size:,} bytes, {release.sha256}): nothing was kept. Try again, '
                     f'or {_where_to_put_it(release, target)}')
  os.replace(tmp, target)
  return target


class _Files:
  """The release's member files by base name, from its .tar.gz or its unpacked folder."""

  def __init__(self, path: pathlib.Path, release: Release):
    self.path, self.release = path, release
    if path.is_dir():
      base = path / release.prefix if (path / release.prefix).is_dir() else path
      self._files = {f.name: f for f in base.iterdir() if f.is_file()}
      self._tar = None
    else:
      try:
        self._tar = tarfile.open(path)
        self._files = {pathlib.PurePosixPath(m.name).name: m for m in self._tar.getmembers()
                       if m.isfile()}
      except (tarfile.TarError, OSError, EOFError) as e:
        raise InputError(f'{path} is not a readable {release.file_name} ({e}): delete it and '
                         f'{_where_to_put_it(release, path)}') from e

  def has(self, name: str) -> bool:
    return name in self._files

  def read(self, name: str) -> bytes:
    if name not in self._files:
      raise InputError(f'{self.path} has no {name}: expected the {self.release.file_name} release '
                       f'({self.release.prefix}/{name}, ...)')
    if self._tar is None:
      return self._files[name].read_bytes()
    try:
      return self._tar.extractfile(self._files[name]).read()
    except (tarfile.TarError, OSError, EOFError) as e:
      raise InputError(f'{self.path}: {name} cannot be read ({e}): delete it and '
                       f'{_where_to_put_it(self.release, self.path)}') from e

  def close(self):
    if self._tar is not None:
      self._tar.close()


def locate(config) -> tuple[str, pathlib.Path | None]:
  """-> ('release', path) | ('npz', path) | ('download', target): what `load` will read, in the
  module docstring's order, without reading or downloading anything."""
  d = config.data
  release = RELEASES[d.source]
  if d.root:
    root = ds.resolve_path(d.root)
    if not root.exists():
      raise MissingFileError(f'config.data.root={d.root!r} does not exist: point it at '
                             f'{release.file_name} or its unpacked {release.prefix}/ folder')
    return 'release', root
  cached = downloads_dir(config) / release.file_name
  if cached.is_file():
    return 'release', cached
  if d.offline_npz and ds.resolve_path(d.offline_npz).is_file():
    return 'npz', ds.resolve_path(d.offline_npz)
  return 'download', cached


def describe(config, split: str) -> str:
  kind, path = locate(config)
  if kind == 'download':
    return f'{config.data.source} (to be downloaded to {path}; split {split})'
  what = 'release' if kind == 'release' else 'offline npz, the same images in the same order'
  return f'{config.data.source} {path} ({what}; split {split})'


def load(config, split: str, cache) -> ds.Arrays:
  """`split` of the release as Arrays at 32x32 (the caller resizes), in file order."""
  d = config.data
  release = RELEASES[d.source]
  kind, path = locate(config)
  if kind == 'npz':
    logging.info('%s: reading the offline npz %s (config.data.offline_npz) for %s.', d.source,
                 path, release.file_name)
    return ds.load_npz(str(path), split, 'auto', cache)
  if kind == 'download':
    if not d.download:
      raise MissingFileError(f'{release.file_name} is not in {path.parent} and '
                             'config.data.download is off: turn it on (needs network), or '
                             f'{_where_to_put_it(release, path)}')
    download(d.download_url or release.url, path, release)
  if path == downloads_dir(config) / release.file_name and path.stat().st_size != release.size:
    raise InputError(f'{path} has {path.stat().st_size:,} bytes, not {release.size:,}: a partial '
                     f'or foreign file. Delete it (it is downloaded again), or '
                     f'{_where_to_put_it(release, path)}')
  files = _Files(path, release)
  try:
    names = _split_files(release, split)
    parts = [records(files.read(n), release.label_bytes, f'{path}:{n}') for n in names]
    class_names = None
    if files.has(release.names_file):
      class_names = [s for s in files.read(release.names_file).decode().split('\n') if s.strip()]
  finally:
    files.close()
  images = np.concatenate([p[0] for p in parts])
  labels = np.concatenate([p[1] for p in parts])
  desc = f'{d.source} {path} [{", ".join(names)}]'
  return ds.Arrays(images, labels, len(class_names) if class_names else None, desc)
