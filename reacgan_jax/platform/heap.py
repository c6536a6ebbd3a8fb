"""Keep freed host memory in the process on a CPU-only host, so XLA's buffers stop page-faulting.

XLA:CPU allocates each call's temporary buffer (and its outputs) with malloc and frees it when
the call returns. glibc serves a block that large with a fresh mmap, and a worker thread's
malloc arena (heaps of at most 64 MiB) falls back to mmap for it whatever M_MMAP_MAX says; the
kernel then zero-fills every page on its first touch, on every call. Measured on an Intel Xeon
with AMX, 2 cores (issue 28; benchmarks/README.md, "Freed memory kept in the heap"): the ReACGAN
bf16 D update (batch 64) maps and unmaps a 298 MB temporary per call, 72,791 minor page faults,
0.71-0.78 s; with one malloc arena, no mmap and no trimming it faults 0 times, 0.63-0.68 s. The
README's main job: 245 -> 220 s wall, 17.9 M -> 0.6 M page faults, peak RSS 2.47 -> 2.93 GB,
the same losses and FID.

`keep_freed_memory` sets, through glibc's mallopt: one arena (M_ARENA_MAX=1: every thread
allocates from the main heap, which sbrk can grow to any size), no mmap'd chunks
(M_MMAP_MAX=0), no trimming of the heap's top (M_TRIM_THRESHOLD at its maximum). Freed memory
is then reused by the next call instead of being returned to the kernel and faulted in again;
the process's resident size stays at its peak instead of falling between calls.

It must run before jax starts its CPU client: a thread keeps the arena it was given at its
first malloc, and XLA's threads malloc as soon as the client exists. `reacgan_jax/__init__.py`
calls it on import (the command line, the notebook and the benchmarks import reacgan_jax before
running any jax computation); it returns what it did, which the trainer logs.

It does nothing (and says why) where it would not pay or cannot work: JAX_PLATFORMS naming an
accelerator, a GPU/TPU plugin installed (the buffers that matter live on the device, and one
arena would serialise the input pipeline's mallocs on a big host) unless JAX_PLATFORMS=cpu,
no glibc (musl, macOS), or REACGAN_JAX_KEEP_HEAP=0 in the environment.
"""

import ctypes
import ctypes.util
import functools
import importlib.util
import os
import sys

ENV = 'REACGAN_JAX_KEEP_HEAP'   # '0' turns it off; '1' forces it on beside an accelerator plugin
# glibc's mallopt parameters (malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
_INT_MAX = 2**31 - 1
# Packages whose presence means jax may run on an accelerator in this environment.
_ACCELERATOR_PLUGINS = ('jax_cuda12_plugin', 'jax_cuda13_plugin', 'jax_rocm60_plugin',
                        'jax_rocm7_plugin', 'libtpu')


def _decide(environ, find_spec, platform: str) -> tuple[bool, str]:
  """-> (apply?, why) for this environment (pure: the tests drive it)."""
  setting = environ.get(ENV, '').strip()
  if setting == '0':
    return False, f'{ENV}=0'
  if not platform.startswith('linux'):
    return False, f'not Linux ({platform}): glibc mallopt only'
  platforms = environ.get('JAX_PLATFORMS', '').strip().lower()
  if setting != '1':
    if platforms and not platforms.startswith('cpu'):
      return False, f'JAX_PLATFORMS={platforms} (an accelerator: its buffers are on the device)'
    if not platforms:
      plugins = [p for p in _ACCELERATOR_PLUGINS if find_spec(p) is not None]
      if plugins:
        return False, (f'accelerator plugin {plugins[0]} installed (set JAX_PLATFORMS=cpu or '
                       f'{ENV}=1 to keep freed memory on a CPU run)')
  return True, f'{ENV}=1' if setting == '1' else 'CPU-only host'


def _backend_started() -> bool:
  """True when jax's backends already exist (then the setting reaches only later threads)."""
  bridge = sys.modules.get('jax._src.xla_bridge')   # never imported here: jax may not be yet
  started = getattr(bridge, 'backends_are_initialized', None)
  return bool(started()) if callable(started) else False


@functools.cache
def keep_freed_memory() -> str:
  """Applies the heap settings once per process where they pay; -> one line saying what it did."""
  apply, why = _decide(os.environ, importlib.util.find_spec, sys.platform)
  if not apply:
    return f'host heap: default glibc behaviour ({why})'
  name = ctypes.util.find_library('c') or 'libc.so.6'
  try:
    mallopt = ctypes.CDLL(name).mallopt
  except (OSError, AttributeError):
    return f'host heap: default ({name} has no mallopt: not glibc)'
  mallopt.argtypes, mallopt.restype = (ctypes.c_int, ctypes.c_int), ctypes.c_int
  ok = [mallopt(M_ARENA_MAX, 1), mallopt(M_MMAP_MAX, 0), mallopt(M_TRIM_THRESHOLD, _INT_MAX)]
  if not all(ok):
    return f'host heap: default (mallopt refused: {ok})'
  late = (' - jax had already started, so its existing threads keep their arenas: import '
          'reacgan_jax before running jax for the full effect') if _backend_started() else ''
  return (f'host heap: freed memory kept for reuse ({why}; one malloc arena, no mmap, no trim; '
          f'{ENV}=0 turns it off){late}')
