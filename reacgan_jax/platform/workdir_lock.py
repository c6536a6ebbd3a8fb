"""One writer per workdir: a lock file naming its owner (issue 14, class 2).

`with WorkdirLock(workdir):` around anything that writes checkpoints, logs or samples. The lock
is `workdir/reacgan.lock`, a JSON file {pid, host, started, pid_start, argv, token}:

* Taking it is one atomic step: the content is written to a private temporary file, then
  hard-linked to the lock name (`os.link` fails when the name exists), so no reader ever sees a
  half-written lock and two runs can never both create it. Filesystems without hard links fall
  back to O_CREAT|O_EXCL.
* A second run is refused with WorkdirLockedError naming the owner (pid, host, start time,
  command) and what to do.
* A stale lock -- its owner is on this host and that pid is gone, or has been reused by another
  process (its start time in /proc differs) -- is taken over: under an flock'ed side file
  (`reacgan.lock.takeover`, so two runs never take over at once) the lock is re-read, and only if
  it is still the stale one it is atomically replaced (os.replace). A lock of another host is
  never taken over automatically (its pid cannot be checked from here): the message says how to
  remove it by hand.
* Released on exit (only if it still holds our token); a SIGKILLed run leaves it, and the next
  run takes it over as stale.

Multi-host: only process 0 holds the file (all hosts share one workdir); every process must
enter the context at the same point, because process 0's outcome is broadcast so that the other
processes stop with the same error instead of waiting in a collective.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import json
import os
import socket
import sys
import uuid

import jax
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from reacgan_jax import errors

LOCK_NAME = 'reacgan.lock'


def _proc_start(pid: int) -> str | None:
  """Start time of `pid` in clock ticks since boot (/proc/<pid>/stat field 22), or None."""
  try:
    with open(f'/proc/{pid}/stat') as f:
      return f.read().rsplit(')', 1)[1].split()[19]
  except (OSError, IndexError):
    return None


def _pid_alive(pid: int) -> bool:
  try:
    os.kill(pid, 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # exists, owned by another user
    return True
  return True


def is_stale(owner: dict, host: str | None = None) -> bool:
  """True when the lock's owner is on this host and no longer runs (pid gone or reused)."""
  if owner.get('host') != (host or socket.gethostname()):
    return False
  pid = owner.get('pid')
  if not isinstance(pid, int) or not _pid_alive(pid):
    return True
  start = _proc_start(pid)
  return owner.get('pid_start') is not None and start is not None and start != owner['pid_start']


def describe_owner(owner: dict) -> str:
  cmd = ' '.join(owner.get('argv', []))[:200]
  return (f'pid {owner.get("pid")} on host {owner.get("host")}, started {owner.get("started")}'
          + (f' ({cmd})' if cmd else ''))


class WorkdirLock:
  """Context manager holding `workdir/reacgan.lock` (process 0 only; see the module docstring).

  Args:
    workdir: the run's directory (created if missing).
    purpose: recorded in the lock and named in the refusal ('train', 'eval', 'sample').
    process_index / process_count: default jax.process_index() / jax.process_count().
  """

  def __init__(self, workdir, purpose: str = 'train', *, process_index=None, process_count=None):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_NAME)
    self.purpose = purpose
    self._index, self._count = process_index, process_count
    self.token = uuid.uuid4().hex
    self.held = False

  def _content(self) -> dict:
    pid = os.getpid()
    return {'pid': pid, 'host': socket.gethostname(), 'pid_start': _proc_start(pid),
            'started': datetime.datetime.now(datetime.UTC).isoformat(timespec='seconds'),
            'purpose': self.purpose, 'argv': sys.argv, 'token': self.token}

  def _write_tmp(self) -> str:
    tmp = os.path.join(self.workdir, f'.{LOCK_NAME}.{self.token}.tmp')
    with open(tmp, 'w') as f:
      json.dump(self._content(), f)
      f.flush()
      os.fsync(f.fileno())
    return tmp

  def _create(self, tmp: str) -> bool:
    """Atomically creates the lock from `tmp`; False when it already exists."""
    try:
      os.link(tmp, self.path)
      return True
    except FileExistsError:
      return False
    except OSError as e:
      if e.errno not in (errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.EXDEV):
        raise
    try:  # no hard links here: exclusive create (a reader may briefly see it empty)
      fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
      return False
    with os.fdopen(fd, 'w') as f, open(tmp) as src:
      f.write(src.read())
    return True

  def _read(self) -> dict | None:
    try:
      with open(self.path) as f:
        owner = json.load(f)
      return owner if isinstance(owner, dict) else {}
    except FileNotFoundError:
      return None
    except (OSError, ValueError):
      return {}  # unreadable or empty: treated as held by an unknown owner

  def _take_over(self, stale: dict, tmp: str) -> bool:
    import fcntl  # noqa: PLC0415 (POSIX only)

    with open(self.path + '.takeover', 'a') as guard:
      fcntl.flock(guard, fcntl.LOCK_EX)
      try:
        if self._read() != stale:  # changed since we looked: somebody else took it
          return False
        os.replace(tmp, self.path)
        return True
      finally:
        fcntl.flock(guard, fcntl.LOCK_UN)

  def _acquire_local(self):
    try:
      os.makedirs(self.workdir, exist_ok=True)
      tmp = self._write_tmp()
    except OSError as e:  # a file in the way, no permission, a read-only or full disk
      what = 'is a file' if os.path.isfile(self.workdir) else f'cannot be written ({e})'
      raise errors.InputError(f'--workdir={self.workdir} {what}: name a folder this user can '
                              'write (it is created if missing).') from e
    try:
      for _ in range(10):
        if self._create(tmp):
          return
        owner = self._read()
        if owner is None:
          continue  # released between our two looks
        if owner and is_stale(owner):
          if self._take_over(owner, tmp):
            logging.warning('Took over the stale lock %s of %s (that process is gone).',
                            self.path, describe_owner(owner))
            return
          continue
        raise self._refusal(owner)
      raise errors.WorkdirLockedError(f'Could not take the lock {self.path} (it keeps changing).')
    finally:
      with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)

  def _refusal(self, owner: dict) -> errors.WorkdirLockedError:
    if not owner:
      who = 'an unknown owner (the lock file is empty or unreadable)'
      todo = f'if no run uses this workdir, delete {self.path}'
    else:
      who = describe_owner(owner)
      todo = (f'wait for it to finish, stop it (kill {owner.get("pid")} on {owner.get("host")}), '
              'or use another --workdir')
      if owner.get('host') != socket.gethostname():
        todo += (f'; if that run is gone (its host crashed), check that nothing on '
                 f'{owner.get("host")} writes here, then delete {self.path}')
    return errors.WorkdirLockedError(
        f'The workdir {self.workdir} is in use by another run ({who}): two writers would '
        f'overwrite each other\'s checkpoints. {todo[0].upper()}{todo[1:]}.')

  def release(self):
    if self.held:
      self.held = False
      if (self._read() or {}).get('token') == self.token:
        with contextlib.suppress(FileNotFoundError):
          os.unlink(self.path)

  def __enter__(self):
    if self._index is None or self._count is None:
      self._index = jax.process_index() if self._index is None else self._index
      self._count = jax.process_count() if self._count is None else self._count
    error = None
    if self._index == 0:
      try:
        self._acquire_local()
        self.held = True
      except errors.UserError as e:  # locked, or not writable: every process hears of it
        error = e
    if self._count > 1 and not _process0_ok(error is None) and error is None:
      error = errors.WorkdirLockedError(
          f'Process 0 could not lock the workdir {self.workdir} (another run holds it; see the '
          'log of process 0).')
    if error is not None:
      raise error
    return self

  def __exit__(self, *exc):
    self.release()
    return False


def _process0_ok(ok: bool) -> bool:
  """Process 0's `ok`, on every process (a collective)."""

  return bool(multihost_utils.broadcast_one_to_all(np.array(ok)))
