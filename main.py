"""reacgan-jax command line: train, evaluate or sample a class-conditional GAN.

  python main.py --config=configs/cifar10_reacgan.py:small --workdir=runs/x
  python main.py --config=configs/cifar10_reacgan.py:small --workdir=runs/x --mode=eval
  python main.py --config=configs/tiny.py --config.train.steps=200 --workdir=runs/t --mode=sample

The same as `reacgan-jax train|eval|sample` (reacgan_jax/cli/run.py), which an install puts on
the PATH; --config also takes a built-in config by name (--config=cifar10_reacgan:small).
Re-running with the same --workdir resumes from its newest readable checkpoint. Multi-host: the
same command on every host with --coordinator_address=HOST:PORT --num_processes=N
--process_id=i (auto-detected on TPU pods and SLURM).
"""

import sys

from reacgan_jax import errors

errors.latch_ctrl_c()  # a Ctrl-C during the imports is never dropped (errors.py says why)
try:
  from reacgan_jax.cli import run
  errors.raise_if_interrupted()
except KeyboardInterrupt:  # Ctrl-C during the imports (jax, the trainer): one line, the shell's 130
  sys.stderr.write('main.py: interrupted (Ctrl-C) while starting; nothing was written.\n')
  sys.exit(130)

if __name__ == '__main__':
  run.run()
