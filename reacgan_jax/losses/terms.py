"""Loss terms: `Term` (a named, weighted, possibly lazy part of a network's loss) and the
`Context` a term's fn reads. Leaves: the registry (registry.py) builds terms from the config,
the regularisers (regularizers.py) and the GAN losses (gan.py) supply their fns.

A `Term` is `weight * fn(ctx)`. A term with interval k > 1 is StyleGAN2's lazy regularisation:
it runs only on updates whose index is a multiple of k, scaled by k (see registry.py). A term
may keep state (a path-length running mean): give it `init_state`, and its fn returns
`(value, new_state)`; the state lives in `TrainState.extra['term/<name>']`.
"""

import dataclasses
from collections.abc import Callable
from typing import Any, NamedTuple


@dataclasses.dataclass(frozen=True)
class Term:
  """A named loss term: `weight * fn(ctx)`, every `interval` updates of its network."""
  name: str
  fn: Callable[..., Any]
  weight: float = 1.0
  interval: int = 1
  place: str = 'inside'  # interval > 1 only: 'inside' (same update) | 'separate' (own update)
  init_state: Callable[[], Any] | None = None  # stateful terms: fn returns (value, new_state)

  def __post_init__(self):
    if self.interval < 1:
      raise ValueError(f'loss term {self.name!r}: interval={self.interval}, expected >= 1')
    if self.place not in ('inside', 'separate'):
      raise ValueError(f"loss term {self.name!r}: place={self.place!r}, expected 'inside' or "
                       "'separate'")

  @property
  def lazy(self) -> bool:
    return self.interval > 1


class Context(NamedTuple):
  """What a term sees. D terms: reals and fakes of one D update; G terms: the fakes.

  out_real / out_fake: D's outputs (heads.DOutput) of the shared forward, None for lazy terms.
  apply: `apply(x, y) -> DOutput`, D on the weights being differentiated, applied to the
    augmented x (D terms; for lazy G terms `apply` is D frozen, on x as given).
  real, labels: the real batch (before augmentation: `out_real` is D on its augmented copy,
    `apply` augments) and its labels (None in G terms);
  fake, fake_labels: the fakes (likewise) and their labels; state: the term's state or None.
  ws, synthesize, key (lazy G terms of a StyleGAN2 G): the fresh batch's ws, `synthesize(ws)
    -> images` on the params being differentiated, and a key of the term's own.
  """
  out_real: Any
  out_fake: Any
  apply: Callable | None
  real: Any
  labels: Any
  fake: Any
  fake_labels: Any
  state: Any = None
  ws: Any = None
  synthesize: Callable | None = None
  key: Any = None
