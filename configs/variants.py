"""Config variants (`--config=configs/<file>.py:<variant>`), parsed in one place.

    def get_config(variant=''):
      config = ...
      return variants.apply(config, variant, {'small': apply_small}, 'cifar10_reacgan')

An unknown variant fails naming the file and every choice ('' is always the config itself), as a
ConfigError: main.py and `reacgan-jax` print it as one line (a ValueError printed config_flags'
traceback).
"""

from reacgan_jax.errors import ConfigError


def check(variant, choices, name):
  """Raises ConfigError (a ValueError) when `variant` is not one of `choices` (names)."""
  choices = tuple(choices)
  if variant not in choices:
    listed = ', '.join(repr(c) for c in choices)
    raise ConfigError(f'{name}: unknown variant {variant!r}; expected one of {listed} '
                      f'(--config=configs/{name}.py:<variant>)')


def apply(config, variant, variants, name):
  """`variants[variant](config)` for a named variant, the config unchanged for ''."""
  check(variant, ('', *variants), name)
  if variant:
    variants[variant](config)
  return config
