"""Data parallelism: one device mesh, global-batch placement and multi-host start-up.

The whole trainer is ONE `jax.jit` over a 1-D `Mesh` with axis ``'data'``: the batch is
sharded on its sample axis, the train state is replicated. Under jit with sharded inputs
every mean in the step (losses, BN statistics, D2D-CE's similarity matrix) is taken over
the *global* batch, so one device and eight devices compute the same numbers (up to
float32 reduction order). This replaces the reference's DDP all-gathers and sync-BN.

Multi-host: every process runs the same program; `maybe_initialize_distributed` joins
them, each host's input iterator yields its own slice of the global batch and
`shard_batch` assembles the slices into one global array.
"""

import os

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from jax.sharding import AxisType, NamedSharding
from jax.sharding import PartitionSpec as P

from reacgan_jax.errors import ConfigError

DATA_AXIS = 'data'

# Environment variables that mean "this process is one of several": a Cloud TPU pod slice
# (TPU_WORKER_HOSTNAMES / MEGASCALE_*) or SLURM. jax.distributed.initialize() with no
# arguments auto-detects the cluster in those cases.
_AUTO_CLUSTER_ENV = ('TPU_WORKER_HOSTNAMES', 'MEGASCALE_COORDINATOR_ADDRESS', 'SLURM_JOB_ID')


def maybe_initialize_distributed(coordinator_address='', num_processes=-1, process_id=-1,
                                 local_device_ids=None):
  """Joins a multi-process run when one is configured; a no-op for a single process.

  Must run before anything touches a device. Explicit arguments (main.py flags
  --coordinator_address/--num_processes/--process_id) win; otherwise the
  JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID environment variables; otherwise
  auto-detection on a TPU pod or SLURM (jax.distributed's own cluster detection).

  Returns:
    True when jax.distributed was initialised here.
  """
  address = coordinator_address or os.environ.get('JAX_COORDINATOR_ADDRESS', '')
  if num_processes < 0:
    num_processes = int(os.environ.get('JAX_NUM_PROCESSES', '-1'))
  if process_id < 0:
    process_id = int(os.environ.get('JAX_PROCESS_ID', '-1'))
  if address:
    if num_processes < 1 or process_id < 0:
      raise ConfigError(
          f'--coordinator_address={address!r} needs --num_processes (>= 1) and --process_id '
          f'(0..num_processes-1); got num_processes={num_processes}, process_id={process_id}')
    logging.info('jax.distributed.initialize(%s, num_processes=%d, process_id=%d)', address,
                 num_processes, process_id)
    jax.distributed.initialize(coordinator_address=address, num_processes=num_processes,
                               process_id=process_id, local_device_ids=local_device_ids)
    return True
  if any(k in os.environ for k in _AUTO_CLUSTER_ENV):
    # Only multi-worker clusters need it; a single-host TPU VM also sets no such variable.
    logging.info('Cluster environment detected; jax.distributed.initialize() with auto-detection')
    jax.distributed.initialize()
    return True
  return False


def create_mesh(devices=None):
  """A 1-D mesh over every device (all hosts) with the axis 'data'.

  Auto axis types: jax.make_mesh defaults to Explicit axes, under which a plain jitted
  grad step fails to type-check shardings; Auto lets XLA propagate them.
  """
  devices = jax.devices() if devices is None else list(devices)
  return jax.make_mesh((len(devices),), (DATA_AXIS,), axis_types=(AxisType.Auto,),
                       devices=devices)


def replicated_sharding(mesh):
  return NamedSharding(mesh, P())


def batch_sharding(mesh, sample_axis=1):
  """Sharding of a batch array whose axis `sample_axis` is the sample axis B."""
  return NamedSharding(mesh, P(*([None] * sample_axis), DATA_AXIS))


def check_global_batch(global_batch, mesh, key='config.train.batch_size'):
  """Raises a clear error when the global batch does not split over devices and hosts."""
  n_dev = mesh.devices.size
  if global_batch % n_dev:
    raise ConfigError(
        f'{key}={global_batch} is not divisible by the number of devices ({n_dev}): every '
        f'device needs the same number of samples. Use a multiple of {n_dev}.')
  if global_batch % jax.process_count():
    raise ConfigError(f'{key}={global_batch} is not divisible by the number of processes '
                     f'({jax.process_count()}).')


def shard_batch(local_batch, mesh, sample_axis=1):
  """Assembles each host's slice into one global array sharded on the sample axis.

  Args:
    local_batch: pytree of host numpy arrays, sample axis of size `global_B / process_count`
      (this host's consecutive slice, process 0 first).
    mesh: the data mesh.
    sample_axis: which axis holds the samples (1 for the [n_d, B, ...] train batch).

  Returns:
    The same pytree of global jax.Arrays with shape [..., global_B, ...].
  """
  sharding = batch_sharding(mesh, sample_axis)
  n_proc = jax.process_count()

  def put(x):
    x = np.asarray(x)
    global_shape = list(x.shape)
    global_shape[sample_axis] *= n_proc
    return jax.make_array_from_process_local_data(sharding, x, tuple(global_shape))

  return jax.tree.map(put, local_batch)


def to_host(tree):
  """Fetches a pytree of replicated (or fully addressable) arrays to numpy on every host.

  np.asarray fails on a multi-host global array even when it is replicated; the local
  copy of a replicated array is the whole value.
  """

  def get(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      if not x.sharding.is_fully_replicated:
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)

  return jax.tree.map(get, tree)
