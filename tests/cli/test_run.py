"""train / eval / sample through `reacgan-jax` and main.py: the same flags, one-line errors."""

import os
import pathlib
import subprocess
import sys

import pytest
from train_helpers import HANG_S

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')


def _run(*args, cwd):
  return subprocess.run([sys.executable, *args], env=ENV, cwd=cwd, capture_output=True,
                        text=True, timeout=HANG_S)


@pytest.mark.parametrize('entry', [['-m', 'reacgan_jax', 'train'], [str(REPO / 'main.py')]])
def test_an_unknown_config_name_is_one_line_listing_the_built_in_ones(entry, tmp_path):
  r = _run(*entry, '--config=cifar10_reacgn:small', f'--workdir={tmp_path}', cwd=tmp_path)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert r.stderr.count('\n') == 1 and 'cifar10_reacgn' in r.stderr
  assert 'cifar10_reacgan,' in r.stderr and 'tiny' in r.stderr


def test_an_unknown_config_key_names_it_and_the_defaults_file(tmp_path):
  r = _run('-m', 'reacgan_jax', 'train', '--config=tiny', '--config.train.stepz=3',
           f'--workdir={tmp_path}', cwd=tmp_path)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert 'stepz' in r.stderr and str(REPO / 'configs' / 'default.py') in r.stderr


def test_the_command_sets_the_mode(tmp_path):
  r = _run('-m', 'reacgan_jax', 'eval', '--config=tiny', f'--workdir={tmp_path}',
           '--mode=train', cwd=tmp_path)
  assert r.returncode == 1 and 'Traceback' not in r.stderr
  assert r.stderr.count('\n') == 1 and 'reacgan-jax eval' in r.stderr and '--mode' in r.stderr


@pytest.mark.slow
def test_a_user_error_is_one_line_and_verbosity_keeps_the_traceback(tmp_path):
  # sample with no checkpoint in the workdir: a UserError raised after the flags are read.
  args = ['-m', 'reacgan_jax', 'sample', '--config=tiny', f'--workdir={tmp_path / "none"}']
  r = _run(*args, cwd=tmp_path)
  assert r.returncode == 1 and 'Traceback' not in r.stderr, r.stderr[-2000:]
  assert 'reacgan-jax sample: error:' in r.stderr
  r = _run(*args, '--verbosity=1', cwd=tmp_path)
  assert r.returncode != 0 and 'Traceback' in r.stderr


@pytest.mark.parametrize('entry, flag', [(['-m', 'reacgan_jax', 'train'], '--help'),
                                         (['-m', 'reacgan_jax', 'sample'], '--helpfull'),
                                         ([str(REPO / 'main.py')], '--helpshort')])
def test_asking_for_help_prints_it_and_exits_0(entry, flag, tmp_path):
  r = _run(*entry, flag, cwd=tmp_path)  # absl exits 1 after printing its usage
  assert r.returncode == 0, r.stderr[-2000:]
  assert '--config' in r.stdout and '--workdir' in r.stdout
  r = _run(*entry, '--no_such_flag', cwd=tmp_path)  # an error still fails
  assert r.returncode == 1 and 'no_such_flag' in r.stderr
