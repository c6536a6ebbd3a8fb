"""Plots and the RESULTS.md table from experiments/cifar10_compare.py's summaries.

  python experiments/report.py --root=runs/cifar10_compare --out=docs
  python experiments/report.py --root=runs/cifar10_ablation_cpu --out=docs --name=cifar10_ablation

Writes under --out: results/<name>.json (the summaries, curves included: what the table and
plots are made of, committed), results/<name>_table.md (the RESULTS.md table rows),
fid_over_steps.png, final_fid.png (last FID per run), cond_grad_norm.png (ReACGAN's Figure 1
diagnostic, every run with a conditional loss), d_accuracy.png and samples_<variant>.png (each
run's last class-conditional grid: rows are classes, same z across runs). --name defaults to
cifar10_compare; any other name also prefixes the images (<name>_fid_over_steps.png, ...) so
that reports of different run roots live side by side in docs/.
"""

import argparse
import json
import os
import shutil
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

METHODS = ('reacgan', 'acgan', 'pd', 'none')
LABELS = {'reacgan': 'ReACGAN (D2D-CE)', 'acgan': 'ACGAN', 'pd': 'Projection D',
          'none': 'Unconditional', 'reacgan_no_fnr': 'D2D-CE w/o false-negative removal',
          'reacgan_no_margin': 'D2D-CE w/o margins', 'reacgan_t0.25': 'D2D-CE T=0.25',
          'reacgan_t1.0': 'D2D-CE T=1.0'}


def _smooth(steps, y, k=5):
  """Running mean over k logged points, aligned with the last step of each window."""
  y = np.asarray(y, np.float64)
  k = max(1, min(k, len(y) // 10))  # short runs: keep their first points
  if len(y) < k or k == 1:
    return list(steps), y
  return list(steps)[k - 1:], np.convolve(y, np.ones(k) / k, mode='valid')


def plot_curves(summaries, out, prefix=''):
  fig, axes = plt.subplots(1, 2, figsize=(11, 4))
  for ax, group, title in ((axes[0], METHODS, 'methods'),
                           (axes[1], [v for v in summaries if v.startswith('reacgan')],
                            'D2D-CE ablations')):
    present = [v for v in group if v in summaries and summaries[v]['fid_curve']]
    for v in present:
      steps, fids = zip(*summaries[v]['fid_curve'], strict=True)
      ax.plot(steps, fids, marker='o', label=LABELS.get(v, v))
    if len(present) < 2 and group is not METHODS:  # one run is no ablation: say so
      title += f' ({len(present)} run{"" if len(present) == 1 else "s"} in this report)'
    # The protocol (samples, reference images) is the table's: a smoke FID is not FID-10k.
    ax.set(xlabel='generator step', ylabel='FID (protocol in the table)',
           title=f'FID over steps: {title}')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, f'{prefix}fid_over_steps.png'), dpi=110)
  plt.close(fig)

  final = [(v, s['final']['fid']) for v, s in summaries.items() if s['final'].get('fid')]
  fig, ax = plt.subplots(figsize=(1.2 * len(final) + 2.5, 4))
  bars = ax.bar(range(len(final)), [f for _, f in final])
  ax.bar_label(bars, fmt='%.1f', fontsize=8)
  ax.set_xticks(range(len(final)), [v for v, _ in final], rotation=30, ha='right', fontsize=8)
  ax.set(ylabel='FID (protocol in the table)', title='FID at the last evaluation')
  ax.grid(alpha=0.3, axis='y')
  fig.tight_layout()
  fig.savefig(os.path.join(out, f'{prefix}final_fid.png'), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.5, 4))
  for v, s in summaries.items():
    curve = s.get('cond_grad_norm_curve') or []
    if curve and v != 'none':
      steps, norms = zip(*curve, strict=True)
      ax.plot(*_smooth(steps, norms), label=LABELS.get(v, v))
  ax.set(xlabel='generator step', ylabel='||grad of lambda * cond loss wrt h||_2 (mean)',
         title='Gradient the conditional head sends into D (ReACGAN Fig. 1)', yscale='log')
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(os.path.join(out, f'{prefix}cond_grad_norm.png'), dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(6.5, 4))
  for v, s in summaries.items():
    curve = s.get('d_acc_curve') or []
    if curve:
      ax.plot(*_smooth([c[0] for c in curve], [c[1] for c in curve]),
              label=f'{LABELS.get(v, v)}: real')
  ax.set(xlabel='generator step', ylabel='D accuracy on real (hinge sign)',
         title='Discriminator accuracy on real images')
  ax.grid(alpha=0.3)
  ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(os.path.join(out, f'{prefix}d_accuracy.png'), dpi=110)
  plt.close(fig)


def _fmt(x, spec='.2f'):
  return '—' if x is None or (isinstance(x, float) and not np.isfinite(x)) else format(x, spec)


def table(summaries):
  rows = ['| run | method | steps | batch | hardware | wall (training) | FID | precision | '
          'recall | density | coverage | classifier acc. | MS-SSIM (real) |',
          '|---|---|---|---|---|---|---|---|---|---|---|---|---|']
  for v, s in summaries.items():
    f = s['final']
    steps = f'{s["steps_done"]}' + ('' if s['finished'] else f' of {s["steps_planned"]}')
    ms = (f'{_fmt(f.get("msssim"), ".3f")} ({_fmt(f.get("msssim_real"), ".3f")})'
          if 'msssim' in f else '—')
    rows.append(
        f'| `{v}` | {LABELS.get(v, v)} | {steps} | {s["batch_size"]} x {s["d_updates_per_step"]} D '
        f'| {", ".join(s["hardware"])} | {s["wall_s"] / 60:.1f} min | {_fmt(f.get("fid"))} | '
        f'{_fmt(f.get("precision"), ".3f")} | {_fmt(f.get("recall"), ".3f")} | '
        f'{_fmt(f.get("density"), ".3f")} | {_fmt(f.get("coverage"), ".3f")} | '
        f'{_fmt(f.get("accuracy"), ".3f")} | {ms} |')
  protocols = sorted({s['final']['protocol'] for s in summaries.values()
                      if s['final'].get('protocol')})
  notes = [f'\nProtocol{"s" if len(protocols) > 1 else ""} of the metrics: ' +
           '; '.join(f'"{p}"' for p in protocols)] if protocols else []
  return '\n'.join(rows + notes) + '\n'


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--root', default='runs/cifar10_compare')
  parser.add_argument('--out', default='docs')
  parser.add_argument('--name', default='cifar10_compare',
                      help='results/<name>.json and _table.md; other names prefix the images too')
  args = parser.parse_args()
  prefix = '' if args.name == 'cifar10_compare' else f'{args.name}_'

  path = os.path.join(args.root, 'summary.json')
  if not os.path.exists(path):
    sys.exit(f'{path} not found: run experiments/cifar10_compare.py first (or with '
             '--summarize_only to rebuild it from the run directories).')
  with open(path) as f:
    summaries = json.load(f)
  rank = {v: i for i, v in enumerate(LABELS)}  # methods first, then the ablations
  summaries = {v: summaries[v] for v in sorted(summaries, key=lambda v: rank.get(v, len(rank)))}
  os.makedirs(os.path.join(args.out, 'results'), exist_ok=True)
  for v, s in summaries.items():
    if s.get('final_grid') and os.path.exists(s['final_grid']):
      dst = os.path.join(args.out, f'{prefix}samples_{v}.png')
      shutil.copyfile(s['final_grid'], dst)
      s['final_grid'] = os.path.relpath(dst, args.out)
  with open(os.path.join(args.out, 'results', f'{args.name}.json'), 'w') as f:
    json.dump(summaries, f, indent=1)
  plot_curves(summaries, args.out, prefix)
  md = table(summaries)
  with open(os.path.join(args.out, 'results', f'{args.name}_table.md'), 'w') as f:
    f.write(md)
  print(md)


if __name__ == '__main__':
  main()
