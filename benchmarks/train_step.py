"""Throughput of the full train step (d_updates_per_step D updates + 1 G update).

  python benchmarks/train_step.py                       # every CIFAR-10 config, batch 64
  python benchmarks/train_step.py --configs=cifar10_reacgan:small --steps=3

Prints, per config: first-compile time (lower + compile of the one jitted step) and img/s =
real images through D per second = steps/s * batch * d_updates_per_step (StyleGAN's "kimg"
convention), measured over --steps steps after one warm-up step, on random data (the input
pipeline is not timed). On a 2-core CPU the full-size configs take minutes per step: use
:small there, the full ones on accelerators.
"""

import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import importlib  # noqa: E402

import jax  # noqa: E402
import numpy as np  # noqa: E402
from absl import app, flags  # noqa: E402

_CONFIGS = flags.DEFINE_list(
    'configs', ['cifar10_reacgan', 'cifar10_acgan', 'cifar10_biggan_pd', 'cifar10_sngan_pd'],
    'Config modules in configs/, optionally with :variant.')
_BATCH = flags.DEFINE_integer('batch_size', 64, 'Global batch (overrides the config).')
_STEPS = flags.DEFINE_integer('steps', 5, 'Timed steps after one warm-up step.')


def bench(name, batch_size, steps):
  from reacgan_jax import parallel, train  # noqa: PLC0415

  module, _, variant = name.partition(':')
  mod = importlib.import_module(f'configs.{module}')
  config = mod.get_config(variant) if variant else mod.get_config()
  config.train.batch_size = batch_size
  mesh = parallel.create_mesh()
  parallel.check_global_batch(batch_size, mesh)
  generator, discriminator = train.build(config, mesh)
  state = train.init_state(config, generator, discriminator, mesh)
  step = train.compile_train_step(config, generator, discriminator, mesh)
  n_d, s = config.train.d_updates_per_step, config.data.image_size
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {'image': rng.uniform(-1, 1, (n_d, batch_size, s, s, 3)).astype(np.float32),
       'label': rng.integers(0, config.data.num_classes, (n_d, batch_size)).astype(np.int32)},
      mesh)
  t0 = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - t0
  state, metrics = compiled(state, batch)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    state, metrics = compiled(state, batch)
  jax.block_until_ready(metrics)
  dt = time.perf_counter() - t0
  return compile_s, steps * batch_size * n_d / dt, dt / steps


def main(argv):
  del argv
  jax.config.update('jax_threefry_partitionable', True)
  print(f'devices: {jax.device_count()} x {jax.devices()[0].platform}; batch {_BATCH.value}')
  print(f'{"config":32s} {"compile s":>10s} {"img/s":>10s} {"s/step":>10s}')
  for name in _CONFIGS.value:
    compile_s, img_s, step_s = bench(name, _BATCH.value, _STEPS.value)
    print(f'{name:32s} {compile_s:10.1f} {img_s:10.1f} {step_s:10.3f}', flush=True)


if __name__ == '__main__':
  app.run(main)
