"""The CPU weight-gradient path of reacgan_jax/ops/conv.py against XLA's own, in one run.

  .venv/bin/python benchmarks/conv_wgrad.py                 # layer shapes, then whole updates
  .venv/bin/python benchmarks/conv_wgrad.py --no-updates    # layer shapes only (~1 min)

Layers: the 3x3 stride-1 convolutions that dominate the CIFAR-10 models at batch 64 (BigGAN G's
384 channels at 32x32 and 16x16, D's 128 channels at 32x32 on real + fake = 128 images): the
forward convolution, the input gradient, XLA's weight gradient (its backward-filter
convolution) and ours (models/conv.py: shifted matrix products), milliseconds, median of
--repeats, and the weight-gradient speedup. Updates: one D update, one G update and one G
forward of the CIFAR-10 ReACGAN config (benchmarks/compare.py's calls) built twice — with
models/conv.py (the default) and with plain lax.conv_general_dilated in every conv layer —
the two alternating, median of --repeats.
"""

import argparse
import os
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

LAYERS = (  # (name, batch, height = width, in channels, out channels)
    ('G block2 conv 384->384 @32x32', 64, 32, 384, 384),
    ('G block1 conv 384->384 @16x16', 64, 16, 384, 384),
    ('D block0 conv 128->128 @32x32 (real+fake)', 128, 32, 128, 128),
)


def _median_ms(fn, repeats):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return 1000 * statistics.median(times)


def _bench_layer(b, s, c, o, repeats):
  """-> {fwd, dx, xla, ours}: ms of the forward, input gradient and the two weight gradients."""
  import jax  # noqa: PLC0415
  from jax import lax  # noqa: PLC0415

  from reacgan_jax.ops import conv as conv_ops  # noqa: PLC0415

  nhwc = ('NHWC', 'HWIO', 'NHWC')

  def conv(fn):
    return lambda x, w: fn(x, w, (1, 1), ((1, 1), (1, 1)), dimension_numbers=nhwc)

  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, s, s, c))
  w = jax.random.normal(kw, (3, 3, c, o)) * 0.05
  g = jax.random.normal(kg, (b, s, s, o))
  plain, ours = conv(lax.conv_general_dilated), conv(conv_ops.conv_general_dilated)
  calls = {
      'fwd': jax.jit(plain),
      'dx': jax.jit(lambda x, w, g: jax.vjp(lambda x: plain(x, w), x)[1](g)[0]),
      'xla': jax.jit(lambda x, w, g: jax.vjp(lambda w: plain(x, w), w)[1](g)[0]),
      'ours': jax.jit(lambda x, w, g: jax.vjp(lambda w: ours(x, w), w)[1](g)[0]),
  }
  out = {}
  for k, f in calls.items():
    a = (x, w) if k == 'fwd' else (x, w, g)
    out[k] = _median_ms(lambda f=f, a=a: f(*a).block_until_ready(), repeats)
  return out


def bench_layers(repeats):
  print(f'{"layer":44s} {"fwd ms":>8s} {"dx ms":>8s} {"dw XLA":>8s} {"dw ours":>8s} '
        f'{"dw speedup":>10s}')
  for name, b, s, c, o in LAYERS:
    t = _bench_layer(b, s, c, o, repeats)
    print(f'{name:44s} {t["fwd"]:8.0f} {t["dx"]:8.0f} {t["xla"]:8.0f} {t["ours"]:8.0f} '
          f'{t["xla"] / t["ours"]:9.2f}x', flush=True)


def bench_updates(repeats, batch):
  import compare  # noqa: PLC0415
  from jax import lax  # noqa: PLC0415

  from reacgan_jax.ops import conv as conv_ops  # noqa: PLC0415

  ours, _ = compare.jax_gan_calls('cifar10_reacgan', batch)
  default = conv_ops.conv_general_dilated
  conv_ops.conv_general_dilated = lax.conv_general_dilated  # layers.conv reads it at build time
  try:
    xla, _ = compare.jax_gan_calls('cifar10_reacgan', batch)
  finally:
    conv_ops.conv_general_dilated = default
  names = ('d_update', 'g_update', 'g_forward')
  res = compare._interleave({k: (ours[k], xla[k]) for k in names}, repeats)  # noqa: SLF001
  print(f'\nCIFAR-10 ReACGAN, batch {batch}, median of {repeats} (wall s)')
  print(f'{"call":12s} {"conv.py":>9s} {"plain lax":>10s} {"speedup":>8s}')
  for k in names:
    a, b = res[k]['jax']['wall'], res[k]['torch']['wall']  # 'torch' = the plain-lax build
    print(f'{k:12s} {a:9.2f} {b:10.2f} {b / a:7.2f}x')


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--no-updates', action='store_true')
  args = parser.parse_args()
  import jax  # noqa: PLC0415

  print(f'jax {jax.__version__}, devices {jax.devices()}, '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}, load {os.getloadavg()[0]:.1f}')
  bench_layers(args.repeats)
  if not args.no_updates:
    bench_updates(args.repeats, args.batch)


if __name__ == '__main__':
  main()
