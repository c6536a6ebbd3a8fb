"""kill -9 harness (issue 14): run a writer, SIGKILL it at chosen moments, check nothing is lost.

`kill_loop(cmd, workdir, checkpoints=..., rounds=..., ...)` starts `cmd` (a list, e.g. main.py
--mode=train ...) `rounds` times and SIGKILLs it at a moment picked from the writer's progress,
never from a clock (issue 24: a test may not depend on machine speed): a checkpoint step a seeded
number of checkpoints ahead of where the round started, and either

* 'mid-save': while that step is being written (its orbax tmp folder exists), or as soon as it
  is complete if the write was too quick to be seen; or
* 'after-save': as soon as that step is complete (the writer is between saves or in the next).

Then it runs the writer once more to completion. A round is only planned with at least `margin`
checkpoints left after its target, so the writer cannot finish between the moment is seen and the
kill (which would need `margin` whole saves within one poll of the folder). After every round it
snapshots the complete checkpoints (checkpoints/<step> directories, orbax's tmp directories
excluded) and asserts:

* the newest complete step never goes backwards (a resumed run never restarts from scratch);
* a complete checkpoint disappears only by rotation (at least `keep` newer complete ones exist)
  or by being set aside as corrupt-<step>[-<n>] (then a warning was logged by the writer).

Bit-exactness of what is left is checked by the caller (it knows the TrainState): e.g. restore
each of `final_steps` with Checkpointer.restore(abstract, step=s) and compare with a reference.
The writer's stderr of every round is kept (`Round.stderr_tail`) for the failure message.
"""

from __future__ import annotations

import dataclasses
import os
import random
import signal
import subprocess
import tempfile
import time

from train_helpers import HANG_S

POLL_S = 0.002  # how often the checkpoint folder is looked at while waiting for the moment


@dataclasses.dataclass
class Round:
  target: int | None   # the checkpoint step the kill waited for (None: run to completion)
  phase: str           # 'mid-save' / 'after-save' as planned; 'finish' for the last round
  hit: str             # what was seen when the kill was sent: 'tmp', 'complete' or ''
  killed: bool
  returncode: int
  steps: list
  stderr_tail: str


def complete_steps(workdir) -> list:
  d = os.path.join(workdir, 'checkpoints')
  return sorted(int(n) for n in os.listdir(d) if n.isdigit()) if os.path.isdir(d) else []


def set_aside(workdir) -> list:
  d = os.path.join(workdir, 'checkpoints')
  return sorted(n for n in os.listdir(d) if n.startswith('corrupt-')) if os.path.isdir(d) else []


def _seen(workdir, target: int, mid_save: bool) -> str:
  """'' until the moment to kill: the target's tmp folder (mid_save) or the target complete."""
  d = os.path.join(workdir, 'checkpoints')
  try:
    names = os.listdir(d)
  except FileNotFoundError:
    return ''
  if any(n.isdigit() and int(n) >= target for n in names):
    return 'complete'
  if mid_save and any(n.startswith(f'{target}.orbax-checkpoint-tmp') for n in names):
    return 'tmp'
  return ''


def run_once(cmd, *, workdir=None, target: int | None = None, mid_save: bool = False, env=None,
             timeout_s: float | None = None) -> tuple:
  """Runs cmd; SIGKILLs it at the moment `target` names (None: let it finish).

  -> (killed, hit, rc, stderr tail). `killed` is False when the writer ended on its own first.
  """
  # stderr to a file, not a pipe: a pipe nobody reads while we poll could fill and stall it.
  with open(os.devnull, 'w') as devnull, tempfile.TemporaryFile('w+') as err_file:
    p = subprocess.Popen(cmd, env=env, stdout=devnull, stderr=err_file, text=True,
                         start_new_session=True)
    killed, hit = False, ''
    try:
      if target is not None:
        deadline = time.monotonic() + (timeout_s or HANG_S)  # a hang guard, not a schedule
        while p.poll() is None and not hit:
          hit = _seen(workdir, target, mid_save)
          if not hit:
            assert time.monotonic() < deadline, f'no checkpoint {target} after {HANG_S} s'
            time.sleep(POLL_S)
        if hit and p.poll() is None:
          os.killpg(p.pid, signal.SIGKILL)  # the writer and anything it started
          killed = True
      p.wait(timeout=timeout_s or HANG_S)
    finally:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    err_file.seek(0)
    err = err_file.read()
  return killed, hit, p.returncode, err[-3000:]


def check_round(before: list, after: list, keep: int, corrupt_before: list, corrupt_after: list):
  """The invariants above, between two snapshots of complete steps."""
  if before:
    assert after and max(after) >= max(before), f'newest step went back: {before} -> {after}'
  newly_set_aside = len(corrupt_after) - len(corrupt_before)
  lost = [s for s in before if s not in after and sum(t > s for t in after) < keep]
  assert len(lost) <= newly_set_aside, (
      f'complete checkpoints {lost} vanished without rotation ({before} -> {after}; '
      f'set aside: {corrupt_after})')


def kill_loop(cmd, workdir, *, checkpoints, rounds: int, keep: int, ahead: tuple = (1, 3),
              margin: int = 3, seed: int = 0, env=None, finish: bool = True) -> list:
  """The loop of the module docstring; returns the Rounds (the last one unkilled if finish).

  checkpoints: the steps the writer saves, in order; ahead: (lo, hi) checkpoints past the newest
  complete one at a round's start, drawn per round (seeded: a failing schedule replays).
  """
  rng = random.Random(seed)
  checkpoints = sorted(checkpoints)
  history = []
  for r in range(rounds + int(finish)):
    before, corrupt_before = complete_steps(workdir), set_aside(workdir)
    newest = max(before, default=0)
    future = [c for c in checkpoints if c > newest]
    k = rng.randint(*ahead)
    mid_save = rng.random() < 0.5
    if r < rounds and len(future) >= k + margin:
      target, phase = future[k - 1], ('mid-save' if mid_save else 'after-save')
    elif r < rounds:
      continue  # too close to the end to be sure of the kill: leave it to the last round
    else:
      target, phase = None, 'finish'
    killed, hit, rc, err = run_once(cmd, workdir=workdir, target=target, mid_save=mid_save,
                                    env=env)
    after = complete_steps(workdir)
    history.append(Round(target, phase, hit, killed, rc, after, err))
    if not killed:
      assert rc == 0, f'round {r}: the writer failed (rc {rc}):\n{err}'
    check_round(before, after, keep, corrupt_before, set_aside(workdir))
  return history
