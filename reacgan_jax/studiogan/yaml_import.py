"""StudioGAN YAML config -> a reacgan-jax config file (and back, for checking).

  python -m reacgan_jax.from_studiogan CONFIG.yaml [--out=configs/my_run.py]

prints (or writes) a config file that starts from `configs/default.py` and sets every key the
YAML maps to, and lists every StudioGAN key it maps and every one it cannot, by name. Omitted
YAML keys take StudioGAN's defaults (PyTorch-StudioGAN src/config.py), as StudioGAN itself does;
the key table is `reacgan_jax.studiogan.keys`. `to_studiogan(config)` maps a config back (the
test round-trips StudioGAN's own CIFAR10 YAMLs through both: the BigGAN family and StyleGAN2*.yaml).
"""

import dataclasses
import importlib.util
import os
import sys
import textwrap

import ml_collections
import yaml
from absl import app, flags

from reacgan_jax import errors, validate
from reacgan_jax.platform import dicts, paths
from reacgan_jax.studiogan import keys as keys

_OUT = flags.DEFINE_string('out', '', 'Write the config file here instead of printing it.')


@dataclasses.dataclass
class Conversion:
  """overrides: our dotted key -> value; mapped / unmapped: StudioGAN keys (unmapped with why)."""
  overrides: dict
  mapped: list
  unmapped: list  # (StudioGAN key, value, reason)


def load_yaml(path: str) -> dict:
  """Reads a StudioGAN YAML (sections of key: value) with yaml.safe_load."""
  if not os.path.isfile(path):
    what = 'is a directory, not a file' if os.path.isdir(path) else 'no such file'
    raise errors.MissingFileError(f'{path}: {what} (a StudioGAN YAML, e.g. PyTorch-StudioGAN'
                                  "'s src/configs/CIFAR10/ReACGAN.yaml)")
  try:
    with open(path, encoding='utf-8') as f:
      cfg = yaml.safe_load(f)
  except (yaml.YAMLError, UnicodeDecodeError) as e:
    raise errors.InputError(f'{path}: not readable as YAML ({" ".join(str(e).split())})') from e
  if not isinstance(cfg, dict) or not all(isinstance(v, dict) for v in cfg.values()):
    raise errors.InputError(f'{path}: expected a StudioGAN config (top-level sections DATA, '
                            'MODEL, LOSS, OPTIMIZATION, ... each a mapping of key: value)')
  return cfg


def merged(yaml_cfg: dict) -> dict:
  """StudioGAN's defaults overwritten by the YAML, as 'SECTION.key' (like _overwrite_cfgs)."""
  flat = {f'{s}.{k}': v for s, sec in keys.DEFAULTS.items() for k, v in sec.items()}
  for section, values in yaml_cfg.items():
    for k, v in values.items():
      flat[f'{section}.{k}'] = v
  return flat


def convert(yaml_cfg: dict) -> Conversion:
  """Maps a StudioGAN YAML dict onto reacgan-jax config overrides (pure; nothing is read)."""
  flat = merged(yaml_cfg)
  named = [f'{s}.{k}' for s, sec in yaml_cfg.items() for k in sec]
  overrides = dict(keys.IMPLIED)
  mapped, unmapped = set(), {}
  for rule in keys.RULES:
    try:
      overrides.update(rule.fwd(flat))
      mapped.update(rule.sg)
    except keys.Unmappable as e:
      for k in rule.sg:
        unmapped.setdefault(k, str(e))
  for k, value in keys.FIXED.items():
    if flat[k] == value:
      mapped.add(k)
    else:
      unmapped[k] = keys.FIXED_WHY.get(k, f'reacgan-jax implements {k}={value!r} only')
  for k in named:
    if k not in mapped and k not in unmapped:
      unmapped[k] = 'no reacgan-jax equivalent'
  mapped -= set(unmapped)
  order = named + [k for k in flat if k not in named]
  return Conversion(overrides, [k for k in order if k in mapped],
                    [(k, flat.get(k), unmapped[k]) for k in order if k in unmapped])


def apply(overrides: dict, config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """Sets each dotted key on (a copy of) `config`; ints stay ints where the key is a float."""
  config = ml_collections.ConfigDict(config.to_dict())
  for dotted, value in overrides.items():
    *path, name = dotted.split('.')
    node = config
    for part in path:
      node = node[part]
    old = node[name]
    if isinstance(old, float) and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    node[name] = value
  return config


def to_studiogan(config) -> tuple[dict, list]:
  """Our config -> ({'SECTION.key': value} for every mapped StudioGAN key, [(rule keys, why)])."""
  flat = dicts.flatten(config.to_dict())
  out, missing = {}, []
  for rule in keys.RULES:
    try:
      out.update(rule.bwd(flat))
    except keys.Unmappable as e:
      missing.append((rule.sg, str(e)))
  for k, v in keys.FIXED.items():
    out.setdefault(k, v)
  return out, missing


def render(conv: Conversion, source: str) -> str:
  """The config file text: a docstring listing mapped / unmapped keys, then the overrides."""
  mapped = f'Mapped StudioGAN keys ({len(conv.mapped)}): ' + ', '.join(conv.mapped) + '.'
  lines = [f'"""Converted from StudioGAN {source} by reacgan_jax.studiogan.yaml_import.', '']
  lines += textwrap.wrap(mapped, 96)
  if conv.unmapped:
    lines += ['', f'NOT mapped ({len(conv.unmapped)}; reacgan-jax keeps its own behaviour):']
    for k, v, why in conv.unmapped:
      lines += textwrap.wrap(f'{k}={v!r}: {why}', 96, initial_indent='  ', subsequent_indent='    ')
  lines += ['"""', '', 'from configs import default', '', '', 'def get_config():',
            '  config = default.get_config()']
  lines += [f'  config.{k} = {v!r}' for k, v in conv.overrides.items()]
  lines += ['  return config', '']
  return '\n'.join(lines)


def report(conv: Conversion) -> str:
  """Human-readable summary of what was and was not mapped."""
  lines = [f'mapped ({len(conv.mapped)}): ' + ', '.join(conv.mapped)]
  lines += [f'NOT mapped: {k}={v!r} ({why})' for k, v, why in conv.unmapped]
  return '\n'.join(lines)


def default_config() -> ml_collections.ConfigDict:
  """configs/default.py's get_config(), read by path: what a written config starts from."""
  path = paths.builtin_configs_dir() / 'default.py'
  spec = importlib.util.spec_from_file_location('_reacgan_jax_default_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def check(conv: Conversion, source: str) -> None:
  """Raises ConfigError when the config the file would hold is one training refuses."""
  try:
    validate.validate_config(apply(conv.overrides, default_config()), mode='train')
  except errors.ConfigError as e:
    raise errors.ConfigError(f'{source}: the converted config would be refused by training '
                             f'({e}); fix that value in the YAML. Nothing was written.') from e


def check_out(path: str) -> None:
  """Refuses a folder, a missing folder, and a file that is not an earlier output of this
  command."""
  if os.path.isdir(path):
    raise errors.InputError(f'--out={path} is a directory: name the config file to write '
                            '(e.g. --out=configs/my_run.py).')
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise errors.InputError(f'--out={path}: the folder {parent} does not exist (nothing was '
                            'written); create it or pass another --out.')
  if not os.path.exists(path):
    return
  with open(path, 'rb') as f:
    head = f.read(64)
  if not head.startswith(b'"""Converted from StudioGAN '):
    raise errors.InputError(f'--out={path} exists and was not written by this command: not '
                            'overwriting it (nothing was written); pass a new --out.')


def main(argv):
  if len(argv) != 2:
    raise app.UsageError('usage: python -m reacgan_jax.studiogan.yaml_import CONFIG.yaml '
                         '[--out=FILE]')
  with errors.exit_on_user_error('import-studiogan-yaml'):
    if _OUT.value:
      check_out(_OUT.value)
    conv = convert(load_yaml(argv[1]))
    check(conv, argv[1])
  text = render(conv, argv[1])
  if _OUT.value:
    with open(_OUT.value, 'w') as f:
      f.write(text)
    sys.stderr.write(f'wrote {_OUT.value}\n')
  else:
    sys.stdout.write(text)
  sys.stderr.write(report(conv) + '\n')


def run(argv=None):
  """The command: `python -m reacgan_jax.studiogan.yaml_import CONFIG.yaml [--out=FILE]`."""
  app.run(main, argv, flags_parser=errors.parse_flags)  # one-line flag errors, --help exits 0


if __name__ == '__main__':
  run()
