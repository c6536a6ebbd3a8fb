"""metrics.jsonl on resume: records past the restored step dropped, damaged lines set aside."""

import json
import logging

from reacgan_jax.platform import writers


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
