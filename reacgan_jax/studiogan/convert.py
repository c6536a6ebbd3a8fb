"""PyTorch-StudioGAN checkpoints -> reacgan-jax parameters (and a checkpoint to resume/evaluate).

  python -m reacgan_jax.studiogan.convert CKPT --config=configs/x.py --workdir=runs/converted

CKPT: StudioGAN's checkpoint folder (model=G-<when>-weights-step=N.pth, model=D-..., and
model=G_ema-... when EMA was on; --when=best|current) or one G .pth file. Files are read with
torch.load(weights_only=True) plus an allow-list of exactly the numpy globals a numpy.float64
pickles as (StudioGAN's D file holds best_fid, and aa_p with ADA, as numpy.float64:
numpy_float64_globals()); a file holding anything else but tensors and plain containers is
refused, never unpickled. The mapping itself is pure and framework-free:

  convert_generator(state_dict, config)     -> (params, batch_stats, sn_state)
  convert_discriminator(state_dict, config) -> (params, batch_stats, sn_state)

state_dict: {name: numpy array} as StudioGAN's G / G_ema / D `state_dict()` (src/models/
big_resnet.py, resnet.py, deep_conv.py, stylegan2.py; backbones big_resnet -> biggan, resnet,
deep_conv, stylegan2 — StyleGAN2's names map one to one, its w_avg / noise_const buffers take
batch_stats' place, models/stylegan2_convert.py).
The results plug into our models (reacgan_jax.models.build_models(config)) and SN layout
(spectral_norm.py); in eval mode they compute StudioGAN's eval-mode outputs (with the default
config.model.sn_eval='stored' torch's u and v are copied; studiogan_layers explains the legacy
'recompute' case, where they are solved for). `write_checkpoint` stores them, G_ema's own SN
vectors included (the EMA generator samples with them, as StudioGAN's G_ema does).
"""

import glob
import os

import jax
import numpy as np
from absl import app, flags, logging
from ml_collections import config_flags
from numpy._core import multiarray  # numpy >= 2 (pyproject); numpy 1.x's name is an alias

from reacgan_jax import errors, validate
from reacgan_jax.models import adapter, resnet, stylegan2_g
from reacgan_jax.ops import spectral_norm
from reacgan_jax.platform import checkpoints, workdir_lock
from reacgan_jax.studiogan import layers as sl
from reacgan_jax.studiogan import stylegan2_keys as stylegan2_convert
from reacgan_jax.train import state as state_lib

_CKPT_WHEN = flags.DEFINE_string('when', 'best', "Which StudioGAN checkpoint: 'best' or 'current'.")
_WORKDIR = flags.DEFINE_string('workdir', None, 'Write the converted checkpoint here.')


class _Out:
  """Collects params / batch_stats / sn_state into nested dicts as the flax modules name them;
  SN vectors follow the config's rules (spectral_norm.options: sn_embedding_u, sn_eval)."""

  def __init__(self, config):
    self.params, self.stats, self.sn = {}, {}, {}
    opts = spectral_norm.options(config)
    self.rows_u, self.eval_mode = opts['rows_u'], opts['eval_mode']

  @staticmethod
  def _set(tree, path, value):
    for key in path[:-1]:
      tree = tree.setdefault(key, {})
    tree[path[-1]] = value

  def layer(self, path, result):
    params, vectors = result
    for k, v in params.items():
      self._set(self.params, (*path, k), v)
    if vectors is not None:
      leaf = (*path, 'embedding' if 'embedding' in params else 'kernel')
      rows = bool(self.rows_u and self.rows_u(leaf))
      self._set(self.sn, leaf, sl.sn_vectors(vectors, rows, self.eval_mode, '/'.join(leaf)))

  def bn(self, path, result, stats_path=None):
    params, stats = result
    for k, v in params.items():
      self._set(self.params, (*path, k), v)
    for k, v in stats.items():
      self._set(self.stats, (*(stats_path or path), k), v)


def _torch_index(i: int, attn_block: int) -> int:
  """Index in StudioGAN's `blocks` ModuleList of our block i (the attention is an entry too)."""
  return i + (1 if 0 < attn_block <= i else 0)


def _linear0_perm(channels: int) -> np.ndarray:
  """Ours (y, x, c) -> torch (c, y, x) index of the 4x4 bottom feature map."""
  y, x, c = np.meshgrid(np.arange(4), np.arange(4), np.arange(channels), indexing='ij')
  return (c * 16 + y * 4 + x).reshape(-1)


def _attention(r, out, prefix, sn, path=('attention',)):
  for ours, theirs in (('theta', 'theta'), ('phi', 'phi'), ('g', 'g'), ('attn', 'attn')):
    out.layer((*path, ours), sl.conv(r, f'{prefix}.conv1x1_{theirs}', sn, bias=False))
  out.params.setdefault(path[0], {})['sigma'] = r.take(f'{prefix}.sigma').astype(np.float32)


def _cbn(r, out, path, prefix, sn, stats_inner=('bn',)):
  """ops.ConditionalBatchNorm2d: gain / bias linears (no bias) + a BN without affine."""
  out.layer((*path, 'gain_linear'), sl.linear(r, f'{prefix}.gain', sn, bias=False))
  out.layer((*path, 'bias_linear'), sl.linear(r, f'{prefix}.bias', sn, bias=False))
  out.bn((), sl.batch_norm(r, f'{prefix}.bn', affine=False), stats_path=(*path, *stats_inner))


def _resnet_generator(r, out, config):
  m, size = config.model, config.data.image_size
  sn, cond = m.apply_g_sn, m.cond_method != 'none'
  resnet.check_image_size(size)
  outs = [k * m.g_conv_dim for k in resnet.G_OUT[size]]
  c0 = resnet.G_IN[size][0] * m.g_conv_dim
  out.layer(('linear0',), sl.linear(r, 'linear0', sn, bias=True, out_perm=_linear0_perm(c0)))
  cbn = m.backbone == 'biggan' or cond  # big_resnet always uses ConditionalBatchNorm2d
  if m.backbone == 'biggan' and cond:
    out.layer(('shared_embedding',), sl.embedding(r, 'shared', sn=False))
  for i in range(len(outs)):
    p, blk = f'blocks.{_torch_index(i, m.g_attn_block)}.0', f'block{i}'
    for ours, theirs in (('conv0', 'conv2d0'), ('conv1', 'conv2d1'), ('conv2', 'conv2d2')):
      out.layer((blk, ours), sl.conv(r, f'{p}.{theirs}', sn))
    for bn in ('bn1', 'bn2'):
      if cbn:
        _cbn(r, out, (blk, bn), f'{p}.{bn}', sn)
      else:
        out.bn((blk, bn), sl.batch_norm(r, f'{p}.{bn}', affine=True))
  if m.g_attn_block:
    _attention(r, out, f'blocks.{m.g_attn_block}.0', sn)
  out.bn(('bn_out',), sl.batch_norm(r, 'bn4', affine=True))
  out.layer(('conv_out',), sl.conv(r, 'conv2d5', sn))


def _deep_conv_generator(r, out, config):
  m = config.model
  sn, cond = m.apply_g_sn, m.cond_method != 'none'
  out.layer(('linear0',), sl.linear(r, 'linear0', sn, bias=True,
                                    out_perm=_linear0_perm(8 * m.g_conv_dim)))
  for i in range(3):
    p = f'blocks.{_torch_index(i, m.g_attn_block)}.0'
    out.layer((f'deconv{i}',), sl.deconv(r, f'{p}.deconv0', sn))
    if cond:
      _cbn(r, out, (f'bn{i}', 'cbn'), f'{p}.bn0', sn)
    else:
      out.bn((f'bn{i}', 'bn'), sl.batch_norm(r, f'{p}.bn0', affine=True))
  if m.g_attn_block:
    _attention(r, out, f'blocks.{m.g_attn_block}.0', sn)
  out.layer(('conv_out',), sl.conv(r, 'conv4', sn))


def _head(r, out, config):
  sn, method = config.model.apply_d_sn, config.model.cond_method
  out.layer(('head', 'adv_linear'), sl.linear(r, 'linear1', sn, bias=True))
  if method == 'acgan':
    out.layer(('head', 'class_linear'), sl.linear(r, 'linear2', sn, bias=False))
  elif method == 'pd':
    out.layer(('head', 'class_embedding'), sl.embedding(r, 'embedding', sn))
  elif method == 'reacgan':
    out.layer(('head', 'embed_linear'), sl.linear(r, 'linear2', sn, bias=True))
    out.layer(('head', 'class_embedding'), sl.embedding(r, 'embedding', sn))


def _resnet_discriminator(r, out, config):
  m, size = config.model, config.data.image_size
  sn = m.apply_d_sn
  resnet.check_image_size(size)
  for i in range(len(resnet.D_OUT[size])):
    p, blk = f'blocks.{_torch_index(i, m.d_attn_block)}.0', f'block{i}'
    for ours, theirs in (('conv0', 'conv2d0'), ('conv1', 'conv2d1'), ('conv2', 'conv2d2')):
      if r.has(f'{p}.{theirs}.weight') or r.has(f'{p}.{theirs}.weight_orig'):
        out.layer((blk, ours), sl.conv(r, f'{p}.{theirs}', sn))
    if not sn:  # the reference's D has BN only without spectral norm
      for bn in ('bn0', 'bn1', 'bn2'):
        if r.has(f'{p}.{bn}.running_mean'):
          out.bn((blk, bn), sl.batch_norm(r, f'{p}.{bn}', affine=True))
  if m.d_attn_block:
    _attention(r, out, f'blocks.{m.d_attn_block}.0', sn)
  _head(r, out, config)


def _deep_conv_discriminator(r, out, config):
  m = config.model
  sn = m.apply_d_sn
  for i in range(3):
    p = f'blocks.{_torch_index(i, m.d_attn_block)}.0'
    for j in range(2):
      out.layer((f'block{i}_conv{j}',), sl.conv(r, f'{p}.conv{j}', sn))
      if not sn:
        out.bn((f'block{i}_bn{j}',), sl.batch_norm(r, f'{p}.bn{j}', affine=True))
  if m.d_attn_block:
    _attention(r, out, f'blocks.{m.d_attn_block}.0', sn)
  out.layer(('conv_out',), sl.conv(r, 'conv1', sn))
  if not sn:
    out.bn(('bn_out',), sl.batch_norm(r, 'bn1', affine=True))
  _head(r, out, config)


_G = {'biggan': _resnet_generator, 'resnet': _resnet_generator, 'deep_conv': _deep_conv_generator}
_D = {'biggan': _resnet_discriminator, 'resnet': _resnet_discriminator,
      'deep_conv': _deep_conv_discriminator}


def _stylegan2(state):
  """StudioGAN stylegan2.py G / D: (params, its 'stylegan2_state' buffers or {}, no SN)."""
  v = stylegan2_convert.torch_to_flax({k: np.asarray(x, np.float32) for k, x in state.items()})
  return v.get('params', {}), v.get(stylegan2_g.STATE, {}), {}


def _collection(config) -> str:
  """The collection the converted statistics / buffers go to (BN's or StyleGAN2's)."""
  return 'stylegan2_state' if config.model.backbone == 'stylegan2' else 'batch_stats'


def _convert(state, config, table, what):
  backbone = config.model.backbone
  if backbone == 'stylegan2':  # names map one to one (models/stylegan2_convert.py)
    return _stylegan2(state)
  if backbone not in table:
    raise ValueError(f'config.model.backbone={backbone!r}: StudioGAN checkpoints convert for '
                     f'{", ".join(table)}, stylegan2 (StudioGAN big_resnet, resnet, deep_conv, '
                     'stylegan2)')
  r = sl.StateReader({k.removeprefix('module.'): np.asarray(v, np.float64)
                      for k, v in state.items()}, what)
  out = _Out(config)
  table[backbone](r, out, config)
  left = r.unused()
  if left:
    raise ValueError(f'{what}: {len(left)} checkpoint tensors have no place in config '
                     f'{backbone}/{config.model.cond_method}: {left[:8]} (TAC/ADC/MH/info heads '
                     'are not supported; check the attention blocks and cond_method)')
  return out.params, out.stats, out.sn


def convert_generator(state: dict, config):
  """StudioGAN G (or G_ema) state dict -> (params, batch_stats, sn_state) for build_models
  (StyleGAN2: its w_avg / noise_const buffers in place of batch_stats, no SN)."""
  return _convert(state, config, _G, 'G')


def convert_discriminator(state: dict, config):
  """StudioGAN D state dict -> (params, batch_stats, sn_state) for build_models."""
  return _convert(state, config, _D, 'D')


def numpy_float64_globals() -> list:
  """The pickle globals of a numpy.float64, as weights_only allow-list entries.

  StudioGAN's worker.save writes D's file as {'state_dict', 'optimizer', 'seed', 'run_name',
  'step', 'epoch', 'topk', 'aa_p', 'best_step', 'best_fid', 'best_fid_ckpt', 'lecam_emas'}
  (G's: state_dict, optimizer; G_ema's: state_dict). best_fid is the numpy.float64 that
  metrics/fid.py computes (aa_p too once ADA adjusts it); everything else is tensors, Python
  scalars, strings and dicts. A numpy.float64 unpickles as scalar(dtype('f8'), bytes): the
  function `numpy._core.multiarray.scalar` (`numpy.core.multiarray.scalar` in files written
  with numpy 1.x), `numpy.dtype`, and the dtype's class (numpy.dtypes.Float64DType) for its
  state. Nothing else numpy: no arrays, no object dtypes, no other scalar types.
  """
  return [multiarray.scalar, (multiarray.scalar, 'numpy.core.multiarray.scalar'), np.dtype,
          np.dtypes.Float64DType]


def _unpickle_error(e: Exception) -> str:
  """The line of torch's weights_only error that names what was refused (else its first)."""
  lines = [x.strip() for x in str(e).splitlines() if x.strip()] or ['']
  named = [x for x in lines if 'GLOBAL' in x or 'Can only build' in x]
  return (named or lines)[0].split(' Please use')[0].removeprefix('WeightsUnpickler error: ')


def load_state_dict(path: str) -> dict:
  """torch.load(weights_only=True) of a StudioGAN .pth -> {name: float numpy}.

  Besides tensors and plain containers only numpy_float64_globals() are allowed (StudioGAN's
  metadata). Raises ValueError (naming the file) for anything else: such a file could run code
  when unpickled, and StudioGAN's own checkpoints never need that.
  """
  import torch  # noqa: PLC0415 (optional dependency)

  try:
    with torch.serialization.safe_globals(numpy_float64_globals()):
      obj = torch.load(path, map_location='cpu', weights_only=True)
  except Exception as e:  # noqa: BLE001 (UnpicklingError, RuntimeError, ...)
    raise ValueError(f'{path}: not loadable with torch.load(weights_only=True) ({type(e).__name__}:'
                     f' {_unpickle_error(e)}). Only tensors, plain containers and numpy.float64 '
                     "scalars are read; re-save it as {'state_dict': model.state_dict()} from a "
                     'trusted StudioGAN.') from e
  state = obj.get('state_dict', obj) if isinstance(obj, dict) else None
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise ValueError(f"{path}: expected StudioGAN's {{'state_dict': {{name: tensor}}, ...}}")
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def find_checkpoints(ckpt: str, when: str) -> dict:
  """{'G': path, 'D': path or None, 'G_ema': path or None} from a folder or one G file."""
  if os.path.isfile(ckpt):
    return {'G': ckpt, 'D': None, 'G_ema': None}
  found = {}
  for model in ('G', 'D', 'G_ema'):
    pattern = f'model={model}-{when}-weights-step=*.pth'
    hits = sorted(glob.glob(os.path.join(glob.escape(ckpt), pattern)))
    found[model] = hits[0] if hits else None
  if found['G'] is None:
    raise errors.MissingFileError(f'{ckpt}: no model=G-{when}-weights-step=*.pth (StudioGAN '
                                  "checkpoint folder) and not a file; --when picks 'best' or "
                                  "'current'")
  return found


def convert_files(files: dict, config):
  """find_checkpoints' files -> (g, d, g_ema) converted (g_ema None without a G_ema file): what
  the command reads and converts before write_checkpoint."""
  g = convert_generator(load_state_dict(files['G']), config)
  d = convert_discriminator(load_state_dict(files['D']), config) if files['D'] else None
  g_ema = convert_generator(load_state_dict(files['G_ema']), config) if files['G_ema'] else None
  return g, d, g_ema


def check_like(ours, reference, what: str):
  """Raises ValueError naming the first leaf whose path or shape differs from `reference`."""

  flat = {jax.tree_util.keystr(k): np.shape(v) for k, v in
          jax.tree_util.tree_flatten_with_path(ours)[0]}
  want = {jax.tree_util.keystr(k): tuple(v.shape) for k, v in
          jax.tree_util.tree_flatten_with_path(reference)[0]}
  for key in sorted(set(flat) | set(want)):
    if flat.get(key) != want.get(key):
      raise ValueError(f'{what}: {key} is {flat.get(key)} after conversion but the model built '
                       f'from the config has {want.get(key)}: the config does not match the '
                       'checkpoint (widths, z_dim, image size, embed_dim, attention blocks?)')


# ---- writing a checkpoint (the lead adapts this one function to the new TrainState) ----------


def check_target(workdir: str) -> None:
  """Refuses a workdir that already holds checkpoints (issue 26).

  A conversion writes checkpoint 0 with the converted config's keep_checkpoints: into a run's
  workdir it would rotate (delete) that run's older checkpoints, or keep an earlier conversion
  while saying it converted the new files. So it writes only into a workdir without any.
  """
  ckpt_dir = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpt_dir) and os.listdir(ckpt_dir):
    raise errors.InputError(
        f'--workdir={workdir} already holds checkpoints ({ckpt_dir}): a conversion writes only '
        'into a workdir without any (nothing was changed); pass a new --workdir.')


def write_checkpoint(config, workdir: str, g, d, g_ema=None, step: int = 0) -> str:
  """Saves converted networks as a reacgan-jax checkpoint at `step`; returns its path.

  g, d, g_ema: (params, batch_stats, sn_state) from convert_generator / convert_discriminator.
  The state starts from state.create_train_state (fresh optimiser moments, seed's rng) and its
  networks are replaced; the EMA generator keeps G_ema's own SN vectors (EmaState.sn). The
  workdir's lock is held while writing, and a workdir that already holds checkpoints is refused
  (check_target) before anything is written.
  """
  check_target(workdir)
  with workdir_lock.WorkdirLock(workdir, 'convert'):
    check_target(workdir)  # again under the lock: another writer may have come in between
    return _write_checkpoint(config, workdir, g, d, g_ema, step)


def _write_checkpoint(config, workdir, g, d, g_ema, step):
  state = train_state_from(config, g, d, g_ema)
  ckpt = checkpoints.Checkpointer(workdir, config)
  try:
    return str(ckpt.save(step, state))
  finally:
    ckpt.close()


def train_state_from(config, g, d, g_ema=None):
  """A fresh TrainState (step 0, zero optimiser moments, the seed's rng) holding the converted
  networks: g, d, g_ema as convert_generator / convert_discriminator return them. Each part is
  checked against the config's own networks (check_like) first."""
  model = adapter.build(config)
  state = state_lib.create_train_state(config, model, jax.random.PRNGKey(config.seed))
  col = _collection(config)
  cols = lambda net: net.collections.get(col, {})
  nets = [('G', (state.g.params, cols(state.g), state.g.sn), g),
          ('D', (state.d.params, cols(state.d), state.d.sn), d)]
  if g_ema is not None:
    nets.append(('G_ema', (state.g.params, cols(state.g), state.g.sn), g_ema))
  for name, ref, got in nets:
    for part, a, b in zip(('params', 'batch_stats', 'sn_state'), got, ref, strict=True):
      check_like(a, b, f'{name} {part}')
  txs = state_lib.make_optimizers(config)

  def net(which, converted):
    params, stats, sn = jax.tree.map(np.asarray, converted)
    return state_lib.NetState(params=params, collections={col: stats} if stats else {},
                              sn=sn, opt_state=txs[which].init(params))

  state = state.replace(g=net('g', g), d=net('d', d))
  if config.train.ema:
    ema = g_ema or g
    if g_ema is None:
      logging.warning('No G_ema checkpoint: the EMA generator starts as a copy of G.')
    params, stats, sn = jax.tree.map(np.asarray, ema)
    state = state.replace(ema=state_lib.EmaState(
        params=params, collections={col: stats} if stats else {}, sn=sn))
  return state


def main(argv):
  if len(argv) != 2 or not _WORKDIR.value:
    raise app.UsageError('usage: python -m reacgan_jax.studiogan.convert CKPT --config=FILE '
                         '--workdir=DIR [--when=best|current]')
  with errors.exit_on_user_error('convert'):
    config = errors.config_value(_CONFIG)
    # The config is written beside the weights: one training would refuse is refused here.
    validate.validate_config(config, mode='train')
    check_target(_WORKDIR.value)  # before the (slow) reading and converting
    files = find_checkpoints(argv[1], _CKPT_WHEN.value)
    if files['D'] is None:
      raise errors.MissingFileError(f"{argv[1]}: no StudioGAN D checkpoint next to "
                                    f"{files['G']}: pass the checkpoint folder (model=G-..., "
                                    'model=D-...)')
    g, d, g_ema = convert_files(files, config)
    path = write_checkpoint(config, _WORKDIR.value, g, d, g_ema)
  logging.info('Converted %s into %s.', ', '.join(v for v in files.values() if v), path)


def run(argv=None):
  """The command: `python -m reacgan_jax.studiogan.convert CKPT --config=FILE --workdir=DIR`."""
  global _CONFIG
  # The config flag is defined only when this runs as a command (--config would clash with
  # main.py's when the module is imported as a library).

  _CONFIG = config_flags.DEFINE_config_file('config', None, 'reacgan-jax config of the model.')
  app.run(main, argv, flags_parser=errors.parse_flags)


if __name__ == '__main__':
  run()
