"""IS, PRDC and intra-class FID vs float64 references written from their papers / reference code."""

import numpy as np
import pytest
from scipy.spatial.distance import cdist

from reacgan_jax.evaluation import fid, metrics

# ---- Inception Score ---------------------------------------------------------------------------


def _ref_is(logits, splits):
  """Salimans et al. 2016 as in the original improved-GAN code: softmax, chunks, exp(mean KL)."""
  p = np.exp(logits - logits.max(1, keepdims=True))
  p /= p.sum(1, keepdims=True)
  n, scores = len(p), []
  for i in range(splits):
    part = p[i * n // splits:(i + 1) * n // splits]
    py = part.mean(0, keepdims=True)
    scores.append(np.exp(np.mean(np.sum(part * (np.log(part) - np.log(py)), 1))))
  return np.mean(scores), np.std(scores)


@pytest.mark.parametrize('splits', [1, 10, 7])
def test_inception_score_matches_reference(splits):
  rng = np.random.default_rng(0)
  logits = rng.normal(scale=3.0, size=(1003, 1008))  # 1003: chunks of unequal length with 7
  got = metrics.inception_score(logits.astype(np.float32), splits)
  want = _ref_is(logits.astype(np.float32).astype(np.float64), splits)
  np.testing.assert_allclose(got, want, rtol=1e-10)
  assert got[0] > 1.5


def test_inception_score_extremes():
  # Uniform predictions: every KL is 0, IS = 1. Confident and evenly spread over K classes: K.
  assert metrics.inception_score(np.zeros((100, 1008)), 10) == pytest.approx((1.0, 0.0))
  k = 20
  confident = np.full((400, 1008), -1e4)
  confident[np.arange(400), np.arange(400) % k] = 0.0
  mean, std = metrics.inception_score(confident, 10)
  assert mean == pytest.approx(k, rel=1e-9) and std == pytest.approx(0.0, abs=1e-9)


def test_inception_score_errors():
  with pytest.raises(ValueError, match='no 1008-way logits'):
    metrics.inception_score(None)
  with pytest.raises(ValueError, match='is_splits'):
    metrics.inception_score(np.zeros((5, 10)), splits=10)


# ---- PRDC --------------------------------------------------------------------------------------


def _ref_prdc(real, fake, k):
  """Naeem et al.'s compute_prdc with full float64 distance matrices (scipy instead of sklearn).

  Radii: the (k+1)-th smallest distance of each row (argpartition, then the max of the k+1
  smallest, as their get_kth_value), so the point itself is not its own neighbour.
  """
  def kth(d, kk):
    idx = np.argpartition(d, kk - 1, axis=-1)[..., :kk]
    return np.take_along_axis(d, idx, axis=-1).max(axis=-1)

  r_real = kth(cdist(real, real), k + 1)
  r_fake = kth(cdist(fake, fake), k + 1)
  d = cdist(real, fake)
  return {
      'precision': (d < r_real[:, None]).any(axis=0).mean(),
      'recall': (d < r_fake[None, :]).any(axis=1).mean(),
      'density': (1.0 / k) * (d < r_real[:, None]).sum(axis=0).mean(),
      'coverage': (d.min(axis=1) < r_real).mean(),
  }


@pytest.mark.parametrize('k', [1, 5])
def test_prdc_matches_reference(k):
  rng = np.random.default_rng(1)
  real = rng.normal(size=(300, 16))
  fake = 0.8 * rng.normal(size=(250, 16)) + 0.3  # partly overlapping: all four in (0, 1)
  got = metrics.prdc(real.astype(np.float32), fake.astype(np.float32), k=k, chunk=64)
  want = _ref_prdc(real.astype(np.float32).astype(np.float64),
                   fake.astype(np.float32).astype(np.float64), k)
  for name in want:
    assert got[name] == pytest.approx(want[name], abs=1e-12), name
  assert 0 < got['precision'] < 1 and 0 < got['coverage'] < 1


def test_prdc_separated_and_identical_sets():
  rng = np.random.default_rng(2)
  real = rng.normal(size=(200, 8))
  far = real + 100.0
  got = metrics.prdc(real, far, k=5)
  assert got == {'precision': 0.0, 'recall': 0.0, 'density': 0.0, 'coverage': 0.0}
  # Fakes = reals: every fake sits on a real centre (distance 0 < radius), so precision,
  # recall and coverage are 1; each real ball strictly contains itself and its k - 1 nearest
  # neighbours (the k-th lies on the boundary), so density = N k / (N k) = 1 exactly.
  same = metrics.prdc(real, real.copy(), k=5)
  assert same['precision'] == same['recall'] == same['coverage'] == 1.0
  assert same['density'] == 1.0


def test_knn_radii_exclude_self():
  x = np.array([[0.0], [1.0], [3.0], [7.0]])
  np.testing.assert_allclose(metrics.knn_radii(x, 1), [1.0, 1.0, 2.0, 4.0])
  np.testing.assert_allclose(metrics.knn_radii(x, 2), [3.0, 2.0, 3.0, 6.0])
  with pytest.raises(ValueError, match='prdc_k'):
    metrics.knn_radii(x, 4)


# ---- intra-class FID ---------------------------------------------------------------------------


def test_intra_class_fid_is_mean_of_per_class_fids():
  rng = np.random.default_rng(3)
  c, d = 3, 6
  ref = rng.normal(size=(600, d))
  ref_labels = np.arange(600) % c
  ref += ref_labels[:, None] * 2.0  # class-dependent means
  fake = rng.normal(size=(450, d)) * 1.2
  labels = rng.permutation(np.arange(450) % c)
  fake += labels[:, None] * 2.0 + np.array([0.0, 0.5, 1.0])[labels][:, None]  # class c off by c/2
  mean, per_class = metrics.intra_class_fid(fake, labels, ref, ref_labels,
                                            return_per_class=True)
  for k in range(c):
    f, r = fake[labels == k], ref[ref_labels == k]
    mu1, mu2 = f.mean(0), r.mean(0)
    s1, s2 = np.cov(f, rowvar=False), np.cov(r, rowvar=False)
    # Written out: |mu1 - mu2|^2 + tr(S1 + S2 - 2 (S1 S2)^1/2) via eigenvalues of S1 S2.
    ev = np.linalg.eigvals(s1 @ s2)
    want = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2) - 2 * np.sum(np.sqrt(ev.real.clip(0)))
    assert per_class[k] == pytest.approx(want, rel=1e-8)
  assert mean == pytest.approx(per_class.mean())
  assert per_class[0] < per_class[1] < per_class[2]  # the larger class offset, the larger FID
  # Unlike plain FID: the class structure matters. Swapping labels of fakes raises iFID while
  # the unconditional FID is unchanged.
  swapped = metrics.intra_class_fid(fake, (labels + 1) % c, ref, ref_labels)
  assert swapped > mean + 1.0
  assert fid.frechet_distance(*fid.compute_statistics(fake), *fid.compute_statistics(ref)) == (
      pytest.approx(fid.frechet_distance(*fid.compute_statistics(fake[np.argsort(labels)]),
                                         *fid.compute_statistics(ref))))


def test_intra_class_fid_needs_samples_per_class():
  f = np.zeros((4, 2))
  with pytest.raises(ValueError, match='num_samples'):
    metrics.intra_class_fid(f, np.array([0, 0, 0, 1]), f, np.array([0, 0, 1, 1]))
