"""Crash-safe records and tables of experiments/gpu_check.py.

`Log(out, stem)` keeps every record in memory and, at each `write`:
- appends it as one line to `<out>/<stem>.jsonl` (flush + fsync: a kill loses at most the line
  being written);
- rewrites `<out>/<stem>.json` ({"records": [...]}) and `<out>/<stem>.md` (tables) through a
  temporary file and `os.replace`, so either file is always complete and valid.
`add_grid(name, uint8 image)` adds a PNG to `<out>/grids.zip` the same way (copy, append,
replace). Records are plain dicts: `kind`, `config`, `step`, `t` (seconds since start) always
present; NaN/inf are written as null.
"""

from __future__ import annotations

import io
import json
import math
import os
import shutil
import tempfile
import time
import zipfile


def _clean(v):
  if isinstance(v, float) and not math.isfinite(v):
    return None
  if isinstance(v, dict):
    return {k: _clean(x) for k, x in v.items()}
  if isinstance(v, (list, tuple)):
    return [_clean(x) for x in v]
  if hasattr(v, 'item') and getattr(v, 'ndim', 1) == 0:  # numpy / jax scalars
    return _clean(v.item())
  return v


def _atomic_write(path, data: bytes):
  tmp = path + '.tmp'
  with open(tmp, 'wb') as f:
    f.write(data)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)


def _fmt(v, spec='.4g'):
  if v is None:
    return '—'
  if isinstance(v, float):
    return format(v, spec)
  return str(v)


def render_markdown(records) -> str:
  """The tables of a run: race, ratios, evaluations, phase ends, skips and errors."""
  lines = ['# GPU check', '']
  env = [r for r in records if r['kind'] == 'env']
  if env:
    e = env[-1]
    lines += [f"Devices: {', '.join(e.get('devices', []))}; jax {e.get('jax')}.", '']
  race = [r for r in records if r['kind'] == 'race']
  if race:
    lines += ['## a. Same-GPU race (one step = D updates + 1 G update)', '',
              '| impl | config | precision | batch | median step s | img/s | compile/first s | '
              'GFLOP/step | TFLOP/s | of peak |', '|---|---|---|---|---|---|---|---|---|---|']
    for r in race:
      flops = r.get('flops_per_step')
      frac = r.get('frac_peak')
      lines.append(
          f"| {r['impl']}{' (partial)' if r.get('partial') else ''} | {r['config']} | "
          f"{r['precision']} | {r.get('batch')} | "
          f"{_fmt(r['median_step_s'])} | {_fmt(r['img_per_s'], '.1f')} | "
          f"{_fmt(r.get('compile_s', r.get('first_step_s')), '.1f')} | "
          f"{_fmt(flops / 1e9 if flops else None, '.1f')} | {_fmt(r.get('tflops'), '.1f')} | "
          f"{_fmt(frac * 100 if frac is not None else None, '.1f')}{'%' if frac else ''} |")
    lines.append('')
    lines.append('Float32 runs allow TF32 on both sides (JAX default matmul precision; torch '
                 'allow_tf32 for cuDNN and cuBLAS). Mixed precision: ours bfloat16 compute, '
                 'StudioGAN -mpc (autocast fp16 + GradScaler). img/s = real images through D per '
                 's.')
    lines.append('')
  ratios = [r for r in records if r['kind'] == 'race_ratio']
  if ratios:
    lines += ['| precision | ours img/s | StudioGAN img/s | ours / StudioGAN |',
              '|---|---|---|---|']
    lines += [f"| {r['precision']} | {_fmt(r['ours_img_per_s'], '.1f')} | "
              f"{_fmt(r['studiogan_img_per_s'], '.1f')} | {_fmt(r['speedup'], '.2f')} |"
              for r in ratios]
    lines.append('')
  evals = [r for r in records if r['kind'] == 'eval']
  if evals:
    lines += ['## b, c. Learning curves', '', '| config | step | FID | IS | eval s | t s |',
              '|---|---|---|---|---|---|']
    lines += [f"| {r['config']} | {r['step']} | {_fmt(r.get('fid'), '.2f')} | "
              f"{_fmt(r.get('is_mean'), '.2f')} | {_fmt(r.get('eval_s'), '.0f')} | "
              f"{_fmt(r['t'], '.0f')} |" for r in evals]
    protos = sorted({r['protocol'] for r in evals if r.get('protocol')})
    lines += [''] + [f'Protocol: {p}' for p in protos] + ['']
  trains = [r for r in records if r['kind'] == 'train' and r.get('step_s')]
  if trains:
    last = {}
    for r in trains:
      last[r['config']] = r
    lines += ['| config | last logged step | s/step | img/s |', '|---|---|---|---|']
    lines += [f"| {c} | {r['step']} | {_fmt(r['step_s'])} | {_fmt(r.get('img_per_s'), '.1f')} |"
              for c, r in last.items()]
    lines.append('')
  other = [r for r in records if r['kind'] in ('phase_end', 'race_skipped', 'race_error',
                                               'error', 'eval_error', 'extend', 'end')]
  if other:
    lines += ['## Phase ends, skips, errors', '']
    for r in other:
      why = r.get('reason', r.get('target', ''))
      lines.append(f"- {r['kind']} {r.get('impl', '')} {r.get('config') or ''} "
                   f"{r.get('precision', '')} step={r.get('step')}: {why}".replace('  ', ' '))
    lines.append('')
  return '\n'.join(lines)


class Log:
  """Records of one run, written as they come (see the module docstring)."""

  def __init__(self, out, stem, t0=None, workdir=None):
    os.makedirs(out, exist_ok=True)
    self.out, self.stem = out, stem
    self.t0 = time.time() if t0 is None else t0
    self.workdir = workdir or tempfile.mkdtemp(prefix='gpu_check_')
    os.makedirs(self.workdir, exist_ok=True)
    self.records = []
    self._jsonl = open(os.path.join(out, stem + '.jsonl'), 'a')  # noqa: SIM115 (process-long)

  def write(self, **record):
    record.setdefault('config', None)
    record.setdefault('step', None)
    record['t'] = round(time.time() - self.t0, 3)
    record = _clean(record)
    self.records.append(record)
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    os.fsync(self._jsonl.fileno())
    _atomic_write(os.path.join(self.out, self.stem + '.json'),
                  json.dumps({'records': self.records}, indent=1).encode())
    _atomic_write(os.path.join(self.out, self.stem + '.md'),
                  render_markdown(self.records).encode())
    short = {k: v for k, v in record.items() if k not in ('step_s', 'tail', 'patches')}
    print(json.dumps(short), flush=True)
    return record

  def add_grid(self, name, image):
    """Adds `image` (uint8 [H, W, 3]) as PNG `name` to <out>/grids.zip (atomically)."""
    from PIL import Image  # noqa: PLC0415

    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format='PNG')
    path = os.path.join(self.out, 'grids.zip')
    tmp = path + '.tmp'
    if os.path.exists(path):
      shutil.copyfile(path, tmp)
    with zipfile.ZipFile(tmp, 'a') as z:
      z.writestr(name, buf.getvalue())
    os.replace(tmp, path)
