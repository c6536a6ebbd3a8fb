"""The CIFAR classifier behind the 'accuracy' metric: trains on a separable task, round-trips."""

import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from reacgan_jax import errors
from reacgan_jax.evaluation import classifier, metrics


def _separable(n, seed):
  """3 classes of 8x8 images: class c is brighter in colour channel c, plus strong noise."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 3, n)
  x = rng.normal(0.0, 0.5, (n, 8, 8, 3))
  x[np.arange(n), :, :, labels] += 1.2
  return np.clip(127.5 * (x + 1.0), 0, 255).astype(np.uint8), labels


@pytest.fixture(scope='module')
def tiny():
  images, labels = _separable(512, 0)
  variables = classifier.train(images, labels, num_classes=3, width=4, stages=1, epochs=6,
                               batch_size=64, lr=0.1, crop_pad=1, log_every=0)
  return variables


def test_tiny_classifier_learns_separable_task(tiny):
  images, labels = _separable(300, 1)
  assert classifier.accuracy(tiny, images, labels) > 0.9
  # The metric: accuracy of 'samples' under their conditioning labels. Wrong labels -> low.
  assert metrics.classifier_accuracy(tiny, images, labels, batch_size=128) > 0.9
  assert metrics.classifier_accuracy(tiny, images, (labels + 1) % 3) < 0.1


def test_untrained_is_near_chance():
  images, labels = _separable(300, 2)
  model = classifier.CifarClassifier(width=4, num_classes=3, stages=1)
  v = model.init(jax.random.PRNGKey(0), np.zeros((1, 8, 8, 3), np.float32))
  assert classifier.accuracy(v, images, labels) < 0.6


def test_predict_pads_last_batch_and_accepts_float(tiny):
  images, _ = _separable(37, 3)
  full = classifier.predict(tiny, images, batch_size=37)
  parts = classifier.predict(tiny, images, batch_size=16)  # 16 + 16 + 5 (padded)
  np.testing.assert_allclose(parts, full, rtol=1e-5, atol=1e-5)
  as_float = classifier.predict(tiny, images.astype(np.float32) / 127.5 - 1.0, batch_size=37)
  np.testing.assert_allclose(as_float, full, rtol=1e-5, atol=1e-5)


def test_save_load_round_trip(tiny, tmp_path):
  path = classifier.save_classifier(tmp_path / 'c.msgpack', tiny, {'test_accuracy': 0.5})
  loaded, meta = classifier.load_classifier(path)
  assert meta['test_accuracy'] == '0.5'
  images, _ = _separable(20, 4)
  np.testing.assert_array_equal(classifier.predict(loaded, images),
                                classifier.predict(tiny, images))
  assert classifier.module_for(loaded) == classifier.CifarClassifier(width=4, num_classes=3,
                                                                     stages=1)
  # User errors (one line from a command, issue 26), still FileNotFoundError / ValueError.
  with pytest.raises(errors.MissingFileError, match='train_classifier.py'):
    classifier.load_classifier(tmp_path / 'missing.msgpack')
  (tmp_path / 'bad.msgpack').write_bytes(b'not msgpack')
  with pytest.raises(errors.InputError, match='not a reacgan_jax classifier weights file.*'
                     'train_classifier.py'):
    classifier.load_classifier(tmp_path / 'bad.msgpack')


@pytest.mark.exhaustive  # a real epoch of training: beyond CI's budget (issue 24)
def test_train_script_on_cifar10(cifar10_npz, tmp_path):
  """The real script, shortened (1 epoch on 10k images): beats chance clearly."""
  out = tmp_path / 'clf.msgpack'
  res = subprocess.run(
      [sys.executable, 'scripts/train_classifier.py', f'--npz={cifar10_npz}', f'--output={out}',
       '--epochs=1', '--num_train=10000', '--width=16'],
      capture_output=True, text=True, check=True, cwd=pathlib.Path(__file__).resolve().parents[2])
  acc = float(res.stdout.strip().splitlines()[-1].split()[-1])
  # Chance is 0.10. One epoch on 10k images measured 0.326 here (2026-11-23; an earlier 0.35
  # bound was one lucky measurement, not a property): 0.25 still means "clearly learned".
  # The script's real figure (90.6% test accuracy, 40 epochs) is in scripts/train_classifier.py.
  assert acc > 0.25, res.stdout
  variables, meta = classifier.load_classifier(out)
  assert float(meta['test_accuracy']) == pytest.approx(acc)
