"""How a sampler declares itself: a ``Method`` (run function, default options, a check of
the options) and the checks the sampler modules share.  Checks run in Python before
anything is traced; a bad value raises ``ValueError`` naming the option."""

from __future__ import annotations

import dataclasses
import types
from typing import Any, Callable, Mapping, Optional

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


def no_resampling(method: str):
  """A ``check_constraint`` for samplers that replace known coordinates after every step but
  cannot repeat a step (RePaint's resampling needs a Markov chain over a fixed time grid)."""

  def check(sde: SDE, opts: Mapping[str, Any], constraint) -> None:
    del sde, opts
    require(constraint.resample == 1,
            f"constraint resample={constraint.resample}: sampling method {method!r} cannot repeat its steps; "
            "use resample=1, or method 'pc', 'ddim' or 'exponential' for RePaint-style resampling.")

  return check


def any_constraint(sde: SDE, opts: Mapping[str, Any], constraint) -> None:
  """A ``check_constraint`` for samplers that take every constraint, resampling included."""
  del sde, opts, constraint


@dataclasses.dataclass(frozen=True)
class Method:
  """A sampler: ``run(key, sde, score_fn, shape, **options) -> (x, nfe)``, its default options
  and ``check(sde, options)``, which runs before compilation.

  ``check_constraint(sde, options, constraint)`` is set for samplers that impose known
  coordinates (``sampling.constraints``); it raises ValueError for a combination the sampler
  cannot do.  Such a sampler's ``run`` takes a ``constraint`` keyword.  None: no constraints.
  """

  run: Callable
  defaults: Mapping[str, Any]
  check: Callable[[SDE, Mapping[str, Any]], None]
  check_constraint: Optional[Callable[[SDE, Mapping[str, Any], Any], None]] = None

  def __post_init__(self):
    object.__setattr__(self, "defaults", types.MappingProxyType(dict(self.defaults)))
