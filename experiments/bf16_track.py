"""Does a bfloat16 (or oneDNN) run track the float32 run? (issue 19 item 3, issue 18)

  python experiments/bf16_track.py --config=cifar10_reacgan:small --steps=300 \
      --out=/tmp/bf16_track.json
  python experiments/bf16_track.py --variant dnnl=model.conv_backend=onednn \
      --variant dnnl_bf16=model.conv_backend=onednn,model.dtype=bfloat16 --out=/tmp/dnnl.json

Trains the config three times from scratch on the same data order: float32 (seed 0), bfloat16
(config.model.dtype='bfloat16', seed 0: same initial weights, batches and noise) and float32 with
seed 1 (the yardstick: how far two float32 runs that differ only in their random streams drift
apart). Every --window steps it records the window mean of each loss of each run; the summary
gives, per loss, the mean and the largest |bf16 - f32| over the windows, the same for
|f32(seed 1) - f32(seed 0)|, and their ratio (below 1: bf16 stays closer to the float32 run
than another float32 seed does). Uses gpu_check.trainer (the one adapter to the trainer).
--variant NAME=KEY=VALUE[,KEY=VALUE...] (repeatable) replaces the bf16 run by runs with those
config overrides, each compared with the float32 run the same way; the per-run seconds show
what each variant costs. --reference_backend onednn trains the two float32 references on oneDNN
(StyleGAN2 on the CPU, where XLA's convolutions are several times slower; the two float32 paths
agree to rounding). With --fid N each run ends with a smoke FID of its EMA generator
(N samples against the config's eval.num_ref reference images). --winograd_everywhere routes
every float32 3x3 stride-1 convolution of the oneDNN path to Winograd (ops/winograd.pays'
thresholds set to 0), so that a CPU-size config trains through what the full width uses; the
float32 references then run with model.stylegan2.winograd=0 (oneDNN's direct convolutions), and
the variants say which tile size they use.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_check  # noqa: E402

LOSSES = ('d_loss', 'd_adv', 'd_cond', 'g_loss', 'g_adv', 'g_cond')


def train_windows(spec, overrides, seed, steps, window, data, fid=0):
  config = gpu_check.load_config(spec, list(overrides))
  if fid:
    config.eval.num_samples, config.eval.metrics = fid, 'fid'
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
      print(f'{overrides} seed {seed} step {step}: {windows[-1]}', flush=True)
  secs = time.time() - t0
  if fid:  # the trainer's own evaluation (EMA generator, config.eval), in a scratch workdir
    with tempfile.TemporaryDirectory() as workdir:
      windows.append({'fid': float(t.evaluate(state, steps, workdir, {})['fid'])})
  return windows, secs


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
  p.add_argument('--variant', action='append', default=[],
                 help='NAME=KEY=VALUE[,KEY=VALUE]: a run with these overrides (default: '
                      'bf16=model.dtype=bfloat16)')
  p.add_argument('--fid', type=int, default=0, help='smoke FID samples at the end (0: none)')
  p.add_argument('--reference_backend', default='xla', choices=['xla', 'onednn'],
                 help="conv_backend of the two float32 reference runs (default XLA's; 'onednn' "
                      'where XLA is slow, e.g. StyleGAN2 on the CPU: the two float32 paths agree '
                      'to rounding, tests/ops/test_onednn.py)')
  p.add_argument('--winograd_everywhere', action='store_true',
                 help='every float32 3x3 stride-1 conv of the oneDNN path by Winograd (the '
                      'thresholds of ops/winograd.pays set to 0); references: winograd=0')
  args = p.parse_args(argv)
  # The reference runs are XLA's float32 (the default conv_backend 'auto' may pick oneDNN).
  variants = [v.split('=', 1) for v in (args.variant
                                        or ['bf16=model.dtype=bfloat16,model.conv_backend=xla'])]
  import jax  # noqa: PLC0415

  try:  # default (and maybe gone) in newer jax; sharded draws must equal unsharded ones
    jax.config.update('jax_threefry_partitionable', True)
  except (AttributeError, KeyError, ValueError):
    pass
  runs = {}
  f32 = ['model.dtype=float32', f'model.conv_backend={args.reference_backend}']
  if args.winograd_everywhere:
    from reacgan_jax.ops import winograd  # noqa: PLC0415

    winograd.MIN_CHANNELS = winograd.MIN_WORK = 0
    f32.append('model.stylegan2.winograd=0')
  plan = [('f32', f32, 0)]
  plan += [(name, over.split(','), 0) for name, over in variants]
  plan += [('f32_seed1', f32, 1)]
  for name, overrides, seed in plan:
    runs[name], secs = train_windows(args.config, overrides, seed, args.steps, args.window,
                                     args.data, args.fid)
    runs[name + '_seconds'] = secs
  losses = lambda r: [w for w in r if 'fid' not in w]  # noqa: E731
  seed = compare(losses(runs['f32_seed1']), losses(runs['f32']))
  summary = {}
  for name, _ in variants:
    d = compare(losses(runs[name]), losses(runs['f32']))
    key = 'bf16_vs_f32' if name == 'bf16' else f'{name}_vs_f32'
    summary.update({f'{k}' if name == 'bf16' else f'{name}/{k}':
                    {key: d[k], 'seed1_vs_seed0': seed[k],
                     'ratio_mean': d[k]['mean_abs'] / max(seed[k]['mean_abs'], 1e-12)}
                    for k in d})
  result = dict(config=args.config, steps=args.steps, window=args.window,
               reference_backend=args.reference_backend,
               winograd_everywhere=args.winograd_everywhere, command=' '.join(sys.argv),
                device=jax.devices()[0].device_kind, runs=runs, summary=summary)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  for k, v in summary.items():
    d = next(x for name, x in v.items() if name.endswith('_vs_f32'))
    print(f"{k:16s} |run-f32| mean {d['mean_abs']:.4f} max {d['max_abs']:.4f} | |seed1-seed0| "
          f"mean {v['seed1_vs_seed0']['mean_abs']:.4f} max {v['seed1_vs_seed0']['max_abs']:.4f}"
          f" | ratio {v['ratio_mean']:.2f}")
  for name, _, _ in plan:
    fid = [w['fid'] for w in runs[name] if 'fid' in w]
    print(f"{name:10s} {runs[name + '_seconds']:.0f} s" + (f', smoke FID {fid[0]:.1f}' if fid
                                                          else ''))


if __name__ == '__main__':
  main()
