"""Experiment configs: each module's `get_config(variant='')` returns a ConfigDict.

`experiment_configs()` names the modules that are configs a user can pass as --config without
an argument (not the variant parser, not from_workdir.py, which takes a workdir).
"""

import pathlib

NOT_CONFIGS = ('__init__', 'variants', 'from_workdir')


def experiment_configs() -> list[str]:
  """Module names under configs/ that are plain experiment configs, sorted."""
  here = pathlib.Path(__file__).resolve().parent
  return sorted(p.stem for p in here.glob('*.py') if p.stem not in NOT_CONFIGS)
