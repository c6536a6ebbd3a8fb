"""Test set-up: 8 fake CPU devices (multi-device code runs on this CPU) and shared paths.

XLA_FLAGS must be set before jax is imported anywhere, which is why it lives here.
"""

import os
import pathlib

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '3')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]

# One persistent XLA compilation cache for the whole suite: its own process, the xdist workers
# and every main.py it starts (they inherit the variable; main.py reads it through
# platform.paths.xla_cache_dir). Many tests compile the same tiny train step; the second and
# later compiles load it. Keyed by the computation, compile options, flags and jax version, so
# a hit is the same executable. Set REACGAN_JAX_XLA_CACHE yourself to put it elsewhere.
# One folder per xdist worker: jax writes an entry in place, without a lock (lru_cache.put), so
# two workers compiling the same step could read each other's half-written entry. A worker's own
# main.py runs inherit its folder and run one at a time.
os.environ.setdefault('REACGAN_JAX_XLA_CACHE', str(
    REPO / '.pytest_cache' / 'xla' / os.environ.get('PYTEST_XDIST_WORKER', 'main')))

# The built oneDNN extension (conv_backend 'auto' builds it on first use), shared likewise: tests
# that give a run its own REACGAN_JAX_CACHE would otherwise rebuild it. Its writes are atomic.
os.environ.setdefault('REACGAN_JAX_ONEDNN_CACHE', str(REPO / '.pytest_cache' / 'onednn'))

import jax  # noqa: E402

jax.config.update('jax_compilation_cache_dir', os.environ['REACGAN_JAX_XLA_CACHE'])
SHARED_DATA = REPO.parent / 'shared' / 'data'
CIFAR10_NPZ = SHARED_DATA / 'cifar10.npz'


@pytest.fixture(scope='session')
def cifar10_npz():
  """Path to the full CIFAR-10 npz of ../shared/data; skips when absent."""
  if not CIFAR10_NPZ.exists():
    pytest.skip(f'{CIFAR10_NPZ} not found: it ships in the shared/ folder beside the checkout '
                '(see shared/data/README.md)')
  return CIFAR10_NPZ
