"""Data sources of the input pipeline: npz, image folder and TFDS -> uint8 NHWC arrays.

Everything here runs on the host with numpy/PIL (and tf.data for TFDS); nothing enters a jitted
step. `input_pipeline` turns these arrays into sharded, deterministic batches.

Decoded arrays are cached twice: in this process (a dict keyed by file identity) and on disk
under `config.data.cache_dir` (default ~/.cache/reacgan_jax) as plain .npy files keyed by the
file's path, size and mtime, because the shared CIFAR-10 npz is LZMA-compressed (about 10 s to
decode x_train) and a folder of JPEGs costs a decode per image.
"""

import concurrent.futures
import dataclasses
import hashlib
import os
import pathlib
import threading
import zipfile
import zlib

import numpy as np
from absl import logging
from PIL import Image

from reacgan_jax.errors import ConfigError, InputError, MissingFileError
from reacgan_jax.platform import paths

IMAGE_EXTENSIONS = ('.png', '.jpg', '.jpeg')  # matched case-insensitively
# A TFDS split larger than this on disk is streamed instead of loaded into RAM (load=auto).
STREAM_THRESHOLD_BYTES = 4 << 30

_MEMO: dict = {}  # (file identity, split, ...) -> decoded Arrays, shared by all callers
_MEMO_LOCK = threading.Lock()


@dataclasses.dataclass(frozen=True)
class Arrays:
  """One split in memory.

  images: uint8 [N, H, W, 3] (already at the configured size); labels: int32 [N];
  num_classes: the count the source declares (label_names, class folders, TFDS ClassLabel),
  None when it declares none; description: which file/dataset this came from; from_npz: read
  from an .npz file (whatever source named it: npz, CIFAR's or TFDS's offline fallback), whose
  resolution the data checks hold against the config.
  """
  images: np.ndarray
  labels: np.ndarray
  num_classes: int | None
  description: str
  from_npz: bool = False


NPZ_LAYOUTS = ('nhwc', 'cifar_rows', 'auto')  # config.data.npz_layout

def clear_memo():
  """Forgets the in-process decoded arrays (tests; frees memory)."""
  with _MEMO_LOCK:
    _MEMO.clear()


def resolve_path(path: str) -> pathlib.Path:
  """`path` as given if it exists (or is absolute), else relative to the repository root.

  Configs name the shared data as '../shared/data/...', which works from the repo root; this
  keeps it working when the CLI or a notebook runs from another directory.
  """
  p = pathlib.Path(path).expanduser()
  if p.is_absolute() or p.exists():
    return p
  root = paths.checkout_root()
  alt = root / p if root else p
  return alt if alt.exists() else p


def cache_root(config) -> pathlib.Path | None:
  """Folder of the decoded-array cache, or None when config.data.cache_dir == 'none'."""
  d = config.data.cache_dir
  if d == 'none':
    return None
  if d:
    return pathlib.Path(d).expanduser()
  return paths.cache_root()


def _digest(*parts) -> str:
  return hashlib.sha1('|'.join(map(str, parts)).encode()).hexdigest()[:16]


def _file_identity(path: pathlib.Path) -> str:
  st = path.stat()
  return _digest(path.resolve(), st.st_size, st.st_mtime_ns)


def _save_atomic(path: pathlib.Path, array: np.ndarray):
  """Writes an .npy via a temporary file + rename so a concurrent reader never sees half a file."""
  try:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f'{path.stem}.{os.getpid()}.{threading.get_ident()}.tmp.npy')
    np.save(tmp, array)
    os.replace(tmp, path)
  except OSError as e:  # a read-only home must not stop training
    logging.warning('Could not write the data cache %s (%s); continuing without it.', path, e)


# ---- npz -------------------------------------------------------------------------------------


def npz_members(path: pathlib.Path, keys, cache: pathlib.Path | None) -> dict[str, np.ndarray]:
  """The members `keys` of an npz that exist in it.

  Compressed members are also written to `cache/npz/<stem>-<id>/<key>.npy` (id: path, size,
  mtime), so later processes read them at disk speed instead of decompressing again.
  """
  ident = _file_identity(path)
  out = {}
  with np.load(path, allow_pickle=False) as z:
    for key in keys:
      if key not in z.files:
        continue
      compressed = z.zip.getinfo(f'{key}.npy').compress_type != zipfile.ZIP_STORED
      cached = cache / 'npz' / f'{path.stem}-{ident}' / f'{key}.npy' if cache else None
      if cached is not None and compressed and cached.exists():
        out[key] = np.load(cached, allow_pickle=False)
        continue
      try:
        out[key] = z[key]
      except ValueError:  # object arrays (e.g. pickled label names) are optional metadata
        continue
      if cached is not None and compressed:
        logging.info('Caching decoded %s[%s] at %s.', path, key, cached)
        _save_atomic(cached, out[key])
  return out


def _npz_images(x: np.ndarray, layout: str, name: str) -> np.ndarray:
  """x_<split> in `layout` -> uint8 [N, H, W, 3]."""
  if layout == 'auto':
    layout = 'cifar_rows' if x.ndim == 2 else 'nhwc'
  if layout == 'cifar_rows':
    if x.ndim != 2 or x.shape[1] % 3:
      raise InputError(f'{name} has shape {x.shape}, not [N, 3*H*W] rows: set '
                       '--config.data.npz_layout=nhwc for [N, H, W, C] arrays')
    side = int(round((x.shape[1] // 3) ** 0.5))
    if 3 * side * side != x.shape[1]:
      raise InputError(f'{name} has {x.shape[1]} columns: cifar_rows needs 3*S*S (R, G, B planes '
                       'of a square image, e.g. 3072 for 32x32)')
    # CIFAR `data` rows: the R plane, then G, then B, each row-major (shared/data/README.md).
    x = x.reshape(-1, 3, side, side).transpose(0, 2, 3, 1)
  elif layout == 'nhwc':
    if x.ndim == 3:  # [N, H, W] grayscale
      x = x[..., None]
    if x.ndim != 4:
      raise InputError(f'{name} has shape {x.shape}: expected [N, H, W, C] for npz_layout=nhwc '
                       '(or set --config.data.npz_layout=cifar_rows for [N, 3072] CIFAR rows)')
  else:
    raise ConfigError(f'config.data.npz_layout={layout!r}: expected nhwc or cifar_rows')
  return _as_rgb_uint8(x, name)


def _as_rgb_uint8(x: np.ndarray, name: str) -> np.ndarray:
  """[N, H, W, C] integer 0..255 -> contiguous uint8 [N, H, W, 3] (grayscale replicated)."""
  if x.dtype != np.uint8:
    if not np.issubdtype(x.dtype, np.integer) or x.size and (x.min() < 0 or x.max() > 255):
      raise InputError(f'{name} has dtype {x.dtype}: store images as uint8 in [0, 255]')
    x = x.astype(np.uint8)
  if x.shape[-1] == 1:
    x = np.repeat(x, 3, axis=-1)
  elif x.shape[-1] == 4:
    x = x[..., :3]  # drop alpha, as PIL's convert('RGB') does
  elif x.shape[-1] != 3:
    raise InputError(f'{name} has {x.shape[-1]} channels (shape {x.shape}): expected 1, 3 or 4')
  return np.ascontiguousarray(x)


def _labels(y: np.ndarray, n: int, name: str) -> np.ndarray:
  y = np.asarray(y)
  if y.ndim == 2 and y.shape[1] == 1:
    y = y[:, 0]
  if y.shape != (n,) or not np.issubdtype(y.dtype, np.integer):
    raise InputError(f'{name} has shape {y.shape} and dtype {y.dtype}: expected {n} integer labels')
  return y.astype(np.int32)


def load_npz(path: str, split: str, layout: str, cache) -> Arrays:
  """x_<split> / y_<split> of an npz file as uint8 NHWC + int32 labels (not resized)."""
  p = resolve_path(path)
  memo_key = (_file_identity(p) if p.exists() else None, split, layout)
  with _MEMO_LOCK:
    if memo_key in _MEMO:
      return _MEMO[memo_key]
  if not p.exists():
    where = paths.checkout_root() or 'no source checkout'
    raise MissingFileError(f'npz file {path!r} not found (looked in {pathlib.Path.cwd()} and '
                            f'{where}); set --config.data.npz_path to a file with '
                            'x_train/y_train (and x_test/y_test)')
  if p.is_dir():
    raise InputError(f'config.data.npz_path={path!r} is a directory: name the .npz file (with '
                     'x_train/y_train, x_test/y_test), or use --config.data.source=folder.')
  xk, yk = f'x_{split}', f'y_{split}'
  if not zipfile.is_zipfile(p):  # np.load would try it as a pickle and advise allow_pickle
    raise InputError(f'{p}: not an .npz archive (a zero-byte, truncated or other kind of file?); '
                     'set --config.data.npz_path to an .npz with x_train/y_train, or re-create '
                     'or re-download it.')
  try:
    got = npz_members(p, (xk, yk, 'label_names'), cache)
    with np.load(p) as z:
      members = ', '.join(z.files)
  except (OSError, EOFError, ValueError, zipfile.BadZipFile, zlib.error) as e:
    raise InputError(f'{p}: cannot read it as an .npz ({type(e).__name__}: {e}); a zero-byte, '
                     'truncated or other kind of file? Re-create or re-download it.') from e
  if xk not in got or yk not in got:
    raise InputError(f'{p} has no {xk}/{yk} (members: {members}); check '
                     '--config.data.train_split / eval_split')
  images = _npz_images(got[xk], layout, f'{p}[{xk}]')
  labels = _labels(got[yk], len(images), f'{p}[{yk}]')
  names = got.get('label_names')
  num_classes = len(names) if names is not None and names.ndim == 1 else None
  arrays = Arrays(images, labels, num_classes, f'npz {p} [{xk}, {yk}]', from_npz=True)
  with _MEMO_LOCK:
    _MEMO[memo_key] = arrays
  return arrays


# ---- resizing --------------------------------------------------------------------------------


def resize_pil(img, size: int, crop: str):
  """PIL image -> PIL image of size x size.

  crop='center': the centred square of side min(H, W) first (StudioGAN's CenterCropLongEdge,
  torchvision center_crop rounding), then resize. Resizing uses LANCZOS, StudioGAN's ImageNet
  pre-resizer (antialiased, so downsampling does not alias).
  """

  if crop == 'center':
    w, h = img.size
    s = min(w, h)
    top, left = int(round((h - s) / 2.0)), int(round((w - s) / 2.0))
    img = img.crop((left, top, left + s, top + s))
  elif crop != 'none':
    raise ConfigError(f'config.data.crop={crop!r}: expected none or center')
  if img.size != (size, size):
    img = img.resize((size, size), Image.LANCZOS)
  return img


def resize_images(images: np.ndarray, size: int, crop: str) -> np.ndarray:
  """uint8 [N, H, W, 3] -> uint8 [N, size, size, 3]; a no-op when nothing would change."""
  h, w = images.shape[1:3]
  if (h, w) == (size, size):
    return images

  logging.info('Resizing %d images from %dx%d to %dx%d (crop=%s).', len(images), h, w, size, size,
               crop)
  out = np.empty((len(images), size, size, 3), np.uint8)
  for i, im in enumerate(images):
    out[i] = np.asarray(resize_pil(Image.fromarray(im), size, crop))
  return out


# ---- image folder ----------------------------------------------------------------------------


def _read_image(path: pathlib.Path, size: int, crop: str) -> np.ndarray:
  try:
    with Image.open(path) as img:
      img.load()
      # Explicit RGB: grayscale is replicated, palettes applied, alpha dropped (torchvision's
      # pil_loader does the same convert('RGB')).
      rgb = img.convert('RGB') if img.mode != 'RGB' else img.copy()
  except (OSError, SyntaxError, ValueError) as e:  # PIL.UnidentifiedImageError is an OSError
    raise InputError(f'Cannot read image file {path}: {e}. Delete or replace it.') from e
  return np.asarray(resize_pil(rgb, size, crop), dtype=np.uint8)


def _class_folders(root: str, split: str) -> tuple[pathlib.Path, list[str]]:
  r = resolve_path(root)
  if not root or not r.is_dir():
    raise MissingFileError(f'config.data.folder={root!r} is not a directory: point it at '
                           'root/<class_name>/*.png|jpg|jpeg (or root/<split>/<class_name>/...)')
  base = r / split if (r / split).is_dir() else r
  classes = sorted(d.name for d in base.iterdir() if d.is_dir() and not d.name.startswith('.'))
  if not classes:
    raise InputError(f'{base} has no class folders: expected {base}/<class_name>/*.png|jpg|jpeg')
  return base, classes


def train_class_names(root: str, train_split: str, split: str) -> list[str] | None:
  """The training split's class names when root/<train_split>/ and root/<split>/ both exist (the
  class ids `split` must use); None for one folder serving every split."""
  r = resolve_path(root)
  if split == train_split or not ((r / train_split).is_dir() and (r / split).is_dir()):
    return None
  return _class_folders(root, train_split)[1]


def list_folder(root: str, split: str, classes: list[str] | None = None):
  """-> (base folder, class names sorted, [(file, class id)]) for root[/split]/<class>/*.ext.

  classes: the training split's class names (ids by name, so an eval split has the same ids);
  an eval split must hold a folder for each of them and no other.
  """
  base, found_classes = _class_folders(root, split)
  if classes is not None and found_classes != list(classes):
    missing = [f'{n!r} (id {classes.index(n)})' for n in classes if n not in found_classes]
    extra = [n for n in found_classes if n not in classes]
    raise InputError(
        f'{base}: the {split!r} split ' + (f'lacks class {", ".join(missing)}' if missing else '')
        + (' and ' if missing and extra else '')
        + (f'has class folders {extra} that the training split has not' if extra else '')
        + ' (class ids come from the training split\'s sorted folder names). Add the missing '
        f'class folder(s) with images under {base}, or evaluate against a split with every class '
        '(--config.data.eval_split=NAME).')
  classes = found_classes
  files = []
  for cid, name in enumerate(classes):
    found = sorted(f for f in (base / name).iterdir()
                   if f.is_file() and f.suffix.lower() in IMAGE_EXTENSIONS)
    if not found:
      raise InputError(f'Class folder {base / name} holds no .png/.jpg/.jpeg file: add images or '
                       'remove the folder (class ids come from the sorted folder names)')
    files += [(f, cid) for f in found]
  return base, classes, files


def load_folder(root: str, split: str, size: int, crop: str, cache, classes=None) -> Arrays:
  """Decodes root[/split]/<class>/*.{png,jpg,jpeg} to uint8 [N, size, size, 3] + int32 labels
  (classes: the training split's class names, list_folder)."""
  base, classes, files = list_folder(root, split, classes)
  stats = [(f.relative_to(base), f.stat().st_size, f.stat().st_mtime_ns) for f, _ in files]
  ident = _digest(base.resolve(), size, crop, *stats)
  cached = cache / 'folder' / f'{base.name}-{ident}' if cache else None
  desc = f'folder {base} ({len(classes)} classes)'
  with _MEMO_LOCK:
    hit = _MEMO.get((ident, 'folder'))
  if hit is None and cached is not None and (cached / 'labels.npy').exists():
    hit = np.load(cached / 'images.npy'), np.load(cached / 'labels.npy')
  if hit is None:
    logging.info('Decoding %d images under %s.', len(files), base)
    workers = min(8, os.cpu_count() or 1)
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:  # PIL decodes without the GIL
      decoded = list(pool.map(lambda f: _read_image(f[0], size, crop), files))
    hit = np.stack(decoded), np.array([c for _, c in files], np.int32)
    if cached is not None:
      _save_atomic(cached / 'images.npy', hit[0])
      _save_atomic(cached / 'labels.npy', hit[1])
  with _MEMO_LOCK:
    _MEMO[(ident, 'folder')] = hit
  return Arrays(hit[0], hit[1], len(classes), desc)


# ---- TFDS ------------------------------------------------------------------------------------


class TfdsUnavailable(Exception):
  """TFDS could not provide the dataset (not prepared, offline); the message says why."""


def tfds_builder(config, split: str):
  """A TFDS builder whose `split` can be read, preparing it first when tfds_download is on.

  Raises TfdsUnavailable when the data is not there (offline, not prepared, ImageNet tars not
  in the manual dir, TensorFlow not installed); a wrong dataset name is a ValueError.
  """
  try:
    import tensorflow  # noqa: F401, PLC0415 (TFDS reads and prepares its files with TensorFlow)
    import tensorflow_datasets as tfds  # noqa: PLC0415
  except ImportError as e:
    raise TfdsUnavailable(f'TFDS needs TensorFlow, which is not importable ({e}): pip install '
                          "'reacgan-jax[tfds]' (tensorflow-cpu)") from e

  name, data_dir = config.data.name, config.data.tfds_data_dir or None
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except tfds.core.registered.DatasetNotFoundError as e:
    raise ConfigError(f'config.data.name={name!r} is not a TFDS dataset: {e}') from e
  features = builder.info.features
  if 'image' not in features or 'label' not in features:
    raise InputError(f'TFDS {name} has features {list(features)}: the tfds source needs an image '
                     "classification dataset with 'image' and 'label'")
  try:
    builder.as_dataset(split=split)  # cheap: only checks that the prepared files are there
    return builder
  except Exception as e:  # noqa: BLE001 (TFDS raises AssertionError and friends)
    first = e
  if not config.data.tfds_download:
    raise TfdsUnavailable(f'{type(first).__name__}: {first}')
  manual = config.data.tfds_manual_dir or None
  try:
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=manual))
    builder.as_dataset(split=split)
  except Exception as e:  # noqa: BLE001
    raise TfdsUnavailable(f'download_and_prepare failed: {type(e).__name__}: {e}') from e
  return builder


def tfds_split_bytes(builder, split: str) -> int:
  """Size on disk of `split` (0 when TFDS does not know it, e.g. under mock_data)."""
  try:
    return int(builder.info.splits[split.split('[')[0]].num_bytes)  # 'train[:90%]' -> train
  except Exception:  # noqa: BLE001
    return 0


def tfds_memory(builder, split: str, size: int, crop: str) -> Arrays:
  """The whole split in memory: uint8 [N, size, size, 3], int32 [N]."""
  import tensorflow_datasets as tfds  # noqa: PLC0415

  name = f'TFDS {builder.name}[{split}]'
  shape = builder.info.features['image'].shape
  if None not in shape:  # fixed-size images (CIFAR): large batches, concatenated
    # Not as_dataset(batch_size=-1): with TF 2.21 its batch of the whole split aborts the
    # process (std::length_error in Dataset.batch).
    parts = list(tfds.as_numpy(builder.as_dataset(split=split).batch(4096)))
    images = np.concatenate([p['image'] for p in parts]) if parts else np.zeros((0, *shape))
    labels = np.concatenate([p['label'] for p in parts]) if parts else np.zeros((0,), int)
    images = resize_images(_as_rgb_uint8(images, name), size, crop)
  else:  # variable sizes: crop/resize one by one
    images, labels = [], []
    for ex in tfds.as_numpy(builder.as_dataset(split=split)):
      img = Image.fromarray(_as_rgb_uint8(ex['image'][None], name)[0])
      images.append(np.asarray(resize_pil(img, size, crop)))
      labels.append(ex['label'])
    images = np.stack(images) if images else np.zeros((0, size, size, 3), np.uint8)
  labels = _labels(np.asarray(labels), len(images), name)
  num_classes = builder.info.features['label'].num_classes
  data_dir = builder.data_dir
  return Arrays(images, labels, num_classes, f'tfds {builder.name}[{split}] ({data_dir})')
