"""Checks every config reader shares: ``ConfigError`` names the field, helpers test one value.

Only ``score_jax.experiment`` (and ``config_files``) reads a ConfigDict; what it hands out are
plain values and typed records, checked with these helpers before anything compiles.
"""

from __future__ import annotations

import contextlib
import math
from typing import Any, Iterator

import ml_collections

ConfigDict = ml_collections.ConfigDict


class ConfigError(ValueError):
  """A bad config value, found before anything compiles; the message starts with the field."""


@contextlib.contextmanager
def config_field(field: str, sep: str = ": ") -> Iterator[None]:
  """Re-raises a ValueError/TypeError/FileNotFoundError as ConfigError prefixed with ``field``.

  ``sep="."`` suits messages that start with an option name ("path: ..." becomes
  "config.data.path: ...").
  """
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError, FileNotFoundError, ImportError) as e:
    raise ConfigError(f"{field}{sep}{e}") from e


def check(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ConfigError(f"{field}: {message}")


def is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def is_number(value: Any) -> bool:
  """A finite int or float (not a bool)."""
  return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def int_field(section: dict, name: str, low: int, prefix: str) -> int:
  """``section[name]`` checked to be an integer >= ``low`` (ConfigError naming ``prefix.name``)."""
  value = section[name]
  check(is_int(value) and value >= low, f"{prefix}.{name}", f"must be an integer >= {low}, got {value!r}.")
  return int(value)


def positive_field(section: dict, name: str, prefix: str) -> float:
  """``section[name]`` checked to be a finite number > 0."""
  value = section[name]
  check(is_number(value) and value > 0, f"{prefix}.{name}", f"must be a number > 0, got {value!r}.")
  return float(value)


def merge_defaults(defaults: dict, given: dict, prefix: str) -> dict:
  """``given`` over ``defaults``; a field ``defaults`` lacks is a ConfigError naming it."""
  unknown = sorted(set(given) - set(defaults))
  check(not unknown, f"{prefix}.{unknown[0] if unknown else ''}", f"unknown field; {prefix} takes {sorted(defaults)}.")
  return {**defaults, **given}


def as_dict(section: Any) -> dict[str, Any]:
  """A ConfigDict (or mapping, or None) as a plain dict, recursively."""
  if section is None:
    return {}
  if isinstance(section, ConfigDict):
    return section.to_dict()
  return dict(section)

