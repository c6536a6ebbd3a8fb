"""A small CIFAR classifier for the ACGAN paper's "Inception accuracy" of class-conditional samples.

The ACGAN paper measured how often a pretrained Inception network classifies a sample as the class
it was generated for. For 32x32 CIFAR-10 an ImageNet network is the wrong judge, so we train a
small VGG-style CNN on the CIFAR-10 training set instead (`scripts/train_classifier.py`) and report
its test accuracy next to every sample accuracy: a sample accuracy is only meaningful relative to
the classifier's accuracy on real test images.

Architecture (`CifarClassifier`, NHWC, inputs in [-1, 1]): three stages of two 3x3 conv-BN-ReLU
layers (width, 2 width, 4 width channels) each followed by 2x2 max pooling, global average pooling,
one dense layer. Training: SGD with Nesterov momentum, weight decay, a linear warm-up then linear
decay of the learning rate, random crops (4-pixel zero padding) and horizontal flips.

Weights file (msgpack, never in git): {'format', 'variables': {'params', 'batch_stats'}, 'meta'}
at `default_path()` = $REACGAN_JAX_CACHE or ~/.cache/reacgan_jax, `cifar10_classifier.msgpack`.
"""

from __future__ import annotations

import functools
import os
import pathlib
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging
from flax import serialization

from reacgan_jax.errors import MissingFileError
from reacgan_jax.evaluation import weights_file
from reacgan_jax.platform import paths

FILE_FORMAT = 'reacgan_jax/cifar-classifier/v1'
DEFAULT_FILENAME = 'cifar10_classifier.msgpack'


class CifarClassifier(nn.Module):
  """VGG-style CNN: [B, H, W, 3] in [-1, 1] -> logits [B, num_classes]."""
  width: int = 32
  num_classes: int = 10
  stages: int = 3

  @nn.compact
  def __call__(self, x, train: bool = False):
    layer = 0
    for s in range(self.stages):
      for _ in range(2):
        x = nn.Conv(self.width * 2 ** s, (3, 3), use_bias=False, name=f'conv_{layer}')(x)
        x = nn.BatchNorm(use_running_average=not train, momentum=0.9, name=f'bn_{layer}')(x)
        x = nn.relu(x)
        layer += 1
      x = nn.max_pool(x, (2, 2), strides=(2, 2))
    x = x.mean(axis=(1, 2))
    return nn.Dense(self.num_classes, name='head')(x)


def module_for(variables) -> CifarClassifier:
  """The module whose structure matches `variables` (width, classes, stages from the shapes)."""
  p = variables['params']
  convs = sum(k.startswith('conv_') for k in p)
  return CifarClassifier(width=int(p['conv_0']['kernel'].shape[-1]),
                         num_classes=int(p['head']['bias'].shape[0]), stages=convs // 2)


def _to_model_range(images):
  images = jnp.asarray(images)
  if images.dtype == jnp.uint8:
    return images.astype(jnp.float32) / 127.5 - 1.0
  return images.astype(jnp.float32)


@jax.jit
def _logits(variables, images):
  return module_for(variables).apply(variables, _to_model_range(images), train=False)


def predict(variables, images, *, batch_size: int = 500) -> np.ndarray:
  """Logits [N, num_classes] float32 numpy of images [N, H, W, 3] (uint8 or float in [-1, 1]).

  The last batch is zero-padded so the network compiles once per (batch_size, H, W).
  """
  images = np.asarray(images)
  if images.ndim != 4 or images.shape[-1] != 3:
    raise ValueError(f'predict: expected images [N, H, W, 3], got {images.shape}')
  out = []
  bs = min(batch_size, images.shape[0])
  for i in range(0, images.shape[0], bs):
    x = images[i:i + bs]
    n = x.shape[0]
    if n < bs:
      x = np.concatenate([x, np.zeros((bs - n, *x.shape[1:]), x.dtype)])
    out.append(np.asarray(_logits(variables, x))[:n])
  return np.concatenate(out)


def accuracy(variables, images, labels, *, batch_size: int = 500) -> float:
  """Top-1 accuracy of the classifier on labelled images."""
  pred = predict(variables, images, batch_size=batch_size).argmax(axis=1)
  return float((pred == np.asarray(labels)).mean())


# ---------------------------------------------------------------------------------------------
# Training
# ---------------------------------------------------------------------------------------------


def _augment(x, rng, pad: int):
  """Random crop after `pad`-pixel zero padding, and random horizontal flip, per image."""
  b, h, w, _ = x.shape
  k_crop, k_flip = jax.random.split(rng)
  xp = jnp.pad(x, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
  offs = jax.random.randint(k_crop, (b, 2), 0, 2 * pad + 1)
  crop = jax.vmap(lambda im, o: jax.lax.dynamic_slice(im, (o[0], o[1], 0), (h, w, x.shape[3])))
  x = crop(xp, offs)
  flip = jax.random.bernoulli(k_flip, 0.5, (b, 1, 1, 1))
  return jnp.where(flip, x[:, :, ::-1], x)


def _make_step(model, tx, pad):
  @functools.partial(jax.jit, donate_argnums=(0, 1, 2))
  def step(params, batch_stats, opt_state, images, labels, rng):
    x = _to_model_range(images)
    if pad > 0:
      x = _augment(x, rng, pad)

    def loss_fn(p):
      logits, upd = model.apply({'params': p, 'batch_stats': batch_stats}, x, train=True,
                                mutable=['batch_stats'])
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
      return loss, (upd['batch_stats'], (logits.argmax(-1) == labels).mean())

    (loss, (new_stats, acc)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), new_stats, opt_state, loss, acc

  return step


def train(images, labels, *, num_classes: int = 10, width: int = 32, stages: int = 3,
          epochs: int = 10, batch_size: int = 128, lr: float = 0.1, weight_decay: float = 5e-4,
          warmup_epochs: float = 1.0, crop_pad: int = 4, seed: int = 0,
          log_every: int = 100) -> dict:
  """Trains a `CifarClassifier` from scratch.

  Args:
    images: [N, H, W, 3] uint8 (or float in [-1, 1]); labels: [N] int in [0, num_classes).
    crop_pad: padding of the random-crop augmentation (0 = no crop/flip augmentation).
    lr: peak SGD learning rate (linear warm-up over warmup_epochs, then linear decay to 0).

  Returns:
    variables {'params', 'batch_stats'} (numpy-convertible jax arrays).
  """
  images = np.asarray(images)
  labels = np.asarray(labels).astype(np.int32)
  n = images.shape[0]
  steps_per_epoch = max(n // batch_size, 1)
  total = steps_per_epoch * epochs
  warm = max(int(warmup_epochs * steps_per_epoch), 1)
  schedule = optax.join_schedules(
      [optax.linear_schedule(0.0, lr, warm), optax.linear_schedule(lr, 0.0, max(total - warm, 1))],
      [warm])
  tx = optax.chain(optax.add_decayed_weights(weight_decay),
                   optax.sgd(schedule, momentum=0.9, nesterov=True))
  model = CifarClassifier(width=width, num_classes=num_classes, stages=stages)
  rng = jax.random.PRNGKey(seed)
  init_rng, rng = jax.random.split(rng)
  variables = model.init(init_rng, jnp.zeros((1, *images.shape[1:]), jnp.float32))
  params, batch_stats = variables['params'], variables['batch_stats']
  opt_state = tx.init(params)
  step = _make_step(model, tx, crop_pad)
  order_rng = np.random.default_rng(seed)
  t0, k = time.time(), 0
  for epoch in range(epochs):
    perm = order_rng.permutation(n)
    for i in range(steps_per_epoch):
      idx = perm[i * batch_size:(i + 1) * batch_size]
      params, batch_stats, opt_state, loss, acc = step(
          params, batch_stats, opt_state, images[idx], labels[idx], jax.random.fold_in(rng, k))
      k += 1
      if log_every and k % log_every == 0:
        logging.info('classifier epoch %d step %d/%d: loss %.4f, batch acc %.3f (%.0f s)', epoch,
                     k, total, float(loss), float(acc), time.time() - t0)
  return {'params': params, 'batch_stats': batch_stats}


# ---------------------------------------------------------------------------------------------
# Weights file
# ---------------------------------------------------------------------------------------------


def default_path() -> pathlib.Path:
  return paths.cache_root() / DEFAULT_FILENAME


def save_classifier(path, variables, meta: dict | None = None) -> pathlib.Path:
  """Writes variables and a meta dict (e.g. test accuracy, data, epochs) to msgpack, atomically."""
  path = pathlib.Path(path or default_path()).expanduser()
  path.parent.mkdir(parents=True, exist_ok=True)
  blob = serialization.msgpack_serialize({
      'format': FILE_FORMAT,
      'variables': jax.tree.map(np.asarray, variables),
      'meta': {k: str(v) for k, v in (meta or {}).items()},
  })
  tmp = path.with_name(path.name + '.tmp')
  tmp.write_bytes(blob)
  os.replace(tmp, path)
  return path


def load_classifier(path=None) -> tuple[dict, dict]:
  """(variables, meta) from a file written by `save_classifier` (default: the cache path).

  Raises:
    MissingFileError saying how to train one; InputError for a file of another format.
  """
  path = pathlib.Path(path or default_path()).expanduser()
  if not path.exists():
    raise MissingFileError(f'CIFAR classifier weights not found at {path}. Train them once '
                            '(a few CPU minutes): python scripts/train_classifier.py --output '
                            f"{path}; or drop 'accuracy' from config.eval.metrics")
  data = weights_file.read(path, FILE_FORMAT, 'classifier weights',
                           're-create it with scripts/train_classifier.py')
  variables = jax.tree.map(jnp.asarray, data['variables'])
  return variables, dict(data.get('meta', {}))
