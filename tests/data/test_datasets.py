"""Dataset layouts (reacgan_jax/data/datasets.py) and the CUB200 / Tiny-ImageNet / ArtBench-10
configs.

Every fixture is synthetic, written under tmp_path in the dataset's own release layout; no
network, no real data. Expected arrays are built independently of the loader (numpy slicing,
the CIFAR record format written by hand here).
"""

import io
import os
import pathlib
import pickle
import zipfile

import numpy as np
import pytest
from PIL import Image

from configs import (
    artbench10_reacgan_diffaug,
    cifar10_biggan_pd,
    cifar10_reacgan,
    cifar10_sngan_pd,
    cub200_reacgan,
    default,
    imagenet128_reacgan,
    tiny_imagenet_reacgan,
)
from reacgan_jax.data import datasets
from reacgan_jax.data import pipeline as input_pipeline
from reacgan_jax.data import sources as data_sources
from reacgan_jax.studiogan import yaml_import as from_studiogan

FIXTURES = str(pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'studiogan_configs')
WNIDS = ('n01443537', 'n01629819', 'n02124075')  # deliberately written out of order below


@pytest.fixture(autouse=True)
def _fresh_memo():
  data_sources.clear_memo()
  yield
  data_sources.clear_memo()


def _small(config, tmp_path, **data):
  config.data.cache_dir = str(tmp_path / 'cache')
  config.data.prefetch = 0
  for k, v in data.items():
    setattr(config.data, k, v)
  return config


# ---- Tiny-ImageNet ----------------------------------------------------------------------------


def _tiny_image(cls, idx, gray=False):
  """64x64 uniform image: R = 40 * class + 20, G = 8 * index + 4 (JPEG keeps flat colours)."""
  x = np.zeros((64, 64, 3), np.uint8)
  x[..., 0], x[..., 1], x[..., 2] = 40 * cls + 20, 8 * idx + 4, 128
  return Image.fromarray(x).convert('L') if gray else Image.fromarray(x)


def _jpeg(img):
  buf = io.BytesIO()
  img.save(buf, format='JPEG', quality=95)
  return buf.getvalue()


def _tiny_files():
  """{relative path: bytes} of a tiny-imagenet-200 release with 3 classes, 2 + 4 images."""
  files = {'tiny-imagenet-200/wnids.txt': '\n'.join(reversed(WNIDS)).encode(),
           'tiny-imagenet-200/test/images/test_0.JPEG': _jpeg(_tiny_image(0, 9))}
  for c, w in enumerate(WNIDS):
    boxes = []
    for i in range(2):
      name = f'{w}_{i}.JPEG'
      files[f'tiny-imagenet-200/train/{w}/images/{name}'] = _jpeg(_tiny_image(c, i, gray=i == 1))
      boxes.append(f'{name}\t0\t0\t63\t63')
    files[f'tiny-imagenet-200/train/{w}/{w}_boxes.txt'] = '\n'.join(boxes).encode()
  val = [(0, 2), (2, 1), (1, 0), (2, 3)]  # (class, val index)
  ann = []
  for c, i in val:
    files[f'tiny-imagenet-200/val/images/val_{i}.JPEG'] = _jpeg(_tiny_image(c, 10 + i))
    ann.append(f'val_{i}.JPEG\t{WNIDS[c]}\t0\t0\t63\t63')
  files['tiny-imagenet-200/val/val_annotations.txt'] = ('\n'.join(ann) + '\n').encode()
  return files


def _write_tree(root, files):
  for rel, data in files.items():
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(data)


def _classes_and_ids(images):
  """Recovers (class, index) from the flat colours of _tiny_image (gray: from luminance)."""
  r, g = images[:, 32, 32, 0].astype(int), images[:, 32, 32, 1].astype(int)
  return np.rint((r - 20) / 40).astype(int), np.rint((g - 4) / 8).astype(int)


def _tiny_config(tmp_path, root, **data):
  data = {'num_classes': 3, **data}
  c = _small(tiny_imagenet_reacgan.get_config(), tmp_path, root=str(root), **data)
  c.train.batch_size = 4
  return c


def test_tiny_imagenet_official_layout_dir_and_zip(tmp_path):
  files = _tiny_files()
  _write_tree(tmp_path / 'unpacked', files)
  zpath = tmp_path / 'tiny-imagenet-200.zip'
  with zipfile.ZipFile(zpath, 'w') as z:
    for rel, data in files.items():
      z.writestr(rel, data)
  loaded = {}
  for name, root in [('parent', tmp_path / 'unpacked'),
                     ('dir', tmp_path / 'unpacked' / 'tiny-imagenet-200'), ('zip', zpath)]:
    c = _tiny_config(tmp_path, root)
    loaded[name] = {s: input_pipeline.load_arrays(c, s) for s in ('train', 'valid')}
  train_x, train_y = loaded['dir']['train']
  assert train_x.shape == (6, 64, 64, 3) and train_x.dtype == np.uint8
  np.testing.assert_array_equal(train_y, [0, 0, 1, 1, 2, 2])  # sorted wnids
  cls, idx = _classes_and_ids(train_x[::2])  # the colour (not gray) ones
  np.testing.assert_array_equal(cls, [0, 1, 2])
  np.testing.assert_array_equal(idx, [0, 0, 0])
  gray = train_x[1::2]
  np.testing.assert_array_equal(gray[..., 0], gray[..., 2])  # grayscale replicated to RGB
  val_x, val_y = loaded['dir']['valid']
  np.testing.assert_array_equal(val_y, [1, 2, 0, 2])  # val_0..val_3 in file order
  cls, idx = _classes_and_ids(val_x)
  np.testing.assert_array_equal(cls, val_y)
  np.testing.assert_array_equal(idx, [10, 11, 12, 13])
  for name in ('parent', 'zip'):
    for s in ('train', 'valid'):
      for a, b in zip(loaded[name][s], loaded['dir'][s], strict=True):
        np.testing.assert_array_equal(a, b)
  c = _tiny_config(tmp_path, zpath)
  assert 'tiny_imagenet' in input_pipeline.describe_source(c)
  batch = next(input_pipeline.create_train_iterator(c, process_index=0, process_count=1))
  assert batch['image'].shape == (4, 64, 64, 3) and batch['label'].dtype == np.int32


def test_tiny_imagenet_class_folders_equal_the_official_layout(tmp_path):
  files = _tiny_files()
  _write_tree(tmp_path / 'official', files)
  ann = files['tiny-imagenet-200/val/val_annotations.txt'].decode().split('\n')
  folders = {}
  for rel, data in files.items():
    parts = rel.split('/')
    if parts[1] == 'train' and parts[3] == 'images':
      folders[f'train/{parts[2]}/{parts[4]}'] = data
  for line in filter(None, ann):
    f, w = line.split('\t')[:2]
    folders[f'valid/{w}/{f}'] = files[f'tiny-imagenet-200/val/images/{f}']
  _write_tree(tmp_path / 'folders', folders)
  for split in ('train', 'valid'):
    a = input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'official'), split)
    b = input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'folders'), split)
    order_a, order_b = np.lexsort(a[0][:, 32, 32, :2].T), np.lexsort(b[0][:, 32, 32, :2].T)
    np.testing.assert_array_equal(a[0][order_a], b[0][order_b])
    np.testing.assert_array_equal(a[1][order_a], b[1][order_b])


def test_tiny_imagenet_layout_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.data.root'):
    input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'nope'), 'train')
  files = _tiny_files()
  _write_tree(tmp_path / 'a', files)
  with pytest.raises(ValueError, match='no labels'):
    input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'a'), 'test')
  with pytest.raises(ValueError, match='has 3 classes but config.data.num_classes=200'):
    input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'a', num_classes=200), 'train')
  broken = dict(files)
  del broken['tiny-imagenet-200/val/val_annotations.txt']
  _write_tree(tmp_path / 'b', broken)
  with pytest.raises(ValueError, match=r'val_annotations.txt.*expected root/train/<wnid>/images'):
    input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'b'), 'valid')
  bad_ann = dict(files)
  bad_ann['tiny-imagenet-200/val/val_annotations.txt'] = b'val_0.JPEG\tn99999999\t0\t0\t1\t1\n'
  _write_tree(tmp_path / 'c', bad_ann)
  with pytest.raises(ValueError, match='line 1'):
    input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'c'), 'valid')
  (tmp_path / 'd' / 'junk').mkdir(parents=True)
  with pytest.raises(ValueError, match='neither the official layout'):
    input_pipeline.load_arrays(_tiny_config(tmp_path, tmp_path / 'd'), 'train')


# ---- ArtBench-10 (CIFAR binary) ---------------------------------------------------------------

STYLES = ('art_nouveau', 'baroque', 'expressionism', 'impressionism', 'post_impressionism',
          'realism', 'renaissance', 'romanticism', 'surrealism', 'ukiyo_e')


def _random_images(n, seed):
  rng = np.random.default_rng(seed)
  return rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8), rng.integers(0, 10, n)


def _cifar_record_bytes(x, y):
  """The CIFAR-10 binary format written by hand: label byte, then R, G, B planes row-major."""
  out = bytearray()
  for img, label in zip(x, y, strict=True):
    out.append(int(label))
    for ch in range(3):
      out += img[:, :, ch].tobytes()
  return bytes(out)


def _artbench_binary(root):
  root.mkdir(parents=True)
  parts = [_random_images(7, s) for s in range(3)]  # data_batch_1, data_batch_2, test
  for name, (x, y) in zip(('data_batch_2.bin', 'data_batch_1.bin', 'test_batch.bin'),
                          (parts[1], parts[0], parts[2]), strict=True):
    (root / name).write_bytes(_cifar_record_bytes(x, y))
  (root / 'batches.meta.txt').write_text('\n'.join(STYLES) + '\n\n')
  return parts


def _art_config(tmp_path, root, **data):
  c = _small(artbench10_reacgan_diffaug.get_config(), tmp_path, root=str(root), **data)
  c.train.batch_size = 4
  return c


def test_artbench_cifar_binary(tmp_path, monkeypatch):
  parts = _artbench_binary(tmp_path / 'artbench-10-batches-bin')
  def no_unpickling(*a, **k):
    raise AssertionError('a pickle was loaded')
  monkeypatch.setattr(pickle, 'load', no_unpickling)
  monkeypatch.setattr(pickle, 'loads', no_unpickling)
  for root in (tmp_path / 'artbench-10-batches-bin', tmp_path):  # the folder or its parent
    c = _art_config(tmp_path, root)
    x, y = input_pipeline.load_arrays(c, 'train')
    np.testing.assert_array_equal(x, np.concatenate([parts[0][0], parts[1][0]]))  # batch order
    np.testing.assert_array_equal(y, np.concatenate([parts[0][1], parts[1][1]]))
    x, y = input_pipeline.load_arrays(c, 'test')
    np.testing.assert_array_equal(x, parts[2][0])
    np.testing.assert_array_equal(y, parts[2][1])
  assert input_pipeline._load(c, 'train').num_classes == 10  # from batches.meta.txt
  with pytest.raises(ValueError, match='has 10 classes but config.data.num_classes=11'):
    input_pipeline.load_arrays(_art_config(tmp_path, tmp_path, num_classes=11), 'train')
  batch = next(input_pipeline.create_train_iterator(c, process_index=0, process_count=1))
  assert batch['image'].shape == (4, 32, 32, 3)


def test_artbench_pickles_are_refused_and_bad_binaries_named(tmp_path):
  root = tmp_path / 'artbench-10-batches-py'
  root.mkdir()
  for name in ('data_batch_1', 'test_batch', 'meta'):
    (root / name).write_bytes(pickle.dumps({'data': np.zeros((1, 3072), np.uint8)}))
  with pytest.raises(ValueError, match='python pickles.*not unpickled'):
    input_pipeline.load_arrays(_art_config(tmp_path, root), 'train')
  bad = tmp_path / 'bad'
  bad.mkdir()
  (bad / 'data_batch_1.bin').write_bytes(b'\0' * (datasets.CIFAR_RECORD + 5))
  with pytest.raises(ValueError, match='not a multiple of 3073'):
    input_pipeline.load_arrays(_art_config(tmp_path, bad), 'train')
  with pytest.raises(ValueError, match='expected train or test'):
    input_pipeline.load_arrays(_art_config(tmp_path, bad), 'valid')
  (tmp_path / 'empty').mkdir()
  with pytest.raises(ValueError, match=r'data_batch_\*\.bin'):
    input_pipeline.load_arrays(_art_config(tmp_path, tmp_path / 'empty'), 'train')


def test_artbench_folder_export(tmp_path):
  x, y = _random_images(12, 5)
  y[:10] = np.arange(10)  # every style present
  for i, (img, label) in enumerate(zip(x, y, strict=True)):
    p = tmp_path / 'export' / 'train' / STYLES[label] / f'{i:03d}.png'
    p.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(p)
  got_x, got_y = input_pipeline.load_arrays(_art_config(tmp_path, tmp_path / 'export'), 'train')
  order = np.argsort(y, kind='stable')  # load_folder reads class by class, files sorted
  np.testing.assert_array_equal(got_x, x[order])
  np.testing.assert_array_equal(got_y, y[order])


# ---- CUB200 (TFDS caltech_birds2011, mocked) --------------------------------------------------

CUB_SHAPES = [(37, 50), (50, 37), (41, 41), (30, 47)]  # (H, W): long edges both ways, odd gaps


def _cub_image(i, h, w):
  rng = np.random.default_rng(i)
  return rng.integers(0, 256, (h, w, 3), dtype=np.uint8)


def _fake_cub(self, split, decoders=None, read_config=None, shuffle_files=False, **kwargs):
  import tensorflow as tf  # noqa: PLC0415

  del self, split, decoders, read_config, shuffle_files, kwargs
  def gen():
    for i, (h, w) in enumerate(CUB_SHAPES):
      yield {'image': _cub_image(i, h, w), 'label': 199 - i}
  return tf.data.Dataset.from_generator(gen, output_signature={
      'image': tf.TensorSpec((None, None, 3), tf.uint8), 'label': tf.TensorSpec((), tf.int64)})


def test_cub200_center_crop_long_edge_and_resize(tmp_path):
  tfds = pytest.importorskip('tensorflow_datasets')
  c = _small(cub200_reacgan.get_config(), tmp_path, image_size=16, load='memory')
  with tfds.testing.mock_data(as_dataset_fn=_fake_cub):
    x, y = input_pipeline.load_arrays(c, 'train')
  np.testing.assert_array_equal(y, [199, 198, 197, 196])
  for i, (h, w) in enumerate(CUB_SHAPES):
    # StudioGAN: torchvision center_crop(img, min(size)) -> top/left = int(round(gap / 2)), then
    # Resize(128, LANCZOS); here at 16 to keep the test small.
    s = min(h, w)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    square = _cub_image(i, h, w)[top:top + s, left:left + s]
    want = np.asarray(Image.fromarray(square).resize((16, 16), Image.LANCZOS))
    np.testing.assert_array_equal(x[i], want)


# ---- the configs against StudioGAN's YAMLs ----------------------------------------------------


@pytest.mark.parametrize('module, yaml_name, skip', [
    (cub200_reacgan, 'CUB200_ReACGAN.yaml', ()),
    (artbench10_reacgan_diffaug, 'ReACGAN-DiffAug.yaml', ('data.',)),  # CIFAR10's recipe
])
def test_config_matches_studiogan_yaml(module, yaml_name, skip):
  conv = from_studiogan.convert(from_studiogan.load_yaml(os.path.join(FIXTURES, yaml_name)))
  assert conv.unmapped == []
  ours = module.get_config()
  for dotted, value in conv.overrides.items():
    if dotted.startswith(skip) and skip:
      continue
    section, key = dotted.split('.')
    assert ours[section][key] == value, dotted


def test_protocols_in_the_configs():
  cub, art, tiny = (m.get_config() for m in (cub200_reacgan, artbench10_reacgan_diffaug,
                                             tiny_imagenet_reacgan))
  assert (cub.data.eval_split, cub.eval.num_samples, cub.eval.num_ref) == ('train', 5994, -1)
  assert (art.data.eval_split, art.eval.num_samples, art.eval.num_ref) == ('test', 10_000, -1)
  assert (tiny.data.eval_split, tiny.eval.num_samples) == ('valid', 10_000)
  assert cub.data.crop == 'center' and tiny.data.source == 'tiny_imagenet'
  assert set(default.get_config().data.keys()) >= {'root'}


# The configs that reproduce StudioGAN's published numbers, with the size of their reference split.
PUBLISHED = [(cifar10_reacgan, 10_000), (cifar10_biggan_pd, 10_000), (cifar10_sngan_pd, 10_000),
             (imagenet128_reacgan, 50_000), (tiny_imagenet_reacgan, 10_000),
             (cub200_reacgan, 5994)]


@pytest.mark.parametrize('module,reference', PUBLISHED, ids=lambda m: getattr(m, '__name__', m))
def test_published_configs_use_studiogans_protocol(module, reference):
  config = module.get_config()
  assert config.eval.protocol == 'studiogan'
  assert config.eval.num_samples == reference  # StudioGAN: num_eval = len(reference split)
  assert config.eval.get('num_ref', -1) in (-1, reference)
  # The CPU-sized smoke test keeps class-balanced labels (its 500 samples).
  assert cifar10_reacgan.get_config('small').eval.protocol == 'ours'
