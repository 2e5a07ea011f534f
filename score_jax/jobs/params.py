"""The parameters a job samples from: the EMA parameters of a checkpoint, an EMA export or a
converted published checkpoint (``config.model.pretrained``), damaged ones skipped.
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from score_jax import checkpointing
from score_jax import experiment
from score_jax import pretrained
from score_jax import sharding as sharding_lib


def available_steps(setup: experiment.Setup, workdir: str) -> list[int]:
  """Steps sample / eval can read: the converted checkpoint's (``config.model.pretrained``), else the workdir's."""
  if setup.pretrained:
    return [int(pretrained.read_meta(setup.pretrained).get("step", 0))]
  return checkpointing.saved_steps(workdir)


def latest_ema_params(setup: experiment.Setup, workdir: str, step: Optional[int] = None) -> Optional[tuple[int, Any]]:
  """(step, EMA parameters) of the newest readable full checkpoint or EMA export in ``workdir``,
  or of the converted published checkpoint ``setup.pretrained`` when there is one.

  Damaged ones are reported and moved aside, and the next older one is used
  (``checkpointing.restore_first_readable``); of one step, the export is tried first (a
  third of the checkpoint's size), then the checkpoint.

  Args:
    setup: the components (their network must match the checkpoint's).
    workdir: the run's folder.
    step: a particular step instead of the newest (no fallback to other steps).

  Returns:
    (step, params) replicated over the mesh, or None when there is nothing to load.

  Raises:
    checkpointing.UnreadableCheckpointError: none of them could be read.
    checkpointing.CheckpointMismatchError: the config's model differs from the saved one.
  """
  repl = sharding_lib.replicated(setup.mesh)
  init_key = experiment.keys(setup.seed)["init"]
  if setup.pretrained:  # a converted published checkpoint replaces the workdir's own
    if step is not None and step not in available_steps(setup, workdir):
      return None
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                          jax.eval_shape(lambda k: experiment.init_params(setup, k), init_key))
    return available_steps(setup, workdir)[0], pretrained.load_export(setup.pretrained, target)
  candidates = checkpointing.saved_steps(workdir)
  if not candidates or (step is not None and step not in candidates):
    return None
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                        jax.eval_shape(lambda k: experiment.init_params(setup, k), init_key))
  state = experiment.abstract_state(setup, init_key, repl)
  sources = []
  for s in sorted(candidates, reverse=True) if step is None else [step]:
    sources += [checkpointing.export_source(workdir, s, params),
                checkpointing.checkpoint_source(workdir, s, state, pick=lambda restored: restored.ema_params)]
  return checkpointing.restore_first_readable(sources, workdir=workdir, writer=False)



def load_ema_params(setup: experiment.Setup, workdir: str, step: Optional[int] = None) -> tuple[int, Any]:
  """(step, EMA parameters) of ``step`` (``config.sampling.checkpoint_step``; None: the latest) in ``workdir``.

  Raises:
    FileNotFoundError: no such checkpoint or EMA export; the message says which exist or how to make one.
  """
  found = latest_ema_params(setup, workdir, step=step)
  if found is None and step is not None:
    have = available_steps(setup, workdir)
    raise FileNotFoundError(f"config.sampling.checkpoint_step={step}: no checkpoint or EMA export of that step in "
                            f"{workdir} (there are {have or 'none'}); pick one of them or leave it unset for the latest.")
  if found is None:
    raise FileNotFoundError(f"No checkpoint found in {checkpointing.checkpoint_dir(workdir)}: run --mode=train "
                            f"with --workdir={workdir} first.")
  return found
