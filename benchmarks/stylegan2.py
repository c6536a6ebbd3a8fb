"""Issue 15: one StyleGAN2 D update and one G update, ours (JAX) vs StudioGAN's torch models.

  .venv/bin/python benchmarks/stylegan2.py --studiogan /work/studiogan \
      [--config configs/cifar10_stylegan2.py:small] [--batch 32] [--repeats 5] [--json out.json]

Both sides build the networks of --config (default its CPU-size ``small`` variant: 32 channels,
z = w = 64; the full config at a small --batch works too) with ``config.loss.d_terms = ''``
(R1 off, so both sides do the same work per update):

  ours   ONE jitted call of the trainer's own ``StepBuilder.d_update`` / ``g_update`` (the
         builder ``step.make_train_step`` returns, as benchmarks/compare.py times it), carry
         donated, ``block_until_ready`` on the result.
         D update: G forward in train mode without gradient (random noise, w_avg tracked),
         D on the reals and on the fakes, logistic loss, backward, Adam.
         G update: G forward, D frozen (train mode), non-saturating logistic loss, backward,
         Adam. G's EMA (outside g_update) is not timed.
         Convolutions: --conv-backend (default 'auto': oneDNN for the plain convs and
         zero insertion + XLA for the up-sampling ones on one x86-64 CPU device,
         models/stylegan2_layers.py); the side ``ours_xla`` is the same with
         conv_backend='xla' (lax convolutions throughout), timed when ours is not XLA.
  ours bf16  the same with config.model.dtype='bfloat16' (bf16 synthesis and D blocks, float32
         mapping, epilogue, losses and Adam: models/stylegan2_g.py, stylegan2_d.py), its
         backend resolved for bf16 ('auto': oneDNN where the CPU has oneDNN bf16 convolutions).
         --no-bf16 skips it.
  torch  StudioGAN's own Generator / Discriminator (src/models/stylegan2.py, imported from
         --studiogan; its CUDA ops fall back to their reference implementations on CPU),
         built with the same sizes (cAdaIN G, SPD D), float32, NCHW, torch.optim.Adam with our
         optimiser's lr / betas / eps after lazy scaling (lr * c, betas ** c), and the update
         as StudioGAN's worker.py does it (toggle_grad, zero_grad, mapping + synthesis with
         update_emas=True in the D update and False in the G update, D(real), D(fake),
         losses.d_logistic / g_logistic (softplus), backward, step), minus what this config
         turns off (R1, path length, augmentation, mixed precision).
         torch.set_num_threads(os.cpu_count()).
  torch bf16  the same torch updates with their forwards (and losses) under
         ``torch.autocast('cpu', dtype=torch.bfloat16)`` (reported as not run, with the
         error, if StudioGAN's ops refuse it). --no-bf16 skips it.

Fixed random data on both sides (the input pipeline is not timed). One warm-up call of each
(ours compiled ahead of time first, compile seconds printed) and one untimed round of the
alternation (the process's heap reaches its peak), then per repeat, per figure, the
sides alternate (ours, torch, torch bf16) so that load from other jobs hits them alike; the
figures are medians over --repeats of wall and process CPU seconds, and the fastest repeat.
The ratio is speed ours / torch (torch seconds / our seconds: > 1 means ours is faster).
Without --studiogan only ours is timed.
"""

import argparse
import importlib
import importlib.util
import json
import os
import pathlib
import statistics
import sys
import time
import types

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _ROOT)


def _load_compare():
  """benchmarks/compare.py (machine / version helpers), loaded by path (see import_studiogan)."""
  spec = importlib.util.spec_from_file_location(
      '_bench_compare', os.path.join(os.path.dirname(os.path.abspath(__file__)), 'compare.py'))
  mod = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(mod)
  return mod


compare = _load_compare()

FIGURES = ('d_update', 'g_update')
STUDIOGAN_D_COND = {'spd': 'SPD'}  # the heads whose loss is the adversarial one alone


def _parse_args(argv=None):
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument('--studiogan', default='', help='PyTorch-StudioGAN checkout (its src/ is used)')
  p.add_argument('--config', default='configs/cifar10_stylegan2.py:small',
                 help='config file[:variant] under configs/')
  p.add_argument('--batch', type=int, default=32, help='batch size (both sides)')
  p.add_argument('--repeats', type=int, default=5, help='timed calls per figure and side')
  p.add_argument('--no-bf16', action='store_true',
                 help='skip the bf16 sides (ours bf16, torch bf16 autocast)')
  p.add_argument('--conv-backend', default='auto',
                 help="our config.model.conv_backend (default 'auto': oneDNN on one x86-64 CPU "
                      "device); when it resolves to 'onednn', an 'ours_xla' side times "
                      "conv_backend='xla' too (issue 28)")
  p.add_argument('--json', default='', help='also write the results to this JSON file')
  args = p.parse_args(argv)
  if args.batch < 1 or args.repeats < 1:
    p.error('--batch and --repeats must be >= 1')
  return args


def load_config(spec, batch):
  """'configs/<name>.py[:variant]' -> the config with R1 off and train.batch_size = batch."""
  path, _, variant = spec.partition(':')
  name = pathlib.Path(path).stem
  if not (pathlib.Path(_ROOT) / 'configs' / f'{name}.py').is_file():
    raise SystemExit(f'--config {spec!r}: no configs/{name}.py; pass a file under configs/, '
                     'e.g. configs/cifar10_stylegan2.py:small')
  config = importlib.import_module(f'configs.{name}').get_config(variant)
  if config.model.backbone != 'stylegan2':
    raise SystemExit(f'--config {spec!r}: model.backbone is {config.model.backbone!r}; '
                     'this benchmark times StyleGAN2 configs')
  config.loss.d_terms = ''  # R1 off: both sides do the same work per D update
  config.train.batch_size = batch
  return config


def _data(config, batch, seed=0):
  import numpy as np  # noqa: PLC0415

  rng = np.random.default_rng(seed)
  s = config.data.image_size
  real = rng.uniform(-1, 1, (batch, s, s, 3)).astype(np.float32)
  labels = rng.integers(0, config.data.num_classes, batch).astype(np.int32)
  return real, labels


# ---------------------------------------------------------------------------------------------
# Ours
# ---------------------------------------------------------------------------------------------


def jax_calls(config, real_np, labels_np, seed=0):
  """-> ({'d_update', 'g_update'}: zero-arg blocking callables, info)."""
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415

  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import state, step

  batch = real_np.shape[0]
  mesh = parallel.create_mesh()
  model = adapter.build(config, mesh)
  st0 = state.init_state(config, model, mesh)
  b = step.make_train_step(config, model).builder
  real, labels = jnp.asarray(real_np), jnp.asarray(labels_np)
  keys = iter(jax.random.split(jax.random.PRNGKey(seed), 10_000))
  zero = jnp.zeros((), jnp.int32)

  def d_fn(carry, g, real, labels, key):
    return b.d_update(g, carry, (real, labels, key), zero, zero)

  def g_fn(g, d, key):
    carry = step.DCarry(d=d, g_sn=g.sn, g_cols=g.collections, aug=None, extra={})
    g, carry, metrics = b.g_update(g, carry, key, batch, zero)
    return g, carry.d.sn, metrics

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

  def d_update():
    st['d'], metrics = d_jit(st['d'], st0.g, real, labels, next(keys))
    jax.block_until_ready((st['d'], metrics))

  def g_update():
    st['g'], _, metrics = g_jit(st['g'], st0.d, next(keys))
    jax.block_until_ready((st['g'], metrics))

  n_params = lambda t: sum(x.size for x in jax.tree.leaves(t))  # noqa: E731
  info = dict(compile_s=compile_s, g_params=int(n_params(st0.g.params)),
              d_params=int(n_params(st0.d.params)), devices=str(jax.devices()))
  return dict(d_update=d_update, g_update=g_update), info


# ---------------------------------------------------------------------------------------------
# StudioGAN (torch)
# ---------------------------------------------------------------------------------------------


def import_studiogan(root):
  """StudioGAN's models.stylegan2 and utils.losses from root (the checkout or its src/)."""
  src = pathlib.Path(root)
  src = src / 'src' if (src / 'src' / 'models' / 'stylegan2.py').is_file() else src
  if not (src / 'models' / 'stylegan2.py').is_file():
    raise SystemExit(f'--studiogan {root!r}: no models/stylegan2.py under it or its src/; pass '
                     'the PyTorch-StudioGAN checkout')
  try:
    import pkg_resources  # noqa: F401,PLC0415
  except ImportError:  # StudioGAN's style_ops import parse_version from it
    from packaging.version import parse  # noqa: PLC0415
    sys.modules['pkg_resources'] = types.SimpleNamespace(parse_version=parse)
  here = os.path.dirname(os.path.abspath(__file__))  # on sys.path when run as a script: its
  sys.path[:] = [p for p in sys.path if os.path.abspath(p or '.') != here]  # models.py shadows
  if not hasattr(sys.modules.get('models', sys), '__path__'):  # StudioGAN's namespace package
    sys.modules.pop('models', None)
  sys.path.insert(0, str(src))
  import models.stylegan2 as sg2  # noqa: PLC0415
  import utils.losses as losses  # noqa: PLC0415
  return sg2, losses


def build_torch(sg2, config):
  """StudioGAN's Generator / Discriminator with our config's sizes (models/model.py's call)."""
  m, s = config.model, config.model.stylegan2
  if m.cond_method not in STUDIOGAN_D_COND:
    raise SystemExit(f'model.cond_method={m.cond_method!r}: this benchmark builds the SPD head '
                     f'only ({sorted(STUDIOGAN_D_COND)})')
  classes, size = config.data.num_classes, config.data.image_size
  model = types.SimpleNamespace(info_type='N/A')
  g = sg2.Generator(
      z_dim=m.z_dim, c_dim=classes, w_dim=s.w_dim, img_resolution=size, img_channels=3,
      MODEL=model, mapping_kwargs={'num_layers': s.mapping_layers,
                                   'lr_multiplier': s.mapping_lr_multiplier,
                                   'w_avg_beta': s.w_avg_beta},
      synthesis_kwargs={'channel_base': s.channel_base, 'channel_max': s.channel_max,
                        'num_fp16_res': 0, 'conv_clamp': s.conv_clamp,
                        'architecture': s.g_architecture})
  d = sg2.Discriminator(
      c_dim=classes, img_resolution=size, img_channels=3, architecture=s.d_architecture,
      channel_base=s.channel_base, channel_max=s.channel_max, num_fp16_res=0,
      conv_clamp=s.conv_clamp, cmap_dim=None, d_cond_mtd=STUDIOGAN_D_COND[m.cond_method],
      aux_cls_type='W/O', d_embed_dim=m.embed_dim, num_classes=classes,
      normalize_d_embed=False, block_kwargs={},
      mapping_kwargs={'num_layers': s.spd_mapping_layers},
      epilogue_kwargs={'mbstd_group_size': s.mbstd_group_size,
                       'mbstd_num_channels': s.mbstd_num_channels}, MODEL=model)
  return g.train(), d.train()


def torch_adam(torch, config, which, params):
  """torch Adam with our optimiser's lr / betas / eps after lazy scaling (state.make_optimizers)."""
  from reacgan_jax.losses import registry as objectives  # noqa: PLC0415

  o = config.optim
  c = objectives.lazy_ratio(config, objectives.build_terms(config, which), which)
  lr = o.g_lr if which == 'g' else o.d_lr
  b1, b2 = (o.beta1 ** c, o.beta2 ** c) if c != 1.0 else (o.beta1, o.beta2)
  return torch.optim.Adam(params, lr=lr * c, betas=(b1, b2), eps=o.eps), dict(
      lr=lr * c, betas=(b1, b2), eps=o.eps, c=c)


def torch_calls(sg2, losses, config, real_np, labels_np, bf16=False, seed=0):
  """-> ({'d_update', 'g_update'}: zero-arg callables, info); worker.py's two updates."""
  import contextlib  # noqa: PLC0415

  import torch  # noqa: PLC0415
  import torch.nn.functional as F  # noqa: N812,PLC0415

  torch.manual_seed(seed)
  G, D = build_torch(sg2, config)
  opt_g, hp_g = torch_adam(torch, config, 'g', G.parameters())
  opt_d, hp_d = torch_adam(torch, config, 'd', D.parameters())
  real = torch.from_numpy(real_np.transpose(0, 3, 1, 2).copy())
  labels = torch.from_numpy(labels_np).long()
  batch, classes, z_dim = real.shape[0], config.data.num_classes, config.model.z_dim
  ctx = (lambda: torch.autocast('cpu', dtype=torch.bfloat16)) if bf16 else \
      contextlib.nullcontext

  def toggle(model, grad):  # misc.toggle_grad(..., is_stylegan=True)
    for p in model.parameters():
      p.requires_grad = grad

  def fakes(update_emas):  # sample.generate_images -> stylegan_generate_images, psi 1
    zs = torch.randn(batch, z_dim)
    y = torch.randint(0, classes, (batch,))
    ws = G.mapping(zs, F.one_hot(y, classes), truncation_psi=1, update_emas=update_emas)
    return G.synthesis(ws, update_emas=update_emas), y

  def d_update():
    toggle(G, False)
    toggle(D, True)
    opt_d.zero_grad()
    with ctx():
      fake, y = fakes(update_emas=True)
      real_dict, fake_dict = D(real, labels), D(fake, y)
      loss = losses.d_logistic(real_dict['adv_output'], fake_dict['adv_output'], DDP=False)
    loss.backward()
    opt_d.step()
    return loss.item()

  def g_update():
    toggle(D, False)
    toggle(G, True)
    opt_g.zero_grad()
    with ctx():
      fake, y = fakes(update_emas=False)
      loss = losses.g_logistic(D(fake, y)['adv_output'], DDP=False)
    loss.backward()
    opt_g.step()
    return loss.item()

  count = lambda mod: sum(p.numel() for p in mod.parameters())  # noqa: E731
  info = dict(g_params=count(G), d_params=count(D), adam_g=hp_g, adam_d=hp_d,
              threads=torch.get_num_threads())
  return dict(d_update=d_update, g_update=g_update), info


# ---------------------------------------------------------------------------------------------
# Timing and report
# ---------------------------------------------------------------------------------------------


def interleave(sides, repeats):
  """sides: {side: {figure: fn}} -> {figure: {side: {wall, cpu, walls}}}; sides alternate."""
  out = {f: {s: ([], []) for s in sides} for f in FIGURES}
  for _ in range(repeats):
    for f in FIGURES:
      for s, calls in sides.items():
        wall, cpu = compare._timed(calls[f])
        out[f][s][0].append(wall)
        out[f][s][1].append(cpu)
  return {f: {s: dict(wall=statistics.median(w), cpu=statistics.median(c), best=min(w), walls=w)
              for s, (w, c) in per.items()} for f, per in out.items()}


def _where(e):
  """'Error: message at file:line: source' for the innermost frame of e."""
  import traceback  # noqa: PLC0415

  fr = traceback.extract_tb(e.__traceback__)[-1]
  msg = f'{type(e).__name__}: {e}'.splitlines()[0][:200]
  return f'{msg} at {pathlib.Path(fr.filename).name}:{fr.lineno}: {fr.line}'


def _warm(calls):
  for fn in calls.values():
    fn()


def _report(res, args):
  b = args.batch
  print(f'machine: {res["cpu"]}, {res["cores"]} CPUs; load average '
        f'{" ".join(f"{x:.2f}" for x in res["load_start"])} at the start, '
        f'{" ".join(f"{x:.2f}" for x in res["load_end"])} at the end')
  v = res['versions']
  print(f'versions: python {v["python"]}, jax {v["jax"]}, jaxlib {v["jaxlib"]}, flax {v["flax"]},'
        f' optax {v["optax"]}, torch {v["torch"]}; torch threads {res.get("torch_threads")}; '
        f'XLA_FLAGS={os.environ.get("XLA_FLAGS", "")!r}')
  ji = res['jax_info']
  line = f'{args.config} (loss.d_terms \'\'), batch {b}, median of {args.repeats}; ' \
         f'ours ({res["conv_backend"]} convolutions) G {ji["g_params"]:,} / ' \
         f'D {ji["d_params"]:,} params'
  if 'torch_info' in res:
    ti = res['torch_info']
    line += f' (StudioGAN {ti["g_params"]:,} / {ti["d_params"]:,})'
  print(line + '; our compile s: ' + ', '.join(f'{k} {v:.1f}' for k, v in ji['compile_s'].items()))
  if 'torch_info' in res:
    ti = res['torch_info']
    print('torch Adam: ' + '; '.join(
        f'{w} lr {h["lr"]:.6g} betas ({h["betas"][0]:.6g}, {h["betas"][1]:.6g}) eps {h["eps"]:g}'
        f' (c {h["c"]:.4f})' for w, h in (('G', ti['adam_g']), ('D', ti['adam_d']))))
  if res.get('bf16_error'):
    print(f'torch bf16 autocast: not run: {res["bf16_error"]}')
  sides = list(next(iter(res['times'].values())))
  print(f'  {"figure":12}' + ''.join(f'{s + " s":>13}{s + " img/s":>15}' for s in sides) +
        ''.join(f'{"ours/" + s:>13}' for s in sides[1:]) + '   (CPU s: ' +
        ', '.join(sides) + ')')
  for f, per in res['times'].items():
    row = f'  {f:12}' + ''.join(f'{per[s]["wall"]:13.3f}{b / per[s]["wall"]:15.2f}' for s in sides)
    row += ''.join(f'{per[s]["wall"] / per["ours"]["wall"]:12.2f}x' for s in sides[1:])
    print(row + '   (' + ', '.join(f'{per[s]["cpu"]:.2f}' for s in sides) + ')')
    row = f'  {f + " min":12}' + ''.join(
        f'{per[s]["best"]:13.3f}{b / per[s]["best"]:15.2f}' for s in sides)
    print(row + ''.join(f'{per[s]["best"] / per["ours"]["best"]:12.2f}x' for s in sides[1:]))
  if 'ours_bf16' in sides:
    for f, per in res['times'].items():
      print(f'  {f} ours_bf16 ({res["bf16_conv_backend"]} convolutions): ' + ', '.join(
          f'{per[s]["wall"] / per["ours_bf16"]["wall"]:.2f}x {s} (min '
          f'{per[s]["best"] / per["ours_bf16"]["best"]:.2f}x)' for s in sides
          if s != 'ours_bf16'))
  print('ours/torch = torch s / our s (speed ratio; > 1: ours faster); "min" rows: fastest repeat '
        'of each side. Load above the CPU count means other jobs shared the cores (torch\'s '
        'OpenMP threads spin at barriers when a core is taken: bimodal walls, CPU s inflated): '
        'read the min rows and the CPU seconds beside the medians.')


def main(argv=None):
  args = _parse_args(argv)
  # Before jax starts: freed host memory kept in the heap (reacgan_jax/platform/heap.py), for
  # StudioGAN's side too (one process); REACGAN_JAX_KEEP_HEAP=0 measures glibc's default.
  from reacgan_jax.platform import heap  # noqa: PLC0415

  res = dict(config=args.config, batch=args.batch, repeats=args.repeats,
             cpu=compare._cpu_model(), cores=os.cpu_count(), load_start=compare._load(),
             heap=heap.keep_freed_memory())
  print(res['heap'], flush=True)
  config = load_config(args.config, args.batch)
  real, labels = _data(config, args.batch)
  from reacgan_jax.ops import conv as conv_ops  # noqa: PLC0415

  config.model.conv_backend = conv_ops.resolve(args.conv_backend)
  res['conv_backend'] = config.model.conv_backend
  sides = {}
  sides['ours'], res['jax_info'] = jax_calls(config, real, labels)
  _warm(sides['ours'])
  if not args.no_bf16:
    bf = load_config(args.config, args.batch)
    bf.model.dtype = 'bfloat16'
    bf.model.conv_backend = conv_ops.resolve(args.conv_backend, dtype='bfloat16')
    res['bf16_conv_backend'] = bf.model.conv_backend
    sides['ours_bf16'], _ = jax_calls(bf, real, labels)
    _warm(sides['ours_bf16'])
  if config.model.conv_backend != 'xla':
    xla = load_config(args.config, args.batch)
    xla.model.conv_backend = 'xla'
    sides['ours_xla'], _ = jax_calls(xla, real, labels)
    _warm(sides['ours_xla'])
  if args.studiogan:
    import torch  # noqa: PLC0415

    torch.set_num_threads(os.cpu_count())
    sg2, losses = import_studiogan(args.studiogan)
    sides['torch'], res['torch_info'] = torch_calls(sg2, losses, config, real, labels)
    _warm(sides['torch'])
    res['torch_threads'] = torch.get_num_threads()
    if not args.no_bf16:
      try:
        bf16, _ = torch_calls(sg2, losses, config, real, labels, bf16=True)
        _warm(bf16)
        sides['torch_bf16'] = bf16
      except Exception as e:  # noqa: BLE001 (reported: StudioGAN's ops may refuse bf16)
        res['bf16_error'] = _where(e)
  # One untimed round of the whole alternation first: the heap, kept (platform/heap.py), grows to
  # the process's peak on it; otherwise its page faults land in the first timed repeats of
  # whichever side allocates after the others (0.8 -> 1.8 s for our D update, session 20).
  interleave(sides, 1)
  res['times'] = interleave(sides, args.repeats)
  res['load_end'] = compare._load()
  res['versions'] = compare._versions()
  _report(res, args)
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(res, f, indent=1, default=str)
    print(f'wrote {args.json}')
  return res


if __name__ == '__main__':
  main()
