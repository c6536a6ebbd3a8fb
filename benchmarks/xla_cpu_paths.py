"""Issue 18 item 1-2: which XLA:CPU path runs the CIFAR convolutions fastest, per op shape.

  .venv/bin/python benchmarks/xla_cpu_paths.py                # 6 variants, 2 ops (~10 min idle)
  .venv/bin/python benchmarks/xla_cpu_paths.py --variants all --ops all
  .venv/bin/python benchmarks/xla_cpu_paths.py --variants default,eigen_conv --ops g384_32
  .venv/bin/python benchmarks/xla_cpu_paths.py --list                # variants and ops

For each XLA_FLAGS variant (one subprocess each: XLA reads its flags once, when the backend
starts) and each op shape of the CIFAR-10 ReACGAN at batch 64 (3x3 / 1x1 stride-1 NHWC
convolutions of G and D), the child times, interleaved in one loop so that load from other
jobs hits all alike:
  ours   lax.conv_general_dilated float32: forward, input gradient (vjp), XLA's weight
         gradient (vjp), and models/conv.py's shifted-matrix-product weight gradient (`dw mm`);
         the same with bfloat16 operands and float32 accumulation (preferred_element_type);
         the forward as an im2col matrix product (kh*kw shifted slices side by side, one dot),
         float32 and bfloat16 -> float32.
  torch  F.conv2d forward and aten.convolution_backward (input and weight gradient) on
         channels-last tensors, float32 and bfloat16 (what torch.autocast('cpu', bfloat16) runs
         for a conv: bf16 operands, oneDNN accumulates in float32).
and prints GFLOP/s (2*B*Ho*Wo*kh*kw*C*O per pass, median of --repeats after one warm-up) and the
ratio to torch float32 and torch bf16 on the same op and pass, with the CPU model, its
AMX / AVX512-BF16 flags, the load average (1 min) before and after each child, and versions.
A variant whose flags the binary rejects (XLA aborts on unknown flags) prints its error line.
Threads: every child is pinned to the first --threads CPUs (XLA sizes its pool from the
affinity) and runs torch with --threads threads.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

# XLA_FLAGS variants (the names the flags have in jaxlib 0.10.2: run the binary with a bad
# value of any flag to see its list).
VARIANTS = {
    'default': '',
    'eigen_conv': '--xla_cpu_experimental_ynn_fusion_type=dot',  # YNNPACK dots only
    'ynn_all': '--xla_cpu_experimental_ynn_fusion_type=dot,eltwise,reduce',
    'no_xnnpack': '--xla_cpu_use_xnnpack=false',
    'no_ynn_no_xnn': '--xla_cpu_experimental_ynn_fusion_type=dot --xla_cpu_use_xnnpack=false',
    'xnn_greedy': '--xla_cpu_experimental_xnn_graph_fusion_mode=XNN_GRAPH_FUSION_MODE_GREEDY',
    'onednn': '--xla_cpu_use_onednn=true',
    'onednn_dot': '--xla_cpu_use_onednn=true --xla_cpu_experimental_onednn_fusion_type=dot',
    'onednn_cc': '--xla_cpu_experimental_onednn_custom_call=true',
}

# name: (label, batch, size, in channels, out channels, kernel) of the CIFAR-10 ReACGAN at
# batch 64 (G ch 384, D ch 192; shared/SPEC.md section 3).
OPS = {
    'g384_32': ('G block2 conv3x3 384->384 @32x32', 64, 32, 384, 384, 3),
    'g384_16': ('G block1 conv3x3 384->384 @16x16', 64, 16, 384, 384, 3),
    'g1x1_32': ('G block2 conv1x1 384->384 @32x32', 64, 32, 384, 384, 1),
    'd192_32': ('D block0 conv3x3 192->192 @32x32', 64, 32, 192, 192, 3),
    'd192_16': ('D block1 conv3x3 192->192 @16x16', 64, 16, 192, 192, 3),
}
PASSES = ('fwd', 'dx', 'dw')


def _cpu():
  """-> (model name, flags of interest) from /proc/cpuinfo."""
  name, flags = 'unknown', set()
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith('model name') and name == 'unknown':
          name = line.split(':', 1)[1].strip()
        elif line.startswith('flags') and not flags:
          flags = set(line.split(':', 1)[1].split())
  except OSError:
    pass
  wanted = ('avx512f', 'avx512_bf16', 'avx512_vnni', 'amx_bf16', 'amx_tile')
  return name, [f for f in wanted if f in flags]


def _median_s(fn, repeats):
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def _jax_calls(b, s, c, o, k):
  """-> {(impl, pass): zero-arg blocking callable} for one op shape."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  from jax import lax  # noqa: PLC0415

  from reacgan_jax.ops import conv as conv_ops  # noqa: PLC0415

  p = k // 2
  pad = ((p, p), (p, p))
  nhwc = ('NHWC', 'HWIO', 'NHWC')
  kx, kw, kg = jax.random.split(jax.random.key(0), 3)
  x = jax.random.normal(kx, (b, s, s, c))
  w = jax.random.normal(kw, (k, k, c, o)) * 0.05
  g = jax.random.normal(kg, (b, s, s, o))
  xb, wb, gb = (t.astype(jnp.bfloat16) for t in (x, w, g))

  def conv(x, w, pet=None):
    return lax.conv_general_dilated(x, w, (1, 1), pad, dimension_numbers=nhwc,
                                    preferred_element_type=pet)

  def dx_of(pet):
    return jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w, pet), x)[1](g)[0])

  def dw_of(pet):
    return jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_, pet), w)[1](g)[0])

  def im2col(x, w, pet=None):
    xp = jnp.pad(x, ((0, 0), pad[0], pad[1], (0, 0)))
    cols = jnp.concatenate([xp[:, dy:dy + s, dx:dx + s, :] for dy in range(k) for dx in range(k)],
                           axis=-1)
    return jnp.dot(cols.reshape(-1, k * k * c), w.reshape(k * k * c, o),
                   preferred_element_type=pet).reshape(b, s, s, o)

  dw_mm = jax.jit(lambda x, g, dt: conv_ops._wgrad_shifted(x, g, k, k, pad, None, dt),
                  static_argnums=2)
  f32 = jnp.float32
  fns = {
      ('f32', 'fwd'): (jax.jit(conv), (x, w)),
      ('f32', 'dx'): (dx_of(None), (x, w, g)),
      ('f32', 'dw'): (dw_of(None), (x, w, g)),
      ('f32 dw mm', 'dw'): (lambda x, g: dw_mm(x, g, f32), (x, g)),
      ('bf16>f32', 'fwd'): (jax.jit(lambda x, w: conv(x, w, f32)), (xb, wb)),
      ('bf16>f32', 'dx'): (dx_of(f32), (xb, wb, g)),
      ('bf16>f32', 'dw'): (dw_of(f32), (xb, wb, g)),
      ('bf16>f32 dw mm', 'dw'): (lambda x, g: dw_mm(x, g, f32), (xb, gb)),
      ('bf16', 'fwd'): (jax.jit(conv), (xb, wb)),
      ('im2col f32', 'fwd'): (jax.jit(im2col), (x, w)),
      ('im2col bf16>f32', 'fwd'): (jax.jit(lambda x, w: im2col(x, w, f32)), (xb, wb)),
  }
  fns.update(_onednn_calls(x, w, g, pad))
  out = {}
  for key, (fn, args) in fns.items():
    out[key] = lambda fn=fn, args=args: jax.block_until_ready(fn(*args))
  return out


def _onednn_calls(x, w, g, pad):
  """The oneDNN custom call (reacgan_jax/ops/onednn, the `onednn` extra) per pass, f32 and bf16."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from reacgan_jax.ops import onednn  # noqa: PLC0415

  ok, why = onednn.available()
  if not ok:
    print(f'onednn: skipped ({why.splitlines()[0]})', file=sys.stderr)
    return {}
  fns = {}

  def conv(x, w):
    return onednn.conv2d(x, w, (1, 1), pad)

  for name, dt in (('onednn f32', jnp.float32), ('onednn bf16', jnp.bfloat16)):
    xd, wd, gd = (t.astype(dt) for t in (x, w, g))
    fns[(name, 'fwd')] = (jax.jit(conv), (xd, wd))
    fns[(name, 'dx')] = (jax.jit(lambda x, w, g: jax.vjp(lambda x_: conv(x_, w), x)[1](g)[0]),
                         (xd, wd, gd))
    fns[(name, 'dw')] = (jax.jit(lambda x, w, g: jax.vjp(lambda w_: conv(x, w_), w)[1](g)[0]),
                         (xd, wd, gd))
  return fns


def _torch_calls(b, s, c, o, k, threads):
  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: PLC0415

  torch.set_num_threads(threads)
  gen = torch.Generator().manual_seed(0)
  cl = torch.channels_last
  out = {}
  for name, dt in (('torch f32', torch.float32), ('torch bf16', torch.bfloat16)):
    x = torch.randn(b, c, s, s, generator=gen).to(dt).contiguous(memory_format=cl)
    w = (torch.randn(o, c, k, k, generator=gen) * 0.05).to(dt).contiguous(memory_format=cl)
    g = torch.randn(b, o, s, s, generator=gen).to(dt).contiguous(memory_format=cl)

    def fwd(x=x, w=w):
      with torch.no_grad():
        F.conv2d(x, w, padding=k // 2)

    def bwd(mask, x=x, w=w, g=g):
      with torch.no_grad():
        torch.ops.aten.convolution_backward(g, x, w, None, (1, 1), (k // 2, k // 2), (1, 1),
                                            False, (0, 0), 1, mask)

    out[(name, 'fwd')] = fwd
    out[(name, 'dx')] = lambda bwd=bwd: bwd([True, False, False])
    out[(name, 'dw')] = lambda bwd=bwd: bwd([False, True, False])
  return out


def child(args):
  """Times every op of --ops in this process (XLA_FLAGS already set) -> JSON on stdout."""
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) > args.threads:
    os.sched_setaffinity(0, cpus[:args.threads])
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  for op in args.ops:
    _, b, s, c, o, k = OPS[op]
    calls = {**_jax_calls(b, s, c, o, k), **_torch_calls(b, s, c, o, k, args.threads)}
    for fn in calls.values():  # compile / warm up, not timed
      fn()
    times = {key: [] for key in calls}
    for _ in range(args.repeats):  # interleaved: every call once per repeat
      for key, fn in calls.items():
        times[key].append(_median_s(fn, 1))
    flop = 2 * b * s * s * k * k * c * o
    res = {f'{impl}|{ps}': flop / statistics.median(t) / 1e9 for (impl, ps), t in times.items()}
    print('RESULT ' + json.dumps({op: res}), flush=True)  # per op: a killed child keeps some


def _print(variant, flags, res, load):
  print(f'\n[{variant}] XLA_FLAGS={flags!r}  load average {load[0]:.2f} -> {load[1]:.2f}')
  print(f'  {"op":34s} {"pass":4s} {"impl":16s} {"GFLOP/s":>8s} {"/torch f32":>10s} '
        f'{"/torch bf16":>11s}')
  for op, r in res.items():
    for ps in PASSES:
      t32, t16 = r[f'torch f32|{ps}'], r[f'torch bf16|{ps}']
      for key, v in r.items():
        impl, p = key.split('|')
        if p != ps:
          continue
        print(f'  {OPS[op][0]:34s} {ps:4s} {impl:16s} {v:8.0f} {v / t32:9.2f}x {v / t16:10.2f}x')


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--variants', default='default,eigen_conv,no_xnnpack,onednn,onednn_dot,onednn_cc')
  p.add_argument('--ops', default='g384_32,d192_32')
  p.add_argument('--repeats', type=int, default=2)
  p.add_argument('--threads', type=int, default=2)
  p.add_argument('--json', default='', help='also write every figure to this JSON file')
  p.add_argument('--list', action='store_true')
  p.add_argument('--child', action='store_true', help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  args.ops = list(OPS) if args.ops == 'all' else [s for s in args.ops.split(',') if s]
  variants = list(VARIANTS) if args.variants == 'all' else [
      s for s in args.variants.split(',') if s]
  bad = [s for s in args.ops if s not in OPS] + [s for s in variants if s not in VARIANTS]
  if bad:
    p.error(f'unknown --ops/--variants {bad}; see --list')
  if args.child:
    return child(args)
  if args.list:
    for name, flags in VARIANTS.items():
      print(f'variant {name:14s} XLA_FLAGS={flags!r}')
    for name, op in OPS.items():
      print(f'op {name:10s} {op[0]} (batch {op[1]})')
    return None
  import importlib.metadata as md  # noqa: PLC0415

  name, flags = _cpu()
  vers = {k: md.version(k) for k in ('jax', 'jaxlib', 'torch')}
  print(f'machine: {name}, flags {" ".join(flags) or "none of avx512f/bf16/amx"}, '
        f'{os.cpu_count()} CPUs, {args.threads} threads; versions {vers}; batch per op in --list;'
        f' median of {args.repeats}', flush=True)
  everything = dict(cpu=name, flags=flags, versions=vers, variants={})
  for v in variants:
    load0 = os.getloadavg()[0]
    env = {**os.environ, 'XLA_FLAGS': VARIANTS[v]}
    cmd = [sys.executable, os.path.abspath(__file__), '--child', '--ops', ','.join(args.ops),
           '--repeats', str(args.repeats), '--threads', str(args.threads)]
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    load1 = os.getloadavg()[0]
    lines = [ln for ln in r.stdout.splitlines() if ln.startswith('RESULT ')]
    if r.returncode or not lines:
      err = (r.stderr.strip().splitlines() or ['no output'])[-1]
      print(f'\n[{v}] XLA_FLAGS={VARIANTS[v]!r}: failed (rc {r.returncode}): {err[:300]}')
      everything['variants'][v] = dict(flags=VARIANTS[v], error=err)
      if not lines:
        continue
    res = {}
    for ln in lines:
      res.update(json.loads(ln[len('RESULT '):]))
    _print(v, VARIANTS[v], res, (load0, load1))
    everything['variants'][v] = dict(flags=VARIANTS[v], load=(load0, load1), gflops=res)
    sys.stdout.flush()
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(everything, f, indent=1)
  return None


if __name__ == '__main__':
  main()
