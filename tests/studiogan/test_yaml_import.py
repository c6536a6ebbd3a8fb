"""StudioGAN YAML -> reacgan-jax config -> StudioGAN keys, on StudioGAN's own CIFAR10 YAMLs.

The four YAMLs under tests/fixtures/studiogan_configs/ are copied verbatim from
PyTorch-StudioGAN src/configs/CIFAR10/. Every key a YAML names must map and come back equal.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys

import pytest

from configs import cifar10_reacgan, default
from reacgan_jax.studiogan import keys as studiogan_keys
from reacgan_jax.studiogan import yaml_import as from_studiogan

FIXTURES = str(pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'studiogan_configs')
YAMLS = ('ReACGAN.yaml', 'BigGAN.yaml', 'ACGAN-Mod-Big.yaml', 'SNGAN.yaml')


def _load_config_file(path):
  spec = importlib.util.spec_from_file_location('converted_config', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


@pytest.mark.parametrize('name', YAMLS)
def test_round_trip_every_key(name, tmp_path):
  yaml_cfg = from_studiogan.load_yaml(os.path.join(FIXTURES, name))
  conv = from_studiogan.convert(yaml_cfg)
  assert conv.unmapped == []
  named = [f'{s}.{k}' for s, sec in yaml_cfg.items() for k in sec]
  assert set(named) <= set(conv.mapped)
  # The rendered file is a loadable config equal to the overrides applied to the default.
  path = tmp_path / 'converted.py'
  path.write_text(from_studiogan.render(conv, name))
  config = _load_config_file(str(path))
  assert config.to_dict() == from_studiogan.apply(conv.overrides, default.get_config()).to_dict()
  back, missing = from_studiogan.to_studiogan(config)
  assert missing == []
  flat = from_studiogan.merged(yaml_cfg)
  for key in conv.mapped:  # the YAML's keys and every default the conversion relied on
    assert back[key] == flat[key], key
    assert type(back[key]) is type(flat[key]) or isinstance(flat[key], float), key


def test_reacgan_yaml_equals_the_handwritten_config():
  conv = from_studiogan.convert(from_studiogan.load_yaml(os.path.join(FIXTURES, 'ReACGAN.yaml')))
  ours = from_studiogan.apply(conv.overrides, default.get_config())
  ref = cifar10_reacgan.get_config()
  for section in ('model', 'loss', 'optim', 'train'):
    for k in ref[section]:
      if f'{section}.{k}' in conv.overrides:
        # rel 1e-4: configs/cifar10_reacgan.py rounds the YAML's lr 0.00028284271 to 2.8284e-4.
        want = ref[section][k]
        if isinstance(want, float):
          want = pytest.approx(want, rel=1e-4)
        assert ours[section][k] == want, f'{section}.{k}'
  assert ours.model.cond_method == 'reacgan' and ours.model.embed_dim == 512


def test_sngan_yaml_takes_studiogan_defaults():
  conv = from_studiogan.convert(from_studiogan.load_yaml(os.path.join(FIXTURES, 'SNGAN.yaml')))
  o = conv.overrides
  # Omitted in SNGAN.yaml: StudioGAN src/config.py defaults apply.
  assert (o['model.backbone'], o['model.z_dim'], o['model.g_conv_dim']) == ('resnet', 128, 64)
  assert (o['train.batch_size'], o['optim.g_lr'], o['model.apply_g_sn']) == (64, 2e-4, False)
  assert (o['model.g_attn_block'], o['train.ema'], o['model.cond_method']) == (0, False, 'pd')


def test_unmappable_keys_are_named():
  yaml_cfg = {'DATA': {'name': 'CIFAR10'},
              'MODEL': {'backbone': 'stylegan2', 'g_cond_mtd': 'cBN', 'd_cond_mtd': 'PD',
                        'apply_attn': True, 'attn_g_loc': [1, 2], 'attn_d_loc': [1]},
              'LOSS': {'adv_loss': 'hinge', 'apply_lecam': True},
              'OPTIMIZATION': {'acml_steps': 4},
              'RUN': {'mixed_precision': True}}
  conv = from_studiogan.convert(yaml_cfg)
  names = {k for k, _, _ in conv.unmapped}
  assert {'MODEL.backbone', 'MODEL.attn_g_loc', 'LOSS.apply_lecam', 'OPTIMIZATION.acml_steps',
          'RUN.mixed_precision'} <= names
  assert 'LOSS.adv_loss' in conv.mapped and 'MODEL.backbone' not in conv.mapped
  assert 'model.backbone' not in conv.overrides  # unmapped: ours keeps its default
  text = from_studiogan.render(conv, 'x.yaml')
  assert 'NOT mapped' in text and 'RUN.mixed_precision' in text


def test_acgan_with_normalized_features_is_not_mapped():
  conv = from_studiogan.convert({'MODEL': {'g_cond_mtd': 'cBN', 'd_cond_mtd': 'AC',
                                           'normalize_d_embed': True}})
  assert 'MODEL.normalize_d_embed' in {k for k, _, _ in conv.unmapped}


def test_back_mapping_names_what_studiogan_lacks():
  config = default.get_config()
  config.train.diffaug_policy = 'translation'
  _, missing = from_studiogan.to_studiogan(config)
  assert any('AUG.apply_diffaug' in rule for rule, _ in missing)


def test_bad_yaml_is_refused(tmp_path):
  path = tmp_path / 'bad.yaml'
  path.write_text('- a\n- b\n')
  with pytest.raises(ValueError, match='expected a StudioGAN config'):
    from_studiogan.load_yaml(str(path))


def test_cli_writes_a_config(tmp_path):
  out = tmp_path / 'biggan.py'
  env = dict(os.environ, PYTHONPATH=os.getcwd())
  proc = subprocess.run([sys.executable, '-m', 'reacgan_jax.studiogan.yaml_import',
                         os.path.join(FIXTURES, 'BigGAN.yaml'), f'--out={out}'],
                        capture_output=True, text=True, env=env, check=True)
  assert 'mapped (' in proc.stderr
  assert _load_config_file(str(out)).model.cond_method == 'pd'


def test_every_rule_key_has_a_default():
  flat = from_studiogan.merged({})
  for rule in studiogan_keys.RULES:
    assert set(rule.sg) <= set(flat)
  assert set(studiogan_keys.FIXED) <= set(flat)
