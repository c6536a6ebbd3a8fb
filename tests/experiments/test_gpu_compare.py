"""experiments/gpu_compare.py: StudioGAN's log lines read right, our curve put beside them."""

import json
import pathlib
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'experiments'))

import gpu_compare  # noqa: E402

# Lines as StudioGAN writes them (logs/CIFAR10/BigGAN-train-2021_01_15_14_48_48.log, 165-169,
# 199-200), plus a 'Best FID' line that must not overwrite the step's own FID.
LOG = """\
[INFO] 2021-01-15 15:02:32 > Step:    2000 Progress: 2.0% Elapsed: 0:13:33 temperature: no
[INFO] 2021-01-15 15:04:24 > F_8 score (Step: 2000, Using test images): 0.8130341091235509
[INFO] 2021-01-15 15:04:24 > FID score (Step: 2000, Using test moments): 45.42340630285878
[INFO] 2021-01-15 15:04:24 > Inception score (Step: 2000, 10000 generated images): 6.018830299377441
[INFO] 2021-01-15 15:04:24 > Best FID score (Step: 2000, Using test moments): 1.0
[INFO] 2021-01-15 15:19:50 > FID score (Step: 4000, Using test moments): 39.889930874041625
[INFO] 2021-01-15 15:19:50 > Inception score (Step: 4000, 10000 generated images): 7.080965518951416
[INFO] 2022-02-04 17:03:01 > FID score (Step: 6000, Using train moments): 118.89128671055892
"""


def test_log_parser_takes_test_moment_fid_and_is_per_step():
  got = gpu_compare.parse_studiogan_log(LOG)
  # the train-moments FID (another reference set) is not this comparison's, so step 6000 is out
  assert got == {2000: {'fid': 45.42340630285878, 'is': 6.018830299377441},
                 4000: {'fid': 39.889930874041625, 'is': 7.080965518951416}}


def _records():
  ev = dict(kind='eval', config='cifar10_biggan_pd', t=0.0)
  return [dict(ev, step=1000, fid=53.0), dict(ev, step=2000, fid=50.0),
          dict(kind='eval', config='cifar10_reacgan', step=2000, fid=43.0, t=0.0),
          dict(kind='end', config=None, step=None, t=1.0)]


def test_table_puts_ours_beside_the_log_at_shared_steps_only():
  logs = {'cifar10_biggan_pd': gpu_compare.parse_studiogan_log(LOG)}
  text, rows = gpu_compare.table(_records(), logs)
  assert [(r['config'], r['step']) for r in rows] == [('cifar10_biggan_pd', 2000)]
  assert abs(rows[0]['diff_pct'] - 100 * (50.0 - 45.42340630285878) / 45.42340630285878) < 1e-9
  assert '| cifar10_biggan_pd | 2000 | 50.00 | 45.42 | +10.1 % |' in text


def test_merge_keeps_every_call_and_plot_writes(tmp_path):
  a, b = tmp_path / 'a.json', tmp_path / 'b.json'
  recs = _records()
  a.write_text(json.dumps({'records': recs[:1]}))
  b.write_text(json.dumps({'records': recs[1:]}))
  merged = gpu_compare.merge([str(a), str(b)], str(tmp_path / 'm'))
  assert [r['call'] for r in merged] == [1, 2, 2, 2]
  assert json.loads((tmp_path / 'm.json').read_text())['records'] == merged
  assert '| cifar10_reacgan | 2000 | 43.00 |' in (tmp_path / 'm.md').read_text()
  logs = {'cifar10_biggan_pd': gpu_compare.parse_studiogan_log(LOG)}
  gpu_compare.plot(merged, logs, str(tmp_path / 'c.png'), 10000, {'cifar10_biggan_pd': 'x.log'})
  assert (tmp_path / 'c.png').read_bytes()[:4] == b'\x89PNG'
