"""Evaluation metrics by name: what each needs, how it is computed, its part of the protocol.

`METRICS[name] = Metric(compute, needs, protocol)`; `config.eval.metrics` names them. `needs`
says what the evaluator must produce for it (Inception outputs of the samples, their DINOv2
features, the samples' images, the CIFAR classifier's verdicts); `compute(evaluator, gen, rng)`
returns `(results, n_ref, notes)` from those (reading reference data through the evaluator's
cached accessors); `protocol(evaluator)` is the part of the protocol line it adds when it
produced a result (it reads `evaluator.config`, and what the evaluator loaded). Adding a metric
is one function and one entry here; the evaluator has no branch per metric.

`PROTOCOLS[config.eval.protocol]` is the sampling protocol around the metrics: how the labels of
the generated images are drawn and how many splits the Inception Score takes ('ours' = class-
balanced labels and config.eval.is_splits; 'studiogan' = StudioGAN's evaluate(): labels i.i.d.
uniform, y_sampler='totally_random', and IS over 1 split, its hard-coded num_splits).
"""

import dataclasses
from collections.abc import Callable

import jax
import numpy as np
from absl import logging

from reacgan_jax.errors import ConfigError
from reacgan_jax.evaluation import fid, kid, metrics, msssim

NEEDS = ('features', 'dinov2', 'images', 'classifier')


@dataclasses.dataclass(frozen=True)
class Protocol:
  labels: str  # 'balanced': each class floor/ceil(N / C) times; 'uniform': i.i.d. uniform
  is_splits: int | None  # None = config.eval.is_splits
  label_text: str  # how the protocol line names the label draw


PROTOCOLS = {
    'ours': Protocol('balanced', None, 'class-balanced'),
    # StudioGAN src/worker.py evaluate(): y_sampler="totally_random" (utils/sample.py sample_y:
    # torch.randint(0, num_classes) per sample) and num_splits = 1 for ins.eval_features.
    'studiogan': Protocol('uniform', 1, 'labels i.i.d. uniform'),
}


def protocol_name(config) -> str:
  """config.eval.protocol ('ours' when absent: configs saved before the key existed)."""
  return config.eval.get('protocol', 'ours')


def protocol(config) -> Protocol:
  return PROTOCOLS[protocol_name(config)]


def is_splits(config) -> int:
  """Inception Score splits of the run's protocol."""
  fixed = protocol(config).is_splits
  return config.eval.is_splits if fixed is None else fixed


@dataclasses.dataclass(frozen=True)
class Metric:
  compute: Callable
  needs: tuple[str, ...] = ()
  protocol: Callable | None = None
  result_key: str = ''  # the result whose presence means the metric ran (protocol line)


def _fid(ev, gen, rng):
  del rng
  ref = ev.reference_statistics()
  mu, sigma = fid.compute_statistics(gen['pool'])
  fid.check_finite({'mu': mu, 'sigma': sigma}, 'the generated samples')  # never "FID: nan"
  return {'fid': fid.frechet_distance(mu, sigma, ref['mu'], ref['sigma'])}, ref['n'], []


def _is(ev, gen, rng):
  del rng
  if gen['logits'] is None:
    logging.warning("Inception Score skipped: the Inception weights have no logits (%s). "
                    "Convert pytorch-fid's weights for IS, or drop 'is' from "
                    'config.eval.metrics.', ev.features_tag)
    return {}, None, ['IS skipped (weights without logits)']
  mean, std = metrics.inception_score(gen['logits'], splits=is_splits(ev.config))
  return {'is_mean': mean, 'is_std': std}, None, []


def _prdc(ev, gen, rng):
  del rng
  ref = ev.reference_features()
  return metrics.prdc(ref['pool'], gen['pool'], k=ev.config.eval.prdc_k), ref['n'], []


def _kid(ev, gen, rng):
  ref = ev.reference_features()
  e = ev.config.eval
  # Its own stream of the metrics key (MS-SSIM draws its pairs from the key itself).
  seed = np.asarray(jax.random.key_data(jax.random.fold_in(rng, 1))).astype(np.uint32).ravel()
  mean, std = kid.kernel_inception_distance(gen['pool'], ref['pool'], num_subsets=e.kid_subsets,
                                            max_subset_size=e.kid_subset_size, seed=seed)
  return {'kid_mean': mean, 'kid_std': std}, ref['n'], []


def _ifid(ev, gen, rng):
  del rng
  ref = ev.reference_features()
  value = metrics.intra_class_fid(gen['pool'], gen['labels'], ref['pool'], ref['labels'],
                                  num_classes=ev.config.data.num_classes)
  return {'ifid': value}, ref['n'], []


def _fd_dinov2(ev, gen, rng):
  """FD-DINOv2 (Stein et al. 2023, dgm-eval): the Fréchet distance of DINOv2 CLS features."""
  del rng
  ref = ev.reference_dinov2_statistics()
  mu, sigma = fid.compute_statistics(gen['dinov2'])
  fid.check_finite({'mu': mu, 'sigma': sigma}, 'the generated samples (DINOv2 features)')
  return {'fd_dinov2': fid.frechet_distance(mu, sigma, ref['mu'], ref['sigma'])}, ref['n'], []


def _accuracy(ev, gen, rng):
  del rng
  out = {'accuracy': float(gen['correct'].mean())}
  test_acc = ev.classifier_meta.get('test_accuracy')
  if test_acc is not None:
    out['classifier_test_accuracy'] = float(test_acc)
  return out, None, []


def _msssim(ev, gen, rng):
  c = ev.config
  seed = np.asarray(jax.random.key_data(rng)).astype(np.uint32).ravel()
  pairs = dict(pairs_per_class=c.eval.msssim_pairs, num_classes=c.data.num_classes)
  value, _ = msssim.intra_class_msssim(gen['images'], gen['labels'],
                                       rng=np.random.default_rng(seed), **pairs)
  # The same diagnostic on the real split: a sample class is less diverse than real data when
  # its value is above this one (the ACGAN paper's comparison).
  ref_images, ref_labels = ev.reference_arrays()
  real, _ = msssim.intra_class_msssim(ref_images, ref_labels, rng=np.random.default_rng(seed),
                                      **pairs)
  return {'msssim': value, 'msssim_real': real}, None, []


METRICS = {
    'fid': Metric(_fid, needs=('features',)),
    'is': Metric(_is, needs=('features',), result_key='is_mean',
                 protocol=lambda ev: f'IS splits={is_splits(ev.config)}'),
    'prdc': Metric(_prdc, needs=('features',), result_key='precision',
                   protocol=lambda ev: f'PRDC k={ev.config.eval.prdc_k}'),
    'kid': Metric(_kid, needs=('features',), result_key='kid_mean',
                  protocol=lambda ev: (f'KID {ev.config.eval.kid_subsets} subsets of min(n, '
                                       f'{ev.config.eval.kid_subset_size})')),
    'ifid': Metric(_ifid, needs=('features',)),
    'accuracy': Metric(_accuracy, needs=('classifier',)),
    'msssim': Metric(_msssim, needs=('images',), result_key='msssim',
                     protocol=lambda ev: f'MS-SSIM {ev.config.eval.msssim_pairs} pairs/class'),
    'fd_dinov2': Metric(_fd_dinov2, needs=('dinov2',), result_key='fd_dinov2',
                        protocol=lambda ev: f'FD-DINOv2 {ev.dinov2_tag}'),
}


def parse_metrics(spec: str) -> tuple[str, ...]:
  """'fid, is,prdc' -> ('fid', 'is', 'prdc'); unknown names fail naming config.eval.metrics."""
  names = tuple(m.strip().lower() for m in spec.split(',') if m.strip())
  bad = [m for m in names if m not in METRICS]
  if bad:
    raise ConfigError(f'config.eval.metrics={spec!r}: unknown {", ".join(bad)}; expected a comma '
                     f'list of {", ".join(METRICS)}')
  return tuple(dict.fromkeys(names))


def needs(names, what: str) -> bool:
  """Whether any of the metrics `names` needs `what` (one of NEEDS)."""
  return any(what in METRICS[n].needs for n in names)
