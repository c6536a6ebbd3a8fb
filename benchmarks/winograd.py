"""Winograd F(m x m, 3 x 3) vs oneDNN's direct convolution, per shape (issue 28, session 20).

  .venv/bin/python benchmarks/winograd.py           # the shapes the thresholds came from
  .venv/bin/python benchmarks/winograd.py --shapes 4x32x512 64x16x256 --repeats 7

For each N x H(=W) x C (C = O, 3x3, stride 1, padding 1, float32) it times, jitted, the
forward and the VJP (input and weight gradient) of oneDNN's direct convolution
(ops/conv.conv_onednn) and of ops/winograd.conv3x3 with m = 2 and m = 4, fastest of --repeats
after one warm-up, the sides alternating; prints milliseconds, the speed ratio (direct
forward + VJP seconds / Winograd's: > 1, Winograd faster), the largest difference from XLA's
float32 convolution relative to its largest output, and whether ops/winograd.pays routes the
shape to Winograd (config.model.stylegan2.winograd). Needs the oneDNN extension.
"""

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import reacgan_jax  # noqa: E402,F401,I001  (before jax: keeps freed memory in the heap)
import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from reacgan_jax.ops import conv as conv_ops  # noqa: E402
from reacgan_jax.ops import onednn, winograd  # noqa: E402

SHAPES = ('4x32x32', '32x32x32', '4x32x128', '64x32x128', '4x16x256', '4x32x256', '64x16x256',
          '4x4x512', '8x8x512', '16x8x512', '4x16x512', '4x32x512', '64x8x512')


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--shapes', nargs='+', default=list(SHAPES), help='NxHxC (H = W, C = O)')
  p.add_argument('--repeats', type=int, default=5)
  return p.parse_args(argv)


def main(argv=None):
  args = _parse_args(argv)
  ok, why = onednn.available()
  if not ok:
    raise SystemExit(f'the oneDNN extension is not available: {why}')
  pad = ((1, 1), (1, 1))
  nhwc = ('NHWC', 'HWIO', 'NHWC')
  paths = {
      'direct': lambda x, w: conv_ops.conv_onednn(x, w, (1, 1), pad, dimension_numbers=nhwc),
      'm2': lambda x, w: winograd.conv3x3(x, w, pad, 2),
      'm4': lambda x, w: winograd.conv3x3(x, w, pad, 4),
  }
  print(f'oneDNN {why}; {os.cpu_count()} CPUs; fastest of {args.repeats}, ms; '
        'ratio = direct (fwd + vjp) / Winograd (fwd + vjp)')
  print(f'{"N x H x C":>12} {"direct fwd/vjp":>15} {"m2 fwd/vjp":>13} {"m2":>6} {"m4 fwd/vjp":>13}'
        f' {"m4":>6} {"err m2":>8} {"err m4":>8}  pays')
  for spec in args.shapes:
    n, h, c = (int(v) for v in spec.split('x'))
    k = jax.random.split(jax.random.key(0), 3)
    x = jax.random.normal(k[0], (n, h, h, c))
    w = jax.random.normal(k[1], (3, 3, c, c)) / np.sqrt(9 * c)
    g = jax.random.normal(k[2], (n, h, h, c))
    ref = jax.lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=nhwc,
                                       precision=jax.lax.Precision.HIGHEST)
    fns = {}
    for name, f in paths.items():
      fns[name] = (jax.jit(f), jax.jit(lambda x, w, g, f=f: jax.vjp(f, x, w)[1](g)))
      jax.block_until_ready((fns[name][0](x, w), fns[name][1](x, w, g)))
    best = {name: [float('inf'), float('inf')] for name in paths}
    for _ in range(args.repeats):
      for name, (fwd, vjp) in fns.items():
        for i, (fn, a) in enumerate(((fwd, (x, w)), (vjp, (x, w, g)))):
          t = time.perf_counter()
          jax.block_until_ready(fn(*a))
          best[name][i] = min(best[name][i], (time.perf_counter() - t) * 1e3)
    scale = float(jnp.max(jnp.abs(ref)))
    err = {m: float(jnp.max(jnp.abs(fns[m][0](x, w) - ref))) / scale for m in ('m2', 'm4')}
    ratio = {m: sum(best['direct']) / sum(best[m]) for m in ('m2', 'm4')}
    pays = winograd.pays(x, w, (1, 1), pad, 4)
    print(f'{spec:>12} {best["direct"][0]:7.2f}/{best["direct"][1]:<7.2f} '
          f'{best["m2"][0]:6.2f}/{best["m2"][1]:<6.2f} {ratio["m2"]:5.2f}x '
          f'{best["m4"][0]:6.2f}/{best["m4"][1]:<6.2f} {ratio["m4"]:5.2f}x '
          f'{err["m2"]:8.1e} {err["m4"]:8.1e}  {"yes" if pays else "no"}', flush=True)


if __name__ == '__main__':
  main()
