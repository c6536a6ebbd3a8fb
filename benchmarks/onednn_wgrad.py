"""oneDNN's backward-weights primitive in float32 and bf16 on the same shapes, one run.

  .venv/bin/python benchmarks/onednn_wgrad.py [--repeats 5]

Times the custom call's weight gradient (kind 2, reacgan_jax/ops/onednn) alone, jitted, on
StyleGAN2 full-width D shapes (batch 4, 512 channels), the BigGAN/DCGAN family's strided ones
(batch 64) and small ones; prints the fastest of --repeats per dtype and the ratio f32 / bf16
(> 1: bf16 faster). Run it on an idle machine: beside other jobs oneDNN's bf16 kernels stall on
taken cores far more than its float32 ones (benchmarks/README.md, "StyleGAN2 in bf16").
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

SHAPES = [  # batch, size, in channels, out channels, kernel, stride, padding
    (4, 33, 512, 512, 3, 2, 0), (4, 17, 512, 512, 3, 2, 0), (4, 9, 512, 512, 3, 2, 0),
    (4, 32, 512, 512, 3, 1, 1), (8, 33, 32, 32, 3, 2, 0), (64, 33, 128, 128, 3, 2, 0),
    (64, 32, 64, 128, 4, 2, 1), (64, 16, 128, 256, 4, 2, 1), (64, 8, 256, 512, 4, 2, 1),
    (32, 33, 32, 32, 3, 2, 0), (32, 17, 32, 32, 3, 2, 0)]


def time_wgrad(b, h, c, o, k, s, pad, dtype, repeats):
  import jax  # noqa: PLC0415

  from reacgan_jax.ops import onednn  # noqa: PLC0415

  x = jax.random.normal(jax.random.key(0), (b, h, h, c)).astype(dtype)
  ho = (h + 2 * pad - k) // s + 1
  g = jax.random.normal(jax.random.key(1), (b, ho, ho, o)).astype(dtype)
  f = jax.jit(lambda x, g: onednn.conv2d_wgrad(x, g, (s, s), ((pad, pad), (pad, pad)), (k, k)))
  f(x, g).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    t = time.perf_counter()
    f(x, g).block_until_ready()
    best = min(best, time.perf_counter() - t)
  return best * 1e3


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--repeats', type=int, default=5)
  args = p.parse_args(argv)
  import jax.numpy as jnp  # noqa: PLC0415

  from reacgan_jax.ops import onednn  # noqa: PLC0415

  print(f'oneDNN {onednn.load()}; load average {os.getloadavg()[0]:.2f}; fastest of '
        f'{args.repeats}, ms')
  print(f'{"B, H, C, O, k, stride, pad":34} {"f32":>8} {"bf16":>8} {"f32/bf16":>9}')
  for shape in SHAPES:
    f32, bf16 = (time_wgrad(*shape, dt, args.repeats) for dt in (jnp.float32, jnp.bfloat16))
    print(f'{str(shape):34} {f32:8.2f} {bf16:8.2f} {f32 / bf16:8.2f}x', flush=True)


if __name__ == '__main__':
  main()
