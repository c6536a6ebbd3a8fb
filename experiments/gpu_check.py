"""The GPU check of issue 19, within a time budget, every figure written as soon as it is measured.

  # a. same-GPU race (needs no data): ours vs StudioGAN's own step, float32 and mixed precision
  python experiments/gpu_check.py --phases=race --budget_s=330 --out=$OUT \
      --studiogan_src=.gpu_parts/studiogan/src
  # b, c. learning curves from scratch, FID-10k vs the test split every 1,000 steps
  python experiments/gpu_check.py --phases=reacgan,biggan_pd --budget_s=420 --out=$OUT \
      --data=/tmp/gpu_in/files/cifar10.npz \
      --inception=/tmp/gpu_in/files/inception_fid_2015-12-05.msgpack

Phases, in this order (--phases picks a subset; see experiments/GPU_RUNBOOK.md):
  race       one full step (d_updates_per_step D updates + 1 G update) of --race_config at
             --race_batch: StudioGAN's WORKER step (experiments/studiogan_step.py, run first, in
             subprocesses, before this process touches the GPU) and our jitted step, each in
             float32 (TF32 allowed on both: JAX's default matmul precision, torch's allow_tf32
             flags) and in mixed precision (StudioGAN -mpc = autocast fp16 + GradScaler; ours
             config.model.dtype='bfloat16'). Median step time, img/s (real images through D per
             second), ratio, and ours: compile time, XLA's FLOP count of the step and the
             fraction of the dense peak (--peak_tf32 / --peak_bf16) it reaches.
             Skipped, with a reason recorded, when --studiogan_src has no worker.py.
  reacgan    --reacgan_config from scratch to --curve_steps (to --extend_to when the budget
             projects it fits), evaluation every --eval_every steps (FID of --eval_samples EMA
             samples vs the whole test split; IS when the Inception weights have logits) and a
             class grid per evaluation.
  biggan_pd  the same for --biggan_pd_config, when time remains.

Output (--out): `gpu_<date>.jsonl` (one record per line, appended and flushed as measured),
`gpu_<date>.json` ({"records": [...]}, rewritten atomically after every record) and
`gpu_<date>.md` (tables, rewritten likewise), `grids.zip` (grid PNGs, rewritten atomically).
Every record has `kind`, `config`, `step` (null where none) and `t` (seconds since the start);
evaluations carry `fid`; timings carry `median_step_s` and `img_per_s`. A run cut off by the
budget, SIGTERM/SIGINT (finishes the step, records `phase_end` with reason `signal`) or a hard
kill leaves valid files with everything measured so far.

Tests use `--features=toy` (a fixed random feature network in place of Inception, as in
tests/evaluation/test_evaluator.py) and configs/tiny.py; on a GPU leave it at `inception`.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import gpu_report  # noqa: E402


def load_config(spec, overrides=()):
  """'cifar10_reacgan' or 'cifar10_reacgan:small' (configs/) plus 'key.sub=value' overrides."""
  module, _, variant = spec.partition(':')
  mod = importlib.import_module(f'configs.{module}')
  config = mod.get_config(variant) if variant else mod.get_config()
  return apply_overrides(config, overrides)


def apply_overrides(config, overrides):
  """'key.sub=value' items set on config in place, each value of its key's type; -> config."""
  for item in overrides:
    key, _, value = item.partition('=')
    node, *path = key.split('.')
    target = config
    for part in [node] + path[:-1]:
      target = target[part]
    old = target[path[-1]]
    target[path[-1]] = type(old)(value) if not isinstance(old, bool) else value in ('1', 'True',
                                                                                      'true')
  return config


def trainer(config):
  """THE adapter to the trainer (reacgan_jax.train and friends): every use of it in this script
  goes through here. Returns a namespace with the pieces of a run."""
  import types  # noqa: PLC0415

  from reacgan_jax import sampling
  from reacgan_jax.data import pipeline as input_pipeline
  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import loop as train
  from reacgan_jax.train import modes
  from reacgan_jax.train import state as state_lib  # noqa: PLC0415
  from reacgan_jax.train import step as step_lib  # noqa: PLC0415

  mesh = parallel.create_mesh()
  parallel.check_global_batch(config.train.batch_size, mesh)
  model = adapter.build(config, mesh)
  sampler = sampling.Sampler(config, model, mesh)
  n_d = config.train.d_updates_per_step

  def random_batch(seed=0):
    rng = np.random.default_rng(seed)
    b, s = config.train.batch_size, config.data.image_size
    return parallel.shard_batch(
        {'image': rng.uniform(-1, 1, (n_d, b, s, s, 3)).astype(np.float32),
         'label': rng.integers(0, config.data.num_classes, (n_d, b)).astype(np.int32)}, mesh)

  def data_batches():
    it = input_pipeline.create_train_iterator(config, start_step=0, process_index=0,
                                              process_count=1)
    while True:
      yield train._next_batch(it, n_d, mesh)  # noqa: SLF001

  def evaluate(state, step, workdir, cache):
    return modes.run_evaluation(config, sampler.sample_fn(state), step, workdir, strict=True,
                                cache=cache)

  def grid(state):
    z, y = sampling.grid_latents(config, jax_fold(config.seed, 1))
    images = parallel.to_host(sampler.sample_fn(state)(z, y))
    return sampling.make_grid(images, len(sampling.grid_classes(config)),
                              config.train.grid_per_class)

  return types.SimpleNamespace(
      init_state=lambda: state_lib.init_state(config, model, mesh),
      step_fn=step_lib.compile_train_step(config, model, mesh),
      random_batch=random_batch, data_batches=data_batches, evaluate=evaluate, grid=grid,
      to_host=parallel.to_host)


def flop_rates(flops, step_s, peak_tflops):
  """flops_per_step, tflops and frac_peak of a timed step; all None where XLA gave no count.

  jax 0.11.2's GPU backend returned a cost analysis without 'flops' for the lowered step (the
  H200 run of 2026-12-04): a count of 0 would read as 0 TFLOP/s in the tables, so it is None
  there (the lowered module is the same program on any backend: take the count from a CPU
  lowering, as RESULTS.md section 3b does).
  """
  if not flops:
    return dict(flops_per_step=None, tflops=None, frac_peak=None)
  tflops = flops / step_s / 1e12
  return dict(flops_per_step=flops, tflops=tflops,
              frac_peak=tflops / peak_tflops if peak_tflops > 0 else None)


def jax_fold(seed, i):
  import jax  # noqa: PLC0415

  return jax.random.fold_in(jax.random.PRNGKey(seed), i)


class Stop:
  """Deadline and signal flag shared by the phases.

  clock: seconds now (time.time; tests hand in a simulated clock, so the stopping rules are
  checked without depending on how fast the machine is).
  """

  def __init__(self, budget_s, clock=time.time):
    self.now = clock
    self.t0 = clock()
    self.deadline = self.t0 + budget_s
    self.signalled = None
    for sig in (signal.SIGTERM, signal.SIGINT):
      signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    del frame
    self.signalled = signal.Signals(signum).name

  def left(self):
    return self.deadline - self.now()

  def reason(self, need_s=0.0):
    """'signal', 'budget' or None (None: go on; need_s = seconds the next piece needs)."""
    if self.signalled:
      return 'signal'
    return 'budget' if self.left() < need_s else None


# ---- a. the race --------------------------------------------------------------------------------

def studiogan_race(args, log, stop):
  src = args.studiogan_src
  if not src or not os.path.isfile(os.path.join(src, 'worker.py')):
    for prec in ('fp32', 'amp_fp16'):
      log.write(kind='race_skipped', impl='studiogan', config=args.studiogan_yaml, precision=prec,
                reason=f'--studiogan_src={src!r} has no worker.py (StudioGAN not carried)')
    return
  for amp in (False, True):
    prec = 'amp_fp16' if amp else 'fp32'
    need = 45.0
    if stop.reason(need):
      log.write(kind='race_skipped', impl='studiogan', config=args.studiogan_yaml,
                precision=prec, reason=stop.reason(need))
      continue
    out = os.path.join(log.workdir, f'studiogan_{prec}.json')
    cmd = [sys.executable, os.path.join(ROOT, 'experiments', 'studiogan_step.py'), '--src', src,
           '--yaml', args.studiogan_yaml, '--batch', str(args.race_batch), '--steps',
           str(args.race_steps), '--warmup', str(args.race_warmup), '--max_seconds',
           str(args.race_max_s), '--out', out]
    if amp:
      cmd.append('--amp')
    if os.path.exists(out):
      os.remove(out)  # never report an earlier run's file
    t = time.time()
    try:
      proc = subprocess.run(cmd, capture_output=True, timeout=max(
          10.0, min(stop.left() - 20, args.race_max_s + args.race_setup_s)))
      ok, why = proc.returncode == 0, f'exit status {proc.returncode}'
    except subprocess.TimeoutExpired as e:
      proc, ok, why = e, False, 'timed out'
    if not ok:
      text = b''.join(x for x in (proc.stdout, proc.stderr) if x).decode(errors='replace')
      log.write(kind='race_error', impl='studiogan', config=args.studiogan_yaml, precision=prec,
                reason=f'studiogan_step.py: {why} after {time.time() - t:.0f} s',
                tail=text[-1500:])
    if os.path.exists(out):  # the harness rewrites it after every step: partial figures count
      with open(out) as f:
        r = json.load(f)
      log.write(kind='race', config=args.studiogan_yaml, **r)


def ours_race(args, log, stop, make_trainer=None):
  import jax  # noqa: PLC0415

  from benchmarks.train_step import hlo_flops  # noqa: PLC0415

  for prec, dtype, peak in (('fp32', 'float32', args.peak_tf32),
                            ('bf16', 'bfloat16', args.peak_bf16)):
    if stop.reason(60.0):
      log.write(kind='race_skipped', impl='ours', config=args.race_config, precision=prec,
                reason=stop.reason(60.0))
      continue
    config = load_config(args.race_config, args.override + [f'model.dtype={dtype}'])
    config.train.batch_size = args.race_batch
    t = (make_trainer or trainer)(config)
    state, batch = t.init_state(), t.random_batch()
    t0 = time.perf_counter()
    lowered = t.step_fn.lower(state, batch)
    compiled = lowered.compile()
    compile_s = time.perf_counter() - t0
    flops = hlo_flops(lowered)
    times = []
    t_end = time.perf_counter() + min(args.race_max_s, max(stop.left() - 30, 5.0))
    for i in range(args.race_warmup + args.race_steps):
      s = time.perf_counter()
      state, metrics = compiled(state, batch)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - s)
      if stop.signalled or (time.perf_counter() > t_end and i >= args.race_warmup):
        break
    timed = times[args.race_warmup:] or times[-1:]
    median = float(np.median(timed))
    n_d = config.train.d_updates_per_step
    log.write(kind='race', impl='ours', config=args.race_config, precision=prec,
              batch=args.race_batch, d_updates_per_step=n_d, dtype=dtype,
              matmul_precision=str(getattr(jax.config, 'jax_default_matmul_precision', None)
                                   or 'default (TF32 allowed on GPU)'),
              device=jax.devices()[0].device_kind, jax=jax.__version__, compile_s=compile_s,
              first_step_s=times[0], warmup_steps=args.race_warmup, step_s=timed,
              median_step_s=median, img_per_s=args.race_batch * n_d / median,
              **flop_rates(flops, median, peak), peak_tflops=peak)
    del state, compiled, lowered


def race_ratios(log):
  recs = {(r['impl'], r['precision']): r for r in log.records if r['kind'] == 'race'}
  for ours_p, sg_p in (('fp32', 'fp32'), ('bf16', 'amp_fp16')):
    a, b = recs.get(('ours', ours_p)), recs.get(('studiogan', sg_p))
    if a and b:
      log.write(kind='race_ratio', config=a['config'], precision=f'{ours_p} vs {sg_p}',
                ours_img_per_s=a['img_per_s'], studiogan_img_per_s=b['img_per_s'],
                speedup=a['img_per_s'] / b['img_per_s'])


# ---- b, c. learning curves ----------------------------------------------------------------------

def curve_config(args, spec):
  config = load_config(spec, args.override)
  config.data.source = 'npz'
  config.data.npz_path = args.data
  config.data.npz_layout = args.npz_layout
  config.data.eval_split = 'test'
  config.data.cache_dir = 'none'
  config.eval.num_samples = args.eval_samples
  config.eval.num_ref = args.eval_ref
  config.eval.metrics = 'fid,is'
  if args.inception:
    config.eval.inception_weights = args.inception
  config.eval.ref_stats = args.ref_stats
  return config


def _eval_cache(args, config, workdir):
  if args.features != 'toy':
    return {}
  from reacgan_jax.evaluation import evaluator  # noqa: PLC0415

  return {'evaluator': evaluator.Evaluator(config, features_fn=toy_features(),
                                           features_tag='toy-random-projection',
                                           cache_dir=os.path.join(workdir, 'ref_cache'))}


def toy_features(dim=64):
  """Fixed random features (tests only): 8x8 mean pool, random projection, tanh; 10 logits."""
  rng = np.random.default_rng(0)
  w1 = rng.normal(size=(8 * 8 * 3, dim)) / np.sqrt(8 * 8 * 3)
  w2 = rng.normal(size=(dim, 10)) * 3.0

  def features_fn(u8):
    x = u8.astype(np.float64) / 127.5 - 1.0
    n, h, w, _ = x.shape
    x = x.reshape(n, 8, h // 8, 8, w // 8, 3).mean(axis=(2, 4)).reshape(n, -1)
    pool = np.tanh(2.0 * x @ w1)
    return {'pool': pool.astype(np.float32), 'logits': (pool @ w2).astype(np.float32)}

  return features_fn


def run_curve(args, log, stop, name, spec, reserve_s=0.0, make_trainer=None):
  """Trains spec from scratch with evaluations; stops on target, budget or signal.

  make_trainer: `trainer` (default) or a stand-in with the same fields (tests).
  Returns the measured seconds per step (None before the second logged segment).
  """
  config = curve_config(args, spec)
  workdir = os.path.join(log.workdir, name)
  t = (make_trainer or trainer)(config)
  cache = _eval_cache(args, config, workdir)
  state, batches = t.init_state(), t.data_batches()
  target, every = args.curve_steps, args.eval_every
  step, eval_s, t_seg, pending, step_s = 0, args.eval_guess_s, stop.now(), [], None
  log.write(kind='phase_start', config=spec, step=0, target=target, batch=config.train.batch_size)

  def evaluate():
    nonlocal eval_s
    te = stop.now()
    try:
      res = t.evaluate(state, step, workdir, cache)
      log.add_grid(f'{name}_step{step}.png', t.grid(state))
    except Exception as e:  # noqa: BLE001 -- a failed evaluation must not end the training
      log.write(kind='eval_error', config=spec, step=step, reason=repr(e)[:500])
      return
    finally:
      eval_s = stop.now() - te
    fields = {k: v for k, v in (res or {}).items() if isinstance(v, (int, float, str))}
    log.write(kind='eval', config=spec, step=step, eval_s=eval_s,
              **(fields if res else {'fid': None, 'reason': 'evaluation unavailable'}))

  reason = None
  while True:
    if step == target:
      # Extend (e.g. 2,000 -> 4,000 steps) only when the projection fits in what is left after
      # the later phases' reservation and two evaluations.
      left_after = stop.left() - reserve_s - 2 * eval_s
      need = (args.extend_to - step) * (step_s or 1e9)
      if args.extend_to > target and need < left_after:
        target = args.extend_to
        log.write(kind='extend', config=spec, step=step, target=target, projected_s=need)
      else:
        reason = 'done'
        break
    reason = stop.reason((step_s or 0.0) + eval_s)  # room for one more step and an evaluation
    if reason:
      break
    batch = next(batches)
    state, metrics = t.step_fn(state, batch)
    step += 1
    pending.append(metrics)
    first = step == 1
    if first or step % args.log_every == 0 or step % every == 0 or step == target:
      host = t.to_host(pending)
      pending, now = [], stop.now()
      if not first:
        step_s = (now - t_seg) / len(host)
      mean = {k: float(np.mean([m[k] for m in host])) for k in host[0]}
      log.write(kind='train', config=spec, step=step, step_s=step_s,
                first_step_s=(now - t_seg) if first else None,
                img_per_s=(config.train.batch_size * config.train.d_updates_per_step / step_s
                           if step_s else None), **mean)
      t_seg = now
      if not all(np.isfinite(v) for v in mean.values()):
        reason = 'non-finite loss'
        break
    if step % every == 0:
      evaluate()
      t_seg = stop.now()
  if reason == 'budget' and step % every and step > 0:
    # Cut by the budget between two evaluations: evaluate where it stopped, always. The budget
    # check above stops while one step and one evaluation (as long as the last one) still fit,
    # so this runs inside --budget_s unless the evaluation got slower; --budget_s must leave that
    # margin before the command's hard limit (GPU_RUNBOOK.md). A signal skips it: the process is
    # asked to end now, and the last evaluation on disk is the result.
    evaluate()
  log.write(kind='phase_end', config=spec, step=step, reason=reason)
  return step_s


def build_parser():
  p = argparse.ArgumentParser(prog='python experiments/gpu_check.py',
                              description=__doc__.split('\n')[0])
  p.add_argument('--phases', default='race,reacgan,biggan_pd')
  p.add_argument('--budget_s', type=float, required=True, help='wall-clock budget, seconds')
  p.add_argument('--out', required=True, help='output folder')
  p.add_argument('--tag', default='', help="file stem instead of gpu_<UTC date-time>")
  p.add_argument('--override', action='append', default=[], help='config key=value, all configs')
  p.add_argument('--studiogan_src', default='', help="StudioGAN's src/ folder ('' = skip it)")
  p.add_argument('--studiogan_yaml', default='CIFAR10/ReACGAN.yaml')
  p.add_argument('--race_config', default='cifar10_reacgan')
  p.add_argument('--race_batch', type=int, default=128)
  p.add_argument('--race_steps', type=int, default=20)
  p.add_argument('--race_warmup', type=int, default=2)
  p.add_argument('--race_max_s', type=float, default=60.0, help='timing seconds per run')
  p.add_argument('--race_setup_s', type=float, default=120.0,
                 help='StudioGAN import/build/warm-up seconds allowed on top of --race_max_s')
  p.add_argument('--peak_tf32', type=float, default=494.7, help='H100/H200 SXM dense TF32')
  p.add_argument('--peak_bf16', type=float, default=989.4, help='H100/H200 SXM dense BF16')
  p.add_argument('--reacgan_config', default='cifar10_reacgan')
  p.add_argument('--biggan_pd_config', default='cifar10_biggan_pd')
  p.add_argument('--data', default='', help='npz with x_train/y_train/x_test/y_test')
  p.add_argument('--npz_layout', default='cifar_rows')
  p.add_argument('--inception', default='', help='converted Inception weights (msgpack)')
  p.add_argument('--ref_stats', default='', help='precomputed test statistics (optional)')
  p.add_argument('--features', default='inception', choices=['inception', 'toy'])
  p.add_argument('--curve_steps', type=int, default=2000)
  p.add_argument('--extend_to', type=int, default=4000)
  p.add_argument('--eval_every', type=int, default=1000)
  p.add_argument('--eval_samples', type=int, default=10_000)
  p.add_argument('--eval_ref', type=int, default=-1, help='-1 = whole test split')
  p.add_argument('--eval_guess_s', type=float, default=60.0, help='assumed before the first')
  p.add_argument('--log_every', type=int, default=250)
  p.add_argument('--reserve_pd_s', type=float, default=240.0,
                 help='seconds kept for biggan_pd when deciding to extend reacgan')
  p.add_argument('--workdir', default='', help='scratch folder (eval JSONs); default a tmp dir')
  return p


def main(argv=None):
  p = build_parser()
  args = p.parse_args(argv)
  phases = [s.strip() for s in args.phases.split(',') if s.strip()]
  bad = [s for s in phases if s not in ('race', 'reacgan', 'biggan_pd')]
  if bad:
    p.error(f'--phases: unknown {bad}; expected race, reacgan, biggan_pd')
  if any(s != 'race' for s in phases) and not os.path.isfile(args.data):
    p.error(f'--data={args.data!r} is not a file: the curves need the CIFAR-10 npz '
            '(gpu_pack.py receive assembles it)')
  stop = Stop(args.budget_s)
  log = gpu_report.Log(args.out, args.tag or time.strftime('gpu_%Y%m%d-%H%M%S', time.gmtime()),
                       t0=stop.t0, workdir=args.workdir or None)
  log.write(kind='start', argv=sys.argv[1:] if argv is None else argv, budget_s=args.budget_s)
  if 'race' in phases:
    try:
      studiogan_race(args, log, stop)  # first: before this process initialises the GPU
    except Exception as e:  # noqa: BLE001 -- our half of the race must still run
      log.write(kind='error', config='studiogan race', reason=repr(e)[:500])
  import jax  # noqa: PLC0415

  try:  # default (and maybe gone) in newer jax; sharded draws must equal unsharded ones
    jax.config.update('jax_threefry_partitionable', True)
  except (AttributeError, KeyError, ValueError):
    pass
  if os.environ.get('REACGAN_JAX_CACHE'):
    jax.config.update('jax_compilation_cache_dir', os.path.join(os.environ['REACGAN_JAX_CACHE'],
                                                                'xla'))
  log.write(kind='env', devices=[d.device_kind for d in jax.devices()], jax=jax.__version__,
            platform=jax.devices()[0].platform)
  for phase in phases:
    try:
      if phase == 'race':
        ours_race(args, log, stop)
        race_ratios(log)
      else:
        spec = args.reacgan_config if phase == 'reacgan' else args.biggan_pd_config
        reserve = args.reserve_pd_s if phase == 'reacgan' and 'biggan_pd' in phases else 0.0
        run_curve(args, log, stop, phase, spec, reserve_s=reserve)
    except Exception as e:  # noqa: BLE001 -- one phase failing must not lose the others
      import traceback  # noqa: PLC0415

      log.write(kind='error', config=phase, reason=repr(e)[:500],
                tail=traceback.format_exc()[-2000:])
    if stop.signalled:
      break
  log.write(kind='end', reason=stop.reason() or 'done', left_s=stop.left())
  return 0


if __name__ == '__main__':
  sys.exit(main())
