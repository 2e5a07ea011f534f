"""How a sampler declares itself: a ``Method`` (run function, default options, a check of
the options) and the checks the sampler modules share.  Checks run in Python before
anything is traced; a bad value raises ``ValueError`` naming the option."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping

from score_jax.sde import SDE


def require(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(message)


def positive(opts: Mapping[str, Any], *names: str) -> None:
  """Each named option is a number > 0."""
  for name in names:
    value = opts[name]
    require(isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
            f"sampling option {name}={value!r} must be > 0.")


def count(opts: Mapping[str, Any], name: str, minimum: int = 1) -> None:
  """The option is an integer >= minimum."""
  value = opts[name]
  require(isinstance(value, int) and not isinstance(value, bool) and value >= minimum,
          f"sampling option {name}={value!r} must be an integer >= {minimum}.")


def choice(opts: Mapping[str, Any], name: str, choices) -> None:
  """The option is one of ``choices``."""
  require(opts[name] in choices, f"sampling option {name}={opts[name]!r} is unknown; choose one of {sorted(choices)}.")


def sde_kind(sde: SDE, method: str, kinds: tuple[str, ...]) -> None:
  """The SDE is of one of ``kinds`` (its ``name``: "ve", "vp", "subvp")."""
  require(sde.name in kinds, f"sampling method {method!r} needs an SDE of kind {list(kinds)}, got {sde.name!r}.")


@dataclasses.dataclass(frozen=True)
class Method:
  """A sampler: ``run(key, sde, score_fn, shape, **options) -> (x, nfe)``, its default options
  and ``check(sde, options)``, which runs before compilation."""

  run: Callable
  defaults: Mapping[str, Any]
  check: Callable[[SDE, Mapping[str, Any]], None]

  def __post_init__(self):
    object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))
