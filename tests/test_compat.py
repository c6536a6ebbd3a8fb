"""Old module names users may have in their scripts keep working (issue 24).

`python -m reacgan_jax.from_studiogan` / `convert_studiogan` / `fid` run the commands that
moved into studiogan/ and evaluation/ (the first two say the new name on stderr); importing the
old names for their functions fails with a message naming the new module.
"""

import importlib
import os
import pathlib
import subprocess
import sys

import pytest
from train_helpers import HANG_S

REPO = pathlib.Path(__file__).resolve().parents[1]
YAML = REPO / 'tests' / 'fixtures' / 'studiogan_configs' / 'SNGAN.yaml'
ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')


def _run(*args):
  return subprocess.run([sys.executable, '-m', *args], capture_output=True, text=True,
                        env=ENV, cwd=REPO, timeout=HANG_S)


def test_old_yaml_import_command_runs_the_new_one():
  old, new = _run('reacgan_jax.from_studiogan', str(YAML)), _run(
      'reacgan_jax.studiogan.yaml_import', str(YAML))
  assert old.returncode == new.returncode == 0, old.stderr[-2000:] + new.stderr[-2000:]
  assert old.stdout == new.stdout and 'get_config' in new.stdout
  assert 'reacgan_jax.from_studiogan is now reacgan_jax.studiogan.yaml_import' in old.stderr


def test_old_convert_command_runs_the_new_one():
  r = _run('reacgan_jax.convert_studiogan')  # no arguments: the new command's usage line
  assert r.returncode != 0 and 'Traceback' not in r.stderr
  assert 'reacgan_jax.convert_studiogan is now reacgan_jax.studiogan.convert' in r.stderr
  assert 'python -m reacgan_jax.studiogan.convert CKPT' in r.stderr


def test_old_fid_command_runs():
  r = _run('reacgan_jax.fid', '--help')
  assert r.returncode == 0 and 'usage' in r.stdout.lower()


@pytest.mark.parametrize('old, new', [('convert_studiogan', 'reacgan_jax.studiogan.convert'),
                                      ('from_studiogan', 'reacgan_jax.studiogan.yaml_import')])
def test_old_module_names_say_where_functions_moved(old, new):
  module = importlib.import_module(f'reacgan_jax.{old}')
  with pytest.raises(AttributeError, match=f'moved to {new}'):
    module.convert_generator  # noqa: B018
