"""Time StudioGAN's own train step (its WORKER.train_discriminator + train_generator) on one device.

  python experiments/studiogan_step.py --src /work/studiogan/src --yaml CIFAR10/ReACGAN.yaml \
      --batch 128 --steps 20 [--amp] --out /tmp/sg_f32.json

The other half of experiments/gpu_check.py's same-GPU race. Nothing of StudioGAN is committed:
`--src` is a checkout's src/ folder (PyTorch-StudioGAN, POSTECH-CVLab). The harness runs its
code, not a copy of it:
- the config: StudioGAN's `main.load_configs_initialize_training()` with the argv of a training
  run (`-cfg <yaml> -t -metrics none -save <tmp> -data <tmp>/data [-mpc]`), so RUN gets
  main.py's defaults (no --seed: cudnn.benchmark on, as a default StudioGAN run);
- then what `loader.load_worker` does before training: cudnn flags, `misc.fix_seed`,
  `log.make_logger`, `basket_size`, `model.load_generator_discriminator`,
  `cfgs.define_optimizer`, and a `worker.WORKER`;
- one step = what loader.py's training loop calls: `worker.train_discriminator(step)` then
  `worker.train_generator(step)` (d_first; the G update ends with the EMA update), followed by
  `torch.cuda.synchronize()` so the step is timed to its end.
Differences from a real run, all outside the timed compute: the train loader is replaced by an
iterator over one random basket (batch * d_updates_per_step images in [-1, 1], labels uniform)
already on the device (so no input pipeline and no host-to-device copy is timed, as in our JAX
benchmark); evaluation, logging and checkpoints are not run.

Patches, applied at run time only (StudioGAN's files are never changed):
- `wandb` (imported by worker.py and loader.py, unused by the train step; WORKER.__init__ calls
  `wandb.init`) is replaced by a stub when it is not installed; so are any of `sklearn`,
  `kornia`, `timm`, `seaborn`, `prdc`, `torchvision` that are missing (imported at module
  level by StudioGAN's analysis code, never called by the train step); worker.py's `wandb` is
  that stub even when wandb is installed (a real one asks for a login in wandb.init, and its
  wandb.Image refuses the image batches visualize_fake_images logs): nothing goes to wandb;
- `pkg_resources` (gone from setuptools >= 81; StudioGAN's style_ops import its
  `parse_version`) is provided as packaging's `parse` when missing;
- `utils.misc.download_data_if_possible` is a no-op (the device has no network);
- without CUDA (CPU rehearsal): `torch.cuda.device_count`/`current_device` answer 1/0 so main.py's
  setup runs, the device is 'cpu', and the conditional loss's `master_rank` ('cuda' in
  WORKER.__init__) is 'cpu', and while a checkpoint is loaded (`build_worker(resume_dir=...)`,
  experiments/same_budget.py) `torch.Tensor.cuda` is the identity (utils/ckpt.py moves the
  optimiser state with `.cuda()`).
`build_worker` is shared with experiments/same_budget.py, which brings its own train loader (the
CIFAR-10 npz as StudioGAN's loader presents it), a seed, and resumes from StudioGAN checkpoints.
Float32 runs allow TF32 for cuDNN convolutions and cuBLAS matmuls (`--tf32`, default on; torch's
own defaults are TF32 convs, float32 matmuls); `--amp` is StudioGAN's `-mpc` (autocast float16
plus GradScaler). Writes one JSON: settings, every step's seconds, median, img/s.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.abc
import importlib.machinery
import json
import os
import statistics
import sys
import tempfile
import time
import types

STUB_IF_MISSING = ('wandb', 'sklearn', 'seaborn', 'prdc', 'torchvision', 'kornia', 'timm')


class _AnyMeta(type):
  def __getattr__(cls, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return cls


class _Anything(metaclass=_AnyMeta):
  """Callable, subclassable, attribute-rich placeholder for unused stubbed names."""

  def __init__(self, *args, **kwargs):
    del args, kwargs

  def __call__(self, *args, **kwargs):
    return _Anything()

  def __getattr__(self, name):
    return _Anything()


class _StubModule(types.ModuleType):
  def __getattr__(self, name):
    if name.startswith('__'):
      raise AttributeError(name)
    return _Anything


class _StubFinder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
  """Serves a _StubModule (a package, so submodules resolve too) for the given top-level names."""

  def __init__(self, tops):
    self.tops = set(tops)

  def find_spec(self, fullname, path, target=None):
    del path, target
    if fullname.split('.')[0] in self.tops:
      return importlib.machinery.ModuleSpec(fullname, self, is_package=True)
    return None

  def create_module(self, spec):
    mod = _StubModule(spec.name)
    mod.__path__ = []
    return mod

  def exec_module(self, module):
    del module


def install_stubs() -> list[str]:
  """Stubs the STUB_IF_MISSING packages that cannot be imported; returns their names."""
  missing = []
  for name in STUB_IF_MISSING:
    try:
      importlib.import_module(name)
    except ImportError:
      missing.append(name)
  if missing:
    sys.meta_path.insert(0, _StubFinder(missing))
  try:
    import pkg_resources  # noqa: F401, PLC0415
  except ImportError:
    # setuptools >= 81 dropped pkg_resources; StudioGAN's style_ops import its parse_version
    # (to compare torch versions), for which packaging's is the same function.
    from packaging.version import parse  # noqa: PLC0415

    mod = types.ModuleType('pkg_resources')
    mod.parse_version = parse
    sys.modules['pkg_resources'] = mod
    missing.append('pkg_resources(parse_version=packaging.version.parse)')
  return missing


def build_worker(src, yaml_rel, batch, amp, save_dir, *, seed=None, cuda=None, make_loader=None,
                 resume_dir=None, run_name=None):
  """StudioGAN's config, models, optimisers and WORKER, as main.py + loader.load_worker build them.

  yaml_rel: a config under src/configs/ (or an absolute path). batch: overrides the YAML's
  batch size (None keeps it). seed: main.py's --seed (None: its default -1, a random seed and
  cudnn.benchmark on). cuda: None = when available. make_loader(cfgs, device) -> the train
  loader (default: one random basket, for timing). resume_dir: a StudioGAN checkpoint folder
  loaded as load_worker does with -ckpt (utils.ckpt.load_StudioGAN_ckpts, 'current' files).
  run_name: replaces the timestamped name main.py makes (folders under save_dir use it).

  Returns a namespace: worker, cfgs, device, patches, step and epoch (0, or the checkpoint's).
  """
  import torch  # noqa: PLC0415

  cuda = torch.cuda.is_available() if cuda is None else cuda
  cfgs, made_name, patches = load_cfgs(src, yaml_rel, save_dir, amp=amp, seed=seed, cuda=cuda)
  run_name = run_name or made_name
  import models.model as sg_model  # noqa: PLC0415 (StudioGAN's, from --src)
  import utils.log as sg_log  # noqa: PLC0415
  import utils.misc as misc  # noqa: PLC0415
  import worker as sg_worker  # noqa: PLC0415
  from torch.backends import cudnn  # noqa: PLC0415

  if not isinstance(sg_worker.wandb, _StubModule):
    sg_worker.wandb = _StubModule('wandb')
    patches.append('worker.wandb -> stub (installed wandb unused)')
  if batch is not None:
    cfgs.OPTIMIZATION.batch_size = batch
  device = 0 if cuda else 'cpu'
  # loader.load_worker, in its order (single device, no DDP):
  if cfgs.RUN.fix_seed:
    cudnn.benchmark, cudnn.deterministic = False, True
  else:
    cudnn.benchmark, cudnn.deterministic = True, False
  misc.fix_seed(cfgs.RUN.seed)
  logger = sg_log.make_logger(cfgs.RUN.save_dir, run_name, None)
  o = cfgs.OPTIMIZATION
  o.basket_size = o.batch_size * o.acml_steps * o.d_updates_per_step
  loader = (make_loader or _random_basket)(cfgs, 'cuda' if cuda else 'cpu')
  nets = sg_model.load_generator_discriminator(
      DATA=cfgs.DATA, OPTIMIZATION=o, MODEL=cfgs.MODEL, STYLEGAN=cfgs.STYLEGAN,
      MODULES=cfgs.MODULES, RUN=cfgs.RUN, device=device, logger=logger)
  Gen, Gen_mapping, Gen_synthesis, Dis, Gen_ema, Gen_ema_mapping, Gen_ema_synthesis, ema = nets
  cfgs.define_optimizer(Gen, Dis)
  r = _resume(cfgs, resume_dir, Gen, Dis, Gen_ema, ema, run_name, logger, device, patches)
  worker = sg_worker.WORKER(
      cfgs=cfgs, run_name=run_name, Gen=Gen, Gen_mapping=Gen_mapping, Gen_synthesis=Gen_synthesis,
      Dis=Dis, Gen_ema=Gen_ema, Gen_ema_mapping=Gen_ema_mapping,
      Gen_ema_synthesis=Gen_ema_synthesis, ema=ema, eval_model=None, train_dataloader=loader,
      eval_dataloader=None, global_rank=device if cuda else 0, local_rank=device, mu=None,
      sigma=None, real_feats=None, logger=logger, aa_p=r['aa_p'], best_step=r['best_step'],
      best_fid=r['best_fid'], best_ckpt_path=r['best_ckpt_path'], lecam_emas=r['lecam_emas'],
      num_eval={}, loss_list_dict={'gen_loss': [], 'dis_loss': [], 'cls_loss': []},
      metric_dict_during_train={})
  if not cuda and hasattr(getattr(worker, 'cond_loss', None), 'master_rank'):
    worker.cond_loss.master_rank = 'cpu'  # WORKER builds D2D-CE / 2C with master_rank='cuda'
    patches.append("cpu: worker.cond_loss.master_rank 'cuda' -> 'cpu'")
  worker.training, worker.topk = True, r['topk']
  worker.prepare_train_iter(epoch_counter=r['epoch'])
  return types.SimpleNamespace(worker=worker, cfgs=cfgs, device=device, patches=patches,
                               step=r['step'], epoch=r['epoch'])


def load_cfgs(src, yaml_rel, save_dir, *, amp=False, seed=None, cuda=True):
  """StudioGAN's `main.load_configs_initialize_training()` on the argv of a training run
  (`-cfg <yaml> -t -metrics none -save <save_dir> -data <save_dir>/data [-mpc] [--seed S]`),
  after the patches of the module docstring. Returns (cfgs, run_name, patches)."""
  import torch  # noqa: PLC0415

  if src not in sys.path:
    sys.path.insert(0, src)
  patches = [f'stub:{m}' for m in install_stubs()]
  if not cuda:
    torch.cuda.device_count = lambda: 1
    torch.cuda.current_device = lambda: 0
    patches.append('cpu: torch.cuda.device_count/current_device -> 1/0')
  import utils.misc as misc  # noqa: PLC0415 (StudioGAN's, from --src)

  misc.download_data_if_possible = lambda **kwargs: None
  patches.append('utils.misc.download_data_if_possible: no-op')
  import main as sg_main  # noqa: PLC0415

  cfg_file = os.path.join(src, 'configs', yaml_rel)
  argv = ['main.py', '-cfg', cfg_file, '-t', '-metrics', 'none', '-save', save_dir,
          '-data', os.path.join(save_dir, 'data')]  # never read: the harness brings the loader
  if amp:
    argv.append('-mpc')
  if seed is not None:
    argv += ['--seed', str(seed)]
  old_argv, sys.argv = sys.argv, argv
  try:
    cfgs, _, run_name, _, _ = sg_main.load_configs_initialize_training()
  finally:
    sys.argv = old_argv
  return cfgs, run_name, patches


def _resume(cfgs, resume_dir, Gen, Dis, Gen_ema, ema, run_name, logger, device, patches):
  """loader.load_worker's checkpoint branch (-ckpt, 'current' files); the fresh values without."""
  o = cfgs.OPTIMIZATION
  fresh = {'step': 0, 'epoch': 0, 'topk': o.batch_size, 'aa_p': cfgs.AUG.ada_initial_augment_p,
           'best_step': 0, 'best_fid': None, 'best_ckpt_path': None, 'lecam_emas': None}
  if resume_dir is None:
    return fresh
  import torch  # noqa: PLC0415
  import utils.ckpt as sg_ckpt  # noqa: PLC0415

  cfgs.RUN.ckpt_dir, cfgs.RUN.load_best = resume_dir, False
  cuda_method = torch.Tensor.cuda
  if device == 'cpu':
    # load_ckpt moves the optimiser state with .cuda(); on CPU it stays where it is.
    torch.Tensor.cuda = lambda self, *args, **kwargs: self
    patches.append('cpu: torch.Tensor.cuda -> identity while loading the checkpoint')
  try:
    (_, step, epoch, topk, aa_p, best_step, best_fid, best_ckpt_path, lecam_emas,
     _) = sg_ckpt.load_StudioGAN_ckpts(
        ckpt_dir=resume_dir, load_best=False, Gen=Gen, Dis=Dis, g_optimizer=o.g_optimizer,
        d_optimizer=o.d_optimizer, run_name=run_name, apply_g_ema=cfgs.MODEL.apply_g_ema,
        Gen_ema=Gen_ema, ema=ema, is_train=True, RUN=cfgs.RUN, logger=logger, global_rank=0,
        device=device, cfg_file=cfgs.RUN.cfg_file)
  finally:
    torch.Tensor.cuda = cuda_method
  return {'step': step, 'epoch': epoch, 'topk': o.batch_size if topk == 'initialize' else topk,
          'aa_p': aa_p, 'best_step': best_step, 'best_fid': best_fid,
          'best_ckpt_path': best_ckpt_path, 'lecam_emas': lecam_emas}


def _random_basket(cfgs, device):
  o = cfgs.OPTIMIZATION
  return _RandomBasket(o.basket_size, cfgs.DATA.img_size, cfgs.DATA.num_classes, device)


class _RandomBasket:
  """Stands in for loader.py's DataLoader: yields one fixed random basket, forever."""

  def __init__(self, basket, size, num_classes, device):
    import torch  # noqa: PLC0415

    g = torch.Generator().manual_seed(0)
    self.images = (torch.rand(basket, 3, size, size, generator=g) * 2 - 1).to(device)
    self.labels = torch.randint(0, num_classes, (basket,), generator=g).to(device)

  def __iter__(self):
    while True:
      yield self.images, self.labels


def run(args) -> dict:
  import torch  # noqa: PLC0415

  if args.tf32:
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
  save_dir = tempfile.mkdtemp(prefix='studiogan_step_')
  t0 = time.perf_counter()
  built = build_worker(args.src, args.yaml, args.batch, args.amp, save_dir)
  worker, cfgs, patches = built.worker, built.cfgs, built.patches
  build_s = time.perf_counter() - t0
  sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
  o = cfgs.OPTIMIZATION
  times = []
  deadline = time.perf_counter() + args.max_seconds
  for step in range(args.warmup + args.steps):
    t = time.perf_counter()
    if o.d_first:  # loader.py's training loop
      worker.train_discriminator(current_step=step)
      worker.train_generator(current_step=step)
    else:
      worker.train_generator(current_step=step)
      worker.train_discriminator(current_step=step)
    sync()
    times.append(time.perf_counter() - t)
    # After every step: a run killed by its caller's timeout still leaves its figures.
    _write(args.out, _result(args, o, times, build_s, patches, partial=True))
    if time.perf_counter() > deadline and len(times) > args.warmup:
      break
  return _result(args, o, times, build_s, patches, partial=False)


def _result(args, o, times, build_s, patches, partial):
  import torch  # noqa: PLC0415

  timed = times[args.warmup:] or times[-1:]
  median = statistics.median(timed)
  dev_name = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'cpu'
  return {
      'impl': 'studiogan', 'yaml': args.yaml, 'batch': o.batch_size,
      'd_updates_per_step': o.d_updates_per_step, 'precision': 'amp_fp16' if args.amp else 'fp32',
      'tf32': bool(args.tf32 and torch.cuda.is_available()),
      'cudnn_benchmark': bool(torch.backends.cudnn.benchmark), 'device': dev_name,
      'torch': torch.__version__, 'build_s': build_s, 'first_step_s': times[0],
      'warmup_steps': args.warmup, 'step_s': timed, 'median_step_s': median,
      'img_per_s': o.batch_size * o.d_updates_per_step / median, 'patches': patches,
      'partial': partial,
      'note': 'random basket already on the device; one step = train_discriminator + '
              'train_generator (EMA included), synchronised',
  }


def _write(path, result):
  tmp = path + '.tmp'
  with open(tmp, 'w') as f:
    json.dump(result, f, indent=1)
  os.replace(tmp, path)


def main(argv=None):
  p = argparse.ArgumentParser(prog='python experiments/studiogan_step.py',
                              description=__doc__.split('\n')[0])
  p.add_argument('--src', required=True, help="a PyTorch-StudioGAN checkout's src/ folder")
  p.add_argument('--yaml', default='CIFAR10/ReACGAN.yaml', help='config under src/configs/')
  p.add_argument('--batch', type=int, default=128)
  p.add_argument('--steps', type=int, default=20, help='timed steps')
  p.add_argument('--warmup', type=int, default=3, help='untimed steps first (cudnn autotune)')
  p.add_argument('--max_seconds', type=float, default=120.0, help='stop timing after this')
  p.add_argument('--amp', action='store_true', help="StudioGAN's -mpc mixed precision")
  p.add_argument('--tf32', type=int, default=1, help='allow TF32 convs and matmuls (fp32 runs)')
  p.add_argument('--out', required=True, help='JSON file to write')
  args = p.parse_args(argv)
  if not os.path.isfile(os.path.join(args.src, 'worker.py')):
    sys.exit(f'--src={args.src}: no worker.py there; pass the src/ folder of a StudioGAN checkout')
  result = run(args)
  _write(args.out, result)
  print(json.dumps({k: v for k, v in result.items() if k != 'step_s'}))


if __name__ == '__main__':
  main()
