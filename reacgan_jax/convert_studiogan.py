"""Old name of `python -m reacgan_jax.studiogan.convert` (StudioGAN checkpoints into a workdir).

Kept so existing scripts keep working: `python -m reacgan_jax.convert_studiogan ...` runs the same
command and prints its new name; importing this module for its functions fails with a
message naming the new module.
"""

import sys

from reacgan_jax.studiogan import convert

MOVED_TO = 'reacgan_jax.studiogan.convert'


def __getattr__(name):
  raise AttributeError(f'reacgan_jax.convert_studiogan moved to {MOVED_TO}: import {name} '
                       'from there')


if __name__ == '__main__':
  print(f'note: reacgan_jax.convert_studiogan is now {MOVED_TO} (same arguments)', file=sys.stderr)
  convert.run()
