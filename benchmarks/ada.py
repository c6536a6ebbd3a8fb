"""Our ADA pipeline (reacgan_jax/augment/ada.py) against StudioGAN's torch AdaAugment on the same
CPU.

  .venv/bin/python benchmarks/ada.py --studiogan /work/studiogan [--preset bgc] [--batch 64]

Images per second of one augmentation call on [batch, 32, 32, 3] images at strength --p
(forward only, and forward + gradient w.r.t. the images, which is what the D update of G
needs), median of --repeats after a warm-up; jax jitted, torch eager (torch.set_num_threads
left at its default). Without --studiogan only ours is timed. CPU only; a short run.
"""

import argparse
import os
import pathlib
import statistics
import sys
import time
import types

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from reacgan_jax.augment import ada, ada_params  # noqa: E402


def _median_s(fn, repeats):
  fn()  # compile / warm up
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _ours(x, args):
  spec = ada_params.preset(args.preset)
  fwd = jax.jit(ada.ada_augment, static_argnums=3)
  grad = jax.jit(jax.grad(lambda img, k: jnp.sum(ada.ada_augment(img, k, args.p, spec))))
  keys = iter(jax.random.split(jax.random.key(0), 4 * args.repeats + 8))
  xj = jnp.asarray(x)
  t_f = _median_s(lambda: fwd(xj, next(keys), args.p, spec).block_until_ready(), args.repeats)
  t_g = _median_s(lambda: grad(xj, next(keys)).block_until_ready(), args.repeats)
  return t_f, t_g


def _torch(x, args):
  sys.path.insert(0, str(pathlib.Path(args.studiogan) / 'src'))
  import torch  # noqa: PLC0415
  if 'pkg_resources' not in sys.modules:  # StudioGAN's conv2d_gradfix imports parse_version
    from packaging.version import parse  # noqa: PLC0415
    sys.modules['pkg_resources'] = types.SimpleNamespace(parse_version=parse)
  import utils.ada_aug as ada_aug  # noqa: PLC0415
  pipe = ada_aug.AdaAugment(**ada_params.PRESETS[args.preset]).requires_grad_(False)
  pipe.p.copy_(torch.as_tensor(args.p))
  xt = torch.as_tensor(x.transpose(0, 3, 1, 2).copy())
  with torch.no_grad():
    t_f = _median_s(lambda: pipe(xt), args.repeats)

  def fwd_bwd():
    xg = xt.clone().requires_grad_(True)
    pipe(xg).sum().backward()
  t_g = _median_s(fwd_bwd, args.repeats)
  return t_f, t_g, torch.get_num_threads()


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--studiogan', default='', help='PyTorch-StudioGAN checkout (optional)')
  parser.add_argument('--preset', default='bgc')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--p', type=float, default=0.6)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()
  x = np.random.default_rng(0).uniform(-1, 1, (args.batch, 32, 32, 3)).astype(np.float32)
  t_f, t_g = _ours(x, args)
  print(f'preset {args.preset}, p {args.p}, batch {args.batch} x 32x32x3, '
        f'jax {jax.__version__} on {jax.devices()[0].platform}, {os.cpu_count()} CPUs visible')
  print(f'ours  (jax jit):     forward {args.batch / t_f:8.0f} img/s   '
        f'forward+grad {args.batch / t_g:8.0f} img/s')
  if args.studiogan:
    r_f, r_g, threads = _torch(x, args)
    print(f'torch AdaAugment ({threads} threads): forward {args.batch / r_f:8.0f} img/s   '
          f'forward+grad {args.batch / r_g:8.0f} img/s')
    print(f'ratio ours / torch:  forward {r_f / t_f:.2f}x   forward+grad {r_g / t_g:.2f}x')


if __name__ == '__main__':
  main()
