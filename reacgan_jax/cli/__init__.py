"""The `reacgan-jax` command (also `python -m reacgan_jax`): every command line under one name.

  reacgan-jax train --config=cifar10_reacgan:small --workdir=runs/x
  reacgan-jax eval --config=cifar10_reacgan:small --workdir=runs/x
  reacgan-jax fid ../shared/data/cifar10.npz:x_train ../shared/data/cifar10.npz:x_test --cifar-rows

Each command is the function named in COMMANDS, imported only when that command runs: the
commands define absl flags of the same names (train and convert-studiogan both have --config and
--workdir), and `reacgan-jax --help` stays instant. train / eval / sample are main.py's code
(cli/run.py) with --mode set by the command; the others are the `python -m` commands of
evaluation/ and studiogan/, which keep working under their old names. Nothing imports cli/.
"""

import dataclasses
import importlib
import sys
import textwrap

from absl import flags

from reacgan_jax import errors
from reacgan_jax.cli import builtin_configs

PROG = 'reacgan-jax'


@dataclasses.dataclass(frozen=True)
class Command:
  module: str
  function: str  # called with no arguments, sys.argv = ['reacgan-jax NAME', *its arguments]
  summary: str  # the one line of `reacgan-jax --help`
  # --config: a built-in name resolved (before the command's slow imports), `configs` importable.
  takes_config: bool = False


COMMANDS = {
    'train': Command('reacgan_jax.cli.run', 'train',
                     'train a GAN; the same command again resumes the --workdir', True),
    'eval': Command('reacgan_jax.cli.run', 'evaluate',
                    'FID, IS, ... of the newest checkpoint\'s EMA generator', True),
    'sample': Command('reacgan_jax.cli.run', 'sample',
                      'class grid, interpolation and an npz from the newest checkpoint', True),
    'fid': Command('reacgan_jax.evaluation.fid', 'cli',
                   'FID (and KID) between two image sets or saved statistics'),
    'convert-inception': Command('reacgan_jax.evaluation.convert', 'main',
                                 'the FID Inception weights from torch (torch extra)'),
    'convert-studiogan': Command('reacgan_jax.studiogan.convert', 'run',
                                 'a PyTorch-StudioGAN checkpoint as a workdir',
                                 takes_config=True),
    'import-studiogan-yaml': Command('reacgan_jax.studiogan.yaml_import', 'run',
                                     'a StudioGAN YAML config as a config file'),
}


def usage() -> str:
  """`reacgan-jax --help`: one line per command, then the built-in config names."""
  width = max(map(len, COMMANDS))
  lines = [f'usage: {PROG} COMMAND [FLAGS]', '',
           'Class-conditional GANs (ReACGAN, ACGAN, SNGAN, BigGAN, StyleGAN2) and their metrics '
           'in JAX/Flax.', '', 'commands:']
  lines += [f'  {name:<{width}}  {c.summary}' for name, c in COMMANDS.items()]
  lines += [''] + textwrap.wrap(
      f'`{PROG} COMMAND --help` lists the flags of a command. --config takes a config file or '
      'a built-in config by name (NAME or NAME:VARIANT):', 80)
  lines += textwrap.wrap(', '.join(builtin_configs.builtin_names()), 80, initial_indent='  ',
                         subsequent_indent='  ')
  return '\n'.join(lines) + '\n'


def main(argv=None) -> int:
  """Runs the command named in argv[0] (sys.argv[1:] when None); returns the exit status."""
  errors.latch_ctrl_c()  # a Ctrl-C during the imports is never dropped (errors.py says why)
  args = list(sys.argv[1:] if argv is None else argv)
  if not args or args[0] in ('-h', '--help', 'help'):
    (sys.stdout if args else sys.stderr).write(usage())
    return 0 if args else 1
  command = COMMANDS.get(args[0])
  if command is None:
    sys.stderr.write(f'{PROG}: error: unknown command {args[0]!r}; the commands are '
                     f'{", ".join(COMMANDS)} (`{PROG} --help` says what each does).\n')
    return 1
  sys.argv = [f'{PROG} {args[0]}', *args[1:]]
  if command.takes_config:
    with errors.exit_on_user_error(sys.argv[0]):
      sys.argv = builtin_configs.prepare(sys.argv)
  try:
    module = importlib.import_module(command.module)
    errors.raise_if_interrupted()
  except KeyboardInterrupt:  # Ctrl-C during the imports (jax, the trainer): one line, 130
    sys.stderr.write(f'{sys.argv[0]}: interrupted (Ctrl-C) while starting; nothing was written.\n')
    return 130
  _show_in_absl_help(module, sys.argv[0])
  getattr(module, command.function)()
  return 0


def _show_in_absl_help(module, prog):
  """absl's --help prints __main__'s docstring and the flags of the module named argv[0]: here,
  the command's module's (argparse commands ignore both). The lists themselves are shared, so
  a flag the command defines when it runs (convert-studiogan's --config) is listed too."""
  for by_module in (flags.FLAGS.flags_by_module_dict(), flags.FLAGS.key_flags_by_module_dict()):
    by_module[prog] = by_module.setdefault(module.__name__, [])
  sys.modules['__main__'].__doc__ = module.__doc__
