"""A small TrainState-like pytree for the fault tests (flax dataclass, optax state, PRNG key)."""

import flax
import jax
import jax.numpy as jnp
import optax

from reacgan_jax.platform import parallel


@flax.struct.dataclass
class State:
  step: jax.Array
  params: dict
  opt: object
  rng: jax.Array


def make_state(step, seed=0, poison=False):
  """The state of `step` (deterministic in seed); poison=True puts a NaN in params['b']."""
  k = jax.random.PRNGKey(seed)
  params = {'conv': {'kernel': jax.random.normal(k, (3, 3, 2, 4))}, 'b': jnp.arange(4.0) + seed}
  if poison:
    params['b'] = params['b'].at[1].set(jnp.nan)
  s = State(step=jnp.array(step, jnp.int32), params=params, opt=optax.adam(1e-3).init(params),
            rng=jax.random.PRNGKey(seed + 1))
  return jax.device_put(s, parallel.replicated_sharding(parallel.create_mesh()))
