"""Starting local multi-process jax runs in tests: a free coordinator port, a CPU environment,
waiting for the processes."""

import os
import socket

from train_helpers import HANG_S


def free_port():
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def cpu_env(n_dev):
  """os.environ for a subprocess on the CPU with n_dev fake devices and no inherited
  jax.distributed settings."""
  e = dict(os.environ, JAX_PLATFORMS='cpu',
           XLA_FLAGS=f'--xla_force_host_platform_device_count={n_dev}')
  for k in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID'):
    e.pop(k, None)
  return e


def wait_all(procs):
  """Waits for every process (the hang guard each) and asserts exit 0, showing the output's tail;
  on a failure none is left behind holding the coordinator's port."""
  try:
    for p in procs:
      out, _ = p.communicate(timeout=HANG_S)
      assert p.returncode == 0, (out or '')[-3000:]
  finally:
    for p in procs:
      if p.poll() is None:
        p.kill()
        p.wait()
