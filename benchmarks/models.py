"""Forward + backward throughput of G and D alone, per CIFAR-10 config.

  python benchmarks/models.py                                  # every configs/cifar10_*.py
  python benchmarks/models.py --batch=16 --configs=cifar10_reacgan:small --repeats=2

For each config prints: the XLA compile time (lower + compile) of G's and D's jitted
forward+backward, and img/s = batch / median time of one call, after one warm-up call.
G: train-mode forward (batch statistics, running ones updated) + gradient of sum(images)
w.r.t. G's params. D: train-mode forward on a batch + gradient of sum(adv) + the head's
outputs w.r.t. D's params. Spectral norm, losses and the optimiser are not included (see
benchmarks/train_step.py for the whole step). Parameters come from the real initialisers;
the data is random. On a 2-core CPU use small batches or the :small variants: the full
configs are meant for accelerators.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import glob  # noqa: E402
import importlib  # noqa: E402
import statistics  # noqa: E402

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_DEFAULT = sorted(os.path.basename(p)[:-3] for p in glob.glob(os.path.join(_ROOT, 'configs',
                                                                            'cifar10_*.py')))
_CONFIGS = flags.DEFINE_list('configs', _DEFAULT, 'Config modules in configs/, optionally '
                             'with :variant (e.g. cifar10_reacgan:small).')
_BATCH = flags.DEFINE_integer('batch', 64, 'Batch size of every call.')
_REPEATS = flags.DEFINE_integer('repeats', 3, 'Timed calls after one warm-up call (median).')


def _load(name):
  module, _, variant = name.partition(':')
  mod = importlib.import_module(f'configs.{module}')
  return mod.get_config(variant) if variant else mod.get_config()


def _time(fn, args, repeats):
  t0 = time.perf_counter()
  compiled = jax.jit(fn).lower(*args).compile()
  compile_s = time.perf_counter() - t0
  jax.block_until_ready(compiled(*args))  # warm-up
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(*args))
    times.append(time.perf_counter() - t0)
  return compile_s, statistics.median(times)


def bench(name, batch, repeats):
  """-> dict of compile seconds and img/s for G and D of config `name`."""
  from reacgan_jax import models  # noqa: PLC0415

  config = _load(name)
  g, d = models.build_models(config)
  rng = np.random.default_rng(0)
  s, classes = config.data.image_size, config.data.num_classes
  z = jnp.asarray(rng.standard_normal((batch, config.model.z_dim)), jnp.float32)
  y = jnp.asarray(rng.integers(0, classes, batch), jnp.int32)
  x = jnp.asarray(rng.uniform(-1, 1, (batch, s, s, 3)), jnp.float32)
  key = jax.random.PRNGKey(0)
  gv = jax.jit(lambda k: g.init({'params': k}, z[:2], y[:2], train=False))(key)
  dv = jax.jit(lambda k: d.init({'params': k, 'dropout': k}, x[:2], y[:2], train=False))(key)
  dv = {k: v for k, v in dv.items() if k != 'perturbations'}

  def g_fwd_bwd(params, stats, z, y):
    def f(p):
      img, upd = g.apply({'params': p, 'batch_stats': stats}, z, y, train=True,
                         mutable=['batch_stats'])
      return jnp.sum(img), upd
    return jax.grad(f, has_aux=True)(params)

  def d_fwd_bwd(params, stats, x, y):
    def f(p):
      out, upd = d.apply({'params': p, **({'batch_stats': stats} if stats else {})}, x, y,
                         train=True, rngs={'dropout': key}, mutable=['batch_stats'])
      extra = sum(jnp.sum(t) for t in (out.class_logits, out.embed, out.proxy) if t is not None)
      return jnp.sum(out.adv) + extra, upd
    return jax.grad(f, has_aux=True)(params)

  g_compile, g_dt = _time(g_fwd_bwd, (gv['params'], gv['batch_stats'], z, y), repeats)
  d_compile, d_dt = _time(d_fwd_bwd, (dv['params'], dv.get('batch_stats', {}), x, y), repeats)
  return dict(g_compile_s=g_compile, g_img_per_s=batch / g_dt,
              d_compile_s=d_compile, d_img_per_s=batch / d_dt)


def main(argv):
  del argv
  print(f'device: {jax.devices()[0].platform} x{jax.device_count()}, batch {_BATCH.value}, '
        f'median of {_REPEATS.value} forward+backward calls after one warm-up')
  print(f'{"config":32s} {"G compile s":>11s} {"G img/s":>9s} {"D compile s":>11s} '
        f'{"D img/s":>9s}')
  for name in _CONFIGS.value:
    r = bench(name, _BATCH.value, _REPEATS.value)
    print(f'{name:32s} {r["g_compile_s"]:11.1f} {r["g_img_per_s"]:9.1f} '
          f'{r["d_compile_s"]:11.1f} {r["d_img_per_s"]:9.1f}', flush=True)


if __name__ == '__main__':
  app.run(main)
