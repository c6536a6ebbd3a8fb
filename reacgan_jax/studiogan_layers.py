"""One StudioGAN (torch) layer's saved tensors -> our flax params, BN statistics and SN vector.

PyTorch-StudioGAN saves `state_dict()`s (src/utils/misc.py save_model). Its spectral-normalised
layers (src/utils/ops.py snconv2d / sndeconv2d / snlinear / sn_embedding) are
`torch.nn.utils.spectral_norm(..., eps=1e-6)` modules, saved as `weight_orig`, `weight_u`,
`weight_v`. In eval mode torch runs no power iteration: the weight is
`weight_orig / sigma_t`, sigma_t = u . (W v) with the *stored* u and v (W: torch's matrix view,
(out, in*kh*kw), or (num, dim) for an embedding; ConvTranspose: dim 1, (out, in*kh*kw)).

Ours (reacgan_jax/spectral_norm.py) keeps one vector per leaf, `u` of length leaf.shape[-1]
(Dense/conv: out, = torch's u side; embedding: dim, = torch's *v* side), and in eval mode uses
sigma = ||M u|| with M = leaf.reshape(-1, out). There is no stored v, so copying torch's u is
exact only at power-iteration convergence (never for a one-output layer, where ||M u|| = ||W||
while torch's u.(W v) is smaller until converged). `exact_u` stores torch's direction scaled so
that ||M u|| = sigma_t (computed in float64): our eval forward then divides by StudioGAN's sigma
exactly. The stored u is then not of unit length; a training step renormalises it first.
"""

import numpy as np

_NA = object()


class StateReader:
  """A torch state dict (name -> float64 numpy) that records which entries were read."""

  def __init__(self, state: dict, what: str):
    self.state, self.what, self.used = state, what, set()

  def has(self, name: str) -> bool:
    return name in self.state

  def take(self, name: str, default=_NA) -> np.ndarray:
    if name not in self.state:
      if default is not _NA:
        return default
      near = sorted(k for k in self.state if k.split('.')[0] == name.split('.')[0])[:6]
      raise ValueError(f'{self.what}: no tensor {name!r} (entries starting alike: {near}); is '
                       'the --config (backbone, cond_method, attention blocks, SN) the one this '
                       'checkpoint was trained with?')
    self.used.add(name)
    return self.state[name]

  def unused(self) -> list[str]:
    """Entries nobody read (num_batches_tracked is ignored: torch BN momentum is fixed)."""
    return sorted(k for k in self.state
                  if k not in self.used and not k.endswith('num_batches_tracked'))


def exact_u(mat: np.ndarray, start: np.ndarray, sigma: float, name: str) -> np.ndarray:
  """Our SN vector for a layer whose eval-mode sigma must be `sigma`: start * sigma / ||mat start||.

  Our eval forward divides by ||mat u|| (v = normalize(mat u), sigma = v . mat u), which is
  linear in the length of u: scaling torch's u (its v for an embedding) makes it sigma exactly,
  whatever the layer's shape (no unit vector can do that for a one-output layer such as D's
  adversarial linear, where ||mat u|| = ||W|| for both unit u). A training step renormalises u
  first thing (u = normalize(v mat)), so the length is forgotten there and the power iteration
  continues from torch's direction.
  """
  if not sigma > 0:
    raise ValueError(f'{name}: the stored spectral-norm vectors give sigma={sigma:.6g} <= 0 '
                     '(u/v never updated by a train-mode forward?); it cannot be represented')
  norm = float(np.linalg.norm(mat @ start))
  if not norm > 0:
    raise ValueError(f'{name}: the weight maps the stored SN vector to 0; cannot convert')
  return (start * (sigma / norm)).astype(np.float32)


def _sn_weight(r: StateReader, prefix: str, sn: bool, transpose_dim: bool = False):
  """-> (W with torch's layout, torch matrix view, u, v, sigma) or (W, None...) without SN."""
  if not sn:
    if r.has(f'{prefix}.weight_orig') and not r.has(f'{prefix}.weight'):
      raise ValueError(f'{r.what}: {prefix} is spectral-normalised in the checkpoint but the '
                       'config has apply_*_sn=False: set config.model.apply_g_sn / apply_d_sn')
    return r.take(f'{prefix}.weight'), None, None, None, None
  if not r.has(f'{prefix}.weight_orig') and r.has(f'{prefix}.weight'):
    raise ValueError(f'{r.what}: {prefix} has no spectral norm (weight_orig/u/v) in the '
                     'checkpoint but the config has apply_*_sn=True')
  w = r.take(f'{prefix}.weight_orig')
  u, v = r.take(f'{prefix}.weight_u'), r.take(f'{prefix}.weight_v')
  mat = (np.swapaxes(w, 0, 1) if transpose_dim else w).reshape(w.shape[1 if transpose_dim else 0],
                                                               -1)
  return w, mat, u, v, float(u @ (mat @ v))


def linear(r: StateReader, prefix: str, sn: bool, bias: bool, out_perm=None):
  """nn.Linear (out, in) -> ({'kernel': (in, out)[, 'bias']}, u or None).

  out_perm: our output j is torch's output out_perm[j] (G's linear0: torch views its output
  as (C, 4, 4), ours as (4, 4, C)).
  """
  w, _, u, _, sigma = _sn_weight(r, prefix, sn)
  perm = np.arange(w.shape[0]) if out_perm is None else out_perm
  kernel = w[perm].T
  params = {'kernel': kernel.astype(np.float32)}
  if bias:
    params['bias'] = r.take(f'{prefix}.bias')[perm].astype(np.float32)
  u_ours = exact_u(kernel, u[perm], sigma, f'{r.what}:{prefix}') if sn else None
  return params, u_ours


def conv(r: StateReader, prefix: str, sn: bool, bias: bool = True):
  """nn.Conv2d (out, in, kh, kw) -> ({'kernel': HWIO[, 'bias']}, u or None)."""
  w, _, u, _, sigma = _sn_weight(r, prefix, sn)
  kernel = w.transpose(2, 3, 1, 0)
  params = {'kernel': kernel.astype(np.float32)}
  if bias:
    params['bias'] = r.take(f'{prefix}.bias').astype(np.float32)
  u_ours = (exact_u(kernel.reshape(-1, kernel.shape[-1]), u, sigma, f'{r.what}:{prefix}')
            if sn else None)
  return params, u_ours


def deconv(r: StateReader, prefix: str, sn: bool):
  """nn.ConvTranspose2d (in, out, kh, kw) -> flax ConvTranspose HWIO (spatially flipped).

  torch's transposed conv is the stride-dilated conv with the flipped kernel; flax's
  ConvTranspose (transpose_kernel=False) uses its kernel unflipped, so ours[a, b, i, o] =
  torch[i, o, K-1-a, K-1-b]. Padding: ours k - 1 - p (models/dcgan.py).
  """
  w, _, u, _, sigma = _sn_weight(r, prefix, sn, transpose_dim=True)
  kernel = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
  params = {'kernel': np.ascontiguousarray(kernel).astype(np.float32),
            'bias': r.take(f'{prefix}.bias').astype(np.float32)}
  u_ours = (exact_u(kernel.reshape(-1, kernel.shape[-1]), u, sigma, f'{r.what}:{prefix}')
            if sn else None)
  return params, u_ours


def embedding(r: StateReader, prefix: str, sn: bool):
  """nn.Embedding (num, dim) -> ({'embedding': (num, dim)}, u over dim = from torch's v)."""
  w, mat, _, v, sigma = _sn_weight(r, prefix, sn)
  u_ours = exact_u(mat, v, sigma, f'{r.what}:{prefix}') if sn else None
  return {'embedding': w.astype(np.float32)}, u_ours


def batch_norm(r: StateReader, prefix: str, affine: bool):
  """nn.BatchNorm2d -> (params {'scale', 'bias'} or {}, batch_stats {'mean', 'var'})."""
  stats = {'mean': r.take(f'{prefix}.running_mean').astype(np.float32),
           'var': r.take(f'{prefix}.running_var').astype(np.float32)}
  params = {}
  if affine:
    params = {'scale': r.take(f'{prefix}.weight').astype(np.float32),
              'bias': r.take(f'{prefix}.bias').astype(np.float32)}
  return params, stats
