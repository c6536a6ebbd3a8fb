"""Spectral normalisation (Miyato et al. 2018) as a pure pytree transform (SPEC.md section 2).

Flax modules hold plain weights; the trainer normalises them before every apply:

  opts = options(config)                                             # the config's SN rules
  sn_state = init_sn_state(params, rng, predicate, rows_u=opts['rows_u'])   # once
  w, sn_state = spectral_normalize(params, sn_state, **opts)         # each training forward
  w, _ = spectral_normalize(params, sn_state, update=False, **opts)  # evaluation / sampling

`sn_state` mirrors the nesting of `params` (plain dicts) but holds only the normalised leaves,
each replaced by `{'u': u, 'v': v}`, the persistent power-iteration vectors (torch's
`weight_u` / `weight_v` buffers). A leaf is viewed as the matrix `M = leaf.reshape(-1, d)`,
d = leaf.shape[-1]: Dense kernel (in, out), conv HWIO kernel (kh*kw*in, out), embedding table
(num, dim). For kernels `M` is the transpose (up to a row permutation) of torch's
`(out, in*kh*kw)` weight matrix, so `u` (length out) is torch's `u` and `v` (length rows)
torch's `v`. For an embedding torch's `spectral_norm(nn.Embedding)` (StudioGAN ops.py
`sn_embedding`) uses the table itself, dim=0: its `u` lives over the classes and `v` over the
width. `rows_u(path)` names such leaves; the iteration then runs on `A = M^T` (reference,
config.model.sn_embedding_u='classes'); 'width' (legacy) keeps A = M for embeddings too.

With A the iteration matrix (u over A's columns, v over its rows), train mode follows
`torch.nn.utils.spectral_norm`: `v = normalize(A u)`, `u = normalize(A^T v)`,
`sigma = v^T A u`, normalize(x) = x / max(||x||, eps); u and v are constants to autodiff
(stop_gradient), so d sigma / d W = v u^T as in torch. In eval mode (update=False) torch runs no
iteration and divides by `sigma = v^T A u` with the *stored* u and v (eval_mode='stored',
config.model.sn_eval='stored'); 'recompute' (legacy) derives v = normalize(A u) from the
stored u instead (sigma = ||A u||, half a power step further along).

config.model.sn_eval='iterate' (the default) is StudioGAN's evaluation: its
misc.make_GAN_untrainable puts G in eval mode and then every Conv2d / Linear / Embedding back in
train mode (set_deterministic_op_trainable), so each of its sampling forwards runs the training
forward's power iteration on the stored vectors. The sampler then divides by the sigma of a
training forward (models/adapter.py normalize_for_sampling: update=True, vectors not kept); the
train step's own update=False forwards stay 'stored'. This matters for the EMA generator: its
vectors are lerps of G's (StudioGAN's Ema rule, ema_lerp), shorter than unit length once G's
u has turned, and 'stored' then divides by |u| |v| sigma: weights too large, tanh saturated
(issue 25: |u| 0.66 after 500 steps of cifar10_reacgan:small, 54% of pixels at +-1).
"""

import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError
from reacgan_jax.ops import lerp

Predicate = Callable[[tuple[str, ...], Any], bool]
PathPredicate = Callable[[tuple[str, ...]], bool]
EMBEDDING_U = ('classes', 'width')
EVAL_MODES = ('stored', 'recompute')  # spectral_normalize(eval_mode=...)
SN_EVAL = ('iterate', *EVAL_MODES)  # config.model.sn_eval


def _is_vectors(node) -> bool:
  return isinstance(node, Mapping) and set(node) == {'u', 'v'}


def _walk(tree: Mapping, prefix: tuple[str, ...] = ()):
  """Yields (path, leaf) for every leaf of a nested mapping, in sorted key order; a
  `{'u', 'v'}` mapping (one SN leaf's vectors) counts as a leaf."""
  for key in sorted(tree):
    value = tree[key]
    path = prefix + (str(key),)
    if isinstance(value, Mapping) and not _is_vectors(value):
      yield from _walk(value, path)
    else:
      yield path, value


def _set(tree: dict, path: Sequence[str], value) -> None:
  for key in path[:-1]:
    tree = tree.setdefault(key, {})
  tree[path[-1]] = value


def embedding_rows(path: tuple[str, ...]) -> bool:
  """`rows_u` of the reference: flax embedding tables ('.../embedding') keep u over the rows."""
  return bool(path) and path[-1] == 'embedding'


def sn_eval(config) -> str:
  """config.model.sn_eval, 'stored' when a config predates the key (its value back then)."""
  return config.model.get('sn_eval', 'stored')


def options(config) -> dict:
  """spectral_normalize keyword arguments from config.model (sn_power_iterations, sn_eps,
  sn_embedding_u: classes | width, sn_eval: iterate | stored | recompute); ConfigError naming a
  bad key. eval_mode is what the train step's update=False forwards use: 'stored' for
  sn_eval='iterate' (only sampling iterates, models/adapter.py normalize_for_sampling)."""
  m = config.model
  emb, ev = m.get('sn_embedding_u', 'classes'), sn_eval(config)
  if emb not in EMBEDDING_U:
    raise ConfigError(f'config.model.sn_embedding_u={emb!r}: expected classes (torch / StudioGAN) '
                     'or width (legacy reacgan-jax)')
  if ev not in SN_EVAL:
    raise ConfigError(f'config.model.sn_eval={ev!r}: expected iterate (StudioGAN\'s '
                     'evaluation), stored (torch eval mode) or recompute (legacy reacgan-jax)')
  return dict(n_power_iterations=m.sn_power_iterations, eps=m.sn_eps,
              rows_u=embedding_rows if emb == 'classes' else None,
              eval_mode='stored' if ev == 'iterate' else ev)


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


def _dims(shape, rows: bool) -> tuple[int, int]:
  """(len u, len v) of a leaf of `shape`: A's columns and rows."""
  n_rows, n_cols = math.prod(shape[:-1]), int(shape[-1])
  return (n_rows, n_cols) if rows else (n_cols, n_rows)


def init_sn_state(params: Mapping, rng: jax.Array, predicate: Predicate,
                  rows_u: PathPredicate | None = None) -> dict:
  """Creates the persistent `{'u', 'v'}` of every leaf selected by `predicate(path, leaf)`.

  Args:
    params: nested dict of arrays (e.g. a flax module's 'params').
    rng: PRNG key; each selected leaf gets its own key (split in sorted path order).
    predicate: `(path tuple of str, leaf) -> bool`, e.g. from `make_predicate`.
    rows_u: `path -> bool`, leaves whose u lives over the rows (see the module docstring).

  Returns:
    nested dict mirroring `params`, holding for each selected leaf float32 unit vectors drawn
    from normal distributions (as torch does): u from the leaf's key (so u of a kernel is what
    it was before v was stored), v from `fold_in(key, 1)`; `{}` when nothing is selected.
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
    n_u, n_v = _dims(leaf.shape, bool(rows_u and rows_u(path)))
    u = jax.random.normal(key, (n_u,), jnp.float32)
    v = jax.random.normal(jax.random.fold_in(key, 1), (n_v,), jnp.float32)
    _set(state, path, {'u': _normalize(u, 1e-12), 'v': _normalize(v, 1e-12)})
  return state


def sn_paths(sn_state: Mapping) -> list[str]:
  """'/'-joined paths of the normalised leaves, sorted (for tests and logging)."""
  return ['/'.join(path) for path, _ in _walk(sn_state)]


def u_tree(sn_state: Mapping) -> dict:
  """The state with each leaf's `{'u', 'v'}` replaced by its u (the layout before v was kept)."""
  out: dict = {}
  for path, vectors in _walk(sn_state):
    _set(out, path, vectors['u'])
  return out


def ema_lerp(ema_sn, sn, decay):
  """StudioGAN's Ema.update on the SN buffers (src/utils/ema.py): `b.lerp(b_ema, decay)` for
  every u and v, as torch's lerp kernel computes it (lerp.torch_lerp: start + w (end - start)
  for |w| < 0.5, else end - (end - start)(1 - w), one rounding for the multiply-add); no
  renormalisation, as in the reference."""
  return jax.tree.map(lambda e, b: lerp.torch_lerp(b, e, decay), ema_sn, sn)


def _normalize(x, eps):
  # torch.nn.functional.normalize: x / max(||x||, eps).
  return x / jnp.maximum(jnp.linalg.norm(x), eps)


def _dot(a, b):
  # Full float32 precision: the default on TPU/GPU rounds to bf16/tf32, which would bias sigma.
  return jnp.matmul(a, b, precision=jax.lax.Precision.HIGHEST)


def _normalize_leaf(w, vectors, rows: bool, n_power_iterations: int, eps: float, update: bool,
                    eval_mode: str):
  """Returns (w / sigma, new {'u', 'v'}) for one leaf; see the module docstring."""
  u, v = vectors['u'], vectors['v']
  # float32 at least (bf16 weights are normalised in float32), float64 under x64.
  dtype = jnp.promote_types(jnp.promote_types(w.dtype, u.dtype), jnp.float32)
  mat = w.reshape(-1, w.shape[-1]).astype(dtype)
  if rows:
    mat = mat.T
  mat_sg = jax.lax.stop_gradient(mat)
  u_new = u.astype(dtype)
  if update and n_power_iterations > 1:
    # A loop, not Python unrolling: compile time stays flat in the number of iterations.
    u_new = jax.lax.fori_loop(
        0, n_power_iterations - 1,
        lambda _, u: _normalize(_dot(_normalize(_dot(mat_sg, u), eps), mat_sg), eps), u_new)
  if update or eval_mode == 'recompute':
    v = _normalize(_dot(mat_sg, u_new), eps)
  else:
    v = v.astype(dtype)
  if update:
    u_new = _normalize(_dot(v, mat_sg), eps)
  # Already constants (computed from mat_sg); explicit because it is the contract (SPEC 2).
  u_c, v_c = jax.lax.stop_gradient(u_new), jax.lax.stop_gradient(v)
  sigma = _dot(v_c, _dot(mat, u_c))
  out = mat / sigma
  if rows:
    out = out.T
  return out.reshape(w.shape).astype(w.dtype), {'u': u_new, 'v': v}


def spectral_normalize(params: Mapping, sn_state: Mapping, *, n_power_iterations: int = 1,
                       eps: float = 1e-12, update: bool = True,
                       rows_u: PathPredicate | None = None,
                       eval_mode: str = 'stored') -> tuple[dict, dict]:
  """Divides every leaf present in `sn_state` by its estimated largest singular value.

  Args:
    params: nested dict of arrays.
    sn_state: from `init_sn_state` (or a previous call), same nesting, `{'u', 'v'}` per leaf.
    n_power_iterations: power iterations per call (the reference: 1 per training forward).
    eps: of the u/v normalisation (SPEC 2: the reference uses 1e-6; torch's default 1e-12).
    update: False (evaluation) runs no iteration and returns `sn_state` itself (bit-identical).
    rows_u: `path -> bool`, leaves whose u lives over the rows (the one `init_sn_state` got).
    eval_mode: without update, 'stored' (torch) divides by v^T A u of the stored vectors,
      'recompute' (legacy) by ||A u|| with v = normalize(A u).

  Returns:
    (normalized_params, new_sn_state): `normalized_params` has the structure of `params`
    (non-selected leaves are the same arrays); `new_sn_state` the structure of `sn_state`.

  Raises:
    ValueError: a path of `sn_state` is missing from `params`, or its vectors do not fit.
  """
  if update and n_power_iterations < 1:
    raise ValueError(f'n_power_iterations={n_power_iterations}: expected >= 1 '
                     '(config.model.sn_power_iterations)')
  if eval_mode not in EVAL_MODES:
    raise ValueError(f'eval_mode={eval_mode!r}: expected one of {EVAL_MODES} '
                     '(config.model.sn_eval)')
  new_state: dict = {}
  replaced: dict[tuple[str, ...], Any] = {}
  for path, vectors in _walk(sn_state):
    node = params
    try:
      for key in path:
        node = node[key]
    except (KeyError, TypeError) as e:
      raise ValueError(f'spectral norm state has {"/".join(path)} but params do not: was the '
                       'state built by init_sn_state for these params?') from e
    rows = bool(rows_u and rows_u(path))
    if not _is_vectors(vectors) or vectors['u'].shape != (_dims(node.shape, rows)[0],):
      raise ValueError(f'spectral norm state of {"/".join(path)} is not the {{u, v}} of a '
                       f'{node.shape} leaf with u over the {"rows" if rows else "columns"}: '
                       'was it built with the same config.model.sn_embedding_u?')
    w, new = _normalize_leaf(node, vectors, rows, n_power_iterations, eps, update,
                             eval_mode)
    replaced[path] = w
    _set(new_state, path, {k: new[k].astype(vectors[k].dtype) for k in ('u', 'v')})
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
