"""The official DINOv2 checkpoint -> our Flax param file (imports torch, lazily; nothing else does).

    python -m reacgan_jax.evaluation.dinov2_convert --input dinov2_vitl14_pretrain.pth
        [--output FILE] [--arch vitl14] [--sha256 HEX]

The input is the backbone file torch.hub downloads for `dinov2_vitl14` (dgm-eval's encoder):
https://dl.fbaipublicfiles.com/dinov2/dinov2_vitl14/dinov2_vitl14_pretrain.pth, a zip
`torch.save` of the state dict. It is read with `torch.load(weights_only=True)` (no code runs)
and must hold exactly the tensors of `expected_torch_shapes(arch)` (DinoVisionTransformer built by
the hub: 518-pixel pos_embed, no register tokens, unchunked blocks, MLP FFN); any missing,
unexpected or differently shaped tensor is refused in one line naming it.

Integrity: Meta publishes no checksum for the DINOv2 files (unlike DINOv3's, whose names carry
a sha256 prefix), and torch.hub does not check one, so this converter has no official digest to
compare with. It records the file's sha256 in the param file (shown in every FD-DINOv2 protocol
line), and `--sha256 HEX` refuses a file whose digest differs from one the user trusts. The
output goes to `<cache root>/dinov2_vitl14.msgpack` (platform.paths.cache_root()) by default.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import sys

import numpy as np
from absl import logging

from reacgan_jax import errors
from reacgan_jax.errors import InputError, MissingFileError
from reacgan_jax.evaluation import convert as inception_convert
from reacgan_jax.evaluation import dinov2

# Per block: torch name -> (our path inside `blocks`, how to lay out the tensor).
_BLOCK = {
    'norm1.weight': ('norm1/scale', 'copy'), 'norm1.bias': ('norm1/bias', 'copy'),
    'attn.qkv.weight': ('attn/qkv/kernel', 'T'), 'attn.qkv.bias': ('attn/qkv/bias', 'copy'),
    'attn.proj.weight': ('attn/proj/kernel', 'T'), 'attn.proj.bias': ('attn/proj/bias', 'copy'),
    'ls1.gamma': ('ls1', 'copy'),
    'norm2.weight': ('norm2/scale', 'copy'), 'norm2.bias': ('norm2/bias', 'copy'),
    'mlp.fc1.weight': ('mlp/fc1/kernel', 'T'), 'mlp.fc1.bias': ('mlp/fc1/bias', 'copy'),
    'mlp.fc2.weight': ('mlp/fc2/kernel', 'T'), 'mlp.fc2.bias': ('mlp/fc2/bias', 'copy'),
    'ls2.gamma': ('ls2', 'copy'),
}
# Outside the blocks. mask_token is only used in training (masked image modelling): dropped.
_TOP = {
    'cls_token': ('cls_token', 'copy'), 'pos_embed': ('pos_embed', 'copy'),
    'patch_embed.proj.weight': ('patch_embed/kernel', 'OIHW'),
    'patch_embed.proj.bias': ('patch_embed/bias', 'copy'),
    'norm.weight': ('norm/scale', 'copy'), 'norm.bias': ('norm/bias', 'copy'),
    'mask_token': (None, 'drop'),
}


def expected_torch_shapes(arch: dinov2.Arch) -> dict[str, tuple[int, ...]]:
  """Every tensor of the hub model's state dict and its shape (torch layout)."""
  d, h, p = arch.dim, arch.mlp_ratio * arch.dim, arch.patch
  out = {'cls_token': (1, 1, d), 'pos_embed': (1, 1 + arch.pos_grid ** 2, d),
         'mask_token': (1, d), 'patch_embed.proj.weight': (d, 3, p, p),
         'patch_embed.proj.bias': (d,), 'norm.weight': (d,), 'norm.bias': (d,)}
  block = {'attn.qkv.weight': (3 * d, d), 'attn.qkv.bias': (3 * d,),
           'attn.proj.weight': (d, d), 'mlp.fc1.weight': (h, d), 'mlp.fc1.bias': (h,),
           'mlp.fc2.weight': (d, h)}
  for i in range(arch.depth):
    for name in _BLOCK:
      out[f'blocks.{i}.{name}'] = block.get(name, (d,))
  return out


def check_state_shapes(shapes: dict[str, tuple], arch: dinov2.Arch, where: str):
  """InputError (one line) unless `shapes` are exactly those of `expected_torch_shapes(arch)`."""
  want = expected_torch_shapes(arch)
  missing = [k for k in want if k not in shapes]
  extra = [k for k in shapes if k not in want]
  wrong = [f'{k} {tuple(shapes[k])} (expected {want[k]})' for k in want
           if k in shapes and tuple(shapes[k]) != want[k]]
  problems = []
  for label, names in (('missing', missing), ('unexpected', extra), ('wrong shape', wrong)):
    if names:
      more = f' and {len(names) - 3} more' if len(names) > 3 else ''
      problems.append(f'{label}: {", ".join(names[:3])}{more}')
  if problems:
    raise InputError(f'{where}: not the DINOv2 {dinov2.arch_name(arch)} backbone checkpoint '
                     f'({"; ".join(problems)}); download {dinov2.OFFICIAL_URL}')


def _layout(value: np.ndarray, how: str) -> np.ndarray:
  if how == 'T':
    return value.T  # torch Linear (out, in) -> Dense kernel (in, out)
  if how == 'OIHW':
    return np.transpose(value, (2, 3, 1, 0))  # torch conv -> HWIO
  return value


def _put(tree: dict, path: str, value: np.ndarray):
  *parents, leaf = path.split('/')
  for k in parents:
    tree = tree.setdefault(k, {})
  tree[leaf] = np.asarray(value, np.float32)


def params_from_state_dict(state: dict[str, np.ndarray], arch: dinov2.Arch,
                           where: str = 'state dict') -> dict:
  """The hub model's state dict (numpy) -> our params (blocks stacked on a depth axis)."""
  check_state_shapes({k: np.shape(v) for k, v in state.items()}, arch, where)
  params: dict = {}
  for name, (ours, how) in _TOP.items():
    if how != 'drop':
      _put(params, ours, _layout(np.asarray(state[name]), how))
  for name, (ours, how) in _BLOCK.items():
    stacked = np.stack([_layout(np.asarray(state[f'blocks.{i}.{name}']), how)
                        for i in range(arch.depth)])
    _put(params, f'blocks/{ours}', stacked)
  return params


def load_torch_state(path) -> dict[str, np.ndarray]:
  """{name: numpy} of a zip torch.save state dict, read with weights_only=True (no code runs)."""
  try:
    import torch
  except ImportError as e:
    raise InputError("converting DINOv2 weights needs torch: pip install 'reacgan-jax[torch]'"
                     ) from e
  try:
    state = torch.load(str(path), map_location='cpu', weights_only=True, mmap=True)
  except Exception as e:  # torch raises several types for a non-zip or code-carrying file
    raise InputError(f'{path}: cannot be read as a torch state dict with weights_only=True '
                     f'({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ""}); '
                     f'download {dinov2.OFFICIAL_URL}') from e
  if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
    raise InputError(f'{path}: not a state dict of tensors (a training checkpoint? the backbone '
                     f'file is {dinov2.OFFICIAL_URL})')
  return {k: v.detach().float().numpy() for k, v in state.items()}


def convert(input_path, output_path=None, arch: str | dinov2.Arch = 'vitl14',
            expected_sha256: str | None = None) -> pathlib.Path:
  """Checks and converts the checkpoint; returns the written param file's path.

  arch: a name of dinov2.ARCHS, or an Arch (tests convert small random networks).
  """
  if isinstance(arch, str) and arch not in dinov2.ARCHS:
    raise InputError(f'--arch {arch}: expected one of {", ".join(dinov2.ARCHS)}')
  a = dinov2.ARCHS[arch] if isinstance(arch, str) else arch
  input_path = pathlib.Path(input_path).expanduser()
  if not input_path.is_file():
    raise MissingFileError(f'{input_path}: no such file; download {dinov2.OFFICIAL_URL}')
  digest = inception_convert.sha256(input_path)  # the weight files' one hash function
  if expected_sha256 and digest != expected_sha256.strip().lower():
    raise InputError(f'{input_path}: sha256 {digest} differs from --sha256 {expected_sha256}; '
                     'a different or damaged file: download it again')
  params = params_from_state_dict(load_torch_state(input_path), a, str(input_path))
  output_path = pathlib.Path(output_path or dinov2.default_weights_path()).expanduser()
  source = f'{input_path.name} sha256={digest}'
  dinov2.save_params(output_path, params, a, source)
  logging.info('Wrote %s (DINOv2 %s from %s)', output_path, dinov2.arch_name(a), source)
  return output_path


def main(argv=None):
  parser = argparse.ArgumentParser(
      prog='python -m reacgan_jax.evaluation.dinov2_convert',
      description='Convert the official DINOv2 backbone checkpoint to a Flax param file '
                  '(for FD-DINOv2).')
  parser.add_argument('--input', required=True,
                      help=f'the downloaded checkpoint ({dinov2.OFFICIAL_URL})')
  parser.add_argument('--output', default=None,
                      help=f'output file (default: {dinov2.default_weights_path()})')
  parser.add_argument('--arch', default='vitl14', choices=tuple(dinov2.ARCHS),
                      help='the checkpoint\'s architecture (dgm-eval and FD-DINOv2: vitl14)')
  parser.add_argument('--sha256', default=None,
                      help='refuse the file unless its sha256 is this (Meta publishes none; '
                           'give one you trust, e.g. from your first download)')
  args = parser.parse_args(argv)
  logging.set_verbosity(logging.INFO)
  verbose = os.environ.get('REACGAN_JAX_TRACEBACK') == '1'
  with errors.exit_on_user_error(parser.prog, verbose=verbose):
    out = convert(args.input, args.output, args.arch, args.sha256)
    print(f'Wrote {out} (sha256 of the input recorded in it)')


if __name__ == '__main__':
  main(sys.argv[1:])
