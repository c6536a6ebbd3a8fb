"""`reacgan-jax` / `python -m reacgan_jax`: one help line per command, dispatch, bad commands."""

import os
import pathlib
import re
import subprocess
import sys

import pytest
from train_helpers import HANG_S

from reacgan_jax import cli

REPO = pathlib.Path(__file__).resolve().parents[2]
ENV = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS='cpu')
# The commands issue 27 asks for, each with one line in `reacgan-jax --help`.
EXPECTED = ('train', 'eval', 'sample', 'fid', 'convert-inception', 'convert-studiogan',
            'import-studiogan-yaml')


def _module(*args, cwd):
  return subprocess.run([sys.executable, '-m', 'reacgan_jax', *args], env=ENV, cwd=cwd,
                        capture_output=True, text=True, timeout=HANG_S)


def command_lines(help_text):
  """{command: its summary} read from the 'commands:' block of a help text."""
  block = help_text.split('commands:\n', 1)[1].split('\n\n', 1)[0]
  return dict(line.split(None, 1) for line in block.splitlines())


def test_help_lists_every_command_with_one_line(capsys):
  assert cli.main(['--help']) == 0
  lines = command_lines(capsys.readouterr().out)
  assert set(lines) == set(EXPECTED)
  assert all(summary.strip() for summary in lines.values())


def test_python_dash_m_prints_the_same_help(tmp_path, capsys):
  cli.main(['--help'])
  r = _module('--help', cwd=tmp_path)  # from outside the checkout
  assert r.returncode == 0, r.stderr
  assert r.stdout == capsys.readouterr().out


def test_help_names_the_built_in_configs(capsys):
  cli.main(['--help'])
  text = ' '.join(capsys.readouterr().out.split('NAME:VARIANT):', 1)[1].split())
  assert set(text.split(', ')) == set(cli.builtin_configs.builtin_names())


def test_unknown_command_is_one_line(capsys):
  assert cli.main(['trian', '--config=tiny']) == 1
  err = capsys.readouterr().err
  assert err.count('\n') == 1 and "'trian'" in err and 'train' in err


def test_no_command_prints_the_help_and_fails(capsys):
  assert cli.main([]) == 1
  assert set(command_lines(capsys.readouterr().err)) == set(EXPECTED)


# CI's budget (issue 24): an absl command and an argparse one in the slow suite, the rest
# exhaustive (each starts a process that imports its command).
@pytest.mark.parametrize('name', [
    pytest.param(n, marks=pytest.mark.slow if n in ('train', 'fid') else pytest.mark.exhaustive)
    for n in EXPECTED])
def test_every_command_runs_its_own_help(name, tmp_path):
  # Each command in its own process: the commands define absl flags of the same names.
  r = _module(name, '--help', cwd=tmp_path)
  out = r.stdout + r.stderr
  assert r.returncode == 0, out[-2000:]  # asking for help is not a failure (absl's exit 1 is not)
  assert f'reacgan-jax {name}' in out, out[:2000]  # the usage names the command as typed
  assert 'Traceback' not in out
  assert re.search(r'--[a-z]', out.replace('--helpfull', '')), out  # its own flags are listed
