"""One StudioGAN (torch) layer's saved tensors -> our flax params, BN statistics and SN vectors.

PyTorch-StudioGAN saves `state_dict()`s (src/utils/misc.py save_model). Its spectral-normalised
layers (src/utils/ops.py snconv2d / sndeconv2d / snlinear / sn_embedding) are
`torch.nn.utils.spectral_norm(..., eps=1e-6)` modules, saved as `weight_orig`, `weight_u`,
`weight_v`. In eval mode torch runs no power iteration: the weight is
`weight_orig / sigma_t`, sigma_t = u . (W v) with the *stored* u and v (W: torch's matrix view,
(out, in*kh*kw), or (num, dim) for an embedding; ConvTranspose: dim 1, (out, in*kh*kw)).

The layer readers return `SNVectors(mat, u, v, sigma)` in our kernel view (mat = the leaf as
(rows, last axis), u over the last axis, v over the rows, permuted like the weight), and
`sn_vectors` turns them into our `{'u', 'v'}` (spectral_norm.py) for the config's rules:
sn_eval='stored' copies torch's u and v (our eval sigma = v . mat u is then torch's, to float32
rounding); an embedding with sn_embedding_u='classes' swaps to torch's orientation (u over the
classes). With sn_eval='recompute' (legacy) there is no stored v to use, so `exact_u` stores
torch's direction scaled so that ||A u|| = sigma_t (float64): our eval forward then divides by
StudioGAN's sigma exactly; the u is then not of unit length (a training step renormalises it).
"""

import collections

import numpy as np

_NA = object()
SNVectors = collections.namedtuple('SNVectors', 'mat u v sigma')


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

  Our legacy eval forward (sn_eval='recompute') divides by ||mat u|| (v = normalize(mat u),
  sigma = v . mat u), which is
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
  """-> (W with torch's layout, u, v, sigma) or (W, None, None, None) without SN."""
  if not sn:
    if r.has(f'{prefix}.weight_orig') and not r.has(f'{prefix}.weight'):
      raise ValueError(f'{r.what}: {prefix} is spectral-normalised in the checkpoint but the '
                       'config has apply_*_sn=False: set config.model.apply_g_sn / apply_d_sn')
    return r.take(f'{prefix}.weight'), None, None, None
  if not r.has(f'{prefix}.weight_orig') and r.has(f'{prefix}.weight'):
    raise ValueError(f'{r.what}: {prefix} has no spectral norm (weight_orig/u/v) in the '
                     'checkpoint but the config has apply_*_sn=True')
  w = r.take(f'{prefix}.weight_orig')
  u, v = r.take(f'{prefix}.weight_u'), r.take(f'{prefix}.weight_v')
  mat = (np.swapaxes(w, 0, 1) if transpose_dim else w).reshape(w.shape[1 if transpose_dim else 0],
                                                               -1)
  return w, u, v, float(u @ (mat @ v))


def _vectors(name, mat, u, v, sigma):
  """SNVectors in our view, checked: v . mat u must be torch's sigma (a permutation bug)."""
  ours = float(v @ (mat @ u))
  if not np.isclose(ours, sigma, rtol=1e-9, atol=1e-12):
    raise AssertionError(f'{name}: SN vectors permuted wrongly ({ours} vs torch {sigma})')
  return SNVectors(mat, u, v, sigma)


def sn_vectors(vec: SNVectors, rows: bool, eval_mode: str, name: str) -> dict:
  """Our `{'u', 'v'}` (float32) of a layer: see the module docstring."""
  mat, u, v = (vec.mat.T, vec.v, vec.u) if rows else (vec.mat, vec.u, vec.v)
  if eval_mode == 'stored':
    return {'u': u.astype(np.float32), 'v': v.astype(np.float32)}
  u_e = exact_u(mat, u, vec.sigma, name)
  mu = mat @ u_e.astype(np.float64)
  return {'u': u_e, 'v': (mu / np.linalg.norm(mu)).astype(np.float32)}


def _conv_v(v: np.ndarray, shape, flip: bool = False) -> np.ndarray:
  """torch's v over (in, kh, kw) -> ours over the HWIO rows (kh, kw, in), flipped for deconv."""
  t = v.reshape(shape)
  if flip:
    t = t[:, ::-1, ::-1]
  return t.transpose(1, 2, 0).reshape(-1)


def linear(r: StateReader, prefix: str, sn: bool, bias: bool, out_perm=None):
  """nn.Linear (out, in) -> ({'kernel': (in, out)[, 'bias']}, SNVectors or None).

  out_perm: our output j is torch's output out_perm[j] (G's linear0: torch views its output
  as (C, 4, 4), ours as (4, 4, C)).
  """
  w, u, v, sigma = _sn_weight(r, prefix, sn)
  perm = np.arange(w.shape[0]) if out_perm is None else out_perm
  kernel = w[perm].T
  params = {'kernel': kernel.astype(np.float32)}
  if bias:
    params['bias'] = r.take(f'{prefix}.bias')[perm].astype(np.float32)
  return params, (_vectors(f'{r.what}:{prefix}', kernel, u[perm], v, sigma) if sn else None)


def conv(r: StateReader, prefix: str, sn: bool, bias: bool = True):
  """nn.Conv2d (out, in, kh, kw) -> ({'kernel': HWIO[, 'bias']}, SNVectors or None)."""
  w, u, v, sigma = _sn_weight(r, prefix, sn)
  kernel = w.transpose(2, 3, 1, 0)
  params = {'kernel': kernel.astype(np.float32)}
  if bias:
    params['bias'] = r.take(f'{prefix}.bias').astype(np.float32)
  if not sn:
    return params, None
  return params, _vectors(f'{r.what}:{prefix}', kernel.reshape(-1, kernel.shape[-1]), u,
                          _conv_v(v, w.shape[1:]), sigma)


def deconv(r: StateReader, prefix: str, sn: bool):
  """nn.ConvTranspose2d (in, out, kh, kw) -> flax ConvTranspose HWIO (spatially flipped).

  torch's transposed conv is the stride-dilated conv with the flipped kernel; flax's
  ConvTranspose (transpose_kernel=False) uses its kernel unflipped, so ours[a, b, i, o] =
  torch[i, o, K-1-a, K-1-b]. Padding: ours k - 1 - p (models/dcgan.py).
  """
  w, u, v, sigma = _sn_weight(r, prefix, sn, transpose_dim=True)
  kernel = w[:, :, ::-1, ::-1].transpose(2, 3, 0, 1)
  params = {'kernel': np.ascontiguousarray(kernel).astype(np.float32),
            'bias': r.take(f'{prefix}.bias').astype(np.float32)}
  if not sn:
    return params, None
  shape = (w.shape[0],) + w.shape[2:]
  return params, _vectors(f'{r.what}:{prefix}', kernel.reshape(-1, kernel.shape[-1]), u,
                          _conv_v(v, shape, flip=True), sigma)


def embedding(r: StateReader, prefix: str, sn: bool):
  """nn.Embedding (num, dim) -> ({'embedding': (num, dim)}, SNVectors or None); in our kernel
  view u is over dim (torch's v) and v over num (torch's u)."""
  w, u, v, sigma = _sn_weight(r, prefix, sn)
  return ({'embedding': w.astype(np.float32)},
          _vectors(f'{r.what}:{prefix}', w, v, u, sigma) if sn else None)


def batch_norm(r: StateReader, prefix: str, affine: bool):
  """nn.BatchNorm2d -> (params {'scale', 'bias'} or {}, batch_stats {'mean', 'var'})."""
  stats = {'mean': r.take(f'{prefix}.running_mean').astype(np.float32),
           'var': r.take(f'{prefix}.running_var').astype(np.float32)}
  params = {}
  if affine:
    params = {'scale': r.take(f'{prefix}.weight').astype(np.float32),
              'bias': r.take(f'{prefix}.bias').astype(np.float32)}
  return params, stats
