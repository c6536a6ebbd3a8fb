"""metrics.jsonl on resume: records past the restored step dropped, damaged lines set aside."""

import io
import json
import logging
import os
import pathlib
import struct
import subprocess
import sys
import zlib

import numpy as np
import pytest
from PIL import Image
from train_helpers import HANG_S, write_npz

from reacgan_jax.platform import writers

REPO = str(pathlib.Path(__file__).resolve().parents[2])


def test_resume_sets_damaged_lines_aside_and_names_them(tmp_path, caplog):
  # Issue 26: one non-UTF-8 byte, a null or list line, or {"step": "x"} gave a traceback on
  # every resume.
  path = tmp_path / 'metrics.jsonl'
  good = [json.dumps({'step': s, 'd_loss': 0.5}).encode() + b'\n' for s in (1, 2, 3, 4)]
  bad = [b'{"step": 2, "d_loss": \xff}\n', b'null\n', b'[1, 2]\n', b'{"step": "x"}\n',
         b'{"step": true}\n', b'{"d_loss": 1.0}\n']
  path.write_bytes(good[0] + bad[0] + good[1] + bad[1] + bad[2] + good[2] + bad[3] + bad[4]
                   + good[3] + bad[5] + b'{"step": 5, "d_lo')  # the last one cut by a crash
  with caplog.at_level(logging.WARNING):
    w = writers.JsonlWriter(str(path), resume_step=3)
  w.write_scalars(4, {'d_loss': 0.25})
  w.close()
  lines = path.read_bytes().splitlines(keepends=True)
  assert lines[:3] == good[:3] and json.loads(lines[3]) == {'step': 4, 'd_loss': 0.25}
  assert len(lines) == 4
  damaged = (tmp_path / 'metrics.jsonl.damaged').read_bytes().splitlines(keepends=True)
  assert damaged == [*bad, b'{"step": 5, "d_lo\n']
  named = sorted(int(r.getMessage().split(' line ')[1].split()[0]) for r in caplog.records
                 if 'is damaged' in r.getMessage())
  assert named == [2, 4, 5, 7, 8, 10, 11]


# ---- Weights & Biases (config.train.wandb) -----------------------------------------------------

def read_wandb_history(run_dir):
  """The history rows of an offline wandb run, read from its run-<id>.wandb file: wandb's
  LevelDB-style log (header ':W&B' + magic 0xBEE1 + version; 32 KiB blocks of records with a
  7-byte header: CRC-32 of type + data, length, type FULL/FIRST/MIDDLE/LAST) of
  wandb_internal_pb2.Record protos. Every record's CRC is checked."""
  from wandb.proto import wandb_internal_pb2  # noqa: PLC0415 (the wandb extra)

  [path] = pathlib.Path(run_dir).glob('run-*.wandb')
  data = path.read_bytes()
  assert struct.unpack('<4sH', data[:6]) == (b':W&B', 0xBEE1)
  pos, pending, rows = 7, b'', []
  while pos + 7 <= len(data):
    left = 32768 - pos % 32768
    crc, length, kind = struct.unpack('<IHB', data[pos:pos + 7])
    if left < 7 or kind == 0:  # the zero padding at the end of a block
      pos += left
      continue
    chunk = data[pos + 7:pos + 7 + length]
    assert zlib.crc32(bytes([kind]) + chunk) == crc
    pos, pending = pos + 7 + length, pending + chunk
    if kind in (1, 4):  # FULL or LAST: a whole record
      record = wandb_internal_pb2.Record.FromString(pending)
      pending = b''
      if record.WhichOneof('record_type') == 'history':
        rows.append({i.key or '/'.join(i.nested_key): json.loads(i.value_json)
                     for i in record.history.item})
  return rows


def _offline_env(monkeypatch, tmp_path):
  home = tmp_path / 'home'  # no ~/.netrc, no wandb settings: not logged in
  home.mkdir()
  monkeypatch.setenv('HOME', str(home))
  monkeypatch.delenv('WANDB_API_KEY', raising=False)
  monkeypatch.setenv('WANDB_DIR', str(tmp_path / 'wandb_dir'))
  (tmp_path / 'wandb_dir').mkdir()
  # wandb reads its environment once per process (its setup singleton); a run reads it at its
  # start, so each test starts wandb afresh as a new process would.
  import wandb  # noqa: PLC0415 (the wandb extra)

  wandb.teardown()


@pytest.mark.slow  # wandb starts its wandb-core service: ~10-100 s
def test_wandb_offline_logs_the_jsonl_scalars(tmp_path, monkeypatch, caplog):
  pytest.importorskip('wandb')
  _offline_env(monkeypatch, tmp_path)
  monkeypatch.delenv('WANDB_MODE', raising=False)  # online asked, no login: falls back offline
  workdir = tmp_path / 'run'
  with caplog.at_level(logging.WARNING):
    w = writers.create_writer(str(workdir), wandb_project='reacgan-test',
                              wandb_config={'seed': 3})
  assert sum('not logged in' in r.getMessage() for r in caplog.records) == 1
  rng = np.random.default_rng(0)
  for step in (1, 2, 5):
    w.write_scalars(step, {'d_loss': np.float32(rng.normal()), 'g_loss': rng.normal(),
                           'eval/fid': float(step) / 3})
  w.write_images(5, {'samples': np.zeros((1, 8, 8, 3), np.uint8)})
  w.close()
  [run_dir] = (tmp_path / 'wandb_dir' / 'wandb').glob('offline-run-*')
  logged = [{k: v for k, v in row.items() if not k.startswith('_')}
            for row in read_wandb_history(run_dir) if 'd_loss' in row]
  with open(workdir / 'metrics.jsonl') as f:
    written = [json.loads(line) for line in f]
  assert len(written) == 3 and logged == written  # the same keys, steps and float values
  assert list(run_dir.glob('files/media/images/samples_*.png'))


@pytest.mark.exhaustive  # wandb's service again: beyond CI's budget (issue 24)
def test_wandb_mode_disabled_is_respected(tmp_path, monkeypatch):
  pytest.importorskip('wandb')
  _offline_env(monkeypatch, tmp_path)
  monkeypatch.setenv('WANDB_MODE', 'disabled')
  w = writers.create_writer(str(tmp_path / 'run'), wandb_project='reacgan-test')
  w.write_scalars(1, {'d_loss': 0.5})
  w.close()
  assert not (tmp_path / 'wandb_dir' / 'wandb').exists()
  assert (tmp_path / 'run' / 'metrics.jsonl').read_text().count('d_loss') == 1


# Without wandb installed (sys.modules['wandb'] = None makes every `import wandb` fail), main.py
# trains as before with config.train.wandb = '' and refuses in one line when it is set.
NO_WANDB = '''
import runpy, sys
sys.modules['wandb'] = None
sys.argv = ['main.py', *sys.argv[1:]]
runpy.run_path('main.py', run_name='__main__')
'''


def _main_without_wandb(*args, cwd):
  env = dict(os.environ, JAX_PLATFORMS='cpu', XLA_FLAGS='--xla_force_host_platform_device_count=1')
  return subprocess.run([sys.executable, '-c', NO_WANDB, *args], env=env, cwd=cwd,
                        capture_output=True, text=True, timeout=HANG_S)


def test_asking_for_wandb_without_it_says_what_to_install(tmp_path):
  r = _main_without_wandb('--config=configs/tiny.py', f'--workdir={tmp_path / "run"}',
                          '--config.train.wandb=my-project', cwd=REPO)
  assert r.returncode == 1, r.stderr[-2000:]
  lines = [line for line in r.stderr.splitlines() if 'error' in line.lower()]
  assert lines == ["main.py: error: config.train.wandb='my-project' needs the wandb package: "
                   "pip install 'reacgan-jax[wandb]' (or pip install wandb), or set "
                   "--config.train.wandb=''."]
  assert 'Traceback' not in r.stderr


@pytest.mark.exhaustive  # trains (CI budget, issue 24)
def test_training_without_wandb_installed_is_unaffected(tmp_path):
  npz = write_npz(tmp_path / 'toy.npz')
  r = _main_without_wandb('--config=configs/tiny.py', f'--workdir={tmp_path / "run"}',
                          f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
                          '--config.train.steps=2', '--config.train.d_updates_per_step=1',
                          '--config.train.eval_every=-1', '--config.train.log_every=1',
                          cwd=REPO)
  assert r.returncode == 0, r.stderr[-3000:]
  with open(tmp_path / 'run' / 'metrics.jsonl') as f:
    records = [json.loads(line) for line in f]
  assert {r['step'] for r in records} == {1, 2} and 'd_loss' in records[0]
  assert not (tmp_path / 'run' / 'wandb').exists()


# ---- tensorboard events without TensorFlow (issue 27) -------------------------------------------


def _read_events(logdir):
  """Scalars, images and hparams of the event files in logdir, through tensorboard's reader."""
  from tensorboard.backend.event_processing import event_accumulator as ea  # noqa: PLC0415
  from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: PLC0415
  from tensorboard.util import tensor_util  # noqa: PLC0415

  acc = ea.EventAccumulator(str(logdir), size_guidance={ea.TENSORS: 0})
  acc.Reload()
  scalars, images = {}, {}
  for tag in acc.Tags()['tensors']:
    if tag.startswith('_hparams_/'):
      continue
    for e in acc.Tensors(tag):
      value = tensor_util.make_ndarray(e.tensor_proto)
      if value.dtype == object:  # [width, height, png, ...]
        images[(tag, e.step)] = [tuple(value[:2])] + [np.asarray(Image.open(io.BytesIO(b)))
                                                      for b in value[2:]]
      else:
        scalars[(tag, e.step)] = float(value)
  hparams = {}
  try:
    content = acc.PluginTagToContent('hparams')
  except KeyError:  # none written
    content = {}
  for run_tags in content.values():
    data = plugin_data_pb2.HParamsPluginData.FromString(run_tags)
    if data.HasField('session_start_info'):
      for k, v in data.session_start_info.hparams.items():
        hparams[k] = v.WhichOneof('kind') and getattr(v, v.WhichOneof('kind'))
  return scalars, images, hparams


def _write_all(writer):
  rng = np.random.default_rng(0)
  grid = rng.integers(0, 256, (1, 20, 30, 3), dtype=np.uint8)
  writer.write_hparams({'lr': 2e-4, 'model': {'backbone': 'biggan', 'attn': True}, 'steps': 3})
  writer.write_scalars(1, {'d_loss': 0.5, 'g_loss': 1.25})
  writer.write_scalars(2, {'d_loss': 0.25, 'eval/fid': 123.5})
  writer.write_images(2, {'samples': grid})
  writer.flush()
  writer.close()
  return grid


def test_events_without_tensorflow_read_like_clus(tmp_path):
  """TensorboardWriter (no TensorFlow) and clu's SummaryWriter (TensorFlow) write the same
  summaries: tensorboard's reader gets the same scalars, images and hparams from both."""
  pytest.importorskip('tensorflow')
  from clu.metric_writers import SummaryWriter  # noqa: PLC0415

  grid = _write_all(writers.TensorboardWriter(str(tmp_path / 'ours')))
  _write_all(SummaryWriter(str(tmp_path / 'clu')))
  ours, theirs = _read_events(tmp_path / 'ours'), _read_events(tmp_path / 'clu')
  assert ours[0] == theirs[0] == {('d_loss', 1): 0.5, ('g_loss', 1): 1.25, ('d_loss', 2): 0.25,
                                  ('eval/fid', 2): 123.5}
  assert ours[1].keys() == theirs[1].keys() == {('samples', 2)}
  assert ours[1][('samples', 2)][0] == theirs[1][('samples', 2)][0] == (b'30', b'20')  # w, h
  np.testing.assert_array_equal(ours[1][('samples', 2)][1], grid[0])
  np.testing.assert_array_equal(theirs[1][('samples', 2)][1], grid[0])
  assert ours[2] == theirs[2] == {'lr': 2e-4, 'model.backbone': 'biggan', 'model.attn': True,
                                  'steps': 3}


def test_a_run_without_tensorflow_writes_events_and_reports_progress(tmp_path):
  """create_writer / progress_action with TensorFlow unimportable (the README's main job)."""
  code = f"""
import sys, logging
sys.modules['tensorflow'] = None
from absl import logging as absl_logging
absl_logging.set_verbosity('info')
from reacgan_jax.platform import writers
w = writers.create_writer({str(tmp_path)!r})
progress = writers.progress_action(10, w, 2)
for step in range(1, 5):
  w.write_scalars(step, {{'d_loss': step / 4}})
  progress(step)
w.close()
assert sys.modules['tensorflow'] is None  # nothing imported it
"""
  r = subprocess.run([sys.executable, '-c', code], capture_output=True, text=True, cwd=REPO,
                     timeout=HANG_S)
  assert r.returncode == 0, r.stderr[-3000:]
  scalars, _, _ = _read_events(tmp_path)
  assert {k: v for k, v in scalars.items() if k[0] == 'd_loss'} == {
      ('d_loss', s): s / 4 for s in range(1, 5)}
  assert {s for (tag, s) in scalars if tag == 'steps_per_sec'} == {2, 4}
  assert '[3] d_loss=0.75' in r.stderr and 'Step 4/10' in r.stderr
