"""Shared evaluation fixtures: a tiny random-weight FID Inception on disk."""

import pytest

from reacgan_jax.evaluation import inception_weights


@pytest.fixture(scope='session')
def tiny_inception(tmp_path_factory):
  """`make(num_logits=None) -> path` of a random width-1/16 Inception weights file
  (inception_weights.random_params, seed 0; num_logits adds an fc head for the Inception
  Score), written once per num_logits."""
  made = {}

  def make(num_logits=None):
    if num_logits not in made:
      params = inception_weights.random_params(num_logits, width=1 / 16, seed=0)
      path = tmp_path_factory.mktemp('tiny_inception') / 'tiny.msgpack'
      made[num_logits] = str(inception_weights.save_params(path, params, 'test: random'))
    return made[num_logits]

  return make
