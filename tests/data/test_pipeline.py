"""Input pipeline: exact pixels from each source, determinism, resume, per-process shards, errors.

References are independent of the pipeline: the CIFAR rows are decoded straight from the zip
stream with the README's formula, synthetic images carry their own index in their pixels, and
batch contents are identified by those pixels, never by re-running the pipeline's index logic.
"""

import io
import logging
import os
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import default
from reacgan_jax import errors
from reacgan_jax.data import pipeline as input_pipeline
from reacgan_jax.data import sources as data_sources

CHECK_INDICES = [0, 1, 777, 2048, 4999]  # pixel-checked CIFAR-10 train images


def _config(tmp_path=None, **data):
  c = default.get_config()
  c.seed = 0
  c.data.source = 'npz'
  c.data.image_size = 8
  c.data.num_classes = 3
  c.data.random_flip = False
  c.data.prefetch = 0
  c.data.cache_dir = str(tmp_path / 'cache') if tmp_path is not None else 'none'
  c.train.batch_size = 12
  for k, v in data.items():
    setattr(c.data, k, v)
  return c


def _synthetic(n, num_classes=3, size=8, seed=0):
  """uint8 [n, size, size, 3]: channels 0/1 hold the index (low/high byte) everywhere and
  channel 2 grows left to right, so an image says which one it is and whether it was mirrored."""
  idx = np.arange(n)
  x = np.zeros((n, size, size, 3), np.uint8)
  x[..., 0] = (idx % 256)[:, None, None]
  x[..., 1] = (idx // 256)[:, None, None]
  x[..., 2] = (np.arange(size) * (255 // size))[None, None, :]
  labels = np.random.default_rng(seed).integers(0, num_classes, n)
  labels[:num_classes] = np.arange(num_classes)  # every class present
  return x, labels.astype(np.int32)


def _write_npz(path, x, y, compressed=False, **extra):
  (np.savez_compressed if compressed else np.savez)(path, x_train=x, y_train=y, **extra)
  return str(path)


def _identify(batch_image):
  """float32 [b, S, S, 3] of synthetic images -> (indices [b], mirrored [b])."""
  u8 = np.rint((batch_image + 1.0) * 127.5).astype(np.int64)
  idx = u8[:, 0, 0, 0] + 256 * u8[:, 0, 0, 1]
  mirrored = u8[:, 0, 0, 2] > u8[:, 0, -1, 2]
  return idx, mirrored


def _fingerprints(images):
  """int64 [N]: a hash of 64 fixed byte positions of each uint8 image (wrapping int64 sum).

  Equal images hash equal; two different CIFAR images agreeing on 64 random byte values is not
  expected (and could only make the test miss a duplicated image, never fail a correct run).
  """
  flat = images.reshape(len(images), -1)
  rng = np.random.default_rng(123)
  pos = rng.choice(flat.shape[1], 64, replace=False)
  words = np.ascontiguousarray(flat[:, pos]).view(np.int64)  # [N, 8]
  return (words * rng.integers(-2**62, 2**62, 8)).sum(1)


def _take(it, n):
  return [next(it) for _ in range(n)]


@pytest.fixture(autouse=True)
def _fresh_memo():
  yield
  data_sources.clear_memo()


# ---- CIFAR-10 npz (shared data) ---------------------------------------------------------------


def _npz_rows_prefix(path, key, rows):
  """The first `rows` rows of an npz member, decoded from the (LZMA) zip stream directly."""
  with zipfile.ZipFile(path) as zf, zf.open(f'{key}.npy') as f:
    version = np.lib.format.read_magic(f)
    read_header = {(1, 0): np.lib.format.read_array_header_1_0,
                   (2, 0): np.lib.format.read_array_header_2_0}[version]
    shape, _, dtype = read_header(f)
    width = int(np.prod(shape[1:]))
    data = f.read(rows * width * dtype.itemsize)
  return np.frombuffer(data, dtype).reshape(rows, *shape[1:])


@pytest.fixture(scope='module')
def cifar_train(cifar10_npz):
  """(images, labels) of CIFAR-10 train through load_arrays (decoded once, then the disk cache)."""
  c = _config(npz_path=str(cifar10_npz), npz_layout='cifar_rows', image_size=32, num_classes=10)
  c.data.cache_dir = ''  # the user cache: later sessions skip the 10 s LZMA decode
  return input_pipeline.load_arrays(c, 'train')


def test_cifar_rows_exact_pixels_and_labels(cifar10_npz, cifar_train):
  images, labels = cifar_train
  assert images.shape == (50000, 32, 32, 3) and images.dtype == np.uint8
  assert labels.dtype == np.int32
  rows = _npz_rows_prefix(cifar10_npz, 'x_train', max(CHECK_INDICES) + 1)
  for i in CHECK_INDICES:  # README: reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    ref = np.stack([rows[i, c * 1024:(c + 1) * 1024].reshape(32, 32) for c in range(3)], -1)
    np.testing.assert_array_equal(images[i], ref)
  y_ref = _npz_rows_prefix(cifar10_npz, 'y_train', 50000)
  np.testing.assert_array_equal(labels, y_ref.astype(np.int32))
  # README: train per-channel means 125.307 / 122.950 / 113.865.
  np.testing.assert_allclose(images.mean((0, 1, 2), dtype=np.float64),
                             [125.307, 122.950, 113.865], atol=2e-3)


def test_cifar_nhwc_layout_matches_rows(tmp_path, cifar_train):
  images, labels = cifar_train
  path = _write_npz(tmp_path / 'small.npz', images[:300], labels[:300])
  c = _config(tmp_path, npz_path=path, npz_layout='nhwc', image_size=32, num_classes=10)
  x, y = input_pipeline.load_arrays(c, 'train')
  np.testing.assert_array_equal(x, images[:300])
  np.testing.assert_array_equal(y, labels[:300])
  c.data.npz_layout = 'cifar_rows'
  with pytest.raises(ValueError, match='npz_layout=nhwc'):
    input_pipeline.load_arrays(c, 'train')


def test_cifar_epoch_is_every_image_once_balanced_and_scaled(cifar10_npz, cifar_train):
  images, labels = cifar_train
  c = _config(npz_path=str(cifar10_npz), npz_layout='cifar_rows', image_size=32, num_classes=10)
  c.data.cache_dir = ''
  c.train.batch_size = 1000
  c.data.random_flip = True
  it = input_pipeline.create_train_iterator(c, process_index=0, process_count=1)
  ref_fp, ref_mirror_fp = _fingerprints(images), _fingerprints(images[:, :, ::-1])
  sorted_ref = fp_ref = np.sort(ref_fp)
  canon = np.minimum(ref_fp, ref_mirror_fp)  # the same for an image and its mirror
  label_of = dict(zip(canon.tolist(), labels.tolist(), strict=False))
  got, counts, flipped = [], np.zeros(10, np.int64), 0
  for batch in _take(it, 50):
    x, y = batch['image'], batch['label']
    assert x.dtype == np.float32 and y.dtype == np.int32 and x.shape == (1000, 32, 32, 3)
    u8 = np.rint((x + 1.0) * 127.5)
    if not got:  # value checks on one batch (they cost more than the pipeline)
      assert x.min() >= -1.0 and x.max() <= 1.0
      np.testing.assert_allclose(x, u8 / 127.5 - 1.0, atol=1e-6)  # exactly k / 127.5 - 1
    u8 = u8.astype(np.uint8)
    fp, fp_m = _fingerprints(u8), _fingerprints(u8[:, :, ::-1])
    flipped += int(np.sum(sorted_ref[np.searchsorted(sorted_ref, fp).clip(0, len(fp_ref) - 1)]
                          != fp))
    got.append(np.minimum(fp, fp_m))
    assert [label_of[f] for f in got[-1].tolist()] == y.tolist()
    counts += np.bincount(y, minlength=10)
  np.testing.assert_array_equal(counts, [5000] * 10)
  # 50 batches of 1000 = one epoch: the multiset of images equals the dataset's.
  np.testing.assert_array_equal(np.sort(np.concatenate(got)), np.sort(canon))
  assert 0.45 < flipped / 50000 < 0.55


# ---- determinism, resume, processes -----------------------------------------------------------


def test_same_seed_same_batches_resume_and_other_seed(tmp_path):
  x, y = _synthetic(50)  # 50 is no multiple of 12: batches straddle epochs
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), random_flip=True)
  run = _take(input_pipeline.create_train_iterator(c, process_index=0, process_count=1), 12)
  again = _take(input_pipeline.create_train_iterator(c, process_index=0, process_count=1), 12)
  for a, b in zip(run, again, strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
  for k in (1, 4, 9):
    resumed = _take(input_pipeline.create_train_iterator(
        c, start_step=k, process_index=0, process_count=1), 12 - k)
    for a, b in zip(run[k:], resumed, strict=True):
      np.testing.assert_array_equal(a['image'], b['image'])
      np.testing.assert_array_equal(a['label'], b['label'])
  c.seed = 1
  other = _take(input_pipeline.create_train_iterator(c, process_index=0, process_count=1), 2)
  assert not np.array_equal(other[0]['image'], run[0]['image'])
  # Each epoch of 50 (positions [50e, 50e + 50) of the stream) holds every image once.
  ids = np.concatenate([_identify(b['image'])[0] for b in run])
  for e in range(2):
    np.testing.assert_array_equal(np.sort(ids[50 * e:50 * e + 50]), np.arange(50))
  assert not np.array_equal(ids[:50], ids[50:100])  # a new permutation per epoch
  flips = np.concatenate([_identify(b['image'])[1] for b in run])
  assert 0.3 < flips.mean() < 0.7
  labels = np.concatenate([b['label'] for b in run])
  np.testing.assert_array_equal(labels, y[ids])


@pytest.mark.parametrize('process_count', [2, 4])
def test_processes_read_disjoint_contiguous_slices(tmp_path, process_count):
  x, y = _synthetic(96)
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), random_flip=True)
  steps = 96 // c.train.batch_size  # one epoch
  full = _take(input_pipeline.create_train_iterator(c, process_index=0, process_count=1), steps)
  per_proc = [_take(input_pipeline.create_train_iterator(
      c, process_index=p, process_count=process_count), steps) for p in range(process_count)]
  local = c.train.batch_size // process_count
  shares = []
  for batches in per_proc:
    assert batches[0]['image'].shape == (local, 8, 8, 3)
    shares.append(np.concatenate([_identify(b['image'])[0] for b in batches]))
  for p in range(process_count):
    for q in range(p):
      assert not set(shares[p]) & set(shares[q])
  np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(96))
  for k in range(steps):  # each process holds its contiguous part of the global batch
    stitched = np.concatenate([per_proc[p][k]['image'] for p in range(process_count)])
    np.testing.assert_array_equal(stitched, full[k]['image'])


def test_batch_not_divisible_by_processes(tmp_path):
  x, y = _synthetic(20)
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y))
  with pytest.raises(ValueError, match='config.train.batch_size=12'):
    input_pipeline.create_train_iterator(c, process_index=0, process_count=5)


def test_prefetch_thread_yields_the_same_batches(tmp_path):
  x, y = _synthetic(40)
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), random_flip=True)
  plain = _take(input_pipeline.create_train_iterator(c, process_index=1, process_count=2), 6)
  c.data.prefetch = 3
  it = input_pipeline.create_train_iterator(c, process_index=1, process_count=2)
  for a, b in zip(plain, _take(it, 6), strict=True):
    np.testing.assert_array_equal(a['image'], b['image'])
  it.close()


def test_class_balanced_batches(tmp_path):
  x, y = _synthetic(30)
  y[:] = np.r_[np.zeros(20), np.ones(4), np.full(6, 2)]  # 20 / 4 / 6 images per class
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), class_balanced=True)
  c.train.batch_size = 6
  for b in _take(input_pipeline.create_train_iterator(c, process_index=0, process_count=1), 20):
    np.testing.assert_array_equal(np.bincount(b['label'], minlength=3), [2, 2, 2])
    ids, _ = _identify(b['image'])
    np.testing.assert_array_equal(y[ids], b['label'])


# ---- npz checks and cache ----------------------------------------------------------------------


def test_npz_config_mismatches_are_clear(tmp_path):
  x, y = _synthetic(20)
  path = _write_npz(tmp_path / 'd.npz', x, y)
  with pytest.raises(ValueError, match=r'labels span \[0, 2\].*num_classes'):
    input_pipeline.load_arrays(_config(npz_path=path, num_classes=2), 'train')
  named = _write_npz(tmp_path / 'n.npz', x, y, label_names=np.array(['a', 'b', 'c']))
  with pytest.raises(ValueError, match='--config.data.num_classes=3'):
    input_pipeline.load_arrays(_config(npz_path=named, num_classes=4), 'train')
  with pytest.raises(ValueError, match='x_test'):
    input_pipeline.load_arrays(_config(npz_path=path), 'test')
  with pytest.raises(FileNotFoundError, match='npz_path'):
    input_pipeline.load_arrays(_config(npz_path=str(tmp_path / 'nope.npz')), 'train')
  bad = _write_npz(tmp_path / 'c.npz', x[..., :2], y)
  with pytest.raises(ValueError, match='2 channels'):
    input_pipeline.load_arrays(_config(npz_path=bad), 'train')


def test_npz_resized_to_image_size(tmp_path):
  x, y = _synthetic(6, size=16)
  x[..., 2] = 200  # constant images stay constant under any interpolation
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), image_size=8)
  with pytest.raises(ValueError, match='npz_resize'):  # never resized silently
    input_pipeline.load_arrays(c, 'train')
  c.data.npz_resize = True
  images, _ = input_pipeline.load_arrays(c, 'train')
  assert images.shape == (6, 8, 8, 3)
  np.testing.assert_array_equal(images, np.broadcast_to(x[:, :1, :1], (6, 8, 8, 3)))


def test_decoded_npz_cache(tmp_path):
  x, y = _synthetic(20)
  path = _write_npz(tmp_path / 'd.npz', x, y, compressed=True)
  c = _config(tmp_path, npz_path=path)
  a, _ = input_pipeline.load_arrays(c, 'train')
  cached = list((tmp_path / 'cache' / 'npz').glob('d-*/x_train.npy'))
  assert len(cached) == 1
  np.testing.assert_array_equal(np.load(cached[0]), x)
  data_sources.clear_memo()
  np.save(cached[0], x[::-1])  # proves the second load reads the cache, not the zip
  b, _ = input_pipeline.load_arrays(c, 'train')
  np.testing.assert_array_equal(b, x[::-1])
  data_sources.clear_memo()
  x2 = x.copy()
  x2[:, 1] = 7
  _write_npz(tmp_path / 'd.npz', x2, y, compressed=True)
  os.utime(path, ns=(1, 1))  # a new version of the file (other mtime) -> a new cache entry
  c2, _ = input_pipeline.load_arrays(c, 'train')
  np.testing.assert_array_equal(c2, x2)


# ---- folder ----------------------------------------------------------------------------------


def _png(path, arr, fmt='PNG', mode=None):
  img = Image.fromarray(arr) if mode is None else Image.fromarray(arr, mode)
  path.parent.mkdir(parents=True, exist_ok=True)
  img.save(path, format=fmt)


def test_folder_source(tmp_path):
  rng = np.random.default_rng(0)
  root = tmp_path / 'imgs'
  rgb = rng.integers(0, 256, (8, 8, 3), np.uint8)
  smooth = (np.arange(8)[:, None, None] * 20 + np.arange(3) * 40 + 30).astype(np.uint8)
  smooth = np.broadcast_to(smooth, (8, 8, 3)).copy()
  rgba = rng.integers(0, 256, (8, 8, 4), np.uint8)
  grey = rng.integers(0, 256, (8, 8), np.uint8)
  _png(root / 'b_cat' / '0.png', rgb)
  _png(root / 'b_cat' / '1.PNG', rgba)
  _png(root / 'a_ant' / 'x.png', grey)
  _png(root / 'c_dog' / 'z.jpeg', smooth, fmt='JPEG')
  _png(root / 'c_dog' / 'big.JPG', rng.integers(0, 256, (20, 16, 3), np.uint8), fmt='JPEG')
  (root / 'c_dog' / 'notes.txt').write_text('not an image')
  c = _config(tmp_path, source='folder', folder=str(root))
  images, labels = input_pipeline.load_arrays(c, 'train')
  assert images.shape == (5, 8, 8, 3)
  # Sorted class folders give the ids; files sorted inside a class.
  np.testing.assert_array_equal(labels, [0, 1, 1, 2, 2])
  np.testing.assert_array_equal(images[0], np.repeat(grey[..., None], 3, -1))  # grey -> RGB
  np.testing.assert_array_equal(images[1], rgb)
  np.testing.assert_array_equal(images[2], rgba[..., :3])  # alpha dropped
  assert np.abs(images[4].astype(int) - smooth).max() < 12  # JPEG is lossy
  assert 'folder' in input_pipeline.describe_source(c)
  # Training batches come from the same arrays.
  batch = next(input_pipeline.create_train_iterator(c, process_index=0, process_count=1))
  assert batch['image'].shape == (12, 8, 8, 3) and set(batch['label']) <= {0, 1, 2}

  # root/<split>/<class>/ is used when it exists.
  _png(tmp_path / 'split' / 'test' / 'only' / 'a.png', rgb)
  c2 = _config(source='folder', folder=str(tmp_path / 'split'), num_classes=1)
  np.testing.assert_array_equal(input_pipeline.load_arrays(c2, 'test')[0][0], rgb)

  (root / 'd_empty').mkdir()
  c.data.num_classes = 4
  with pytest.raises(ValueError, match='d_empty'):
    input_pipeline.load_arrays(c, 'train')
  (root / 'd_empty' / 'broken.png').write_bytes(b'\x89PNG\r\n\x1a\nthis is no png')
  with pytest.raises(ValueError, match=r'broken\.png'):
    input_pipeline.load_arrays(c, 'train')
  (root / 'd_empty' / 'broken.png').unlink()
  _png(root / 'd_empty' / 'ok.png', rgb)
  with pytest.raises(ValueError, match='config.data.num_classes=3'):
    input_pipeline.load_arrays(_config(tmp_path, source='folder', folder=str(root)), 'train')


def test_folder_center_crop(tmp_path):
  wide = np.zeros((8, 16, 3), np.uint8)
  wide[:, 4:12] = 255  # the centred 8x8 square is all white
  _png(tmp_path / 'r' / 'a' / 'w.png', wide)
  c = _config(source='folder', folder=str(tmp_path / 'r'), num_classes=1, crop='center')
  np.testing.assert_array_equal(input_pipeline.load_arrays(c, 'train')[0][0], 255)


# ---- TFDS (mocked: never the network) ---------------------------------------------------------

N_TFDS = 40


def _fake_tfds(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  """A split-aware fake `as_dataset`: example i is _synthetic image i (32x32) with label i % 10."""
  import tensorflow as tf  # noqa: PLC0415
  from tensorflow_datasets.core import splits as splits_lib  # noqa: PLC0415

  del read_config, shuffle_files, kwargs
  infos = splits_lib.SplitDict([splits_lib.SplitInfo(name='train', shard_lengths=[N_TFDS],
                                                     num_bytes=0)])
  if split == 'train':
    ids = np.arange(N_TFDS)
  else:  # tfds.split_for_jax_process's share
    (inst,) = split.to_absolute(infos)
    ids = np.arange(inst.from_ or 0, N_TFDS if inst.to is None else inst.to)
  images, _ = _synthetic(N_TFDS, size=32)
  encode = decoders is not None and 'image' in decoders
  ds = tf.data.Dataset.from_tensor_slices({'image': images[ids], 'label': ids % 10})
  if encode:
    ds = ds.map(lambda ex: {'image': tf.io.encode_png(ex['image']), 'label': ex['label']})
  return ds


@pytest.fixture
def mock_tfds():
  tfds = pytest.importorskip('tensorflow_datasets')
  with tfds.testing.mock_data(as_dataset_fn=_fake_tfds):
    yield


def _tfds_config(**data):
  c = _config(source='tfds', name='cifar10', image_size=32, num_classes=10, **data)
  c.train.batch_size = 8
  return c


def test_tfds_in_memory(mock_tfds):
  c = _tfds_config(load='memory')
  assert 'in memory' in input_pipeline.describe_source(c)
  images, labels = input_pipeline.load_arrays(c, 'train')
  ref, _ = _synthetic(N_TFDS, size=32)
  np.testing.assert_array_equal(images, ref)
  np.testing.assert_array_equal(labels, np.arange(N_TFDS) % 10)
  shares = []
  for p in range(2):
    it = input_pipeline.create_train_iterator(c, process_index=p, process_count=2)
    shares.append(np.concatenate([_identify(b['image'])[0] for b in _take(it, 5)]))
  np.testing.assert_array_equal(np.sort(np.concatenate(shares)), np.arange(N_TFDS))


def test_tfds_stream_shards_by_process(mock_tfds):
  c = _tfds_config(load='stream', shuffle_buffer=4, random_flip=True)
  assert 'streamed' in input_pipeline.describe_source(c)
  shares = []
  for p in range(2):
    it = input_pipeline.create_train_iterator(c, process_index=p, process_count=2)
    batches = _take(it, 10)  # 40 examples = two passes over this process's 20
    assert batches[0]['image'].shape == (4, 32, 32, 3)
    assert batches[0]['image'].dtype == np.float32 and batches[0]['label'].dtype == np.int32
    ids = np.concatenate([_identify(b['image'])[0] for b in batches])
    np.testing.assert_array_equal(np.concatenate([b['label'] for b in batches]), ids % 10)
    shares.append(set(ids))
    resumed = next(input_pipeline.create_train_iterator(c, start_step=3, process_index=p,
                                                        process_count=2))
    np.testing.assert_array_equal(resumed['image'], batches[3]['image'])
  assert not shares[0] & shares[1]
  assert shares[0] | shares[1] == set(range(N_TFDS))


def test_tfds_offline_fallback_and_clear_error(tmp_path, caplog):
  pytest.importorskip('tensorflow_datasets')
  x, y = _synthetic(30, num_classes=10, size=32)
  rows = x.transpose(0, 3, 1, 2).reshape(30, -1)  # CIFAR row layout, as the shared file
  fallback = _write_npz(tmp_path / 'offline.npz', rows, y)
  c = _tfds_config(tfds_data_dir=str(tmp_path / 'empty_tfds'), offline_npz=fallback)
  with caplog.at_level(logging.WARNING):
    images, labels = input_pipeline.load_arrays(c, 'train')
  np.testing.assert_array_equal(images, x)
  np.testing.assert_array_equal(labels, y)
  assert any('offline.npz' in r.getMessage() for r in caplog.records
             if r.levelno >= logging.WARNING)
  assert 'offline.npz' in input_pipeline.describe_source(c)

  c.data.offline_npz = ''
  with pytest.raises(FileNotFoundError) as err:
    input_pipeline.load_arrays(c, 'train')
  msg = str(err.value)
  assert 'tfds build cifar10' in msg and 'empty_tfds' in msg
  assert '--config.data.source=npz --config.data.npz_path' in msg
  c.data.offline_npz = str(tmp_path / 'missing.npz')
  with pytest.raises(FileNotFoundError, match='missing.npz'):
    input_pipeline.describe_source(c)


def test_unknown_source_and_crop(tmp_path):
  with pytest.raises(ValueError, match='config.data.source'):
    input_pipeline.describe_source(_config(source='hdf5'))
  x, y = _synthetic(6)
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), crop='random')
  with pytest.raises(ValueError, match='config.data.crop'):
    input_pipeline.load_arrays(c, 'train')


def test_png_roundtrip_helper_is_lossless(tmp_path):
  """Guards the folder test's premise: PNG stores uint8 RGB exactly."""
  arr = np.random.default_rng(1).integers(0, 256, (5, 7, 3), np.uint8)
  buf = io.BytesIO()
  Image.fromarray(arr).save(buf, format='PNG')
  np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(buf.getvalue()))), arr)


def test_prefetch_thread_stops_when_dropped_and_reraises(tmp_path):
  import gc  # noqa: PLC0415

  x, y = _synthetic(40)
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y), prefetch=2)
  it = input_pipeline.create_train_iterator(c, process_index=0, process_count=1)
  next(it)
  thread = it._thread
  del it
  gc.collect()
  thread.join(5)
  assert not thread.is_alive()  # dropping the iterator stops its thread

  def failing():
    yield 1
    raise RuntimeError('source broke')

  it = input_pipeline._Prefetch(failing(), 2)
  assert next(it) == 1
  with pytest.raises(RuntimeError, match='source broke'):
    next(it)


def test_folder_cache_follows_file_changes(tmp_path):
  rng = np.random.default_rng(3)
  a, b = (rng.integers(0, 256, (8, 8, 3), np.uint8) for _ in range(2))
  root = tmp_path / 'r'
  _png(root / 'k' / 'a.png', a)
  c = _config(tmp_path, source='folder', folder=str(root), num_classes=1)
  np.testing.assert_array_equal(input_pipeline.load_arrays(c, 'train')[0][0], a)
  assert len(list((tmp_path / 'cache' / 'folder').glob('*/images.npy'))) == 1
  data_sources.clear_memo()
  _png(root / 'k' / 'a.png', b)  # same name, new content: the cache key changes
  os.utime(root / 'k' / 'a.png', ns=(2, 2))
  np.testing.assert_array_equal(input_pipeline.load_arrays(c, 'train')[0][0], b)


def test_default_process_from_jax(tmp_path):
  x, y = _synthetic(24)
  c = _config(npz_path=_write_npz(tmp_path / 'd.npz', x, y))
  a = next(input_pipeline.create_train_iterator(c))  # one process in tests
  b = next(input_pipeline.create_train_iterator(c, process_index=0, process_count=1))
  np.testing.assert_array_equal(a['image'], b['image'])


def test_tfds_auto_streams_large_splits(mock_tfds, monkeypatch):
  c = _tfds_config(load='auto', shuffle_buffer=4)
  assert 'in memory' in input_pipeline.describe_source(c)
  monkeypatch.setattr(data_sources, 'STREAM_THRESHOLD_BYTES', -1)  # every split is "large"
  assert 'streamed' in input_pipeline.describe_source(c)
  c.data.load = 'bogus'
  with pytest.raises(ValueError, match='config.data.load'):
    input_pipeline.describe_source(c)


def test_train_per_class_keeps_the_first_n_of_each_class_in_file_order():
  from reacgan_jax.data import sources as data_sources  # noqa: PLC0415

  labels = np.array([2, 0, 0, 1, 2, 0, 1, 2, 2], np.int32)
  images = np.arange(9, dtype=np.uint8)[:, None, None, None] * np.ones((1, 2, 2, 3), np.uint8)
  got = input_pipeline.limit_per_class(data_sources.Arrays(images, labels, 3, 'toy'), 2)
  np.testing.assert_array_equal(got.labels, [2, 0, 0, 1, 2, 1])
  np.testing.assert_array_equal(got.images[:, 0, 0, 0], [0, 1, 2, 3, 4, 6])
  assert input_pipeline.limit_per_class(got, -1) is got


def test_folder_eval_split_uses_the_training_class_ids_and_names_a_missing_class(tmp_path):
  """Issue 26: a test split without one class folder shifted every later class id by one, and
  the error advised --config.data.num_classes=<one less>, which would break training."""
  rng = np.random.default_rng(0)
  root = tmp_path / 'imgs'
  for split, classes in (('train', ('ant', 'bee', 'cat')), ('test', ('ant', 'cat'))):
    for name in classes:
      _png(root / split / name / '0.png', rng.integers(0, 256, (8, 8, 3), np.uint8))
  c = _config(tmp_path, source='folder', folder=str(root), num_classes=3)
  with pytest.raises(errors.InputError, match=r"lacks class 'bee' \(id 1\)") as e:
    input_pipeline.load_arrays(c, 'test')
  assert 'num_classes' not in str(e.value) and 'eval_split' in str(e.value)
  _png(root / 'test' / 'bee' / '0.png', rng.integers(0, 256, (8, 8, 3), np.uint8))
  _png(root / 'test' / 'dog' / '0.png', rng.integers(0, 256, (8, 8, 3), np.uint8))
  with pytest.raises(errors.InputError, match=r"class folders \['dog'\]"):
    input_pipeline.load_arrays(c, 'test')
  (root / 'test' / 'dog' / '0.png').unlink()
  (root / 'test' / 'dog').rmdir()
  np.testing.assert_array_equal(input_pipeline.load_arrays(c, 'test')[1], [0, 1, 2])
