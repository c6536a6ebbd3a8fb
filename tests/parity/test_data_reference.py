"""Our data pipeline against StudioGAN's own src/data_util.py Dataset_, same images (issue 25).

StudioGAN's Dataset_ runs as its loader.py builds the datasets, with torchvision's own transforms:
- CIFAR-10 (in MISC.no_proc_data: no crop, no resize), as a `-hdf5 -l` run reads it (Dataset_
  with hdf5_path and load_data_in_memory: ToPILImage, RandomHorizontalFlip, ToTensor,
  Normalize(0.5, 0.5)). Deterministic part, pixel-exact: with flips off, Dataset_'s tensor equals
  data/pipeline.to_model_range's float32 bit for bit. Random part, at the distribution level:
  each image StudioGAN returns equals our unflipped or our mirrored image exactly, and the share
  mirrored is 1/2 in both (each within 5 sigma of Binomial(n, 1/2)).
- CUB200 / ImageNet (processed datasets; StudioGAN's README runs them with `--pre_resizer
  lanczos`): ImageFolder (PIL, convert('RGB')), CenterCropLongEdge, Resize(img_size, LANCZOS),
  on images of varied shapes (portrait, landscape, odd gaps, grayscale), pixel-exact against
  our folder source with crop='center' (data/sources.load_folder; the TFDS source decodes through
  the same data/sources.resize_pil); labels from the sorted class folders in both.
- Tiny-ImageNet (no_proc_data): 64x64 JPEGs through ImageFolder, no crop or resize, against our
  tiny_imagenet source on the same class folders: pixel-exact (both decode with PIL).
- The evaluation datasets (loader.py: random_flip=False, crop_long_edge and resize only for
  processed datasets) are the flip-off cases above.

What stays different, by design, and is stated in configs/cifar10_reacgan.py: the order. StudioGAN
draws batches with DataLoader(shuffle=True, drop_last=True): each epoch a fresh permutation, the
last len % basket_size images of it skipped; ours is the stream of per-epoch permutations without
a drop (data/pipeline.EpochOrder): every image once per epoch in both, the batches at an epoch
boundary straddle two epochs in ours. The flips come from torch's global RNG in StudioGAN's
workers and from (seed, step) in ours: the same distribution, not the same draws.

Needs a StudioGAN checkout (REACGAN_JAX_STUDIOGAN_SRC, default /work/studiogan/src) and an
importable torchvision: torchvision 0.28.0 is the release matching torch 2.13.0; it does not
install beside it from the registry, so put it in a folder of its own and name it:
`pip install --no-deps --target DIR torchvision==0.28.0`, then REACGAN_JAX_TORCHVISION=DIR (its
compiled operators need not load: only transforms and datasets are used). Skipped, saying which
is missing, otherwise.
"""

import importlib
import os
import pathlib
import sys

import numpy as np
import pytest
from PIL import Image

from reacgan_jax.data import datasets
from reacgan_jax.data import pipeline as input_pipeline
from reacgan_jax.data import sources as data_sources

STUDIOGAN_SRC = os.environ.get('REACGAN_JAX_STUDIOGAN_SRC', '/work/studiogan/src')


@pytest.fixture(scope='module')
def data_util():
  """StudioGAN's src/data_util.py module, importing torchvision from REACGAN_JAX_TORCHVISION."""
  torch = pytest.importorskip('torch')
  pytest.importorskip('h5py')
  if not (pathlib.Path(STUDIOGAN_SRC) / 'data_util.py').exists():
    pytest.skip(f'no StudioGAN checkout at {STUDIOGAN_SRC} (set REACGAN_JAX_STUDIOGAN_SRC)')
  tv_dir = os.environ.get('REACGAN_JAX_TORCHVISION', '')
  added = [p for p in (tv_dir, STUDIOGAN_SRC) if p and p not in sys.path]
  sys.path[:0] = added
  # torchvision's __init__ registers fake kernels for its compiled operators; when that library
  # is not the build torch expects, registration fails although no operator is ever called
  # here. Registration is skipped for the import only.
  register_fake = torch.library.register_fake
  torch.library.register_fake = lambda *a, **k: (lambda f: f)
  try:
    importlib.import_module('torchvision.transforms')
    module = importlib.import_module('data_util')
  except ImportError as e:
    pytest.skip(f'torchvision not importable ({e}): pip install --no-deps --target DIR '
                'torchvision==0.28.0, then REACGAN_JAX_TORCHVISION=DIR')
  finally:
    torch.library.register_fake = register_fake
  yield module
  for p in added:
    sys.path.remove(p)


def _studiogan_images(dataset):
  """Every item of a StudioGAN Dataset_ as (float32 NHWC, int labels)."""
  items = [dataset[i] for i in range(len(dataset))]
  x = np.stack([t.numpy().transpose(1, 2, 0) for t, _ in items])
  return x, np.array([y for _, y in items])


def _hdf5(path, images, labels):
  """A training file as StudioGAN's utils/hdf5.make_hdf5 writes it (imgs NHWC uint8, labels)."""
  import h5py  # noqa: PLC0415 (the reference's dependency, not ours)

  with h5py.File(path, 'w') as f:
    f.create_dataset('imgs', data=images, dtype='uint8')
    f.create_dataset('labels', data=labels, dtype='int64')
  return str(path)


@pytest.fixture(scope='module')
def cifar_sample(cifar10_npz):
  """The first 512 CIFAR-10 train images (uint8 NHWC) and labels."""
  c = _config(str(cifar10_npz))
  images, labels = input_pipeline.load_arrays(c, 'train')
  return images[:512], labels[:512]


def _config(npz):
  from configs import default  # noqa: PLC0415 (tests may read configs)

  c = default.get_config()
  c.data.source, c.data.npz_path, c.data.npz_layout = 'npz', npz, 'cifar_rows'
  c.data.image_size, c.data.num_classes, c.data.cache_dir = 32, 10, ''
  return c


def _cifar_dataset(data_util, path, flip):
  return data_util.Dataset_(data_name='CIFAR10', data_dir=None, train=True, crop_long_edge=False,
                            resize_size=None, resizer=None, random_flip=flip, normalize=True,
                            hdf5_path=path, load_data_in_memory=True)


def test_cifar10_normalisation_is_pixel_exact(data_util, cifar_sample, tmp_path):
  images, labels = cifar_sample
  theirs, their_labels = _studiogan_images(
      _cifar_dataset(data_util, _hdf5(tmp_path / 'c.hdf5', images, labels), flip=False))
  ours = input_pipeline.to_model_range(images)
  assert theirs.dtype == ours.dtype == np.float32
  np.testing.assert_array_equal(theirs, ours)
  np.testing.assert_array_equal(their_labels, labels)


def test_cifar10_flips_are_mirrors_at_the_same_rate(data_util, cifar_sample, tmp_path):
  import torch  # noqa: PLC0415

  images, labels = cifar_sample
  dataset = _cifar_dataset(data_util, _hdf5(tmp_path / 'c.hdf5', images, labels), flip=True)
  torch.manual_seed(0)
  theirs = np.concatenate([_studiogan_images(dataset)[0] for _ in range(4)])  # 4 epochs
  plain = np.tile(input_pipeline.to_model_range(images), (4, 1, 1, 1))
  mirrored = np.tile(input_pipeline.to_model_range(images, np.ones(len(images), bool)),
                     (4, 1, 1, 1))
  same = (theirs == plain).all(axis=(1, 2, 3))
  flipped = (theirs == mirrored).all(axis=(1, 2, 3))
  symmetric = (plain == mirrored).all(axis=(1, 2, 3))
  assert (same | flipped).all()  # nothing but the identity and the mirror
  n = int((~symmetric).sum())
  their_share = flipped[~symmetric].mean()
  ours = np.concatenate([input_pipeline.flip_mask(0, step, 512) for step in range(4)])
  for share in (their_share, ours.mean()):
    assert abs(share - 0.5) < 5 * 0.5 / np.sqrt(n), share


def _varied_images(root, rng):
  """root/train/<class>/*.png of varied shapes and modes, the worst cases for a crop."""
  shapes = [(37, 50), (50, 37), (48, 48), (31, 64), (64, 31), (45, 60), (33, 35), (200, 90)]
  for i, (h, w) in enumerate(shapes):
    folder = root / 'train' / f'class_{i % 3}'
    folder.mkdir(parents=True, exist_ok=True)
    pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    pixels[..., 0] = np.linspace(0, 255, w, dtype=np.uint8)[None, :]  # structure beside noise
    img = Image.fromarray(pixels)
    (img.convert('L') if i == 5 else img).save(folder / f'img_{i}.png')


def test_cub200_imagenet_crop_and_lanczos_resize_are_pixel_exact(data_util, tmp_path):
  _varied_images(tmp_path, np.random.default_rng(0))
  for size in (32, 24):
    theirs, their_labels = _studiogan_images(data_util.Dataset_(
        data_name='CUB200', data_dir=str(tmp_path), train=True, crop_long_edge=True,
        resize_size=size, resizer='lanczos', random_flip=False, normalize=True))
    arrays = data_sources.load_folder(str(tmp_path), 'train', size, 'center', cache=None)
    np.testing.assert_array_equal(theirs, input_pipeline.to_model_range(arrays.images))
    np.testing.assert_array_equal(their_labels, arrays.labels)


def test_tiny_imagenet_jpegs_are_pixel_exact(data_util, tmp_path):
  rng = np.random.default_rng(1)
  for wnid in ('n01443537', 'n01629819'):
    folder = tmp_path / 'train' / wnid
    folder.mkdir(parents=True)
    for i in range(3):
      Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(
          folder / f'{wnid}_{i}.JPEG', quality=90)
  theirs, their_labels = _studiogan_images(data_util.Dataset_(
      data_name='Tiny_ImageNet', data_dir=str(tmp_path), train=True, crop_long_edge=False,
      resize_size=None, resizer='wo_resize', random_flip=False, normalize=True))
  arrays = datasets.load_tiny_imagenet(str(tmp_path), 'train', 64, 'none', cache=None)
  np.testing.assert_array_equal(theirs, input_pipeline.to_model_range(arrays.images))
  np.testing.assert_array_equal(their_labels, arrays.labels)
