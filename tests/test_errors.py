"""errors.py: the Ctrl-C latch (the user-error classes are exercised through the commands in
tests/integration/test_user_errors.py)."""

import gc
import os
import signal
import sys

import pytest

from reacgan_jax import errors


@pytest.fixture
def default_sigint(monkeypatch):
  """Python's own SIGINT handler and unraisable hook for the test; both restored after."""
  monkeypatch.setattr(errors, '_ctrl_c', {'pressed': False})
  handler, hook = signal.getsignal(signal.SIGINT), sys.unraisablehook
  signal.signal(signal.SIGINT, signal.default_int_handler)
  yield
  signal.signal(signal.SIGINT, handler)
  sys.unraisablehook = hook


def _ctrl_c_inside_a_gc_callback():
  """SIGINT delivered while a gc callback runs, as jax's _xla_gc_callback does during imports."""

  def callback(phase, info):
    del phase, info
    gc.callbacks.remove(callback)
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10_000):  # bytecode after the kill: the handler runs here, inside the callback
      pass

  gc.callbacks.append(callback)
  gc.collect()


def test_python_drops_a_ctrl_c_raised_inside_a_gc_callback(default_sigint):
  """The failure the latch exists for: without it the KeyboardInterrupt is printed and lost."""
  dropped = []
  sys.unraisablehook = dropped.append
  _ctrl_c_inside_a_gc_callback()  # returns: no KeyboardInterrupt reached this frame
  assert [type(u.exc_value) for u in dropped] == [KeyboardInterrupt]


def test_the_latch_remembers_a_dropped_ctrl_c_and_stops_at_the_next_check(default_sigint):
  dropped = []
  sys.unraisablehook = dropped.append
  errors.latch_ctrl_c()
  errors.raise_if_interrupted()  # nothing pressed yet: no-op
  _ctrl_c_inside_a_gc_callback()
  assert not dropped  # the dropped KeyboardInterrupt's traceback is not printed
  with pytest.raises(KeyboardInterrupt):
    errors.raise_if_interrupted()


def test_the_latch_raises_like_python_and_leaves_an_ignored_sigint_ignored(default_sigint):
  errors.latch_ctrl_c()
  with pytest.raises(KeyboardInterrupt):
    os.kill(os.getpid(), signal.SIGINT)
    for _ in range(10_000):
      pass
  signal.signal(signal.SIGINT, signal.SIG_IGN)  # nohup / a background job
  errors.latch_ctrl_c()
  assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
