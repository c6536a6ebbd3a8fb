"""StudioGAN (torch) StyleGAN2 state dict -> our flax variables (the seed of the checkpoint bridge).

Names map one to one ('synthesis.b8.conv0.affine.weight' -> params/synthesis/b8/conv0/affine/
weight); layouts change by leaf:
  2-D 'weight' (dense) [out, in]            -> [in, out]
  4-D 'weight' (conv)  [out, in, kh, kw]    -> [kh, kw, in, out]
  'const'              [C, H, W]            -> [H, W, C]
  'w_avg', 'noise_const' (torch buffers)    -> the 'stylegan2_state' collection, unchanged
  'resample_filter' buffers are dropped (a fixed [1,3,3,1] filter here).
Works for the Generator and the Discriminator (StudioGAN src/models/stylegan2.py).
"""

from collections.abc import Mapping

import jax
import numpy as np

from reacgan_jax.models.stylegan2_g import STATE

_BUFFERS = ('w_avg', 'noise_const')


def _leaf(name, v):
  v = np.asarray(v, np.float32)
  if name == 'weight' and v.ndim == 2:
    return v.T
  if name == 'weight' and v.ndim == 4:
    return v.transpose(2, 3, 1, 0)
  if name == 'const':
    return v.transpose(1, 2, 0)
  return v


def torch_to_flax(state_dict: Mapping[str, np.ndarray], like=None) -> dict:
  """{'params': ..., [STATE: ...]} nested dicts of float32 numpy arrays.

  state_dict: torch names -> arrays (call .numpy() on tensors first); a leading 'module.'
    (DataParallel/DDP) is dropped. like: optional flax variables (e.g. from `jax.eval_shape(init)`);
    when given, the key sets and every shape must match it, else ValueError names the
    difference (a wrong architecture or width in the config).
  """
  out = {}
  for key, value in state_dict.items():
    parts = key.split('.')
    if parts[0] == 'module':  # saved from a DataParallel / DDP wrapper
      parts = parts[1:]
    if parts[-1] == 'resample_filter':
      continue
    col = STATE if parts[-1] in _BUFFERS else 'params'
    node = out.setdefault(col, {})
    for p in parts[:-1]:
      node = node.setdefault(p, {})
    node[parts[-1]] = _leaf(parts[-1], value)
  if like is not None:
    _check_like(out, {k: like[k] for k in ('params', STATE) if k in like})
  return out


def _check_like(got, like):
  flat = lambda t: {jax.tree_util.keystr(k): v.shape
                    for k, v in jax.tree_util.tree_leaves_with_path(t)}
  g, w = flat(got), flat(like)
  missing, extra = sorted(set(w) - set(g)), sorted(set(g) - set(w))
  if missing or extra:
    raise ValueError(f'StyleGAN2 state dict does not fit the model: missing {missing[:5]}, '
                     f'unexpected {extra[:5]} (check model.stylegan2 widths/architecture)')
  bad = [(k, g[k], w[k]) for k in w if tuple(g[k]) != tuple(w[k])]
  if bad:
    raise ValueError(f'StyleGAN2 state dict shapes differ from the model: {bad[:5]} '
                     '(check model.stylegan2 channel_base/channel_max/z_dim/w_dim)')
