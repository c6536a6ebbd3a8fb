"""Config files for the command line: built-in ones by name, and `import configs` for them.

configs/ sits at the top of a checkout; a wheel ships the same files as reacgan_jax/_configs/
(pyproject.toml, package-dir), so installing reacgan-jax adds no top-level `configs` package
that could collide with another project's. A config file imports its siblings as
`configs.<name>` (`from configs import default`); just before the config is read, the command
makes `configs` that file's own folder when it is a configs folder (default.py and __init__.py
in it: configs/ of a checkout, a copy of it), else the built-in folder. The library never
imports configs (tests/test_layout.py): only the command line does, through this module.

  --config=cifar10_reacgan:small   a built-in config by name (':small' is its config string)
  --config=configs/tiny.py         a file; `configs/NAME.py` that is not here: the built-in NAME
  --config=my_run.py:arg           any other config file
"""

import importlib
import importlib.util
import pathlib
import re
import sys

from reacgan_jax.errors import ConfigError
from reacgan_jax.platform import paths

PACKAGE = 'configs'
# A config file is one a user can pass: it defines get_config (variants.py and __init__.py don't).
_GET_CONFIG = re.compile(r'^def get_config\(', re.MULTILINE)
_CONFIG_FLAG = re.compile(r'^(--?config)=(.*)$', re.DOTALL)


def builtin_dir() -> pathlib.Path:
  """configs/ of the checkout the package runs from, else the copy installed with it."""
  return paths.builtin_configs_dir()


def builtin_names() -> list[str]:
  """Names of the built-in config files (what --config=NAME accepts), sorted."""
  return sorted(p.stem for p in builtin_dir().glob('*.py') if _GET_CONFIG.search(p.read_text()))


def resolve(value: str) -> str:
  """A --config value with a built-in name (NAME, NAME.py or configs/NAME.py that is not a file
  here) replaced by that file's path, config string kept; a file path is returned unchanged.

  Raises ConfigError, listing the built-in names, when it is neither.
  """
  path, sep, arg = value.partition(':')
  if pathlib.Path(path).is_file():
    return value
  name = path.removeprefix('configs/').removesuffix('.py')
  names = builtin_names()
  if name in names:
    return f'{builtin_dir() / name}.py{sep}{arg}'
  raise ConfigError(f'--config={value}: {path!r} is neither a file nor a built-in config; '
                    f'built-in (NAME or NAME:VARIANT): {", ".join(names)}.')


def resolve_argv(argv: list[str]) -> list[str]:
  """argv with the value of its --config flag(s) resolved (`--config=V` and `--config V`)."""
  out = list(argv)
  for i in range(1, len(out)):
    if out[i] == '--':
      break
    match = _CONFIG_FLAG.match(out[i])
    if match:
      out[i] = f'{match[1]}={resolve(match[2])}'
    elif out[i] in ('--config', '-config') and i + 1 < len(out):
      out[i + 1] = resolve(out[i + 1])
  return out


def folder_for(config_value: str | None) -> pathlib.Path:
  """The folder `configs` stands for when reading this (resolved) --config value."""
  if config_value:
    parent = pathlib.Path(config_value.partition(':')[0]).resolve().parent
    if (parent / 'default.py').is_file() and (parent / '__init__.py').is_file():
      return parent
  return builtin_dir()


def make_importable(folder: pathlib.Path):
  """Makes `import configs` (and `configs.<name>`) read `folder`; returns the package module."""
  folder = pathlib.Path(folder).resolve()
  current = sys.modules.get(PACKAGE)
  where = [pathlib.Path(p).resolve() for p in getattr(current, '__path__', ())]
  if current is not None and where == [folder]:
    return current
  for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + '.')]:
    del sys.modules[name]  # another folder's configs: its modules must not be reused
  spec = importlib.util.spec_from_file_location(PACKAGE, folder / '__init__.py',
                                                submodule_search_locations=[str(folder)])
  module = importlib.util.module_from_spec(spec)
  sys.modules[PACKAGE] = module
  spec.loader.exec_module(module)
  return module


def prepare(argv: list[str]) -> list[str]:
  """Resolves --config in argv and makes `configs` importable for it; returns the new argv."""
  argv = resolve_argv(argv)
  value = None
  for i, arg in enumerate(argv[1:], 1):
    match = _CONFIG_FLAG.match(arg)
    if match:
      value = match[2]
    elif arg in ('--config', '-config') and i + 1 < len(argv):
      value = argv[i + 1]
  make_importable(folder_for(value))
  return argv


def default_file() -> pathlib.Path:
  """default.py of the configs folder in use (every key, its default and a comment)."""
  where = getattr(sys.modules.get(PACKAGE), '__path__', None)
  folder = pathlib.Path(where[0]) if where else builtin_dir()
  return folder / 'default.py'


def default_config():
  """`configs.default.get_config()` of the folder made importable by `prepare`."""
  return importlib.import_module(f'{PACKAGE}.default').get_config()
