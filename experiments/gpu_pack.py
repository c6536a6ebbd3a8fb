"""Split the GPU check's inputs into parts that each fit one device `run` call, and rebuild them.

The device machine has no network and a call carries at most 64 MiB (working tree included), so
the inputs of experiments/gpu_check.py travel in parts, one per call (experiments/GPU_RUNBOOK.md):

  python experiments/gpu_pack.py pack --out .gpu_parts \
      --file cifar10.npz=/tmp/gpu19/cifar10_raw.npz:xz \
      --file inception_fid_2015-12-05.msgpack=/tmp/gpu19/inception_fid_2015-12-05.msgpack
  # on the device, once per call (the part that call carried); assembles when all have arrived:
  python experiments/gpu_pack.py receive .gpu_parts/part1 --stash /tmp/gpu_in

`pack` writes `<out>/part<k>/part<k>.bin` (at most --part_mib MiB) plus a copy of the manifest
(`manifest.json`: every file's name, size, sha256, compression and place in the byte stream; every
part's size and sha256) beside each part, so any one part folder is enough to check itself.
`receive` verifies the part's sha256 against its manifest, copies it into the stash, and once
every part of that manifest is there, concatenates them, cuts the stream into the files,
decompresses (LZMA) and checks each file's sha256 before writing `<stash>/files/<name>`
(atomically: a file that is there is complete). A mismatch is an error naming the part or file.
`status` prints what a stash holds. `cifar` converts the shared CIFAR-10 npz (zip-deflated) into
an uncompressed npz with the same keys, which LZMA compresses better (input of `pack`).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import lzma
import os
import pathlib
import shutil
import sys

MANIFEST = 'manifest.json'
CHUNK = 1 << 20


def sha256_file(path) -> str:
  h = hashlib.sha256()
  with open(path, 'rb') as f:
    for block in iter(lambda: f.read(CHUNK), b''):
      h.update(block)
  return h.hexdigest()


def _parse_file_spec(spec: str) -> tuple[str, pathlib.Path, str]:
  """'NAME=PATH[:xz]' -> (name, path, 'xz' | 'none')."""
  if '=' not in spec:
    raise ValueError(f'--file {spec!r}: expected NAME=PATH or NAME=PATH:xz')
  name, path = spec.split('=', 1)
  comp = 'none'
  if path.endswith(':xz'):
    path, comp = path[:-3], 'xz'
  if not name or '/' in name or name.startswith('.'):
    raise ValueError(f'--file {spec!r}: NAME must be a plain file name')
  p = pathlib.Path(path).expanduser()
  if not p.is_file():
    raise FileNotFoundError(f'--file {spec!r}: {p} is not a file')
  return name, p, comp


def _stream_pieces(files, workdir: pathlib.Path):
  """Encodes each (name, path, comp) -> list of (manifest entry, encoded file path)."""
  pieces = []
  for name, path, comp in files:
    enc = path
    if comp == 'xz':
      enc = workdir / f'{name}.xz'
      with open(path, 'rb') as src, lzma.open(enc, 'wb', preset=6) as dst:
        shutil.copyfileobj(src, dst, CHUNK)
    entry = {'name': name, 'size': path.stat().st_size, 'sha256': sha256_file(path),
             'compression': comp, 'stream_size': enc.stat().st_size}
    pieces.append((entry, enc))
  return pieces


def pack(files, out, part_mib: float = 55.0) -> dict:
  """Writes out/part<k>/{part<k>.bin, manifest.json}; returns the manifest.

  Args:
    files: list of 'NAME=PATH[:xz]' specs (xz: LZMA-compress that file in the stream).
    out: output folder (emptied of earlier part<k> folders first).
    part_mib: largest part, MiB.
  """
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  for old in out.glob('part*'):
    shutil.rmtree(old) if old.is_dir() else old.unlink()
  work = out / '.encode'
  work.mkdir(exist_ok=True)
  parsed = [_parse_file_spec(s) for s in files]
  names = [n for n, _, _ in parsed]
  if len(set(names)) != len(names):
    raise ValueError(f'--file names must differ: {names}')
  pieces = _stream_pieces(parsed, work)
  part_bytes = int(part_mib * (1 << 20))
  if part_bytes < 1:
    raise ValueError(f'--part_mib={part_mib}: must be > 0')
  offset = 0
  for entry, _ in pieces:
    entry['offset'] = offset
    offset += entry['stream_size']
  total = offset
  n_parts = max(1, -(-total // part_bytes))
  parts, writer, written, k = [], None, 0, 0

  def open_part(k):
    d = out / f'part{k + 1}'
    d.mkdir()
    return open(d / f'part{k + 1}.bin', 'wb')  # noqa: SIM115 (closed below)

  writer = open_part(0)
  for _, enc in pieces:
    with open(enc, 'rb') as src:
      while True:
        room = part_bytes - written
        block = src.read(min(CHUNK, room))
        if not block:
          break
        writer.write(block)
        written += len(block)
        if written == part_bytes and k + 1 < n_parts:
          writer.close()
          k, written = k + 1, 0
          writer = open_part(k)
  writer.close()
  for i in range(n_parts):
    p = out / f'part{i + 1}' / f'part{i + 1}.bin'
    parts.append({'name': p.name, 'size': p.stat().st_size, 'sha256': sha256_file(p)})
  manifest = {'format': 'reacgan_jax gpu_pack 1', 'total_stream_size': total,
              'files': [e for e, _ in pieces], 'parts': parts}
  for i in range(n_parts):
    (out / f'part{i + 1}' / MANIFEST).write_text(json.dumps(manifest, indent=1))
  shutil.rmtree(work)
  return manifest


def _load_manifest(folder: pathlib.Path) -> dict:
  path = folder / MANIFEST
  if not path.exists():
    raise FileNotFoundError(f'{path}: no manifest; carry the whole part folder that '
                            'gpu_pack.py pack wrote')
  return json.loads(path.read_text())


def status(stash) -> dict:
  """{'parts_present': [...], 'parts_missing': [...], 'files': [...]} of a stash folder."""
  stash = pathlib.Path(stash)
  if not (stash / MANIFEST).exists():
    return {'parts_present': [], 'parts_missing': ['(no manifest yet)'], 'files': []}
  m = _load_manifest(stash)
  present = [p['name'] for p in m['parts'] if (stash / p['name']).exists()]
  missing = [p['name'] for p in m['parts'] if p['name'] not in present]
  files = [f['name'] for f in m['files'] if (stash / 'files' / f['name']).exists()]
  return {'parts_present': present, 'parts_missing': missing, 'files': files}


def receive(part_dir, stash) -> dict:
  """Verifies one carried part folder, stashes it, assembles when complete. Returns status()."""
  part_dir, stash = pathlib.Path(part_dir), pathlib.Path(stash)
  m = _load_manifest(part_dir)
  stash.mkdir(parents=True, exist_ok=True)
  if (stash / MANIFEST).exists() and _load_manifest(stash) != m:
    raise ValueError(f'{part_dir}/{MANIFEST} differs from the one in {stash}: parts of two '
                     'different packs; empty the stash or re-pack')
  bins = sorted(part_dir.glob('part*.bin'))
  if len(bins) != 1:
    raise FileNotFoundError(f'{part_dir}: expected one part<k>.bin, found {len(bins)}')
  want = {p['name']: p for p in m['parts']}[bins[0].name]
  if bins[0].stat().st_size != want['size'] or sha256_file(bins[0]) != want['sha256']:
    raise ValueError(f'{bins[0]}: size or sha256 differs from {MANIFEST} (transfer damaged '
                     'it): carry this part again')
  tmp = stash / (bins[0].name + '.tmp')
  shutil.copyfile(bins[0], tmp)
  os.replace(tmp, stash / bins[0].name)
  (stash / MANIFEST).write_text(json.dumps(m, indent=1))
  st = status(stash)
  if not st['parts_missing'] and len(st['files']) < len(m['files']):
    assemble(stash)
    st = status(stash)
  return st


def _stream_reader(stash: pathlib.Path, parts):
  """A file-like reader over the concatenated parts (in manifest order)."""

  class Reader:
    def __init__(self):
      self._files = [stash / p['name'] for p in parts]
      self._i, self._f = 0, open(self._files[0], 'rb')  # noqa: SIM115

    def read(self, n):
      out = b''
      while len(out) < n and self._f is not None:
        block = self._f.read(n - len(out))
        if block:
          out += block
          continue
        self._f.close()
        self._i += 1
        self._f = open(self._files[self._i], 'rb') if self._i < len(self._files) else None  # noqa: SIM115
      return out

  return Reader()


def assemble(stash) -> list[pathlib.Path]:
  """Rebuilds every file of the stash's manifest into <stash>/files/, each sha256-checked."""
  stash = pathlib.Path(stash)
  m = _load_manifest(stash)
  for p in m['parts']:
    path = stash / p['name']
    if not path.exists():
      raise FileNotFoundError(f'{path}: part missing; carry it (gpu_pack.py receive) first')
  out_dir = stash / 'files'
  out_dir.mkdir(exist_ok=True)
  reader = _stream_reader(stash, m['parts'])
  written = []
  for f in m['files']:
    enc = out_dir / (f['name'] + '.stream')
    remaining = f['stream_size']
    with open(enc, 'wb') as dst:
      while remaining:
        block = reader.read(min(CHUNK, remaining))
        if not block:
          raise ValueError(f'stream ended inside {f["name"]}: parts shorter than the manifest')
        dst.write(block)
        remaining -= len(block)
    final, tmp = out_dir / f['name'], out_dir / (f['name'] + '.tmp')
    if f['compression'] == 'xz':
      with lzma.open(enc, 'rb') as src, open(tmp, 'wb') as dst:
        shutil.copyfileobj(src, dst, CHUNK)
      enc.unlink()
    else:
      os.replace(enc, tmp)
    if tmp.stat().st_size != f['size'] or sha256_file(tmp) != f['sha256']:
      tmp.unlink()
      raise ValueError(f'{f["name"]}: rebuilt file does not match its sha256 in {MANIFEST}')
    os.replace(tmp, final)
    written.append(final)
  return written


def cifar_raw(src, dst) -> pathlib.Path:
  """The shared CIFAR-10 npz (x_train, y_train, x_test, y_test; cifar_rows) saved uncompressed."""
  import numpy as np  # noqa: PLC0415 (pack/receive need only the standard library)

  with np.load(src) as d:
    arrays = {k: d[k] for k in ('x_train', 'y_train', 'x_test', 'y_test')}
  dst = pathlib.Path(dst)
  dst.parent.mkdir(parents=True, exist_ok=True)
  np.savez(dst, **arrays)
  return dst


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python experiments/gpu_pack.py', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='cmd', required=True)
  p = sub.add_parser('pack', help='split files into parts')
  p.add_argument('--out', default='.gpu_parts')
  p.add_argument('--file', action='append', required=True, help='NAME=PATH or NAME=PATH:xz')
  p.add_argument('--part_mib', type=float, default=55.0)
  r = sub.add_parser('receive', help='verify + stash one part; assemble when complete')
  r.add_argument('part_dir')
  r.add_argument('--stash', default='/tmp/gpu_in')
  s = sub.add_parser('status', help='what a stash holds')
  s.add_argument('--stash', default='/tmp/gpu_in')
  c = sub.add_parser('cifar', help='shared CIFAR-10 npz -> uncompressed npz (pack input)')
  c.add_argument('src')
  c.add_argument('dst')
  args = parser.parse_args(argv)
  if args.cmd == 'pack':
    m = pack(args.file, args.out, args.part_mib)
    for part in m['parts']:
      print(f'{part["name"]}: {part["size"] / 2**20:.1f} MiB sha256 {part["sha256"][:16]}')
    for f in m['files']:
      print(f'{f["name"]}: {f["size"] / 2**20:.1f} MiB -> {f["stream_size"] / 2**20:.1f} MiB '
            f'({f["compression"]})')
  elif args.cmd == 'receive':
    print(json.dumps(receive(args.part_dir, args.stash)))
  elif args.cmd == 'status':
    print(json.dumps(status(args.stash)))
  else:
    print(cifar_raw(args.src, args.dst))
  return 0


if __name__ == '__main__':
  sys.exit(main())
