"""StyleGAN2 in the trainer (issue 15 item 3): configs vs StudioGAN, R1 / PL terms, the step's
order, w_avg, the EMA by kimg, 1-vs-8 devices and kill/resume.

configs/tiny_stylegan2.py is the toy model (channels 2-8, batch 8); each compiled step costs
~1-2 min on the loaded 2-core test machine, so the tests that train are in the slow suite (those
on one 3-step run share it); the default suite keeps the configs, counts, R1 and EMA rules.
"""

import json
import os
import pathlib
import signal
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from train_helpers import HANG_S, write_npz

from configs import (
  cifar10_stylegan2,
  cifar10_stylegan2_d2dce,
  cifar10_stylegan2_d2dce_ada,
  cifar10_stylegan2_d2dce_diffaug,
  tiny,
  tiny_stylegan2,
)
from reacgan_jax import sampling
from reacgan_jax.losses import registry as objectives
from reacgan_jax.losses import regularizers, terms
from reacgan_jax.models import adapter
from reacgan_jax.platform import checkpoints, parallel
from reacgan_jax.train import modes, state, step

REPO = str(pathlib.Path(__file__).resolve().parents[2])
# tests/models/test_stylegan2_models.py: counted with StudioGAN's own stylegan2.py for
# StyleGAN2.yaml
# (SPD) and StyleGAN2-D2DCE.yaml.
G_MAPPING, G_SYNTHESIS, D_SPD, D_D2DCE = 793088, 19422227, 23089664, 21251585


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  return write_npz(tmp_path_factory.mktemp('data') / 'toy.npz')


def _tiny(npz, **over):
  config = tiny_stylegan2.get_config()
  config.data.npz_path, config.data.npz_layout = str(npz), 'nhwc'
  config.train.eval_every = -1
  for key, value in over.items():
    *path, name = key.split('.')
    node = config
    for p in path:
      node = node[p]
    node[name] = value
  return config


def _batch(config, seed):
  rng = np.random.default_rng(seed)
  n_d, b, s = config.train.d_updates_per_step, config.train.batch_size, config.data.image_size
  return {'image': rng.uniform(-1, 1, (n_d, b, s, s, 3)).astype(np.float32),
          'label': rng.integers(0, config.data.num_classes, (n_d, b)).astype(np.int32)}


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize('module,d_count', [
    (cifar10_stylegan2, D_SPD), (cifar10_stylegan2_d2dce, D_D2DCE),
    (cifar10_stylegan2_d2dce_diffaug, D_D2DCE), (cifar10_stylegan2_d2dce_ada, D_D2DCE)])
def test_full_configs_build_studiogans_networks(module, d_count):
  config = module.get_config()
  model = adapter.build(config)
  key = jax.random.PRNGKey(0)
  g_vars, d_vars = jax.eval_shape(lambda: model.init(key, key))
  assert _count(g_vars['params']['mapping']) == G_MAPPING
  assert _count(g_vars['params']['synthesis']) == G_SYNTHESIS
  assert _count(d_vars['params']) == d_count
  assert adapter.state_collections(g_vars).keys() == {'stylegan2_state'}


def test_config_recipes_follow_the_yaml_files():
  sg2, rev = cifar10_stylegan2.get_config(), cifar10_stylegan2_d2dce_diffaug.get_config()
  # config.py: every StyleGAN2 optimiser scaled by its reg interval: G by 4 (no PL), D by 16.
  g_c = objectives.lazy_ratio(sg2, objectives.build_terms(sg2, 'g'), 'g')
  d_c = objectives.lazy_ratio(sg2, objectives.build_terms(sg2, 'd'), 'd')
  assert (g_c, d_c) == (4 / 5, 16 / 17)
  r1 = [t for t in objectives.build_terms(sg2, 'd') if t.name == 'r1'][0]
  assert (r1.weight, r1.interval, r1.place) == (0.01, 16, 'separate')
  # The -Rev file: r1 0.08 every 2 D updates inside the loop, D first, D scaled by 2/3.
  r1 = [t for t in objectives.build_terms(rev, 'd') if t.name == 'r1'][0]
  assert (r1.weight, r1.interval, r1.place) == (0.08, 2, 'inside')
  assert objectives.lazy_ratio(rev, objectives.build_terms(rev, 'd'), 'd') == 2 / 3
  assert rev.train.d_first and not sg2.train.d_first
  assert sg2.train.d_updates_per_step == 1 and rev.train.d_updates_per_step == 2
  bad = cifar10_stylegan2.get_config()
  bad.optim.d_lazy_interval = 4
  with pytest.raises(ValueError, match='d_lazy_interval=4 but the d lazy term runs every 16'):
    objectives.lazy_ratio(bad, objectives.build_terms(bad, 'd'), 'd')


def test_stylegan2_refuses_pd_and_spectral_norm():
  config = cifar10_stylegan2.get_config()
  config.model.cond_method = 'pd'
  with pytest.raises(ValueError, match='backbone stylegan2 takes none, acgan, spd, reacgan'):
    adapter.build(config)
  config = cifar10_stylegan2.get_config()
  config.model.apply_d_sn = True
  with pytest.raises(ValueError, match='apply_d_sn=False'):
    adapter.build(config)
  config = cifar10_stylegan2.get_config()
  config.model.dtype = 'bfloat16'  # built in bf16, not silently float32 (issue 28)
  config.model.conv_backend = 'xla'
  model = adapter.build(config)
  assert model.generator.dtype == model.discriminator.dtype == jnp.bfloat16
  config = cifar10_stylegan2.get_config()
  config.model.backbone = 'biggan'
  with pytest.raises(ValueError, match='backbone biggan takes none, acgan, pd, reacgan'):
    adapter.build(config)


def test_r1_term_is_its_definition_on_a_quadratic_discriminator():
  # adv_b = sum(w * x_b^2): d adv_b / d x_b = 2 w x_b; R1 = mean_b sum (2 w x_b)^2 / 2.
  config = cifar10_stylegan2.get_config()
  term = regularizers.r1_term(config, 'd')
  rng = np.random.default_rng(0)
  x = rng.standard_normal((4, 3, 3, 2))
  w = rng.standard_normal((3, 3, 2))

  class Out:
    def __init__(self, adv):
      self.adv = adv

  ctx = terms.Context(None, None, lambda xx, y: Out(jnp.sum(w * xx ** 2, axis=(1, 2, 3))),
                           jnp.asarray(x, jnp.float32), None, None, None)
  want = np.mean(np.sum((2 * w * x) ** 2, axis=(1, 2, 3)) / 2)
  np.testing.assert_allclose(term.fn(ctx), want, rtol=1e-5)  # float32 sums of ~100 terms
  with pytest.raises(ValueError, match="'r1' is a D term"):
    regularizers.r1_term(config, 'g')
  biggan = cifar10_stylegan2.get_config()
  biggan.model.backbone = 'biggan'
  with pytest.raises(ValueError, match="'pl' needs backbone stylegan2"):
    regularizers.pl_term(biggan, 'g')


def test_ema_decay_is_studiogans_emastylegan2_rule():
  # utils/ema.py EmaStylegan2.update(iter): n = min(kimg * 1000, B * iter * rampup),
  # beta = 0.5 ** (B / max(n, 1e-8)); float64 reference.
  for it in (0, 1, 7, 100, 10**6):
    for rampup in (0.05, -1.0):
      n = 500 * 1000.0 if rampup < 0 else min(500 * 1000.0, 64 * it * rampup)
      want = 0.5 ** (64 / max(n, 1e-8))
      got = step.ema_decay_stylegan2(jnp.int32(it), 64, 500.0, rampup)
      np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-30)


@pytest.fixture(scope='module')
def tiny_run(npz):
  """Three compiled steps of tiny_stylegan2 (R1 every 3 D updates, 2 D updates per step, G
  first): (config, builder, states [s0..s3], metrics [m1..m3])."""
  config = _tiny(npz, **{'loss.r1_interval': 3, 'optim.d_lazy_interval': 3})
  mesh = parallel.create_mesh(jax.devices()[:1])
  model = adapter.build(config, mesh)
  fn = step.compile_train_step(config, model, mesh)
  states, metrics = [parallel.to_host(state.init_state(config, model, mesh))], []
  s = state.init_state(config, model, mesh)
  for i in range(3):
    s, m = fn(s, parallel.shard_batch(_batch(config, i), mesh))
    states.append(parallel.to_host(s))
    metrics.append(parallel.to_host(m))
  return config, model, states, metrics


@pytest.mark.slow  # compiles the tiny StyleGAN2 step: minutes on the loaded CPU
def test_tiny_stylegan2_trains_with_r1_on_its_interval(tiny_run):
  _, _, states, metrics = tiny_run
  for m in metrics:
    assert all(np.isfinite(v) for v in m.values()), m
    assert m['d_cond'] > 0 and m['g_cond'] > 0  # D2D-CE on both sides
  # D update indices 2 * step + i: 0, 1 | 2, 3 | 4, 5; R1 (interval 3) runs on 0 and 3 only.
  assert metrics[0]['d_r1'] > 0 and metrics[1]['d_r1'] > 0 and metrics[2]['d_r1'] == 0
  moved = [np.max(np.abs(a - b)) for a, b in zip(jax.tree.leaves(states[3].g.params),
                                                 jax.tree.leaves(states[0].g.params), strict=True)]
  assert max(moved) > 0


@pytest.mark.slow  # compiles the tiny StyleGAN2 step: minutes on the loaded CPU
def test_w_avg_moves_in_d_updates_only_and_the_ema_copies_it(tiny_run, npz):
  config, model, states, _ = tiny_run
  w_avg = lambda s: s.g.collections['stylegan2_state']['mapping']['w_avg']  # noqa: E731
  assert np.all(w_avg(states[0]) == 0) and np.any(w_avg(states[1]) != 0)
  # EmaStylegan2 copies buffers: the EMA's w_avg is G's at the G update. With G first
  # (d_first False) that is the w_avg before the step's D updates: state t-1's.
  for t in (2, 3):
    ema = states[t].ema.collections['stylegan2_state']['mapping']['w_avg']
    np.testing.assert_array_equal(ema, w_avg(states[t - 1]))
  # The G update alone leaves w_avg as it is; a D update alone moves it.
  b = step.StepBuilder(config, model)
  s = jax.tree.map(jnp.asarray, states[1])
  carry = lambda s: step.DCarry(d=s.d, g_sn=s.g.sn, g_cols=s.g.collections, aug=None,
                                extra=s.extra)
  g, _, _ = jax.jit(lambda s: b.g_update(s.g, carry(s), jax.random.PRNGKey(1), 8, s.step))(s)
  after = g.collections['stylegan2_state']['mapping']['w_avg']
  np.testing.assert_array_equal(after, w_avg(states[1]))
  assert any(np.any(np.asarray(a) != b) for a, b in  # the G update did update G
             zip(jax.tree.leaves(g.params), jax.tree.leaves(states[1].g.params), strict=True))


@pytest.mark.slow  # compiles the tiny StyleGAN2 step: minutes on the loaded CPU
def test_sampling_uses_fresh_noise_and_eval_truncation(tiny_run):
  config, model, states, _ = tiny_run
  s = jax.tree.map(jnp.asarray, states[3])
  z, y = model.sample_prior(jax.random.PRNGKey(5), 8)
  fn = sampling.Sampler(config, model).sample_fn(s)
  a, b = np.asarray(fn(z, y)), np.asarray(fn(z, y))
  assert np.all(np.isfinite(a)) and np.any(a != b)  # random noise inputs, one key per call
  # psi = 0 with constant noise: every sample of a class is G(w_avg), whatever its z.
  trunc = config.copy_and_resolve_references()
  trunc.model.stylegan2.truncation_psi, trunc.model.stylegan2.noise_mode = 0.0, 'const'
  const = sampling.Sampler(trunc, adapter.build(trunc)).sample_fn(s)
  z2 = jax.random.normal(jax.random.PRNGKey(6), z.shape)
  np.testing.assert_allclose(const(z, y), const(z2, y), atol=1e-6)
  assert np.any(np.abs(np.asarray(fn(z2, y)) - a) > 1e-3)  # at psi = 1 z does matter


@pytest.mark.exhaustive  # CI budget (issue 24): two more StyleGAN2 compilations
def test_one_stylegan2_step_on_1_and_8_devices_agree(npz):
  # As test_train's 1-vs-8 test (eps = 1 so parameter differences measure gradient
  # differences; 1e-6 abs + 1e-5 rel), with R1 active in its own step (interval 2, index 0).
  config = _tiny(npz, **{'optim.eps': 1.0, 'train.d_updates_per_step': 1,
                         'train.batch_size': 8})
  batch = _batch(config, 0)
  out = []
  for devices in (jax.devices()[:1], jax.devices()):
    mesh = parallel.create_mesh(devices)
    model = adapter.build(config, mesh)
    s = state.init_state(config, model, mesh)
    s, m = step.compile_train_step(config, model, mesh)(s, parallel.shard_batch(batch, mesh))
    out.append((parallel.to_host(s), parallel.to_host(m)))
  (s1, m1), (s8, m8) = out
  assert m1['d_r1'] > 0
  paths = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(s1)]
  for path, a, b in zip(paths, jax.tree.leaves(s1), jax.tree.leaves(s8), strict=True):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6, err_msg=path)
  for k in m1:
    np.testing.assert_allclose(m1[k], m8[k], rtol=1e-5, atol=1e-6, err_msg=k)


def _cli(workdir, npz, steps, wait=True):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=2')
  cmd = [sys.executable, os.path.join(REPO, 'main.py'),
         f'--config={REPO}/configs/tiny_stylegan2.py', f'--workdir={workdir}',
         f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
         f'--config.train.steps={steps}', '--config.train.eval_every=-1',
         '--config.train.checkpoint_every=4', '--config.train.sample_every=0',
         '--config.train.log_every=4',
         # StyleGAN2 + D2D-CE + ADA (the FID 2.33 recipe) with R1 through ADA's pipeline; p
         # starts at 0.2 and moves every 2 steps (kimg 1: by 8 * 2 / 1000 per adjustment).
         '--config.train.augment=ada', '--config.ada.apply_ada=True', '--config.ada.initial_p=0.2',
         '--config.ada.kimg=1', '--config.ada.interval=2']
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)
  if wait:
    out, _ = proc.communicate(timeout=HANG_S)
    assert proc.returncode == 0, out[-3000:]
  return proc


def _final(workdir, npz):
  config = _tiny(npz, **{'train.steps': 12, 'train.augment': 'ada', 'ada.apply_ada': True,
                         'ada.initial_p': 0.2, 'ada.kimg': 1, 'ada.interval': 2})
  mesh = parallel.create_mesh(jax.devices()[:2])
  s, at = modes.load_state(config, workdir, mesh, adapter.build(config, mesh))
  return parallel.to_host(s), at


@pytest.mark.exhaustive  # CI's budget (issue 24); the BigGAN family's kill -9 test is slow
def test_killed_and_resumed_stylegan2_ada_run_is_bit_identical(npz, tmp_path):
  straight, resumed = str(tmp_path / 'straight'), str(tmp_path / 'resumed')
  _cli(straight, npz, 12)
  proc = _cli(resumed, npz, 12, wait=False)
  while 4 not in checkpoints.list_checkpoint_steps(resumed):
    assert proc.poll() is None, proc.communicate()[0][-3000:]
  proc.send_signal(signal.SIGKILL)
  proc.communicate(timeout=HANG_S)
  assert max(checkpoints.list_checkpoint_steps(resumed)) < 12
  _cli(resumed, npz, 12)
  (a, step_a), (b, step_b) = _final(straight, npz), _final(resumed, npz)
  assert step_a == step_b == 12
  assert 0.0 <= float(a.extra['augment'].p) <= 1.0  # ADA's state is in the checkpoint
  with open(os.path.join(straight, 'metrics.jsonl')) as f:
    logged = [json.loads(line) for line in f if line.strip()]
  trained = [r for r in logged if 'd_loss' in r]
  assert trained and all(0 <= r['ada_p'] <= 1 and abs(r['ada_rt']) <= 1 for r in trained)
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


@pytest.mark.slow  # compiles the tiny StyleGAN2 step: minutes on the loaded CPU
def test_w_interpolation_runs_between_the_endpoints_ws(tiny_run):
  config, model, states, _ = tiny_run
  s = jax.tree.map(jnp.asarray, states[3])
  trunc = config.copy_and_resolve_references()
  trunc.model.stylegan2.noise_mode = 'const'  # the same noise for every image
  sampler = sampling.Sampler(trunc, adapter.build(trunc))
  fn = sampler.w_interpolation_fn(s)
  z0, z1 = jax.random.normal(jax.random.PRNGKey(1), (2, 2, 8))
  y = jnp.array([0, 3])
  strip = np.asarray(fn(z0, z1, y, 4)).reshape(2, 4, 32, 32, 3)
  # The ends are the endpoints' images (eval mode, psi 1, constant noise).
  sample = sampler.sample_fn(s)
  np.testing.assert_allclose(strip[:, 0], sample(z0, y), atol=1e-5)
  np.testing.assert_allclose(strip[:, -1], sample(z1, y), atol=1e-5)
  assert np.any(np.abs(strip[:, 1] - strip[:, 0]) > 1e-4)  # and the middle moves
  biggan = tiny.get_config()
  assert sampling.Sampler(biggan, adapter.build(biggan)).w_interpolation_fn(s) is None


@pytest.mark.parametrize('module', [cifar10_stylegan2, cifar10_stylegan2_d2dce,
                                    cifar10_stylegan2_d2dce_diffaug, cifar10_stylegan2_d2dce_ada])
def test_small_variants_keep_the_recipe_at_cpu_size(module):
  full, small = module.get_config(), module.get_config('small')
  for key in ('model.backbone', 'model.cond_method', 'loss.adv', 'loss.d_terms',
              'loss.r1_interval', 'loss.r1_place', 'train.d_first', 'train.augment',
              'optim.g_lr', 'optim.beta2', 'optim.g_lazy_interval', 'optim.d_lazy_interval'):
    section, name = key.split('.')
    assert small[section][name] == full[section][name], key
  assert small.model.stylegan2.channel_max < full.model.stylegan2.channel_max
  assert small.train.batch_size < full.train.batch_size and small.train.steps == 200
  with pytest.raises(ValueError, match='unknown variant'):
    module.get_config('huge')


@pytest.mark.exhaustive  # its own StyleGAN2 compilation (CI budget, issue 24); the default suite
def test_path_length_term_runs_on_its_interval_with_its_running_mean(npz):  # checks the term
  # Off in every CIFAR-10 config (as in StudioGAN), so tested here: 'pl' every 2 G updates,
  # its own Adam step; the running mean (extra['term/pl']) moves only when the term runs.
  config = _tiny(npz, **{'loss.g_terms': 'pl', 'loss.pl_interval': 2,
                         'optim.g_lazy_interval': 2, 'train.d_updates_per_step': 1,
                         'loss.d_terms': ''})
  mesh = parallel.create_mesh(jax.devices()[:1])
  model = adapter.build(config, mesh)
  fn = step.compile_train_step(config, model, mesh)
  s = state.init_state(config, model, mesh)
  means, pls = [float(parallel.to_host(s.extra['term/pl']))], []
  for i in range(3):
    s, m = fn(s, parallel.shard_batch(_batch(config, i), mesh))
    means.append(float(parallel.to_host(s.extra['term/pl'])))
    pls.append(float(parallel.to_host(m['g_pl'])))
  assert pls[0] > 0 and pls[1] == 0 and pls[2] > 0, pls
  assert means[0] == 0 and means[1] > 0 and means[2] == means[1] and means[3] != means[2]
  # The mean follows its rule: mean' = mean + decay (mean_b l_b - mean), decay 0.01, so after
  # the first run it is 0.01 * (a path length) > 0, and far below one.
  assert means[1] < 0.1
