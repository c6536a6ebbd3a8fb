"""`python -m reacgan_jax`: the `reacgan-jax` command (reacgan_jax/cli)."""

import sys

from reacgan_jax import cli

if __name__ == '__main__':
  sys.exit(cli.main())
