"""Evaluation split over the device mesh: each device (of every host) its rows of every batch.

The evaluator's batches (generated samples, reference images) are global arrays sharded on
their first axis over the 1-D data mesh; each device generates and embeds its own rows and the
features stay on device until one gather at the end. Every process holds the same host inputs
(z, labels and reference images are drawn or loaded identically everywhere), so placing a
batch needs no communication, and the gathered features are the same on every process.

  padded_rows(n, mesh)             n rounded up to a multiple of the device count
  put_rows(x, mesh, rows)          host array -> global array [rows, ...] (zero rows appended)
  replicate(tree, mesh)            host pytree -> global arrays replicated on every device
  to_rows(x, mesh, rows)           sample_fn output -> global array [rows, ...] sharded by rows
  features_fn(params, mesh, ...)   the FID Inception per device: sharded images -> features
  Rows                             per-batch results kept on device, gathered once

The Inception network computes each image on its own (fixed BN statistics), so a device's
rows get the features one device would give them, up to float32 reduction order.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from reacgan_jax.evaluation import inception
from reacgan_jax.platform import parallel

HOST_RESIZE = ('friendly', 'clean')  # PIL resizes: on the host, each process its own rows


def padded_rows(n: int, mesh) -> int:
  """n rounded up to a multiple of the mesh's device count (every device the same rows)."""
  d = mesh.devices.size
  return -(-n // d) * d


def rows_sharding(mesh) -> NamedSharding:
  return parallel.batch_sharding(mesh, 0)


def put_rows(x, mesh, rows: int | None = None) -> jax.Array:
  """Host array [n, ...] (the same on every process) -> global array [rows, ...] sharded on
  axis 0, zero rows appended up to `rows` (default: padded_rows(n)). Each process places only
  the rows of its own devices."""
  x = np.asarray(x)
  rows = padded_rows(x.shape[0], mesh) if rows is None else rows
  if rows > x.shape[0]:
    x = np.concatenate([x, np.zeros((rows - x.shape[0], *x.shape[1:]), x.dtype)])
  return jax.make_array_from_callback(x.shape, rows_sharding(mesh), lambda idx: x[idx])


def replicate(tree, mesh):
  """Host (or single-device) pytree -> global arrays replicated on every device of the mesh."""
  sharding = parallel.replicated_sharding(mesh)

  def put(a):
    a = np.asarray(a)
    return jax.make_array_from_callback(a.shape, sharding, lambda idx: a[idx])

  return jax.tree.map(put, tree)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _pad_to_rows(x, rows, sharding):
  return jax.lax.with_sharding_constraint(
      jnp.pad(x, [(0, rows - x.shape[0])] + [(0, 0)] * (x.ndim - 1)), sharding)


def to_rows(x, mesh, rows: int) -> jax.Array:
  """A sample_fn's output [n <= rows, ...] as a global array [rows, ...] sharded on the mesh.

  Already so (a jitted generator fed sharded inputs): returned as is. A numpy result (the
  same on every process) is placed; a global array of another layout (replicated, unpadded)
  is padded and resharded on device.
  """
  sharding = rows_sharding(mesh)
  if not isinstance(x, jax.Array):
    return put_rows(x, mesh, rows)
  if x.shape[0] == rows and x.sharding.is_equivalent_to(sharding, x.ndim):
    return x
  if x.is_fully_addressable and x.sharding.device_set != set(mesh.devices.flat):
    return put_rows(np.asarray(x), mesh, rows)  # on other devices (one-device sample_fn)
  return _pad_to_rows(x, rows, sharding)


def features_fn(params, mesh, resize: str = 'legacy', conv_backend: str = 'xla'):
  """The FID Inception on the mesh: `fn(images [B, H, W, 3] global, sharded on B) ->
  {'pool': [B, 2048], 'logits': [B, K] | None}` sharded the same way, each device embedding its
  own rows. Images are floats in [-1, 1] (quantised to uint8 on device, as saved PNGs) or
  uint8. B must be a multiple of the device count (`padded_rows`)."""
  params = replicate(params, mesh)
  rows = P(parallel.DATA_AXIS)

  def local(p, x, host_resized):
    if not host_resized:
      u8 = x if x.dtype == jnp.uint8 else inception.quantize(x)
      x = inception.preprocess(u8, resize)  # 'legacy': the torch-bilinear resize, on device
    return inception.extract(p, x, conv_backend)

  def run(host_resized):
    return jax.jit(jax.shard_map(functools.partial(local, host_resized=host_resized), mesh=mesh,
                                 in_specs=(P(), rows), out_specs=rows))

  on_device, after_host = run(False), run(True)
  quantize = jax.jit(inception.quantize)

  def fn(images):
    if resize not in HOST_RESIZE:
      return on_device(params, images)
    u8 = quantize(images) if images.dtype != jnp.uint8 else images
    return after_host(params, _host_resize(u8, resize))

  return fn


def _host_resize(u8, resize):
  """PIL resize of each process's own rows (its addressable shards), back on their devices."""
  shards = [(s.device, inception.preprocess(np.asarray(s.data), resize))
            for s in u8.addressable_shards]
  arrays = [jax.device_put(np.asarray(x), d) for d, x in shards]
  shape = (u8.shape[0], *arrays[0].shape[1:])
  return jax.make_array_from_single_device_arrays(shape, u8.sharding, arrays)


@functools.partial(jax.jit, static_argnums=(0, 1, 2))
def _zeros(shape, dtype, sharding):
  return jax.lax.with_sharding_constraint(jnp.zeros(shape, dtype), sharding)


@functools.partial(jax.jit, donate_argnums=0)
def _write(buffer, x, i):
  return jax.lax.dynamic_update_index_in_dim(buffer, x, i, 0)


class Rows:
  """Per-batch results (pytrees of [rows, ...] arrays sharded on the mesh) collected on device
  into one [num_batches, rows, ...] buffer per leaf (each device writes its own rows: no
  communication), gathered to the host once by `gather`."""

  def __init__(self, mesh, num_batches: int):
    self.mesh, self.num_batches = mesh, num_batches
    self._buffers = None
    self._kept: list[int] = []  # real (unpadded) rows of each batch

  def add(self, tree, keep: int):
    """Stores batch number len(self) (its first `keep` rows are real)."""
    if self._buffers is None:
      sharding = NamedSharding(self.mesh, P(None, parallel.DATA_AXIS))
      self._buffers = jax.tree.map(
          lambda a: _zeros((self.num_batches, *a.shape), a.dtype, sharding), tree)
    i = np.int32(len(self._kept))
    self._buffers = jax.tree.map(lambda b, a: _write(b, a, i), self._buffers, tree)
    self._kept.append(keep)

  def __len__(self):
    return len(self._kept)

  def gather(self):
    """Host numpy pytree: each leaf the real rows of every batch, concatenated ([N, ...])."""
    host = parallel.to_host(self._buffers)
    return jax.tree.map(lambda a: np.concatenate([a[i, :k] for i, k in enumerate(self._kept)]),
                        host)
