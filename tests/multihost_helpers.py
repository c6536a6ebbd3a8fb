"""Starting local multi-process jax runs in tests: a free coordinator port, a CPU environment."""

import os
import socket


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
