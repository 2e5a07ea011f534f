"""Parameters and train state of a ``Setup``, fresh or abstract (the restore target).

Shapes come from ``jax.eval_shape``: nothing is allocated until a job asks for arrays.
"""

from __future__ import annotations

import functools
from typing import TYPE_CHECKING, Any

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import train_state as ts_lib
from score_jax.experiment.data import ImageData

if TYPE_CHECKING:  # components imports this module
  from score_jax.experiment.components import Setup


def abstract_batch(setup: Setup) -> dict[str, jax.ShapeDtypeStruct]:
  """Shapes of one global training batch: {"image": [B, ...]} plus {"label": [B]} for images."""
  batch = {"image": jax.ShapeDtypeStruct((setup.batch_size,) + setup.data_shape, jnp.float32)}
  if isinstance(setup.data, ImageData):
    batch["label"] = jax.ShapeDtypeStruct((setup.batch_size,), jnp.int32)
  return batch


# --- state --------------------------------------------------------------------------------
def init_params(setup: Setup, key: jax.Array) -> Any:
  """Fresh network parameters from ``key``."""
  x = jnp.zeros((1,) + setup.data_shape, jnp.float32)  # [1, ...]
  cond = jnp.ones((1,), jnp.float32)  # [1]
  return setup.model.init(key, x, cond)["params"]


def init_state(setup: Setup, key: jax.Array) -> ts_lib.TrainState:
  """A fresh TrainState: network parameters from ``key``, their averages (``setup.ema``) and the
  optimizer's initial state; for a consistency model (``--mode=distill``) a ``DistillState``,
  which also holds the target network."""
  if setup.parametrization == "consistency":
    return ts_lib.create_distill_state(init_params(setup, key), setup.tx, setup.ema)
  return ts_lib.create_train_state(init_params(setup, key), setup.tx, setup.ema)


def abstract_state(setup: Setup, key: jax.Array, sharding: Any = None) -> ts_lib.TrainState:
  """Shapes and dtypes of ``init_state`` (nothing allocated), the restore target.

  Args:
    setup: the components.
    key: the init key.
    sharding: when given, every leaf carries it (e.g. ``sharding.replicated(mesh)``), or a
      tree of shardings of the state's structure (e.g. ``sharding.fsdp_shardings``) gives each
      leaf its own.
  """
  shapes = jax.eval_shape(functools.partial(init_state, setup), key)
  if sharding is None:
    return shapes
  if isinstance(sharding, jax.sharding.Sharding):
    sharding = jax.tree.map(lambda _: sharding, shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, sharding)


def num_params(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))

