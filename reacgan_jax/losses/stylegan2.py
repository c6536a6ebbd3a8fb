"""StyleGAN2 regularisers as pure functions (StudioGAN src/utils/losses.py:
`stylegan_cal_r1_reg`, `PathLengthRegularizer.cal_pl_reg`; scaling as in src/worker.py).

R1 (worker.py, r1_place 'outside_loop', every d_reg_interval D steps):
    penalty = d_reg_interval * r1_lambda * mean_b( sum_{h,w,c} (d adv_b / d x_b)^2 / 2 )
  gradient of sum_b adv_b w.r.t. the (pre-augmentation) real images; CIFAR r1_lambda 0.01.
Path length (every g_reg_interval G steps, on a fresh batch of batch_size // 2):
    n ~ N(0, 1) / sqrt(H W) like the images;  g = d sum(images * n) / d ws   [B, num_ws, w_dim]
    l_b = sqrt( mean_ws sum_w g^2 );  mean' = mean + decay (mean_b l_b - mean)
    loss = g_reg_interval * pl_weight * mean_b (l_b - mean')^2
  mean' keeps its gradient inside the loss (as the reference: only the stored copy is
  detached). The running mean is explicit state: pass it in, get the new one back.
"""

import math

import jax
import jax.numpy as jnp


def r1_penalty(adv_fn, images, *, gamma: float, interval: float = 1.0):
  """interval * gamma * mean over the batch of |grad_x adv(x)|^2 / 2 per sample.

  adv_fn: images [B, H, W, C] -> adv [B] (e.g. `lambda x: D.apply(v, augment(x), y).adv`);
  differentiate the result w.r.t. D's params for the update (double backprop).
  gamma: StudioGAN LOSS.r1_lambda. interval: the lazy-regularisation factor (STYLEGAN.
  d_reg_interval when applied every that many steps; 1 = not lazy).
  """
  grads = jax.grad(lambda x: jnp.sum(adv_fn(x)))(images)
  per_sample = jnp.sum(jnp.square(grads), axis=tuple(range(1, grads.ndim)))
  return interval * gamma * jnp.mean(per_sample / 2)


def path_length_penalty(synthesis_fn, ws, key, pl_mean, *, weight: float, decay: float = 0.01,
                        interval: float = 1.0, batch_shrink: int = 1):
  """(loss, new_pl_mean, pl_lengths [B']) for ws [B, num_ws, w_dim] -> images [B, H, W, C].

  synthesis_fn: ws -> images (e.g. `lambda w: G.apply(v, w, method='synthesize', rngs=...)`);
  differentiate `loss` w.r.t. G's params through it. key: the noise n. pl_mean: scalar
  running mean (start at 0.0). weight: STYLEGAN.pl_weight. interval: g_reg_interval when lazy.
  batch_shrink: use the first B // batch_shrink samples (StudioGAN draws a new batch of
  batch_size // 2 instead, the same in distribution). new_pl_mean is stop-gradient'ed.
  """
  if batch_shrink > 1:
    ws = ws[:max(ws.shape[0] // batch_shrink, 1)]
  images, vjp = jax.vjp(synthesis_fn, ws)
  noise = jax.random.normal(key, images.shape, images.dtype) / math.sqrt(
      images.shape[1] * images.shape[2])
  (grads,) = vjp(noise)
  lengths = jnp.sqrt(jnp.mean(jnp.sum(jnp.square(grads), axis=2), axis=1))
  mean = pl_mean + decay * (jnp.mean(lengths) - pl_mean)
  loss = interval * jnp.mean(jnp.square(lengths - mean) * weight)
  return loss, jax.lax.stop_gradient(mean), lengths
