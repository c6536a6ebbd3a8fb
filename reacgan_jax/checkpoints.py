"""Checkpoints: save, resume bit-exactly, fall back past a corrupt one, keep the best FID.

Layout under the workdir::

  checkpoints/<step>/{state, config}     newest `keep_checkpoints`, every checkpoint_every
  checkpoints_best/<step>/{state, config} the single best-FID one (when evaluation runs)
  config.json                             the config of the run, human-readable

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
crash (or SIGKILL) mid-save leaves the previous checkpoint as the newest finished one.
A checkpoint that is finished but unreadable (truncated, corrupt files) is skipped on
restore with a warning, falling back to the previous one.

Restoring passes the abstract target (StandardRestore(abstract_state)): without it optax's
namedtuple states come back as plain lists and the restored state has another pytree
structure than the one the jitted step was compiled for.
"""

import json
import os

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

# The TrainState layouts this project has written, by a top-level field that only that layout
# has (read from orbax's tree metadata, without loading any array).
LAYOUT_MARKERS = {1: 'g_params', 2: 'g'}
LAYOUT_NOTES = {1: 'the flat TrainState (g_params, g_state, g_sn, ...) of reacgan-jax up to '
                   'commit f207e45 (2026-12-01)'}


class CheckpointLayoutError(ValueError):
  """A checkpoint written with another TrainState layout than this version reads."""


def stored_layout(checkpoint_dir) -> int | None:
  """The TrainState layout of a finished checkpoint directory, or None when unrecognised."""
  meta = epath.Path(checkpoint_dir) / 'state' / '_METADATA'
  try:
    tree = json.loads(meta.read_text())['tree_metadata']
  except (OSError, ValueError, KeyError, TypeError):
    return None
  top = {k.strip('()').split(',')[0].strip().strip("'") for k in tree}
  for layout, marker in LAYOUT_MARKERS.items():
    if marker in top:
      return layout
  return None


# Config sections that define what a checkpoint *is*; resuming with different values would
# silently train another model (or fail on shapes), so resume refuses.
RESUME_CRITICAL_SECTIONS = ('model', 'data', 'loss')


def config_to_dict(config):
  """ConfigDict -> plain JSON-able dict."""
  return json.loads(config.to_json_best_effort())


def config_differences(saved, current, sections=RESUME_CRITICAL_SECTIONS):
  """Dotted keys whose values differ between two config dicts, within `sections`."""
  diffs = []

  def walk(a, b, prefix):
    for k in sorted(set(a) | set(b)):
      if k not in a:  # a key added since the checkpoint was written: its default applies
        continue
      va, vb = a[k], b.get(k, '<missing>')
      if isinstance(va, dict) and isinstance(vb, dict):
        walk(va, vb, f'{prefix}{k}.')
      elif va != vb:
        diffs.append(f'{prefix}{k}: saved {va!r}, now {vb!r}')

  for s in sections:
    walk(saved.get(s, {}), current.get(s, {}), f'{s}.')
  return diffs


class Checkpointer:
  """Wraps two orbax CheckpointManagers (newest-N and best-FID) for one workdir.

  Every process of a multi-host run must create it and call save/restore (orbax
  coordinates the writes; arrays are global jax.Arrays).
  """

  def __init__(self, workdir, config, *, keep=None, layout=None):
    # Orbax's tensorstore backend requires absolute paths (--workdir=runs/x is relative).
    self.workdir = epath.Path(os.path.abspath(workdir))
    self.config_dict = config_to_dict(config)
    self.layout = layout  # the TrainState layout restore expects (None: not checked)
    keep = config.train.keep_checkpoints if keep is None else keep
    # Synchronous saves: the trainer donates the state buffers to the next step, so an async
    # save still reading them would race; checkpoints of these models take well under a second.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.directory = self.workdir / 'checkpoints'
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=('state', 'config'))
    best_options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=lambda m: m['fid'], best_mode='min', keep_checkpoints_without_metrics=False)
    self.best_directory = self.workdir / 'checkpoints_best'
    self.best_manager = ocp.CheckpointManager(self.best_directory, options=best_options,
                                              item_names=('state', 'config'))

  def write_config(self):
    """workdir/config.json for humans (each checkpoint also stores its config)."""
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      (self.workdir / 'config.json').write_text(json.dumps(self.config_dict, indent=2))

  def _args(self, state):
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(self.config_dict))

  def save(self, step, state):
    """Saves `state` as checkpoint `step` (blocking); returns its path."""
    step = int(step)
    if step not in self.manager.all_steps():
      self.manager.save(step, args=self._args(state), force=True)
      self.manager.wait_until_finished()
    return self.path(step)

  def save_best(self, step, state, metrics):
    """Offers `state` to the best-FID manager; kept only if its FID is the lowest so far."""
    if 'fid' not in metrics:
      return
    step = int(step)
    if step not in self.best_manager.all_steps():
      self.best_manager.save(step, args=self._args(state), metrics={'fid': float(metrics['fid'])},
                             force=True)
      self.best_manager.wait_until_finished()

  def path(self, step):
    return str(self.directory / str(step))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def saved_config(self, step):
    return self.manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))[
        'config']

  def check_config(self, step):
    """Raises ValueError when checkpoint `step` was written under another model/data/loss.

    A key the saved config lacks (added to configs/default.py after the run started) takes
    its default and is not a difference. A checkpoint of another TrainState layout raises
    CheckpointLayoutError first.
    """
    self._check_layout(self.directory / str(step))
    saved = self.saved_config(step)
    diffs = config_differences(saved, self.config_dict)
    if diffs:
      raise ValueError(
          f'The workdir {self.workdir} holds checkpoints of a different configuration '
          f'({", ".join(RESUME_CRITICAL_SECTIONS)} must match to resume):\n  ' + '\n  '.join(diffs)
          + '\nUse a new --workdir, or pass the saved config (config.json) to resume.')

  def restore(self, abstract_state, step=None, manager=None):
    """Restores a state (newest readable checkpoint when `step` is None).

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct (with shardings) of the TrainState.
      step: a specific step, or None for the newest readable one.
      manager: internal; the best-FID manager for `restore_best`.

    Returns:
      (state, step), or (None, None) when there is no checkpoint.
    """
    manager = manager or self.manager
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    for i, s in enumerate(steps):
      self._check_layout(epath.Path(manager.directory) / str(s))
      try:
        restored = manager.restore(
            s, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state)))
        return restored['state'], s
      except Exception as e:  # noqa: BLE001 -- any read failure means "unusable checkpoint"
        if step is not None or i == len(steps) - 1:
          raise RuntimeError(f'Checkpoint {manager.directory}/{s} cannot be read ({e!r}).') from e
        logging.warning('Checkpoint %s/%d cannot be read (%r); falling back to step %d.',
                        manager.directory, s, e, steps[i + 1])
        self._set_aside(manager, s)
    return None, None

  def _check_layout(self, path):
    """Raises CheckpointLayoutError for a checkpoint of another layout (never set aside)."""
    found = stored_layout(path)
    if self.layout is None or found is None or found == self.layout:
      return
    note = LAYOUT_NOTES.get(found, f'layout {found}')
    raise CheckpointLayoutError(
        f'Checkpoint {path} has TrainState layout {found} ({note}); this version reads layout '
        f'{self.layout}. Nothing was changed. Resume or sample it with the version that wrote '
        'it (git checkout f207e45), or train into a new --workdir.')

  def _set_aside(self, manager, step):
    # Renamed, not deleted (the user may want to inspect it), and out of orbax's way: a later
    # save of the same step would otherwise be skipped as "already saved".
    if jax.process_index() == 0:
      src = epath.Path(manager.directory) / str(step)
      dst = epath.Path(manager.directory) / f'corrupt-{step}'
      if src.exists() and not dst.exists():
        src.rename(dst)
        logging.warning('Moved the unreadable checkpoint to %s.', dst)
    manager.reload()

  def restore_best(self, abstract_state):
    return self.restore(abstract_state, manager=self.best_manager)

  def close(self):
    self.manager.close()
    self.best_manager.close()


def abstract_like(tree):
  """ShapeDtypeStructs (keeping shardings) of a pytree of arrays: the target for restore."""
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, 'sharding', None)),
      tree)


def list_checkpoint_steps(workdir):
  """Finished checkpoint steps in `workdir/checkpoints` (ascending), without opening them."""
  d = os.path.join(workdir, 'checkpoints')
  if not os.path.isdir(d):
    return []
  return sorted(int(n) for n in os.listdir(d) if n.isdigit())
