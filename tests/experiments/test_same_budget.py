"""experiments/same_budget.py (issue 25, items 4-5): ours vs StudioGAN's own trainer, one scoring.

Default suite (seconds, no StudioGAN needed): the refusals (parameter counts, config keys,
arguments, a rerun with other settings), the loader that presents the npz as StudioGAN's
CIFAR-10 loader does, StudioGAN checkpoint folders (steps, a save cut short), the records and
the summary. Skipped without a StudioGAN checkout ($REACGAN_JAX_STUDIOGAN_SRC, default
/work/studiogan/src): slow (`-m slow`, ~40 s), StudioGAN's real networks refused against a config
of another width; exhaustive (`-m exhaustive`, ~5 CPU minutes), both systems end to end at tiny
widths with the toy feature network, then a rerun that resumes both from step 2 and one that
finds nothing left to do.
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import numpy as np
import pytest
from train_helpers import HANG_S

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'experiments'))

import same_budget  # noqa: E402

STUDIOGAN_SRC = os.environ.get('REACGAN_JAX_STUDIOGAN_SRC') or '/work/studiogan/src'
needs_studiogan = pytest.mark.skipif(
    not os.path.isfile(os.path.join(STUDIOGAN_SRC, 'worker.py')),
    reason=f'no StudioGAN checkout at {STUDIOGAN_SRC}: set REACGAN_JAX_STUDIOGAN_SRC to the src/ '
           'folder of a PyTorch-StudioGAN checkout')
# Tiny widths both systems build alike (attention needs channels // 8 >= 1).
TINY = ['--override', 'model.g_conv_dim=8', '--override', 'model.d_conv_dim=8',
        '--override', 'model.shared_dim=16', '--override', 'model.embed_dim=16',
        '--override', 'model.z_dim=16', '--override', 'train.batch_size=8']


def _args(tmp_path, *more):
  return same_budget.parse_args(['--out', str(tmp_path / 'out'), '--steps', '4', '--eval_at',
                                 '2,4', *TINY, *more])


def _tiny_config(tmp_path, *more):
  return same_budget.load_our_config(_args(tmp_path, *more), 0)


def _sg_dict(config):
  return same_budget.studiogan_yaml({}, config)


# ---- refusals -----------------------------------------------------------------------------------


class _Net:
  """A stand-in torch module: parameters() with numel(), as check_param_counts reads them."""

  def __init__(self, *sizes):
    self.sizes = sizes

  def parameters(self):
    return [types.SimpleNamespace(numel=lambda n=n: n) for n in self.sizes]


def test_param_count_mismatch_is_refused(tmp_path):
  config = _tiny_config(tmp_path)
  n = same_budget.our_param_counts(config)
  assert n['G'] > 1000 and n['D'] > 1000
  same_g, same_d = _Net(n['G'] - 10, 10), _Net(n['D'])
  assert same_budget.check_param_counts(config, same_g, same_d) == n
  for g, d in ((same_g, _Net(n['D'], 1)), (_Net(n['G'] - 1), same_d)):
    with pytest.raises(same_budget.HarnessError, match='parameter counts differ'):
      same_budget.check_param_counts(config, g, d)


def test_widths_change_the_count(tmp_path):
  small = same_budget.our_param_counts(_tiny_config(tmp_path))
  wider = same_budget.our_param_counts(_tiny_config(tmp_path, '--override',
                                                    'model.g_conv_dim=16'))
  assert wider['G'] > small['G'] and wider['D'] == small['D']


def test_studiogan_yaml_carries_our_values_and_round_trips(tmp_path):
  config = _tiny_config(tmp_path)
  base = {'MODEL': {'g_conv_dim': 96, 'd_conv_dim': 96, 'backbone': 'big_resnet'},
          'OPTIMIZATION': {'batch_size': 128}}
  sg = same_budget.studiogan_yaml(base, config)
  assert base['MODEL']['g_conv_dim'] == 96  # the base is not changed
  assert (sg['MODEL']['g_conv_dim'], sg['MODEL']['d_conv_dim'], sg['MODEL']['g_shared_dim'],
          sg['MODEL']['d_embed_dim'], sg['MODEL']['z_dim']) == (8, 8, 16, 16, 16)
  assert sg['OPTIMIZATION']['batch_size'] == 8
  assert sg['OPTIMIZATION']['total_steps'] == 4
  same_budget.check_same_keys(sg, config)  # our config, read back


@pytest.mark.parametrize('section, key, value, ours', [
    ('MODEL', 'g_conv_dim', 12, 'model.g_conv_dim'),
    ('OPTIMIZATION', 'd_lr', 1e-3, 'optim.d_lr'),
    ('MODEL', 'g_ema_start', 1000, 'train.ema_start'),
])
def test_a_studiogan_key_that_differs_is_refused(tmp_path, section, key, value, ours):
  config = _tiny_config(tmp_path)
  sg = _sg_dict(config)
  sg[section][key] = value
  with pytest.raises(same_budget.HarnessError, match=ours.replace('.', r'\.')):
    same_budget.check_same_keys(sg, config)


def test_unmapped_studiogan_key_and_inexpressible_config_are_refused(tmp_path):
  config = _tiny_config(tmp_path)
  sg = _sg_dict(config)
  sg['MODEL']['aux_cls_type'] = 'TAC'  # a head reacgan-jax does not build
  with pytest.raises(same_budget.HarnessError, match='aux_cls_type'):
    same_budget.check_same_keys(sg, config)
  config.train.diffaug_policy = 'color'  # StudioGAN runs color,translation,cutout only
  with pytest.raises(same_budget.HarnessError, match='cannot express'):
    same_budget.studiogan_yaml({}, config)


def test_loaded_cfgs_must_hold_the_yaml():
  sg = {'MODEL': {'g_conv_dim': 8}, 'OPTIMIZATION': {'g_lr': 2e-4}}
  cfgs = types.SimpleNamespace(MODEL=types.SimpleNamespace(g_conv_dim=8),
                               OPTIMIZATION=types.SimpleNamespace(g_lr=2e-4))
  same_budget.check_loaded(cfgs, sg)
  cfgs.OPTIMIZATION.g_lr = 1e-4
  with pytest.raises(same_budget.HarnessError, match='OPTIMIZATION.g_lr'):
    same_budget.check_loaded(cfgs, sg)


@pytest.mark.parametrize('argv, message', [
    (['--systems', 'ours,theirs'], '--systems=ours,theirs'),
    (['--systems', 'studiogan', '--studiogan_src', '/nonexistent'], 'no worker.py there'),
    (['--systems', 'ours', '--eval_at', '2,5'], '--eval_at'),
    (['--systems', 'ours', '--data', '/nonexistent.npz'], '--data'),
])
def test_bad_arguments_say_what_to_do(tmp_path, capsys, argv, message):
  with pytest.raises(SystemExit) as e:
    same_budget.main(['--out', str(tmp_path), '--steps', '4', *argv])
  assert e.value.code == 1
  err = capsys.readouterr().err
  assert err.startswith('same_budget: error:') and message in err and err.count('\n') == 1


def test_a_rerun_with_other_settings_is_refused(tmp_path):
  first = _args(tmp_path)
  os.makedirs(first.out)
  same_budget.check_settings(first)
  same_budget.check_settings(_args(tmp_path, '--steps', '8', '--eval_at', '2,4,8'))  # extends
  with pytest.raises(same_budget.HarnessError, match='--eval_samples'):
    same_budget.check_settings(_args(tmp_path, '--eval_samples', '500'))


# ---- StudioGAN's data and checkpoints -----------------------------------------------------------


def test_npz_loader_presents_cifar_as_studiogan_does():
  torch = pytest.importorskip('torch')
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (20, 4, 4, 3), dtype=np.uint8)
  labels = np.arange(20) % 10
  plain = same_budget.NpzCifar10(images, labels, random_flip=False)
  x, y = plain[3]
  assert x.dtype == torch.float32 and tuple(x.shape) == (3, 4, 4) and y == 3
  want = (images[3].transpose(2, 0, 1).astype(np.float32) / 255 - 0.5) / 0.5  # ToTensor, Normalize
  np.testing.assert_allclose(x.numpy(), want, rtol=0, atol=1e-6)
  torch.manual_seed(0)
  flip = same_budget.NpzCifar10(images, labels, random_flip=True)
  flipped = [not torch.equal(flip[i][0], plain[i][0]) for i in range(20) for _ in range(5)]
  assert 20 < sum(flipped) < 80  # p = 0.5 (100 draws)
  x, _ = flip[0]
  assert torch.equal(x, plain[0][0]) or torch.equal(x, plain[0][0].flip(2))  # width axis
  cfgs = types.SimpleNamespace(PRE=types.SimpleNamespace(apply_rflip=False),
                               OPTIMIZATION=types.SimpleNamespace(basket_size=6))
  loader = same_budget.npz_loader(images, labels, cfgs, 'cpu')
  baskets = list(loader)
  assert len(baskets) == 3 and all(b[0].shape == (6, 3, 4, 4) for b in baskets)  # drop_last
  seen = torch.cat([b[1] for b in baskets])
  assert seen.dtype == torch.int64
  order_a = [b[0][:, 0, 0, 0] for b in baskets]
  order_b = [b[0][:, 0, 0, 0] for b in loader]
  assert not all(torch.equal(a, b) for a, b in zip(order_a, order_b, strict=True))  # shuffled


def _touch(folder, *names):
  folder.mkdir(parents=True, exist_ok=True)
  for n in names:
    (folder / n).write_bytes(b'x')


def test_checkpoint_step_and_a_save_cut_short(tmp_path):
  ckpt = tmp_path / 'ckpt'
  assert same_budget.checkpoint_step(str(ckpt), ema=True) == 0
  names = [same_budget.CKPT_FILE.format(model=m, step=6) for m in ('G', 'D', 'G_ema')]
  _touch(ckpt, *names)
  assert same_budget.checkpoint_step(str(ckpt), ema=True) == 6
  (ckpt / names[2]).rename(ckpt / same_budget.CKPT_FILE.format(model='G_ema', step=4))
  with pytest.raises(same_budget.HarnessError, match='different steps'):
    same_budget.checkpoint_step(str(ckpt), ema=True)
  assert same_budget.checkpoint_step(str(ckpt), ema=False) == 6
  # Killed between the two renames of the swap: the previous folder is back, leftovers gone.
  ckpt.rename(tmp_path / 'ckpt.old')
  _touch(tmp_path / 'ckpt.tmp', names[0])
  same_budget.recover_checkpoint_dir(str(ckpt))
  assert ckpt.is_dir() and not (tmp_path / 'ckpt.old').exists()
  assert not (tmp_path / 'ckpt.tmp').exists()


# ---- records and summary ------------------------------------------------------------------------


def test_records_skip_cut_lines_and_the_summary_keeps_every_seed(tmp_path, capsys):
  res = same_budget.Results(str(tmp_path))
  for system, seed, fid in (('ours', 0, 10.0), ('ours', 1, 14.0), ('studiogan', 0, 20.0),
                            ('ours', 0, 99.0)):  # a duplicate: the first record counts
    res.append({'system': system, 'seed': seed, 'step': 2, 'fid': fid, 'kid_mean': fid / 100,
                'protocol': 'p'})
  with open(res.path, 'a') as f:
    f.write('{"system": "ours", "se')  # cut short by a kill
  assert res.done('ours', 1, 2) and not res.done('ours', 1, 4) and not res.done('studiogan', 1, 2)
  table = same_budget.summarise(res.records())
  assert table['ours'][2]['fid'] == {'seeds': {0: 10.0, 1: 14.0}, 'mean': 12.0}
  assert table['studiogan'][2]['kid_mean']['mean'] == pytest.approx(0.2)
  same_budget.write_summary(str(tmp_path), res.records())
  md = (tmp_path / 'summary.md').read_text()
  assert '| ours | 2 | fid | 12 | 0: 10, 1: 14 |' in md
  assert json.loads((tmp_path / 'summary.json').read_text())['ours']['2']['fid']['mean'] == 12.0
  assert 'ours seed 1 step 2: fid=14' in capsys.readouterr().out
  same_budget.plot_curves(table, str(tmp_path / 'curves.png'))
  assert (tmp_path / 'curves.png').read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'


# ---- end to end (StudioGAN checkout) ------------------------------------------------------------


def _harness(out, *argv, timeout=HANG_S):
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}  # one CPU device, as a user
  env['JAX_PLATFORMS'] = 'cpu'
  cmd = [sys.executable, str(ROOT / 'experiments' / 'same_budget.py'), '--out', str(out),
         '--studiogan_src', STUDIOGAN_SRC, '--features', 'toy', '--eval_samples', '64', *TINY,
         *argv]
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env,
                        cwd=str(ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  return proc.stdout


def _records(out):
  return [json.loads(x) for x in (out / 'results.jsonl').read_text().splitlines()]


@pytest.mark.exhaustive  # ~5 CPU minutes (3 runs of both systems): past CI's slow-suite budget
@needs_studiogan
def test_both_systems_end_to_end_then_resume_and_skip(tmp_path, cifar10_npz):
  out = tmp_path / 'out'
  _harness(out, '--steps', '2', '--eval_at', '2', '--data', str(cifar10_npz))
  first = _records(out)
  assert [(r['system'], r['seed'], r['step']) for r in first] == [('ours', 0, 2),
                                                                   ('studiogan', 0, 2)]
  for r in first:
    assert r['seg_from'] == 0 and r['seg_steps'] == 2
    assert all(np.isfinite(r[k]) for k in ('fid', 'kid_mean', 'is_mean'))
    assert 'eval protocol=studiogan' in r['protocol'] and 'n=10000' in r['protocol']
    assert '64 samples' in r['protocol']
  sg = out / 'studiogan' / 'seed0'
  assert (sg / 'converted' / 'step_2' / 'checkpoints' / '2').is_dir()
  assert 'model=G_ema-current-weights-step=2.pth' in first[1]['converted_from']
  # Extend to step 4: both resume from step 2 (ours its checkpoint, StudioGAN its -ckpt load),
  # the step-2 records stay single.
  _harness(out, '--steps', '4', '--eval_at', '2,4', '--data', str(cifar10_npz))
  second = _records(out)
  assert [(r['system'], r['step'], r.get('seg_from')) for r in second[2:]] == [
      ('ours', 4, 2), ('studiogan', 4, 2)]
  assert second[:2] == first
  assert sorted(os.listdir(sg / 'ckpt')) == [f'model={m}-current-weights-step=4.pth'
                                             for m in ('D', 'G', 'G_ema')]
  assert sorted(os.listdir(sg / 'converted')) == ['step_2', 'step_4']
  # The same command again: nothing left to train or score.
  stdout = _harness(out, '--steps', '4', '--eval_at', '2,4', '--data', str(cifar10_npz))
  assert _records(out) == second and '[same_budget] ours' not in stdout
  summary = json.loads((out / 'summary.json').read_text())
  assert set(summary) == {'ours', 'studiogan'} and set(summary['ours']) == {'2', '4'}


@pytest.mark.slow
@needs_studiogan
def test_studiogan_networks_of_another_width_are_refused(tmp_path):
  """StudioGAN's real G and D, built from our tiny config's YAML, against a wider config."""
  script = f'''
import sys
sys.path.insert(0, {str(ROOT / 'experiments')!r})
import same_budget, studiogan_step, yaml
argv = ['--out', {str(tmp_path)!r}, '--steps', '4', *{TINY!r}]
config = same_budget.load_our_config(same_budget.parse_args(argv), 0)
path = {str(tmp_path / 'sg.yaml')!r}
yaml.safe_dump(same_budget.studiogan_yaml({{}}, config), open(path, 'w'))
built = studiogan_step.build_worker({STUDIOGAN_SRC!r}, path, None, False, {str(tmp_path)!r},
                                    seed=0, cuda=False)
print('same', same_budget.check_param_counts(config, built.worker.Gen, built.worker.Dis))
wider = same_budget.load_our_config(same_budget.parse_args(
    argv + ['--override', 'model.d_conv_dim=16']), 0)
try:
  same_budget.check_param_counts(wider, built.worker.Gen, built.worker.Dis)
except same_budget.HarnessError as e:
  print('refused', e)
'''
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  env['JAX_PLATFORMS'] = 'cpu'
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=HANG_S, env=env, cwd=str(ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = proc.stdout.splitlines()
  assert any(x.startswith('same {') for x in lines), proc.stdout
  refused = [x for x in lines if x.startswith('refused')]
  assert refused and 'parameter counts differ' in refused[0], proc.stdout


def test_prepare_reference_caches_the_test_split_once(tmp_path, capsys, cifar10_npz):
  argv = ['--out', str(tmp_path), '--systems', 'ours', '--features', 'toy', '--steps', '4',
          '--data', str(cifar10_npz), '--prepare_reference', *TINY]
  same_budget.main(argv)
  assert 'reference statistics ready' in capsys.readouterr().out
  stats = tmp_path / 'ref_cache' / 'cifar10_test.npz'
  with np.load(stats) as d:
    description = json.loads(str(d['description']))
  assert description['n'] == 10000 and description['inception'] == 'toy-random-projection'
  assert 'cifar10:test' in description['source']
  mtime = stats.stat().st_mtime_ns
  same_budget.main(argv)  # a second time reads the cache
  assert stats.stat().st_mtime_ns == mtime


@needs_studiogan
def test_studiogans_evaluation_runs_the_sn_power_iteration(tmp_path):
  """What config.model.sn_eval='iterate' (our default) reproduces, read from StudioGAN's own
  code: misc.make_GAN_untrainable (called before every evaluation and canvas) puts BN in eval
  mode but its set_deterministic_op_trainable puts every Conv2d / Linear / Embedding back in
  train mode, so a sampling forward of G_ema runs one power iteration (u renormalised: an
  EMA-averaged u shorter than 1 comes out unit length). Red if StudioGAN sampled in plain eval
  mode (then sn_eval='stored' would be its rule)."""
  script = f'''
import sys
sys.path.insert(0, {str(ROOT / 'experiments')!r})
import studiogan_step
studiogan_step.install_stubs()
sys.path.insert(0, {STUDIOGAN_SRC!r})
import torch
from utils import misc, ops
torch.manual_seed(0)
def net():
  return torch.nn.Sequential(ops.snconv2d(3, 4, 3, padding=1), torch.nn.BatchNorm2d(4))
G, G_ema, D = net(), net(), torch.nn.Sequential(ops.snlinear(4, 1))
with torch.no_grad():
  G_ema[0].weight_u.mul_(0.6)  # as the Ema lerps leave it
misc.make_GAN_untrainable(G, G_ema, D)
print('training', G_ema[0].training, D[0].training, 'bn', G_ema[1].training)
with torch.no_grad():
  G_ema(torch.randn(2, 3, 8, 8))
print('u_norm', float(G_ema[0].weight_u.norm()))
'''
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  proc = subprocess.run([sys.executable, '-c', script], capture_output=True, text=True,
                        timeout=HANG_S, env=env, cwd=str(ROOT))
  assert proc.returncode == 0, proc.stderr[-3000:]
  lines = dict(line.split(' ', 1) for line in proc.stdout.splitlines() if ' ' in line)
  assert lines['training'] == 'True True bn False'
  assert abs(float(lines['u_norm']) - 1) < 1e-6  # the iteration ran: 0.6 -> unit length


def test_a_segment_stopped_early_is_named_and_not_scored(tmp_path, monkeypatch):
  """Our loop saves and returns on SIGTERM (a checkpoint short of the segment's end): the harness
  says where it stopped; before, it went on to score a step that was never written."""
  args = same_budget.parse_args(['--out', str(tmp_path), '--steps', '4', '--systems', 'ours'])
  monkeypatch.setattr(same_budget.loop, 'train_and_evaluate', lambda config, workdir: None)
  monkeypatch.setattr(same_budget.checkpoints, 'list_checkpoint_steps', lambda workdir: [2])

  class NoScore:
    def score(self, *a, **k):
      raise AssertionError('scored a step that was not reached')

  with pytest.raises(same_budget.HarnessError, match='stopped at step 2 before 4'):
    same_budget.run_ours(args, 0, same_budget.Results(str(tmp_path)), NoScore())
