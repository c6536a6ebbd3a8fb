"""Writes tests/fixtures/ada/ada_reference.npz: StudioGAN's AdaAugment (torch CPU) run on injected
draws.

    python scripts/make_ada_fixture.py --studiogan /work/studiogan \
        [--output tests/fixtures/ada/ada_reference.npz]

For each case (preset, p) it draws the reference's uniform / normal numbers in the order and
shapes of `reacgan_jax.augment.ada_params.raw_layout`,
makes torch.rand / torch.randn hand exactly those
to `AdaAugment.forward` (checked shape by shape), and records with a line tracer the composed
G_inv (at the padding computation), the colour matrix C (before it is applied), the pad margins
and the output. tests/augment/test_ada_reference.py replays the same draws through our
`select_params` / matrices / `apply` and compares. StudioGAN is only needed here, never by tests.
"""

import argparse
import inspect
import pathlib
import sys

import numpy as np

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from reacgan_jax.augment import ada_params  # noqa: E402

CASES = (('bgc', 0.7, 11), ('bgcfnc', 1.0, 12), ('blit', 1.0, 13), ('geom', 1.0, 14))
BATCH, SIZE, CHANNELS = 4, 32, 3


def _raw_draws(rng, spec):
  raw = {}
  for name, kind, shape in ada_params.raw_layout(spec, BATCH, SIZE, SIZE, CHANNELS):
    raw[name] = (rng.random(shape) if kind == 'u' else rng.standard_normal(shape)).astype(
        np.float32)
  return raw


def _run_reference(torch, ada_aug, spec_kwargs, p, x_nhwc, raw, spec):
  """Runs AdaAugment on x with torch.rand/randn replaced by the queued draws."""
  layout = ada_params.raw_layout(spec, BATCH, SIZE, SIZE, CHANNELS)
  queue = [(name, raw[name]) for name, _, _ in layout]
  real_rand, real_randn = torch.rand, torch.randn

  def fake(kind):
    def draw(size, device=None, **_):
      name, value = queue.pop(0)
      want = dict((n, k) for n, k, _ in layout)[name]
      assert want == kind, (name, want, kind)
      if name == 'noise_field':
        value = value.transpose(0, 3, 1, 2)  # ours NHWC, theirs NCHW
      assert value.size == int(np.prod(size)), (name, value.shape, size)
      return torch.as_tensor(value.reshape(size))
    return draw

  src, first = inspect.getsourcelines(ada_aug.AdaAugment.forward)
  line_of = {key: first + i for i, text in enumerate(src) for key in
             ('cx = (width - 1) / 2', 'if C is not I_4:', 'pad=[mx0,mx1,my0,my1]')
             if key in text}
  seen = {}

  def tracer(frame, event, arg):
    if frame.f_code is not ada_aug.AdaAugment.forward.__code__:
      return None
    def local(frame, event, arg):
      if event == 'line':
        for key, line in line_of.items():
          if frame.f_lineno == line:
            seen[key] = {k: v for k, v in frame.f_locals.items()
                         if k in ('G_inv', 'C', 'mx0', 'mx1', 'my0', 'my1')}
      return local
    return local

  pipe = ada_aug.AdaAugment(**spec_kwargs)
  pipe.p.copy_(torch.as_tensor(p))
  torch.rand, torch.randn = fake('u'), fake('n')
  sys.settrace(tracer)
  try:
    out = pipe(torch.as_tensor(x_nhwc.transpose(0, 3, 1, 2)))
  finally:
    sys.settrace(None)
    torch.rand, torch.randn = real_rand, real_randn
  assert not queue, f'draws left unused: {[n for n, _ in queue]}'
  result = {'out': out.numpy().transpose(0, 2, 3, 1)}
  if 'cx = (width - 1) / 2' in seen:
    result['g_inv'] = seen['cx = (width - 1) / 2']['G_inv'].numpy()
    pad = seen['pad=[mx0,mx1,my0,my1]']
    result['margins'] = np.asarray([int(pad[k]) for k in ('mx0', 'mx1', 'my0', 'my1')])
  if 'if C is not I_4:' in seen:
    result['c'] = seen['if C is not I_4:']['C'].numpy()
  return result


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--studiogan', required=True, help='PyTorch-StudioGAN checkout')
  parser.add_argument('--output',
                      default=str(REPO / 'tests' / 'fixtures' / 'ada' / 'ada_reference.npz'))
  args = parser.parse_args()
  sys.path.insert(0, str(pathlib.Path(args.studiogan) / 'src'))
  import torch  # noqa: PLC0415
  if 'pkg_resources' not in sys.modules:  # StudioGAN's conv2d_gradfix imports parse_version
    import types  # noqa: PLC0415

    from packaging.version import parse  # noqa: PLC0415
    sys.modules['pkg_resources'] = types.SimpleNamespace(parse_version=parse)
  import utils.ada_aug as ada_aug  # noqa: PLC0415

  rng = np.random.default_rng(0)
  yy, xx = np.meshgrid(np.linspace(-1, 1, SIZE), np.linspace(-1, 1, SIZE), indexing='ij')
  smooth = np.stack([np.sin(3 * xx + k) * np.cos(2 * yy - k) for k in range(CHANNELS)], -1)
  x = np.clip(0.6 * smooth[None] + 0.3 * rng.standard_normal((BATCH, SIZE, SIZE, CHANNELS)),
              -1, 1).astype(np.float32)
  arrays = {'x': x}
  for name, p, seed in CASES:
    spec = ada_params.preset(name)
    raw = _raw_draws(np.random.default_rng(seed), spec)
    ref = _run_reference(torch, ada_aug, ada_params.PRESETS[name], p, x, raw, spec)
    arrays[f'{name}/p'] = np.float32(p)
    arrays.update({f'{name}/raw/{k}': v for k, v in raw.items()})
    arrays.update({f'{name}/{k}': v for k, v in ref.items()})
    print(name, p, {k: v.shape for k, v in ref.items()})
  pathlib.Path(args.output).parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(args.output, **arrays)
  print('wrote', args.output, pathlib.Path(args.output).stat().st_size, 'bytes')


if __name__ == '__main__':
  main()
