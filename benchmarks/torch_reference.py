"""Torch timing reference: the StudioGAN CIFAR-10 layer lists, one D and one G update.

  python benchmarks/torch_reference.py --model reacgan --batch 64 --repeats 2
  python benchmarks/torch_reference.py --model sngan --batch 64 --repeats 2

Issue 9 compares our JAX train step with PyTorch-StudioGAN on the same machine. StudioGAN
itself is not installable here (a research repo, not a package), so this file rebuilds its
two CIFAR-10 models in plain torch, layer for layer (shared/SPEC.md section 3; StudioGAN
src/models/big_resnet.py, resnet.py, src/utils/ops.py), and times the parts of its
worker.py steps that cost compute:
- ReACGAN: big_resnet 32 (ch 96, z 80 hierarchical, shared class embedding 128,
  attention G@2 D@1, SN on G and D, D2D-CE head embed 512), hinge + 0.5 * D2D-CE.
- SNGAN: resnet 32 (ch 64, z 128, G cBN on one-hot labels as at StudioGAN HEAD, no G SN,
  SN D with projection), hinge.
Parameter and SN-module counts equal SPEC.md's table (tests/parity/test_torch_reference.py).

Torch is NCHW here (the reference's layout); NHWC is our JAX convention. Torch is an optional
extra (`pip install -e '.[torch]'`): nothing in reacgan_jax/ imports this file.

Measured per call (after one warm-up call, median of `repeats`):
- `d_update_s`: one D update as in StudioGAN's `train_discriminator`: fakes from G in train
  mode without autograd (the reference freezes G's grads), D forward on the real batch and on
  the fake batch (two calls, each one SN power iteration), hinge + cond_lambda * cond loss on
  real, backward, Adam step.
- `g_update_s`: one G update as in `train_generator`: G forward, D forward (D frozen but in
  train mode), hinge + cond_lambda * cond loss on fake, backward, Adam step.
- `g_forward_img_per_s`: batch / time of one train-mode G forward without autograd.
The real batch is random data: the input pipeline is not timed. Each figure is also given as
process CPU seconds / threads, which estimates the unloaded wall time when other jobs share
the cores (see benchmarks/README.md).
"""

import argparse
import json
import os
import statistics
import time

import torch
import torch.nn.functional as F
from torch import nn

# StudioGAN's numbers for the two CIFAR-10 configs (src/configs/CIFAR10/{ReACGAN,SNGAN}.yaml
# over the defaults of src/config.py; shared/SPEC.md section 4). Adam eps 1e-6 as the reference.
REFERENCE_CONFIGS = {
  'reacgan': dict(
    backbone='big_resnet', z_dim=80, shared_dim=128, g_conv_dim=96, d_conv_dim=96,
    g_attn_block=2, d_attn_block=1, apply_g_sn=True, cond='d2dce', embed_dim=512,
    cond_lambda=0.5, temperature=0.5, margin_pos=0.98, lr=2.8284271e-4, betas=(0.5, 0.999)),
  'sngan': dict(
    backbone='resnet', z_dim=128, shared_dim=0, g_conv_dim=64, d_conv_dim=64,
    g_attn_block=0, d_attn_block=0, apply_g_sn=False, cond='pd', embed_dim=0,
    cond_lambda=0.0, temperature=0.0, margin_pos=0.0, lr=2e-4, betas=(0.5, 0.999)),
}
NUM_CLASSES = 10
ADAM_EPS = 1e-6
SN_EPS = 1e-6  # StudioGAN's ops.snconv2d / snlinear / sn_embedding
BN_EPS = 1e-4  # StudioGAN's ops.batchnorm_2d

# What issue 9 reports for StudioGAN itself on this 2-core machine (torch 2.13, 2 threads).
ISSUE_FIGURES = {
  'reacgan': {'d_update_s': 6.44, 'g_update_s': 13.3, 'g_forward_img_per_s': 20.5},
  'sngan': {'d_update_s': 3.08, 'g_update_s': 5.36, 'g_forward_img_per_s': 41.7},
}


def _layer(module, sn):
  """Orthogonal init (StudioGAN's `ortho`, zero bias) and optional spectral norm."""
  nn.init.orthogonal_(module.weight)
  if getattr(module, 'bias', None) is not None:
    nn.init.zeros_(module.bias)
  return nn.utils.spectral_norm(module, eps=SN_EPS) if sn else module


def conv(cin, cout, k, sn, bias=True):
  return _layer(nn.Conv2d(cin, cout, k, padding=k // 2, bias=bias), sn)


def linear(cin, cout, sn, bias=True):
  return _layer(nn.Linear(cin, cout, bias=bias), sn)


def embedding(num, dim, sn):
  return _layer(nn.Embedding(num, dim), sn)


class CondBatchNorm(nn.Module):
  """BN without affine, then `x * (1 + gain(a)) + bias(a)` (both bias-free linears of a)."""

  def __init__(self, affine_dim, ch, sn):
    super().__init__()
    self.bn = nn.BatchNorm2d(ch, eps=BN_EPS, momentum=0.1, affine=False)
    self.gain = linear(affine_dim, ch, sn, bias=False)
    self.bias = linear(affine_dim, ch, sn, bias=False)

  def forward(self, x, a):
    # The `1 +` matters: gain starts near 1 (SPEC 3, a known porting bug drops it).
    return self.bn(x) * (1 + self.gain(a))[:, :, None, None] + self.bias(a)[:, :, None, None]


class SelfAttention(nn.Module):
  """SAGAN attention: keys/values max-pooled 2x2, channel ratios 1/8 and 1/2, gate init 0."""

  def __init__(self, ch, sn):
    super().__init__()
    self.theta = conv(ch, ch // 8, 1, sn, bias=False)
    self.phi = conv(ch, ch // 8, 1, sn, bias=False)
    self.g = conv(ch, ch // 2, 1, sn, bias=False)
    self.out = conv(ch // 2, ch, 1, sn, bias=False)
    self.sigma = nn.Parameter(torch.zeros(1))

  def forward(self, x):
    b, c, h, w = x.shape
    q = self.theta(x).flatten(2)  # [B, C/8, HW]
    k = F.max_pool2d(self.phi(x), 2).flatten(2)  # [B, C/8, HW/4]
    v = F.max_pool2d(self.g(x), 2).flatten(2)  # [B, C/2, HW/4]
    attn = torch.softmax(q.transpose(1, 2) @ k, dim=-1)  # [B, HW, HW/4]
    o = (v @ attn.transpose(1, 2)).view(b, c // 2, h, w)
    return x + self.sigma * self.out(o)


class GenBlock(nn.Module):
  """cBN-ReLU-up2-conv3, cBN-ReLU-conv3; shortcut up2-conv1."""

  def __init__(self, cin, cout, affine_dim, sn):
    super().__init__()
    self.bn1 = CondBatchNorm(affine_dim, cin, sn)
    self.bn2 = CondBatchNorm(affine_dim, cout, sn)
    self.conv0 = conv(cin, cout, 1, sn)
    self.conv1 = conv(cin, cout, 3, sn)
    self.conv2 = conv(cout, cout, 3, sn)

  def forward(self, x, a):
    h = F.interpolate(F.relu(self.bn1(x, a)), scale_factor=2, mode='nearest')
    h = self.conv2(F.relu(self.bn2(self.conv1(h), a)))
    return h + self.conv0(F.interpolate(x, scale_factor=2, mode='nearest'))


class Generator(nn.Module):
  """32x32 G: linear -> 4x4x(4c) -> 3 up-blocks (+ attention) -> BN-ReLU-conv3-tanh.

  big_resnet: z splits into 4 chunks; chunk 0 feeds the linear, chunk i feeds block i's cBN
  together with the shared class embedding ([emb, z_i]). resnet: the whole z feeds the
  linear, every cBN sees the one-hot label (StudioGAN HEAD).
  """

  def __init__(self, backbone, z_dim, shared_dim, g_conv_dim, g_attn_block, apply_g_sn,
               num_classes=NUM_CLASSES, **_):
    super().__init__()
    ch, n_blocks, sn = 4 * g_conv_dim, 3, apply_g_sn
    self.hierarchical = backbone == 'big_resnet'
    self.num_classes, self.ch = num_classes, ch
    if self.hierarchical:
      if z_dim % (n_blocks + 1):
        raise ValueError(f'z_dim={z_dim} must split into {n_blocks + 1} equal chunks')
      self.chunk = z_dim // (n_blocks + 1)
      self.shared = embedding(num_classes, shared_dim, sn=False)  # never SN'd (SPEC 3)
      affine_dim, lin_in = shared_dim + self.chunk, self.chunk
    else:
      affine_dim, lin_in = num_classes, z_dim
    self.linear0 = linear(lin_in, ch * 4 * 4, sn)
    self.blocks = nn.ModuleList([GenBlock(ch, ch, affine_dim, sn) for _ in range(n_blocks)])
    self.attn_after = g_attn_block - 1  # block index (0-based) followed by attention
    self.attn = SelfAttention(ch, sn) if g_attn_block > 0 else None
    self.bn4 = nn.BatchNorm2d(ch, eps=BN_EPS, momentum=0.1)
    self.conv5 = conv(ch, 3, 3, sn)

  def forward(self, z, y):
    """z [B, z_dim], y [B] int64 -> images [B, 3, 32, 32] in [-1, 1]."""
    if self.hierarchical:
      zs = torch.split(z, self.chunk, dim=1)
      emb = self.shared(y)
      affines = [torch.cat([emb, zi], dim=1) for zi in zs[1:]]
      h = self.linear0(zs[0])
    else:
      affines = [F.one_hot(y, self.num_classes).float()] * len(self.blocks)
      h = self.linear0(z)
    h = h.view(-1, self.ch, 4, 4)
    for i, block in enumerate(self.blocks):
      h = block(h, affines[i])
      if i == self.attn_after:
        h = self.attn(h)
    return torch.tanh(self.conv5(F.relu(self.bn4(h))))


class DiscBlock(nn.Module):
  """Pre-activation residual block; `first` = StudioGAN's DiscOptBlock (no leading ReLU)."""

  def __init__(self, cin, cout, down, first=False):
    super().__init__()
    self.down, self.first = down, first
    self.conv1 = conv(cin, cout, 3, sn=True)
    self.conv2 = conv(cout, cout, 3, sn=True)
    # Identity shortcut when neither the size nor the width changes.
    self.conv0 = conv(cin, cout, 1, sn=True) if (down or cin != cout or first) else None

  def forward(self, x):
    if not self.first:
      # StudioGAN's D activation is ReLU(inplace=True) applied to the block input, which is
      # also the shortcut tensor: its shortcut therefore sees relu(x), not x.
      x = F.relu(x)
    h = self.conv2(F.relu(self.conv1(x)))
    if self.down:
      h = F.avg_pool2d(h, 2)
    if self.first:  # pool then conv on the shortcut
      return h + self.conv0(F.avg_pool2d(x, 2))
    s = x if self.conv0 is None else self.conv0(x)
    return h + (F.avg_pool2d(s, 2) if self.down else s)


class Discriminator(nn.Module):
  """32x32 SN D: 4 blocks of 2c channels (down, down, -, -) + attention, ReLU, sum pool.

  Heads on the pooled h [B, 2c]: adv = SN-linear(h); 'pd' adds <SN-emb(y), h>;
  'd2dce' gives embed = normalise(SN-linear(h)) and proxy = normalise(SN-emb(y)).
  """

  def __init__(self, d_conv_dim, d_attn_block, cond, embed_dim, num_classes=NUM_CLASSES, **_):
    super().__init__()
    ch = 2 * d_conv_dim
    self.blocks = nn.ModuleList([
      DiscBlock(3, ch, down=True, first=True), DiscBlock(ch, ch, down=True),
      DiscBlock(ch, ch, down=False), DiscBlock(ch, ch, down=False)])
    self.attn_after = d_attn_block - 1
    self.attn = SelfAttention(ch, sn=True) if d_attn_block > 0 else None
    self.cond = cond
    self.linear1 = linear(ch, 1, sn=True)
    if cond == 'pd':
      self.embedding = embedding(num_classes, ch, sn=True)
    elif cond == 'd2dce':
      self.linear2 = linear(ch, embed_dim, sn=True)
      self.embedding = embedding(num_classes, embed_dim, sn=True)
    else:
      raise ValueError(f"cond={cond!r}: expected 'pd' or 'd2dce'")

  def forward(self, x, y):
    """x [B, 3, 32, 32], y [B] -> dict(adv [B], embed [B, d] | None, proxy [B, d] | None)."""
    h = x
    for i, block in enumerate(self.blocks):
      h = block(h)
      if i == self.attn_after:
        h = self.attn(h)
    h = F.relu(h).sum(dim=(2, 3))  # global *sum* pooling (SPEC 3)
    adv = self.linear1(h).squeeze(1)
    if self.cond == 'pd':
      return {'adv': adv + (self.embedding(y) * h).sum(1), 'embed': None, 'proxy': None}
    return {'adv': adv, 'embed': F.normalize(self.linear2(h), dim=1),
            'proxy': F.normalize(self.embedding(y), dim=1)}


def d2d_ce(embed, proxy, labels, temperature, margin_pos):
  """D2D-CE in StudioGAN's form (SPEC 1 item 6): negatives shifted by the detached row max.

  embed, proxy: [B, d] (normalised again here, so any scale works); labels [B] -> scalar.
  """
  f, v = F.normalize(embed, dim=1, eps=1e-8), F.normalize(proxy, dim=1, eps=1e-8)
  eye = torch.eye(f.shape[0], dtype=torch.bool, device=f.device)
  # m_n = 1 - m_p, so c - m_n = c + m_p - 1.
  a = (f @ f.T + margin_pos - 1) / temperature
  row_max = a.masked_fill(eye, float('-inf')).amax(dim=1, keepdim=True).detach()
  negatives = (labels[:, None] != labels[None, :]) & ~eye  # false-negative removal
  neg = torch.where(negatives, torch.exp(F.relu(a) - row_max), torch.zeros_like(a)).sum(1)
  pos = F.relu((margin_pos - (f * v).sum(1)) / temperature)
  return (pos + torch.log(torch.exp(-pos) + neg)).mean()


def build(model, **overrides):
  """-> (G, D, cfg) for 'reacgan' | 'sngan'; overrides replace REFERENCE_CONFIGS entries."""
  if model not in REFERENCE_CONFIGS:
    raise ValueError(f'--model={model!r}: expected one of {sorted(REFERENCE_CONFIGS)}')
  cfg = {**REFERENCE_CONFIGS[model], **overrides}
  return Generator(**cfg), Discriminator(**cfg), cfg


def count(module):
  """-> (trainable parameters, spectral-norm wrappers) as SPEC.md section 3 counts them."""
  params = sum(p.numel() for p in module.parameters())
  sn = sum(1 for m in module.modules()
           for h in m._forward_pre_hooks.values()
           if type(h).__name__ == 'SpectralNorm')
  return params, sn


def _set_grad(module, flag):
  for p in module.parameters():
    p.requires_grad_(flag)


def make_steps(G, D, cfg, batch_size, seed=0, memory_format=torch.contiguous_format):
  """-> (d_update(), g_update(), g_forward()) closures on fixed random data.

  memory_format: the real batch's layout (torch.channels_last for a channels-last model).
  """
  gen = torch.Generator().manual_seed(seed)
  real = (torch.rand(batch_size, 3, 32, 32, generator=gen) * 2 - 1).contiguous(
      memory_format=memory_format)
  real_y = torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)
  z_dim = cfg['z_dim']
  opt_g = torch.optim.Adam(G.parameters(), lr=cfg['lr'], betas=cfg['betas'], eps=ADAM_EPS)
  opt_d = torch.optim.Adam(D.parameters(), lr=cfg['lr'], betas=cfg['betas'], eps=ADAM_EPS)
  G.train()
  D.train()

  def sample():
    z = torch.randn(batch_size, z_dim, generator=gen)
    return z, torch.randint(0, NUM_CLASSES, (batch_size,), generator=gen)

  def cond_loss(out, y):
    if cfg['cond'] != 'd2dce':
      return 0.0  # projection is inside adv
    return cfg['cond_lambda'] * d2d_ce(out['embed'], out['proxy'], y,
                                       cfg['temperature'], cfg['margin_pos'])

  def d_update():
    _set_grad(G, False)
    _set_grad(D, True)
    z, y = sample()
    with torch.no_grad():
      fake = G(z, y)
    out_r, out_f = D(real, real_y), D(fake, y)
    loss = F.relu(1 - out_r['adv']).mean() + F.relu(1 + out_f['adv']).mean()
    loss = loss + cond_loss(out_r, real_y)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return loss.item()

  def g_update():
    _set_grad(G, True)
    _set_grad(D, False)
    z, y = sample()
    out = D(G(z, y), y)
    loss = -out['adv'].mean() + cond_loss(out, y)
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return loss.item()

  def g_forward():
    z, y = sample()
    with torch.no_grad():
      return G(z, y)

  return d_update, g_update, g_forward


def _median_time(fn, repeats):
  """-> (median wall seconds, median process CPU seconds summed over threads) per call."""
  fn()  # warm-up: allocator, Adam state, oneDNN primitive caches
  wall, cpu = [], []
  for _ in range(repeats):
    t0, c0 = time.perf_counter(), time.process_time()
    fn()
    wall.append(time.perf_counter() - t0)
    cpu.append(time.process_time() - c0)
  return statistics.median(wall), statistics.median(cpu)


def run_benchmark(model, batch_size=64, repeats=3, threads=2, seed=0, **overrides):
  """Times one D update, one G update and one G forward; -> dict of floats.

  Keys: d_update_s, g_update_s (wall seconds, median of `repeats` after 1 warm-up),
  g_forward_img_per_s (batch_size / median forward wall time), g_params, d_params, threads,
  and *_cpu_s: process CPU seconds per call summed over threads. On a machine shared with
  other jobs wall time grows with the load while CPU time roughly does not: cpu_s / threads
  estimates the unloaded wall time (a floor-ish estimate: idle spinning of the thread pool
  counts as CPU time too).
  """
  previous_threads = torch.get_num_threads()
  torch.set_num_threads(threads)
  try:
    torch.manual_seed(seed)
    G, D, cfg = build(model, **overrides)
    d_update, g_update, g_forward = make_steps(G, D, cfg, batch_size, seed)
    d_wall, d_cpu = _median_time(d_update, repeats)
    g_wall, g_cpu = _median_time(g_update, repeats)
    f_wall, f_cpu = _median_time(g_forward, repeats)
    return {
      'model': model, 'batch_size': batch_size, 'repeats': repeats,
      'threads': torch.get_num_threads(), 'torch': torch.__version__,
      'g_params': count(G)[0], 'd_params': count(D)[0],
      'd_update_s': d_wall, 'g_update_s': g_wall, 'g_forward_img_per_s': batch_size / f_wall,
      'd_update_cpu_s': d_cpu, 'g_update_cpu_s': g_cpu, 'g_forward_cpu_s': f_cpu,
    }
  finally:  # callers (the JAX side-by-side, tests) keep their own thread setting
    torch.set_num_threads(previous_threads)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--model', choices=sorted(REFERENCE_CONFIGS), default='reacgan')
  parser.add_argument('--batch', type=int, default=64)
  parser.add_argument('--repeats', type=int, default=3)
  parser.add_argument('--threads', type=int, default=2)
  parser.add_argument('--json', action='store_true', help='print one JSON object only')
  args = parser.parse_args()
  res = run_benchmark(args.model, args.batch, args.repeats, args.threads)
  if args.json:
    print(json.dumps(res))
    return
  ref, n = ISSUE_FIGURES[args.model], res['threads']
  print(f"{args.model}: torch {res['torch']}, {n} threads, batch {args.batch}, "
        f"median of {args.repeats} after 1 warm-up; G {res['g_params']:,} / D "
        f"{res['d_params']:,} params; load average {_loadavg()}")
  from_cpu = {'d_update_s': res['d_update_cpu_s'] / n, 'g_update_s': res['g_update_cpu_s'] / n,
              'g_forward_img_per_s': args.batch * n / res['g_forward_cpu_s']}
  print(f'{"":22s} {"wall":>10s} {"CPU s/threads":>14s} {"issue 9 (StudioGAN)":>20s}')
  for key in ('d_update_s', 'g_update_s', 'g_forward_img_per_s'):
    print(f'{key:22s} {res[key]:10.2f} {from_cpu[key]:14.2f} {ref[key]:20.2f}')


def _loadavg():
  try:
    return ' '.join(f'{x:.1f}' for x in os.getloadavg())
  except OSError:
    return 'n/a'


if __name__ == '__main__':
  main()
