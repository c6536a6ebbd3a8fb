"""Writes tests/fixtures/studiogan_models.npz: StudioGAN's own G / D modules, random weights.

  python scripts/make_studiogan_fixture.py --studiogan=/path/to/PyTorch-StudioGAN/src

Builds PyTorch-StudioGAN's big_resnet / resnet / deep_conv Generator and Discriminator (its
code, imported from --studiogan; nothing of it is copied here) at tiny widths for every head
(W/O, AC, PD, D2DCE), runs three train-mode forwards (so the spectral-norm u/v buffers and the BN
running statistics are what a training run leaves), then nudges every weight by ~1% (as an
optimiser step after the last power iteration would: the stored u/v then no longer belong to
the current weights), and records eval-mode outputs on fixed inputs. deep_conv has fixed widths
in StudioGAN (512 ... 64); they are divided by 32 in an in-memory copy of its source, the only
patch. Saved: every state-dict tensor (packed), the inputs, the outputs, and per case the
reacgan-jax config overrides describing the same network (read by tests/studiogan/test_convert.py).
"""

import argparse
import contextlib
import importlib.util
import json
import os
import sys
import types

import numpy as np
import torch
import torch.nn as nn

NUM_CLASSES, BATCH_G, BATCH_D = 5, 1, 3
OURS_BACKBONE = {'big_resnet': 'biggan', 'resnet': 'resnet', 'deep_conv': 'deep_conv'}
OURS_HEAD = {'W/O': 'none', 'AC': 'acgan', 'PD': 'pd', 'D2DCE': 'reacgan'}
# G cases: (backbone, g_cond_mtd, apply_g_sn, attention block or 0, g_conv_dim, z_dim)
G_CASES = {
    'big_resnet_cond': ('big_resnet', 'cBN', True, 2, 2, 20),
    'big_resnet_uncond': ('big_resnet', 'W/O', False, 0, 2, 20),
    'resnet_cond': ('resnet', 'cBN', False, 1, 2, 16),
    'resnet_uncond': ('resnet', 'W/O', True, 3, 2, 16),
    'deep_conv_cond': ('deep_conv', 'cBN', True, 1, 2, 16),
    'deep_conv_uncond': ('deep_conv', 'W/O', False, 1, 2, 16),
}
# D cases: (backbone, d_cond_mtd, apply_d_sn, attention block or 0, d_conv_dim)
D_CASES = {}
for _bb, _attn in (('big_resnet', (0, 1, 2, 1)), ('resnet', (0, 1, 2, 1)),
                  ('deep_conv', (0, 3, 0, 3))):  # attention needs >= 8 channels there
  for _i, _head in enumerate(('W/O', 'AC', 'PD', 'D2DCE')):
    # SN off (BN inside D) for one head per backbone; attention moves between blocks.
    D_CASES[f'{_bb}_{_head.replace("/", "")}'] = (_bb, _head, _head != 'AC', _attn[_i],
                                                  2 if _bb == 'deep_conv' else 4)
DEEP_CONV_PATCH = [('[512, 256, 128]', '[16, 8, 4]'), ('[256, 128, 64]', '[8, 4, 2]'),
                   ('[3] + [64, 128]', '[3] + [2, 4]'), ('[64, 128, 256]', '[2, 4, 8]'),
                   ('in_channels=256, out_channels=512', 'in_channels=8, out_channels=16'),
                   ('in_features=512', 'in_features=16'),
                   ('d_embedding(num_classes, 512)', 'd_embedding(num_classes, 16)')]


def import_studiogan(src):
  """StudioGAN's utils.ops and model modules; utils.misc (heavy imports) replaced by the one
  helper the models use, dummy_context_mgr."""
  sys.path.insert(0, src)
  misc = types.ModuleType('utils.misc')
  misc.dummy_context_mgr = contextlib.nullcontext
  sys.modules['utils.misc'] = misc
  import utils.ops as ops  # noqa: PLC0415
  mods = {}
  for name in ('big_resnet', 'resnet'):
    mods[name] = importlib.import_module(f'models.{name}')
  text = open(os.path.join(src, 'models', 'deep_conv.py')).read()
  for old, new in DEEP_CONV_PATCH:
    assert old in text, old
    text = text.replace(old, new)
  mods['deep_conv'] = types.ModuleType('deep_conv_small')
  exec(compile(text, 'deep_conv_small', 'exec'), mods['deep_conv'].__dict__)  # noqa: S102
  return ops, mods


def modules_for(ops, backbone, g_cond, g_sn, d_sn):
  """StudioGAN src/config.py define_modules for these switches."""
  m = types.SimpleNamespace()
  m.g_conv2d, m.g_deconv2d, m.g_linear, m.g_embedding = (
      (ops.snconv2d, ops.sndeconv2d, ops.snlinear, ops.sn_embedding) if g_sn
      else (ops.conv2d, ops.deconv2d, ops.linear, ops.embedding))
  m.d_conv2d, m.d_deconv2d, m.d_linear, m.d_embedding = (
      (ops.snconv2d, ops.sndeconv2d, ops.snlinear, ops.sn_embedding) if d_sn
      else (ops.conv2d, ops.deconv2d, ops.linear, ops.embedding))
  m.g_bn = (ops.ConditionalBatchNorm2d if g_cond == 'cBN' or backbone == 'big_resnet'
            else ops.batchnorm_2d)
  m.d_bn = ops.batchnorm_2d
  m.g_act_fn, m.d_act_fn = nn.ReLU(inplace=True), nn.ReLU(inplace=True)
  return m


MODEL = types.SimpleNamespace(info_type='N/A', g_info_injection='N/A')


def randomize(model, scale):
  """Ortho init (StudioGAN's) plus noise, non-zero attention sigma, random BN affines."""
  with torch.no_grad():
    for name, p in model.named_parameters():
      if name.endswith('sigma'):
        p.fill_(0.7)
      elif p.ndim == 1:
        p.copy_(torch.randn_like(p) * 0.1 + (1.0 if name.endswith('bn4.weight')
                                              or '.weight' in name and 'bn' in name else 0.0))
      else:
        p.add_(torch.randn_like(p) * scale * p.std())


def warm_up(model, make_inputs):
  """Three train-mode forwards: SN power iterations and BN running statistics, as in training."""
  model.train()
  with torch.no_grad():
    for _ in range(3):
      model(*make_inputs())
  randomize(model, 0.01)  # "an optimiser step" after the last power iteration
  with torch.no_grad():  # float16-representable values: the fixture stores them losslessly
    for t in model.state_dict().values():
      if t.is_floating_point():
        t.copy_(t.half().float())
  model.eval()


def build_g(ops, mods, case):
  backbone, cond, sn, attn, dim, z_dim = G_CASES[case]
  g = mods[backbone].Generator(
      z_dim=z_dim, g_shared_dim=8, img_size=32, g_conv_dim=dim, apply_attn=attn > 0,
      attn_g_loc=[attn], g_cond_mtd=cond, num_classes=NUM_CLASSES, g_init='ortho',
      g_depth='N/A', mixed_precision=False, MODULES=modules_for(ops, backbone, cond, sn, True),
      MODEL=MODEL)
  randomize(g, 0.3)
  warm_up(g, lambda: (torch.randn(8, z_dim), torch.randint(0, NUM_CLASSES, (8,))))
  ours = {'model.backbone': OURS_BACKBONE[backbone], 'model.cond_method':
          'pd' if cond == 'cBN' else 'none', 'model.apply_g_sn': sn, 'model.g_attn_block': attn,
          'model.g_conv_dim': dim, 'model.z_dim': z_dim, 'model.shared_dim': 8}
  return g, ours, z_dim


def build_d(ops, mods, case):
  backbone, head, sn, attn, dim = D_CASES[case]
  d = mods[backbone].Discriminator(
      img_size=32, d_conv_dim=dim, apply_d_sn=sn, apply_attn=attn > 0, attn_d_loc=[attn],
      d_cond_mtd=head, aux_cls_type='W/O', d_embed_dim=8, normalize_d_embed=head == 'D2DCE',
      num_classes=NUM_CLASSES, d_init='ortho', d_depth='N/A', mixed_precision=False,
      MODULES=modules_for(ops, backbone, 'W/O', True, sn), MODEL=MODEL)
  randomize(d, 0.3)
  warm_up(d, lambda: (torch.rand(8, 3, 32, 32) * 2 - 1, torch.randint(0, NUM_CLASSES, (8,))))
  ours = {'model.backbone': OURS_BACKBONE[backbone], 'model.cond_method': OURS_HEAD[head],
          'model.apply_d_sn': sn, 'model.d_attn_block': attn, 'model.d_conv_dim': dim,
          'model.embed_dim': 8}
  return d, ours


def state_arrays(prefix, model, index):
  """The state dict as one flat float16 vector (exact: the values are float16 numbers) plus
  index[prefix] = [(name, shape)], so the npz holds a few arrays instead of hundreds."""
  items = [(k, v.detach()) for k, v in model.state_dict().items()
           if not k.endswith('num_batches_tracked')]
  index[prefix] = [(k, list(v.shape)) for k, v in items]
  return {f'{prefix}/flat': np.concatenate([v.half().numpy().reshape(-1) for _, v in items])}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--studiogan', required=True, help='PyTorch-StudioGAN/src')
  parser.add_argument('--out', default=os.path.join(os.path.dirname(__file__), '..', 'tests',
                                                    'fixtures', 'studiogan_models.npz'))
  args = parser.parse_args()
  torch.manual_seed(0)
  ops, mods = import_studiogan(args.studiogan)
  out, meta = {}, {'num_classes': NUM_CLASSES, 'G': {}, 'D': {}, 'index': {}}
  x = (torch.rand(BATCH_D, 3, 32, 32) * 2 - 1).half().float()
  y_d = torch.arange(BATCH_D) % NUM_CLASSES
  out["D_x"], out["D_y"] = x.permute(0, 2, 3, 1).half().numpy(), y_d.numpy()
  for case in G_CASES:
    g, ours, z_dim = build_g(ops, mods, case)
    z, y = torch.randn(BATCH_G, z_dim).half().float(), torch.tensor([3])
    with torch.no_grad():
      images = g(z, y, eval=True)
    out.update(state_arrays(f'G/{case}', g, meta['index']))
    out[f'G/{case}/z'], out[f'G/{case}/y'] = z.numpy(), y.numpy()
    out[f'G/{case}/images'] = images.permute(0, 2, 3, 1).numpy()
    meta['G'][case] = ours
  for case in D_CASES:
    d, ours = build_d(ops, mods, case)
    with torch.no_grad():
      res = d(x, y_d, eval=True)
    out.update(state_arrays(f'D/{case}', d, meta['index']))
    for key in ('adv_output', 'cls_output', 'embed', 'proxy', 'h'):
      if res[key] is not None:
        out[f'D/{case}/{key}'] = res[key].numpy()
    meta['D'][case] = ours
  out['meta'] = np.array(json.dumps(meta, sort_keys=True))
  np.savez_compressed(args.out, **{k: np.asarray(v) for k, v in out.items()})
  print(f'wrote {args.out}: {len(out)} arrays, {os.path.getsize(args.out)} bytes, torch '
        f'{torch.__version__}')


if __name__ == '__main__':
  main()
