"""experiments/: the comparison config variants, the run summaries and the report (plots, table).

The training itself is the trainer's (tests/train/test_train.py); here the summaries are built from
the files a run writes (metrics.jsonl, eval/step_<n>.json, timing.jsonl, samples/), written
by hand so every figure in the summary can be checked against its source.
"""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from configs import cifar10_experiments

REPO = str(pathlib.Path(__file__).resolve().parents[2])
sys.path.insert(0, os.path.join(REPO, 'experiments'))

import cifar10_compare  # noqa: E402
import report  # noqa: E402


def test_variants_change_only_their_knob():
  base = cifar10_experiments.get_config('reacgan')
  expect = {
      'acgan': {'model.cond_method': 'acgan', 'loss.cond_lambda': 1.0},
      'pd': {'model.cond_method': 'pd'},
      'none': {'model.cond_method': 'none'},
      'reacgan_no_fnr': {'loss.false_negative_removal': False},
      'reacgan_no_margin': {'loss.margins': False},
      'reacgan_t0.25': {'loss.temperature': 0.25},
      'reacgan_t1.0': {'loss.temperature': 1.0},
  }
  def flat(c):
    return {f'{s}.{k}': v for s, sub in c.items() if hasattr(sub, 'items')
            for k, v in sub.items()}

  b = flat(base)
  for variant, diff in expect.items():
    c = flat(cifar10_experiments.get_config(variant))
    changed = {k: v for k, v in c.items() if b[k] != v}
    assert changed == diff, (variant, changed)
  with pytest.raises(ValueError, match='unknown variant'):
    cifar10_experiments.get_config('reacgan_t')


def _fake_run(workdir, steps=4, evals=(2, 4)):
  os.makedirs(os.path.join(workdir, 'eval'))
  os.makedirs(os.path.join(workdir, 'samples'))
  with open(os.path.join(workdir, 'metrics.jsonl'), 'w') as f:
    for s in range(1, steps + 1):
      f.write(json.dumps({'step': s, 'd_loss': 1.0 / s, 'd_acc_real': 0.5, 'd_acc_fake': 0.6,
                          'cond_grad_norm': 0.1 * s}) + '\n')
    f.write(json.dumps({'step': 2, 'eval/fid': 50.0}) + '\n')  # eval scalars share the file
    f.write('{"step": 5, "d_lo')  # cut short by a crash
  for s in evals:
    with open(os.path.join(workdir, 'eval', f'step_{s}.json'), 'w') as f:
      json.dump({'step': s, 'fid': 100.0 / s, 'precision': 0.1 * s, 'recall': 0.05 * s,
                 'accuracy': 0.2, 'msssim': 0.1, 'msssim_real': 0.05, 'bn_eval': 'running'}, f)
  with open(os.path.join(workdir, 'timing.jsonl'), 'w') as f:
    f.write(json.dumps({'wall_s': 60.0, 'hardware': '1x cpu (cpu)', 'rc': 0}) + '\n')
    f.write(json.dumps({'wall_s': 30.0, 'hardware': '1x cpu (cpu)', 'rc': 0}) + '\n')
  Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(
      os.path.join(workdir, 'samples', f'step_{steps}.png'))


def test_summary_reads_what_the_run_wrote(tmp_path):
  workdir = str(tmp_path / 'reacgan')
  _fake_run(workdir)
  s = cifar10_compare.summarize(workdir, 'reacgan', steps=4)
  assert s['finished'] and s['steps_done'] == 4 and s['wall_s'] == 90.0
  assert s['fid_curve'] == [[2, 50.0], [4, 25.0]]
  assert s['final']['fid'] == 25.0 and 'bn_eval' not in s['final']
  assert s['cond_grad_norm_curve'] == [[k, pytest.approx(0.1 * k)] for k in range(1, 5)]
  assert s['hardware'] == ['1x cpu (cpu)']
  assert s['final_grid'].endswith('step_4.png')
  with open(os.path.join(workdir, 'summary.json')) as f:
    assert json.load(f)['fid_curve'] == s['fid_curve']
  # Stopped before the last evaluation: not finished, so a rerun resumes it.
  other = str(tmp_path / 'acgan')
  _fake_run(other, evals=(2,))
  assert not cifar10_compare.summarize(other, 'acgan', steps=4)['finished']


def test_report_writes_table_json_and_plots(tmp_path):
  root = tmp_path / 'runs'
  summaries = {}
  for v in ('reacgan', 'acgan'):
    _fake_run(str(root / v))
    summaries[v] = cifar10_compare.summarize(str(root / v), v, steps=4)
  with open(root / 'summary.json', 'w') as f:
    json.dump(summaries, f)
  out = tmp_path / 'docs'
  subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'report.py'),
                  f'--root={root}', f'--out={out}'], check=True, capture_output=True)
  for name in ('fid_over_steps.png', 'final_fid.png', 'cond_grad_norm.png', 'd_accuracy.png',
               'samples_reacgan.png', 'samples_acgan.png'):
    assert (out / name).stat().st_size > 0, name
  table = (out / 'results' / 'cifar10_compare_table.md').read_text().splitlines()
  assert len(table) == 4 and table[2].startswith('| `reacgan` |')  # no protocol in the fakes
  assert '| 25.00 |' in table[2] and '1.5 min' in table[2]
  with open(out / 'results' / 'cifar10_compare.json') as f:
    saved = json.load(f)
  assert saved['acgan']['final_grid'] == 'samples_acgan.png'
  assert report.table(summaries).splitlines()[3].startswith('| `acgan` |')
  # Another name: its own JSON / table, and prefixed images beside the first report's.
  subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'report.py'),
                  f'--root={root}', f'--out={out}', '--name=ablation'], check=True,
                 capture_output=True)
  for name in ('ablation_fid_over_steps.png', 'ablation_final_fid.png',
               'ablation_samples_reacgan.png', 'results/ablation.json',
               'results/ablation_table.md'):
    assert (out / name).stat().st_size > 0, name
  with open(out / 'results' / 'ablation.json') as f:
    assert json.load(f)['reacgan']['final_grid'] == 'ablation_samples_reacgan.png'


def test_root_summary_keeps_runs_of_earlier_invocations(tmp_path):
  root = tmp_path / 'runs'
  for v in ('reacgan', 'acgan'):
    _fake_run(str(root / v))
  for v in ('reacgan', 'acgan'):  # one variant per invocation, as across sessions
    r = subprocess.run([sys.executable, os.path.join(REPO, 'experiments', 'cifar10_compare.py'),
                        '--summarize_only', f'--runs={v}', f'--root={root}', '--steps=4'],
                       capture_output=True, text=True)
    assert r.returncode == 0, r.stderr[-2000:]
  with open(root / 'summary.json') as f:
    assert sorted(json.load(f)) == ['acgan', 'reacgan']
