"""Input pipeline: a data source -> deterministic, per-process batches of real images.

Sources (`config.data.source`): `tfds` (with an offline npz fallback), `npz`, `folder`; see
`data_sources`. Splits that fit in RAM are held as uint8 arrays and every batch is a numpy
gather, so TF never enters the jitted step and batches are exactly reproducible:

- The sample order is one infinite stream: the permutation of epoch 0, then epoch 1, ...; each
  epoch's permutation comes from (seed, epoch), so every image is seen once per epoch.
- Global batch k is positions [k*B, (k+1)*B) of that stream, with horizontal flips drawn from
  (seed, k). It depends on (seed, k) only: an iterator started at `start_step=k` yields what an
  uninterrupted one yields at k.
- Process p of P takes the contiguous slice [p*B/P, (p+1)*B/P) of the global batch and gathers
  only those images, so the trainer can stitch the global array with
  `jax.make_array_from_process_local_data`; over an epoch the processes read disjoint shares.

Large TFDS splits (ImageNet; `config.data.load`) are streamed with tf.data instead, each process
reading its own `tfds.split_for_jax_process` share (`tfds_stream.tfds_stream`).
"""

import collections
import dataclasses
import os
import queue
import threading

import jax
import numpy as np
from absl import logging

from reacgan_jax.data import checks, cifar, datasets, tfds_stream
from reacgan_jax.data import sources as data_sources
from reacgan_jax.errors import ConfigError, InputError, MissingFileError

_PERMUTATION_STREAM, _FLIP_STREAM, _BALANCED_STREAM = 0, 1, 2  # independent numpy seed streams


# ---- which source --------------------------------------------------------------------------


SOURCES = ('tfds', 'npz', 'folder', *cifar.SOURCES, *datasets.SOURCES)  # config.data.source
LOAD_MODES = ('memory', 'stream', 'auto')  # config.data.load
CROPS = ('none', 'center')  # config.data.crop

def resolve_tfds(config, split: str):
  """-> (builder, None) when TFDS can read `split`, else (None, fallback npz path).

  Raises FileNotFoundError with what to do when neither TFDS nor config.data.offline_npz works.
  """
  try:
    return data_sources.tfds_builder(config, split), None
  except data_sources.TfdsUnavailable as e:
    reason = str(e)
  fallback = config.data.offline_npz
  if fallback and data_sources.resolve_path(fallback).exists():
    path = data_sources.resolve_path(fallback)
    logging.warning('TFDS %s[%s] is not available (%s). Using the offline npz %s instead '
                    '(config.data.offline_npz).', config.data.name, split, reason.splitlines()[0],
                    path)
    return None, path
  data_dir = config.data.tfds_data_dir or os.path.expanduser('~/tensorflow_datasets')
  manual = config.data.tfds_manual_dir or os.path.join(data_dir, 'downloads', 'manual')
  missing = (f' config.data.offline_npz={fallback!r} does not exist either.' if fallback else '')
  raise MissingFileError(
      f'TFDS dataset {config.data.name!r} split {split!r} is not prepared in {data_dir}: '
      f'{reason.splitlines()[0]}.{missing} Either prepare it (`tfds build {config.data.name} '
      f'--data_dir={data_dir}`, or --config.data.tfds_download=True on a machine with network; '
      f'ImageNet needs its tar files in {manual}), or set --config.data.offline_npz=PATH, or '
      'switch source: --config.data.source=npz --config.data.npz_path=PATH (x_train/y_train; '
      '--config.data.npz_layout=cifar_rows for CIFAR rows) or --config.data.source=folder '
      '--config.data.folder=ROOT (ROOT/<class_name>/*.png|jpg).')


def _streams(config, builder, split: str) -> bool:
  """Whether this TFDS split is streamed (config.data.load) rather than held in memory."""
  load = config.data.load
  if load not in LOAD_MODES:
    raise ConfigError(f'config.data.load={load!r}: expected auto, memory or stream')
  if load == 'auto':
    return data_sources.tfds_split_bytes(builder, split) > data_sources.STREAM_THRESHOLD_BYTES
  return load == 'stream'


def describe_source(config) -> str:
  """One line naming the source and the file / dataset the train split comes from."""
  source, split = config.data.source, config.data.train_split
  if source == 'npz':
    return (f'npz {data_sources.resolve_path(config.data.npz_path)} '
            f'(layout {config.data.npz_layout}, split {split})')
  if source == 'folder':
    return f'folder {data_sources.resolve_path(config.data.folder)} (split {split})'
  if source in datasets.SOURCES:
    return datasets.describe(config.data, split)
  if source in cifar.SOURCES:
    return cifar.describe(config, split)
  if source == 'tfds':
    builder, fallback = resolve_tfds(config, split)
    if builder is None:
      return f'npz {fallback} (offline fallback for TFDS {config.data.name}, split {split})'
    mode = 'streamed' if _streams(config, builder, split) else 'in memory'
    return f'tfds {config.data.name}[{split}] from {builder.data_dir} ({mode})'
  raise ConfigError(f'config.data.source={source!r}: expected one of {SOURCES}')


def _load(config, split: str, tfds_resolved=None) -> data_sources.Arrays:
  """The split as uint8 [N, S, S, 3] at config.data.image_size, checked against the config.

  tfds_resolved: `resolve_tfds(config, split)` when the caller already has it.
  """
  d = config.data
  cache = data_sources.cache_root(config)
  if d.crop not in CROPS:
    raise ConfigError(f'config.data.crop={d.crop!r}: expected none or center')
  if d.source == 'npz':
    arrays = data_sources.load_npz(d.npz_path, split, d.npz_layout, cache)
  elif d.source == 'folder':
    names = data_sources.train_class_names(d.folder, d.train_split, split)
    arrays = data_sources.load_folder(d.folder, split, d.image_size, d.crop, cache, names)
  elif d.source in datasets.SOURCES:
    arrays = datasets.load(d, split, cache)
  elif d.source in cifar.SOURCES:
    arrays = cifar.load(config, split, cache)
  elif d.source == 'tfds':
    builder, fallback = tfds_resolved or resolve_tfds(config, split)
    if builder is None:  # the fallback npz's layout is read off its shape
      arrays = data_sources.load_npz(str(fallback), split, 'auto', cache)
    else:
      arrays = data_sources.tfds_memory(builder, split, d.image_size, d.crop)
  else:
    raise ConfigError(f'config.data.source={d.source!r}: expected one of {SOURCES}')
  checks.check_arrays(config, arrays, split)
  images = data_sources.resize_images(arrays.images, d.image_size, d.crop)
  _check(arrays, images, config)
  return dataclasses.replace(arrays, images=images)


def _check(arrays, images, config):
  """Clear errors when the data disagrees with the config."""
  s, c, what = config.data.image_size, config.data.num_classes, arrays.description
  if images.ndim != 4 or images.shape[1:] != (s, s, 3):
    raise InputError(f'{what}: images of shape {images.shape[1:]}, expected ({s}, {s}, 3) '
                     '(config.data.image_size)')
  if len(images) == 0:
    raise InputError(f'{what}: no images')
  if arrays.num_classes is not None and arrays.num_classes != c:
    raise InputError(f'{what} has {arrays.num_classes} classes but config.data.num_classes={c}: '
                     f'set --config.data.num_classes={arrays.num_classes}')
  lo, hi = int(arrays.labels.min()), int(arrays.labels.max())
  if lo < 0 or hi >= c:
    raise InputError(f'{what}: labels span [{lo}, {hi}], outside [0, {c}) of '
                     'config.data.num_classes')


def limit_per_class(arrays, n: int):
  """The first `n` examples of each class, in file order (limited-data runs); n <= 0: all."""
  if n <= 0:
    return arrays
  labels = np.asarray(arrays.labels)
  keep = np.sort(np.concatenate([np.flatnonzero(labels == c)[:n] for c in np.unique(labels)]))
  short = [int(c) for c in np.unique(labels) if np.sum(labels == c) < n]
  if short:
    logging.warning('config.data.train_per_class=%d: classes %s have fewer images; all kept.', n,
                    short)
  return dataclasses.replace(arrays, images=arrays.images[keep], labels=labels[keep],
                             description=f'{arrays.description}, first {n} per class')


def load_arrays(config, split: str) -> tuple[np.ndarray, np.ndarray]:
  """A whole split for evaluation: (images uint8 [N, S, S, 3], labels int32 [N]).

  S = config.data.image_size (center-cropped first when config.data.crop='center'). The arrays
  may be shared with other callers in this process: do not write to them.
  """
  arrays = _load(config, split)
  logging.info('Loaded %d images of %s.', len(arrays.labels), arrays.description)
  return arrays.images, arrays.labels


# ---- order, flips, batches -----------------------------------------------------------------


def _seed(config_seed: int) -> int:
  return int(config_seed) % (1 << 32)  # numpy seed sequences take non-negative entropy


class EpochOrder:
  """Maps positions of the infinite sample stream to dataset indices.

  Plain: epoch e is `default_rng((seed, 0, e)).permutation(N)`. Class-balanced: epoch e has
  `C * m` positions (m = the largest class); each class's images are permuted (and repeated when
  it is smaller than m) and every aligned block of C positions holds each class exactly once,
  so a batch of B (a multiple of C) has B / C images per class.
  """

  def __init__(self, labels: np.ndarray, seed: int, class_balanced: bool = False,
               num_classes: int | None = None):
    self._labels, self._seed, self._balanced = labels, _seed(seed), class_balanced
    if class_balanced:
      self._groups = [np.flatnonzero(labels == c) for c in range(num_classes)]
      empty = [c for c, g in enumerate(self._groups) if not len(g)]
      if empty:
        raise ConfigError(f'config.data.class_balanced=True but classes {empty[:10]} have no '
                         'images')
      self.epoch_size = num_classes * max(len(g) for g in self._groups)
    else:
      self.epoch_size = len(labels)
    self._epochs = collections.OrderedDict()  # the two most recent epochs' orders

  def _make(self, epoch: int) -> np.ndarray:
    if not self._balanced:
      rng = np.random.default_rng([self._seed, _PERMUTATION_STREAM, epoch])
      return rng.permutation(self.epoch_size)
    rng = np.random.default_rng([self._seed, _BALANCED_STREAM, epoch])
    m = self.epoch_size // len(self._groups)
    cols = []
    for g in self._groups:
      reps = -(-m // len(g))
      cols.append(np.concatenate([rng.permutation(g) for _ in range(reps)])[:m])
    return rng.permuted(np.stack(cols, axis=1), axis=1).reshape(-1)

  def epoch(self, e: int) -> np.ndarray:
    """int64 [epoch_size]: dataset indices of epoch e, in order."""
    if e not in self._epochs:
      self._epochs[e] = self._make(e)
      while len(self._epochs) > 2:
        self._epochs.popitem(last=False)
    return self._epochs[e]

  def indices(self, start: int, stop: int) -> np.ndarray:
    """Dataset indices at stream positions [start, stop)."""
    n, parts, pos = self.epoch_size, [], start
    while pos < stop:
      e, off = divmod(pos, n)
      take = min(stop - pos, n - off)
      parts.append(self.epoch(e)[off:off + take])
      pos += take
    return np.concatenate(parts) if parts else np.zeros((0,), np.int64)


def flip_mask(seed: int, step: int, global_batch: int) -> np.ndarray:
  """bool [B]: which images of global batch `step` are mirrored (probability 1/2 each)."""
  return np.random.default_rng([_seed(seed), _FLIP_STREAM, step]).random(global_batch) < 0.5


def to_model_range(images: np.ndarray, flips: np.ndarray | None = None) -> np.ndarray:
  """uint8 [b, H, W, 3] (+ bool [b] flips) -> float32 in [-1, 1] (StudioGAN's Normalize(.5, .5))."""
  x = images.astype(np.float32)
  if flips is not None and flips.any():
    x[flips] = x[flips, :, ::-1]
  x /= 127.5
  x -= 1.0
  return x


def _shard(config, process_index, process_count):
  if process_index is None or process_count is None:
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  b = config.train.batch_size
  if b % process_count:
    raise ConfigError(f'config.train.batch_size={b} is not divisible by the {process_count} '
                     'processes')
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} outside [0, {process_count})')
  return process_index, process_count, b // process_count


def _memory_batches(images, labels, config, start_step, process_index, local_b):
  b, seed = config.train.batch_size, config.seed
  order = EpochOrder(labels, seed, config.data.class_balanced, config.data.num_classes)
  lo = process_index * local_b
  step = start_step
  while True:
    idx = order.indices(step * b + lo, step * b + lo + local_b)
    flips = flip_mask(seed, step, b)[lo:lo + local_b] if config.data.random_flip else None
    yield {'image': to_model_range(images[idx], flips), 'label': labels[idx]}
    step += 1


def _stream_batches(builder, config, start_step, process_index, process_count, local_b):
  b, seed, lo = config.train.batch_size, config.seed, process_index * local_b
  batches = tfds_stream.tfds_stream(
      builder, config, start_example=start_step * local_b, process_index=process_index,
      process_count=process_count, local_batch=local_b)
  for step, (images, labels) in enumerate(batches, start=start_step):
    flips = flip_mask(seed, step, b)[lo:lo + local_b] if config.data.random_flip else None
    yield {'image': to_model_range(images, flips), 'label': labels.astype(np.int32)}


class _Prefetch:
  """Runs an iterator in a daemon thread, `size` items ahead (numpy gathers release the GIL).

  The thread holds only the queue, the stop flag and the source iterator (not this object), so
  dropping the last reference to a _Prefetch stops its thread.
  """

  _END = object()

  def __init__(self, it, size: int):
    self._queue, self._stop = queue.Queue(maxsize=size), threading.Event()
    self._thread = threading.Thread(target=_Prefetch._run, args=(it, self._queue, self._stop),
                                    daemon=True, name='input-prefetch')
    self._thread.start()

  @staticmethod
  def _run(it, q, stop):
    def put(item) -> bool:
      while not stop.is_set():
        try:
          q.put(item, timeout=0.1)
          return True
        except queue.Full:
          pass
      return False

    try:
      for item in it:
        if not put(item):
          return
    except BaseException as e:  # noqa: BLE001 (re-raised in the consumer)
      put(e)
      return
    put(_Prefetch._END)

  def __iter__(self):
    return self

  def __next__(self):
    item = self._queue.get()
    if item is self._END:
      raise StopIteration
    if isinstance(item, BaseException):
      raise item
    return item

  def close(self):
    """Stops the thread (it exits within 0.1 s)."""
    self._stop.set()

  def __del__(self):
    self._stop.set()


@dataclasses.dataclass(frozen=True)
class TrainSource:
  """The train split, loaded and checked: `arrays` in memory, or a TFDS `builder` to stream."""
  arrays: data_sources.Arrays | None
  builder: object | None


def open_train_source(config) -> TrainSource:
  """Loads and checks config.data.train_split (or opens its TFDS stream). The trainer calls this
  before it builds any model, so a data error is reported in seconds, not after the model's
  initial state (issue 26)."""
  split = config.data.train_split
  builder, resolved = None, None
  if config.data.source == 'tfds':
    resolved = resolve_tfds(config, split)
    builder = resolved[0]
  if builder is not None and _streams(config, builder, split):
    if config.data.class_balanced or config.data.train_per_class > 0:
      raise ConfigError('config.data.class_balanced / train_per_class need the split in memory: '
                       'set --config.data.load=memory')
    return TrainSource(None, builder)
  return TrainSource(limit_per_class(_load(config, split, resolved), config.data.train_per_class),
                     None)


def create_train_iterator(config, *, start_step: int = 0, process_index: int | None = None,
                          process_count: int | None = None, source: TrainSource | None = None):
  """Infinite iterator of this process's part of each global training batch.

  Args:
    config: uses config.data.*, config.train.batch_size (global B), config.seed.
    start_step: index of the first batch (the trainer passes train step * d_updates_per_step);
      batch k is the same whatever start_step was.
    process_index, process_count: this process's place (default: jax.process_index() /
      jax.process_count()).
    source: `open_train_source(config)`, when the caller has opened it already.

  Yields:
    {'image': float32 [B / process_count, S, S, 3] in [-1, 1], 'label': int32 [B / P]}, the
    contiguous slice [p * B / P, (p + 1) * B / P) of the global batch. The source is loaded
    (and checked) when this is called, not at the first `next`.
  """
  pi, pc, local_b = _shard(config, process_index, process_count)
  source = source or open_train_source(config)
  if source.builder is not None:
    logging.info('Streaming TFDS %s[%s]: process %d of %d, %d images per batch.',
                 config.data.name, config.data.train_split, pi, pc, local_b)
    batches = _stream_batches(source.builder, config, start_step, pi, pc, local_b)
  else:
    arrays = source.arrays
    logging.info('Training data: %d images of %s in memory; process %d of %d takes %d per batch '
                 'of %d.', len(arrays.labels), arrays.description, pi, pc, local_b,
                 config.train.batch_size)
    batches = _memory_batches(arrays.images, arrays.labels, config, start_step, pi, local_b)
  if config.data.prefetch > 0:
    return _Prefetch(batches, config.data.prefetch)
  return batches
