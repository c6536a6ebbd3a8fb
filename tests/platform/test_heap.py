"""Freed host memory kept in the heap on CPU-only hosts (platform/heap.py, issue 28).

The decision is a pure function of the environment (tested directly); the effect is tested in
fresh processes by counting the minor page faults of repeated jitted calls whose temporaries
are larger than glibc's largest mmap threshold (32 MiB): with the setting most calls after the
first few fault nothing; with REACGAN_JAX_KEEP_HEAP=0 each call faults its temporaries in
again (the premise of the module: if a future glibc or jax stops doing that, this says so).
"""

import json
import os
import statistics
import subprocess
import sys

import pytest

from reacgan_jax.platform import heap

_NONE = lambda name: None  # noqa: E731  (find_spec that finds no package)
_CUDA = lambda name: object() if name == 'jax_cuda12_plugin' else None  # noqa: E731


@pytest.mark.parametrize('environ, find_spec, platform, expect, why', [
    ({}, _NONE, 'linux', True, 'CPU-only host'),
    ({'JAX_PLATFORMS': 'cpu'}, _CUDA, 'linux', True, 'CPU-only host'),
    ({}, _CUDA, 'linux', False, 'accelerator plugin jax_cuda12_plugin installed'),
    ({'JAX_PLATFORMS': 'cuda'}, _NONE, 'linux', False, 'JAX_PLATFORMS=cuda'),
    ({'JAX_PLATFORMS': 'tpu,cpu'}, _NONE, 'linux', False, 'JAX_PLATFORMS=tpu,cpu'),
    ({heap.ENV: '0'}, _NONE, 'linux', False, f'{heap.ENV}=0'),
    ({heap.ENV: '1'}, _CUDA, 'linux', True, f'{heap.ENV}=1'),
    ({}, _NONE, 'darwin', False, 'not Linux'),
])
def test_decision(environ, find_spec, platform, expect, why):
  apply, reason = heap._decide(environ, find_spec, platform)
  assert apply is expect and reason.startswith(why), reason


_CHILD = r'''
import json, resource, sys
import reacgan_jax                      # applies (or not) the heap setting before jax starts
from reacgan_jax.platform import heap
import jax, jax.numpy as jnp

@jax.jit
def f(x):                               # 48 MiB temporaries (x is 8 MiB float32)
  y = jnp.concatenate([jnp.sin(x), jnp.cos(x), x * 2.0, x + 1.0, x - 3.0, jnp.exp(-x)])
  return (y * y).reshape(6, -1).sum(0)

x = jnp.linspace(0.0, 1.0, 2 * 1024 * 1024, dtype=jnp.float32)
for _ in range(6):                      # the heap settles within a few calls
  f(x).block_until_ready()
faults = []
for _ in range(8):
  r0 = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
  f(x).block_until_ready()
  faults.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - r0)
print(json.dumps(dict(line=heap.keep_freed_memory(), faults=faults)))
'''


def _python(code: str, **env) -> str:
  """Runs `code` in a fresh CPU-only python (one device, no inherited heap setting) -> stdout."""
  base = {k: v for k, v in os.environ.items() if k not in ('XLA_FLAGS', heap.ENV)}
  proc = subprocess.run([sys.executable, '-c', code], env={**base, 'JAX_PLATFORMS': 'cpu', **env},
                        capture_output=True, text=True, timeout=300, check=False)
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _child(keep: str) -> dict:
  return json.loads(_python(_CHILD, **{heap.ENV: keep}).strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith('linux'), reason='glibc mallopt: Linux only')
def test_kept_heap_stops_per_call_page_faults():
  kept, default = _child('1'), _child('0')
  assert kept['line'].startswith('host heap: freed memory kept'), kept['line']
  assert default['line'].startswith('host heap: default'), default['line']
  page_mib = lambda n: n * os.sysconf('SC_PAGE_SIZE') / 2**20  # noqa: E731
  # glibc's default: the 48 MiB of temporaries are mapped afresh and faulted in on every call.
  assert min(page_mib(n) for n in default['faults']) > 24, default
  # Kept: the freed blocks are reused. Most calls touch no new page; under load XLA's threads
  # may free and allocate in another order and the heap grows once more, so the test takes the
  # median call (every call faults its 48 MiB again when the setting does not hold).
  assert statistics.median(page_mib(n) for n in kept['faults']) < 2, kept
  assert sum(kept['faults']) < sum(default['faults']) / 4, (kept, default)


def test_says_when_jax_had_started_first():
  """A process that ran jax before importing reacgan_jax is told the setting came late."""
  out = _python('import jax; jax.numpy.ones(2).block_until_ready()\n'
                'from reacgan_jax.platform import heap; print(heap.keep_freed_memory())')
  assert 'jax had already started' in out, out
