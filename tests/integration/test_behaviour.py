"""The trainer's behaviour is the recorded one, to the bit (issue 13: the seams refactor).

tests/fixtures/behaviour_{1,8}dev.json were written by scripts/record_behaviour.py at commit
f207e45, before the trainer was split into state/adapter/objectives/step/train: 20 steps of
every backbone x cond_method on the tiny config (plus DiffAugment and per-device BN), each
step's metrics and a sha256 of each part of the final state. Every run here must reproduce
them exactly: same floats, same bytes. XLA:CPU's kernels (and so the last bits) depend on the
CPU, so the comparison runs on the CPU the fixture names (model and vector ISA) and skips
elsewhere. behaviour_{1,8}dev.json are an AVX-512 machine's; behaviour_{1,8}dev_avx2.json were
recorded on an AVX2-only AMD EPYC at ed54708 (the tree before issue 24 moved the package into
folders, which itself reproduced the AVX-512 files on their machine).

The runs use the spectral-norm and EMA rules of the recording, set explicitly as options
(record_behaviour.LEGACY: LEGACY_SN, config.model.sn_embedding_u='width', sn_eval='recompute',
the defaults follow torch since issue 17; LEGACY_EMA, config.train.ema_rule='mix', the default
is torch's lerp since issue 25), and digest only the SN u vectors: this test checks the
trainer's plumbing; tests/parity/test_sn_reference.py and test_ema_reference.py check the
reference SN and EMA rules.
"""

import json
import os
import pathlib
import sys

import pytest

REPO = str(pathlib.Path(__file__).resolve().parents[2])
sys.path.insert(0, os.path.join(REPO, 'scripts'))

import record_behaviour  # noqa: E402

FIXTURES = os.path.join(REPO, 'tests', 'fixtures')
# One case in the default suite (the BigGAN + D2D-CE recipe); the slow and exhaustive sets are
# below.
QUICK = ('biggan-reacgan',)


def _fixture(devices):
  path = record_behaviour.fixture_path(FIXTURES, devices)
  if path is None:
    pytest.skip(f'no behaviour fixture recorded on {record_behaviour.cpu_name()!r} (XLA:CPU '
                'rounds differently across CPUs): record one with scripts/record_behaviour.py '
                'at commit ed54708 (see its docstring)')
  with open(path) as f:
    return json.load(f)


def _check(devices, name):
  record = _fixture(devices)
  if name not in record['cases']:
    pytest.skip(f'{name} on {devices} devices was not recorded on {record["cpu"]!r}')
  want = record['cases'][name]
  metrics, digests = record_behaviour.run_case(record_behaviour.cases()[name], devices)
  assert set(metrics) == set(want['metrics'])
  for k, values in want['metrics'].items():
    assert metrics[k] == values, (name, k)  # exact float equality, every step
  assert digests == want['digests'], name


def test_fixture_covers_every_backbone_and_cond_method():
  with open(os.path.join(FIXTURES, 'behaviour_1dev.json')) as f:
    cases = json.load(f)['cases']
  from reacgan_jax import models  # noqa: PLC0415
  from reacgan_jax.losses import registry as objectives

  # Backbones added after the recording (f207e45) had no behaviour before the refactor to
  # preserve; their own trainer tests pin them (tests/train/test_stylegan2_train.py). A new backbone
  # must be listed here or recorded.
  after_recording = {'stylegan2'}
  assert after_recording <= set(models.BACKBONES)
  for b, backbone in models.BACKBONES.items():
    if b in after_recording:
      continue
    for c in backbone.cond_methods:
      assert c in objectives.COND_LOSSES
      assert f'{b}-{c}' in cases
  assert set(record_behaviour.cases()) == set(cases)


@pytest.mark.parametrize('name', QUICK)
def test_quick_cases_on_1_device(name):
  _check(1, name)



# The 10 cases of EIGHT cover every backbone, every cond method and the extra variants; they
# have an 8-device fixture on both CPU kinds. CI's budget (issue 24: 45 minutes, and the CI
# machine's XLA cache may never hit) keeps three of them in the slow suite: with the quick case
# they pin the three conditioning losses, DiffAugment, the global-batch D2D-CE and per-device BN.
# Every other case (each backbone on 1 device, the rest on 8) is exhaustive.
EIGHT = [n for n in record_behaviour.cases()
         if n.endswith('-reacgan') or n in ('resnet-pd', 'dcgan-acgan', 'deep_conv-none')
         or n.count('-') > 1 or n not in {f'{b}-{c}' for b in ('biggan', 'resnet', 'deep_conv',
                                                               'dcgan')
                                          for c in ('none', 'acgan', 'pd', 'reacgan')}]
# 1 device: with QUICK (biggan, D2D-CE) the ACGAN loss and DiffAugment.
SLOW_1 = ('dcgan-acgan-diffaug',)
# 8 devices: the sharded step's own concerns: the global-batch D2D-CE (and PD's projection),
# per-device BN groups.
SLOW_8 = ('biggan-reacgan', 'biggan-pd-bn_per_device')


@pytest.mark.slow
@pytest.mark.parametrize('name', SLOW_1)
def test_cases_on_1_device(name):
  _check(1, name)


@pytest.mark.exhaustive
@pytest.mark.parametrize('name', [n for n in record_behaviour.cases()
                                  if n not in SLOW_1 and n not in QUICK])
def test_every_other_case_on_1_device(name):
  _check(1, name)


@pytest.mark.slow
@pytest.mark.parametrize('name', SLOW_8)
def test_cases_on_8_devices(name):
  _check(8, name)


# The other cases on 8 devices: EIGHT's have a fixture on both CPU kinds, the other 9 the
# AVX-512 machine's only (behaviour_8dev.json); elsewhere those skip, saying so.
@pytest.mark.exhaustive
@pytest.mark.parametrize('name', [n for n in record_behaviour.cases() if n not in SLOW_8])
def test_remaining_cases_on_8_devices(name):
  _check(8, name)


def test_the_slow_cases_are_recorded_and_cover_the_losses_and_the_sharded_concerns():
  assert set(SLOW_1) | set(SLOW_8) | set(QUICK) <= set(EIGHT)  # a fixture on both CPU kinds
  one, eight = set(SLOW_1) | set(QUICK), set(SLOW_8)
  for cond in ('reacgan', 'acgan', 'pd'):
    assert any(f'-{cond}' in n for n in one | eight), cond
  assert any('diffaug' in n for n in one)
  assert any(n.endswith('-reacgan') for n in eight) and any('bn_per_device' in n for n in eight)
  cases = record_behaviour.cases()
  assert all(n in cases for n in one | eight)
