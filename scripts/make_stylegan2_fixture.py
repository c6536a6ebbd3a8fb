"""Make tests/fixtures/stylegan2_parity.npz: StudioGAN's own StyleGAN2 G and D (torch CPU) at a
tiny width, their weights, inputs and outputs, for tests/parity/test_stylegan2_parity.py.

  python scripts/make_stylegan2_fixture.py --studiogan /path/to/PyTorch-StudioGAN/src \
      [--out tests/fixtures/stylegan2_parity.npz]

StudioGAN's style_ops import pkg_resources (absent from recent setuptools); if it is missing a
stand-in module with `parse_version` is put on sys.path. Its CUDA ops fall back to their
reference implementations on CPU. Every parameter is perturbed away from its init (biases,
noise strengths are zeros there) so that each one matters for the outputs.
"""

import argparse
import sys
import tempfile
import types
from pathlib import Path

import numpy as np

CFG = dict(z_dim=8, w_dim=8, num_classes=3, res=32, g_res=16, channel_base=64, channel_max=8,
           mapping_layers=2, batch=4, mbstd_group=2, embed_dim=6)
# D variants: name -> (architecture, StudioGAN d_cond_mtd); every head and architecture once
D_VARIANTS = {
    'd_orig_spd': ('orig', 'SPD'), 'd_orig_reacgan': ('orig', 'D2DCE'),
    'd_skip_acgan': ('skip', 'AC'), 'd_resnet_none': ('resnet', 'W/O'),
}
G_VARIANTS = {'g_skip': 'skip', 'g_resnet': 'resnet', 'g_orig': 'orig'}


def _import_studiogan(src):
  try:
    import pkg_resources  # noqa: F401
  except ImportError:
    stub = Path(tempfile.mkdtemp()) / 'pkg_resources.py'
    stub.write_text('from packaging.version import parse as parse_version\n')
    sys.path.insert(0, str(stub.parent))
  sys.path.insert(0, str(src))
  import models.stylegan2 as sg2  # noqa: PLC0415
  return sg2


def _perturb(module, torch, gen):
  with torch.no_grad():
    for name, p in module.named_parameters():
      if name.endswith('bias') or name.endswith('noise_strength'):
        p.add_(0.2 * torch.randn(p.shape, generator=gen))
      else:
        p.mul_(1 + 0.1 * torch.randn(p.shape, generator=gen))


def _state(prefix, module):
  return {f'{prefix}/{k}': v.detach().numpy().copy() for k, v in module.state_dict().items()
          if not k.endswith('resample_filter')}


def make_g(sg2, torch, arch, gen, out, inputs):
  c = CFG
  model = types.SimpleNamespace(info_type='N/A')
  g = sg2.Generator(z_dim=c['z_dim'], c_dim=c['num_classes'], w_dim=c['w_dim'],
                    img_resolution=c['g_res'], img_channels=3, MODEL=model,
                    mapping_kwargs={'num_layers': c['mapping_layers']},
                    synthesis_kwargs={'channel_base': c['channel_base'],
                                      'channel_max': c['channel_max'], 'num_fp16_res': 0,
                                      'conv_clamp': None, 'architecture': arch})
  _perturb(g, torch, gen)
  with torch.no_grad():
    g.mapping.w_avg.copy_(torch.randn(c['w_dim'], generator=gen))
  name = f'g_{arch}'
  out.update(_state(f'{name}/sd', g))
  z, c1h = torch.from_numpy(inputs['z']), torch.nn.functional.one_hot(
      torch.from_numpy(inputs['y']).long(), c['num_classes'])
  with torch.no_grad():
    for train in (False, True):  # train -> non-fused modconv, eval -> fused grouped conv
      g.train(train)
      tag = 'train' if train else 'eval'
      out[f'{name}/out_{tag}_const'] = g(z, c1h, noise_mode='const').numpy()
      if arch == 'skip':
        out[f'{name}/out_{tag}_none'] = g(z, c1h, noise_mode='none').numpy()
    g.eval()
    out[f'{name}/out_psi07_cut3'] = g(z, c1h, truncation_psi=0.7, truncation_cutoff=3,
                                      noise_mode='const').numpy()
    out[f'{name}/ws_psi05'] = g.mapping(z, c1h, truncation_psi=0.5).numpy()
    g.mapping(z, c1h, update_emas=True)
    out[f'{name}/w_avg_updated'] = g.mapping.w_avg.numpy().copy()


def make_d(sg2, torch, name, arch, mtd, gen, out, inputs):
  c = CFG
  model = types.SimpleNamespace(info_type='N/A')
  d = sg2.Discriminator(
      c_dim=c['num_classes'] if mtd in ('SPD', 'D2DCE') else 0, img_resolution=c['res'],
      img_channels=3, architecture=arch, channel_base=c['channel_base'],
      channel_max=c['channel_max'], num_fp16_res=0, conv_clamp=None, cmap_dim=None,
      d_cond_mtd=mtd, aux_cls_type='W/O', d_embed_dim=c['embed_dim'],
      num_classes=c['num_classes'], normalize_d_embed=(mtd == 'D2DCE'), block_kwargs={},
      mapping_kwargs={},
      epilogue_kwargs={'mbstd_group_size': c['mbstd_group']}, MODEL=model)
  _perturb(d, torch, gen)
  out.update(_state(f'{name}/sd', d))
  x = torch.from_numpy(inputs['x_nchw'])
  with torch.no_grad():
    r = d(x, torch.from_numpy(inputs['y']).long())
  for key in ('adv_output', 'h', 'embed', 'proxy', 'cls_output'):
    if r[key] is not None:
      out[f'{name}/{key}'] = r[key].numpy().reshape(r[key].shape[0], -1).squeeze(-1) \
          if key == 'adv_output' else r[key].numpy()


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument('--studiogan', required=True, help='path to PyTorch-StudioGAN/src')
  ap.add_argument('--out', default='tests/fixtures/stylegan2_parity.npz')
  args = ap.parse_args()
  import torch  # noqa: PLC0415
  sg2 = _import_studiogan(args.studiogan)
  torch.manual_seed(0)
  gen = torch.Generator().manual_seed(1)
  rng = np.random.default_rng(0)
  c = CFG
  inputs = {'z': rng.standard_normal((c['batch'], c['z_dim'])).astype(np.float32),
            'y': np.array([0, 2, 1, 2], np.int32),
            'x_nchw': rng.standard_normal((c['batch'], 3, c['res'], c['res'])).astype(
                np.float32)}
  out = dict(inputs)
  out['cfg'] = np.array(repr(CFG))
  for arch in G_VARIANTS.values():
    make_g(sg2, torch, arch, gen, out, inputs)
  for name, (arch, mtd) in D_VARIANTS.items():
    make_d(sg2, torch, name, arch, mtd, gen, out, inputs)
  Path(args.out).parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.out, **out)
  print(f'wrote {args.out}: {len(out)} arrays, '
        f'{sum(v.size for v in out.values())} numbers')


if __name__ == '__main__':
  main()
