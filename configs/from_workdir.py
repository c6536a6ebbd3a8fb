"""The config a workdir was trained with: `--config=configs/from_workdir.py:WORKDIR`.

Rebuilds the ConfigDict from WORKDIR/config.json (written by every run; when it is missing, the
config stored in the newest checkpoint is read). Values are laid over configs/default.py so
every key keeps its default's type (an int stays an int, a tuple a tuple) and later
`--config.<key>=` overrides are type-checked as usual; keys the default does not have (added by
an experiment config) are kept as saved. Resume or evaluate a run exactly as it was configured:

  python main.py --config=configs/from_workdir.py:runs/x --workdir=runs/x
  python main.py --config=configs/from_workdir.py:runs/x --workdir=runs/x --mode=eval
"""

import json
import os

import ml_collections

from configs import default
from reacgan_jax.errors import ConfigError


def _saved_dict(workdir: str) -> tuple[dict, str]:
  path = os.path.join(workdir, 'config.json')
  candidates = [path]
  ckpts = os.path.join(workdir, 'checkpoints')
  if os.path.isdir(ckpts):
    steps = sorted((int(n) for n in os.listdir(ckpts) if n.isdigit()), reverse=True)
    candidates += [os.path.join(ckpts, str(s), 'config', 'metadata') for s in steps]
  for p in candidates:
    try:
      with open(p) as f:
        saved = json.load(f)
    except (OSError, ValueError):
      continue
    if isinstance(saved, dict) and saved:
      return saved, p
  raise ConfigError(f'--config=configs/from_workdir.py:{workdir}: no readable config.json in '
                    f'{os.path.abspath(workdir)} (nor a config in its checkpoints); pass the '
                    'workdir of a run, or its config file (e.g. configs/cifar10_reacgan.py).')


def _typed(value, like, key: str):
  """`value` (from JSON) as the type of the default `like`."""
  if isinstance(like, bool) or like is None:
    return value
  if isinstance(like, int) and isinstance(value, float) and value.is_integer():
    return int(value)
  if isinstance(like, float) and isinstance(value, int) and not isinstance(value, bool):
    return float(value)
  if isinstance(like, tuple) and isinstance(value, list):
    return tuple(value)
  if not isinstance(value, type(like)):
    raise ConfigError(f'config.{key}={value!r} in the saved config: expected a '
                      f'{type(like).__name__} like the default {like!r}.')
  return value


def _lay_over(config: ml_collections.ConfigDict, saved: dict, prefix: str = ''):
  for k, v in saved.items():
    key = f'{prefix}{k}'
    if k in config and isinstance(config[k], ml_collections.ConfigDict):
      if not isinstance(v, dict):
        raise ConfigError(f'config.{key} in the saved config is {v!r}, expected a section.')
      _lay_over(config[k], v, f'{key}.')
    elif k in config:
      config[k] = _typed(v, config[k], key)
    else:
      config[k] = ml_collections.ConfigDict(v) if isinstance(v, dict) else v


def get_config(workdir: str = ''):
  if not workdir:
    raise ConfigError('configs/from_workdir.py needs the workdir after a colon: '
                      '--config=configs/from_workdir.py:WORKDIR')
  saved, _ = _saved_dict(workdir)
  config = default.get_config()
  _lay_over(config, saved)
  return config
