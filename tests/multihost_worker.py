"""One process of the multi-host test (tests/platform/test_parallel.py::test_two_process_run...).

Run as a subprocess with its own XLA_FLAGS (fake device count) and JAX_PLATFORMS=cpu:
  python tests/multihost_worker.py OUT.npz WORKDIR NPZ STEPS [COORDINATOR NUM_PROCESSES PROCESS_ID]
Trains the tiny config (eval off) and writes this process's final params to OUT.npz.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import traverse_util  # noqa: E402


def main(out, workdir, npz, steps, coordinator='', num_processes='-1', process_id='-1'):
  from configs import tiny  # noqa: PLC0415
  from reacgan_jax.platform import parallel  # noqa: PLC0415
  from reacgan_jax.train import loop as train

  parallel.maybe_initialize_distributed(coordinator, int(num_processes), int(process_id))
  config = tiny.get_config()
  config.data.npz_path, config.data.npz_layout = npz, 'nhwc'
  config.train.steps = int(steps)
  config.train.eval_every = -1
  config.train.sample_every = 0
  config.train.checkpoint_every = 0
  # Adam's first steps are ~lr * sign(g) with eps=1e-6: float-noise gradients (a conv bias
  # before BN has true gradient 0) would turn into +-lr updates whose sign depends on the
  # reduction order across processes. eps=1 keeps updates ~lr * g, so the comparison with the
  # single-process run measures gradient agreement (see test_train's 1-vs-8-device test).
  config.optim.eps, config.optim.g_lr, config.optim.d_lr = 1.0, 0.01, 0.01
  # One D update and no attention: three processes compile this on 2 cores (CI budget, issue
  # 24); the cross-process collectives (BN statistics, the global-batch D2D-CE, gradient means)
  # are all still in the step.
  config.train.d_updates_per_step = 1
  config.model.g_attn_block = config.model.d_attn_block = 0
  state = train.train_and_evaluate(config, workdir)
  host = parallel.to_host({'g': state.g.params, 'd': state.d.params, 'ema': state.ema.params})
  flat = traverse_util.flatten_dict(host, sep='/')
  np.savez(out, devices=jax.device_count(), processes=jax.process_count(), **flat)


if __name__ == '__main__':
  main(*sys.argv[1:])
