"""Our GPU learning curves (experiments/gpu_check.py records) beside StudioGAN's logged ones.

  python experiments/gpu_compare.py merge --out docs/results/gpu_20261204 \
      RACE_DIR/gpu_<t>.json CURVES_DIR/gpu_<t>.json
  python experiments/gpu_compare.py compare --records docs/results/gpu_20261204.json \
      --log cifar10_biggan_pd=/work/studiogan/logs/CIFAR10/BigGAN-train-2021_01_15_14_48_48.log \
      --plot docs/gpu_h200_curves.png

`merge` joins the records of several device calls (each call's `gpu_<t>.json`; every record
keeps its own `t` and gains `call`, the call's index in the order given) into `<out>.json` and
rewrites the tables into `<out>.md` (experiments/gpu_report.render_markdown).
`compare` reads StudioGAN's training logs (lines `FID score (Step: S, Using test moments): F` and
`Inception score (Step: S, ...): I`, FID-10k against the test split), prints a markdown table of
our FID beside the logged one at every step both have (difference in percent of the logged
value), and, with --plot, draws both curves (ours: every evaluation record of the config; theirs:
the log's evaluations up to --max_step).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import gpu_report  # noqa: E402

_FID = re.compile(r'> FID score \(Step: (\d+), Using test moments\): ([0-9.eE+-]+)')
_IS = re.compile(r'> Inception score \(Step: (\d+), \d+ generated images\): ([0-9.eE+-]+)')


def parse_studiogan_log(text: str) -> dict[int, dict]:
  """{step: {'fid': F, 'is': I}} from a StudioGAN training log ('Best FID' lines ignored)."""
  out: dict[int, dict] = {}
  for pattern, key in ((_FID, 'fid'), (_IS, 'is')):
    for m in pattern.finditer(text):
      out.setdefault(int(m.group(1)), {})[key] = float(m.group(2))
  return dict(sorted(out.items()))


def merge(paths, out_stem) -> list[dict]:
  records = []
  for call, path in enumerate(paths, 1):
    with open(path) as f:
      records += [dict(r, call=call) for r in json.load(f)['records']]
  with open(out_stem + '.json', 'w') as f:
    json.dump({'records': records}, f, indent=1)
    f.write('\n')
  with open(out_stem + '.md', 'w') as f:
    f.write(gpu_report.render_markdown(records))
  return records


def ours_curve(records, config) -> dict[int, float]:
  return {r['step']: r['fid'] for r in records
          if r.get('kind') == 'eval' and r.get('config') == config and r.get('fid') is not None}


def table(records, logs: dict[str, dict[int, dict]]) -> tuple[str, list[dict]]:
  """Markdown rows of our FID beside the logged one at the steps both have."""
  rows = []
  for config, logged in logs.items():
    for step, fid in sorted(ours_curve(records, config).items()):
      if step in logged and 'fid' in logged[step]:
        ref = logged[step]['fid']
        rows.append(dict(config=config, step=step, ours=fid, studiogan=ref,
                         diff_pct=100.0 * (fid - ref) / ref))
  lines = ['| config | step | ours FID-10k | StudioGAN log FID-10k | difference |',
           '|---|---|---|---|---|']
  lines += [f"| {r['config']} | {r['step']} | {r['ours']:.2f} | {r['studiogan']:.2f} | "
            f"{r['diff_pct']:+.1f} % |" for r in rows]
  return '\n'.join(lines), rows


def plot(records, logs, path, max_step, names=None):
  import matplotlib  # noqa: PLC0415

  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # noqa: PLC0415

  fig, ax = plt.subplots(figsize=(6.4, 4.0))
  configs = sorted({r['config'] for r in records if r.get('kind') == 'eval'})
  for i, config in enumerate(configs):
    c = f'C{i}'
    ours = ours_curve(records, config)
    ax.plot(list(ours), list(ours.values()), 'o-', color=c, label=f'ours {config}')
    if config in logs:
      steps = [s for s, v in logs[config].items() if s <= max_step and 'fid' in v]
      ax.plot(steps, [logs[config][s]['fid'] for s in steps], 's--', color=c, alpha=0.7,
              label=f'StudioGAN log: {(names or {}).get(config, config)}')
  ax.set_xlabel('training step (5 D updates + 1 G update)')
  ax.set_ylabel('FID-10k vs CIFAR-10 test')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def main(argv=None):
  parser = argparse.ArgumentParser(prog='python experiments/gpu_compare.py', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='cmd', required=True)
  m = sub.add_parser('merge')
  m.add_argument('--out', required=True, help='output stem: writes <out>.json and <out>.md')
  m.add_argument('paths', nargs='+')
  c = sub.add_parser('compare')
  c.add_argument('--records', required=True)
  c.add_argument('--log', action='append', default=[], help='CONFIG=PATH of a StudioGAN log')
  c.add_argument('--plot', default='')
  c.add_argument('--max_step', type=int, default=10000)
  args = parser.parse_args(argv)
  if args.cmd == 'merge':
    records = merge(args.paths, args.out)
    print(f'{len(records)} records -> {args.out}.json, {args.out}.md')
    return 0
  with open(args.records) as f:
    records = json.load(f)['records']
  logs, names = {}, {}
  for spec in args.log:
    config, sep, path = spec.partition('=')
    if not sep:
      parser.error(f'--log {spec!r}: expected CONFIG=PATH')
    with open(path) as f:
      logs[config] = parse_studiogan_log(f.read())
    names[config] = os.path.basename(path)
  text, _ = table(records, logs)
  print(text)
  if args.plot:
    plot(records, logs, args.plot, args.max_step, names)
    print(f'plot: {args.plot}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
