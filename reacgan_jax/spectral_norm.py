"""Spectral normalisation (Miyato et al. 2018) as a pure pytree transform (SPEC.md section 2).

Flax modules hold plain weights; the trainer normalises them before every apply:

  sn_state = init_sn_state(params, rng, predicate)                  # once
  w, sn_state = spectral_normalize(params, sn_state)                 # each training forward
  w, _ = spectral_normalize(params, sn_state, update=False)         # evaluation / sampling

`sn_state` mirrors the nesting of `params` (plain dicts) but holds only the normalised leaves,
each replaced by its persistent power-iteration vector `u`, shape `(leaf.shape[-1],)`, unit
norm. A leaf is viewed as the matrix `W = leaf.reshape(-1, leaf.shape[-1])`: Dense kernel
(in, out), conv HWIO kernel (kh*kw*in, out), embedding table (num, dim). This is the transpose
(up to a row permutation) of torch's `(out, in*kh*kw)` view, so it has the same singular
values; `u` here plays the role of torch's `u` for Dense/conv kernels.

The power iteration follows `torch.nn.utils.spectral_norm` in train mode: with W^T = torch's
weight matrix, `v = normalize(W u)`, `u = normalize(W^T v)`, `sigma = u^T W^T v`, where
normalize(x) = x / max(||x||, eps); u and v are constants to autodiff (stop_gradient), so
d sigma / d W = v u^T as in torch.
"""

from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

Predicate = Callable[[tuple[str, ...], Any], bool]


def _walk(tree: Mapping, prefix: tuple[str, ...] = ()):
  """Yields (path, leaf) for every non-mapping leaf of a nested mapping, in sorted key order."""
  for key in sorted(tree):
    value = tree[key]
    path = prefix + (str(key),)
    if isinstance(value, Mapping):
      yield from _walk(value, path)
    else:
      yield path, value


def _set(tree: dict, path: Sequence[str], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def make_predicate(include: Iterable[str] = ('kernel', 'embedding'),
                   exclude: Iterable[str] = ()) -> Predicate:
  """Predicate for `init_sn_state`: normalise a leaf when its '/'-joined path contains one of
  `include` and none of `exclude`, and it has at least 2 dimensions (a matrix view exists).

  Example: `make_predicate(exclude=('shared_embedding',))` normalises every kernel and
  embedding except G's shared class embedding (which the reference does not normalise).
  """
  include, exclude = tuple(include), tuple(exclude)

  def predicate(path: tuple[str, ...], leaf) -> bool:
    name = '/'.join(path)
    return (getattr(leaf, 'ndim', 0) >= 2 and any(s in name for s in include)
            and not any(s in name for s in exclude))

  return predicate


def init_sn_state(params: Mapping, rng: jax.Array, predicate: Predicate) -> dict:
  """Creates the persistent `u` of every leaf selected by `predicate(path, leaf)`.

  Args:
    params: nested dict of arrays (e.g. a flax module's 'params').
    rng: PRNG key; each selected leaf gets its own key (split in sorted path order).
    predicate: `(path tuple of str, leaf) -> bool`, e.g. from `make_predicate`.

  Returns:
    nested dict mirroring `params`, holding for each selected leaf a float32 unit vector of
    shape `(leaf.shape[-1],)` drawn from a normal distribution (as torch does); `{}` when
    nothing is selected.
  """
  selected = [(path, leaf) for path, leaf in _walk(params) if predicate(path, leaf)]
  state: dict = {}
  if not selected:
    return state
  keys = jax.random.split(rng, len(selected))
  for key, (path, leaf) in zip(keys, selected, strict=True):
    if leaf.ndim < 2:
      raise ValueError(f'spectral norm needs a matrix, got {"/".join(path)} of shape '
                       f'{leaf.shape}: exclude it in the SN predicate')
    u = jax.random.normal(key, (leaf.shape[-1],), jnp.float32)
    _set(state, path, _normalize(u, 1e-12))
  return state


def sn_paths(sn_state: Mapping) -> list[str]:
  """'/'-joined paths of the normalised leaves, sorted (for tests and logging)."""
  return ['/'.join(path) for path, _ in _walk(sn_state)]


def _normalize(x, eps):
  # torch.nn.functional.normalize: x / max(||x||, eps).
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _dot(a, b):
  # Full float32 precision: the default on TPU/GPU rounds to bf16/tf32, which would bias sigma.
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _normalize_leaf(w, u, n_power_iterations: int, eps: float, update: bool):
  """Returns (w / sigma, new u) for one leaf; see the module docstring for the iteration."""
  # float32 at least (bf16 weights are normalised in float32), float64 under x64.
  dtype = jnp.promote_types(jnp.promote_types(w.dtype, u.dtype), jnp.float32)
  mat = w.reshape(-1, w.shape[-1]).astype(dtype)
  mat_sg = jax.lax.stop_gradient(mat)
  u_new = u.astype(dtype)
  if update and n_power_iterations > 1:
    # A loop, not Python unrolling: compile time stays flat in the number of iterations.
    u_new = jax.lax.fori_loop(
        0, n_power_iterations - 1,
        lambda _, u: _normalize(_dot(_normalize(_dot(mat_sg, u), eps), mat_sg), eps), u_new)
  # Without an update, v is derived from the stored u: sigma = ||M u||. torch's eval mode
  # reuses its stored v instead (sigma = ||M^T v||), which we do not keep; both are lower
  # bounds that reach sigma_max as the iteration converges (~0.4% apart after 3 steps).
  v = _normalize(_dot(mat_sg, u_new), eps)
  if update:
    u_new = _normalize(_dot(v, mat_sg), eps)
  # Already constants (computed from mat_sg); explicit because it is the contract (SPEC 2).
  u_c, v_c = jax.lax.stop_gradient(u_new), jax.lax.stop_gradient(v)
  sigma = _dot(v_c, _dot(mat, u_c))
  return (mat / sigma).reshape(w.shape).astype(w.dtype), u_new


def spectral_normalize(params: Mapping, sn_state: Mapping, *, n_power_iterations: int = 1,
                       eps: float = 1e-12, update: bool = True) -> tuple[dict, dict]:
  """Divides every leaf present in `sn_state` by its estimated largest singular value.

  Args:
    params: nested dict of arrays.
    sn_state: from `init_sn_state` (or a previous call), same nesting, `u` per selected leaf.
    n_power_iterations: power iterations per call (the reference: 1 per training forward).
    eps: of the u/v normalisation (SPEC 2: the reference uses 1e-6; torch's default 1e-12).
    update: False (evaluation) runs no iteration: sigma uses the stored u and
      v = normalize(W u), and the returned state is `sn_state` itself (bit-identical).

  Returns:
    (normalized_params, new_sn_state): `normalized_params` has the structure of `params`
    (non-selected leaves are the same arrays); `new_sn_state` the structure of `sn_state`.

  Raises:
    ValueError: a path of `sn_state` is missing from `params`.
  """
  if update and n_power_iterations < 1:
    raise ValueError(f'n_power_iterations={n_power_iterations}: expected >= 1 '
                     '(config.model.sn_power_iterations)')
  new_state: dict = {}
  replaced: dict[tuple[str, ...], Any] = {}
  for path, u in _walk(sn_state):
    node = params
    try:
      for key in path:
        node = node[key]
    except (KeyError, TypeError) as e:
      raise ValueError(f'spectral norm state has {"/".join(path)} but params do not: was the '
                       'state built by init_sn_state for these params?') from e
    w, u_new = _normalize_leaf(node, u, n_power_iterations, eps, update)
    replaced[path] = w
    _set(new_state, path, u_new.astype(u.dtype))
  if not update:
    new_state = sn_state
  return _replace(params, replaced), new_state


def _replace(tree: Mapping, replaced: dict, prefix: tuple[str, ...] = ()) -> dict:
  """Copy of the nested mapping `tree` (as plain dicts) with the leaves at `replaced` swapped."""
  out = {}
  for key, value in tree.items():
    path = prefix + (str(key),)
    if isinstance(value, Mapping):
      out[key] = _replace(value, replaced, path)
    else:
      out[key] = replaced.get(path, value)
  return out
