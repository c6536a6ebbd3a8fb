"""Cost of a lazy loss term inside the one compiled step (issue 13), measured in one run.

Three jitted steps of the same config (configs/tiny.py, one D update, no attention, batch 8 by
default): no extra term; an interval-k D term (R1-like: its own D forward and a gradient through
it) on a step where it is inactive (lax.cond skips it); the same step where it is active.
Interleaved repeats, median wall times, ratios printed. A step whose term is inactive should cost
what the plain step costs (the cond's untaken branch runs nothing).

  python benchmarks/lazy_terms.py [--repeats 20] [--batch 8]
"""

import argparse
import os
import statistics
import sys
import time

from reacgan_jax.losses import terms

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, _REPO)
sys.path.insert(0, os.path.join(_REPO, 'tests'))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--repeats', type=int, default=20)
  parser.add_argument('--batch', type=int, default=8)
  args = parser.parse_args()
  import jax  # noqa: PLC0415
  import jax.numpy as jnp  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from configs import tiny  # noqa: PLC0415
  from reacgan_jax.losses import registry as objectives
  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import state, step

  def r1_like(ctx):
    def d_sum(x):
      return jnp.sum(ctx.apply(x, ctx.labels).adv)
    g = jax.grad(d_sum)(ctx.real)
    return jnp.mean(jnp.sum(jnp.square(g), axis=(1, 2, 3))) / 2

  objectives.TERMS['bench_r1'] = lambda config, which: terms.Term(
      'bench_r1', r1_like, weight=0.01, interval=4)

  def build(with_term):
    config = tiny.get_config()
    config.train.batch_size, config.train.d_updates_per_step = args.batch, 1
    config.model.g_attn_block = config.model.d_attn_block = 0
    config.loss.d_terms = 'bench_r1' if with_term else ''
    mesh = parallel.create_mesh(jax.devices()[:1])
    model = adapter.build(config, mesh)
    fn = jax.jit(step.make_train_step(config, model))
    return config, state.init_state(config, model, mesh), fn

  rng = np.random.default_rng(0)
  cases = {}
  for name, with_term, at in (('plain', False, 1), ('term inactive', True, 1),
                              ('term active', True, 0)):
    config, s, fn = build(with_term)
    s = s.replace(step=jnp.asarray(at, jnp.int32))  # step index: active when % 4 == 0
    b, size = config.train.batch_size, config.data.image_size
    batch = {'image': jnp.asarray(rng.uniform(-1, 1, (1, b, size, size, 3)), jnp.float32),
             'label': jnp.asarray(rng.integers(0, 10, (1, b)), jnp.int32)}
    key = jax.random.PRNGKey(0)
    t0 = time.perf_counter()
    jax.block_until_ready(fn(s, batch, key))
    cases[name] = dict(fn=fn, s=s, batch=batch, key=key, compile_s=time.perf_counter() - t0,
                       times=[])
  for _ in range(args.repeats):  # interleaved: load changes hit every case alike
    for c in cases.values():
      t0 = time.perf_counter()
      jax.block_until_ready(c['fn'](c['s'], c['batch'], c['key']))
      c['times'].append(time.perf_counter() - t0)
  base = statistics.median(cases['plain']['times'])
  print(f'load average {os.getloadavg()[0]:.1f}; batch {args.batch}; median of {args.repeats}')
  for name, c in cases.items():
    med = statistics.median(c['times'])
    print(f'{name:14s} step {med * 1e3:8.1f} ms  ({med / base:.2f}x plain)  '
          f'first call {c["compile_s"]:.1f} s')


if __name__ == '__main__':
  main()
