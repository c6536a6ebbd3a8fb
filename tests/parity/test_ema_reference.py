"""The EMA generator follows StudioGAN's Ema to the bit, float32 (issue 25).

StudioGAN src/utils/ema.py, class Ema (lines 12-40 at 947b35e): __init__ copies every parameter
and buffer of G into G_ema; update(iter) uses decay 0 while 0 <= iter < start_iter, else decay,
and under no_grad sets `p_ema.copy_(p.lerp(p_ema, decay))` for every parameter and every buffer
(num_batches_tracked copied). `_StudioGANEma` below is that rule, transcribed in torch; our
StepBuilder.ema_update with the default train.ema_rule='lerp' must give the same floats for
params and BN statistics after 3 updates; the legacy 'mix' (decay * e + (1 - decay) * p) does
not (the test bites).
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import tiny
from reacgan_jax.models import adapter
from reacgan_jax.platform import parallel
from reacgan_jax.train import state as state_lib
from reacgan_jax.train import step


class _StudioGANEma:
  """src/utils/ema.py Ema on modules holding G's leaves as parameters / buffers."""

  def __init__(self, torch, source, target, decay, start_iter):
    self.torch, self.source, self.target = torch, source, target
    self.decay, self.start_iter = decay, start_iter
    with torch.no_grad():
      for p_ema, p in zip(target.parameters(), source.parameters(), strict=True):
        p_ema.copy_(p)
      for b_ema, b in zip(target.buffers(), source.buffers(), strict=True):
        b_ema.copy_(b)

  def update(self, it):
    decay = 0.0 if 0 <= it < self.start_iter else self.decay
    with self.torch.no_grad():
      for p_ema, p in zip(self.target.parameters(), self.source.parameters(), strict=True):
        p_ema.copy_(p.lerp(p_ema, decay))
      for (name, b_ema), (_, b) in zip(self.target.named_buffers(),
                                       self.source.named_buffers(), strict=True):
        if 'num_batches_tracked' in name:
          b_ema.copy_(b)
        else:
          b_ema.copy_(b.lerp(b_ema, decay))


def _module(torch, params, buffers):
  """A torch module whose parameters / buffers are the given float32 leaves, in order."""
  m = torch.nn.Module()
  for i, x in enumerate(params):
    m.register_parameter(f'p{i}', torch.nn.Parameter(torch.from_numpy(np.array(x))))
  for i, x in enumerate(buffers):
    m.register_buffer(f'b{i}', torch.from_numpy(np.array(x)))
  return m


def _set(torch, module, params, buffers):
  """Loads G's leaves after a train step into the source module (what G's optimiser did)."""
  with torch.no_grad():
    for p, x in zip(module.parameters(), params, strict=True):
      p.copy_(torch.from_numpy(np.array(x)))
    for b, x in zip(module.buffers(), buffers, strict=True):
      b.copy_(torch.from_numpy(np.array(x)))


def _leaves(net):
  return jax.tree.leaves(net.params), jax.tree.leaves(net.collections)


def _run(torch, builder, st, decay, rule, steps=3):
  """(ours, StudioGAN's) EMA leaves after `steps` updates on the same drifting G."""
  config = builder.config
  config.train.ema_decay, config.train.ema_rule = decay, rule
  rng = np.random.default_rng(7)
  g, ema = st.g, st.ema
  source = _module(torch, *_leaves(g))
  target = _module(torch, *_leaves(g))
  ref = _StudioGANEma(torch, source, target, decay, config.train.ema_start)
  update = jax.jit(builder.ema_update)
  for i in range(steps):
    drift = lambda x: (x * (1 + 0.01 * rng.normal(size=x.shape))
                       + 0.01 * rng.normal(size=x.shape)).astype(np.float32)
    g = g.replace(params=jax.tree.map(drift, g.params),
                  collections=jax.tree.map(drift, g.collections))
    ema = update(ema, g, jnp.int32(i))
    _set(torch, source, *_leaves(g))
    ref.update(i)
  ours = [np.asarray(x) for x in jax.tree.leaves((ema.params, ema.collections))]
  theirs = ([p.detach().numpy() for p in target.parameters()]
            + [b.numpy() for b in target.buffers()])
  return ours, theirs


def test_ema_update_is_studiogans_ema_bit_for_bit():
  torch = pytest.importorskip('torch', reason='torch parity check (optional extra "torch")')
  config = tiny.get_config()
  config.model.backbone = 'dcgan'  # the smallest G; its BN statistics are EMA'd too
  config.train.ema_start = 1
  model = adapter.build(config)
  st = state_lib.init_state(config, model, parallel.create_mesh(jax.devices()[:1]))
  assert jax.tree.leaves(st.g.collections), 'no buffers: the BN part would not be checked'
  builder = step.StepBuilder(config, model)
  for decay in (0.9, 0.3, 0.9999):  # both branches of torch's kernel (|w| < 0.5 or not)
    ours, theirs = _run(torch, builder, st, decay, 'lerp')
    assert len(ours) == len(theirs)
    for i, (a, b) in enumerate(zip(ours, theirs, strict=True)):
      np.testing.assert_array_equal(a, b, err_msg=f'decay {decay}, leaf {i}')
    if decay == 0.9:  # the legacy rule rounds otherwise: the check above bites
      mix, _ = _run(torch, builder, st, decay, 'mix')
      assert sum(int((a != b).sum()) for a, b in zip(mix, theirs, strict=True)) > 100


def test_bad_ema_rule_is_named():
  from reacgan_jax import errors, validate  # noqa: PLC0415

  config = tiny.get_config()
  assert config.train.ema_rule == 'lerp'  # torch's rule is the default
  config.train.ema_rule = 'average'
  with pytest.raises(errors.ConfigError, match=r'train.ema_rule.*lerp, mix'):
    validate.validate_config(config, mode='train')
