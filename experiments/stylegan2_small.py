"""Issue 15's CPU evidence: configs/cifar10_stylegan2_d2dce.py:small trained 200 steps, with the
smoke FID (500 samples vs 500 class-balanced test images) at step 0 (the untrained G) and every
--eval_every steps, no non-finite value allowed (the trainer raises on one).

  .venv/bin/python experiments/stylegan2_small.py --workdir=/tmp/sg2_small \
      --out=experiments/results/stylegan2_small_cpu.json [--config=configs/<file>.py:<variant>]

Writes the JSON (fids by step, the logged losses, wall time, CPU, versions) at the end.
"""

import argparse
import json
import os
import platform
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)


def main():
  p = argparse.ArgumentParser()
  p.add_argument('--workdir', required=True)
  p.add_argument('--out', required=True)
  p.add_argument('--config', default='configs/cifar10_stylegan2_d2dce.py:small')
  p.add_argument('--steps', type=int, default=200)
  p.add_argument('--eval_every', type=int, default=100)
  args = p.parse_args()
  os.chdir(REPO)  # the config's offline npz path is relative to the repository
  import importlib  # noqa: PLC0415

  import jax  # noqa: PLC0415

  from reacgan_jax import sampling
  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import loop as train
  from reacgan_jax.train import modes, state
  name, _, variant = args.config.partition(':')
  module = importlib.import_module(name.removesuffix('.py').replace('/', '.'))
  config = module.get_config(variant)
  config.train.steps = args.steps
  config.train.eval_every = args.eval_every
  config.eval.metrics = 'fid'
  t0 = time.time()
  mesh = parallel.create_mesh()
  model = adapter.build(config, mesh)
  s0 = state.init_state(config, model, mesh)
  fid0 = modes.run_evaluation(config, sampling.Sampler(config, model, mesh).sample_fn(s0), 0,
                              args.workdir, strict=True)['fid']
  print(f'step 0: FID {fid0:.2f} ({time.time() - t0:.0f} s)', flush=True)
  train.train_and_evaluate(config, args.workdir)
  fids = {0: fid0}
  for f in sorted(os.listdir(os.path.join(args.workdir, 'eval'))):
    with open(os.path.join(args.workdir, 'eval', f)) as fh:
      fids[int(f.removeprefix('step_').removesuffix('.json'))] = json.load(fh)['fid']
  with open(os.path.join(args.workdir, 'metrics.jsonl')) as fh:
    logged = [json.loads(line) for line in fh if line.strip()]
  cpu = next((ln.split(':', 1)[1].strip() for ln in open('/proc/cpuinfo')
              if ln.startswith('model name')), platform.processor())
  out = {'config': args.config, 'steps': args.steps, 'fid_by_step': fids,
         'fid_protocol': f'{config.eval.num_samples} samples vs {config.eval.num_ref} test images',
         'logged': logged, 'wall_s': round(time.time() - t0, 1), 'cpu': cpu,
         'cores': os.cpu_count(), 'jax': jax.__version__,
         'command': ' '.join([sys.executable.split('/')[-1], *sys.argv])}
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, 'w') as fh:
    json.dump(out, fh, indent=1)
  print(json.dumps({'fid_by_step': fids, 'wall_s': out['wall_s']}))


if __name__ == '__main__':
  main()
