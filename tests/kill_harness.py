"""kill -9 harness (issue 14): run a writer, SIGKILL it at random moments, check nothing is lost.

`kill_loop(cmd, workdir, rounds=20, ...)` starts `cmd` (a list, e.g. main.py --mode=train ...)
`rounds` times, each killed with SIGKILL after a random delay (seeded: a failing schedule can be
replayed), then once more to completion. After every round it snapshots the complete
checkpoints (checkpoints/<step> directories, orbax's tmp directories excluded) and asserts:

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
import time

from train_helpers import HANG_S


@dataclasses.dataclass
class Round:
  delay_s: float
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


def run_once(cmd, *, delay_s: float | None, env=None, timeout_s: float | None = None) -> tuple:
  """Runs cmd; SIGKILLs it after delay_s (None: let it finish). -> (killed, rc, stderr tail)."""
  with open(os.devnull, 'w') as devnull:
    p = subprocess.Popen(cmd, env=env, stdout=devnull, stderr=subprocess.PIPE, text=True,
                         start_new_session=True)
    killed = False
    try:
      if delay_s is not None:
        try:
          p.wait(delay_s)
        except subprocess.TimeoutExpired:
          os.killpg(p.pid, signal.SIGKILL)  # the writer and anything it started
          killed = True
      _, err = p.communicate(timeout=timeout_s or HANG_S)
    finally:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
  return killed, p.returncode, (err or '')[-3000:]


def check_round(before: list, after: list, keep: int, corrupt_before: list, corrupt_after: list):
  """The invariants above, between two snapshots of complete steps."""
  if before:
    assert after and max(after) >= max(before), f'newest step went back: {before} -> {after}'
  newly_set_aside = len(corrupt_after) - len(corrupt_before)
  lost = [s for s in before if s not in after and sum(t > s for t in after) < keep]
  assert len(lost) <= newly_set_aside, (
      f'complete checkpoints {lost} vanished without rotation ({before} -> {after}; '
      f'set aside: {corrupt_after})')


def kill_loop(cmd, workdir, *, rounds: int = 20, keep: int, min_delay_s: float,
              max_delay_s: float, seed: int = 0, env=None, finish: bool = True) -> list:
  """The loop of the module docstring; returns the Rounds (the last one unkilled if finish)."""
  rng = random.Random(seed)
  history = []
  for r in range(rounds + int(finish)):
    delay = rng.uniform(min_delay_s, max_delay_s) if r < rounds else None
    before, corrupt_before = complete_steps(workdir), set_aside(workdir)
    t0 = time.time()
    killed, rc, err = run_once(cmd, delay_s=delay, env=env)
    after = complete_steps(workdir)
    history.append(Round(delay or time.time() - t0, killed, rc, after, err))
    if not killed:
      assert rc == 0, f'round {r}: the writer failed (rc {rc}):\n{err}'
    check_round(before, after, keep, corrupt_before, set_aside(workdir))
  return history
