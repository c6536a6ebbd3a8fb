"""--config by built-in name, name:variant or path; `import configs` for the config files."""

import importlib
import pathlib
import shutil
import sys

import pytest

import configs
from reacgan_jax.cli import builtin_configs
from reacgan_jax.errors import ConfigError

CONFIGS = pathlib.Path(__file__).resolve().parents[2] / 'configs'


@pytest.fixture
def restore_configs_modules():
  """Puts the checkout's `configs` modules back after a test that swapped them."""
  saved = {n: m for n, m in sys.modules.items() if n == 'configs' or n.startswith('configs.')}
  yield
  for name in [n for n in sys.modules if n == 'configs' or n.startswith('configs.')]:
    del sys.modules[name]
  sys.modules.update(saved)


def test_in_a_checkout_the_built_in_folder_is_configs():
  assert builtin_configs.builtin_dir() == CONFIGS


def test_built_in_names_are_the_config_files():
  # configs/__init__.py lists the configs usable without an argument; from_workdir needs one.
  assert builtin_configs.builtin_names() == sorted(configs.experiment_configs() +
                                                   ['from_workdir'])


@pytest.mark.parametrize('value, expect', [
    ('tiny', 'tiny.py'),
    ('tiny.py', 'tiny.py'),
    ('cifar10_reacgan:small', 'cifar10_reacgan.py:small'),
    ('from_workdir:runs/x', 'from_workdir.py:runs/x'),
    ('configs/cifar10_reacgan.py:small', 'cifar10_reacgan.py:small'),
])
def test_a_name_becomes_the_built_in_file(value, expect, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)  # configs/<name>.py is no file here: the built-in one is meant
  assert builtin_configs.resolve(value) == f'{CONFIGS}/{expect}'


def test_a_file_stays_a_file(tmp_path, monkeypatch):
  mine = tmp_path / 'tiny.py'  # the user's own file shadows the built-in of that name
  mine.write_text('def get_config():\n  return None\n')
  assert builtin_configs.resolve(f'{mine}:x') == f'{mine}:x'
  monkeypatch.chdir(tmp_path)
  assert builtin_configs.resolve('tiny.py') == 'tiny.py'


@pytest.mark.parametrize('value', ['tinny', 'cifar10_reacgan_smal:small', 'my/own.py', 'variants'])
def test_neither_file_nor_name_lists_the_built_in_ones_in_one_line(value, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  with pytest.raises(ConfigError) as e:
    builtin_configs.resolve(value)
  message = str(e.value)
  assert '\n' not in message and f'--config={value}' in message
  assert all(name in message for name in builtin_configs.builtin_names())


def test_both_spellings_of_the_flag_are_resolved(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  argv = ['prog', '--config=tiny', '--workdir=w', '--config', 'tiny:a', '--', '--config=x']
  assert builtin_configs.resolve_argv(argv) == [
      'prog', f'--config={CONFIGS}/tiny.py', '--workdir=w', '--config', f'{CONFIGS}/tiny.py:a',
      '--', '--config=x']


def test_configs_means_the_config_file_s_own_folder(tmp_path, restore_configs_modules):
  copy = tmp_path / 'configs'
  shutil.copytree(CONFIGS, copy, ignore=shutil.ignore_patterns('__pycache__'))
  (copy / 'default.py').write_text((copy / 'default.py').read_text().replace(
      'return config', 'config.copied = True\n  return config'))
  argv = builtin_configs.prepare(['prog', f'--config={copy}/tiny.py'])
  assert argv == ['prog', f'--config={copy}/tiny.py']
  assert builtin_configs.default_config().copied
  assert builtin_configs.default_file() == copy / 'default.py'
  tiny = importlib.import_module('configs.tiny')
  assert tiny.get_config().copied  # its `from configs import default` reads the copy


def test_a_lone_config_file_imports_the_built_in_configs(tmp_path, restore_configs_modules):
  mine = tmp_path / 'my_run.py'
  mine.write_text('from configs import default\n\n\ndef get_config():\n'
                  '  return default.get_config()\n')
  assert builtin_configs.folder_for(f'{mine}:x') == CONFIGS
  builtin_configs.prepare(['prog', f'--config={mine}'])
  assert pathlib.Path(sys.modules['configs'].__path__[0]) == CONFIGS
