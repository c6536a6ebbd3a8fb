"""Config variants (`--config=configs/<file>.py:<variant>`), parsed in one place.

    def get_config(variant=''):
      config = ...
      return variants.apply(config, variant, {'small': apply_small}, 'cifar10_reacgan')

An unknown variant fails naming the file and every choice ('' is always the config itself).
"""


def check(variant, choices, name):
  """Raises ValueError when `variant` is not one of `choices` (an iterable of names)."""
  choices = tuple(choices)
  if variant not in choices:
    listed = ', '.join(repr(c) for c in choices)
    raise ValueError(f'{name}: unknown variant {variant!r}; expected one of {listed}')


def apply(config, variant, variants, name):
  """`variants[variant](config)` for a named variant, the config unchanged for ''."""
  check(variant, ('', *variants), name)
  if variant:
    variants[variant](config)
  return config
