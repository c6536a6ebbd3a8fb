"""The shape of the code: functions a newcomer can read.

Limit for reacgan_jax/: 80 lines a function (decorators excluded, the docstring included); the
test names every offender, so a failure says what to split. Modules are judged by concept, not
length (issue 24): a module over LOOK_AT lines is reported as a warning, for a look, not a split.
"""

import ast
import pathlib
import warnings

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'reacgan_jax'
MAX_FUNCTION, LOOK_AT = 80, 500


def _offenders():
  out = []
  for path in sorted(PACKAGE.rglob('*.py')):
    source = path.read_text()
    rel = path.relative_to(PACKAGE.parent)
    for node in ast.walk(ast.parse(source)):
      if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
        n = node.end_lineno - node.lineno + 1
        if n > MAX_FUNCTION:
          out.append(f'{rel}:{node.lineno} {node.name}: {n} lines (limit {MAX_FUNCTION})')
  return out


def _long_modules():
  return [f'{p.relative_to(PACKAGE.parent)}: {n} lines'
          for p in sorted(PACKAGE.rglob('*.py'))
          if (n := len(p.read_text().splitlines())) > LOOK_AT]


def test_no_function_over_the_limit():
  long = _long_modules()
  if long:
    warnings.warn(f'modules worth a look (over {LOOK_AT} lines): {"; ".join(long)}',
                  stacklevel=1)
  assert not _offenders(), '\n'.join(_offenders())


def test_the_check_sees_a_long_function(tmp_path, monkeypatch):
  pkg = tmp_path / 'reacgan_jax'
  pkg.mkdir()
  (pkg / 'long.py').write_text('def f():\n' + '  x = 1\n' * MAX_FUNCTION)
  monkeypatch.setattr(__import__(__name__), 'PACKAGE', pkg)
  assert _offenders() == ['reacgan_jax/long.py:1 f: 81 lines (limit 80)']
