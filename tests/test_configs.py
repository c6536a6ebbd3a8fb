"""Every config loads, carries SPEC.md section 4's numbers, and rejects bad overrides."""

import importlib
import pathlib

import ml_collections
import pytest
from absl import flags
from ml_collections import config_flags

import configs

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / 'configs'
# from_workdir.py needs a workdir argument (tests/integration/test_faults.py covers it).
ALL = configs.experiment_configs()


def _load(name, *args):
  return importlib.import_module(f'configs.{name}').get_config(*args)


def _flatten(cfg, prefix=''):
  out = {}
  for k, v in cfg.items():
    if isinstance(v, ml_collections.ConfigDict):
      out.update(_flatten(v, f'{prefix}{k}.'))
    else:
      out[f'{prefix}{k}'] = v
  return out


def test_expected_configs_exist():
  for name in ['default', 'tiny', 'cifar10_reacgan', 'cifar10_acgan', 'cifar10_biggan_pd',
               'cifar10_sngan_pd', 'tiny_imagenet_reacgan', 'imagenet128_reacgan']:
    assert name in ALL, name


@pytest.mark.parametrize('name', ALL)
def test_every_config_loads_with_the_default_keys(name):
  cfg = _load(name)
  assert isinstance(cfg, ml_collections.ConfigDict)
  # An experiment config may change values, never the set of keys: the default lists every knob.
  assert set(_flatten(cfg)) == set(_flatten(_load('default')))
  assert cfg.train.batch_size > 0 and cfg.train.steps > 0


@pytest.mark.parametrize('name', ['cifar10_reacgan', 'cifar10_acgan', 'cifar10_biggan_pd'])
def test_small_variant_is_cpu_sized(name):
  full, small = _load(name), _load(name, 'small')
  assert small.model.cond_method == full.model.cond_method
  assert small.model.backbone == full.model.backbone
  assert small.model.g_conv_dim < full.model.g_conv_dim
  assert small.train.batch_size < full.train.batch_size
  with pytest.raises(ValueError, match='unknown variant'):
    _load(name, 'huge')


def test_the_quickstart_is_the_small_config_with_an_ema_inside_its_run():
  """The README's main job: the small config but for the EMA decay, chosen so that the final EMA
  G keeps under 5 % of the G it started from at train.ema_start (the small config's 0.999 kept
  67 % over these 400 steps: a grid of colour blobs)."""
  small, quick = _load('cifar10_reacgan', 'small'), _load('cifar10_reacgan', 'quickstart')
  differ = {k for k, v in _flatten(quick).items() if _flatten(small)[k] != v}
  assert differ == {'train.ema_decay'}
  t = quick.train
  assert t.ema and t.ema_decay ** (t.steps - t.ema_start) < 0.05
  assert small.train.ema_decay ** (t.steps - t.ema_start) > 0.5   # why it exists


# (config, key, value) from shared/SPEC.md section 4.
SPEC_ROWS = [
    ('cifar10_reacgan', 'train.batch_size', 128),
    ('cifar10_reacgan', 'optim.g_lr', 2.8284e-4),
    ('cifar10_reacgan', 'model.embed_dim', 512),
    ('cifar10_reacgan', 'loss.cond_lambda', 0.5),
    ('cifar10_reacgan', 'loss.temperature', 0.5),
    ('cifar10_reacgan', 'loss.margin_pos', 0.98),
    ('cifar10_reacgan', 'model.z_dim', 80),
    ('cifar10_reacgan', 'train.ema_start', 1000),
    ('cifar10_reacgan', 'train.d_updates_per_step', 5),
    ('cifar10_acgan', 'model.cond_method', 'acgan'),
    ('cifar10_acgan', 'loss.cond_lambda', 1.0),
    ('cifar10_acgan', 'train.batch_size', 64),
    ('cifar10_biggan_pd', 'model.cond_method', 'pd'),
    ('cifar10_biggan_pd', 'optim.d_lr', 2e-4),
    ('cifar10_sngan_pd', 'model.backbone', 'resnet'),
    ('cifar10_sngan_pd', 'model.z_dim', 128),
    ('cifar10_sngan_pd', 'model.g_conv_dim', 64),
    ('tiny_imagenet_reacgan', 'train.batch_size', 1024),
    ('tiny_imagenet_reacgan', 'optim.d_lr', 4e-4),
    ('tiny_imagenet_reacgan', 'optim.beta1', 0.0),
    ('tiny_imagenet_reacgan', 'model.embed_dim', 768),
    ('tiny_imagenet_reacgan', 'loss.margin_pos', 1.0),
    ('tiny_imagenet_reacgan', 'loss.temperature', 0.75),
    ('tiny_imagenet_reacgan', 'train.ema_start', 20000),
    ('tiny_imagenet_reacgan', 'data.num_classes', 200),
    ('imagenet128_reacgan', 'train.batch_size', 256),
    ('imagenet128_reacgan', 'optim.g_lr', 5e-5),
    ('imagenet128_reacgan', 'model.embed_dim', 2048),
    ('imagenet128_reacgan', 'model.z_dim', 120),
    ('imagenet128_reacgan', 'train.d_updates_per_step', 2),
    ('imagenet128_reacgan', 'train.steps', 500000),
    ('imagenet128_reacgan', 'model.g_attn_block', 4),
    ('imagenet128_reacgan', 'data.image_size', 128),
]


@pytest.mark.parametrize('name,key,value', SPEC_ROWS)
def test_configs_carry_spec_numbers(name, key, value):
  assert _flatten(_load(name))[key] == value


def _parse(argv):
  # Override flags are registered from sys_argv at definition time, as main.py does with sys.argv.
  fv = flags.FlagValues()
  config_flags.DEFINE_config_file('config', flag_values=fv, sys_argv=['prog'] + argv)
  fv(['prog'] + argv)
  return fv.config


def test_override_through_flags():
  cfg = _parse([f'--config={CONFIG_DIR}/cifar10_reacgan.py:small', '--config.train.steps=7',
                '--config.loss.temperature=0.25'])
  assert cfg.train.steps == 7 and cfg.loss.temperature == 0.25
  assert cfg.model.g_conv_dim == _load('cifar10_reacgan', 'small').model.g_conv_dim


def test_unknown_key_fails_naming_it():
  with pytest.raises(Exception, match='stepz'):
    _parse([f'--config={CONFIG_DIR}/tiny.py', '--config.train.stepz=7'])


def test_wrong_type_fails_naming_the_key():
  with pytest.raises(Exception, match='steps'):
    _parse([f'--config={CONFIG_DIR}/tiny.py', '--config.train.steps=many'])
