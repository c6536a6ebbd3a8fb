"""Records what the trainer does, so a refactor can prove it changed nothing (issue 13).

For every backbone x cond_method on configs/tiny.py (plus DiffAugment and per-device-BN
variants) it runs 20 train steps on a fixed synthetic batch stream and records every step's
metrics (float32, exactly) and a sha256 digest of each part of the final state (G, D, SN
vectors, BN statistics, optimiser states, EMA). The fixture it writes is compared with
`np.array_equal`-strictness by tests/integration/test_behaviour.py.

  python scripts/record_behaviour.py --devices=1 --out=tests/fixtures/behaviour_1dev.json
  python scripts/record_behaviour.py --devices=8 --out=tests/fixtures/behaviour_8dev.json

XLA:CPU's code depends on the CPU (AVX2 vs AVX-512 kernels round differently), so the
fixture records the CPU it was made on (`cpu_name`: model and vector ISA) and the test compares
only on that CPU. behaviour_<n>dev.json were recorded on an AMD EPYC with AVX-512 (f207e45);
behaviour_<n>dev_avx2.json on an AMD EPYC without it (AVX2, family 25) by commit ed54708, the
last tree before the package moved into folders (issue 24); ed54708 reproduced the AVX-512
fixtures on their machine (its CI), so both files record the same trainer.

Only `state_parts` knows the TrainState's layout: a refactor that moves state around updates
that function (the names and the leaf order inside each part stay).

The fixtures test the trainer's plumbing, so the configs keep the spectral-norm and EMA rules
they were recorded with (LEGACY): LEGACY_SN (u of embedding tables over the width, eval-mode
sigma recomputed from u) and LEGACY_EMA (train.ema_rule='mix': decay * ema + (1 - decay) * p,
not torch's lerp) set explicitly; the SN digests are of the u vectors only
(spectral_norm.u_tree: the stored v and the EMA's SN state, added by issue 17, were not in the
recorded state).
"""

import argparse
import hashlib
import json
import os
import platform
import sys

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if _REPO not in sys.path:
  sys.path.insert(0, _REPO)

STEPS = 20
BACKBONES = ('dcgan', 'deep_conv', 'resnet', 'biggan')
CONDS = ('none', 'acgan', 'pd', 'reacgan')
# name -> config overrides ('section.key' -> value) on top of the tiny config.
EXTRA = {
    'biggan-reacgan-diffaug': {'model.backbone': 'biggan', 'model.cond_method': 'reacgan',
                               'train.diffaug_policy': 'color,translation,cutout'},
    'dcgan-acgan-diffaug': {'model.backbone': 'dcgan', 'model.cond_method': 'acgan',
                            'train.diffaug_policy': 'translation,cutout'},
    'biggan-pd-bn_per_device': {'model.backbone': 'biggan', 'model.cond_method': 'pd',
                                'train.bn_sync': False},
}


def cases():
  """name -> overrides, every backbone x cond_method and the extra variants."""
  out = {f'{b}-{c}': {'model.backbone': b, 'model.cond_method': c}
         for b in BACKBONES for c in CONDS}
  for c in CONDS:  # deep_conv's attention needs >= 8 channels (c // 8) at its block
    out[f'deep_conv-{c}'].update({'model.g_conv_dim': 8, 'model.d_conv_dim': 8})
  out.update(EXTRA)
  return out


def _cpuinfo(key):
  try:
    with open('/proc/cpuinfo') as f:
      for line in f:
        if line.startswith(key):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return ''


def cpu_name():
  """'<model name> / <widest vector ISA XLA:CPU uses>': 'AMD EPYC / avx512', 'AMD EPYC / avx2'.

  The model name alone is not enough: machines named 'AMD EPYC' came with and without AVX-512
  here, and XLA:CPU's kernels round differently on the two.
  """
  name = _cpuinfo('model name') or platform.processor() or platform.machine()
  flags = set(_cpuinfo('flags').split())
  isa = ('amx' if 'amx_bf16' in flags else 'avx512' if 'avx512f' in flags
         else 'avx2' if 'avx2' in flags else 'baseline')
  return f'{name} / {isa}'


def fixture_path(directory, devices):
  """The fixture of this CPU: behaviour_<n>dev.json or behaviour_<n>dev_<isa>.json."""
  isa = cpu_name().rsplit(' / ', 1)[1]
  for name in (f'behaviour_{devices}dev_{isa}.json', f'behaviour_{devices}dev.json'):
    path = os.path.join(directory, name)
    if os.path.exists(path):
      with open(path) as f:
        if json.load(f)['cpu'] == cpu_name():
          return path
  return None


# The SN rules of the recording (f207e45), now options; the defaults are torch's (issue 17).
LEGACY_SN = {'model.sn_embedding_u': 'width', 'model.sn_eval': 'recompute'}
# The EMA rule of the recording, decay * ema + (1 - decay) * p; the default is torch's lerp,
# which rounds differently (issue 25).
LEGACY_EMA = {'train.ema_rule': 'mix'}
# The convolutions of the recording: XLA's (the default became 'auto', oneDNN on one x86-64 CPU
# device, issue 28; oneDNN's float32 results equal XLA's to rounding, not bit for bit).
LEGACY_CONV = {'model.conv_backend': 'xla'}
# Every case runs with these (make_config).
LEGACY = {**LEGACY_SN, **LEGACY_EMA, **LEGACY_CONV}


def make_config(overrides):
  from configs import tiny  # noqa: PLC0415 (after sys.path is set)

  config = tiny.get_config()
  config.train.eval_every = -1
  config.train.steps = STEPS
  overrides = {**LEGACY, **overrides}
  for key, value in overrides.items():
    section, name = key.split('.')
    setattr(config[section], name, value)
  return config


def batches(config, n_steps, seed=0):
  """A fixed stream of global batches {'image': [n_d, B, S, S, 3], 'label': [n_d, B]}."""
  import numpy as np  # noqa: PLC0415

  rng = np.random.default_rng(seed)
  n_d, b, s = config.train.d_updates_per_step, config.train.batch_size, config.data.image_size
  for _ in range(n_steps):
    yield {'image': rng.uniform(-1, 1, (n_d, b, s, s, 3)).astype(np.float32),
           'label': rng.integers(0, config.data.num_classes, (n_d, b)).astype(np.int32)}


def state_parts(state):
  """name -> pytree: the TrainState cut into the named parts the fixture digests."""
  from reacgan_jax.ops.spectral_norm import u_tree  # noqa: PLC0415

  ema = state.ema
  return {
      'g_params': state.g.params, 'g_batch_stats': state.g.collections.get('batch_stats', {}),
      'g_sn': u_tree(state.g.sn), 'g_opt': state.g.opt_state,
      'd_params': state.d.params, 'd_batch_stats': state.d.collections.get('batch_stats', {}),
      'd_sn': u_tree(state.d.sn), 'd_opt': state.d.opt_state,
      'ema_params': None if ema is None else ema.params,
      'ema_batch_stats': None if ema is None else ema.collections.get('batch_stats', {}),
      'step': state.step, 'rng': state.rng,
  }


def digest(tree):
  """sha256 over (path, dtype, shape, bytes) of every leaf, in key-path order."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  h = hashlib.sha256()
  leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
  for path, leaf in sorted(leaves, key=lambda pl: jax.tree_util.keystr(pl[0])):
    a = np.asarray(jax.device_get(leaf))
    if a.dtype == np.dtype('O'):  # typed PRNG keys
      a = np.asarray(jax.random.key_data(leaf))
    h.update(jax.tree_util.keystr(path).encode())
    h.update(str(a.dtype).encode() + str(a.shape).encode())
    h.update(np.ascontiguousarray(a).tobytes())
  return h.hexdigest()


def run_case(overrides, n_devices):
  """(per-step metrics as lists of python floats, digest per state part) of one 20-step run."""
  import jax  # noqa: PLC0415
  import numpy as np  # noqa: PLC0415

  from reacgan_jax.models import adapter  # noqa: PLC0415
  from reacgan_jax.platform import parallel
  from reacgan_jax.train import state, step

  config = make_config(overrides)
  mesh = parallel.create_mesh(jax.devices()[:n_devices])
  model = adapter.build(config, mesh)
  train_state = state.init_state(config, model, mesh)
  step_fn = step.compile_train_step(config, model, mesh)
  metrics = {}
  for batch in batches(config, STEPS):
    train_state, m = step_fn(train_state, parallel.shard_batch(batch, mesh, sample_axis=1))
    for k, v in parallel.to_host(m).items():
      metrics.setdefault(k, []).append(float(np.float32(v)))
  return metrics, {name: digest(part) for name, part in state_parts(train_state).items()}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--devices', type=int, default=1)
  parser.add_argument('--out', required=True)
  parser.add_argument('--only', default='', help='comma list of case names (default: all)')
  args = parser.parse_args()
  os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')
  import jax  # noqa: PLC0415

  jax.config.update('jax_threefry_partitionable', True)
  names = [n for n in cases() if not args.only or n in args.only.split(',')]
  record = {'cpu': cpu_name(), 'devices': args.devices, 'steps': STEPS, 'jax': jax.__version__,
            'cases': {}}
  if os.path.exists(args.out):  # add to (or redo cases of) an earlier record of this machine
    with open(args.out) as f:
      earlier = json.load(f)
    if all(earlier[k] == record[k] for k in ('cpu', 'devices', 'steps', 'jax')):
      record['cases'] = earlier['cases']
  for name in names:
    metrics, digests = run_case(cases()[name], args.devices)
    record['cases'][name] = {'metrics': metrics, 'digests': digests}
    print(f'{name}: d_loss[-1]={metrics["d_loss"][-1]:.6g} g={digests["g_params"][:12]}',
          flush=True)
    with open(args.out + '.tmp', 'w') as f:  # after every case: a stopped run keeps its cases
      json.dump(record, f, indent=1, sort_keys=True)
    os.replace(args.out + '.tmp', args.out)


if __name__ == '__main__':
  main()
