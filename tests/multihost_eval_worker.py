"""The tiny sharded evaluation of tests/evaluation/test_on_mesh.py, and one process of its
multi-process run.

`evaluate_tiny(weights, mesh, cache_dir, record=None)` evaluates FID/IS/PRDC/KID of the tiny
config's (untrained) generator on `mesh` with the Inception weights file `weights`; the test
calls it on 1 and 8 devices. As a script it is one jax.distributed process:
  python tests/multihost_eval_worker.py OUT.json WEIGHTS CACHE [COORDINATOR NUM_PROCESSES ID]
run as a subprocess with its own XLA_FLAGS (fake device count) and JAX_PLATFORMS=cpu; it writes
the results and the process/device counts to OUT.json.
"""

import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from configs import tiny  # noqa: E402
from reacgan_jax import sampling  # noqa: E402
from reacgan_jax.evaluation import evaluator  # noqa: E402
from reacgan_jax.models import adapter as adapter_lib  # noqa: E402
from reacgan_jax.platform import parallel  # noqa: E402
from reacgan_jax.train import state as state_lib  # noqa: E402

NUM_SAMPLES = 50  # batches of 18, 18, 14: 18 divides neither 8 nor 4 devices: padded rows


def tiny_eval_config(weights):
  cfg = tiny.get_config()
  cfg.eval.metrics = 'fid,is,prdc,kid'
  cfg.eval.inception_weights = weights
  cfg.eval.batch_size = 18
  cfg.eval.is_splits = 2
  cfg.eval.prdc_k = 3
  cfg.eval.kid_subsets, cfg.eval.kid_subset_size = 10, 16
  return cfg


def reference_arrays(n=36, classes=10):
  """Smooth random 32x32 images (upsampled 4x4 noise) and labels: the reference split."""
  base = np.random.default_rng(4).integers(0, 256, (n, 4, 4, 3)).astype(np.uint8)
  return (np.repeat(np.repeat(base, 8, axis=1), 8, axis=2),
          np.arange(n, dtype=np.int32) % classes)


def evaluate_tiny(weights, mesh, cache_dir, record=None):
  """Results of Evaluator.evaluate on `mesh`; with a list `record`, every z given to the
  generator, every generated batch and every Inception output is appended to it."""
  cfg = tiny_eval_config(weights)
  adapter = adapter_lib.build(cfg, mesh)
  state = state_lib.init_state(cfg, adapter, mesh)
  sample_fn = sampling.Sampler(cfg, adapter, mesh).sample_fn(state)
  ev = evaluator.Evaluator(cfg, mesh=mesh, cache_dir=cache_dir, reference=reference_arrays())
  if record is not None:
    ev._inception()
    features, generate = ev._mesh_features, sample_fn

    def sample_fn(z, y):
      x = generate(z, y)
      record.append(('z', z))
      record.append(('images', x))
      return x

    def recorded_features(x):
      out = features(x)
      record.append(('pool', out['pool']))
      return out

    ev._mesh_features = recorded_features
  return ev.evaluate(sample_fn, NUM_SAMPLES, jax.random.PRNGKey(7))


def main(out, weights, cache_dir, coordinator='', num_processes='-1', process_id='-1'):
  parallel.maybe_initialize_distributed(coordinator, int(num_processes), int(process_id))
  results = evaluate_tiny(weights, parallel.create_mesh(), cache_dir)
  with open(out, 'w') as f:
    json.dump(dict(results, devices=jax.device_count(), processes=jax.process_count()), f)


if __name__ == '__main__':
  main(*sys.argv[1:])
