"""Fréchet Inception Distance (SPEC 5), cached reference statistics, and the `fid` CLI.

FID = |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)), in float64, with
`scipy.linalg.sqrtm` and pytorch-fid's handling of its numerical failures (eps offset when the
root is not finite, tolerate an imaginary part up to 1e-3 on the diagonal, keep the real part).

CLI (`python -m reacgan_jax.fid`):
    python -m reacgan_jax.fid PATH_A PATH_B [--weights FILE] [--batch-size N]
        [--resize legacy|friendly|clean] [--cifar-rows] [--num-images N]
    python -m reacgan_jax.fid --save-stats PATH_IN OUT.npz [...]
    python -m reacgan_jax.fid PATH_A PATH_B --kid [--kid-subsets 100] [--kid-subset-size 1000]
    python -m reacgan_jax.fid PATH_A PATH_B --fd-dinov2 [--dinov2-weights FILE]
Each PATH is an image folder, an .npz of uint8 NHWC images (key x, images or x_train; pick another
key with FILE.npz:KEY), or saved statistics (.npz with mu and sigma). Prints `FID: <value>` last;
--kid prints `KID: <mean> +- <std>` before it (kid.py: PATH_A plays the generated set, whose
subsets are drawn first). KID needs the features of both inputs, so neither may be statistics.
--fd-dinov2 prints `FD-DINOv2: <value>` before it: the Fréchet distance of DINOv2 ViT-L/14
features (Stein et al. 2023; evaluation/dinov2.py, converted weights from
`python -m reacgan_jax.evaluation.dinov2_convert`); it too needs images on both sides.

Measured with this code (default_1.pt weights, float32 HIGHEST-precision convs on an H100; the
same pipeline as the CLI): CIFAR-10 train 50k vs test 10k = 3.1518 ('legacy'; SPEC 5 quotes
~3.15); train first 10k vs test 10k = 5.1966 ('legacy' and 'friendly'), 5.3511 ('clean').
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import sys
import warnings
import zipfile

import numpy as np
from absl import logging
from scipy import linalg

from reacgan_jax import errors
from reacgan_jax.errors import InputError
from reacgan_jax.evaluation import (
  dinov2,
  fid_inputs,
  fid_protocol,
  inception,
  inception_weights,
  kid,
)

# ---------------------------------------------------------------------------------------------
# Statistics and distance
# ---------------------------------------------------------------------------------------------


def compute_statistics(features) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance of features, in float64.

  Args:
    features: [N, D] (N >= 2).
  Returns:
    (mu [D] float64, sigma [D, D] float64, the unbiased covariance (ddof=1) as np.cov).
  """
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or f.shape[0] < 2:
    raise InputError(f'features: expected [N >= 2, D], got shape {f.shape}')
  return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(mu1, sigma1, mu2, sigma2, eps: float = 1e-6) -> float:
  """Fréchet distance between N(mu1, sigma1) and N(mu2, sigma2), float64 (pytorch-fid's recipe).

  Args:
    mu1, mu2: [D] means. sigma1, sigma2: [D, D] covariances.
    eps: diagonal offset added to both covariances when sqrtm of the product is not finite
      (near-singular covariances, e.g. fewer samples than dimensions).
  Returns:
    FID as a Python float.
  Raises:
    ValueError when shapes differ or the matrix root has a significant imaginary part.
  """
  mu1 = np.atleast_1d(np.asarray(mu1, np.float64))
  mu2 = np.atleast_1d(np.asarray(mu2, np.float64))
  s1 = np.atleast_2d(np.asarray(sigma1, np.float64))
  s2 = np.atleast_2d(np.asarray(sigma2, np.float64))
  if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (mu1.shape[0],) * 2:
    raise InputError(f'statistics shapes differ: mu {mu1.shape} vs {mu2.shape}, '
                     f'sigma {s1.shape} vs {s2.shape}')
  diff = mu1 - mu2
  with warnings.catch_warnings():
    warnings.simplefilter('ignore', RuntimeWarning)  # sqrtm warns on singular input; handled below
    covmean = linalg.sqrtm(s1 @ s2)
  if not np.isfinite(covmean).all():
    logging.warning('FID: sqrtm(sigma1 sigma2) is not finite; adding %g to the diagonals', eps)
    offset = np.eye(s1.shape[0]) * eps
    covmean = linalg.sqrtm((s1 + offset) @ (s2 + offset))
  if np.iscomplexobj(covmean):
    if not np.allclose(np.diagonal(covmean).imag, 0, atol=1e-3):
      raise InputError(f'FID: imaginary component {np.max(np.abs(covmean.imag)):g} in '
                       'sqrtm(sigma1 sigma2): the covariances are too ill-conditioned (use more '
                       'samples than feature dimensions)')
    covmean = covmean.real
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def save_statistics(path, mu, sigma, n: int, description: str) -> pathlib.Path:
  """Writes statistics as npz: mu [D], sigma [D, D] (float64), n, description (what/how)."""
  path = pathlib.Path(path).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + '.tmp.npz')
  np.savez(tmp, mu=np.asarray(mu, np.float64), sigma=np.asarray(sigma, np.float64),
           n=np.int64(n), description=np.str_(description))
  tmp.replace(path)
  return path


def load_statistics(path) -> dict:
  """Reads statistics written by `save_statistics` (or any npz with mu and sigma, e.g. pytorch-fid).

  Returns:
    {'mu': [D] float64, 'sigma': [D, D] float64, 'n': int or None, 'description': str}.
  """
  path = pathlib.Path(path).expanduser()
  if path.is_file():
    fid_inputs.check_npz(path, f'{path}: cannot read FID statistics')
  try:
    with np.load(path, allow_pickle=False) as d:
      if 'mu' not in d or 'sigma' not in d:
        raise InputError(f'{path}: not an FID statistics file (needs arrays mu and sigma, has '
                         f'{sorted(d.keys())})')
      stats = {'mu': d['mu'].astype(np.float64), 'sigma': d['sigma'].astype(np.float64),
               'n': int(d['n']) if 'n' in d else None,
               'description': str(d['description']) if 'description' in d else ''}
  except (OSError, EOFError, zipfile.BadZipFile) as e:
    raise InputError(f'{path}: cannot read FID statistics ({e})') from e
  check_finite(stats, str(path))
  return stats


def check_finite(stats: dict, name: str):
  """InputError when mu or sigma hold NaN/Inf (an FID of them would be NaN, not a number)."""
  for k in ('mu', 'sigma'):
    bad = int(np.size(stats[k]) - np.isfinite(stats[k]).sum())
    if bad:
      raise InputError(f'{name}: {bad} NaN/Inf value(s) in {k} of its FID statistics (NaN '
                       'features: broken images, weights or generator); recompute them.')


def describe(source: str, n: int, resize: str, weights_source: str, network: str = '',
             features: str = 'pool3 2048-d, float64 mean/cov (ddof=1)', **reference) -> str:
  """What statistics were computed from, stored next to them (protocol made explicit, SPEC 7).

  network: fid_protocol.network_id of the weights file ('' = unknown), compared by the CLI.
  weights_source is stored under 'inception' whatever the network (FD-DINOv2's statistics name
  their DINOv2 weights there, and `features` says which features they are).
  reference: what the reference set is (the evaluator's dataset, split, image_size, num_ref),
  checked when config.eval.ref_stats names the file.
  """
  d = {'source': source, 'n': n, 'resize': resize, 'inception': weights_source,
       'features': features, **reference}
  if network:
    d['network'] = network
  return json.dumps(d, sort_keys=True)


def statistics_of_images(params, images, *, batch_size: int = 200, resize: str = 'legacy',
                         progress: bool = False, total: int | None = None
                         ) -> tuple[np.ndarray, np.ndarray, int]:
  """(mu, sigma, n) of Inception pool3 features of images (array or iterable of `total` batches)."""
  feats = inception.extract_batched(params, images, batch_size=batch_size, resize=resize,
                                    progress=progress, desc='fid', total=total)['pool']
  mu, sigma = compute_statistics(feats)
  return mu, sigma, feats.shape[0]


def cached_statistics(path, source: str, resize: str, network: str) -> dict | None:
  """The statistics cached at `path` when they were computed under (source, resize, network);
  None (with a warning when a cache of another protocol is there) when they must be computed."""
  path = pathlib.Path(path).expanduser()
  if not path.exists():
    return None
  stats = load_statistics(path)
  try:
    cached = json.loads(stats['description'])
  except json.JSONDecodeError:
    cached = {}
  if (cached.get('source'), cached.get('resize'), cached.get('inception')) == (
      source, resize, network):
    logging.info('FID reference statistics from cache %s (n=%s)', path, stats['n'])
    return stats
  logging.warning('FID reference cache %s was computed from %s; recomputing for %s', path,
                  stats['description'], (source, resize, network))
  return None


def reference_statistics(path, images_fn, params, *, source: str, batch_size: int = 200,
                         resize: str = 'legacy', weights_source: str = '',
                         progress: bool = False) -> dict:
  """Reference statistics of a dataset split, computed once and cached at `path`.

  The cache is used when its stored description (source, n, resize, weights) equals the one
  requested; otherwise it is recomputed and overwritten (with a warning), so a changed protocol
  never silently reuses stale numbers.

  Args:
    path: npz cache file.
    images_fn: () -> [N, H, W, 3] uint8 images (only called on a cache miss).
    params: Inception params. source: e.g. 'cifar10:test (shared/data/cifar10.npz)'.
  Returns:
    load_statistics-style dict.
  """
  path = pathlib.Path(path).expanduser()
  stats = cached_statistics(path, source, resize, weights_source)
  if stats is not None:
    return stats
  images = images_fn()
  mu, sigma, n = statistics_of_images(params, images, batch_size=batch_size, resize=resize,
                                      progress=progress)
  description = describe(source, n, resize, weights_source)
  save_statistics(path, mu, sigma, n, description)
  logging.info('FID reference statistics written to %s (%s)', path, description)
  return {'mu': mu, 'sigma': sigma, 'n': n, 'description': description}


def _statistics_for(spec, params, weights, args) -> dict:
  """FID statistics of one CLI input; `weights` = (path string, network id).

  An image input's dict also holds its pool3 'features' [N, 2048] (for --kid)."""
  if fid_inputs.is_statistics_file(spec):
    stats = load_statistics(spec)
    logging.info('%s: statistics (n=%s, %s)', spec, stats['n'], stats['description'])
    return stats
  images, n, source = fid_inputs.load_images(spec, cifar_rows=args.cifar_rows,
                                             num_images=args.num_images, chunk=args.batch_size)
  feats = inception.extract_batched(params, images, batch_size=args.batch_size,
                                    resize=args.resize, progress=n > args.batch_size, desc='fid',
                                    total=-(-n // args.batch_size))['pool']
  mu, sigma = compute_statistics(feats)
  n = feats.shape[0]
  stats = {'mu': mu, 'sigma': sigma, 'n': n, 'features': feats,
           'description': describe(source, n, args.resize, *weights)}
  check_finite(stats, f'{spec} (Inception features of its images)')
  return stats


PROG = 'python -m reacgan_jax.fid'


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=errors.command_name(PROG),
      description='FID between two image sets (folders, .npz images or .npz statistics), with the '
                  'FID Inception-v3 (2015-12-05) in JAX. An .npz input may name its array: '
                  'FILE.npz:KEY (default: x, images or x_train).',
      epilog='example (CIFAR-10 train vs test, SPEC 5; ~3.15 with all 50k train images):\n'
             '  python -m reacgan_jax.fid ../shared/data/cifar10.npz:x_train '
             '../shared/data/cifar10.npz:x_test --cifar-rows\n'
             '  python -m reacgan_jax.fid --save-stats ../shared/data/cifar10.npz:x_test '
             'cifar10_test.npz --cifar-rows',
      formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('paths', nargs='*', metavar='PATH', help='two inputs (PATH_A PATH_B)')
  parser.add_argument('--save-stats', nargs=2, metavar=('PATH_IN', 'OUT_NPZ'),
                      help='compute the statistics of PATH_IN and write them to OUT_NPZ')
  parser.add_argument('--weights', default=None,
                      help='converted Inception weights (default: the cache, see '
                           'python -m reacgan_jax.evaluation.convert)')
  parser.add_argument('--batch-size', type=int, default=200)
  parser.add_argument('--resize', choices=inception.RESIZE_MODES, default='legacy',
                      help='legacy: torch bilinear (pytorch-fid, StudioGAN); friendly: PIL '
                           'bilinear; clean: PIL bicubic (clean-fid)')
  parser.add_argument('--cifar-rows', action='store_true',
                      help='2-D npz arrays are CIFAR rows [N, 3*H*W] (R, G, B planes); '
                           '4-D arrays are NHWC either way')
  parser.add_argument('--num-images', type=int, default=None,
                      help='use only the first N images of each image input')
  parser.add_argument('--kid', action='store_true',
                      help='also print the Kernel Inception Distance (stylegan2-ada-pytorch\'s '
                           'rule, unbiased, mean and std over subsets); needs images, not '
                           'statistics, on both sides')
  parser.add_argument('--kid-subsets', type=int, default=kid.NUM_SUBSETS,
                      help='KID: random subsets averaged (default %(default)s)')
  parser.add_argument('--kid-subset-size', type=int, default=kid.MAX_SUBSET_SIZE,
                      help='KID: rows per subset, at most the smaller input (default %(default)s)')
  parser.add_argument('--kid-seed', type=int, default=0,
                      help='KID: seed of the subset draws (default %(default)s)')
  parser.add_argument('--fd-dinov2', action='store_true',
                      help='also print FD-DINOv2 (Stein et al. 2023, dgm-eval): the Fréchet '
                           'distance of DINOv2 ViT-L/14 CLS features; needs images on both sides')
  parser.add_argument('--dinov2-weights', default=None,
                      help='converted DINOv2 weights (default: the cache, see python -m '
                           'reacgan_jax.evaluation.dinov2_convert)')
  parser.add_argument('--allow-protocol-mismatch', action='store_true',
                      help='compare statistics of different resize modes or networks anyway '
                           '(a warning instead of an error)')
  return parser


def _load_weights(path):
  """(params, (weights path string, network id)); user errors for a missing or broken file."""
  try:
    _, params = inception.load_inception(path)
  except FileNotFoundError as e:
    raise errors.MissingFileError(str(e)) from e
  except ValueError as e:
    raise InputError(str(e)) from e
  where = pathlib.Path(path).expanduser() if path else inception_weights.default_weights_path()
  return params, (str(where), fid_protocol.network_id(where))


def main(argv=None) -> float | None:
  """The CLI; raises UserError subclasses for bad input (`cli` turns them into a message)."""
  parser = _parser()
  args = parser.parse_args(argv)
  if bool(args.save_stats) == (len(args.paths) == 2) or (args.paths and len(args.paths) != 2):
    parser.error('give either PATH_A PATH_B, or --save-stats PATH_IN OUT.npz')
  if (args.kid or args.fd_dinov2) and args.save_stats:
    parser.error('--kid and --fd-dinov2 compare two inputs (PATH_A PATH_B); --save-stats writes '
                 'FID statistics only')
  logging.set_verbosity(logging.INFO)

  inputs = args.save_stats[:1] if args.save_stats else args.paths
  for spec in inputs:  # before loading weights: a typo must not read as "weights missing"
    if not fid_inputs.split_key(spec)[0].exists():
      raise InputError(f'{spec}: no such file or folder (not an image folder, an .npz of '
                       'images or an .npz of statistics); check the path.')
    if args.kid and fid_inputs.is_statistics_file(spec):
      raise InputError(f'{spec}: saved FID statistics (mean and covariance only); --kid needs the '
                       'Inception features of every image, so give the images themselves (a '
                       'folder or an .npz of images) for both inputs, or drop --kid.')
    if args.fd_dinov2 and fid_inputs.is_statistics_file(spec):
      raise InputError(f'{spec}: saved FID statistics (Inception); --fd-dinov2 needs the images '
                       'themselves (a folder or an .npz of images) for both inputs.')
  params, weights = None, ('n/a', '')
  if not all(fid_inputs.is_statistics_file(p) for p in inputs):
    params, weights = _load_weights(args.weights)

  if args.save_stats:
    stats = _statistics_for(args.save_stats[0], params, weights, args)
    out = save_statistics(args.save_stats[1], stats['mu'], stats['sigma'], stats['n'],
                          stats['description'])
    print(f'Wrote statistics of {stats["n"]} images to {out}')
    return None
  a = _statistics_for(args.paths[0], params, weights, args)
  b = _statistics_for(args.paths[1], params, weights, args)
  fid_protocol.check_same_protocol((args.paths[0], a['description']),
                                   (args.paths[1], b['description']),
                                   strict=not args.allow_protocol_mismatch)
  value = frechet_distance(a['mu'], a['sigma'], b['mu'], b['sigma'])
  if not np.isfinite(value):
    raise InputError(f'FID is {value} (not a number) for {args.paths[0]} vs {args.paths[1]}.')
  print(f'n_a={a["n"]} n_b={b["n"]} resize={args.resize}')
  if args.kid:
    mean, std = kid.kernel_inception_distance(a['features'], b['features'],
                                              num_subsets=args.kid_subsets,
                                              max_subset_size=args.kid_subset_size,
                                              seed=args.kid_seed)
    m = min(a['n'], b['n'], args.kid_subset_size)
    print(f'KID: {mean:.6g} +- {std:.3g} ({args.kid_subsets} subsets of {m}, seed '
          f'{args.kid_seed})')
  if args.fd_dinov2:
    print(f'FD-DINOv2: {_fd_dinov2(args):.6f}')
  print(f'FID: {value:.6f}')
  return value


def _fd_dinov2(args) -> float:
  """FD-DINOv2 between the CLI's two image inputs (their images read a second time)."""
  arch, params, source = dinov2.load_params(args.dinov2_weights)
  stats = []
  for spec in args.paths:
    images, n, _ = fid_inputs.load_images(spec, cifar_rows=args.cifar_rows,
                                          num_images=args.num_images, chunk=args.batch_size)
    feats = dinov2.extract_batched(params, images, arch=arch, batch_size=args.batch_size,
                                   progress=n > args.batch_size, total=-(-n // args.batch_size))
    mu, sigma = compute_statistics(feats)
    check_finite({'mu': mu, 'sigma': sigma}, f'{spec} (DINOv2 features of its images)')
    stats.append((mu, sigma))
  print(f'dinov2={args.dinov2_weights or dinov2.default_weights_path()} '
        f'({dinov2.arch_name(arch)} from {source})')
  return frechet_distance(*stats[0], *stats[1])


def cli(argv=None):
  """`python -m reacgan_jax.fid`: main() with user errors as one line on stderr and exit 1.

  --verbose-errors (or REACGAN_JAX_TRACEBACK=1) keeps the traceback.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  verbose = os.environ.get('REACGAN_JAX_TRACEBACK') == '1'
  if '--verbose-errors' in argv:
    argv.remove('--verbose-errors')
    verbose = True
  with errors.exit_on_user_error(errors.command_name(PROG), verbose=verbose):
    main(argv)
