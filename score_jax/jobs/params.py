"""The parameters a job samples from: the EMA parameters of a checkpoint, an EMA export or a
converted published checkpoint (``config.model.pretrained``), damaged ones skipped; or, by
``config.sampling.params`` (``setup.sample_params``), the raw parameters of a checkpoint, a
tracked power-EMA snapshot (``ema/power_<σ_rel>/<step>``) or a post-hoc reconstruction
(``ema/posthoc_<σ_rel>/<step>``, ``--mode=posthoc_ema``).
"""

from __future__ import annotations

from typing import Any, Optional

import jax

from score_jax import checkpointing
from score_jax import ema as ema_lib
from score_jax import experiment
from score_jax import pretrained
from score_jax import sharding as sharding_lib


def available_steps(setup: experiment.Setup, workdir: str) -> list[int]:
  """Steps sample / eval can read: the converted checkpoint's (``config.model.pretrained``), else the
  workdir's (of ``setup.sample_params``: full checkpoints for "raw", that profile's exports for a
  power or post-hoc profile)."""
  if setup.pretrained:
    return [int(pretrained.read_meta(setup.pretrained).get("step", 0))]
  if setup.sample_params == "raw":
    return checkpointing.checkpoint_steps(workdir)
  if setup.sample_params != "ema":
    return checkpointing.exported_steps(workdir, setup.sample_params)
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
  if setup.pretrained:  # a converted published checkpoint replaces the workdir's own
    if step is not None and step not in available_steps(setup, workdir):
      return None
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                          experiment.param_shapes(setup))
    return available_steps(setup, workdir)[0], pretrained.load_export(setup.pretrained, target)
  candidates = available_steps(setup, workdir)
  if not candidates or (step is not None and step not in candidates):
    return None
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                        experiment.param_shapes(setup))
  state = experiment.abstract_state(setup, repl)
  which = setup.sample_params
  sources = []
  for s in sorted(candidates, reverse=True) if step is None else [step]:
    if which == "ema":
      sources += [checkpointing.export_source(workdir, s, params),
                  checkpointing.checkpoint_source(workdir, s, state, pick=lambda restored: restored.ema_params)]
    elif which == "raw":
      sources.append(checkpointing.checkpoint_source(workdir, s, state, pick=lambda restored: restored.params))
    else:
      sources.append(checkpointing.export_source(workdir, s, params, profile=which))
  return checkpointing.restore_first_readable(sources, workdir=workdir, writer=False)



def load_ema_params(setup: experiment.Setup, workdir: str, step: Optional[int] = None) -> tuple[int, Any]:
  """(step, EMA parameters) of ``step`` (``config.sampling.checkpoint_step``; None: the latest) in ``workdir``.

  Raises:
    FileNotFoundError: no such checkpoint or EMA export; the message says which exist or how to make one.
  """
  found = latest_ema_params(setup, workdir, step=step)
  which = setup.sample_params
  if found is None and which not in ("ema", "raw") and not setup.pretrained:
    kind_sigma = ema_lib.parse_profile_name(which)
    have = available_steps(setup, workdir)
    how = (f"run --mode=posthoc_ema --config.posthoc.sigma_rel={kind_sigma[1]}" if kind_sigma[0] == "posthoc" else
           "train with config.model.ema.kind='power' (snapshots every config.model.ema.snapshot_freq steps)")
    raise FileNotFoundError(f"config.sampling.params={which}: no export {'of step ' + str(step) + ' ' if step is not None else ''}"
                            f"in {checkpointing.export_dir(workdir, which)} (steps there: {have or 'none'}); {how}, "
                            f"or use config.sampling.params=ema.")
  if found is None and step is not None:
    have = available_steps(setup, workdir)
    what = "full checkpoint (config.sampling.params=raw)" if which == "raw" else "checkpoint or EMA export"
    raise FileNotFoundError(f"config.sampling.checkpoint_step={step}: no {what} of that step in "
                            f"{workdir} (there are {have or 'none'}); pick one of them or leave it unset for the latest.")
  if found is None:
    raise FileNotFoundError(f"No checkpoint found in {checkpointing.checkpoint_dir(workdir)}: run --mode=train "
                            f"with --workdir={workdir} first.")
  return found
