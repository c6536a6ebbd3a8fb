"""Kernel Inception Distance (Binkowski et al. 2018, "Demystifying MMD GANs").

The rule of stylegan2-ada-pytorch's metrics/kernel_inception_distance.py (itself the original
MMD-GAN compute_scores.py), in float64 NumPy. With d the feature width, the cubic polynomial
kernel k(x, y) = (x.y / d + 1)^3 and m = min(n_gen, n_real, max_subset_size), each of
`num_subsets` subsets draws m generated rows, then m real rows, each without replacement and
independently of the other subsets, and adds

    t_s = (sum(A) - trace(A)) / (m - 1) - 2 sum(B) / m,
    A = k(X, X) + k(Y, Y),  B = k(X, Y)      (X generated [m, d], Y real [m, d])

i.e. m times the unbiased MMD^2 estimate of that subset. KID = sum_s t_s / num_subsets / m
(their order of operations). The spread is reported as NumPy's std (ddof=0) of the per-subset
estimates t_s / m, as torch-fidelity's `kernel_distance_std`; stylegan2-ada and clean-fid report
the mean only.

Subsets are drawn with `np.random.RandomState(seed).choice(n, m, replace=False)`, generated
first: the legacy generator both references use (stylegan2-ada through the global np.random
state, torch-fidelity through RandomState(seed)), so a seed gives the same subsets as theirs.
Results are unbiased: KID can be (slightly) negative when the two sets share a distribution.
"""

from __future__ import annotations

import numpy as np

from reacgan_jax.errors import InputError

NUM_SUBSETS = 100  # stylegan2-ada-pytorch's defaults (metric kid50k_full)
MAX_SUBSET_SIZE = 1000


def subset_estimates(gen_features, real_features, *, num_subsets: int = NUM_SUBSETS,
                     max_subset_size: int = MAX_SUBSET_SIZE, seed=0) -> np.ndarray:
  """[num_subsets] float64 t_s of the module docstring (m times each subset's unbiased MMD^2).

  Args:
    gen_features, real_features: [N_gen, d], [N_real, d] (e.g. Inception pool3, d = 2048).
    num_subsets, max_subset_size: as stylegan2-ada's compute_kid (defaults 100, 1000).
    seed: int or sequence of uint32, the RandomState seed of the subset draws.
  """
  x_all = np.asarray(gen_features, np.float64)
  y_all = np.asarray(real_features, np.float64)
  if x_all.ndim != 2 or y_all.ndim != 2 or x_all.shape[1] != y_all.shape[1]:
    raise InputError(f'KID: expected [N, d] features of one width, got {x_all.shape} (generated) '
                     f'and {y_all.shape} (real)')
  m = min(x_all.shape[0], y_all.shape[0], max_subset_size)
  if m < 2 or num_subsets < 1:
    raise InputError(f'KID: subsets of m = min(n_gen={x_all.shape[0]}, n_real={y_all.shape[0]}, '
                     f'max_subset_size={max_subset_size}) = {m} rows; the unbiased estimate needs '
                     f'm >= 2 and num_subsets={num_subsets} >= 1 (config.eval.kid_subset_size / '
                     'kid_subsets)')
  d = x_all.shape[1]
  draws = np.random.RandomState(seed)
  t = np.empty(num_subsets)
  for s in range(num_subsets):
    x = x_all[draws.choice(x_all.shape[0], m, replace=False)]
    y = y_all[draws.choice(y_all.shape[0], m, replace=False)]
    a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
    b = (x @ y.T / d + 1) ** 3
    t[s] = (a.sum() - np.diag(a).sum()) / (m - 1) - b.sum() * 2 / m
  return t


def kernel_inception_distance(gen_features, real_features, *, num_subsets: int = NUM_SUBSETS,
                              max_subset_size: int = MAX_SUBSET_SIZE, seed=0
                              ) -> tuple[float, float]:
  """(KID, std over subsets) of the module docstring, Python floats.

  Deterministic given `seed` (an int, or the uint32 words of a jax key).
  """
  t = subset_estimates(gen_features, real_features, num_subsets=num_subsets,
                       max_subset_size=max_subset_size, seed=seed)
  m = min(np.shape(gen_features)[0], np.shape(real_features)[0], max_subset_size)
  kid = float(t.sum() / num_subsets / m)
  return kid, float(np.std(t / m))
