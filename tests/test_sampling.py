"""Sample grids and latents: layout, quantisation, fixed inputs (no model needed)."""

import jax
import numpy as np
import pytest

from configs import tiny
from reacgan_jax import errors, sampling
from reacgan_jax.models import adapter
from reacgan_jax.platform import parallel
from reacgan_jax.train import state


def test_make_grid_places_images_row_major_with_separators():
  imgs = np.stack([np.full((2, 3, 3), v, np.float32) for v in np.linspace(-1, 1, 6)])
  grid = sampling.make_grid(imgs, rows=2, cols=3, pad=1)
  assert grid.shape == (2 * 3 + 1, 3 * 4 + 1, 3) and grid.dtype == np.uint8
  expect = np.round((np.linspace(-1, 1, 6) + 1) * 127.5).astype(np.uint8)
  for i in range(6):
    r, c = divmod(i, 3)
    tile = grid[1 + r * 3:1 + r * 3 + 2, 1 + c * 4:1 + c * 4 + 3]
    assert (tile == expect[i]).all()
  assert (grid[0] == 255).all() and (grid[:, 0] == 255).all()
  with pytest.raises(ValueError, match='2x2'):
    sampling.make_grid(imgs, 2, 2)


def test_to_uint8_clips_and_rounds():
  np.testing.assert_array_equal(sampling.to_uint8(np.array([-2.0, -1.0, 0.0, 1.0, 3.0])),
                                [0, 0, 128, 255, 255])


def test_grid_latents_rows_are_classes_columns_share_z():
  cfg = tiny.get_config()
  cfg.data.num_classes, cfg.train.grid_classes, cfg.train.grid_per_class = 10, 4, 3
  z, y = sampling.grid_latents(cfg, jax.random.PRNGKey(0))
  assert z.shape == (12, cfg.model.z_dim)
  np.testing.assert_array_equal(np.asarray(y), np.repeat([0, 3, 6, 9], 3))
  np.testing.assert_array_equal(np.asarray(z[0]), np.asarray(z[3]))  # column 0, rows 0 and 1
  assert not np.allclose(np.asarray(z[0]), np.asarray(z[1]))
  z2, _ = sampling.grid_latents(cfg, jax.random.PRNGKey(0))
  np.testing.assert_array_equal(np.asarray(z), np.asarray(z2))


def test_interpolation_is_linear_between_endpoints():
  cfg = tiny.get_config()
  z, y = sampling.interpolation_latents(cfg, jax.random.PRNGKey(1), num_steps=5)
  z = np.asarray(z).reshape(-1, 5, cfg.model.z_dim)
  mid = 0.5 * (z[:, 0] + z[:, 4])
  np.testing.assert_allclose(z[:, 2], mid, rtol=1e-5, atol=1e-6)
  assert len(set(np.asarray(y).reshape(-1, 5)[:, 0])) == z.shape[0]


def test_sampler_refuses_a_class_id_out_of_range():
  """Issue 26: class 10 of a 10-class G gave NaN images, -1 silently another class."""
  config = tiny.get_config()
  config.model.g_attn_block = config.model.d_attn_block = 0
  mesh = parallel.create_mesh(jax.devices()[:1])
  model = adapter.build(config, mesh)
  fn = sampling.Sampler(config, model, mesh).sample_fn(state.init_state(config, model, mesh))
  z = jax.random.normal(jax.random.PRNGKey(0), (2, config.model.z_dim))
  assert np.isfinite(np.asarray(fn(z, np.array([0, 9], np.int32)))).all()
  for bad in ([0, 10], [-1, 3], [1000, 2]):
    with pytest.raises(errors.InputError, match=r'outside \[0, 10\)'):
      fn(z, np.array(bad, np.int32))
