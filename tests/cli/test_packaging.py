"""`pip install .`: the `reacgan-jax` command from outside the checkout, no top-level `configs`.

A wheel and an editable install of a copy of the checkout go into fresh venvs without pip;
their dependencies come from this interpreter's site-packages through a .pth file (a path in a
.pth is added without running the .pth files found there, so this environment's own install of
reacgan-jax stays out). Nothing is downloaded.
"""

import os
import pathlib
import shutil
import subprocess
import sys
import tomllib
import zipfile

import jax
import pytest
from train_helpers import HANG_S, write_npz

REPO = pathlib.Path(__file__).resolve().parents[2]
SITE_PACKAGES = pathlib.Path(jax.__file__).resolve().parents[1]  # where the dependencies are
EXPECTED = ('train', 'eval', 'sample', 'fid', 'convert-inception', 'convert-studiogan',
            'import-studiogan-yaml')


def _env(**extra):
  env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
  return dict(env, JAX_PLATFORMS='cpu', **extra)


def _pip(*args, cwd):
  r = subprocess.run([sys.executable, '-m', 'pip', *args, '--no-deps', '--no-index',
                      '--no-build-isolation', '--disable-pip-version-check', '-q'],
                     cwd=cwd, env=_env(), capture_output=True, text=True, timeout=HANG_S)
  assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]


def _install(root, editable):
  """A venv in root/venv with reacgan-jax installed from a copy of the checkout in root/src."""
  src = root / 'src'
  ignore = shutil.ignore_patterns('__pycache__', '*.so', 'build', '*.egg-info')
  for name in ('reacgan_jax', 'configs'):
    shutil.copytree(REPO / name, src / name, ignore=ignore)
  for name in ('pyproject.toml', 'README.md'):
    shutil.copy(REPO / name, src / name)
  venv = root / 'venv'
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  python = venv / 'bin' / 'python'
  site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                        capture_output=True, text=True, check=True).stdout.strip()
  (pathlib.Path(site) / 'deps.pth').write_text(f'{SITE_PACKAGES}\n')
  if editable:
    _pip('--python', str(python), 'install', '-e', str(src), cwd=root)
  else:
    _pip('wheel', '-w', str(root / 'dist'), str(src), cwd=root)
    wheel, = (root / 'dist').glob('reacgan_jax-*.whl')
    _pip('--python', str(python), 'install', str(wheel), cwd=root)
  return venv, pathlib.Path(site)


@pytest.fixture(scope='module')
def wheel_install(tmp_path_factory):
  root = tmp_path_factory.mktemp('wheel')
  return (root, *_install(root, editable=False))


@pytest.fixture(scope='module')
def editable_install(tmp_path_factory):
  root = tmp_path_factory.mktemp('editable')
  return (root, *_install(root, editable=True))


def test_the_package_list_names_every_folder_of_the_package():
  setuptools = tomllib.loads((REPO / 'pyproject.toml').read_text())['tool']['setuptools']
  folders = {'.'.join(p.parent.relative_to(REPO).parts)
             for p in (REPO / 'reacgan_jax').rglob('__init__.py')}
  assert set(setuptools['packages']) == folders | {'reacgan_jax._configs'}
  assert setuptools['package-dir'] == {'reacgan_jax._configs': 'configs'}


def _check_installed(root, venv, outside):
  bin_dir = venv / 'bin'
  help_ = subprocess.run([bin_dir / 'reacgan-jax', '--help'], cwd=outside, env=_env(),
                         capture_output=True, text=True, timeout=HANG_S)
  assert help_.returncode == 0, help_.stderr[-2000:]
  assert all(f'\n  {name} ' in help_.stdout for name in EXPECTED)
  assert 'cifar10_reacgan, ' in help_.stdout  # the built-in configs were found
  module = subprocess.run([bin_dir / 'python', '-m', 'reacgan_jax', '--help'], cwd=outside,
                          env=_env(), capture_output=True, text=True, timeout=HANG_S)
  assert module.stdout == help_.stdout
  probe = subprocess.run(
      [bin_dir / 'python', '-c', 'import importlib.util, reacgan_jax; print(reacgan_jax.__file__); '
       'spec = importlib.util.find_spec("configs"); print(spec and spec.origin)'], cwd=outside,
      env=_env(), capture_output=True, text=True, timeout=HANG_S)
  where, configs_origin = probe.stdout.splitlines()
  # No top-level `configs` to collide with another project's.
  assert configs_origin == 'None', f'`import configs` finds {configs_origin}'
  return pathlib.Path(where)


def test_wheel_gives_the_command_and_no_top_level_configs(wheel_install, tmp_path):
  root, venv, site = wheel_install
  where = _check_installed(root, venv, tmp_path)
  assert where.is_relative_to(site)  # the installed copy, not the checkout
  wheel, = (root / 'dist').glob('*.whl')
  names = zipfile.ZipFile(wheel).namelist()
  tops = {n.split('/')[0] for n in names}
  assert tops == {'reacgan_jax', wheel.name.split('-')[0] + '-' + wheel.name.split('-')[1]
                  + '.dist-info'}
  shipped = {pathlib.Path(n).name for n in names if n.startswith('reacgan_jax/_configs/')}
  assert shipped == {p.name for p in (REPO / 'configs').glob('*.py')}


def test_editable_install_gives_the_command_and_no_top_level_configs(editable_install,
                                                                     tmp_path):
  root, venv, _ = editable_install
  where = _check_installed(root, venv, tmp_path)
  assert where.is_relative_to(root / 'src')


@pytest.mark.exhaustive  # installs a wheel, then trains: beyond CI's budget (issue 24)
def test_installed_command_trains_a_built_in_config(wheel_install, tmp_path):
  _, venv, _ = wheel_install
  npz = write_npz(tmp_path / 'toy.npz')
  workdir = tmp_path / 'run'
  r = subprocess.run(
      [venv / 'bin' / 'reacgan-jax', 'train', '--config=tiny', f'--workdir={workdir}',
       f'--config.data.npz_path={npz}', '--config.data.npz_layout=nhwc',
       '--config.train.steps=2', '--config.train.d_updates_per_step=1',
       '--config.train.eval_every=-1', '--config.eval.num_samples=12'],
      cwd=tmp_path, capture_output=True, text=True, timeout=HANG_S,
      # The arguments, device count and (inherited) XLA cache of tests/integration/test_main.py:
      # the same compiled train step, so a cache hit when that test ran first.
      env=_env(REACGAN_JAX_CACHE=str(tmp_path / 'cache'),
               XLA_FLAGS='--xla_force_host_platform_device_count=2'))
  assert r.returncode == 0, r.stderr[-3000:]
  assert (workdir / 'checkpoints' / '2').is_dir()
