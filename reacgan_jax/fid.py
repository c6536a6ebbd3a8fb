"""`python -m reacgan_jax.fid PATH_A PATH_B`: FID between two image sets (see evaluation/fid.py)."""

from reacgan_jax.evaluation.fid import cli

if __name__ == '__main__':
  cli()
