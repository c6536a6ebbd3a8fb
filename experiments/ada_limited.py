"""ReACGAN with and without ADA on limited CIFAR-10 (issue 16), at CPU scale.

  python experiments/ada_limited.py                     # train both runs (resumable), analyse
  python experiments/ada_limited.py --analyze_only      # (re)write the JSON from the run dirs

Both runs are `main.py --config=configs/cifar10_reacgan_ada.py:small_limited` (the first 500
training images of each class, 16-channel BigGAN ReACGAN, logistic loss, no random flip, batch
32 x 2 D updates, seed 0) with the same steps and evaluation; `none` only turns the augmentation
off (`--config.train.augment=none --config.ada.apply_ada=False`). `ada.kimg` is lowered from the
yaml's 500 to 10 so that p can move at this budget (64 reals per step: 0.0256 per adjustment
every 4 steps; at 500 kimg p could reach 0.05 in 800 steps). Anything after `--` goes to both
main.py commands. Rerunning resumes unfinished runs from their last checkpoint.

Measured per run, into --out (JSON):
- from metrics.jsonl (every log_every steps, means over the window, on the augmented images D
  trained on): d_acc_real, d_acc_fake and their difference, ada_p and ada_rt when logged;
- from every checkpoint: p (extra['augment']) and D's sign accuracy mean(D(x, y) > 0) and mean
  logit on --n_probe un-augmented training reals vs --n_probe held-out reals (the test split's
  first images), D in eval mode: the train/held-out gap is the overfitting ADA targets;
- the smoke FID / PRDC of every evaluation (eval/step_<n>.json: 500 samples vs 500 test images).
"""

import argparse
import glob
import json
import os
import platform
import signal
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

CONFIG = os.path.join(REPO, 'configs', 'cifar10_reacgan_ada.py') + ':small_limited'
RUNS = {'ada': [], 'none': ['--config.train.augment=none', '--config.ada.apply_ada=False']}


def _common(args):
  return [f'--config={CONFIG}', f'--config.train.steps={args.steps}',
          f'--config.train.eval_every={args.eval_every}', '--config.train.checkpoint_every=100',
          '--config.train.keep_checkpoints=20', '--config.train.log_every=25',
          f'--config.train.sample_every={args.eval_every}', '--config.ada.kimg=10']


def _read_jsonl(path):
  out = []
  if os.path.exists(path):
    with open(path) as f:
      for line in f:
        try:
          out.append(json.loads(line))
        except ValueError:
          continue  # a line cut short by a kill
  return out


def _read_json(path):
  with open(path) as f:
    return json.load(f)


def _finished(workdir, steps):
  return os.path.exists(os.path.join(workdir, 'eval', f'step_{steps}.json'))


def train(args, extra):
  """Both runs at once (niced), each resumed from its workdir; SIGTERM at the deadline."""
  procs = {}
  for name, flags in RUNS.items():
    workdir = os.path.join(args.root, name)
    if _finished(workdir, args.steps):
      print(f'{name}: finished earlier, skipped', flush=True)
      continue
    os.makedirs(workdir, exist_ok=True)
    cmd = ['nice', '-n', str(args.nice), sys.executable, os.path.join(REPO, 'main.py'),
           *_common(args), f'--workdir={workdir}', *flags, *extra]
    print(f'{name}: {" ".join(cmd)}', flush=True)
    log = open(os.path.join(workdir, 'stdout.log'), 'a')  # noqa: SIM115  (closed below)
    procs[name] = (subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=REPO), log,
                   time.time())
  deadline = time.time() + args.deadline_s if args.deadline_s > 0 else None
  for name, (proc, log, t0) in procs.items():
    try:
      rc = proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.time()))
    except subprocess.TimeoutExpired:
      print(f'{name}: deadline reached, SIGTERM (the trainer saves and exits)', flush=True)
      for p, _, _ in procs.values():
        if p.poll() is None:
          p.send_signal(signal.SIGTERM)
      rc = proc.wait()
    log.close()
    with open(os.path.join(args.root, name, 'timing.jsonl'), 'a') as f:
      f.write(json.dumps({'wall_s': time.time() - t0, 'rc': rc, 'cpu': _cpu()}) + '\n')


def _cpu():
  try:
    with open('/proc/cpuinfo') as f:
      names = {ln.split(':', 1)[1].strip() for ln in f if ln.startswith('model name')}
    return f'{os.cpu_count()} x {", ".join(sorted(names))}'
  except OSError:
    return platform.processor() or platform.machine()


def _probe_sets(config, n):
  """(train x, y), (held-out x, y): n images spread over the limited train set; test's first n."""
  from reacgan_jax.data import pipeline as input_pipeline
  from reacgan_jax.data import sources as data_sources  # noqa: PLC0415  (jax only when analysing)

  x, y = input_pipeline.load_arrays(config, config.data.train_split)
  limited = input_pipeline.limit_per_class(data_sources.Arrays(x, y, config.data.num_classes, ''),
                                           config.data.train_per_class)
  pick = np.linspace(0, len(limited.labels) - 1, n).astype(int)
  xt, yt = input_pipeline.load_arrays(config, 'test')
  return ((input_pipeline.to_model_range(limited.images[pick]), limited.labels[pick]),
          (input_pipeline.to_model_range(xt[:n]), yt[:n]))


def probe(workdir, n):
  """[{step, p, train_acc, heldout_acc, train_logit, heldout_logit}] over the checkpoints."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from configs import from_workdir  # noqa: PLC0415
  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import checkpoints, parallel
  from reacgan_jax.train import modes

  config = from_workdir.get_config(workdir)
  mesh = parallel.create_mesh()
  model = adapter.build(config, mesh)
  sets = _probe_sets(config, n)

  @jax.jit
  def logits(d, x, y):
    w, _ = model.normalize('d', d.params, d.sn, update=False)
    return model.apply_d(w, d.collections, x, y, train=False)[0].adv.reshape(-1)

  rows = []
  for s in checkpoints.list_checkpoint_steps(workdir):
    st, _ = modes.load_state(config, workdir, mesh, model, step=s)
    row = {'step': s}
    aug = st.extra.get('augment')
    if aug is not None:
      row['p'] = float(parallel.to_host(aug.p))
    for name, (x, y) in zip(('train', 'heldout'), sets, strict=True):
      out = np.concatenate([np.asarray(logits(st.d, jnp.asarray(x[i:i + 100]),
                                              jnp.asarray(y[i:i + 100], jnp.int32)))
                            for i in range(0, len(y), 100)])
      row[f'{name}_acc'] = float(np.mean(out > 0))
      row[f'{name}_logit'] = float(np.mean(out))
    rows.append(row)
  return rows


def analyse(args):
  result = {'config': CONFIG, 'flags': _common(args), 'runs': {}}
  for name, flags in RUNS.items():
    workdir = os.path.join(args.root, name)
    train_rows = [r for r in _read_jsonl(os.path.join(workdir, 'metrics.jsonl')) if 'd_loss' in r]
    evals = sorted((_read_json(p) for p in glob.glob(os.path.join(workdir, 'eval', '*.json'))),
                   key=lambda e: e['step'])
    timing = _read_jsonl(os.path.join(workdir, 'timing.jsonl'))
    result['runs'][name] = {
        'extra_flags': flags,
        'steps_done': train_rows[-1]['step'] if train_rows else 0,
        'steps_planned': args.steps,
        'wall_s': round(sum(t['wall_s'] for t in timing), 1),
        'cpu': sorted({t['cpu'] for t in timing}),
        'd_acc': [[r['step'], r['d_acc_real'], r['d_acc_fake'],
                   r['d_acc_real'] - r['d_acc_fake']] for r in train_rows],
        'ada_logged': [[r['step'], r['ada_p'], r['ada_rt']] for r in train_rows if 'ada_p' in r],
        'checkpoints': probe(workdir, args.n_probe),
        'evals': [{k: v for k, v in e.items() if isinstance(v, (int, float, str))}
                  for e in evals],
    }
  os.makedirs(os.path.dirname(args.out), exist_ok=True)
  with open(args.out, 'w') as f:
    json.dump(result, f, indent=1)
  print(f'wrote {args.out}')
  for name, r in result['runs'].items():
    print(f'{name}: step {r["steps_done"]}/{r["steps_planned"]}, wall {r["wall_s"]:.0f} s, '
          f'FID {[(e["step"], round(e.get("fid", float("nan")), 2)) for e in r["evals"]]}')
    for c in r['checkpoints']:
      print(f'  step {c["step"]:>4} p {c.get("p", float("nan")):.3f} D(real)>0: train '
            f'{c["train_acc"]:.3f} held-out {c["heldout_acc"]:.3f} (logit {c["train_logit"]:.2f}'
            f' vs {c["heldout_logit"]:.2f})')
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default=os.path.join(REPO, 'runs', 'ada_limited'))
  parser.add_argument('--out', default=os.path.join(REPO, 'experiments', 'results',
                                                    'ada_limited.json'))
  parser.add_argument('--steps', type=int, default=800)
  parser.add_argument('--eval_every', type=int, default=400)
  parser.add_argument('--n_probe', type=int, default=1000)
  parser.add_argument('--nice', type=int, default=5)
  parser.add_argument('--deadline_s', type=float, default=0.0,
                      help='> 0: SIGTERM unfinished runs after this many seconds (resumable)')
  parser.add_argument('--analyze_only', action='store_true')
  args, extra = parser.parse_known_args()
  if not args.analyze_only:
    train(args, [a for a in extra if a != '--'])
  analyse(args)
  return 0


if __name__ == '__main__':
  sys.exit(main())
