"""experiments/gpu_check.py, gpu_report.py and gpu_pack.py (issue 19) without a GPU.

Default suite (seconds): the part/assemble round trip with its checks; records and tables that
stay valid when the writer is killed mid-run; the StudioGAN race skipped (with a reason) when no
StudioGAN is given; the learning-curve loop's stopping rules (target, extension, budget, signal)
on a stand-in trainer whose step is a counter. Slow (`-m slow`, minutes on 2 cores): the script
end to end on configs/tiny.py with the toy feature network, once to the end of a budget and once
cut by SIGTERM mid-way.
"""

import argparse
import json
import os
import pathlib
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / 'experiments'))

import gpu_check  # noqa: E402
import gpu_pack  # noqa: E402
import gpu_report  # noqa: E402
from train_helpers import HANG_S  # noqa: E402

# ---- pack / receive / assemble ------------------------------------------------------------------


def _files(tmp_path):
  rng = np.random.default_rng(0)
  a = tmp_path / 'src' / 'weights.bin'
  b = tmp_path / 'src' / 'data.npz'
  a.parent.mkdir()
  a.write_bytes(rng.bytes(300_000))  # incompressible, stored
  np.savez(b, x=np.repeat(rng.integers(0, 4, 50_000).astype(np.uint8), 4))  # compressible
  return a, b


def test_pack_receive_round_trip(tmp_path):
  a, b = _files(tmp_path)
  m = gpu_pack.pack([f'weights.bin={a}', f'data.npz={b}:xz'], tmp_path / 'parts', part_mib=0.1)
  sizes = [p['size'] for p in m['parts']]
  assert len(sizes) >= 4 and max(sizes) <= int(0.1 * 2**20)
  assert sum(sizes) == m['total_stream_size']
  assert m['files'][1]['stream_size'] < m['files'][1]['size']  # xz did compress
  stash = tmp_path / 'stash'
  # One part per "device call", in any order; assembly happens when the last one arrives.
  order = list(range(len(sizes)))[::-1]
  for k, i in enumerate(order):
    st = gpu_pack.receive(tmp_path / 'parts' / f'part{i + 1}', stash)
    done = k == len(order) - 1
    assert (st['files'] == ['weights.bin', 'data.npz']) == done
    assert len(st['parts_missing']) == len(order) - k - 1
  assert (stash / 'files' / 'weights.bin').read_bytes() == a.read_bytes()
  assert (stash / 'files' / 'data.npz').read_bytes() == b.read_bytes()
  # Receiving a part again is harmless (idempotent).
  assert gpu_pack.receive(tmp_path / 'parts' / 'part1', stash)['parts_missing'] == []


def test_receive_rejects_damaged_part_and_mixed_packs(tmp_path):
  a, b = _files(tmp_path)
  gpu_pack.pack([f'weights.bin={a}', f'data.npz={b}:xz'], tmp_path / 'parts', part_mib=0.1)
  part = tmp_path / 'parts' / 'part2' / 'part2.bin'
  data = bytearray(part.read_bytes())
  data[100] ^= 1
  part.write_bytes(bytes(data))
  with pytest.raises(ValueError, match='part2.bin.*sha256'):
    gpu_pack.receive(tmp_path / 'parts' / 'part2', tmp_path / 'stash')
  gpu_pack.receive(tmp_path / 'parts' / 'part1', tmp_path / 'stash')
  gpu_pack.pack([f'weights.bin={b}'], tmp_path / 'other', part_mib=1)
  with pytest.raises(ValueError, match='two different packs'):
    gpu_pack.receive(tmp_path / 'other' / 'part1', tmp_path / 'stash')
  with pytest.raises(FileNotFoundError, match='no manifest'):
    gpu_pack.receive(tmp_path / 'src', tmp_path / 'stash')
  with pytest.raises(ValueError, match='NAME=PATH'):
    gpu_pack.pack(['nonsense'], tmp_path / 'x')


def test_assemble_checks_the_rebuilt_file(tmp_path):
  a, _ = _files(tmp_path)
  gpu_pack.pack([f'weights.bin={a}'], tmp_path / 'parts', part_mib=1)
  stash = tmp_path / 'stash'
  stash.mkdir()
  man = json.loads((tmp_path / 'parts' / 'part1' / 'manifest.json').read_text())
  man['files'][0]['sha256'] = '0' * 64  # a manifest that lies about the file
  for name in ('manifest.json',):
    (tmp_path / 'parts' / 'part1' / name).write_text(json.dumps(man))
  with pytest.raises(ValueError, match='weights.bin: rebuilt file does not match'):
    gpu_pack.receive(tmp_path / 'parts' / 'part1', stash)
  assert not (stash / 'files' / 'weights.bin').exists()


# ---- records -------------------------------------------------------------------------------------

_WRITER = """
import sys, time
sys.path.insert(0, {exp!r})
import gpu_report
log = gpu_report.Log({out!r}, 'run')
for i in range(100000):
  log.write(kind='train', config='c', step=i, step_s=0.1, img_per_s=float('nan'))
  if i % 3 == 0:
    log.write(kind='eval', config='c', step=i, fid=100.0 / (i + 1))
"""


def test_log_files_stay_valid_when_killed(tmp_path):
  out = tmp_path / 'out'
  proc = subprocess.Popen([sys.executable, '-c', _WRITER.format(exp=str(ROOT / 'experiments'),
                                                               out=str(out))],
                          stdout=subprocess.DEVNULL)
  # Kill once 20 KB are written, however long that takes (the writer runs for minutes; the
  # 600 s cap only turns a hung writer into a failure instead of a hung test).
  deadline = time.monotonic() + 600
  while not ((out / 'run.json').exists() and (out / 'run.json').stat().st_size > 20_000):
    assert proc.poll() is None and time.monotonic() < deadline, 'the writer stopped early'
    time.sleep(0.05)
  proc.send_signal(signal.SIGKILL)
  proc.wait()
  records = json.loads((out / 'run.json').read_text())['records']
  assert len(records) > 10
  assert records[0]['img_per_s'] is None  # NaN written as null (strict JSON)
  lines = (out / 'run.jsonl').read_text().splitlines()
  parsed = [json.loads(x) for x in lines[:-1]]  # the last line may be cut by the kill
  assert len(parsed) >= len(records) - 1
  md = (out / 'run.md').read_text()
  assert '| c |' in md and 'FID' in md


def test_markdown_tables_and_ratio(tmp_path):
  log = gpu_report.Log(tmp_path, 'r', workdir=str(tmp_path / 'w'))
  log.write(kind='race', impl='ours', config='cifar10_reacgan', precision='fp32', batch=128,
            median_step_s=0.05, img_per_s=12800.0, compile_s=30.0, flops_per_step=1e13,
            tflops=200.0, frac_peak=0.4)
  log.write(kind='race', impl='studiogan', config='CIFAR10/ReACGAN.yaml', precision='fp32',
            batch=128, median_step_s=0.1, img_per_s=6400.0, first_step_s=2.0)
  gpu_check.race_ratios(log)
  ratio = [r for r in log.records if r['kind'] == 'race_ratio']
  assert len(ratio) == 1 and ratio[0]['speedup'] == pytest.approx(2.0)
  md = (tmp_path / 'r.md').read_text()
  assert '| ours | cifar10_reacgan | fp32 | 128 | 0.05 | 12800.0 |' in md
  assert '| fp32 vs fp32 | 12800.0 | 6400.0 | 2.00 |' in md
  assert 'TF32' in md


def test_flop_rates_without_an_xla_count_are_unknown_not_zero():
  assert gpu_check.flop_rates(0.0, 0.08, 494.7) == dict(flops_per_step=None, tflops=None,
                                                        frac_peak=None)
  r = gpu_check.flop_rates(10e12, 0.1, 500.0)
  assert r['flops_per_step'] == 10e12
  assert abs(r['tflops'] - 100.0) < 1e-9 and abs(r['frac_peak'] - 0.2) < 1e-12
  assert gpu_check.flop_rates(10e12, 0.1, 0.0)['frac_peak'] is None


def test_studiogan_race_skipped_without_studiogan(tmp_path):
  args = gpu_check.build_parser().parse_args(
      ['--budget_s', '100', '--out', str(tmp_path), '--studiogan_src', str(tmp_path / 'none')])
  log = gpu_report.Log(tmp_path, 'r', workdir=str(tmp_path / 'w'))
  gpu_check.studiogan_race(args, log, gpu_check.Stop(100))
  skipped = [r for r in log.records if r['kind'] == 'race_skipped']
  assert [r['precision'] for r in skipped] == ['fp32', 'amp_fp16']
  assert all('no worker.py' in r['reason'] for r in skipped)
  assert 'race_skipped studiogan' in (tmp_path / 'r.md').read_text()


# ---- the learning-curve loop on a stand-in trainer ----------------------------------------------


class _Clock:
  """Simulated seconds for gpu_check.Stop: the stand-in trainer advances it, nothing sleeps."""

  def __init__(self):
    self.t = 1000.0

  def __call__(self):
    return self.t


def _fake_trainer(clock=None, step_s=0.001, eval_s=0.0, slow_step=None, signal_at=None,
                  nan_at=None, eval_fails_at=None):
  """The fields of gpu_check.trainer(config): the 'model' is a step counter.

  Each step takes `step_s` seconds of the simulated `clock` (step `slow_step[0]` takes
  `slow_step[1]`) and each evaluation `eval_s`; `_run` hands the same clock to gpu_check.Stop.
  """
  clock = clock or _Clock()

  def step_fn(state, batch):
    del batch
    clock.t += slow_step[1] if slow_step and state + 1 == slow_step[0] else step_s
    if signal_at is not None and state + 1 == signal_at:
      os.kill(os.getpid(), signal.SIGTERM)
    loss = float('nan') if nan_at is not None and state + 1 >= nan_at else 1.0 / (state + 1)
    return state + 1, {'d_loss': loss, 'g_loss': 2.0}

  def data_batches():
    while True:
      yield None

  def evaluate(state, step, workdir, cache):
    assert state == step
    clock.t += eval_s
    if step == eval_fails_at:
      raise FileNotFoundError('no Inception weights')
    return {'fid': 100.0 / step, 'protocol': 'fake'}

  def make(config):
    del config
    return types.SimpleNamespace(
        init_state=lambda: 0, step_fn=step_fn, data_batches=data_batches, evaluate=evaluate,
        grid=lambda state: np.full((8, 8, 3), state % 255, np.uint8), to_host=lambda xs: list(xs))

  make.clock = clock
  return make


def _curve_args(tmp_path, *extra):
  argv = ['--budget_s', '100', '--out', str(tmp_path), '--data', 'unused.npz', '--curve_steps',
          '20', '--extend_to', '40', '--eval_every', '10', '--log_every', '5', '--eval_guess_s',
          '0.0'] + list(extra)
  return gpu_check.build_parser().parse_args(argv)


def _run(tmp_path, budget, make, reserve=0.0, *extra):
  args = _curve_args(tmp_path, *extra)
  log = gpu_report.Log(tmp_path, 'r', workdir=str(tmp_path / 'w'))
  stop = gpu_check.Stop(budget, clock=make.clock)
  try:
    gpu_check.run_curve(args, log, stop, 'reacgan', 'tiny', reserve_s=reserve, make_trainer=make)
  finally:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.default_int_handler)
  return log.records, json.loads((tmp_path / 'r.json').read_text())['records']


def test_curve_runs_to_target_and_extends_when_it_fits(tmp_path):
  records, on_disk = _run(tmp_path, 100, _fake_trainer())
  assert records == on_disk
  evals = [(r['step'], r['fid']) for r in records if r['kind'] == 'eval']
  assert evals == [(10, 10.0), (20, 5.0), (30, 100 / 30), (40, 2.5)]
  assert [r['target'] for r in records if r['kind'] == 'extend'] == [40]
  assert records[-1] == dict(records[-1], kind='phase_end', step=40, reason='done')
  import zipfile  # noqa: PLC0415

  assert zipfile.ZipFile(tmp_path / 'grids.zip').namelist() == [
      f'reacgan_step{s}.png' for s in (10, 20, 30, 40)]
  train = [r for r in records if r['kind'] == 'train']
  assert train[0]['step'] == 1 and train[0]['first_step_s'] is not None
  assert all(r['img_per_s'] > 0 for r in train[1:])


def test_curve_no_extension_when_the_reservation_says_no(tmp_path):
  records, _ = _run(tmp_path, 100, _fake_trainer(), 1e6)
  assert not [r for r in records if r['kind'] == 'extend']
  assert records[-1]['step'] == 20 and records[-1]['reason'] == 'done'


def test_curve_budget_cut_evaluates_where_it_stopped(tmp_path):
  # 0.02 simulated s per step, 0.1 per evaluation (every 10 steps), a 3.15 s budget and a
  # target out of reach: 100 steps and 10 evaluations take 3.0 s; step 102 leaves 0.11 s, less
  # than one step and one evaluation (0.12 s), so it stops there, between two evaluations, and
  # evaluates there. A simulated clock: the rule is checked without depending on machine speed.
  clock = _Clock()
  records, on_disk = _run(tmp_path, 3.15, _fake_trainer(clock, step_s=0.02, eval_s=0.1), 0.0,
                          '--curve_steps', '100000')
  end = records[-1]
  assert (end['kind'], end['reason'], end['step']) == ('phase_end', 'budget', 102)
  evals = [r['step'] for r in records if r['kind'] == 'eval']
  assert evals == [*range(10, 101, 10), 102]
  assert clock.t - 1000.0 <= 3.15  # the cut left room for that last evaluation
  assert on_disk == records


def test_curve_budget_overrun_still_evaluates_where_it_stopped(tmp_path):
  # Step 115 takes longer than all the budget left (a stall): the budget is spent when the loop
  # sees it, between two evaluations. The run still evaluates at 115 (before the fix it did
  # not: the GPU run lost the figure of its last steps).
  clock = _Clock()
  records, _ = _run(tmp_path, 10.0,
                    _fake_trainer(clock, step_s=0.02, eval_s=0.1, slow_step=(115, 10.0)), 0.0,
                    '--curve_steps', '100000')
  end = records[-1]
  assert (end['kind'], end['reason'], end['step']) == ('phase_end', 'budget', 115)
  evals = [r['step'] for r in records if r['kind'] == 'eval']
  assert evals == [*range(10, 115, 10), 115]


def test_curve_signal_stops_after_the_step(tmp_path):
  records, on_disk = _run(tmp_path, 100, _fake_trainer(signal_at=13))
  end = records[-1]
  assert (end['kind'], end['reason'], end['step']) == ('phase_end', 'signal', 13)
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [10]  # no eval after a signal
  assert on_disk == records


def test_curve_stops_on_non_finite_loss(tmp_path):
  records, _ = _run(tmp_path, 100, _fake_trainer(nan_at=7))
  end = records[-1]
  assert (end['reason'], end['step']) == ('non-finite loss', 10)
  bad = [r for r in records if r['kind'] == 'train' and r['d_loss'] is None]
  assert bad and bad[0]['step'] == 10


def test_curve_survives_a_failed_evaluation(tmp_path):
  records, _ = _run(tmp_path, 100, _fake_trainer(eval_fails_at=10), 1e6)
  errs = [r for r in records if r['kind'] == 'eval_error']
  assert len(errs) == 1 and errs[0]['step'] == 10 and 'Inception' in errs[0]['reason']
  assert [r['step'] for r in records if r['kind'] == 'eval'] == [20]
  assert records[-1]['reason'] == 'done'


def test_bad_phase_and_missing_data_are_clear_errors(tmp_path, capsys):
  with pytest.raises(SystemExit):
    gpu_check.main(['--phases', 'race,nope', '--budget_s', '1', '--out', str(tmp_path)])
  assert 'unknown' in capsys.readouterr().err
  with pytest.raises(SystemExit):
    gpu_check.main(['--phases', 'reacgan', '--budget_s', '1', '--out', str(tmp_path),
                    '--data', str(tmp_path / 'missing.npz')])
  assert 'gpu_pack.py receive' in capsys.readouterr().err


def test_load_config_overrides():
  c = gpu_check.load_config('cifar10_reacgan:small', ['model.dtype=bfloat16',
                                                     'train.batch_size=16',
                                                     'train.ema=False'])
  assert (c.model.dtype, c.train.batch_size, c.train.ema) == ('bfloat16', 16, False)


# ---- end to end (slow) --------------------------------------------------------------------------


def _script(tmp_path, cache, *argv):
  env = dict(os.environ, PYTHONPATH=str(ROOT), REACGAN_JAX_CACHE=str(cache),
             PYTHONUNBUFFERED='1')
  return subprocess.Popen([sys.executable, str(ROOT / 'experiments' / 'gpu_check.py'), *argv],
                          cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                          text=True)


_TINY = ['--race_config', 'tiny', '--race_batch', '8', '--race_steps', '2', '--race_warmup', '1',
         '--reacgan_config', 'tiny', '--biggan_pd_config', 'tiny', '--features', 'toy',
         '--curve_steps', '8', '--extend_to', '0', '--eval_every', '4', '--eval_samples', '32',
         '--eval_ref', '100', '--log_every', '2']


@pytest.mark.exhaustive  # the runbook's rehearsal: run before a GPU session (CI budget)
def test_end_to_end_tiny_race_then_sigterm_mid_curve(tmp_path, cifar10_npz):
  cache = tmp_path / 'cache'
  out1, out2 = tmp_path / 'out1', tmp_path / 'out2'
  # 1. The race only, no StudioGAN: ours in fp32 and bf16, StudioGAN recorded as skipped.
  p = _script(tmp_path, cache, '--phases', 'race', '--budget_s', '900', '--out', str(out1),
              '--tag', 'a', '--studiogan_src', '', *_TINY)
  log1, _ = p.communicate(timeout=HANG_S)
  assert p.returncode == 0, log1[-3000:]
  recs = json.loads((out1 / 'a.json').read_text())['records']
  race = {r['precision']: r for r in recs if r['kind'] == 'race'}
  assert set(race) == {'fp32', 'bf16'} and all(r['flops_per_step'] > 0 for r in race.values())
  assert len([r for r in recs if r['kind'] == 'race_skipped']) == 2
  assert recs[-1]['kind'] == 'end'
  assert '## a. Same-GPU race' in (out1 / 'a.md').read_text()
  # 2. The curve, cut by SIGTERM once the first evaluation is on disk.
  p = _script(tmp_path, cache, '--phases', 'reacgan,biggan_pd', '--budget_s', '900', '--out',
              str(out2), '--tag', 'b', '--data', str(cifar10_npz), *_TINY)
  deadline, recs = time.time() + 1200, []
  while time.time() < deadline and p.poll() is None:
    if (out2 / 'b.json').exists():
      recs = json.loads((out2 / 'b.json').read_text())['records']
      if any(r['kind'] == 'eval' for r in recs):
        break
    time.sleep(0.5)
  p.send_signal(signal.SIGTERM)
  log2, _ = p.communicate(timeout=HANG_S)
  assert p.returncode == 0, log2[-3000:]
  recs = json.loads((out2 / 'b.json').read_text())['records']
  evals = [r for r in recs if r['kind'] == 'eval']
  assert evals[0]['step'] == 4 and evals[0]['fid'] > 0 and 'toy' in evals[0]['protocol']
  ends = [r for r in recs if r['kind'] == 'phase_end']
  assert ends and ends[0]['reason'] == 'signal' and ends[0]['step'] < 8
  assert not [r for r in recs if r['kind'] == 'phase_start' and r['step'] == 0][1:]  # no pd
  assert recs[-1] == dict(recs[-1], kind='end', reason='signal')
  first = [r for r in recs if r['kind'] == 'train'][0]
  # The race compiled the same tiny step at batch 8: the persistent cache serves it here.
  assert first['first_step_s'] < race['fp32']['compile_s'], (first, race['fp32'])
  assert (out2 / 'grids.zip').exists() and '| tiny | 4 |' in (out2 / 'b.md').read_text()


def test_parser_defaults_are_the_published_setup():
  args = gpu_check.build_parser().parse_args(['--budget_s', '1', '--out', 'x'])
  assert isinstance(args, argparse.Namespace)
  assert (args.race_config, args.race_batch, args.studiogan_yaml) == (
      'cifar10_reacgan', 128, 'CIFAR10/ReACGAN.yaml')
  assert (args.curve_steps, args.extend_to, args.eval_every, args.eval_samples) == (
      2000, 4000, 1000, 10_000)


def test_studiogan_stubs_serve_unused_imports(monkeypatch):
  import studiogan_step  # noqa: PLC0415

  finder = studiogan_step._StubFinder(['no_such_pkg_19'])  # noqa: SLF001
  monkeypatch.setattr(sys, 'meta_path', [finder] + sys.meta_path)
  from no_such_pkg_19.datasets import CIFAR10  # noqa: PLC0415
  from no_such_pkg_19.transforms import InterpolationMode  # noqa: PLC0415

  class Sub(CIFAR10):  # StudioGAN subclasses some stubbed names at import
    pass

  assert InterpolationMode.NEAREST is not None and Sub() is not None
  assert CIFAR10(root='x').anything(1) is not None
  for name in [m for m in sys.modules if m.startswith('no_such_pkg_19')]:
    monkeypatch.delitem(sys.modules, name)


def test_studiogan_step_needs_a_studiogan_src(tmp_path):
  import studiogan_step  # noqa: PLC0415

  with pytest.raises(SystemExit, match='no worker.py'):
    studiogan_step.main(['--src', str(tmp_path), '--out', str(tmp_path / 'x.json')])
