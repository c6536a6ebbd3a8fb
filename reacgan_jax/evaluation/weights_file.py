"""The weights files this package writes (DINOv2, the CIFAR classifier): a msgpack dict tagged
with its format, read back with one clear error for anything else."""

import pathlib

from flax import serialization

from reacgan_jax.errors import InputError


def read(path: pathlib.Path, file_format: str, what: str, recreate: str) -> dict:
  """The dict of `path`, a file tagged `file_format`; InputError naming the file, the `what` it
  should hold and how to `recreate` it when it is garbage or another format (the caller has
  checked that it exists)."""
  try:
    data = serialization.msgpack_restore(path.read_bytes())
  except Exception as e:  # msgpack raises several unrelated types on garbage
    raise InputError(f'{path}: not a reacgan_jax {what} file ({type(e).__name__}); '
                     f'{recreate}') from e
  if not isinstance(data, dict) or data.get('format') != file_format:
    raise InputError(f'{path}: not a reacgan_jax {what} file (format tag expected '
                     f'{file_format!r}); {recreate}')
  return data
