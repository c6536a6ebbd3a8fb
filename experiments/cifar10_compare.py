"""Runs the CIFAR-10 same-budget comparison (configs/cifar10_experiments.py) and summarises it.

  python experiments/cifar10_compare.py                      # all variants, one after another
  python experiments/cifar10_compare.py --runs=reacgan,acgan --parallel=2
  python experiments/cifar10_compare.py --summarize_only     # (re)write the summaries

Each variant trains with `main.py --config=configs/cifar10_experiments.py:<variant>
--workdir=<root>/<variant>` (anything after `--` is passed to every main.py, e.g.
`-- --config.data.npz_path=...`). Rerunning the same command resumes unfinished runs from their
last checkpoint and skips finished ones, so the comparison can be spread over sessions.
Afterwards <root>/<variant>/summary.json holds the run's final metrics, its FID curve, its
conditional-gradient-norm curve, wall time and hardware, and <root>/summary.json all of them;
experiments/report.py turns those into the plots and the RESULTS.md table.
"""

import argparse
import concurrent.futures
import glob
import json
import os
import platform
import signal
import subprocess
import sys
import threading
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

from configs import cifar10_experiments  # noqa: E402

CONFIG = os.path.join(REPO, 'configs', 'cifar10_experiments.py')
_PRINT_LOCK = threading.Lock()


def _say(*args):
  with _PRINT_LOCK:  # runs report from several threads
    print(*args, flush=True)


def _read_jsonl(path):
  records = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          records.append(json.loads(line))
        except ValueError:
          continue  # a line cut short by a crash
  return records


def _evals(workdir):
  out = []
  for path in glob.glob(os.path.join(workdir, 'eval', 'step_*.json')):
    with open(path) as f:
      out.append(json.load(f))
  return sorted(out, key=lambda r: r['step'])


def summarize(workdir, variant, steps):
  """summary.json of one run from its metrics.jsonl, eval/step_*.json and timing.jsonl."""
  config = cifar10_experiments.get_config(variant)
  records = _read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train = [r for r in records if 'd_loss' in r]
  evals = _evals(workdir)
  timing = _read_jsonl(os.path.join(workdir, 'timing.jsonl'))
  final = evals[-1] if evals else {}
  last_step = train[-1]['step'] if train else 0
  grid = os.path.join(workdir, 'samples', f'step_{last_step}.png')
  if not os.path.exists(grid):  # stopped between grids: main.py --mode=sample writes this one
    grid = os.path.join(workdir, 'samples', f'final_{final.get("step", last_step)}', 'grid.png')
  summary = {
      'variant': variant,
      'method': config.model.cond_method,
      'loss': {k: config.loss[k] for k in ('cond_lambda', 'temperature', 'margin_pos', 'margins',
                                           'false_negative_removal')},
      'backbone': f'{config.model.backbone} g{config.model.g_conv_dim}/d{config.model.d_conv_dim}',
      'batch_size': config.train.batch_size,
      'd_updates_per_step': config.train.d_updates_per_step,
      'steps_planned': steps,
      'steps_done': last_step,
      'finished': bool(final) and final.get('step') == steps,
      'wall_s': round(sum(t['wall_s'] for t in timing), 1),
      'hardware': sorted({t['hardware'] for t in timing}),
      'final': {k: v for k, v in final.items() if k != 'bn_eval'},
      'fid_curve': [[e['step'], e['fid']] for e in evals if 'fid' in e],
      'precision_curve': [[e['step'], e.get('precision'), e.get('recall')] for e in evals],
      'cond_grad_norm_curve': [[r['step'], r['cond_grad_norm']] for r in train
                               if 'cond_grad_norm' in r],
      'd_acc_curve': [[r['step'], r.get('d_acc_real'), r.get('d_acc_fake')] for r in train],
      'final_grid': grid if os.path.exists(grid) else None,
  }
  with open(os.path.join(workdir, 'summary.json'), 'w') as f:
    json.dump(summary, f, indent=1)
  return summary


def _hardware():
  """'<n>x <device kind> (<platform>)', asked of a child process so this one holds no device."""
  code = ('import jax; d = jax.devices()[0]; '
          'print(f"{jax.device_count()}x {d.device_kind} ({d.platform})")')
  env = dict(os.environ, XLA_PYTHON_CLIENT_PREALLOCATE='false')
  try:
    return subprocess.check_output([sys.executable, '-c', code], env=env, text=True).strip()
  except (subprocess.CalledProcessError, OSError):
    return platform.processor() or platform.machine()


def run_one(variant, root, steps, extra, hardware, env=None, deadline=None):
  workdir = os.path.join(root, variant)
  os.makedirs(workdir, exist_ok=True)
  done = summarize(workdir, variant, steps)
  if done['finished']:
    _say(f'{variant}: finished earlier (FID {done["final"].get("fid")}), skipped')
    return done
  cmd = [sys.executable, os.path.join(REPO, 'main.py'), f'--config={CONFIG}:{variant}',
         f'--workdir={workdir}', f'--config.train.steps={steps}', *extra]
  _say(f'{variant}: {" ".join(cmd)}')
  t0 = time.time()
  with open(os.path.join(workdir, 'stdout.log'), 'a') as log:
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, env=env)
    try:
      rc = proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      # Out of time (a lease ends): SIGTERM makes the trainer save a checkpoint and exit, so
      # rerunning this command resumes the run where it stopped.
      _say(f'{variant}: deadline reached, stopping it (SIGTERM)')
      proc.send_signal(signal.SIGTERM)
      rc = proc.wait()
  with open(os.path.join(workdir, 'timing.jsonl'), 'a') as f:
    f.write(json.dumps({'wall_s': time.time() - t0, 'hardware': hardware, 'rc': rc}) + '\n')
  summary = summarize(workdir, variant, steps)
  _say(f'{variant}: exit {rc}, step {summary["steps_done"]}/{steps}, final '
        f'{ {k: v for k, v in summary["final"].items() if isinstance(v, float)} }')
  if rc != 0:
    _say(f'{variant}: main.py failed; see {workdir}/stdout.log')
  return summary


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--runs', default=','.join(cifar10_experiments.VARIANTS),
                      help='comma list of variants of configs/cifar10_experiments.py')
  parser.add_argument('--root', default=os.path.join(REPO, 'runs', 'cifar10_compare'))
  parser.add_argument('--steps', type=int, default=cifar10_experiments.get_config().train.steps)
  parser.add_argument('--parallel', type=int, default=1,
                      help='runs at once (an accelerator with room for several small models)')
  parser.add_argument('--summarize_only', action='store_true')
  parser.add_argument('--deadline_s', type=float, default=0.0,
                      help='> 0: after this many seconds, stop unfinished runs cleanly (SIGTERM '
                      '-> checkpoint); rerun the command to resume them')
  args, extra = parser.parse_known_args()
  extra = [a for a in extra if a != '--']
  runs = [r for r in args.runs.split(',') if r]
  unknown = [r for r in runs if r not in cifar10_experiments.VARIANTS]
  if unknown:
    parser.error(f'unknown variants {unknown}; known: {", ".join(cifar10_experiments.VARIANTS)}')
  if args.summarize_only:
    summaries = [summarize(os.path.join(args.root, r), r, args.steps) for r in runs]
  else:
    deadline = time.time() + args.deadline_s if args.deadline_s > 0 else None
    hardware = _hardware()
    env = dict(os.environ)
    if args.parallel > 1:  # share one accelerator: each run takes its part of the memory
      env.setdefault('XLA_PYTHON_CLIENT_MEM_FRACTION', f'{0.9 / args.parallel:.3f}')
    with concurrent.futures.ThreadPoolExecutor(max(1, args.parallel)) as pool:
      summaries = list(pool.map(
          lambda r: run_one(r, args.root, args.steps, extra, hardware, env, deadline), runs))
  # Runs of earlier invocations (other --runs on the same root) stay in the root summary.
  path = os.path.join(args.root, 'summary.json')
  merged = {}
  if os.path.exists(path):
    with open(path) as f:
      merged = json.load(f)
  merged.update({s['variant']: s for s in summaries})
  with open(path, 'w') as f:
    json.dump(merged, f, indent=1)
  print(f'wrote {args.root}/summary.json')
  for s in summaries:
    fin = s['final']
    print(f'{s["variant"]:18s} step {s["steps_done"]:>6}/{s["steps_planned"]} '
          f'FID {fin.get("fid", float("nan")):8.2f} P {fin.get("precision", float("nan")):.3f} '
          f'R {fin.get("recall", float("nan")):.3f} acc {fin.get("accuracy", float("nan")):.3f} '
          f'wall {s["wall_s"]:.0f} s')
  return 0 if all(s['finished'] for s in summaries) else 1


if __name__ == '__main__':
  sys.exit(main())
