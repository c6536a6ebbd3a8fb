"""Which protocol FID statistics were computed with, and refusing to compare different ones.

An FID is only meaningful between statistics of the same protocol: the same resize to 299
(legacy / friendly / clean move CIFAR-10 FIDs by ~0.2, evaluation/fid.py docstring) and the same
network. `fid.describe` stores {source, n, resize, inception (weights path), network (sha256 of
the weights file)} as JSON next to the statistics; `check_same_protocol` compares two such
descriptions and raises InputError naming both inputs and the differing field. Statistics
without this metadata (pytorch-fid's npz files, older ones) cannot be checked: a warning says so.
"""

from __future__ import annotations

import functools
import hashlib
import json
import os

from absl import logging

from reacgan_jax.errors import InputError

CHECKED = ('resize', 'network')


@functools.cache
def _file_sha256(path: str, size: int, mtime_ns: int) -> str:
  del size, mtime_ns  # part of the cache key only: a rewritten file is hashed again
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 22), b''):
      h.update(block)
  return h.hexdigest()[:16]


def network_id(weights_path) -> str:
  """'sha256:<16 hex>' of an Inception weights file (the same bytes under any path)."""
  p = os.path.realpath(os.path.expanduser(str(weights_path)))
  st = os.stat(p)
  return 'sha256:' + _file_sha256(p, st.st_size, st.st_mtime_ns)


def protocol_of(description: str) -> dict | None:
  try:
    d = json.loads(description) if description else None
  except json.JSONDecodeError:
    return None
  return d if isinstance(d, dict) else None


def check_same_protocol(a: tuple[str, str], b: tuple[str, str], *, strict: bool = True):
  """Raises InputError when two (name, description) pairs differ in resize or network.

  strict=False logs the difference as a warning instead (the CLI's --allow-protocol-mismatch).
  """
  (name_a, desc_a), (name_b, desc_b) = a, b
  pa, pb = protocol_of(desc_a), protocol_of(desc_b)
  for name, p in ((name_a, pa), (name_b, pb)):
    if p is None:
      logging.warning('%s: statistics without protocol metadata (resize, network); cannot check '
                      'that they match the other input.', name)
  if pa is None or pb is None:
    return
  for key in CHECKED:
    va, vb = pa.get(key), pb.get(key)
    if va is not None and vb is not None and va != vb:
      message = (f'{name_a} was computed with {key}={va}, {name_b} with {key}={vb}: an FID between '
                 'them is not comparable to anything. Recompute one of them with the same '
                 f'{"--resize" if key == "resize" else "--weights"}'
                 + (' (or pass --allow-protocol-mismatch)' if strict else '') + '.')
      if strict:
        raise InputError(message)
      logging.warning('%s', message)
  if 'network' not in pa and 'network' not in pb and pa.get('inception') != pb.get('inception'):
    logging.warning('%s and %s name different Inception weights (%s, %s); no digest to tell '
                    'whether they are the same network.', name_a, name_b, pa.get('inception'),
                    pb.get('inception'))
