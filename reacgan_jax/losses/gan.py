"""GAN losses as pure jnp functions (SPEC.md section 1): adversarial, ACGAN CE, D2D-CE.

Every loss is a mean over the batch and returns a scalar (float32, float64 under x64 with
float64 inputs). Logits are the raw
(pre-sigmoid) outputs of the discriminator: `real_logits`, `fake_logits` of shape [B]
(any shape works; the mean is over all entries).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from reacgan_jax.errors import ConfigError

# Epsilon of the L2 normalisation in D2D-CE; torch.nn.CosineSimilarity's default, which is what
# the reference's cosine similarities use.
_NORMALIZE_EPS = 1e-8


def _at_least_f32(dtype):
  return jnp.promote_types(dtype, jnp.float32)


# ---- adversarial losses ------------------------------------------------------------------------


def d_hinge(real_logits, fake_logits):
  """Hinge D loss: mean(relu(1 - r)) + mean(relu(1 + f))."""
  return jnp.mean(jax.nn.relu(1.0 - real_logits)) + jnp.mean(jax.nn.relu(1.0 + fake_logits))


def g_hinge(fake_logits):
  """Hinge G loss: -mean(f)."""
  return -jnp.mean(fake_logits)


def d_logistic(real_logits, fake_logits):
  """Logistic D loss: mean(softplus(-r)) + mean(softplus(f)) (= BCE with sigmoid)."""
  return jnp.mean(jax.nn.softplus(-real_logits)) + jnp.mean(jax.nn.softplus(fake_logits))


def g_logistic(fake_logits):
  """Non-saturating G loss: mean(softplus(-f)) = -mean(log sigmoid(f))."""
  return jnp.mean(jax.nn.softplus(-fake_logits))


def d_wasserstein(real_logits, fake_logits):
  """Wasserstein D loss: mean(f) - mean(r)."""
  return jnp.mean(fake_logits) - jnp.mean(real_logits)


def g_wasserstein(fake_logits):
  """Wasserstein G loss: -mean(f)."""
  return -jnp.mean(fake_logits)


ADVERSARIAL = {
    'hinge': (d_hinge, g_hinge),
    'logistic': (d_logistic, g_logistic),
    'wasserstein': (d_wasserstein, g_wasserstein),
}


def adversarial_losses(name: str) -> tuple[Callable, Callable]:
  """Returns `(d_loss_fn(real_logits, fake_logits), g_loss_fn(fake_logits))` for `name`.

  Raises:
    ValueError: `name` is not hinge, logistic or wasserstein (config.loss.adv).
  """
  if name not in ADVERSARIAL:
    raise ConfigError(f'config.loss.adv={name!r}: expected one of {", ".join(ADVERSARIAL)}')
  return ADVERSARIAL[name]


# ---- conditional losses ------------------------------------------------------------------------


def acgan_ce(class_logits, labels):
  """ACGAN's auxiliary classifier loss: softmax cross-entropy, mean over the batch.

  Args:
    class_logits: [B, C] float, unnormalised class scores.
    labels: [B] int in [0, C).
  """
  logp = jax.nn.log_softmax(class_logits.astype(_at_least_f32(class_logits.dtype)), axis=-1)
  return -jnp.mean(jnp.take_along_axis(logp, labels[:, None].astype(jnp.int32), axis=-1))


def l2_normalize(x, eps: float = _NORMALIZE_EPS):
  """x / max(||x||, eps) along the last axis, NaN-free also in the gradient at x = 0.

  `jnp.linalg.norm` has an infinite derivative at 0; taking the max on the squared norm keeps
  the zero-vector branch a constant (gradient x * 0 = 0, never 0 * inf).
  """
  sq = jnp.sum(jnp.square(x), axis=-1, keepdims=True)
  return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def d2d_ce(embed, proxy, labels, *, temperature: float, margin_pos: float,
           margin_neg: float | None = None, row_max_shift: bool = True,
           false_negative_removal: bool = True):
  """Data-to-Data Cross-Entropy of ReACGAN (SPEC.md section 1 "D2D-CE").

  With f = normalize(embed), v = normalize(proxy), c_ij = <f_i, f_j>, p_i = <f_i, v_i>,
  a_ij = (c_ij - m_n) / T for j != i, pos_i = relu(m_p - p_i) / T and neg(i) = {j != i,
  y_j != y_i} (all j != i when `false_negative_removal=False`):

    L_i = pos_i + log( exp(-pos_i) + sum_{j in neg(i)} exp(relu(a_ij) - s_i) ),

  s_i = 0 in the paper form (`row_max_shift=False`). The reference form (`row_max_shift=True`,
  default, what PyTorch-StudioGAN trains with) uses s_i = M_i = stop_gradient(max_{j != i}
  a_ij), the row max of the PRE-relu off-diagonal row including same-class entries, subtracted
  from the negatives only: it is not a neutral shift (it changes value and gradients) but it
  is what produced the published numbers. L_i = 0 when i has no negatives (batch 1, or all
  labels equal). Computed as a masked log-sum-exp, so it does not overflow for small T.

  Under data parallelism the loss must see the GLOBAL batch (the reference all-gathers embed,
  proxy and labels, gradients flowing back to each shard). Called inside `jax.jit` on
  batch-sharded global arrays it does: XLA inserts the gathers, and the result equals a
  one-device run on the same global batch. Do not call it per shard under shard_map/pmap.

  Args:
    embed: [B, d] float, D's embedding of each sample (unnormalised).
    proxy: [B, d] float, the proxy row of each sample's own label (unnormalised).
    labels: [B] int, class of each sample.
    temperature: T > 0.
    margin_pos: m_p, the positive margin.
    margin_neg: m_n, the negative margin; None = 1 - m_p (the reference has no separate knob).
    row_max_shift: True = reference form (subtract M_i from the negatives), False = paper form.
    false_negative_removal: False keeps same-class pairs as negatives (ablation); the diagonal
      is removed either way.

  Returns:
    scalar, mean_i L_i (float32; float64 for float64 inputs).
  """
  if embed.ndim != 2 or proxy.shape != embed.shape or labels.shape != embed.shape[:1]:
    raise ValueError(f'd2d_ce expects embed [B, d], proxy [B, d], labels [B]; got '
                     f'{embed.shape}, {proxy.shape}, {labels.shape} (the discriminator\'s '
                     'embed/proxy outputs and the batch labels)')
  if isinstance(temperature, int | float) and temperature <= 0:
    raise ConfigError(f'config.loss.temperature={temperature}: expected > 0')
  if margin_neg is None:
    margin_neg = 1.0 - margin_pos
  dtype = _at_least_f32(embed.dtype)  # bf16 activations: the loss is still taken in float32
  embed = l2_normalize(embed.astype(dtype))
  proxy = l2_normalize(proxy.astype(dtype))
  b = embed.shape[0]
  # HIGHEST: the default matmul precision on TPU/GPU rounds inputs to bf16/tf32, an error of
  # ~1e-3 in c_ij that T < 1 amplifies; the reference computes cosines in float32.
  sim = jnp.matmul(embed, embed.T, precision=jax.lax.Precision.HIGHEST)  # c_ij [B, B]
  pos_sim = jnp.sum(embed * proxy, axis=-1)  # p_i [B]

  a = (sim - margin_neg) / temperature
  off_diag = ~jnp.eye(b, dtype=bool)
  if false_negative_removal:
    negatives = off_diag & (labels[:, None] != labels[None, :])
  else:
    negatives = off_diag

  if row_max_shift:
    row_max = jnp.max(jnp.where(off_diag, a, -jnp.inf), axis=1, keepdims=True)
    # B = 1 has an empty row (max = -inf); no negatives then, so any finite shift will do.
    row_max = jax.lax.stop_gradient(jnp.where(jnp.isfinite(row_max), row_max, 0.0))
  else:
    row_max = jnp.zeros((b, 1), a.dtype)

  pos = jax.nn.relu(margin_pos - pos_sim) / temperature  # pos_i [B]
  neg_terms = jax.nn.relu(a) - row_max
  # logsumexp over [-pos_i, neg terms of row i]; masked entries get -inf through the inner
  # where so their (unused) exp never produces inf * 0 = NaN in the backward pass.
  terms = jnp.concatenate([-pos[:, None], jnp.where(negatives, neg_terms, 0.0)], axis=1)
  mask = jnp.concatenate([jnp.ones((b, 1), bool), negatives], axis=1)
  lse = jax.nn.logsumexp(jnp.where(mask, terms, -jnp.inf), axis=1)
  # Without negatives pos + lse = pos - pos; XLA may round the two pos differently (~1e-8), so
  # the zero of SPEC 1.7 is made exact (its gradient too).
  per_sample = jnp.where(jnp.any(negatives, axis=1), pos + lse, 0.0)
  return jnp.mean(per_sample)
