"""Fixed FIR filters as shifted slices times taps (ADA's resampling, StyleGAN2's upfirdn2d on the
CPU path).

A depthwise `lax.conv` with a constant filter is slow on XLA:CPU, forward and backward (~20x
slower than this form for ADA's 12-tap filter; the StyleGAN2 D and G updates at full CIFAR-10
width lose about a quarter of their time to it: benchmarks/README.md). Written as a sum of
strided slices, the filter and its gradient (pads of the cotangent) are elementwise loops XLA
fuses.
"""

import jax
import numpy as np


def fir_axis(x, taps, axis, stride=1):
  """'Valid' cross-correlation of x along `axis` with fixed taps [K], every stride-th output."""
  n_out = (x.shape[axis] - taps.size) // stride + 1
  out = 0.
  for k, tap in enumerate(np.asarray(taps, np.float32)):
    part = jax.lax.slice_in_dim(x, k, k + stride * (n_out - 1) + 1, stride=stride, axis=axis)
    out = out + part * tap
  return out


def separable(f, rtol=1e-6):
  """A 2-D filter [fh, fw] -> (column taps [fh], row taps [fw]) with outer(col, row) == f to
  rtol of its largest tap, or None when f is not rank one (or sums to zero)."""
  f = np.asarray(f, np.float64)
  if f.ndim != 2 or f.sum() == 0:
    return None
  col, row = f.sum(axis=1), f.sum(axis=0) / f.sum()
  if not np.allclose(np.outer(col, row), f, rtol=0, atol=rtol * np.abs(f).max()):
    return None
  return col, row


def correlate2d_separable(x, col, row, stride=1):
  """Valid 2-D cross-correlation of NHWC x with outer(col, row), every stride-th pixel: the
  height pass, then the width pass."""
  x = fir_axis(x, np.asarray(col), axis=1, stride=stride)
  return fir_axis(x, np.asarray(row), axis=2, stride=stride)
