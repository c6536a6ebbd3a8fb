"""The trainer's seams: lazy loss terms, stateful augmentation, optimiser scaling, layouts.

Test-only pieces are registered here (objectives.TERMS, augment.AUGMENTATIONS) and removed
after each test, as a recipe module would register its own.
"""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from train_helpers import tiny_config, write_npz

from reacgan_jax import errors
from reacgan_jax.augment import registry as augment
from reacgan_jax.losses import registry as objectives
from reacgan_jax.losses import terms
from reacgan_jax.models import adapter
from reacgan_jax.platform import checkpoints, parallel
from reacgan_jax.train import loop as train
from reacgan_jax.train import state, step

LIGHT = {'train.d_updates_per_step': 1, 'model.g_attn_block': 0, 'model.d_attn_block': 0}


@pytest.fixture(scope='module')
def npz(tmp_path_factory):
  return write_npz(tmp_path_factory.mktemp('data') / 'toy.npz')


def _probe(ctx):
  """A D term with a gradient: the mean adversarial logit of the reals, by its own forward."""
  return jnp.mean(ctx.apply(ctx.real, ctx.labels).adv)


@pytest.fixture
def probe_term():
  objectives.TERMS['probe'] = lambda config, which: terms.Term(
      'probe', _probe, weight=0.25, interval=3, place=config.loss.probe_place)
  yield
  del objectives.TERMS['probe']


def _config(npz, place='inside', **overrides):
  config = tiny_config(npz, **LIGHT, **overrides)
  config.loss.d_terms = 'probe'
  with config.unlocked():
    config.loss.probe_place = place
  return config


def _batch(config, seed=0):
  rng = np.random.default_rng(seed)
  b, s = config.train.batch_size, config.data.image_size
  return (jnp.asarray(rng.uniform(-1, 1, (b, s, s, 3)).astype(np.float32)),
          jnp.asarray(rng.integers(0, config.data.num_classes, b).astype(np.int32)))


# 'inside' exhaustive since issue 24 (CI budget: it compiles a step); the slow suite's
# test_lazy_term_runs_inside_the_one_compiled_step compiles the same place.
@pytest.mark.parametrize('place', [pytest.param('inside', marks=pytest.mark.exhaustive),
                                   'separate'])
def test_lazy_term_contributes_on_multiples_of_its_interval_only(npz, probe_term, place):
  # Adam's first step from zero moments is -lr * g / (|g| + eps); with lr = eps = 1e8 it is
  # -g to a relative 1e-8, so a parameter change measures the gradient that caused it.
  big = {'optim.d_lr': 1e8, 'optim.eps': 1e8, 'optim.lazy_scaling': False}
  with_term, without = _config(npz, place, **big), tiny_config(npz, **LIGHT, **big)
  mesh = parallel.create_mesh(jax.devices()[:1])
  model = adapter.build(with_term, mesh)
  s0 = state.init_state(with_term, model, mesh)
  b_with = step.make_train_step(with_term, model).builder
  b_without = step.make_train_step(without, model).builder
  assert [t.name for t in b_with.d_terms] == ['adv', 'cond', 'probe']
  real, labels = _batch(with_term)
  carry = step.DCarry(d=s0.d, g_sn=s0.g.sn, g_cols=s0.g.collections, aug=None, extra={})
  key = jax.random.PRNGKey(1)
  run = jax.jit(lambda b, i: b.d_update(s0.g, carry, (real, labels, key), i, i),
                static_argnums=0)
  base, _ = run(b_without, jnp.int32(0))
  # The term's value and gradient, computed directly: D's weights with the u the update's two
  # main forwards left, the same reals, train mode.
  w_fn = lambda p: model.normalize('d', p, base.d.sn, update=False)[0]
  direct = lambda p: 0.25 * 3 * jnp.mean(model.apply_d(w_fn(p), {}, real, labels,
                                                       train=True)[0].adv)
  # 'inside' adds the term to the update's gradient (at the params it started from);
  # 'separate' is its own Adam step after the update, at the updated params.
  value, grad = jax.value_and_grad(direct)(s0.d.params if place == 'inside' else base.d.params)
  for i in range(7):
    got, metrics = run(b_with, jnp.int32(i))
    diff = jax.tree.map(lambda a, b: np.asarray(a, np.float64) - np.asarray(b), got.d.params,
                        base.d.params)
    if i % 3:
      assert float(metrics['d_probe']) == 0.0
      for a, b in zip(jax.tree.leaves(got.d.params), jax.tree.leaves(base.d.params), strict=True):
        np.testing.assert_array_equal(a, b)
      continue
    np.testing.assert_allclose(float(metrics['d_probe']), float(value), rtol=1e-5)
    if place == 'inside':
      # Same update: params moved by -(g_main + g_term) instead of -g_main.
      for dlt, g in zip(jax.tree.leaves(diff), jax.tree.leaves(grad), strict=True):
        np.testing.assert_allclose(dlt, -np.asarray(g), rtol=2e-4, atol=2e-6)
    else:
      assert max(float(np.max(np.abs(d))) for d in jax.tree.leaves(diff)) > 1e-4
  assert max(float(np.max(np.abs(g))) for g in jax.tree.leaves(grad)) > 1e-3  # not vacuous


def test_lazy_scaling_follows_k_over_k_plus_1(npz, probe_term):
  config = _config(npz)
  c = 3 / 4
  grads = {'w': jnp.asarray([0.3, -1.2, 2.0])}
  params = {'w': jnp.zeros(3)}
  o = config.optim
  for scaling, want in ((True, optax.adam(o.d_lr * c, b1=o.beta1 ** c, b2=o.beta2 ** c,
                                          eps=o.eps)),
                        (False, optax.adam(o.d_lr, b1=o.beta1, b2=o.beta2, eps=o.eps))):
    config.optim.lazy_scaling = scaling
    txs = state.make_optimizers(config)
    got_state, want_state = txs['d'].init(params), want.init(params)
    for _ in range(3):
      u_got, got_state = txs['d'].update(grads, got_state, params)
      u_want, want_state = want.update(grads, want_state, params)
      np.testing.assert_array_equal(u_got['w'], u_want['w'])
    g_ref = optax.adam(o.g_lr, b1=o.beta1, b2=o.beta2, eps=o.eps)  # G has no lazy term
    np.testing.assert_array_equal(txs['g'].update(grads, txs['g'].init(params), params)[0]['w'],
                                  g_ref.update(grads, g_ref.init(params), params)[0]['w'])


@pytest.mark.slow  # since issue 24: the default suite's share of CI time (compiles a step)
def test_lazy_term_runs_inside_the_one_compiled_step(npz, probe_term, tmp_path, caplog):
  import logging  # noqa: PLC0415

  config = _config(npz, **{'train.steps': 7, 'train.log_every': 1, 'train.sample_every': 0,
                           'train.checkpoint_every': 0})
  jax.config.update('jax_log_compiles', True)
  try:
    with caplog.at_level(logging.DEBUG):
      train.train_and_evaluate(config, str(tmp_path))
  finally:
    jax.config.update('jax_log_compiles', False)
  compiles = [r for r in caplog.records
              if 'Finished XLA compilation of jit(train_step)' in r.getMessage()]
  assert len(compiles) == 1
  with open(tmp_path / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f if 'd_probe' in line]
  active = [r['step'] for r in records if r['d_probe'] != 0.0]
  assert active == [1, 4, 7]  # step indices 0, 3, 6 (one D update per step)


# ---- stateful augmentation --------------------------------------------------------------------

class SignCounter(augment.Augmentation):
  """Counts sign(D(real)) and the reals seen; flips images (a real, state-free transform)."""

  def init_state(self):
    return {'sign_sum': jnp.zeros((), jnp.float32), 'seen': jnp.zeros((), jnp.float32),
            'steps': jnp.zeros((), jnp.int32)}

  def augment(self, x, key, state):
    del key, state
    return x[:, :, ::-1]

  def observe(self, state, out_real, step):
    del step
    return dict(state, sign_sum=state['sign_sum'] + jnp.sum(jnp.sign(out_real.adv)),
                seen=state['seen'] + out_real.adv.shape[0])

  def step_end(self, state, step_index):
    return dict(state, steps=state['steps'] + 1)


@pytest.fixture
def sign_counter():
  augment.AUGMENTATIONS['sign_counter'] = lambda config: SignCounter()
  yield
  del augment.AUGMENTATIONS['sign_counter']


def _aug_config(npz, **overrides):
  return tiny_config(npz, **{**LIGHT, 'train.augment': 'sign_counter', **overrides})


@pytest.mark.slow  # CI budget (issue 24): 90 s of the default suite (a compiled step, a resume)
def test_stateful_augmentation_counts_signs_as_specified(npz, sign_counter, tmp_path):
  config = _aug_config(npz, **{'train.steps': 10, 'train.log_every': 1, 'train.sample_every': 0,
                               'train.checkpoint_every': 0})
  final = train.train_and_evaluate(config, str(tmp_path))
  aug = parallel.to_host(final.extra['augment'])
  with open(tmp_path / 'metrics.jsonl') as f:
    acc = [json.loads(line)['d_acc_real'] for line in f if 'd_acc_real' in line]
  b = config.train.batch_size
  assert len(acc) == 10 and int(aug['steps']) == 10
  assert float(aug['seen']) == 10 * b
  # One D update per step: sum of signs = #(D > 0) - #(D < 0) = B (2 acc_real - 1) (no zeros).
  assert float(aug['sign_sum']) == sum(b * (2 * a - 1) for a in acc)


def _steps(config, devices, n, metrics=None):
  """n steps on fixed random batches -> the augmentation state (metrics appended to a list)."""
  mesh = parallel.create_mesh(devices)
  model = adapter.build(config, mesh)
  s = state.init_state(config, model, mesh)
  fn = step.compile_train_step(config, model, mesh)
  rng = np.random.default_rng(0)
  b, size = config.train.batch_size, config.data.image_size
  for _ in range(n):
    batch = {'image': rng.uniform(-1, 1, (1, b, size, size, 3)).astype(np.float32),
             'label': rng.integers(0, 10, (1, b)).astype(np.int32)}
    s, m = fn(s, parallel.shard_batch(batch, mesh, sample_axis=1))
    if metrics is not None:
      metrics.append(parallel.to_host(m))
  return parallel.to_host(s.extra['augment'])


@pytest.mark.exhaustive  # CI budget (issue 24)
def test_augmentation_state_is_the_same_on_1_and_8_devices(npz, sign_counter):
  config = _aug_config(npz)
  one, eight = _steps(config, jax.devices()[:1], 10), _steps(config, jax.devices(), 10)
  assert int(one['steps']) == 10 and float(one['seen']) == 10 * config.train.batch_size
  for k in one:
    np.testing.assert_array_equal(one[k], eight[k], err_msg=k)


@pytest.mark.exhaustive  # CI budget (issue 24): the slow suite's test_ada_resume kills -9 an
def test_augmentation_state_survives_resume_bit_exactly(npz, sign_counter, tmp_path):  # ADA run
  common = {'train.log_every': 5, 'train.sample_every': 0, 'train.checkpoint_every': 5}
  straight = train.train_and_evaluate(_aug_config(npz, **common, **{'train.steps': 10}),
                                      str(tmp_path / 'straight'))
  split = str(tmp_path / 'split')
  train.train_and_evaluate(_aug_config(npz, **common, **{'train.steps': 5}), split)
  resumed = train.train_and_evaluate(_aug_config(npz, **common, **{'train.steps': 10}), split)
  a, b = parallel.to_host(straight), parallel.to_host(resumed)
  assert int(b.extra['augment']['steps']) == 10
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(x, y)


# ---- checkpoints of the earlier layout -----------------------------------------------------------

def test_a_layout_1_checkpoint_is_named_and_kept(npz, tmp_path):
  # What the first releases saved: the flat TrainState, items state and config, no meta.
  import orbax.checkpoint as ocp  # noqa: PLC0415

  config = tiny_config(npz)
  old = {'g_params': {'w': jnp.ones(3)}, 'g_state': {}, 'step': jnp.asarray(2, jnp.int32)}
  m = ocp.CheckpointManager(tmp_path / 'checkpoints', options=ocp.CheckpointManagerOptions(
      create=True, enable_async_checkpointing=False), item_names=('state', 'config'))
  m.save(2, args=ocp.args.Composite(state=ocp.args.StandardSave(old), config=ocp.args.JsonSave(
      checkpoints.config_to_dict(config))), force=True)
  m.wait_until_finished()
  m.close()
  with pytest.raises(errors.CheckpointLayoutError, match=r'layout 1.*new --workdir'):
    train.train_and_evaluate(config, str(tmp_path))
  assert checkpoints.list_checkpoint_steps(str(tmp_path)) == [2]  # not set aside as corrupt
  assert not any(n.startswith('corrupt') for n in os.listdir(tmp_path / 'checkpoints'))


@pytest.mark.exhaustive  # CI budget (issue 24): the slow suite's test_ada_resume checks p against
def test_ada_runs_inside_the_step_and_moves_p_by_the_rule(npz):  # the logged r_t in training
  # interval 1, kimg 1: after every step p moves by sign(r_t - target) * B / 1000, r_t = mean
  # sign(D(real)) of the step's reals = 2 acc_real - 1 (one D update a step, no zero logits).
  # A target < 0 means a fixed p: never adjusted, the counters keep counting.
  config = _aug_config(npz, **{'train.augment': 'ada'})
  config.ada.apply_ada, config.ada.interval, config.ada.kimg = True, 1, 1
  config.ada.initial_p, config.ada.target = 0.5, 0.5
  b, metrics = config.train.batch_size, []
  s = _steps(config, jax.devices()[:1], 3, metrics)
  want = 0.5
  for m in metrics:
    want = min(1.0, max(0.0, want + np.sign(2 * m['d_acc_real'] - 1 - 0.5) * b / 1000))
  assert want != 0.5 and float(s.p) == pytest.approx(want, abs=1e-6)  # it moved, by the rule
  assert int(s.count) == 0  # adjusted, counters reset
  config.ada.target = -1.0
  s = _steps(config, jax.devices()[:1], 2)
  assert float(s.p) == 0.5 and int(s.count) == 2 * b
