"""The StudioGAN config keys reacgan-jax maps, with StudioGAN's defaults and our equivalents.

StudioGAN (PyTorch-StudioGAN src/config.py, `Configurations.load_base_cfgs`) starts every run
from a table of defaults and overwrites it with the YAML's keys (`_overwrite_cfgs`): a YAML names
only what differs. `DEFAULTS` copies that table for every key we read or check; 'N/A' is
StudioGAN's "unset". `RULES` maps groups of StudioGAN keys onto `configs/default.py` keys, both
ways; `FIXED` lists keys whose one supported value is what reacgan-jax always does.
`reacgan_jax.studiogan.yaml_import` applies them. Our keys are dotted paths of any depth
(`model.stylegan2.w_dim`: the StyleGAN2 backbone's own block).

StyleGAN2 (the STYLEGAN section and what StudioGAN does differently for backbone stylegan2):
cAdaIN G with an SPD / D2DCE / AC / unconditional D, act_fn 'Auto', no conv_dim, EMA by kimg,
R1 every d_reg_interval D updates, both Adams scaled for lazy regularisation with eps 1e-8
(src/config.py define_optimizer) and channel_base 32768 for CIFAR and >= 512 px, else 16384
(src/models/model.py).
"""

import dataclasses
from collections.abc import Callable
from typing import Any

NA = 'N/A'

# src/config.py load_base_cfgs (the keys below are all the ones this module reads).
DEFAULTS = {
    'DATA': {'name': 'CIFAR10', 'img_size': 32, 'num_classes': 10, 'img_channels': 3},
    'MODEL': {
        'backbone': 'resnet', 'g_cond_mtd': 'W/O', 'd_cond_mtd': 'W/O', 'aux_cls_type': 'W/O',
        'normalize_d_embed': False, 'd_embed_dim': NA, 'apply_g_sn': False, 'apply_d_sn': False,
        'g_act_fn': 'ReLU', 'd_act_fn': 'ReLU', 'apply_attn': False, 'attn_g_loc': [NA],
        'attn_d_loc': [NA], 'z_prior': 'gaussian', 'z_dim': 128, 'w_dim': NA, 'g_shared_dim': NA,
        'g_conv_dim': 64, 'd_conv_dim': 64, 'g_depth': NA, 'd_depth': NA, 'apply_g_ema': False,
        'g_ema_decay': NA, 'g_ema_start': NA, 'g_init': 'ortho', 'd_init': 'ortho',
        'info_type': NA, 'g_info_injection': NA,
    },
    'LOSS': {
        'adv_loss': 'vanilla', 'cond_lambda': NA, 'm_p': NA, 'temperature': NA,
        **{f'apply_{k}': False for k in ('fm', 'r1_reg', 'wc', 'gp', 'dra', 'maxgp', 'cr', 'bcr',
                                         'zcr', 'lo', 'topk', 'lecam')},
    },
    'OPTIMIZATION': {
        'type_': 'Adam', 'batch_size': 64, 'acml_steps': 1, 'g_lr': 0.0002, 'd_lr': 0.0002,
        'g_weight_decay': 0.0, 'd_weight_decay': 0.0, 'beta1': 0.5, 'beta2': 0.999,
        'd_first': True, 'g_updates_per_step': 1, 'd_updates_per_step': 5, 'total_steps': 100000,
    },
    'PRE': {'apply_rflip': True},
    'AUG': {'apply_diffaug': False, 'apply_ada': False, 'apply_apa': False, 'diffaug_type': 'W/O',
            'cr_aug_type': 'W/O', 'bcr_aug_type': 'W/O', 'ada_aug_type': 'W/O',
            'ada_initial_augment_p': NA, 'ada_target': NA, 'ada_kimg': NA, 'ada_interval': NA},
    'STYLEGAN': {'g_reg_interval': NA, 'd_reg_interval': NA, 'mapping_network': NA,
                 'style_mixing_p': NA, 'g_ema_kimg': NA, 'g_ema_rampup': NA,
                 'apply_pl_reg': False, 'pl_weight': NA, 'd_architecture': NA,
                 'd_epilogue_mbstd_group_size': NA},
}
DEFAULTS['LOSS'].update({'r1_place': NA, 'r1_lambda': NA})

# Keys whose only supported value is what reacgan-jax always does (another value: not mapped).
FIXED = {
    'DATA.img_channels': 3, 'MODEL.aux_cls_type': 'W/O', 'MODEL.z_prior': 'gaussian',
    'MODEL.g_depth': NA, 'MODEL.d_depth': NA, 'MODEL.info_type': NA, 'MODEL.g_info_injection': NA,
    'OPTIMIZATION.type_': 'Adam', 'OPTIMIZATION.acml_steps': 1,
    'OPTIMIZATION.g_weight_decay': 0.0, 'OPTIMIZATION.d_weight_decay': 0.0,
    'OPTIMIZATION.g_updates_per_step': 1,
    'AUG.apply_apa': False, 'AUG.cr_aug_type': 'W/O', 'AUG.bcr_aug_type': 'W/O',
    **{f'LOSS.{k}': False for k in DEFAULTS['LOSS']
       if k.startswith('apply_') and k != 'apply_r1_reg'},
}
# Why a FIXED key's other values are not mapped, where more can be said than "only X".
FIXED_WHY = {
    'AUG.apply_apa': "reacgan-jax's APA shares ADA's p and heuristic (config.ada); StudioGAN's "
                     'APA has its own apa_* p, target, kimg and interval',
    'MODEL.info_type': 'InfoGAN codes are not implemented in reacgan-jax',
    'LOSS.apply_lecam': 'LeCam regularisation is not implemented in reacgan-jax',
}

# StudioGAN DATA.name -> our data keys. eval_split / num_ref: StudioGAN's FID reference
# (src/main.py, worker: `-ref_dataset` train|valid|test, all of that split's images). CIFAR:
# torchvision's loader reads the release in file order, as our cifar10/cifar100 sources do.
DATASETS = {
    'CIFAR10': {'data.source': 'cifar10', 'data.name': 'cifar10', 'data.eval_split': 'test',
                'data.crop': 'none'},
    'CIFAR100': {'data.source': 'cifar100', 'data.name': 'cifar100', 'data.eval_split': 'test',
                 'data.crop': 'none'},
    'Tiny_ImageNet': {'data.source': 'tiny_imagenet', 'data.name': 'tiny_imagenet',
                      'data.eval_split': 'valid', 'data.crop': 'none'},
    'CUB200': {'data.source': 'tfds', 'data.name': 'caltech_birds2011', 'data.eval_split': 'train',
               'data.crop': 'center'},
    'ImageNet': {'data.source': 'tfds', 'data.name': 'imagenet2012',
                 'data.eval_split': 'validation', 'data.crop': 'center'},
}

_BACKBONES = {'big_resnet': 'biggan', 'resnet': 'resnet', 'deep_conv': 'deep_conv',
              'stylegan2': 'stylegan2'}
_COND = {('cBN', 'AC'): 'acgan', ('cBN', 'PD'): 'pd', ('cBN', 'D2DCE'): 'reacgan',
         ('W/O', 'W/O'): 'none', ('cAdaIN', 'SPD'): 'spd', ('cAdaIN', 'D2DCE'): 'reacgan',
         ('cAdaIN', 'AC'): 'acgan'}
SG2 = 'stylegan2'
_ADV = {'hinge': 'hinge', 'vanilla': 'logistic', 'logistic': 'logistic',
        'wasserstein': 'wasserstein'}
_INIT = {'ortho': 'ortho', 'N02': 'N02', 'glorot': 'glorot', 'xavier': 'glorot'}
DIFFAUG_POLICY = 'color,translation,cutout'  # StudioGAN utils/diffaug.py apply_diffaug default


class Unmappable(ValueError):
  """A StudioGAN value (or an ours, going back) that the other side has no equivalent for."""


def _inverse(table, value, what):
  for k, v in table.items():
    if v == value:
      return k
  raise Unmappable(f'{what}={value!r} has no StudioGAN equivalent')


def _lookup(table, value, what):
  if value not in table:
    raise Unmappable(f'{what}={value!r}: reacgan-jax supports {sorted(table)}')
  return table[value]


@dataclasses.dataclass(frozen=True)
class Rule:
  """StudioGAN keys `sg` <-> our keys; `fwd(sg values) -> {ours: v}`, `bwd(cfg) -> {sg: v}`."""
  sg: tuple[str, ...]
  fwd: Callable[[dict], dict]
  bwd: Callable[[Any], dict]


def _plain(sg_key, our_key):
  return Rule((sg_key,), lambda s: {our_key: s[sg_key]}, lambda c: {sg_key: c[our_key]})


def _only_for(methods, sg_key, our_key):
  """A key StudioGAN reads only for some d_cond_mtd values ('N/A' otherwise)."""
  def fwd(s):
    if s[sg_key] == NA:
      if _COND.get((s['MODEL.g_cond_mtd'], s['MODEL.d_cond_mtd'])) in methods:
        raise Unmappable(f'{sg_key} is N/A but {s["MODEL.d_cond_mtd"]} needs it')
      return {}
    return {our_key: s[sg_key]}
  return Rule((sg_key, 'MODEL.g_cond_mtd', 'MODEL.d_cond_mtd'), fwd,
              lambda c: {sg_key: c[our_key] if c['model.cond_method'] in methods else NA})


def _dataset_fwd(s):
  out = dict(_lookup(DATASETS, s['DATA.name'], 'DATA.name'))
  out.update({'data.image_size': s['DATA.img_size'], 'data.num_classes': s['DATA.num_classes']})
  return out


def _dataset_bwd(c):
  for name, keys in DATASETS.items():
    if keys['data.name'] == c['data.name']:
      return {'DATA.name': name, 'DATA.img_size': c['data.image_size'],
              'DATA.num_classes': c['data.num_classes']}
  raise Unmappable(f"data.name={c['data.name']!r} is none of StudioGAN's datasets")


def _cond_bwd(c):
  method = c['model.cond_method']
  table = {k: v for k, v in _COND.items() if (k[0] == 'cAdaIN') == (c['model.backbone'] == SG2)
           or method == 'none'}
  g, d = _inverse(table, method, 'model.cond_method')
  return {'MODEL.g_cond_mtd': g, 'MODEL.d_cond_mtd': d,
          'MODEL.normalize_d_embed': c['model.cond_method'] == 'reacgan'}


def _cond_fwd(s):
  method = _lookup(_COND, (s['MODEL.g_cond_mtd'], s['MODEL.d_cond_mtd']),
                   '(MODEL.g_cond_mtd, MODEL.d_cond_mtd)')
  if method == 'reacgan' and not s['MODEL.normalize_d_embed']:
    raise Unmappable('MODEL.normalize_d_embed=False: our D2D-CE always normalises embed/proxy')
  if method == 'acgan' and s['MODEL.normalize_d_embed']:  # big_resnet.py: h = normalize(h)
    raise Unmappable('MODEL.normalize_d_embed=True with AC: our ACGAN head reads h unnormalised')
  return {'model.cond_method': method}


def _attn_fwd(s):
  out = {}
  for loc, ours in (('MODEL.attn_g_loc', 'model.g_attn_block'),
                    ('MODEL.attn_d_loc', 'model.d_attn_block')):
    if not s['MODEL.apply_attn']:
      out[ours] = 0
    elif len(s[loc]) != 1 or not isinstance(s[loc][0], int):
      raise Unmappable(f'{loc}={s[loc]!r}: reacgan-jax takes one attention block per network')
    else:
      out[ours] = s[loc][0]
  return out


def _attn_bwd(c):
  g, d = c['model.g_attn_block'], c['model.d_attn_block']
  if (g > 0) != (d > 0):
    raise Unmappable(f'g_attn_block={g}, d_attn_block={d}: StudioGAN attends in both or neither')
  on = g > 0
  return {'MODEL.apply_attn': on, 'MODEL.attn_g_loc': [g] if on else [NA],
          'MODEL.attn_d_loc': [d] if on else [NA]}


def _ema_fwd(s):
  if not s['MODEL.apply_g_ema']:
    return {'train.ema': False}
  if s['MODEL.backbone'] == SG2:  # EmaStylegan2: decay from the images per step
    return {'train.ema': True, 'train.ema_kimg': s['STYLEGAN.g_ema_kimg'],
            'train.ema_rampup': s['STYLEGAN.g_ema_rampup']}
  return {'train.ema': True, 'train.ema_decay': s['MODEL.g_ema_decay'],
          'train.ema_start': s['MODEL.g_ema_start']}


def _ema_bwd(c):
  on, kimg = c['train.ema'], c['train.ema_kimg'] > 0
  return {'MODEL.apply_g_ema': on,
          'MODEL.g_ema_decay': c['train.ema_decay'] if on and not kimg else NA,
          'MODEL.g_ema_start': c['train.ema_start'] if on and not kimg else NA,
          'STYLEGAN.g_ema_kimg': c['train.ema_kimg'] if on and kimg else NA,
          'STYLEGAN.g_ema_rampup': c['train.ema_rampup'] if on and kimg else NA}


def _backbone_fwd(s):
  backbone = _lookup(_BACKBONES, s['MODEL.backbone'], 'MODEL.backbone')
  # define_optimizer: Adam eps 1e-8 for StyleGAN2/3, 1e-6 for every other backbone.
  return {'model.backbone': backbone, 'optim.eps': 1e-8 if backbone == SG2 else 1e-6}


def _act_fn_rule():
  """g_act_fn / d_act_fn: 'Auto' (StyleGAN2's own lrelu) for stylegan2, else ReLU only."""
  names = ('MODEL.g_act_fn', 'MODEL.d_act_fn')

  def fwd(s):
    want = 'Auto' if s['MODEL.backbone'] == SG2 else 'ReLU'
    for k in names:
      if s[k] != want:
        raise Unmappable(f'{k}={s[k]!r}: reacgan-jax implements {want!r} for backbone '
                         f"{s['MODEL.backbone']!r}")
    return {}
  return Rule((*names, 'MODEL.backbone'), fwd,
              lambda c: dict.fromkeys(names, 'Auto' if c['model.backbone'] == SG2 else 'ReLU'))


def _conv_dim(sg_key, our_key):
  """resnet/BigGAN widths; 'N/A' for StyleGAN2 (channel_base / channel_max instead)."""
  def fwd(s):
    if s['MODEL.backbone'] != SG2:
      return {our_key: s[sg_key]}
    if s[sg_key] != NA:
      raise Unmappable(f'{sg_key}={s[sg_key]!r}: StyleGAN2 widths come from channel_base')
    return {}
  return Rule((sg_key, 'MODEL.backbone'), fwd,
              lambda c: {sg_key: NA if c['model.backbone'] == SG2 else c[our_key]})


_R1_PLACE = {'outside_loop': 'separate', 'inside_loop': 'inside'}
_R1_KEYS = ('LOSS.apply_r1_reg', 'LOSS.r1_lambda', 'LOSS.r1_place', 'STYLEGAN.d_reg_interval')


def _r1_fwd(s):
  if not s['LOSS.apply_r1_reg']:
    return {}
  if s['MODEL.backbone'] != SG2:
    raise Unmappable("LOSS.apply_r1_reg=True: reacgan-jax's R1 follows StudioGAN's StyleGAN2 "
                     '(lazy, d_reg_interval) only')
  return {'loss.d_terms': 'r1', 'loss.r1_lambda': s['LOSS.r1_lambda'],
          'loss.r1_interval': s['STYLEGAN.d_reg_interval'],
          'loss.r1_place': _lookup(_R1_PLACE, s['LOSS.r1_place'], 'LOSS.r1_place')}


def _r1_bwd(c):
  if 'r1' not in c['loss.d_terms'].split(','):
    return {'LOSS.apply_r1_reg': False, 'LOSS.r1_lambda': NA, 'LOSS.r1_place': NA}
  return {'LOSS.apply_r1_reg': True, 'LOSS.r1_lambda': c['loss.r1_lambda'],
          'LOSS.r1_place': _inverse(_R1_PLACE, c['loss.r1_place'], 'loss.r1_place')}


# STYLEGAN.<key> -> model.stylegan2.<key> or another of ours (read for backbone stylegan2 only).
_SG2_PLAIN = {'STYLEGAN.mapping_network': 'model.stylegan2.mapping_layers',
              'STYLEGAN.style_mixing_p': 'model.stylegan2.style_mixing_prob',
              'STYLEGAN.d_architecture': 'model.stylegan2.d_architecture',
              'STYLEGAN.d_epilogue_mbstd_group_size': 'model.stylegan2.mbstd_group_size',
              'STYLEGAN.pl_weight': 'loss.pl_weight', 'MODEL.w_dim': 'model.stylegan2.w_dim',
              # config.py scales each Adam by its reg interval, regulariser on or off.
              'STYLEGAN.g_reg_interval': 'optim.g_lazy_interval',
              'STYLEGAN.d_reg_interval': 'optim.d_lazy_interval'}
_SG2_KEYS = (*_SG2_PLAIN, 'STYLEGAN.apply_pl_reg', 'MODEL.backbone')


def _stylegan2_fwd(s):
  if s['MODEL.backbone'] != SG2:
    return {}
  out = {ours: s[k] for k, ours in _SG2_PLAIN.items() if s[k] != NA}
  # model.py: channel_base 32768 for CIFAR10/100 and >= 512 px, else 16384 (channel_max 512).
  big = s['DATA.img_size'] >= 512 or s['DATA.name'] in ('CIFAR10', 'CIFAR100')
  out['model.stylegan2.channel_base'] = 32768 if big else 16384
  if s['STYLEGAN.apply_pl_reg']:
    out.update({'loss.g_terms': 'pl', 'loss.pl_interval': s['STYLEGAN.g_reg_interval']})
  return out


def _stylegan2_bwd(c):
  if c['model.backbone'] != SG2:
    return {**dict.fromkeys(_SG2_PLAIN, NA), 'STYLEGAN.apply_pl_reg': False}
  return {**{k: c[ours] for k, ours in _SG2_PLAIN.items()},
          'STYLEGAN.apply_pl_reg': 'pl' in c['loss.g_terms'].split(',')}


# AUG.ada_* -> config.ada (augment/ada_heuristic.py), train.augment = 'ada'.
_ADA = {'AUG.ada_aug_type': 'ada.preset', 'AUG.ada_initial_augment_p': 'ada.initial_p',
        'AUG.ada_target': 'ada.target', 'AUG.ada_kimg': 'ada.kimg',
        'AUG.ada_interval': 'ada.interval'}


def _ada_fwd(s):
  if not s['AUG.apply_ada']:
    return {}
  return {'train.augment': 'ada', 'ada.apply_ada': True,
          **{ours: s[k] for k, ours in _ADA.items()}}


def _ada_bwd(c):
  if not (c['train.augment'] == 'ada' and c['ada.apply_ada']):
    return {'AUG.apply_ada': False, **dict.fromkeys(_ADA, NA), 'AUG.ada_aug_type': 'W/O'}
  return {'AUG.apply_ada': True, **{k: c[ours] for k, ours in _ADA.items()}}


def _diffaug_fwd(s):
  if not s['AUG.apply_diffaug']:
    return {'train.diffaug_policy': ''}
  if s['AUG.diffaug_type'] != 'diffaug':
    raise Unmappable(f"AUG.diffaug_type={s['AUG.diffaug_type']!r}: only 'diffaug' (DiffAugment)")
  return {'train.diffaug_policy': DIFFAUG_POLICY}


def _diffaug_bwd(c):
  policy = c['train.diffaug_policy']
  if policy == '':
    return {'AUG.apply_diffaug': False, 'AUG.diffaug_type': 'W/O'}
  if policy == DIFFAUG_POLICY:
    return {'AUG.apply_diffaug': True, 'AUG.diffaug_type': 'diffaug'}
  raise Unmappable(f'train.diffaug_policy={policy!r}: StudioGAN runs {DIFFAUG_POLICY!r} only')


def _shared_fwd(s):
  if s['MODEL.backbone'] != 'big_resnet' or s['MODEL.g_shared_dim'] == NA:
    return {}
  return {'model.shared_dim': s['MODEL.g_shared_dim']}


def _table(sg_key, our_key, table, back=None):
  return Rule((sg_key,), lambda s: {our_key: _lookup(table, s[sg_key], sg_key)},
              lambda c: {sg_key: (back or {}).get(c[our_key]) or _inverse(table, c[our_key],
                                                                          our_key)})


RULES = (
    Rule(('DATA.name', 'DATA.img_size', 'DATA.num_classes'), _dataset_fwd, _dataset_bwd),
    Rule(('MODEL.backbone',), _backbone_fwd, lambda c: {'MODEL.backbone': _inverse(
        _BACKBONES, c['model.backbone'], 'model.backbone')}),
    _act_fn_rule(),
    Rule(('MODEL.g_cond_mtd', 'MODEL.d_cond_mtd', 'MODEL.normalize_d_embed'), _cond_fwd,
         _cond_bwd),
    _only_for(('reacgan',), 'MODEL.d_embed_dim', 'model.embed_dim'),
    _plain('MODEL.apply_g_sn', 'model.apply_g_sn'),
    _plain('MODEL.apply_d_sn', 'model.apply_d_sn'),
    Rule(('MODEL.apply_attn', 'MODEL.attn_g_loc', 'MODEL.attn_d_loc'), _attn_fwd, _attn_bwd),
    _plain('MODEL.z_dim', 'model.z_dim'),
    Rule(('MODEL.g_shared_dim', 'MODEL.backbone'), _shared_fwd,
         lambda c: {'MODEL.g_shared_dim':
                    c['model.shared_dim'] if c['model.backbone'] == 'biggan' else NA}),
    _conv_dim('MODEL.g_conv_dim', 'model.g_conv_dim'),
    _conv_dim('MODEL.d_conv_dim', 'model.d_conv_dim'),
    Rule(('MODEL.apply_g_ema', 'MODEL.g_ema_decay', 'MODEL.g_ema_start', 'STYLEGAN.g_ema_kimg',
          'STYLEGAN.g_ema_rampup', 'MODEL.backbone'), _ema_fwd, _ema_bwd),
    _table('MODEL.g_init', 'model.g_init', _INIT, {'glorot': 'glorot'}),
    _table('MODEL.d_init', 'model.d_init', _INIT, {'glorot': 'glorot'}),
    # vanilla (BCE) and logistic (softplus) are one loss; the StyleGAN2 YAMLs name it logistic.
    Rule(('LOSS.adv_loss',), lambda s: {'loss.adv': _lookup(_ADV, s['LOSS.adv_loss'],
                                                            'LOSS.adv_loss')},
         lambda c: {'LOSS.adv_loss': ('logistic' if c['model.backbone'] == SG2 else 'vanilla')
                    if c['loss.adv'] == 'logistic' else _inverse(_ADV, c['loss.adv'], 'loss.adv')}),
    _only_for(('acgan', 'reacgan'), 'LOSS.cond_lambda', 'loss.cond_lambda'),
    _only_for(('reacgan',), 'LOSS.m_p', 'loss.margin_pos'),
    _only_for(('reacgan',), 'LOSS.temperature', 'loss.temperature'),
    _plain('OPTIMIZATION.batch_size', 'train.batch_size'),
    _plain('OPTIMIZATION.g_lr', 'optim.g_lr'),
    _plain('OPTIMIZATION.d_lr', 'optim.d_lr'),
    _plain('OPTIMIZATION.beta1', 'optim.beta1'),
    _plain('OPTIMIZATION.beta2', 'optim.beta2'),
    _plain('OPTIMIZATION.d_updates_per_step', 'train.d_updates_per_step'),
    _plain('OPTIMIZATION.d_first', 'train.d_first'),
    _plain('OPTIMIZATION.total_steps', 'train.steps'),
    _plain('PRE.apply_rflip', 'data.random_flip'),
    Rule(('AUG.apply_diffaug', 'AUG.diffaug_type'), _diffaug_fwd, _diffaug_bwd),
    Rule(('AUG.apply_ada', *_ADA), _ada_fwd, _ada_bwd),
    Rule((*_R1_KEYS, 'MODEL.backbone'), _r1_fwd, _r1_bwd),
    Rule(_SG2_KEYS, _stylegan2_fwd, _stylegan2_bwd),
)

# Values every converted config gets because StudioGAN hard-codes them (not YAML keys):
# constant lr, D2D-CE negative margin 1 - m_p (src/utils/losses.py Data2DataCrossEntropyLoss).
# (Adam's eps, 1e-6 or StyleGAN2's 1e-8, comes with MODEL.backbone.)
IMPLIED = {'optim.schedule': 'constant', 'loss.margin_neg': -1.0}
