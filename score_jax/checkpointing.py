"""Orbax checkpoints in ``<workdir>/checkpoints``: save every N steps, keep the last K,
and resume from the latest one automatically; EMA-only exports in ``<workdir>/ema/<step>``.

A thin wrapper over ``orbax.checkpoint.CheckpointManager`` so train and sample code
says what it means (``latest_step``, ``restore``, ``save``) and nothing else.  An export
holds only the EMA parameters (a third of a full Adam checkpoint): what sampling and
evaluation need, and what one copies to another machine.
"""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import orbax.checkpoint as ocp


def checkpoint_dir(workdir: str) -> str:
  """Absolute path of the checkpoint folder of ``workdir``."""
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def export_dir(workdir: str) -> str:
  """Absolute path of the EMA-export folder of ``workdir``."""
  return os.path.join(os.path.abspath(workdir), "ema")


def export_params(workdir: str, step: int, params: Any) -> Optional[str]:
  """Writes ``params`` (the EMA parameters) to ``<workdir>/ema/<step>``; never overwrites.

  Returns:
    The export's path, or None when that step was already exported (left as it is).
  """
  path = os.path.join(export_dir(workdir), str(step))
  if os.path.exists(path):
    return None
  os.makedirs(export_dir(workdir), exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, params)
  return path


def exported_steps(workdir: str) -> list[int]:
  """Steps with a finished EMA export, ascending (Orbax's temporary folders are skipped)."""
  root = export_dir(workdir)
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root) if n.isdigit())


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps with a full checkpoint in ``workdir``, ascending (empty when there is no folder)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with Checkpointer(workdir, create=False, async_save=False) as ckpt:
    return sorted(ckpt.all_steps())


def saved_steps(workdir: str) -> list[int]:
  """Steps with a full checkpoint or an EMA export in ``workdir``, ascending."""
  return sorted(set(checkpoint_steps(workdir)) | set(exported_steps(workdir)))


def load_exported_params(workdir: str, step: int, target: Any) -> Any:
  """Restores the EMA export of ``step``; ``target`` gives the tree (e.g. from eval_shape)."""
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(os.path.join(export_dir(workdir), str(step)), target)


class Checkpointer:
  """Saves and restores a pytree train state by step.

  Args:
    workdir: the run's folder; checkpoints go to ``<workdir>/checkpoints/<step>``.
    max_to_keep: number of most recent checkpoints kept on disk.
    create: create the folder if missing (False for read-only use such as sampling).
    async_save: write in a background thread (call ``wait`` or ``close`` before reading).
  """

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = None, create: bool = True,
               async_save: bool = True):
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when there is no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` as ``step`` (a no-op if that step is already saved). Returns whether it saved."""
    if step in self._manager.all_steps():
      return False
    return self._manager.save(step, args=ocp.args.StandardSave(state), force=force)

  def restore(self, target: Any = None, *, step: Optional[int] = None) -> Any:
    """Restores ``step`` (default: the latest).

    Args:
      target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``)
        with the saved structure and the shardings wanted; None restores the raw tree (dicts)
        onto this process's first device, whatever topology saved it.
      step: which step; None for the latest.

    Returns:
      The restored pytree.

    Raises:
      FileNotFoundError: no checkpoint in the folder.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    if target is None:
      device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
      saved = self._manager.item_metadata(step)
      saved = saved.tree if hasattr(saved, "tree") else saved
      target = jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), saved)
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk."""
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
