"""The shape of the code (issue 13): small modules and functions a newcomer can read.

Limits for reacgan_jax/: 400 lines a module, 80 lines a function (decorators excluded, the
docstring included). The test names every offender, so a failure says what to split.
"""

import ast
import pathlib

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'reacgan_jax'
MAX_MODULE, MAX_FUNCTION = 400, 80


def _offenders():
  out = []
  for path in sorted(PACKAGE.rglob('*.py')):
    source = path.read_text()
    rel = path.relative_to(PACKAGE.parent)
    if len(source.splitlines()) > MAX_MODULE:
      out.append(f'{rel}: {len(source.splitlines())} lines (limit {MAX_MODULE})')
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION:
          out.append(f'{rel}:{node.lineno} {node.name}: {n} lines (limit {MAX_FUNCTION})')
  return out


def test_no_module_or_function_over_the_limits():
  assert not _offenders(), '\n'.join(_offenders())


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
  pkg = tmp_path / 'reacgan_jax'
  pkg.mkdir()
  (pkg / 'long.py').write_text('def f():\n' + '  x = 1\n' * MAX_FUNCTION)
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', pkg)
  assert _offenders() == ['reacgan_jax/long.py:1 f: 81 lines (limit 80)']
