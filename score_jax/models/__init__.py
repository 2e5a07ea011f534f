"""Score networks, selected by name from an explicit table.

Networks are plain Flax modules with typed fields; ``get_model(name, **fields)`` is the
one place a config's ``model.name`` / ``model.network`` become a module.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn

from score_jax.models.mlp import MLPScore
from score_jax.models.ncsnpp import NCSNpp
from score_jax.models.unet import UNet

MODELS: dict[str, type[nn.Module]] = {"mlp": MLPScore, "ncsnpp": NCSNpp, "unet": UNet}


def get_model(name: str, **fields: Any) -> nn.Module:
  """Builds the network ``name`` with the given module fields.

  Args:
    name: a key of ``MODELS``.
    **fields: the module's dataclass fields (e.g. ``hidden=128`` for "mlp").

  Returns:
    An unbound Flax module.

  Raises:
    ValueError: unknown name or unknown field.
  """
  if name not in MODELS:
    raise ValueError(f"Unknown model {name!r}; choose one of {sorted(MODELS)}.")
  cls = MODELS[name]
  allowed = {f.name for f in dataclasses.fields(cls) if f.init and f.name not in ("parent", "name")}
  unknown = set(fields) - allowed
  if unknown:
    raise ValueError(f"Model {name!r} has no field(s) {sorted(unknown)}; it takes {sorted(allowed)}.")
  return cls(**fields)


__all__ = ["MODELS", "MLPScore", "NCSNpp", "UNet", "get_model"]
