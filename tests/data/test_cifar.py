"""CIFAR-10 / CIFAR-100 from the official binary releases (reacgan_jax/data/cifar.py).

Releases are synthetic, written by hand in the release layout (train_helpers.write_cifar_release);
downloads come from a local HTTP server or nowhere (a closed port): no network. The real-data
check reads the shared npz rows back through a release written from them.
"""

import dataclasses
import errno
import functools
import http.server
import io
import os
import pathlib
import sys
import threading

import numpy as np
import pytest
from train_helpers import write_cifar_release

from configs import cifar10_reacgan, default
from reacgan_jax import validate
from reacgan_jax.data import cifar
from reacgan_jax.data import pipeline as input_pipeline
from reacgan_jax.data import sources as data_sources
from reacgan_jax.errors import ConfigError, InputError, MissingFileError
from reacgan_jax.studiogan import keys

NAMES10 = [f'class{i}' for i in range(10)]


@pytest.fixture(autouse=True)
def _fresh_memo():
  data_sources.clear_memo()


def _splits(n_train=25, n_test=7, classes=10, seed=0):
  rng = np.random.default_rng(seed)
  return {s: (rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8),
              rng.integers(0, classes, n).astype(np.int32))
          for s, n in (('train', n_train), ('test', n_test))}


def _config(tmp_path, source='cifar10', **data):
  c = default.get_config()
  c.data.source, c.data.name = source, source
  c.data.num_classes = 100 if source == 'cifar100' else 10
  c.data.cache_dir = str(tmp_path / 'cache')
  c.data.offline_npz = ''
  c.data.update(data)
  return c


def _release_like(path: pathlib.Path, **changes):
  """RELEASES' entry for a synthetic archive: its own size and sha256."""
  fields = {'size': path.stat().st_size, 'sha256': cifar._sha256(path), **changes}
  return dataclasses.replace(cifar.RELEASES['cifar10'], **fields)


@pytest.mark.parametrize('archive', [True, False], ids=['tar.gz', 'folder'])
def test_release_reads_in_file_order(tmp_path, archive):
  splits = _splits()
  root = write_cifar_release(tmp_path / 'rel', 'cifar10', splits, NAMES10, archive=archive)
  config = _config(tmp_path, root=str(root))
  for split, (x, y) in splits.items():
    a = cifar.load(config, split, None)
    np.testing.assert_array_equal(a.images, x)  # data_batch_1..5 in order, no shuffle
    np.testing.assert_array_equal(a.labels, y)
    assert a.num_classes == 10
  assert 'data_batch_1.bin, data_batch_2.bin' in cifar.load(config, 'train', None).description


def test_cifar100_reads_the_fine_label(tmp_path):
  splits = _splits(classes=100)
  root = write_cifar_release(tmp_path / 'rel', 'cifar100', splits,
                             [f'c{i}' for i in range(100)])
  a = cifar.load(_config(tmp_path, 'cifar100', root=str(root)), 'train', None)
  np.testing.assert_array_equal(a.labels, splits['train'][1])  # not the coarse byte (y // 5)
  assert a.num_classes == 100


def test_release_records_decode_as_the_shared_npz_rows(tmp_path, cifar10_npz):
  """The record format against the npz's own documented layout (R, G, B planes per row)."""
  with np.load(cifar10_npz) as f:
    rows, labels = f['x_test'][:300], f['y_test'][:300]
  nhwc = rows.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
  root = write_cifar_release(tmp_path / 'rel', 'cifar10',
                             {'train': (nhwc[:200], labels[:200]),
                              'test': (nhwc[200:], labels[200:])}, NAMES10, archive=False)
  via_release = cifar.load(_config(tmp_path, root=str(root)), 'train', None)
  npz = tmp_path / 'rows.npz'
  np.savez(npz, x_train=rows[:200], y_train=labels[:200])
  via_npz = data_sources.load_npz(str(npz), 'train', 'cifar_rows', None)
  np.testing.assert_array_equal(via_release.images, via_npz.images)
  np.testing.assert_array_equal(via_release.labels, via_npz.labels)


def test_where_the_images_come_from(tmp_path, monkeypatch):
  """root, then the downloaded file, then the offline npz, then a download (module docstring)."""
  root = write_cifar_release(tmp_path / 'rel', 'cifar10', _splits(), NAMES10)
  npz = tmp_path / 'local.npz'
  np.savez(npz, x_train=np.zeros((2, 3072), np.uint8), y_train=np.zeros(2, np.uint8))
  config = _config(tmp_path, offline_npz=str(npz))
  cached = cifar.downloads_dir(config) / 'cifar-10-binary.tar.gz'
  assert cifar.locate(config) == ('npz', npz)
  assert 'offline npz, the same images in the same order' in cifar.describe(config, 'train')
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b'')
  assert cifar.locate(config) == ('release', cached)
  config.data.root = str(root)
  assert cifar.locate(config) == ('release', root)
  config.data.root, config.data.offline_npz = '', ''
  cached.unlink()
  assert cifar.locate(config) == ('download', cached)
  assert 'to be downloaded to' in cifar.describe(config, 'train')
  # config.data.cache_dir='none' keeps the decoded arrays uncached; a download still needs a home
  config.data.cache_dir = 'none'
  monkeypatch.setenv('REACGAN_JAX_CACHE', str(tmp_path / 'root'))
  assert cifar.downloads_dir(config) == tmp_path / 'root' / 'downloads'


class _Server:
  """A local HTTP server for one file, counting requests; `cut` sends only part of it."""

  def __init__(self, folder: pathlib.Path, cut: int | None = None):
    server = self
    self.requests = 0

    class Handler(http.server.SimpleHTTPRequestHandler):
      def do_GET(self):  # noqa: N802
        server.requests += 1
        if cut is None:
          return super().do_GET()
        data = (folder / self.path.lstrip('/')).read_bytes()
        self.send_response(200)
        self.send_header('Content-Length', str(len(data)))
        self.end_headers()
        self.wfile.write(data[:cut])  # then the connection closes: a short read

      def log_message(self, *args):
        pass

    self.httpd = http.server.ThreadingHTTPServer(
        ('127.0.0.1', 0), functools.partial(Handler, directory=str(folder)))
    self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
    self.thread.start()

  def url(self, name: str) -> str:
    return f'http://127.0.0.1:{self.httpd.server_address[1]}/{name}'

  def close(self):
    self.httpd.shutdown()
    self.httpd.server_close()


@pytest.fixture
def served(tmp_path):
  splits = _splits()
  archive = write_cifar_release(tmp_path / 'mirror', 'cifar10', splits, NAMES10)
  servers = []

  def serve(cut=None):
    servers.append(_Server(archive.parent, cut))
    return servers[-1]

  yield archive, splits, serve
  for s in servers:
    s.close()


def test_download_once_then_read_from_the_cache(tmp_path, monkeypatch, served):
  archive, splits, serve = served
  monkeypatch.setitem(cifar.RELEASES, 'cifar10', _release_like(archive))
  server = serve()
  config = _config(tmp_path, download_url=server.url(archive.name))
  for _ in range(2):
    a = input_pipeline.load_arrays(config, 'train')
    np.testing.assert_array_equal(a[0], splits['train'][0])
  assert server.requests == 1
  target = cifar.downloads_dir(config) / 'cifar-10-binary.tar.gz'
  assert target.read_bytes() == archive.read_bytes()
  assert os.listdir(target.parent) == [target.name]  # no temporary file left
  assert input_pipeline.describe_source(config) == (
      f'cifar10 {target} (release; split train)')


def test_a_corrupt_or_cut_download_keeps_nothing(tmp_path, monkeypatch, served):
  archive, _, serve = served
  config = _config(tmp_path)
  target_dir = cifar.downloads_dir(config)
  # the right size, another sha256 (a mirror serving something else)
  monkeypatch.setitem(cifar.RELEASES, 'cifar10', _release_like(archive, sha256='0' * 64))
  config.data.download_url = serve().url(archive.name)
  with pytest.raises(InputError, match=r'^[^\n]*not the release .*nothing was kept'):
    cifar.load(config, 'train', None)
  assert not target_dir.exists() or os.listdir(target_dir) == []
  # a connection that closes half way
  monkeypatch.setitem(cifar.RELEASES, 'cifar10', _release_like(archive))
  config.data.download_url = serve(cut=archive.stat().st_size // 2).url(archive.name)
  with pytest.raises((InputError, MissingFileError)):
    cifar.load(config, 'train', None)
  assert os.listdir(target_dir) == []


def test_offline_says_where_to_put_the_file(tmp_path):
  config = _config(tmp_path, download_url='http://127.0.0.1:9/cifar-10-binary.tar.gz')
  with pytest.raises(MissingFileError) as e:
    cifar.load(config, 'train', None)
  msg = str(e.value)
  assert '\n' not in msg and 'Could not download http://127.0.0.1:9/' in msg
  assert 'c4a38c50a1bc5f3a1c5537f2155ab9d68f9f25eb1ed8d9ddda3db29a59bca1dd' in msg
  assert str(cifar.downloads_dir(config) / 'cifar-10-binary.tar.gz') in msg
  config.data.download = False
  with pytest.raises(MissingFileError, match='config.data.download is off'):
    cifar.load(config, 'train', None)


def test_a_truncated_cached_file_is_named(tmp_path):
  config = _config(tmp_path)
  cached = cifar.downloads_dir(config) / 'cifar-10-binary.tar.gz'
  cached.parent.mkdir(parents=True)
  cached.write_bytes(b'\x1f\x8b' + b'\0' * 100)
  with pytest.raises(InputError, match=r'102 bytes, not 170,052,171: a partial or foreign file'):
    cifar.load(config, 'train', None)


def test_a_foreign_root_is_one_line(tmp_path):
  bad = tmp_path / 'x.tar.gz'
  bad.write_bytes(b'not a tar')
  with pytest.raises(InputError, match='is not a readable cifar-10-binary.tar.gz'):
    cifar.load(_config(tmp_path, root=str(bad)), 'train', None)
  folder = tmp_path / 'empty'
  folder.mkdir()
  with pytest.raises(InputError, match='has no data_batch_1.bin'):
    cifar.load(_config(tmp_path, root=str(folder)), 'train', None)
  with pytest.raises(MissingFileError, match='does not exist'):
    cifar.load(_config(tmp_path, root=str(tmp_path / 'nothing')), 'train', None)


def test_the_cifar10_configs_read_the_release_and_studiogan_maps_to_it(tmp_path):
  c = cifar10_reacgan.get_config('small')
  assert (c.data.source, c.data.name, c.data.download) == ('cifar10', 'cifar10', True)
  assert keys.DATASETS['CIFAR10']['data.source'] == 'cifar10'
  assert keys.DATASETS['CIFAR100']['data.source'] == 'cifar100'
  c.data.name = 'cifar100'
  with pytest.raises(ConfigError, match='set --config.data.name=cifar10'):
    validate.validate_config(c)


def test_the_main_job_data_path_never_imports_tensorflow(tmp_path, monkeypatch, cifar10_npz):
  """The shipped cifar10 config, offline (the shared npz): TF and TFDS unimportable."""
  for name in [n for n in sys.modules if n.split('.')[0] in ('tensorflow', 'tensorflow_datasets')]:
    monkeypatch.delitem(sys.modules, name)
  monkeypatch.setitem(sys.modules, 'tensorflow', None)
  monkeypatch.setitem(sys.modules, 'tensorflow_datasets', None)
  c = cifar10_reacgan.get_config('small')
  c.data.offline_npz, c.data.cache_dir = str(cifar10_npz), 'none'
  source = input_pipeline.open_train_source(c)
  assert len(source.arrays.labels) == 50_000 and source.arrays.description.startswith('npz')
  images, labels = input_pipeline.load_arrays(c, 'test')
  assert images.shape == (10_000, 32, 32, 3) and labels.max() == 9


def test_a_full_disk_during_the_download_is_one_line_and_keeps_nothing(tmp_path, monkeypatch,
                                                                       served):
  archive, _, serve = served
  monkeypatch.setitem(cifar.RELEASES, 'cifar10', _release_like(archive))
  config = _config(tmp_path, download_url=serve().url(archive.name))

  class FullDisk(io.FileIO):
    def write(self, data):
      super().write(data[:10])
      raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(cifar, 'open', lambda path, mode: FullDisk(path, mode), raising=False)
  with pytest.raises(MissingFileError, match=r'^No space left on .* for cifar-10-binary.tar.gz '
                                             r'\(\d+ MB\): free space there, or set'):
    cifar.load(config, 'train', None)
  assert os.listdir(cifar.downloads_dir(config)) == []


def test_the_offline_npz_is_held_to_the_configured_resolution(tmp_path):
  """The npz fallback of the CIFAR source gets the npz checks (Arrays.from_npz, set by the npz
  reader; it was told by the description's prefix): 16x16 images for image_size 32 are refused,
  never resized silently."""
  npz = tmp_path / 'small.npz'
  np.savez(npz, x_train=np.zeros((4, 16, 16, 3), np.uint8), y_train=np.arange(4) % 10)
  config = _config(tmp_path, offline_npz=str(npz))
  with pytest.raises(ValueError, match='npz_resize'):
    input_pipeline.load_arrays(config, 'train')
