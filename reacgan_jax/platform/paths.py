"""Where reacgan-jax keeps files outside a run's workdir: one cache root, and the checkout.

`cache_root()` is the one folder for everything cached across runs (decoded data arrays,
Inception weights and reference statistics, the persistent XLA compilation cache, the built
oneDNN extension): `$REACGAN_JAX_CACHE` when set, else `$XDG_CACHE_HOME/reacgan_jax`, else
`~/.cache/reacgan_jax`. Each user of it names its own subfolder or file.

`xla_cache_dir()` is where compiled executables are kept (train.compilation_cache);
`onednn_cache_dir()` where the oneDNN extension is built (ops/onednn).

`checkout_root()` is the source checkout the package was imported from (a git clone installed
with `pip install -e`), or None for an installed wheel: relative data paths in the shipped
configs ('../shared/data/...') are tried against it after the current directory.
"""

import os
import pathlib

CACHE_ENV = 'REACGAN_JAX_CACHE'
XLA_CACHE_ENV = 'REACGAN_JAX_XLA_CACHE'
ONEDNN_CACHE_ENV = 'REACGAN_JAX_ONEDNN_CACHE'


def cache_root() -> pathlib.Path:
  """$REACGAN_JAX_CACHE, else $XDG_CACHE_HOME/reacgan_jax, else ~/.cache/reacgan_jax."""
  env = os.environ.get(CACHE_ENV)
  if env:
    return pathlib.Path(env).expanduser()
  xdg = os.environ.get('XDG_CACHE_HOME')
  base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / '.cache'
  return base / 'reacgan_jax'


def xla_cache_dir() -> pathlib.Path:
  """The persistent XLA compilation cache: $REACGAN_JAX_XLA_CACHE, else <cache_root>/xla.

  Its own variable, so compiled executables can be shared (the test suite shares one across
  its runs) while each run keeps its data and statistics caches apart.
  """
  env = os.environ.get(XLA_CACHE_ENV)
  return pathlib.Path(env).expanduser() if env else cache_root() / 'xla'


def onednn_cache_dir() -> pathlib.Path:
  """The built oneDNN extension: $REACGAN_JAX_ONEDNN_CACHE, else <cache_root>/onednn.

  Its own variable for the same reason as the XLA cache: runs that keep their data caches
  apart (the test suite's) can share one build.
  """
  env = os.environ.get(ONEDNN_CACHE_ENV)
  return pathlib.Path(env).expanduser() if env else cache_root() / 'onednn'


def builtin_configs_dir() -> pathlib.Path:
  """configs/ of the checkout the package runs from, else the copy a wheel installs beside it
  (reacgan_jax/_configs: no top-level `configs` package is installed)."""
  root = checkout_root()
  if root is not None and (root / 'configs' / 'default.py').is_file():
    return root / 'configs'
  return pathlib.Path(__file__).resolve().parents[1] / '_configs'


def checkout_root() -> pathlib.Path | None:
  """The folder holding reacgan_jax/ when it is a source checkout (pyproject.toml beside it)."""
  root = pathlib.Path(__file__).resolve().parents[2]
  return root if (root / 'pyproject.toml').exists() and (root / 'reacgan_jax').is_dir() else None
