"""benchmarks/torch_reference.py: the torch rebuild of StudioGAN's CIFAR-10 models.

Parameter / SN-module counts must equal shared/SPEC.md section 3's table (counted there by
building StudioGAN's own modules); D2D-CE is checked against a float64 loop written from
SPEC section 1 item 6. Needs the `torch` extra; skipped without it.
"""

import importlib.util
import pathlib

import numpy as np
import pytest

torch = pytest.importorskip('torch', reason="torch is an optional extra: pip install -e '.[torch]'")

_PATH = pathlib.Path(__file__).resolve().parents[2] / 'benchmarks' / 'torch_reference.py'
_spec = importlib.util.spec_from_file_location('torch_reference', _PATH)
tr = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(tr)

# shared/SPEC.md section 3, "Reference parameter counts": (G params, G SN, D params, D SN).
SPEC_COUNTS = {
  'reacgan': (9_416_196, 27, 2_517_186, 17),  # CIFAR10 ReACGAN, big_resnet 32, embed 512
  'sngan': (4_304_387, 0, 1_055_105, 12),  # CIFAR10 SNGAN, resnet 32, one-hot cBN (HEAD)
}

# Widths small enough that a full D and G update takes well under a second.
TINY = dict(g_conv_dim=4, d_conv_dim=4, shared_dim=8, embed_dim=8)


@pytest.mark.parametrize('model', sorted(SPEC_COUNTS))
def test_counts_match_spec(model):
  # 'meta' tensors: shapes without memory or init cost; counts do not depend on values.
  with torch.device('meta'):
    g, d, _ = tr.build(model)
  assert (*tr.count(g), *tr.count(d)) == SPEC_COUNTS[model]


def _d2d_ce_reference(f, v, y, t, m_p):
  """SPEC 1 item 6 (StudioGAN form), one sample at a time, float64."""
  f = f / np.linalg.norm(f, axis=1, keepdims=True)
  v = v / np.linalg.norm(v, axis=1, keepdims=True)
  b = len(y)
  losses = []
  for i in range(b):
    others = [j for j in range(b) if j != i]
    a = {j: (f[i] @ f[j] - (1 - m_p)) / t for j in others}
    row_max = max(a.values())
    neg = sum(np.exp(max(a[j], 0.0) - row_max) for j in others if y[j] != y[i])
    pos = max(m_p - f[i] @ v[i], 0.0) / t
    losses.append(pos + np.log(np.exp(-pos) + neg))
  return np.mean(losses)


@pytest.mark.parametrize('labels', [[0, 1, 1, 2, 0, 3, 1, 2], [4] * 8])
def test_d2d_ce_matches_definition(labels):
  rng = np.random.default_rng(0)
  f, v = rng.normal(size=(8, 5)), rng.normal(size=(8, 5))
  y = np.array(labels)
  want = _d2d_ce_reference(f, v, y, t=0.5, m_p=0.98)
  got = tr.d2d_ce(torch.tensor(f), torch.tensor(v), torch.tensor(y), 0.5, 0.98)
  # float64 in both: only summation-order differences.
  np.testing.assert_allclose(got.item(), want, rtol=1e-12, atol=1e-12)
  if len(set(labels)) == 1:  # no negatives anywhere: every L_i = pos + log(exp(-pos)) = 0
    assert abs(got.item()) < 1e-12


def test_cbn_gain_is_one_plus_gamma():
  torch.manual_seed(0)
  cbn = tr.CondBatchNorm(affine_dim=3, ch=4, sn=False)
  for lin in (cbn.gain, cbn.bias):
    torch.nn.init.zeros_(lin.weight)
  x, a = torch.randn(6, 4, 2, 2), torch.randn(6, 3)
  xd = x.double()
  mean = xd.mean(dim=(0, 2, 3), keepdim=True)
  var = xd.var(dim=(0, 2, 3), unbiased=False, keepdim=True)
  want = (xd - mean) / torch.sqrt(var + tr.BN_EPS)
  # gamma = beta = 0 must leave plain batch norm (gain 1), not a zeroed output.
  np.testing.assert_allclose(cbn(x, a).detach().double().numpy(), want.numpy(), atol=1e-5)


@pytest.mark.parametrize('model', sorted(SPEC_COUNTS))
def test_updates_touch_only_their_network(model):
  torch.manual_seed(0)
  g, d, cfg = tr.build(model, **TINY)
  d_update, g_update, g_forward = tr.make_steps(g, d, cfg, batch_size=4)
  snap = lambda m: [p.detach().clone() for p in m.parameters()]
  changed = lambda before, m: any(
      not torch.equal(b, p) for b, p in zip(before, m.parameters(), strict=True))

  g0, d0 = snap(g), snap(d)
  assert np.isfinite(d_update())
  assert changed(d0, d) and not changed(g0, g)
  g0, d0 = snap(g), snap(d)
  assert np.isfinite(g_update())
  assert changed(g0, g) and not changed(d0, d)
  images = g_forward()
  assert images.shape == (4, 3, 32, 32)
  assert images.abs().max() <= 1


def test_run_benchmark_reports_every_figure():
  res = tr.run_benchmark('reacgan', batch_size=4, repeats=1, threads=1, **TINY)
  for key in ('d_update_s', 'g_update_s', 'g_forward_img_per_s'):
    assert res[key] > 0
  assert res['threads'] == 1
  with pytest.raises(ValueError, match='--model'):
    tr.build('biggan')
