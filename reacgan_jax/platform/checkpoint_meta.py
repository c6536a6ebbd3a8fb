"""What a checkpoint says about itself: state layout, per-array digests, finiteness (issue 14).

Each checkpoint carries a JSON item `meta`::

  {"layout": 2, "written_by": "reacgan-jax 0.1.0 (git f192c95)",
   "digests": {"<pytree path>": {"sha256": "...", "dtype": "float32", "shape": [3, 3, 2, 4]}}}

`layout` numbers the TrainState structure (checkpoints.STATE_LAYOUT; bumped whenever the state's
pytree changes); a checkpoint of another layout is not corrupt and is never set aside: restoring
it raises CheckpointLayoutError saying which layout it has and what to do. The digests are taken
from the host bytes of every array at save time and compared with the restored bytes, so a
checkpoint that orbax reads without complaint but with other values (bit rot, a partial copy of
a chunk) is never taken for a good one. Keys are `jax.tree_util.keystr` paths (".params['conv']
['kernel']"), which name the leaf in every warning.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.metadata
import subprocess

import jax
import numpy as np
from jax.experimental import multihost_utils

from reacgan_jax import errors
from reacgan_jax.platform import paths

# The last commit whose checkpoints have no `meta` item (the TrainState of that code is layout 1).
LAYOUT1_LAST_COMMIT = 'f192c95 (2026-11-23)'


class CheckpointReadError(errors.UserError, RuntimeError):
  """No usable checkpoint (unreadable, digest mismatch, non-finite) where one was required."""


def host_value(x) -> np.ndarray:
  """A jax/numpy array as one host numpy array (typed PRNG keys as their uint32 key data).

  Fully replicated or single-process arrays are read locally; an array sharded over several
  processes is gathered (a collective: every process must call this in the same order).
  """
  if isinstance(x, jax.Array):
    if jax.dtypes.issubdtype(x.dtype, jax.dtypes.prng_key):
      x = jax.random.key_data(x)
    if x.is_fully_addressable:
      return np.asarray(x)
    if x.is_fully_replicated:
      return np.asarray(x.addressable_data(0))

    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def leaves_with_paths(tree):
  """[(keystr path, leaf)] of a pytree, in flatten order."""
  return [(jax.tree_util.keystr(p), leaf)
          for p, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]]


def digest(a: np.ndarray) -> dict:
  """sha256 of dtype, shape and C-order bytes of one host array."""
  a = np.ascontiguousarray(a)
  h = hashlib.sha256(f'{a.dtype.str}|{a.shape}|'.encode())
  h.update(a.tobytes())
  return {'sha256': h.hexdigest(), 'dtype': str(a.dtype), 'shape': list(a.shape)}


def digests_and_nonfinite(tree) -> tuple[dict, list[str]]:
  """({path: digest}, [paths of floating leaves holding NaN/Inf]) of a pytree of arrays."""
  digests, bad = {}, []
  for path, leaf in leaves_with_paths(tree):
    a = host_value(leaf)
    digests[path] = digest(a)
    if np.issubdtype(a.dtype, np.inexact) and not np.isfinite(a).all():
      bad.append(path)
  return digests, bad


def verify(tree, saved_digests: dict) -> list[str]:
  """Problems of a restored pytree against the digests saved with it ([] = bit-exact, finite)."""
  digests, bad = digests_and_nonfinite(tree)
  problems = [f'{p} holds NaN/Inf' for p in bad]
  for p in sorted(set(digests) | set(saved_digests)):
    if p not in saved_digests:
      problems.append(f'{p} has no saved digest')
    elif p not in digests:
      problems.append(f'{p} was saved but is not in the restored state')
    elif digests[p] != saved_digests[p]:
      problems.append(f'{p} differs from what was saved (sha256 {digests[p]["sha256"][:12]} vs '
                      f'{saved_digests[p]["sha256"][:12]})')
  return problems


@functools.cache
def written_by() -> str:
  """'reacgan-jax <version> (git <commit>)', as far as it can be told."""
  try:
    version = importlib.metadata.version('reacgan-jax')
  except importlib.metadata.PackageNotFoundError:
    version = 'unknown version'
  repo = paths.checkout_root()
  if repo is None:
    return f'reacgan-jax {version}'
  try:
    commit = subprocess.run(['git', '-C', str(repo), 'rev-parse', '--short', 'HEAD'],
                            capture_output=True, text=True, timeout=5, check=True).stdout.strip()
  except (OSError, subprocess.SubprocessError):
    commit = ''
  return f'reacgan-jax {version}' + (f' (git {commit})' if commit else '')


def make_meta(layout: int, digests: dict) -> dict:
  return {'layout': int(layout), 'written_by': written_by(), 'digests': digests}


def layout_error(path, found: int | None, expected: int, written: str = ''):
  """CheckpointLayoutError for checkpoint `path` of layout `found` (None: no meta item)."""
  if found is None:
    what = (f'state layout 1 (it has no "meta" item: written by reacgan-jax before the layout '
            f'check, i.e. at or before commit {LAYOUT1_LAST_COMMIT})')
    use = f'a checkout of commit {LAYOUT1_LAST_COMMIT.split()[0]}'
  else:
    what = f'state layout {found}' + (f' (written by {written})' if written else '')
    use = f'the version that wrote it ({written})' if written else 'the version that wrote it'
  return errors.CheckpointLayoutError(
      f'Checkpoint {path} has {what}; this reacgan-jax reads state layout {expected}. It is '
      f'left untouched. To continue that run use {use}; to train with this version, start a new '
      '--workdir.')
