"""The package layout's rules (issue 24), read from the imports of reacgan_jax/ (docs/DESIGN.md).

    train/       the trainer: loop, step, state, modes        nothing below imports it
    models/      backbones, heads, layers, the model adapter   no trainer, data, losses, configs
    losses/      GAN losses, D2D-CE, regularisers, the terms   no models, no trainer
    augment/     the augmentation seam, DiffAugment, ADA/APA
    data/        the pipeline over its sources, array checks   no models, evaluation, trainer
    evaluation/  Inception, metrics, the fid command           no trainer
    ops/         spectral norm, convolutions, oneDNN           leaves: ops/, platform/, errors
    platform/    mesh, checkpoints, lock, writers, paths       leaves: platform/, errors
    studiogan/   YAML import, checkpoint conversion            nothing else imports it
    cli/         the `reacgan-jax` command (main.py's code)    the top: nothing imports it
    errors.py validate.py sampling.py

Every import of our own modules is at the top of its module (one list of what a module needs);
an import inside a function is allowed only for an optional heavy dependency (OPTIONAL). The
module graph has no circles. `test_the_rules_see_*` plant a breaking module in a copy of the
package and check that the rules name it. One exception to "at the top": cli/ names each
command's module as a string (cli.COMMANDS) and imports only the one that runs, by importlib,
since the commands define absl flags of the same names; tests/cli/ runs every one.
"""

import ast
import pathlib
import shutil

import pytest

PACKAGE = pathlib.Path(__file__).resolve().parents[1] / 'reacgan_jax'

# Imports allowed inside functions: optional or heavy (TensorFlow-backed) dependencies, and
# tensorboard's protos (~2 s to import; only process 0 of a run writes events).
OPTIONAL = {'torch', 'tensorflow', 'tensorflow_datasets', 'clu', 'fcntl', 'wandb', 'tensorboard'}
# Old module names kept as `python -m` commands (they forward to studiogan/).
COMPAT = {'convert_studiogan', 'from_studiogan', 'fid'}
TRAINER = ('train',)
GAN_SPECIFIC = ('train', 'models', 'losses', 'augment', 'data', 'evaluation', 'studiogan',
                'sampling', 'validate')

# (importer prefix, forbidden imported prefixes, why)
RULES = [
    ('losses', ('models', 'train', 'data', 'evaluation', 'augment'),
     'losses are pure functions over arrays and pytrees'),
    ('models', ('train', 'data', 'losses', 'evaluation', 'augment', 'configs'),
     'networks know nothing of how they are trained or fed'),
    ('ops', GAN_SPECIFIC + ('configs',), 'ops/ are leaves'),
    ('platform', GAN_SPECIFIC + ('ops', 'configs'), 'platform/ is GAN-agnostic'),
    ('data', ('models', 'evaluation', 'train', 'losses', 'augment'), 'data feeds, nothing more'),
    ('evaluation', TRAINER, 'evaluation never imports the trainer'),
    ('sampling', TRAINER, 'sampling never imports the trainer'),
    ('augment', TRAINER + ('models', 'data', 'evaluation'), 'augmentations act on arrays'),
    ('', ('configs',), 'the library never imports configs/ (cli/ hands the defaults in)'),
]


def _module_name(path, package):
  parts = list(path.relative_to(package).with_suffix('').parts)
  if parts[-1] == '__init__':
    parts = parts[:-1]
  return '.'.join(parts)


def _resolve(name, modules):
  """Longest prefix of dotted `name` that is one of our modules ('' = the package)."""
  while name and name not in modules:
    name = name.rpartition('.')[0]
  return name


def _scan(package):
  """(graph {module: {imported modules}}, problems) for the package at `package`."""
  files = {_module_name(p, package): p for p in sorted(package.rglob('*.py'))}
  graph, problems = {}, []
  for mod, path in files.items():
    tree = ast.parse(path.read_text())
    top = set(tree.body)
    deps = set()
    for node in ast.walk(tree):
      if not isinstance(node, (ast.Import, ast.ImportFrom)):
        continue
      if isinstance(node, ast.ImportFrom) and node.level:
        problems.append(f'{mod}:{node.lineno}: relative import (use reacgan_jax.<module>)')
        continue
      names = ([a.name for a in node.names] if isinstance(node, ast.Import)
               else [f'{node.module}.{a.name}' for a in node.names])
      ours = [n for n in names if n.split('.')[0] in ('reacgan_jax', 'configs')]
      if node not in top:
        root = (node.names[0].name if isinstance(node, ast.Import) else node.module).split('.')[0]
        if ours or root not in OPTIONAL:
          problems.append(f'{mod}:{node.lineno}: import inside a function ({ast.unparse(node)}); '
                          f'move it to the top (only {", ".join(sorted(OPTIONAL))} may wait)')
      for n in ours:
        if n.split('.')[0] == 'configs':
          deps.add('configs')
        else:
          dep = _resolve(n[len('reacgan_jax.'):] if '.' in n else '', files)
          if dep != mod:
            deps.add(dep)
    graph[mod] = deps
  return graph, problems


def _under(mod, prefix):
  return prefix == '' or mod == prefix or mod.startswith(prefix + '.')


def _rule_breaks(graph):
  out = []
  for mod, deps in sorted(graph.items()):
    for prefix, forbidden, why in RULES:
      if not _under(mod, prefix) or mod in COMPAT:
        continue
      for dep in sorted(deps):
        if any(_under(dep, f) for f in forbidden if f):
          out.append(f'{mod or "reacgan_jax"} imports {dep}: {why}')
    for dep in deps:
      if _under(dep, 'studiogan') and not _under(mod, 'studiogan') and mod not in COMPAT:
        out.append(f'{mod} imports {dep}: nothing in the library imports studiogan/')
      if _under(dep, 'cli') and not _under(mod, 'cli') and mod != '__main__':
        out.append(f'{mod} imports {dep}: the command line is the top, nothing imports cli/')
  return out


def _cycles(graph):
  """Every strongly connected set of more than one module (Tarjan), as sorted lists."""
  index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

  def visit(v):
    index[v] = low[v] = counter[0]
    counter[0] += 1
    stack.append(v)
    on.add(v)
    for w in graph.get(v, ()):
      if w not in graph:
        continue
      if w not in index:
        visit(w)
        low[v] = min(low[v], low[w])
      elif w in on:
        low[v] = min(low[v], index[w])
    if low[v] == index[v]:
      comp = []
      while True:
        w = stack.pop()
        on.discard(w)
        comp.append(w)
        if w == v:
          break
      if len(comp) > 1:
        out.append(sorted(comp))

  for v in sorted(graph):
    if v not in index:
      visit(v)
  return out


def _report(package):
  graph, problems = _scan(package)
  problems += _rule_breaks(graph)
  problems += [f'import circle: {" -> ".join(c)}' for c in _cycles(graph)]
  return problems


def test_the_package_keeps_its_layout_rules():
  problems = _report(PACKAGE)
  assert not problems, '\n'.join(problems)


def test_registries_agree_on_the_conditioning_methods():
  from reacgan_jax.losses import registry
  from reacgan_jax.models import heads

  assert set(heads.COND_METHODS) == set(registry.COND_LOSSES)


@pytest.fixture
def package_copy(tmp_path):
  copy = tmp_path / 'reacgan_jax'
  shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns('__pycache__', '*.so'))
  return copy


@pytest.mark.parametrize('where, source, expect', [
    ('losses/bad.py', 'from reacgan_jax import models\n', 'losses.bad imports models'),
    ('models/bad.py', 'from reacgan_jax.train import loop\n', 'models.bad imports train.loop'),
    ('ops/bad.py', 'from reacgan_jax.losses import gan\n', 'ops.bad imports losses.gan'),
    ('data/bad.py', 'from reacgan_jax.evaluation import fid\n', 'data.bad imports evaluation.fid'),
    ('sampling2.py', 'from configs import default\n', 'sampling2 imports configs'),
    ('evaluation/bad.py', 'from reacgan_jax.studiogan import keys\n',
     'nothing in the library imports studiogan/'),
    ('train/bad.py', 'from reacgan_jax.cli import builtin_configs\n', 'nothing imports cli/'),
    ('errors2.py', 'def f():\n  from reacgan_jax import errors\n', 'import inside a function'),
    ('losses/bad.py', 'def f():\n  import scipy\n', 'import inside a function'),
])
def test_the_rules_see_a_broken_rule(package_copy, where, source, expect):
  (package_copy / where).write_text(source)
  problems = _report(package_copy)
  assert any(expect in p for p in problems), problems


def test_the_rules_see_a_circle(package_copy):
  (package_copy / 'errors.py').write_text(
      (package_copy / 'errors.py').read_text() + '\nfrom reacgan_jax import validate  # noqa\n')
  problems = _report(package_copy)
  assert any(p.startswith('import circle:') and 'errors' in p and 'validate' in p
             for p in problems), problems
