"""Throughput of the full train step (d_updates_per_step D updates + 1 G update).

  python benchmarks/train_step.py                       # every CIFAR-10 config, batch 64
  python benchmarks/train_step.py --configs=cifar10_reacgan:small --steps=3

Prints, per config: first-compile time (lower + compile of the one jitted step) and img/s =
real images through D per second = steps/s * batch * d_updates_per_step (StyleGAN's "kimg"
convention), measured over --steps steps after one warm-up step, on random data (the input
pipeline is not timed), and XLA's FLOP count of the compiled step with the TFLOP/s it reaches
(and the fraction of --peak_tflops, for accelerators). On a 2-core CPU the full-size configs
take minutes per step: use :small there, the full ones on accelerators.
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
_DTYPE = flags.DEFINE_string('dtype', '', 'config.model.dtype override (float32 | bfloat16).')
_PRECISION = flags.DEFINE_enum(
    'precision', 'default', ['default', 'high', 'highest'],
    'jax_default_matmul_precision for float32 convs/matmuls: default lets GPUs use TF32 tensor '
    'cores, highest is true float32.')
_PEAK = flags.DEFINE_float(
    'peak_tflops', 0.0, 'Accelerator peak TFLOP/s for the dtype used (H100 SXM dense: TF32 495, '
    'BF16 989, FP32 67); > 0 adds the fraction of peak the step reaches.')


def hlo_flops(lowered):
  """FLOPs of a lowered step's HLO before backend passes (all devices together).

  The compiled module's count would miss convolutions that a GPU backend turns into cuDNN
  custom calls. Used by experiments/gpu_check.py too.
  """
  cost = lowered.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float((cost or {}).get('flops', 0.0))


def bench(name, batch_size, steps):
  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import state, step

  module, _, variant = name.partition(':')
  mod = importlib.import_module(f'configs.{module}')
  config = mod.get_config(variant) if variant else mod.get_config()
  config.train.batch_size = batch_size
  if _DTYPE.value:
    config.model.dtype = _DTYPE.value
  mesh = parallel.create_mesh()
  parallel.check_global_batch(batch_size, mesh)
  model = adapter.build(config, mesh)
  train_state = state.init_state(config, model, mesh)
  train_step = step.compile_train_step(config, model, mesh)
  n_d, s = config.train.d_updates_per_step, config.data.image_size
  rng = np.random.default_rng(0)
  batch = parallel.shard_batch(
      {'image': rng.uniform(-1, 1, (n_d, batch_size, s, s, 3)).astype(np.float32),
       'label': rng.integers(0, config.data.num_classes, (n_d, batch_size)).astype(np.int32)},
      mesh)
  t0 = time.perf_counter()
  lowered = train_step.lower(train_state, batch)
  compiled = lowered.compile()
  compile_s = time.perf_counter() - t0
  flops = hlo_flops(lowered)
  train_state, metrics = compiled(train_state, batch)  # warm-up
  jax.block_until_ready(metrics)
  t0 = time.perf_counter()
  for _ in range(steps):
    train_state, metrics = compiled(train_state, batch)
  jax.block_until_ready(metrics)
  dt = time.perf_counter() - t0
  return compile_s, steps * batch_size * n_d / dt, dt / steps, flops


def main(argv):
  del argv
  jax.config.update('jax_threefry_partitionable', True)
  if _PRECISION.value != 'default':
    jax.config.update('jax_default_matmul_precision', _PRECISION.value)
  dev = jax.devices()[0]
  print(f'devices: {jax.device_count()} x {dev.platform} ({dev.device_kind}); jax '
        f'{jax.__version__}; batch {_BATCH.value}; dtype {_DTYPE.value or "config"}; matmul '
        f'precision {_PRECISION.value}')
  print(f'{"config":32s} {"compile s":>10s} {"img/s":>10s} {"s/step":>10s} {"GFLOP/step":>11s} '
        f'{"TFLOP/s":>8s}' + (f' {"of peak":>8s}' if _PEAK.value > 0 else ''))
  for name in _CONFIGS.value:
    compile_s, img_s, step_s, flops = bench(name, _BATCH.value, _STEPS.value)
    tflops = flops / step_s / 1e12
    line = (f'{name:32s} {compile_s:10.1f} {img_s:10.1f} {step_s:10.4f} {flops / 1e9:11.1f} '
            f'{tflops:8.2f}')
    if _PEAK.value > 0:
      line += f' {tflops / _PEAK.value:8.1%}'
    print(line, flush=True)


if __name__ == '__main__':
  app.run(main)
