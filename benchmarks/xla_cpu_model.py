"""Issue 18 item 3: XLA_FLAGS variants and the bf16 compute dtype at model level, same results?

  .venv/bin/python benchmarks/xla_cpu_model.py                                # small ReACGAN
  .venv/bin/python benchmarks/xla_cpu_model.py --variants default,eigen_conv --rounds 2
  .venv/bin/python benchmarks/xla_cpu_model.py --config cifar10_reacgan --batch 64 --rounds 1

benchmarks/xla_cpu_paths.py times single convolutions; this times what the trainer runs: one D
update, one G update and one G forward of --config (default cifar10_reacgan:small, its own
batch 32; benchmarks/compare.py's jitted calls) for each --dtypes (config.model.dtype) under
each XLA_FLAGS variant (names of xla_cpu_paths.VARIANTS; one subprocess each, since XLA reads
its flags when the backend starts), --rounds times, the variants' children running at once
(they share the CPUs and the load alike; --sequential: one at a time), each child timing its
dtypes interleaved; a figure is the median over all its timed calls, printed with the load
average (1 min) around each child.

Same results: the first call of every build starts from the same state, batch and key, so its
D loss, G loss and G-forward images are compared with the default variant's float32 build
(|delta| of the losses, max |delta| of the images in [-1, 1]).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

import numpy as np

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

from xla_cpu_paths import VARIANTS, _cpu  # noqa: E402

FIGURES = ('d_update', 'g_update', 'g_forward')


def child(args):
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) > args.threads:
    os.sched_setaffinity(0, cpus[:args.threads])
  import time  # noqa: PLC0415

  import compare  # noqa: PLC0415

  out = {}
  calls = {}
  for dt in args.dtypes:
    calls[dt], info = compare.jax_gan_calls(args.config, args.batch, dtype=dt)
    first = {k: fn() for k, fn in calls[dt].items()}  # same state and key in every build
    np.savez(os.path.join(args.out, f'{dt}.npz'), images=np.asarray(first['g_forward'], np.float32))
    out[dt] = dict(compile_s=info['compile_s'], times={k: [] for k in FIGURES},
                   d_loss=float(first['d_update']['d_loss']),
                   g_loss=float(first['g_update']['g_loss']))
  for _ in range(args.repeats):
    for dt in args.dtypes:
      for k in FIGURES:
        t = time.perf_counter()
        calls[dt][k]()
        out[dt]['times'][k].append(time.perf_counter() - t)
  print('RESULT ' + json.dumps(out), flush=True)


def _start_child(variant, args, out_dir):
  cmd = [sys.executable, os.path.abspath(__file__), '--child', '--config', args.config,
         '--dtypes', ','.join(args.dtypes), '--repeats', str(args.repeats),
         '--threads', str(args.threads), '--out', out_dir]
  if args.batch:
    cmd += ['--batch', str(args.batch)]
  return subprocess.Popen(cmd, env={**os.environ, 'XLA_FLAGS': VARIANTS[variant]},
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_child(proc, load0):
  stdout, stderr = proc.communicate()
  lines = [ln for ln in stdout.splitlines() if ln.startswith('RESULT ')]
  if proc.returncode or not lines:
    err = (stderr.strip().splitlines() or ['no output'])[-1]
    return None, f'rc {proc.returncode}: {err[:300]}', (load0, os.getloadavg()[0])
  return json.loads(lines[-1][7:]), '', (load0, os.getloadavg()[0])


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--config', default='cifar10_reacgan:small')
  p.add_argument('--batch', type=int, default=0, help="0: the config's own batch size")
  p.add_argument('--variants', default='default,eigen_conv,no_xnnpack,onednn')
  p.add_argument('--dtypes', default='float32,bfloat16')
  p.add_argument('--rounds', type=int, default=2)
  p.add_argument('--repeats', type=int, default=3, help='timed calls per child and figure')
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--json', default='')
  p.add_argument('--sequential', action='store_true',
                 help='one child at a time (default: all variants at once, sharing the load)')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  p.add_argument('--out', default='', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.dtypes = [s for s in args.dtypes.split(',') if s]
  args.batch = args.batch or None
  if args.child:
    return child(args)
  variants = [s for s in args.variants.split(',') if s]
  bad = [v for v in variants if v not in VARIANTS]
  if bad:
    p.error(f'--variants: unknown {bad}; expected some of {",".join(VARIANTS)}')
  name, flags = _cpu()
  print(f'machine: {name}, flags {" ".join(flags)}, {os.cpu_count()} CPUs, {args.threads} '
        f'threads; {args.config} batch {args.batch or "of the config"}; {args.rounds} rounds x '
        f'{args.repeats} calls per figure', flush=True)
  res = {v: {dt: dict(times={k: [] for k in FIGURES}) for dt in args.dtypes} for v in variants}
  loads, errors = {v: [] for v in variants}, {}
  with tempfile.TemporaryDirectory() as tmp:
    for rnd in range(args.rounds):
      procs, load0 = {}, os.getloadavg()[0]
      for v in variants:  # all at once: the same load on every variant (--sequential: in turn)
        out_dir = os.path.join(tmp, v)
        os.makedirs(out_dir, exist_ok=True)
        procs[v] = _start_child(v, args, out_dir)
        if args.sequential:
          procs[v] = _finish_child(procs[v], load0)
          load0 = os.getloadavg()[0]
      for v in variants:
        out_dir = os.path.join(tmp, v)
        r, err, load = procs[v] if args.sequential else _finish_child(procs[v], load0)
        loads[v].append(load)
        if r is None:
          errors[v] = err
          continue
        for dt, d in r.items():
          for k in FIGURES:
            res[v][dt]['times'][k] += d['times'][k]
          if rnd == 0:
            images = np.load(os.path.join(out_dir, f'{dt}.npz'))['images']
            res[v][dt].update(d_loss=d['d_loss'], g_loss=d['g_loss'], compile_s=d['compile_s'],
                              images=images)
  _print(res, variants, args.dtypes, loads, errors)
  if args.json:
    for per in res.values():
      for d in per.values():
        d.pop('images', None)
    with open(args.json, 'w') as f:
      json.dump(dict(cpu=name, flags=flags, results=res, loads=loads, errors=errors), f, indent=1)
  return None


def _print(res, variants, dtypes, loads, errors):
  ref = res[variants[0]][dtypes[0]]
  print(f'\nratios and deltas against {variants[0]} {dtypes[0]}; s = median wall seconds')
  print(f'  {"variant":14s} {"dtype":9s} {"D s":>7s} {"G s":>7s} {"fwd s":>7s} {"D x":>6s} '
        f'{"G x":>6s} {"fwd x":>6s} {"|dD loss|":>10s} {"|dG loss|":>10s} {"max|dimg|":>10s}'
        f'  load')
  for v in variants:
    if v in errors:
      print(f'  {v:14s} failed: {errors[v]}')
      continue
    for dt in dtypes:
      d = res[v][dt]
      med = {k: statistics.median(d['times'][k]) for k in FIGURES}
      base = {k: statistics.median(ref['times'][k]) for k in FIGURES}
      dimg = float(np.abs(d['images'].astype(np.float32) - ref['images'].astype(np.float32))
                   .max())
      print(f'  {v:14s} {dt:9s} {med["d_update"]:7.3f} {med["g_update"]:7.3f} '
            f'{med["g_forward"]:7.3f} ' + ' '.join(f'{base[k] / med[k]:5.2f}x' for k in FIGURES)
            + f' {abs(d["d_loss"] - ref["d_loss"]):10.2e} {abs(d["g_loss"] - ref["g_loss"]):10.2e}'
            f' {dimg:10.2e}  ' + ' '.join(f'{a:.1f}-{b:.1f}' for a, b in loads[v]))


if __name__ == '__main__':
  main()
