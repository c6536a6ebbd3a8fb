"""Step by step beside StudioGAN's own trainer: one start, one data order, one noise (issue 25).

  python experiments/trajectory.py --studiogan_src /work/studiogan/src \
      --config configs/cifar10_reacgan.py:small --steps 150 --out runs/trajectory.json

A same-budget curve (experiments/same_budget.py) compares two systems through everything that
differs between two runs: the initial weights, the data order and flips, the latent draws. This
harness takes all of that away and compares what is left, the training step itself, over many
steps:

* one start: StudioGAN's networks as its own code initialises them (experiments/studiogan_step.
  build_worker, --seed), converted into our TrainState by our bridge
  (reacgan_jax.studiogan.convert.train_state_from: zero Adam moments on both sides);
* one data order: the npz's training images in file order, no flips, the same float32 arrays
  handed to both (StudioGAN's loader is replaced by a basket holder, ours gets the batch);
* one noise: the latents and fake labels of OUR step (the draws of step.make_train_step from
  fold_in(state.rng, step)), handed to StudioGAN by patching its `utils.sample.sample_zy`, in
  the order its WORKER asks (n_d D updates, then the G update); every draw must be taken.

Then each system takes --steps steps: StudioGAN's `worker.train_discriminator(step)` +
`worker.train_generator(step)` (d_first, as loader.py), ours the pure `train_step` (jitted, one
CPU device). The systems:

  studiogan_float64  the reference: StudioGAN's own code once more, on the same start converted
                     to float64 (`.double()` on its G, D and G_ema; torch's default dtype float64
                     while it steps), so its rounding is ~1e-16 and it stands for the exact
                     trajectory of StudioGAN's algorithm (--reference float32 drops it);
  studiogan          StudioGAN as it runs, float32;
  ours               our step, float32 (XLA's convolutions, as the recorded runs);
  control            our step again with other rounding (--control onednn: oneDNN's kernels;
                     ulp: the start's weights moved by one float32 ulp).

After every step each system's G, D and G_ema are converted (ours are read) and compared with
the reference's: the relative distance ||x - ref|| / ||ref|| over each network's params, BN
running statistics and spectral-norm u vectors, with the leaf that differs most; the G loss of
each. A float32 GAN trajectory drifts from the exact one by itself (rounding, which Adam's
normalised first steps amplify, then the dynamics), so the question is not whether ours is at
distance 0 but whether it is as close to the reference as StudioGAN's own float32 run is. A
porting error (a term, an order, an optimiser or EMA detail) puts ours far above StudioGAN
float32 from the step where it acts; --ours_override plants one on our side only, to see what
one looks like. Also written: the initial weights' distribution (ours from our own seed against
StudioGAN's: the one check here of our initialisation, init_statistics). One JSON (settings,
every step's record, a verdict) goes to --out as the run goes.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
import types

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import gpu_check  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import same_budget  # noqa: E402
import studiogan_step  # noqa: E402

from reacgan_jax import errors  # noqa: E402
from reacgan_jax.data import pipeline  # noqa: E402
from reacgan_jax.models import adapter as adapter_lib  # noqa: E402
from reacgan_jax.platform import checkpoints  # noqa: E402
from reacgan_jax.studiogan import convert  # noqa: E402
from reacgan_jax.train import state as state_lib  # noqa: E402
from reacgan_jax.train import step as step_lib  # noqa: E402

PARTS = ('params', 'stats', 'sn')


# ---- the draws and the data both systems see --------------------------------------------------


def our_draws(model, state, n_d: int, batch: int) -> list:
  """[(z, y)] of our train_step at state.step: n_d D updates, then the G update (step.py:
  keys = split(fold_in(rng, step), n_d + 1); a D update's prior key is split(keys[i], 5)[0]
  (split once more when G takes a key); the G update's is split(keys[-1], 3)[0])."""
  keys = jax.random.split(jax.random.fold_in(state.rng, state.step), n_d + 1)
  out = []
  for i in range(n_d):
    k = jax.random.split(keys[i], 5)[0]
    if model.g_needs_key:
      k = jax.random.split(k)[0]
    out.append(model.sample_prior(k, batch))
  out.append(model.sample_prior(jax.random.split(keys[-1], 3)[0], batch))
  return [(np.asarray(z), np.asarray(y)) for z, y in out]


def real_batches(images, labels, step: int, n_d: int, batch: int):
  """Step `step`'s real images in file order, no flip: float32 NHWC [n_d, B, H, W, 3] in
  [-1, 1] (torchvision's ToTensor + Normalize(0.5, 0.5) arithmetic) and labels [n_d, B]."""
  n = n_d * batch
  idx = (np.arange(n) + step * n) % len(labels)
  x = (images[idx].astype(np.float32) / np.float32(255) - np.float32(0.5)) / np.float32(0.5)
  return (x.reshape(n_d, batch, *x.shape[1:]),
          labels[idx].astype(np.int32).reshape(n_d, batch))


class Basket:
  """Stands in for loader.py's DataLoader: yields the basket set for the current step."""

  def __init__(self):
    self.images = self.labels = None

  def __iter__(self):
    while True:
      yield self.images, self.labels


def patch_sample_zy(queue: list):
  """StudioGAN's sample.sample_zy hands over the queued draws (ours), in order."""
  import torch  # noqa: PLC0415 (the optional extra; this harness needs it)
  import utils.sample as sg_sample  # noqa: PLC0415 (StudioGAN's, from --studiogan_src)

  def sample_zy(z_prior, batch_size, z_dim, num_classes, truncation_factor, y_sampler, radius,
                device):  # StudioGAN's signature (it passes keywords)
    if not queue:
      raise RuntimeError('StudioGAN asked for more latent draws than our step makes')
    z, y = queue.pop(0)
    if (z_prior, y_sampler, z.shape) != ('gaussian', 'totally_random', (batch_size, z_dim)):
      raise RuntimeError(f'an unexpected draw: {z_prior}, {y_sampler}, {batch_size} x {z_dim}; '
                         f'ours {z.shape}')
    del num_classes, truncation_factor, radius
    return (torch.from_numpy(np.array(z)).to(device), torch.from_numpy(np.array(y)).long().to(
        device), None)

  sg_sample.sample_zy = sample_zy


# ---- comparing the two states -----------------------------------------------------------------


def _numpy_state(module) -> dict:
  return {k: v.detach().cpu().numpy() for k, v in module.state_dict().items()}


def studiogan_nets(worker, config) -> dict:
  """StudioGAN's networks now, converted: {'g'|'d'|'ema': (params, stats, sn)}."""
  return {'g': convert.convert_generator(_numpy_state(worker.Gen), config),
          'd': convert.convert_discriminator(_numpy_state(worker.Dis), config),
          'ema': convert.convert_generator(_numpy_state(worker.Gen_ema), config)}


def our_nets(state) -> dict:
  stats = lambda cols: cols.get('batch_stats', {})
  return {'g': (state.g.params, stats(state.g.collections), state.g.sn),
          'd': (state.d.params, stats(state.d.collections), state.d.sn),
          'ema': (state.ema.params, stats(state.ema.collections), state.ema.sn)}


def distance(a, b) -> dict:
  """{'rel': ||a - b|| / ||b|| over all leaves, 'worst': (leaf, its own relative distance)}."""
  fa = dict(jax.tree_util.tree_flatten_with_path(a)[0])
  fb = dict(jax.tree_util.tree_flatten_with_path(b)[0])
  if fa.keys() != fb.keys():
    raise RuntimeError(f'trees differ: {sorted(map(str, fa.keys() ^ fb.keys()))[:4]}')
  num = den = 0.0
  worst = ('', 0.0)
  for path, x in fa.items():
    x, y = np.asarray(x, np.float64), np.asarray(fb[path], np.float64)
    d2, n2 = float(np.sum((x - y) ** 2)), float(np.sum(y ** 2))
    num, den = num + d2, den + n2
    r = (d2 / n2) ** 0.5 if n2 > 0 else d2 ** 0.5
    if r > worst[1]:
      worst = (jax.tree_util.keystr(path), r)
  return {'rel': (num / den) ** 0.5 if den > 0 else num ** 0.5, 'worst': worst}


def distances(a: dict, b: dict) -> dict:
  """{'g.params': {...}, 'd.sn': {...}, ...} between two nets dicts."""
  return {f'{net}.{part}': distance(x, y) for net in a
          for part, x, y in zip(PARTS, a[net], b[net], strict=True)
          if jax.tree.leaves(y)}


def init_statistics(theirs: dict, ours: dict) -> dict:
  """Per leaf of G's and D's params at initialisation (StudioGAN's, ours from our own seed):
  (std, largest singular value of the [fan_in, out] view) for each, and the largest ratio of
  the stds over non-constant leaves. The trajectory starts from StudioGAN's weights: this is
  the one check here of our own initialisation (its distribution, not its values)."""
  out = {}
  for net in ('g', 'd'):
    rows = {}
    fa = dict(jax.tree_util.tree_flatten_with_path(ours[net][0])[0])
    for path, b in jax.tree_util.tree_flatten_with_path(theirs[net][0])[0]:
      a, b = np.asarray(fa[path], np.float64), np.asarray(b, np.float64)
      sv = lambda m: float(np.linalg.svd(m.reshape(-1, m.shape[-1]), compute_uv=False)[0]) \
          if m.ndim > 1 else float(np.max(np.abs(m)))
      rows[jax.tree_util.keystr(path)] = {'studiogan': (float(b.std()), sv(b)),
                                          'ours': (float(a.std()), sv(a))}
    ratios = [r['ours'][0] / r['studiogan'][0] for r in rows.values() if r['studiogan'][0] > 0]
    out[net] = {'leaves': rows, 'std_ratio_range': (min(ratios), max(ratios))}
  return out


# ---- the run ----------------------------------------------------------------------------------


class StudioGANSide:
  """One StudioGAN WORKER of the run: its basket, its dtype (float64: the reference)."""

  def __init__(self, args, yaml_path, out, dtype):
    import torch  # noqa: PLC0415 (the optional extra; this harness needs it)

    self.torch, self.basket = torch, Basket()
    self.dtype = torch.float64 if dtype == 'float64' else torch.float32
    basket = self.basket
    # Built in float32 from the seed (the same initial weights), then converted: .double()
    # keeps the Parameter objects, so the optimisers StudioGAN made hold the float64 tensors.
    self.built = studiogan_step.build_worker(
        args.studiogan_src, yaml_path, None, False, os.path.join(out, f'trajectory_{dtype}'),
        seed=args.seed, cuda=False, make_loader=lambda cfgs, device: basket,
        run_name=f'trajectory-seed{args.seed}-{dtype}')
    self.worker = self.built.worker
    if self.dtype == torch.float64:
      for m in (self.worker.Gen, self.worker.Dis, self.worker.Gen_ema):
        m.double()

  def step(self, step, x, y, draws, queue):
    """StudioGAN's step `step` on our batches and draws -> (its G loss, its last D loss)."""
    torch = self.torch
    n_d, batch = x.shape[:2]
    queue[:] = [(z.astype(np.float64) if self.dtype == torch.float64 else z, yy)
                for z, yy in draws]
    self.basket.images = torch.from_numpy(np.ascontiguousarray(
        x.reshape(n_d * batch, *x.shape[2:]).transpose(0, 3, 1, 2))).to(self.dtype)
    self.basket.labels = torch.from_numpy(y.reshape(-1).astype(np.int64))
    default = torch.get_default_dtype()
    torch.set_default_dtype(self.dtype)  # the tensors its code makes as it goes, too
    try:
      _, d_loss = self.worker.train_discriminator(current_step=step)
      g_loss = self.worker.train_generator(current_step=step)
    finally:
      torch.set_default_dtype(default)
    if queue:
      raise RuntimeError(f'step {step}: StudioGAN left {len(queue)} of our draws untaken')
    return float(g_loss.item()), float(d_loss.item())


def build(args):
  """(our config, the control's config, {'studiogan': side[, 'studiogan_float64': side]})."""
  budget = types.SimpleNamespace(
      config=args.config, override=args.override, steps=args.steps, eval_at=[args.steps],
      eval_samples=args.eval_samples, data=args.data, inception='',
      studiogan_src=args.studiogan_src, studiogan_yaml=args.studiogan_yaml,
      out=os.path.dirname(os.path.abspath(args.out)))
  config = same_budget.load_our_config(budget, args.seed)
  sg_cfg, yaml_path = same_budget.prepare_studiogan(budget, config)
  sides = {'studiogan': StudioGANSide(args, yaml_path, budget.out, 'float32')}
  if args.reference == 'float64':
    sides['studiogan_float64'] = StudioGANSide(args, yaml_path, budget.out, 'float64')
  for side in sides.values():
    same_budget.check_loaded(side.built.cfgs, sg_cfg)
    same_budget.check_param_counts(config, side.worker.Gen, side.worker.Dis)
  # Ours only, after StudioGAN's YAML was written: a deliberate difference.
  gpu_check.apply_overrides(config, args.ours_override)
  control = config.copy_and_resolve_references()
  if args.control == 'onednn':
    control.model.conv_backend = 'onednn'
  return config, control, sides


def one_ulp(tree):
  return jax.tree.map(lambda x: np.nextafter(np.asarray(x, np.float32), np.float32(np.inf))
                      if np.issubdtype(np.asarray(x).dtype, np.floating) else x, tree)


def jitted_step(config, model):
  fn = step_lib.make_train_step(config, model)
  return jax.jit(lambda s, b: fn(s, b, jax.random.fold_in(s.rng, s.step)))


def run(args) -> dict:
  same_budget.setup_jax(types.SimpleNamespace(device='cpu', verbose=args.verbose))
  config, control_config, sides = build(args)
  reference = 'studiogan_float64' if 'studiogan_float64' in sides else 'studiogan'
  start = studiogan_nets(sides['studiogan'].worker, config)
  model, c_model = adapter_lib.build(config), adapter_lib.build(control_config)
  ours = {'ours': (convert.train_state_from(config, start['g'], start['d'], start['ema']),
                   jitted_step(config, model)),
          'control': (convert.train_state_from(control_config, start['g'], start['d'],
                                                start['ema']), jitted_step(control_config,
                                                                           c_model))}
  if args.control == 'ulp':
    c = ours['control'][0]
    c = c.replace(g=c.g.replace(params=one_ulp(c.g.params)),
                  d=c.d.replace(params=one_ulp(c.d.params)))
    ours['control'] = (c, ours['control'][1])
  images, labels = pipeline.load_arrays(config, config.data.train_split)
  n_d, batch = config.train.d_updates_per_step, config.train.batch_size
  queue = []
  patch_sample_zy(queue)

  out = {'settings': dict(vars(args)), 'reference': reference, 'records': []}
  out['settings'].update(patches=sides['studiogan'].built.patches, n_d=n_d, batch=batch)
  out['start'] = {name: distances(studiogan_nets(side.worker, config), start)
                  for name, side in sides.items()}  # the float64 copy: 0 (same weights)
  out['start']['ours'] = distances(our_nets(ours['ours'][0]), start)  # the conversion: 0
  fresh = state_lib.create_train_state(config, model, jax.random.PRNGKey(config.seed))
  out['init'] = init_statistics(start, our_nets(fresh))
  for step in range(args.steps):
    x, y = real_batches(images, labels, step, n_d, batch)
    draws = our_draws(model, ours['ours'][0], n_d, batch)
    rec = {'step': step + 1, 'g_loss': {}, 'd_loss_last_update': {}, 'seconds': {}}
    nets = {}
    for name, side in sides.items():
      t0 = time.perf_counter()
      rec['g_loss'][name], rec['d_loss_last_update'][name] = side.step(step, x, y, draws, queue)
      rec['seconds'][name] = round(time.perf_counter() - t0, 3)
      nets[name] = studiogan_nets(side.worker, config)
    for name, (state, step_fn) in ours.items():
      t0 = time.perf_counter()
      state, m = step_fn(state, {'image': x, 'label': y})
      rec['g_loss'][name] = float(m['g_loss'])
      rec['seconds'][name] = round(time.perf_counter() - t0, 3)
      ours[name] = (state, step_fn)
      nets[name] = our_nets(state)
    rec['to_reference'] = {name: distances(n, nets[reference]) for name, n in nets.items()
                           if name != reference}
    out['records'].append(rec)
    out['verdict'] = verdict(out['records'])
    studiogan_step._write(args.out, out)  # atomic: a kill leaves the previous step's JSON
    print(progress_line(rec), flush=True)
  if args.save_dir:
    configs = {'ours': config, 'control': control_config}
    out['scores'] = save_and_score(args, configs, {n: s for n, (s, _) in ours.items()},
                                   {n: studiogan_nets(side.worker, config)
                                    for n, side in sides.items() if n == 'studiogan'})
    studiogan_step._write(args.out, out)
  return out


def save_and_score(args, configs, our_states, studiogan: dict) -> dict:
  """Each system's last step as a checkpoint in --save_dir/<name> (StudioGAN's converted by
  our bridge), then, with --score, FID / KID of its EMA generator by our evaluator under the
  same-budget protocol (experiments/same_budget.Scorer: --eval_samples samples vs the 10k test
  split; its reference statistics are cached, `same_budget.py --prepare_reference` makes them)."""
  step, scores = args.steps, {}
  workdirs = {}
  for name, st in our_states.items():
    workdirs[name] = os.path.join(args.save_dir, name)
    ckpt = checkpoints.Checkpointer(workdirs[name], configs[name])
    try:
      ckpt.save(step, st)
    finally:
      ckpt.close()
  for name, nets in studiogan.items():
    workdirs[name] = os.path.join(args.save_dir, name)
    convert.write_checkpoint(configs['ours'], workdirs[name], nets['g'], nets['d'], nets['ema'],
                             step=step)
  if not args.score:
    return scores
  scorer = same_budget.Scorer(types.SimpleNamespace(features='inception', out=args.save_dir))
  for name, workdir in workdirs.items():
    scores[name] = scorer.score(configs.get(name, configs['ours']), workdir, step)
    print(f'[trajectory] {name} at step {step}: FID {scores[name]["fid"]:.2f} KID '
          f'{scores[name]["kid_mean"]:.4f}', flush=True)
  return scores


def verdict(records, early: int = 10) -> dict:
  """Per network part and system: the distance to the reference after the first step (a porting
  error acts alone there, before the drift), the median over the first `early` steps, after the
  last; and ours over StudioGAN float32's (the reference's own float32 rounding) at each."""
  res = {}
  names = list(records[0]['to_reference'])
  for key in records[0]['to_reference'][names[0]]:
    row = {}
    for name in names:
      series = [r['to_reference'][name][key]['rel'] for r in records]
      row[name] = {'step1': series[0], 'early_median': float(np.median(series[:early])),
                   'last': series[-1]}
    if 'studiogan' in row:  # the reference is float64: StudioGAN float32 is a system too
      row['ours_over_studiogan'] = {
          k: (row['ours'][k] / row['studiogan'][k] if row['studiogan'][k] > 0 else None)
          for k in ('step1', 'early_median', 'last')}
    res[key] = row
  return res


def progress_line(rec) -> str:
  d = rec['to_reference']
  parts = '; '.join(f'{k}: ' + ' '.join(f'{n} {d[n][k]["rel"]:.1e}' for n in d)
                    for k in ('g.params', 'd.params', 'ema.params'))
  losses = ' '.join(f'{n} {v:.5f}' for n, v in rec['g_loss'].items())
  return f'[trajectory] step {rec["step"]}: distance to the reference: {parts}; g_loss {losses}'


def plot(out: dict, path: str, keys=('g.params', 'd.params', 'ema.params', 'd.sn')):
  """Distance to the reference over the steps, one panel per network part, log scale."""
  import matplotlib  # noqa: PLC0415 (only the plot needs it)

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  records = out['records']
  fig, axes = plt.subplots(1, len(keys), figsize=(4.2 * len(keys), 3.4), squeeze=False)
  for ax, key in zip(axes[0], keys, strict=True):
    for name in records[0]['to_reference']:
      ax.plot([r['step'] for r in records],
              [r['to_reference'][name][key]['rel'] for r in records], label=name)
    ax.set_yscale('log')
    ax.set_xlabel('step')
    ax.set_title(f'{key}: distance to {out["reference"]}', fontsize=9)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog='python experiments/trajectory.py',
                              description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True, help='the JSON written as the run goes')
  p.add_argument('--studiogan_src', default=os.environ.get('REACGAN_JAX_STUDIOGAN_SRC', ''))
  p.add_argument('--studiogan_yaml', default='CIFAR10/ReACGAN.yaml')
  p.add_argument('--config', default='configs/cifar10_reacgan.py:small')
  p.add_argument('--override', action='append', default=[])
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--steps', type=int, default=150)
  p.add_argument('--data', default=same_budget.DEFAULT_DATA)
  p.add_argument('--control', default='onednn', choices=['onednn', 'ulp'])
  p.add_argument('--reference', default='float64', choices=['float64', 'float32'],
                 help='float64: StudioGAN again in float64 is the reference every system is '
                      'measured against (StudioGAN float32 is one of them); float32: StudioGAN '
                      'float32 is the reference (half the StudioGAN time)')
  p.add_argument('--ours_override', action='append', default=[],
                 help='key.sub=value on our side only (the control too), not StudioGAN\'s: a '
                      'deliberate porting error, to see what the harness makes of one')
  p.add_argument('--save_dir', default='', help='write each system\'s last step as a '
                 'checkpoint under this folder (StudioGAN float32\'s converted)')
  p.add_argument('--score', action='store_true', help='with --save_dir: FID and KID of each '
                 'saved EMA generator (same_budget\'s protocol and cached reference)')
  p.add_argument('--eval_samples', type=int, default=2000, help='samples scored by --score')
  p.add_argument('--plot', default='', help='draw --out (an existing run\'s JSON) into this '
                                           'PNG, then stop')
  p.add_argument('--verbose', action='store_true')
  args = p.parse_args(argv)
  args.out, args.data = os.path.abspath(args.out), os.path.abspath(args.data)
  return args


def main(argv=None):
  args = parse_args(argv)
  if args.plot:
    with open(args.out) as f:
      plot(json.load(f), args.plot)
    return
  with errors.exit_on_user_error('trajectory'):
    if not os.path.isfile(os.path.join(args.studiogan_src, 'worker.py')):
      raise same_budget.HarnessError(f'--studiogan_src={args.studiogan_src!r}: no worker.py '
                                     "there; pass a PyTorch-StudioGAN checkout's src/")
    run(args)


if __name__ == '__main__':
  main()
