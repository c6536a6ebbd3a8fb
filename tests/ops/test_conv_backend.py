"""conv_backend='auto' (the default): which convolutions a run gets, and that it says why.

ops/conv.resolve picks oneDNN on one x86-64 CPU device where the extension builds, XLA
otherwise. The suite runs on 8 fake CPU devices, where 'auto' is XLA; the one-device cases
patch the device count (and the extension's availability) instead of needing another process.
"""

import logging

import jax
import pytest
import train_helpers

from configs import default, tiny_stylegan2
from reacgan_jax.models import build_models
from reacgan_jax.ops import conv as conv_ops
from reacgan_jax.ops import onednn


@pytest.fixture(autouse=True)
def _fresh_choice():
  conv_ops._auto.cache_clear()
  conv_ops._log_choice.cache_clear()
  yield
  conv_ops._auto.cache_clear()
  conv_ops._log_choice.cache_clear()


@pytest.fixture
def one_device(monkeypatch):
  monkeypatch.setattr(conv_ops.jax, 'device_count', lambda: 1)


@pytest.fixture
def extension(monkeypatch):
  """The extension as available (its real version where it builds: nothing is traced here)."""
  monkeypatch.setattr(onednn, 'available', lambda: (True, '3.2.0'))
  monkeypatch.setattr(conv_ops, '_machine', lambda: 'x86_64')


def test_the_defaults_are_auto():
  c = default.get_config()
  assert c.model.conv_backend == 'auto' and c.eval.conv_backend == 'auto'


def test_explicit_backends_are_kept():
  assert conv_ops.resolve('xla') == 'xla' and conv_ops.resolve('onednn') == 'onednn'
  with pytest.raises(ValueError, match=r"config.eval.conv_backend='cudnn': expected one of auto"):
    conv_ops.resolve('cudnn', 'config.eval.conv_backend')


def test_auto_is_onednn_on_one_x86_cpu_device_and_says_so(one_device, extension, caplog):
  with caplog.at_level(logging.INFO, logger='absl'):
    assert conv_ops.resolve('auto') == 'onednn'
    assert conv_ops.resolve('auto') == 'onednn'
  lines = [r.getMessage() for r in caplog.records if 'auto' in r.getMessage()]
  assert lines == ["config.model.conv_backend='auto': oneDNN convolutions (an x86-64 CPU with "
                   "the oneDNN 3.2.0 extension); set config.model.conv_backend='xla' or "
                   "'onednn' to choose."]  # once per process and key


@pytest.mark.parametrize('case, expect', [
    ('8 devices', '8 CPU devices: the oneDNN call is not partitioned'),
    ('no extension', 'the oneDNN extension is not available (oneDNN: the package'),
    ('bf16 on avx2', 'this CPU has no oneDNN bf16 convolution'),
    ('gpu', 'gpu devices'),
    ('arm', 'the oneDNN path is built for x86-64 CPUs, this is aarch64'),
])
def test_auto_falls_back_to_xla_naming_why(monkeypatch, extension, caplog, case, expect):
  devices, dtype = 1, 'float32'
  if case == '8 devices':
    devices = 8
  elif case == 'no extension':
    monkeypatch.setattr(onednn, 'available', lambda: (False, 'oneDNN: the package x is missing'))
  elif case == 'bf16 on avx2':
    dtype = 'bfloat16'
    monkeypatch.setattr(onednn, 'bf16_supported', lambda: False)
  elif case == 'gpu':
    monkeypatch.setattr(conv_ops.jax, 'default_backend', lambda: 'gpu')
  elif case == 'arm':
    monkeypatch.setattr(conv_ops, '_machine', lambda: 'aarch64')
  monkeypatch.setattr(conv_ops.jax, 'device_count', lambda: devices)
  with caplog.at_level(logging.INFO, logger='absl'):
    assert conv_ops.resolve('auto', dtype=dtype) == 'xla'
  assert expect in caplog.text and 'XLA convolutions' in caplog.text


def test_models_get_the_resolved_backend(monkeypatch, extension):
  config = train_helpers.tiny_config('unused.npz')
  assert config.model.conv_backend == 'auto'
  monkeypatch.setattr(conv_ops.jax, 'device_count', lambda: 1)
  g, d = build_models(config)
  assert g.conv_backend == d.conv_backend == 'onednn'
  conv_ops._auto.cache_clear()
  monkeypatch.setattr(conv_ops.jax, 'device_count', lambda: 8)
  g, d = build_models(config)
  assert g.conv_backend == d.conv_backend == 'xla'
  # StyleGAN2 too (its plain convolutions through oneDNN: models/stylegan2_layers.py)
  sg = tiny_stylegan2.get_config()
  assert sg.model.conv_backend == 'auto'
  g, d = build_models(sg)
  assert g.conv_backend == d.conv_backend == 'xla'  # 8 devices
  conv_ops._auto.cache_clear()
  monkeypatch.setattr(conv_ops.jax, 'device_count', lambda: 1)
  g, d = build_models(sg)
  # with Winograd F(4x4, 3x3) for the float32 3x3 convs that pay (model.stylegan2.winograd)
  assert g.conv_backend == d.conv_backend == 'onednn+winograd4'
  sg.model.stylegan2.winograd = 0
  g, d = build_models(sg)
  assert g.conv_backend == d.conv_backend == 'onednn'


@pytest.mark.skipif(jax.default_backend() != 'cpu' or not onednn.available()[0],
                    reason='needs the oneDNN extension on a CPU')
def test_auto_with_the_real_extension_on_one_device(one_device):
  assert conv_ops.resolve('auto') == 'onednn'


@pytest.mark.parametrize('key', ['model.conv_backend', 'eval.conv_backend'])
def test_a_mistyped_backend_is_refused_before_training(key):
  """Probe (issue 26): eval.conv_backend='gpu' trained to the end when evaluation was off, and a
  model typo was a ValueError traceback at model build."""
  from reacgan_jax import validate  # noqa: PLC0415
  from reacgan_jax.errors import ConfigError  # noqa: PLC0415

  config = train_helpers.tiny_config('unused.npz')
  section, name = key.split('.')
  config[section][name] = 'gpu'
  with pytest.raises(ConfigError, match=rf"config.{key}='gpu': expected one of auto, xla, onednn"):
    validate.validate_config(config)


def test_the_extension_builds_wherever_its_wheels_and_a_compiler_are():
  """Where the `onednn` extra and g++ are installed (the README's test command installs both on
  x86-64 Linux), the extension must build and load: a compile error would otherwise only skip
  tests/ops/test_onednn.py (its skip reason) and turn 'auto' into XLA, with nothing red."""
  import importlib.metadata  # noqa: PLC0415
  import platform  # noqa: PLC0415
  import shutil  # noqa: PLC0415

  try:
    importlib.metadata.version('onednn-devel-cpu-gomp')
  except importlib.metadata.PackageNotFoundError:
    pytest.skip('the onednn extra is not installed')
  if platform.machine() != 'x86_64' or not (shutil.which('g++') or shutil.which('c++')):
    pytest.skip('no x86-64 C++ compiler here')
  ok, why = onednn.available()
  assert ok, why
