"""StudioGAN YAML -> reacgan-jax config -> StudioGAN keys, on StudioGAN's own CIFAR10 YAMLs.

The YAMLs under tests/fixtures/studiogan_configs/ are copied verbatim from PyTorch-StudioGAN
src/configs/CIFAR10/ (CUB200_ReACGAN.yaml from src/configs/CUB200/). Every key a YAML names
must map and come back equal.
"""

import importlib.util
import os
import pathlib
import subprocess
import sys
import types

import jax
import numpy as np
import pytest

from configs import (
  cifar10_reacgan,
  cifar10_stylegan2,
  cifar10_stylegan2_d2dce,
  cifar10_stylegan2_d2dce_ada,
  cifar10_stylegan2_d2dce_diffaug,
  default,
)
from reacgan_jax import models
from reacgan_jax.studiogan import keys as studiogan_keys
from reacgan_jax.studiogan import yaml_import as from_studiogan

FIXTURES = str(pathlib.Path(__file__).resolve().parents[1] / 'fixtures' / 'studiogan_configs')
YAMLS = ('ReACGAN.yaml', 'BigGAN.yaml', 'ACGAN-Mod-Big.yaml', 'SNGAN.yaml', 'StyleGAN2.yaml',
         'StyleGAN2-D2DCE.yaml', 'StyleGAN2-D2DCE-DiffAug-Rev.yaml', 'StyleGAN2-D2DCE-ADA.yaml')
# StudioGAN's checkout, for building its own networks beside ours (skipped when absent).
STUDIOGAN_SRC = pathlib.Path(os.environ.get(
    'STUDIOGAN_SRC', pathlib.Path(__file__).resolve().parents[3] / 'studiogan' / 'src'))


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
    # A YAML number written as an int (beta1: 0) comes back as our float field's 0.0.
    assert (type(back[key]) is type(flat[key]) or isinstance(flat[key], float)
            or (type(flat[key]) is int and isinstance(back[key], float))), key


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
              'MODEL': {'backbone': 'big_resnet_deep_legacy', 'g_cond_mtd': 'cBN',
                        'd_cond_mtd': 'PD',
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


def _imported(name):
  conv = from_studiogan.convert(from_studiogan.load_yaml(os.path.join(FIXTURES, name)))
  return conv, from_studiogan.apply(conv.overrides, default.get_config())


@pytest.mark.parametrize('name,handwritten', [
    ('StyleGAN2.yaml', cifar10_stylegan2), ('StyleGAN2-D2DCE.yaml', cifar10_stylegan2_d2dce),
    ('StyleGAN2-D2DCE-DiffAug-Rev.yaml', cifar10_stylegan2_d2dce_diffaug),
    ('StyleGAN2-D2DCE-ADA.yaml', cifar10_stylegan2_d2dce_ada)])
def test_stylegan2_yamls_equal_the_handwritten_configs(name, handwritten):
  # configs/cifar10_stylegan2*.py were written from the same YAMLs and StudioGAN's code.
  _, ours = _imported(name)
  ref = handwritten.get_config()
  for section in ('model', 'loss', 'optim', 'train', 'ada'):
    want, got = ref[section].to_dict(), ours[section].to_dict()
    differ = {k: (got[k], want[k]) for k in want if got[k] != want[k]
              and k not in ('g_attn_block', 'd_attn_block', 'g_init', 'd_init', 'pl_weight')}
    # Unread here: attention blocks (StudioGAN apply_attn False -> 0), BigGAN's inits, and
    # pl_weight (the YAMLs' 0 with path length off; the handwritten configs keep 2.0).
    assert differ == {}, section
  assert ours.optim.eps == 1e-8 and ours.model.stylegan2.channel_base == 32768


def _count(tree):
  return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


def _our_counts(config):
  g, d = models.build_models(config)
  z, y = jax.numpy.zeros((2, config.model.z_dim)), jax.numpy.zeros((2,), jax.numpy.int32)
  x = jax.numpy.zeros((2, 32, 32, 3))
  k = jax.random.PRNGKey(0)
  gv = jax.eval_shape(lambda: g.init({'params': k, 'noise': k}, z, y))
  dv = jax.eval_shape(lambda: d.init({'params': k}, x, y))
  return _count(gv['params']), _count(dv['params'])


@pytest.mark.parametrize('name,d_count', [('StyleGAN2-D2DCE.yaml', 21_251_585),
                                          ('StyleGAN2.yaml', 23_089_664)])
def test_imported_stylegan2_builds_studiogans_parameter_counts(name, d_count):
  # StudioGAN's counts (sum of numel over .parameters() of its src/models/stylegan2.py
  # networks built by src/models/model.py from these YAMLs): G 20,215,315 (mapping 793,088 +
  # synthesis 19,422,227); D 21,251,585 with D2D-CE, 23,089,664 with SPD. The test below
  # recounts them with StudioGAN's code where its checkout is present.
  _, config = _imported(name)
  assert _our_counts(config) == (20_215_315, d_count)


def _studiogan_counts(flat, tmp_path):
  """StudioGAN's G and D parameter counts, built as src/models/model.py builds them from a
  merged StudioGAN config (`from_studiogan.merged`)."""
  torch = pytest.importorskip('torch')
  if not (STUDIOGAN_SRC / 'models' / 'stylegan2.py').exists():
    pytest.skip(f'no StudioGAN checkout at {STUDIOGAN_SRC} (set STUDIOGAN_SRC)')
  # StudioGAN's style_ops import pkg_resources (gone from recent setuptools): a stand-in with
  # parse_version, as scripts/make_stylegan2_fixture.py does.
  (tmp_path / 'pkg_resources.py').write_text('from packaging.version import parse as '
                                             'parse_version\n')
  paths = [str(STUDIOGAN_SRC), str(tmp_path)]
  sys.path[:0] = paths
  try:
    import models.stylegan2 as sg2  # noqa: PLC0415 (StudioGAN's module)
  finally:
    for p in paths:
      sys.path.remove(p)

  model = types.SimpleNamespace(info_type=flat['MODEL.info_type'])
  big = flat['DATA.img_size'] >= 512 or flat['DATA.name'] in ('CIFAR10', 'CIFAR100')
  base, cmax = (32768 if big else 16384), 512
  classes, mtd = flat['DATA.num_classes'], flat['MODEL.d_cond_mtd']
  with torch.no_grad():
    g = sg2.Generator(z_dim=flat['MODEL.z_dim'], w_dim=flat['MODEL.w_dim'],
                      c_dim=classes if flat['MODEL.g_cond_mtd'] == 'cAdaIN' else 0,
                      img_resolution=flat['DATA.img_size'], img_channels=3, MODEL=model,
                      mapping_kwargs={'num_layers': flat['STYLEGAN.mapping_network']},
                      synthesis_kwargs={'channel_base': base, 'channel_max': cmax,
                                        'num_fp16_res': 0, 'conv_clamp': None})
    d = sg2.Discriminator(
        c_dim=classes if mtd in ('PD', 'SPD', '2C', 'D2DCE') else 0,
        img_resolution=flat['DATA.img_size'], img_channels=3,
        architecture=flat['STYLEGAN.d_architecture'], channel_base=base, channel_max=cmax,
        num_fp16_res=0, conv_clamp=None, cmap_dim=None, d_cond_mtd=mtd,
        aux_cls_type=flat['MODEL.aux_cls_type'], d_embed_dim=flat['MODEL.d_embed_dim'],
        num_classes=classes, normalize_d_embed=flat['MODEL.normalize_d_embed'],
        block_kwargs={}, mapping_kwargs={},
        epilogue_kwargs={'mbstd_group_size': flat['STYLEGAN.d_epilogue_mbstd_group_size']},
        MODEL=model)
  return (sum(p.numel() for p in g.parameters()), sum(p.numel() for p in d.parameters()))


# Marks per case: a param's exhaustive mark beside a test-level slow mark is still run by -m slow.
@pytest.mark.parametrize('name', [  # the plain StyleGAN2 file: exhaustive (CI budget, issue 24)
    pytest.param('StyleGAN2-D2DCE.yaml', marks=pytest.mark.slow),
    pytest.param('StyleGAN2.yaml', marks=pytest.mark.exhaustive)])
def test_imported_stylegan2_counts_equal_studiogans_own_networks(name, tmp_path):
  yaml_cfg = from_studiogan.load_yaml(os.path.join(FIXTURES, name))
  theirs = _studiogan_counts(from_studiogan.merged(yaml_cfg), tmp_path)
  _, config = _imported(name)
  assert _our_counts(config) == theirs


def test_stylegan2_keys_ours_cannot_take_are_named():
  for name, key in (('StyleGAN2-LeCam.yaml', 'LOSS.apply_lecam'),
                    ('StyleGAN2-APA.yaml', 'AUG.apply_apa')):
    conv, _ = _imported(name)
    unmapped = {k: why for k, _, why in conv.unmapped}
    assert 'not implemented' in unmapped[key] or 'APA' in unmapped[key]
    named = [f'{s}.{k}' for s, sec in from_studiogan.load_yaml(
        os.path.join(FIXTURES, name)).items() for k in sec]
    assert set(named) <= set(conv.mapped) | set(unmapped)  # every key: mapped or named
  conv = from_studiogan.convert({'MODEL': {'backbone': 'stylegan2', 'g_act_fn': 'ReLU',
                                           'g_conv_dim': 64}})
  unmapped = {k: why for k, _, why in conv.unmapped}
  assert "'Auto'" in unmapped['MODEL.g_act_fn'] and 'channel_base' in unmapped['MODEL.g_conv_dim']


# ---- user errors (issue 26): one line, exit 1, nothing written ---------------------------------


def _import_cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'reacgan_jax.studiogan.yaml_import', *map(str, args)],
      capture_output=True, text=True, env=dict(os.environ, PYTHONPATH=os.getcwd()))


def _one_line(proc, *fragments):
  assert proc.returncode == 1 and 'Traceback' not in proc.stderr, proc.stderr[-2000:]
  line = proc.stderr.strip().splitlines()[-1]
  assert line.startswith('import-studiogan-yaml: error:'), line
  for f in fragments:
    assert f in line, (f, line)


def test_a_yaml_whose_config_training_refuses_is_not_written(tmp_path):
  """Before: batch_size 0 became `config.train.batch_size = 0` in a written file that every
  later command refused; now the value is named and nothing is written."""
  bad = tmp_path / 'bad.yaml'
  text = open(os.path.join(FIXTURES, 'BigGAN.yaml')).read()
  assert 'OPTIMIZATION:' not in text
  bad.write_text(text + '\nOPTIMIZATION:\n  batch_size: 0\n')
  out = tmp_path / 'out.py'
  _one_line(_import_cli(bad, f'--out={out}'), 'config.train.batch_size=0', 'Nothing was written')
  assert not out.exists()


def test_missing_malformed_and_foreign_inputs_are_one_line(tmp_path):
  _one_line(_import_cli(tmp_path / 'nope.yaml'), 'no such file')
  _one_line(_import_cli(tmp_path), 'is a directory, not a file')
  yaml_file = os.path.join(FIXTURES, 'BigGAN.yaml')
  _one_line(_import_cli(yaml_file, f'--out={tmp_path}'), 'is a directory')
  _one_line(_import_cli(yaml_file, f'--out={tmp_path}/no/such/dir.py'), 'does not exist')
  (tmp_path / 'broken.yaml').write_text('MODEL: [unclosed\n')
  _one_line(_import_cli(tmp_path / 'broken.yaml'), 'not readable as YAML')
  mine = tmp_path / 'mine.py'
  mine.write_text('# my own config\n')
  _one_line(_import_cli(os.path.join(FIXTURES, 'BigGAN.yaml'), f'--out={mine}'),
            'not overwriting')
  assert mine.read_text() == '# my own config\n'
  # An earlier output of the command is replaced (rerunning it is how a user updates it).
  out = tmp_path / 'out.py'
  for _ in range(2):
    assert _import_cli(os.path.join(FIXTURES, 'BigGAN.yaml'), f'--out={out}').returncode == 0
