"""Checkpoints: save, resume bit-exactly, fall back past a corrupt one, keep the best FID.

Layout under the workdir::

  checkpoints/<step>/{state, config, meta}   newest `keep_checkpoints`, every checkpoint_every
  checkpoints/corrupt-<step>[-<n>]           unreadable ones, set aside (never deleted)
  checkpoints_best/<step>/{state, config, meta} the single best-FID one (when evaluation runs)
  config.json                                the config of the run, human-readable

Orbax writes each checkpoint to a temporary directory and renames it when complete, so a
crash (or SIGKILL) mid-save leaves the previous checkpoint as the newest finished one.
A checkpoint that is finished but unusable -- any of its items unreadable (truncated, deleted,
zero-length files after a power loss), arrays whose sha256 differs from the one recorded at save
time, or NaN/Inf values -- is skipped on restore with a warning naming the item or leaf, set
aside as corrupt-<step>[-<n>] and the previous one is used. On a read-only workdir it is
skipped without renaming. A checkpoint of another state layout (checkpoint_meta) is *not*
corrupt: restore raises CheckpointLayoutError and leaves it alone. A non-finite state is never
saved (save raises), so rotation never deletes a good checkpoint for a bad one.

Restoring passes the abstract target (StandardRestore(abstract_state)): without it optax's
namedtuple states come back as plain lists and the restored state has another pytree
structure than the one the jitted step was compiled for.
"""

import contextlib
import errno
import json
import logging as pylogging
import os
import shutil
import sys

import jax
import orbax.checkpoint as ocp
from absl import logging
from etils import epath

from reacgan_jax import errors
from reacgan_jax.platform import checkpoint_meta, paths

# Config sections that define what a checkpoint *is*; resuming with different values would
# silently train another model (or fail on shapes), so resume refuses.
RESUME_CRITICAL_SECTIONS = ('model', 'data', 'loss')
# Keys of those sections that say how the data is read, not which data or in what order: a
# resumed run may change them (issue 26). The data's content (source, files, splits, size,
# classes, crop, flips, limited-data subset) and order (the seed; the shuffle buffer of a
# streamed TFDS split) must stay.
HOW_READ_KEYS = frozenset({'data.cache_dir', 'data.prefetch', 'data.tfds_download',
                           'data.tfds_data_dir', 'data.tfds_manual_dir', 'data.download',
                           'data.download_url',
                           # which library and algorithm run the convolutions (equal to
                           # float32 rounding; 'auto' resolves per machine anyway, issue 28)
                           'model.conv_backend', 'model.stylegan2.winograd'})
# Values of a key that train alike and differ only in how a checkpoint is sampled: the train
# step's forwards are 'stored' for both (ops/spectral_norm.py options), so a run of either
# resumes or evaluates under the other (issue 25 made 'iterate' the default).
SAME_TRAINING = {'model.sn_eval': frozenset({'stored', 'iterate'})}
# Paths compared as the files they name (a relative and an absolute path to one file are equal).
PATH_KEYS = frozenset({'data.npz_path', 'data.folder', 'data.root', 'data.offline_npz'})
# data.shuffle_buffer orders only a streamed TFDS split; other sources are shuffled in memory.
IN_MEMORY_SOURCES = frozenset({'npz', 'folder', 'tiny_imagenet', 'cifar_binary', 'cifar10',
                               'cifar100'})
# Numbers the TrainState pytree: bump it whenever the state's structure changes. Layout 1 is
# the state of commit checkpoint_meta.LAYOUT1_LAST_COMMIT and earlier (no `meta` item); 2 kept
# one SN vector u per leaf and no EMA SN state (before issue 17's {'u', 'v'} and EmaState.sn).
STATE_LAYOUT = 3
ITEMS = ('state', 'config', 'meta')


def config_to_dict(config):
  """ConfigDict -> plain JSON-able dict."""
  return json.loads(config.to_json_best_effort())


def _resolved(path: str) -> str:
  """`path` as the data pipeline finds it (as given, else under the checkout), made real."""
  p = os.path.expanduser(path)
  root = paths.checkout_root()
  if not os.path.isabs(p) and not os.path.exists(p) and root is not None:
    p = os.path.join(root, p)
  return os.path.realpath(p)


def _disk_full(e: BaseException) -> bool:
  """Whether `e` (or what caused it) is ENOSPC; orbax's tensorstore writes report it as a
  ValueError 'RESOURCE_EXHAUSTED: ... No space left on device [os_error_code='28']'."""
  seen = set()
  while e is not None and id(e) not in seen:
    seen.add(id(e))
    if isinstance(e, OSError) and e.errno == errno.ENOSPC:
      return True
    if 'No space left on device' in str(e):
      return True
    e = e.__cause__ or e.__context__
  return False


def _late_write_callbacks_dropped(previous):
  """sys.unraisablehook for a save: when a write fails, tensorstore's outstanding writes still
  call back into orbax's event loop, closed by then, and each prints 'RuntimeError: Event loop
  is closed' as an unraisable exception (hundreds for a train state). Those, and only those,
  are dropped; anything else goes to `previous`."""

  def hook(unraisable):
    e = unraisable.exc_value
    if isinstance(e, RuntimeError) and str(e) == 'Event loop is closed':
      return
    previous(unraisable)

  return hook


class _DropDiskFull(pylogging.Filter):
  def filter(self, record):
    exc = record.exc_info[1] if record.exc_info else None
    return not (_disk_full(exc) or 'No space left on device' in record.getMessage())


def _same_path(a, b) -> bool:
  if not (isinstance(a, str) and isinstance(b, str)) or not a or not b:
    return a == b
  ra, rb = _resolved(a), _resolved(b)
  try:
    return ra == rb or os.path.samefile(ra, rb)
  except OSError:
    return False


def _ignored(key, saved, current) -> bool:
  if key in HOW_READ_KEYS:
    return True
  if key in SAME_TRAINING:
    section, name = key.split('.')
    values = {c.get(section, {}).get(name) for c in (saved, current)}
    return values <= SAME_TRAINING[key]
  if key == 'data.shuffle_buffer':
    sources = {c.get('data', {}).get('source') for c in (saved, current)}
    loads = {c.get('data', {}).get('load') for c in (saved, current)}
    return sources <= IN_MEMORY_SOURCES or loads == {'memory'}
  return False


def config_differences(saved, current, sections=RESUME_CRITICAL_SECTIONS):
  """Dotted keys whose values differ between two config dicts, within `sections`.

  Keys that only say how the data is read (HOW_READ_KEYS, the shuffle buffer of in-memory
  sources) are not differences; paths (PATH_KEYS) differ only when they name different files.
  """
  diffs = []

  def walk(a, b, prefix):
    for k in sorted(set(a) | set(b)):
      va, vb = a.get(k, '<missing>'), b.get(k, '<missing>')
      key = f'{prefix}{k}'
      if isinstance(va, dict) and isinstance(vb, dict):
        walk(va, vb, f'{key}.')
      elif _ignored(key, saved, current) or (key in PATH_KEYS and _same_path(va, vb)):
        continue
      elif va != vb:
        diffs.append(f'{key}: saved {va!r}, now {vb!r}')

  for s in sections:
    walk(saved.get(s, {}), current.get(s, {}), f'{s}.')
  return diffs


class _Unusable(Exception):
  """A checkpoint that is finished but cannot be used (unreadable item, digest, NaN/Inf)."""


def _item_names(path) -> tuple:
  """Items orbax recorded in <step>/_CHECKPOINT_METADATA (() when unreadable)."""
  try:
    return tuple(json.loads((path / '_CHECKPOINT_METADATA').read_text())['item_handlers'])
  except (OSError, ValueError, KeyError, TypeError):
    return ()


def check_keep(keep):
  """keep_checkpoints must keep at least one: orbax's max_to_keep=0 deletes every checkpoint."""
  if isinstance(keep, bool) or not isinstance(keep, int) or keep < 1:
    raise errors.ConfigError(
        f'config.train.keep_checkpoints={keep!r}: must be an integer >= 1 (the newest checkpoints '
        'kept; 0 would delete every checkpoint right after saving it).')
  return keep


class Checkpointer:
  """Wraps two orbax CheckpointManagers (newest-N and best-FID) for one workdir.

  Every process of a multi-host run must create it and call save/restore (orbax
  coordinates the writes; arrays are global jax.Arrays).

  Args:
    workdir: the run's directory. config: its ConfigDict.
    keep: newest checkpoints kept (default config.train.keep_checkpoints, >= 1).
    layout: the state layout this code writes and reads (STATE_LAYOUT).
  """

  def __init__(self, workdir, config, *, keep=None, layout=STATE_LAYOUT):
    # Orbax's tensorstore backend requires absolute paths (--workdir=runs/x is relative).
    self.workdir = epath.Path(os.path.abspath(workdir))
    self.config_dict = config_to_dict(config)
    self.layout = int(layout)
    keep = check_keep(config.train.keep_checkpoints if keep is None else keep)
    # Synchronous saves: the trainer donates the state buffers to the next step, so an async
    # save still reading them would race; checkpoints of these models take well under a second.
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                           enable_async_checkpointing=False)
    self.directory = self.workdir / 'checkpoints'
    self.manager = ocp.CheckpointManager(self.directory, options=options, item_names=ITEMS)
    best_options = ocp.CheckpointManagerOptions(
        max_to_keep=1, create=True, enable_async_checkpointing=False,
        best_fn=lambda m: m['fid'], best_mode='min', keep_checkpoints_without_metrics=False)
    self.best_directory = self.workdir / 'checkpoints_best'
    self.best_manager = ocp.CheckpointManager(self.best_directory, options=best_options,
                                              item_names=ITEMS)

  def write_config(self):
    """workdir/config.json for humans (each checkpoint also stores its config)."""
    if jax.process_index() == 0:
      self.workdir.mkdir(parents=True, exist_ok=True)
      path = self.workdir / 'config.json'
      tmp = self.workdir / f'config.json.tmp-{os.getpid()}'
      tmp.write_text(json.dumps(self.config_dict, indent=2))
      os.replace(tmp, path)  # a crash mid-write never leaves a truncated config.json

  def _args(self, state):
    digests, bad = checkpoint_meta.digests_and_nonfinite(state)
    if bad:
      raise FloatingPointError(f'Not saving a state with NaN/Inf in {", ".join(bad[:5])}'
                               f'{" ..." if len(bad) > 5 else ""}.')
    return ocp.args.Composite(state=ocp.args.StandardSave(state),
                              config=ocp.args.JsonSave(self.config_dict),
                              meta=ocp.args.JsonSave(checkpoint_meta.make_meta(self.layout,
                                                                               digests)))

  def save(self, step, state):
    """Saves `state` as checkpoint `step` (blocking); returns its path.

    Raises FloatingPointError (and saves nothing) when a floating leaf holds NaN/Inf, so the
    returned path always names a finite checkpoint. A step that is already saved is kept.
    Raises DiskFullError when the disk fills up while writing: orbax's partial folder is
    removed, the checkpoints written before stay as they were.
    """
    step = int(step)
    if step not in self.manager.all_steps():
      with self._disk_full_is_one_line(self.manager, self.directory, step):
        self.manager.save(step, args=self._args(state), force=True)
        self.manager.wait_until_finished()
    return self.path(step)

  def save_best(self, step, state, metrics):
    """Offers `state` to the best-FID manager; kept only if its FID is the lowest so far."""
    if 'fid' not in metrics:
      return
    step = int(step)
    if step not in self.best_manager.all_steps():
      with self._disk_full_is_one_line(self.best_manager, self.best_directory, step):
        self.best_manager.save(step, args=self._args(state),
                               metrics={'fid': float(metrics['fid'])}, force=True)
        self.best_manager.wait_until_finished()

  @contextlib.contextmanager
  def _disk_full_is_one_line(self, manager, directory, step):
    # orbax logs each failed write's traceback (absl; asyncio's "Task exception was never
    # retrieved" at exit) and tensorstore's late callbacks print unraisable errors; on a full
    # disk the one line below says it all, so those are dropped: while saving, and after a
    # full disk for good (they keep arriving after the save raised). Other errors keep theirs.
    quiet = _DropDiskFull()
    loggers = [pylogging.getLogger(name) for name in ('absl', 'asyncio')]
    for logger in loggers:
      logger.addFilter(quiet)
    unraisable = sys.unraisablehook
    sys.unraisablehook = _late_write_callbacks_dropped(unraisable)
    full = False
    try:
      yield
    except Exception as e:
      if not _disk_full(e):
        raise
      full = True
      for partial in directory.glob(f'{step}.orbax-checkpoint-tmp*'):
        shutil.rmtree(partial, ignore_errors=True)
      kept = manager.all_steps()
      newest = (f'checkpoint {max(kept)} (the newest) is intact' if kept
                else 'no checkpoint was written before')
      raise errors.DiskFullError(
          f'No space left on the disk of {directory} while writing checkpoint {step}: its '
          f'partial files were removed; {newest}. Free space there (or use a --workdir on '
          'another disk) and run the command again.') from e
    finally:
      if not full:
        sys.unraisablehook = unraisable
        for logger in loggers:
          logger.removeFilter(quiet)

  def path(self, step):
    return str(self.directory / str(step))

  def latest_step(self):
    return self.manager.latest_step()

  def all_steps(self):
    return sorted(self.manager.all_steps())

  def saved_config(self, step, manager=None):
    manager = manager or self.manager
    return manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']

  def check_config(self, step, *, resume=True):
    """Raises ConfigError when checkpoint `step` was written under another model/data/loss.

    resume=True (training) also compares config.seed: a resumed run with another seed would
    draw other noise than the run it continues. When the config item of `step` is unreadable,
    the next older readable one is checked (restore then falls back past `step`).
    """
    candidates = [s for s in sorted(self.manager.all_steps(), reverse=True) if s <= step]
    for s in candidates or [step]:
      try:
        # Another state layout is said first: its config differs too, but "different
        # configuration" would send the user to configs/from_workdir.py, which cannot help.
        self._read_meta(self.manager, s)
        saved = self.saved_config(s)
        break
      except errors.CheckpointLayoutError:
        raise
      except Exception as e:  # noqa: BLE001 -- unusable: restore falls back past it
        logging.warning('Checkpoint %s/%d cannot be checked (%s); checking the previous '
                        'checkpoint.', self.directory, s, e)
    else:
      return
    self._compare_config(saved, s, resume=resume)

  def _compare_config(self, saved, step, *, resume):
    diffs = config_differences(saved, self.config_dict)
    hint = (f'Use a new --workdir, or resume with the saved config: '
            f'--config=configs/from_workdir.py:{self.workdir}')
    if diffs:
      raise errors.ConfigError(
          f'The workdir {self.workdir} holds checkpoints of a different configuration '
          f'({", ".join(RESUME_CRITICAL_SECTIONS)} must match to resume; checkpoint {step}):\n  '
          + '\n  '.join(diffs) + f'\n{hint}')
    if resume and 'seed' in saved and saved['seed'] != self.config_dict.get('seed'):
      raise errors.ConfigError(
          f'config.seed={self.config_dict.get("seed")!r}, but the run in {self.workdir} was '
          f'started with seed {saved["seed"]!r} (checkpoint {step}): a resumed run must keep its '
          f'seed, or it continues with other noise and data order. Drop --config.seed (or pass '
          f'--config.seed={saved["seed"]}), or use a new --workdir for another seed.')

  def _read_meta(self, manager, step):
    """The meta item of `step`; CheckpointLayoutError when it has none or another layout."""
    path = epath.Path(manager.directory) / str(step)
    if not (path / 'meta').exists():
      items = _item_names(path)
      if not items:  # orbax's own record gone too: an interrupted copy, not an old layout
        raise _Unusable('its meta item and orbax\'s _CHECKPOINT_METADATA are missing or '
                        'unreadable (an interrupted copy?)')
      if 'meta' in items:  # written with a meta item that is gone: damaged
        raise _Unusable('its meta item is missing')
      raise checkpoint_meta.layout_error(path, None, self.layout)
    try:
      meta = manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))['meta']
    except Exception as e:  # noqa: BLE001
      raise _Unusable(f'its meta item is unreadable: {type(e).__name__}: {e}') from e
    if not isinstance(meta, dict) or not isinstance(meta.get('digests'), dict):
      raise _Unusable(f'its meta item is not a checkpoint description: {str(meta)[:80]!r}')
    if meta.get('layout') != self.layout:
      raise checkpoint_meta.layout_error(path, meta.get('layout'), self.layout,
                                         meta.get('written_by', ''))
    return meta

  def _restore_one(self, manager, step, abstract_state):
    """State of checkpoint `step`, verified; raises CheckpointLayoutError / ConfigError (user
    errors, never set aside) or any other exception for an unusable checkpoint."""
    meta = self._read_meta(manager, step)
    restored = {}
    for item, arg in (('config', ocp.args.JsonRestore()),
                      ('state', ocp.args.StandardRestore(abstract_state))):
      try:
        restored[item] = manager.restore(step, args=ocp.args.Composite(**{item: arg}))[item]
      except Exception as e:  # noqa: BLE001
        raise _Unusable(f'its {item} item is unreadable: {type(e).__name__}: {e}') from e
    if not isinstance(restored['config'], dict):
      raise _Unusable(f'its config item is not a config: {str(restored["config"])[:80]!r}')
    self._compare_config(restored['config'], step, resume=False)
    problems = checkpoint_meta.verify(restored['state'], meta['digests'])
    if problems:
      raise _Unusable('; '.join(problems[:5]) + (' ...' if len(problems) > 5 else ''))
    return restored['state']

  def restore(self, abstract_state, step=None, manager=None):
    """Restores a state (newest usable checkpoint when `step` is None).

    Args:
      abstract_state: pytree of jax.ShapeDtypeStruct (with shardings) of the TrainState.
      step: a specific step, or None for the newest usable one.
      manager: internal; the best-FID manager for `restore_best`.

    Returns:
      (state, step), or (None, None) when there is no checkpoint. The state is bit-exactly the
      one saved (sha256 of every array checked) and finite.

    Raises:
      CheckpointLayoutError for a checkpoint of another state layout (left in place);
      ConfigError when it was written under another model/data/loss; CheckpointReadError when
      `step` (or, with step=None, every checkpoint) is unusable.
    """
    manager = manager or self.manager
    steps = [step] if step is not None else sorted(manager.all_steps(), reverse=True)
    for i, s in enumerate(steps):
      try:
        return self._restore_one(manager, s, abstract_state), s
      except _Unusable as e:
        if step is not None or i == len(steps) - 1:
          raise checkpoint_meta.CheckpointReadError(
              f'Checkpoint {manager.directory}/{s} cannot be read: {e}. '
              + ('It was the last one left; nothing was deleted: inspect the directory, or '
                 'start a new --workdir.' if step is None else 'Restore another step.')) from e
        logging.warning('Checkpoint %s/%d cannot be read: %s; falling back to step %d.',
                        manager.directory, s, e, steps[i + 1])
        self._set_aside(manager, s)
    return None, None

  def _set_aside(self, manager, step):
    # Renamed, not deleted (the user may want to inspect it), and out of orbax's way: a later
    # save of the same step would otherwise be skipped as "already saved". corrupt-<step> may
    # exist from an earlier failure of the same step: then corrupt-<step>-<n>.
    if jax.process_index() == 0:
      src = epath.Path(manager.directory) / str(step)
      dst, n = epath.Path(manager.directory) / f'corrupt-{step}', 1
      while dst.exists():
        dst, n = epath.Path(manager.directory) / f'corrupt-{step}-{n}', n + 1
      try:
        if src.exists():
          os.rename(src, dst)
          logging.warning('Moved the unusable checkpoint to %s.', dst)
      except OSError as e:  # read-only workdir: fall back without renaming
        logging.warning('Could not move the unusable checkpoint %s aside (%s); using an older '
                        'one without renaming it. A new save of step %d will need it removed.',
                        src, e, step)
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
