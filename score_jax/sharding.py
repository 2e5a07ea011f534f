"""Data parallelism with ``jax.jit`` over a Mesh and global arrays (no pmap).

One 1-D mesh axis, ``"data"``, spans every device of every process.  A global batch is split
over it; parameters and optimizer state are replicated, or, with ``config.training.fsdp``,
sharded over the same axis (``fsdp_shardings``).  The same code runs on 1 CPU, 8 TPU cores or a
pod (after ``jax.distributed.initialize()`` on multi-host launches)::

    mesh = sharding.make_mesh()
    sharding.check_batch_divisible(config.training.batch_size, mesh)
    batch = sharding.global_batch(local_numpy_batch, mesh)          # [B, ...] over "data"
    step = jax.jit(train_step, in_shardings=(sharding.replicated(mesh), sharding.data_sharding(mesh)),
                   out_shardings=sharding.replicated(mesh), donate_argnums=0)

Sampling needs no special wrapper: the samplers draw sample i's noise from
``fold_in(key, i)``, so a batch split over devices gives the same samples as on one device::

    draw = jax.jit(lambda key: sampling.sample(key, sde, score_fn, (n, d), method="pc")[0],
                   out_shardings=sharding.data_sharding(mesh))
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

DATA_AXIS = "data"


def make_mesh(axis_name: str = DATA_AXIS, devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A 1-D mesh over all devices (of all processes) for data parallelism.

  The axis is ``AxisType.Auto`` (``jax.make_mesh`` defaults to Explicit): shardings are given
  at the ``jit`` boundary and the compiler propagates them inside, so model and sampler code
  needs no sharding annotations.

  Args:
    axis_name: the name of the mesh axis the batch is split over.
    devices: the devices to use; default ``jax.devices()``.

  Returns:
    A Mesh of shape {axis_name: number of devices}.
  """
  devices = list(jax.devices() if devices is None else devices)
  return jax.make_mesh((len(devices),), (axis_name,), axis_types=(AxisType.Auto,), devices=devices)


def data_sharding(mesh: Mesh) -> NamedSharding:
  """The batch (leading) axis split over the mesh's axis, all other axes replicated."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names[0]))


def replicated(mesh: Mesh) -> NamedSharding:
  """A full copy on every device (parameters, optimizer state, scalars)."""
  return NamedSharding(mesh, PartitionSpec())


# Arrays with fewer elements than this stay replicated under FSDP (biases, norms, scalars): 2**14
# float32 values are 64 KiB, where the all-gather of a shard costs more than the memory it saves.
FSDP_MIN_SIZE = 2 ** 14


def fsdp_spec(shape: Sequence[int], num_devices: int, *, min_size: int = FSDP_MIN_SIZE,
              axis_name: str = DATA_AXIS) -> PartitionSpec:
  """Where one array is split under fully sharded data parallelism (FSDP / ZeRO-3).

  The rule of big_vision's and MaxText's FSDP: the array is split over ``axis_name`` along its
  largest axis whose length the device count divides (the first such axis on a tie); an array
  with fewer than ``min_size`` elements, or without such an axis, is replicated.

  Args:
    shape: the array's shape.
    num_devices: the length of the mesh axis.
    min_size: arrays with fewer elements stay replicated.
    axis_name: the mesh axis to split over.

  Returns:
    A PartitionSpec naming ``axis_name`` at the split axis, or ``PartitionSpec()`` (replicated).
  """
  if num_devices <= 1 or math.prod(shape) < min_size:
    return PartitionSpec()
  for axis in sorted(range(len(shape)), key=lambda a: -shape[a]):  # stable: the first axis wins a tie
    if shape[axis] % num_devices == 0:
      return PartitionSpec(*([None] * axis + [axis_name]))
  return PartitionSpec()


def fsdp_shardings(tree: Any, mesh: Mesh, *, min_size: int = FSDP_MIN_SIZE) -> Any:
  """NamedShardings of every array of ``tree`` (arrays or ShapeDtypeStructs) by ``fsdp_spec``
  over the mesh's axis: the state shardings of an FSDP train step (``in_shardings`` /
  ``out_shardings`` of its ``jax.jit``) and the target of its checkpoint restore."""
  axis = mesh.axis_names[0]
  return jax.tree.map(lambda x: NamedSharding(mesh, fsdp_spec(x.shape, mesh.shape[axis], min_size=min_size,
                                                              axis_name=axis)), tree)


def check_batch_divisible(batch_size: int, mesh: Mesh, field: str = "config.training.batch_size") -> None:
  """Raises ValueError, naming ``field``, unless ``batch_size`` splits evenly over the mesh.

  Call it while validating the config, before anything compiles.
  """
  n = mesh.size
  if batch_size <= 0 or batch_size % n:
    raise ValueError(
        f"{field}={batch_size}: batch size not divisible by the device count ({n} devices); "
        f"use a positive multiple of {n}.")


def global_batch(local_batch: np.ndarray, mesh: Mesh) -> jax.Array:
  """Assembles each process's numpy batch into one global array split over "data".

  Args:
    local_batch: this process's rows [B / process_count, ...]; on one host, the whole batch.
    mesh: the mesh from ``make_mesh``.

  Returns:
    A jax.Array [B, ...] with ``data_sharding(mesh)``; process p's rows come p-th.
  """
  global_rows = local_batch.shape[0] * jax.process_count()
  check_batch_divisible(global_rows, mesh, field="global batch size")
  return jax.make_array_from_process_local_data(data_sharding(mesh), np.asarray(local_batch))


__all__ = ["DATA_AXIS", "FSDP_MIN_SIZE", "make_mesh", "data_sharding", "replicated", "fsdp_spec", "fsdp_shardings",
           "check_batch_divisible", "global_batch"]
