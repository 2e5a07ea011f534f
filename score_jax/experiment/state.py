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
  return _init(setup.model, setup.data_shape, key)


def _init(model: Any, data_shape: tuple[int, ...], key: jax.Array) -> Any:
  x = jnp.zeros((1,) + data_shape, jnp.float32)  # [1, ...]
  cond = jnp.ones((1,), jnp.float32)  # [1]
  return model.init(key, x, cond)["params"]


def param_shapes(setup: Setup) -> Any:
  """Shapes and dtypes of ``init_params`` (nothing allocated).

  They depend only on the network and the data shape, so each pair is traced once per process:
  a job builds its setup, checks its config, restores a state and loads parameters, and each of
  these used to trace the whole network again to learn the same shapes.
  """
  # Initializers' default dtype follows jax_enable_x64: the widest float is part of the key.
  args = (setup.model, tuple(setup.data_shape), jax.dtypes.canonicalize_dtype(jnp.float64))
  try:
    return _cached_param_shapes(*args)
  except TypeError:  # a network with an unhashable field: trace it each time
    return _traced_param_shapes(*args)


def _traced_param_shapes(model: Any, data_shape: tuple[int, ...], widest_float: Any) -> Any:
  del widest_float  # a cache key only
  return jax.eval_shape(functools.partial(_init, model, data_shape), jax.random.key(0))


_cached_param_shapes = functools.lru_cache(maxsize=32)(_traced_param_shapes)


def init_state(setup: Setup, key: jax.Array) -> ts_lib.TrainState:
  """A fresh TrainState: network parameters from ``key``, their averages (``setup.ema``) and the
  optimizer's initial state; for a consistency model (``--mode=distill``) a ``DistillState``,
  which also holds the target network."""
  return state_from_params(setup, init_params(setup, key))


def state_from_params(setup: Setup, params: Any) -> ts_lib.TrainState:
  """The TrainState (``DistillState`` for a consistency model) that starts from ``params``."""
  if setup.parametrization == "consistency":
    return ts_lib.create_distill_state(params, setup.tx, setup.ema)
  return ts_lib.create_train_state(params, setup.tx, setup.ema)


def abstract_state(setup: Setup, sharding: Any = None) -> ts_lib.TrainState:
  """Shapes and dtypes of ``init_state`` (nothing allocated), the restore target.

  Args:
    setup: the components.
    sharding: when given, every leaf carries it (e.g. ``sharding.replicated(mesh)``), or a
      tree of shardings of the state's structure (e.g. ``sharding.fsdp_shardings``) gives each
      leaf its own.
  """
  shapes = jax.eval_shape(functools.partial(state_from_params, setup), param_shapes(setup))
  if sharding is None:
    return shapes
  if isinstance(sharding, jax.sharding.Sharding):
    sharding = jax.tree.map(lambda _: sharding, shapes)
  return jax.tree.map(lambda s, sh: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sh), shapes, sharding)


def num_params(params: Any) -> int:
  """Number of scalars in a parameter tree (arrays or ShapeDtypeStructs)."""
  return int(sum(np.prod(p.shape) for p in jax.tree.leaves(params)))

