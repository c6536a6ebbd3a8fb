"""`ruff check` is clean on the whole repository (config in pyproject.toml)."""

import pathlib
import shutil
import subprocess
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_ruff_clean():
  ruff = shutil.which('ruff') or str(pathlib.Path(sys.executable).parent / 'ruff')
  if not pathlib.Path(ruff).exists():
    pytest.skip("ruff is not installed: pip install -e '.[test]'")
  proc = subprocess.run([ruff, 'check', '.'], cwd=REPO, capture_output=True, text=True)
  assert proc.returncode == 0, proc.stdout + proc.stderr
