"""User errors: one clear message, a non-zero exit status, no traceback (issue 14, class 9).

A `UserError` is a mistake the user can fix (a config value, a path, a workdir held by another
run, a checkpoint of another state layout); its message names the key or file, the value, and
what to do. Command lines catch `UserError` at the top (`exit_on_user_error`) and print only the
message; every other exception is a bug and keeps its traceback.

The concrete classes also derive from the builtin type callers already catch (ValueError,
FileNotFoundError, RuntimeError), so code written against those keeps working.
"""

from __future__ import annotations

import contextlib
import signal
import sys

from absl import flags


class UserError(Exception):
  """Base of every error whose message alone tells the user what to do."""


class ConfigError(UserError, ValueError):
  """A config value that is not allowed: names the key, the value and what is allowed."""


class InputError(UserError, ValueError):
  """An input file or folder that cannot be used (missing, unreadable, inconsistent)."""


class MissingFileError(UserError, FileNotFoundError):
  """A file the command needs does not exist (weights, statistics, a workdir's config)."""


class WorkdirLockedError(UserError, RuntimeError):
  """Another run holds the workdir's lock."""


class CheckpointLayoutError(UserError, RuntimeError):
  """A checkpoint written with another TrainState layout (not corrupt: never set aside)."""


class EvaluationError(UserError, RuntimeError):
  """An evaluation inside training failed (after the checkpoint of that step was saved)."""


class DiskFullError(UserError, OSError):
  """No space left where a file had to be written: names the place and what was kept."""


class NonFiniteError(UserError, FloatingPointError):
  """Training went NaN/Inf: the message names the step and the last good checkpoint."""


@contextlib.contextmanager
def exit_on_user_error(prog: str, *, verbose: bool = False, status: int = 1):
  """Turns a UserError into `prog: error: <message>` on stderr and `sys.exit(status)`.

  With verbose=True the traceback is kept (for debugging); other exceptions always keep theirs.
  """
  try:
    yield
  except UserError as e:
    if verbose:
      raise
    sys.stderr.write(f'{prog}: error: {e}\n')
    sys.stderr.flush()
    raise SystemExit(status) from None


HELP_FLAGS = ('help', 'helpshort', 'helpfull', 'helpxml', 'h', '?')  # absl's help flags


def command_name(module_command: str) -> str:
  """The name a command's usage and errors say: `reacgan-jax NAME` when the dispatcher runs it
  (it sets sys.argv[0] so), else `module_command` (e.g. 'python -m reacgan_jax.fid')."""
  return sys.argv[0] if sys.argv and sys.argv[0].startswith('reacgan-jax') else module_command


def parse_flags(argv, defaults_file=None):
  """absl's flag parser (the `flags_parser` of app.run) for commands that read a --config file:
  an unknown --config.<key>, a bad flag, a UserError raised inside the config file or a config
  file that fails to load each end with one line and exit status 1 (--verbosity=1 keeps the
  traceback of the last)."""
  try:
    return flags.FLAGS(argv)
  except SystemExit as e:
    # absl's --help / --helpshort / --helpfull print the usage, then exit 1; asking for help
    # is not a failure (exit 0, as argparse and GNU tools do).
    if e.code == 1 and any(a.lstrip('-').split('=')[0] in HELP_FLAGS
                           for a in argv[1:] if a.startswith('-')):
      raise SystemExit(0) from None
    raise
  except (AttributeError, KeyError) as e:
    # config_flags raises these (not a flags error) for a key the config does not have.
    message = ' '.join(str(e).replace('\\n', ' ').replace('\\', '').replace("'", '').split())
    where = (f'\nEvery key, with its default and a comment, is in {defaults_file}.'
             if defaults_file else '')
    sys.stderr.write(f'FATAL Flags parsing error: unknown config key {message}{where}\n')
    sys.exit(1)
  except flags.Error as e:
    msg = message_of_flag_error(e)  # a UserError raised inside a config file
    if msg:
      sys.stderr.write(f'FATAL {msg}\n')
      sys.exit(1)
    sys.stderr.write(f'FATAL Flags parsing error: {e}\nPass --helpshort or --helpfull to see '
                     'help on flags.\n')
    sys.exit(1)
  except Exception as e:  # noqa: BLE001 -- raised by the user's config file (SyntaxError too)
    if any(a in ('--verbosity=1', '-v=1', '--verbosity=debug') for a in argv):
      raise
    where = f' in {e.filename}' if isinstance(e, SyntaxError) else ''
    hint = ''
    if isinstance(e, ModuleNotFoundError) and e.name == 'configs':
      hint = (' A config file that imports `configs` runs from the repository root, or through '
              '`reacgan-jax <command>`, which makes its folder importable.')
    sys.stderr.write(f'FATAL --config: the config file failed to load: {type(e).__name__}: '
                     f'{e}{where}. Fix it (--verbosity=1 shows the traceback).{hint}\n')
    sys.exit(1)


def config_value(flag):
  """The config of a config_flags --config flag; InputError for a missing or unreadable file,
  which config_flags defers to the first access of the config."""
  config = flag.value
  try:
    getattr(config, 'train', None)
  except OSError as e:
    raise InputError(f'--config: {" ".join(str(e.__cause__ or e).split())}') from e
  return config


def message_of_flag_error(e: Exception) -> str | None:
  """The UserError message inside a flag-parsing error, or None when there is none.

  ml_collections' config_flags re-raises an error of a config file's get_config() as
  `type(e)('Error whilst parsing config file:\n\n' + traceback)`, so the message is the text
  after the last 'reacgan_jax.errors.<Class>: ' of the wrapped traceback.
  """
  text = str(e)
  i = text.rfind('reacgan_jax.errors.')
  if i < 0 or ': ' not in text[i:]:
    return None
  return text[i:].split(': ', 1)[1].strip() or None


# ---- Ctrl-C before the training loop's own handler -----------------------------------------------
# Python's default SIGINT handler raises KeyboardInterrupt wherever the main thread is. When that
# is inside a gc callback (jax registers one, and the imports and model build collect often),
# Python prints "Exception ignored in: <function _xla_gc_callback ...>" and drops it: the command
# went on as if no key had been pressed (measured: Ctrl-C 0.2-0.8 s into `reacgan-jax train` was
# lost every time). The latch below raises the same KeyboardInterrupt and also remembers it, so
# the command stops at its next `raise_if_interrupted()` (after the imports, before the loop).

_ctrl_c = {'pressed': False}


def _on_sigint(signum, frame):
  del signum, frame
  _ctrl_c['pressed'] = True
  raise KeyboardInterrupt


def latch_ctrl_c():
  """Installs the latch in place of Python's default SIGINT handler (a SIGINT the shell set to be
  ignored, as for `nohup` or a background job, stays ignored)."""
  if signal.getsignal(signal.SIGINT) is signal.default_int_handler:
    signal.signal(signal.SIGINT, _on_sigint)
    sys.unraisablehook = _quiet_dropped_ctrl_c(sys.unraisablehook)


def _quiet_dropped_ctrl_c(hook):
  """Python's "Exception ignored in ..." traceback for the dropped KeyboardInterrupt is noise:
  the latch stops the command with its one line instead."""

  def unraisable(u):
    if not (isinstance(u.exc_value, KeyboardInterrupt) and _ctrl_c['pressed']):
      hook(u)

  return unraisable


def raise_if_interrupted():
  """Raises KeyboardInterrupt if a Ctrl-C reached the latch, even one Python dropped."""
  if _ctrl_c['pressed']:
    raise KeyboardInterrupt
