"""Does a bfloat16 run track the float32 run? (issue 19, item 3)

  python experiments/bf16_track.py --config=cifar10_reacgan:small --steps=300 \
      --out=/tmp/bf16_track.json

Trains the config three times from scratch on the same data order: float32 (seed 0), bfloat16
(config.model.dtype='bfloat16', seed 0: same initial weights, batches and noise) and float32 with
seed 1 (the yardstick: how far two float32 runs that differ only in their random streams drift
apart). Every --window steps it records the window mean of each loss of each run; the summary
gives, per loss, the mean and the largest |bf16 - f32| over the windows, the same for
|f32(seed 1) - f32(seed 0)|, and their ratio (below 1: bf16 stays closer to the float32 run
than another float32 seed does). Uses gpu_check.trainer (the one adapter to the trainer).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_check  # noqa: E402

LOSSES = ('d_loss', 'd_adv', 'd_cond', 'g_loss', 'g_adv', 'g_cond')


def train_windows(spec, dtype, seed, steps, window, data):
  config = gpu_check.load_config(spec, [f'model.dtype={dtype}'])
  config.seed = seed
  config.data.source, config.data.npz_path, config.data.npz_layout = 'npz', data, 'cifar_rows'
  config.data.cache_dir = 'none'
  t = gpu_check.trainer(config)
  state, batches = t.init_state(), t.data_batches()
  windows, pending, t0 = [], [], time.time()
  for step in range(1, steps + 1):
    state, metrics = t.step_fn(state, next(batches))
    pending.append(metrics)
    if step % window == 0:
      host = t.to_host(pending)
      pending = []
      windows.append({k: float(np.mean([m[k] for m in host])) for k in LOSSES if k in host[0]})
      print(f'{dtype} seed {seed} step {step}: {windows[-1]}', flush=True)
  return windows, time.time() - t0


def compare(a, b):
  """Per loss: mean and max over windows of |a - b|."""
  out = {}
  for k in a[0]:
    d = np.abs(np.array([w[k] for w in a]) - np.array([w[k] for w in b]))
    out[k] = {'mean_abs': float(d.mean()), 'max_abs': float(d.max())}
  return out


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='cifar10_reacgan:small')
  p.add_argument('--steps', type=int, default=300)
  p.add_argument('--window', type=int, default=25)
  p.add_argument('--data', default=os.path.join(gpu_check.ROOT, '..', 'shared', 'data',
                                                'cifar10.npz'))
  p.add_argument('--out', required=True)
  args = p.parse_args(argv)
  import jax  # noqa: PLC0415

  try:  # default (and maybe gone) in newer jax; sharded draws must equal unsharded ones
    jax.config.update('jax_threefry_partitionable', True)
  except (AttributeError, KeyError, ValueError):
    pass
  runs = {}
  for name, dtype, seed in (('f32', 'float32', 0), ('bf16', 'bfloat16', 0),
                            ('f32_seed1', 'float32', 1)):
    runs[name], secs = train_windows(args.config, dtype, seed, args.steps, args.window, args.data)
    runs[name + '_seconds'] = secs
  bf = compare(runs['bf16'], runs['f32'])
  seed = compare(runs['f32_seed1'], runs['f32'])
  summary = {k: {'bf16_vs_f32': bf[k], 'seed1_vs_seed0': seed[k],
                 'ratio_mean': bf[k]['mean_abs'] / max(seed[k]['mean_abs'], 1e-12)} for k in bf}
  result = dict(config=args.config, steps=args.steps, window=args.window,
                device=jax.devices()[0].device_kind, runs=runs, summary=summary)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  for k, v in summary.items():
    print(f"{k:7s} |bf16-f32| mean {v['bf16_vs_f32']['mean_abs']:.4f} max "
          f"{v['bf16_vs_f32']['max_abs']:.4f} | |seed1-seed0| mean "
          f"{v['seed1_vs_seed0']['mean_abs']:.4f} max {v['seed1_vs_seed0']['max_abs']:.4f} | "
          f"ratio {v['ratio_mean']:.2f}")


if __name__ == '__main__':
  main()
