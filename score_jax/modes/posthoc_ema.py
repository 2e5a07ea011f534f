"""``--mode=posthoc_ema``: EMA profiles chosen after training, reconstructed from the power-EMA
snapshots of a run (Karras et al., "Analyzing and Improving the Training Dynamics of Diffusion
Models", CVPR 2024, sec. 3.2; the mathematics is ``score_jax/ema.py``).

    python main.py --config=configs/edm/digits.py --workdir=runs/digits_power --mode=train \\
        --config.model.ema.kind=power --config.model.ema.snapshot_freq=200
    python main.py --config=configs/edm/digits.py --workdir=runs/digits_power --mode=posthoc_ema \\
        --config.model.ema.kind=power --config.posthoc.sigma_rel='(0.03,0.08,0.15)'
    python main.py --config=configs/edm/digits.py --workdir=runs/digits_power --mode=eval \\
        --config.model.ema.kind=power --config.sampling.params=posthoc_0.080

A run trained with ``config.model.ema.kind="power"`` exports each tracked profile every
``config.model.ema.snapshot_freq`` steps to ``<workdir>/ema/power_<σ_rel>/<step>``.  This mode
takes every snapshot at or before ``config.posthoc.step`` (None: the last snapshot), solves the
least-squares combination that best matches the power-function profile of each
``config.posthoc.sigma_rel`` ending at that step, and writes the combined parameters as an EMA
export ``<workdir>/ema/posthoc_<σ_rel>/<step>``: ``--config.sampling.params=posthoc_<σ_rel>``
makes ``--mode=sample``, ``eval``, ``inpaint``, ``colorize`` and ``load_run`` use it.  The
relative L2 error of each reconstructed profile is logged and written, with the coefficients, to
``<workdir>/posthoc_ema/<k>/metrics.json``.

Refused before anything is read (one line naming the field): a run without power-EMA
snapshots (trained with the classic EMA), fewer than two snapshot steps, and a target whose
profile the snapshots reproduce worse than ``config.posthoc.max_error`` (the message gives the
reachable σ_rel range).  An export that exists is kept, never overwritten.
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import numpy as np

from score_jax import checkpointing
from score_jax import ema as ema_lib
from score_jax import experiment
from score_jax import outputs
from score_jax.jobs import writers

check = experiment.check

# The σ_rel grid the reachable range is reported on.
_REACH_GRID = np.round(np.arange(0.005, ema_lib.SIGMA_REL_MAX, 0.001), 3)


def snapshots(workdir: str) -> list[tuple[int, float]]:
  """(step, σ_rel) of every power-EMA snapshot in ``workdir`` (``ema/power_<σ_rel>/<step>``), sorted;
  folders without Orbax's commit marker (an interrupted write) are left out with a warning."""
  root = checkpointing.export_dir(workdir)
  found = []
  for name in sorted(os.listdir(root)) if os.path.isdir(root) else []:
    parsed = ema_lib.parse_profile_name(name)
    if parsed is None or parsed[0] != "power":
      continue
    for step in checkpointing.exported_steps(workdir, name):
      path = os.path.join(root, name, str(step))
      if not os.path.exists(os.path.join(path, checkpointing.COMMIT_MARKER)):
        logging.warning("%s has no commit marker %s (an interrupted write); left out.", path,
                        checkpointing.COMMIT_MARKER)
        continue
      found.append((step, parsed[1]))
  return sorted(found)


def reachable(steps: list[int], sigma_rels: list[float], step: int, max_error: float) -> tuple[float, float] | None:
  """The smallest and largest σ_rel on a 0.001 grid whose profile ending at ``step`` the snapshots
  reproduce within ``max_error``; None when none does."""
  errors = ema_lib.solve_posthoc(steps, sigma_rels, step, list(_REACH_GRID)).relative_error
  ok = _REACH_GRID[errors <= max_error]
  return (float(ok.min()), float(ok.max())) if ok.size else None


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Reconstructs the ``config.posthoc.sigma_rel`` profiles of the run in ``workdir``.

  Returns:
    The report folder ``<workdir>/posthoc_ema/<k>`` and its metrics (one entry per target:
    σ_rel, γ, relative profile error, export path, coefficients).

  Raises:
    ConfigError (a ValueError): a bad field, no power-EMA snapshots, too few snapshots, or an
      unreachable σ_rel (before any parameters are read).
    checkpointing.CheckpointError: a snapshot could not be read.
  """
  opts = experiment.posthoc_options(config)
  setup = experiment.build(config, workdir=workdir)
  found = snapshots(workdir)
  if not found:
    if setup.ema.kind != "power":
      raise experiment.ConfigError(
          f"config.model.ema.kind: the run in {workdir} has no power-EMA snapshots (ema/power_<σ_rel>/) and the config "
          f"tracks the classic EMA; post-hoc EMA needs a run trained with --config.model.ema.kind=power.")
    raise experiment.ConfigError(
        f"config.model.ema.snapshot_freq: the run in {workdir} has no power-EMA snapshots yet (every "
        f"{experiment.train_options(config).ema_snapshot_freq} steps into {checkpointing.export_dir(workdir)}/power_<σ_rel>/); train it first.")
  last = max(s for s, _ in found)
  target_step = opts.step if opts.step is not None else last
  used = [(s, sigma) for s, sigma in found if s <= target_step]
  distinct = sorted({s for s, _ in used})
  check(len(distinct) >= 2, "config.model.ema.snapshot_freq",
        f"post-hoc EMA needs snapshots at two steps or more at or before step {target_step}, but the run in "
        f"{workdir} has them at {distinct or 'none'}; train longer or snapshot more often.")
  steps, sigmas = [s for s, _ in used], [sigma for _, sigma in used]
  solution = ema_lib.solve_posthoc(steps, sigmas, target_step, opts.sigma_rels)
  for sigma, error in zip(opts.sigma_rels, solution.relative_error):
    if error > opts.max_error:
      reach = reachable(steps, sigmas, target_step, opts.max_error)
      span = (f"the snapshots reach σ_rel in [{reach[0]:.3f}, {reach[1]:.3f}]" if reach else
              "no σ_rel is within reach")
      raise experiment.ConfigError(
          f"config.posthoc.sigma_rel: {sigma:.3f} at step {target_step} is reproduced with a relative profile error "
          f"of {error:.3f} > config.posthoc.max_error={opts.max_error} from {len(distinct)} snapshot steps of "
          f"σ_rel {sorted(set(sigmas))}; {span} (more snapshots widen it).")

  k, out = writers.numbered_folder(workdir, "posthoc_ema")
  targets, pending = [], []
  for j, sigma in enumerate(opts.sigma_rels):
    name = ema_lib.profile_name("posthoc", sigma)
    path = os.path.join(checkpointing.export_dir(workdir, name), str(target_step))
    exists = os.path.exists(path)
    logging.info("Post-hoc EMA σ_rel %.3f (γ = %.3f) at step %d from %d snapshots (%d steps): relative profile "
                 "error %.2e%s.", sigma, ema_lib.sigma_rel_to_gamma(sigma), target_step, len(steps), len(distinct),
                 solution.relative_error[j],
                 f"; {path} exists, kept" if exists else "")
    targets.append({"sigma_rel": sigma, "gamma": ema_lib.sigma_rel_to_gamma(sigma),
                    "relative_error": float(solution.relative_error[j]), "export": path,
                    "written": not exists, "coefficients": [float(c) for c in solution.coefficients[:, j]]})
    if not exists:
      pending.append(j)
  if pending:
    combined = _combine(workdir, used, solution.coefficients[:, pending])
    for j, tree in zip(pending, combined):
      checkpointing.export_params(workdir, target_step, tree, profile=ema_lib.profile_name("posthoc", opts.sigma_rels[j]))
  metrics = {"workdir": os.path.abspath(workdir), "step": target_step, "max_error": opts.max_error,
             "snapshots": [{"step": s, "sigma_rel": sigma} for s, sigma in used], "targets": targets,
             "params": [f"posthoc_{t['sigma_rel']:.3f}" for t in targets]}
  if writers.main_process():
    outputs.write_json(os.path.join(out, "metrics.json"), metrics)
  return writers.Output(folder=out, metrics=metrics)


def _combine(workdir: str, used: list[tuple[int, float]], coefficients: np.ndarray) -> list[Any]:
  """Σ_i coefficients[i, j] · snapshot_i for every column j, reading each snapshot once (float64 sums)."""
  totals = None
  for i, (step, sigma) in enumerate(used):
    name = ema_lib.profile_name("power", sigma)
    try:
      tree = checkpointing.load_exported_params(workdir, step, profile=name)
    except Exception as e:  # pylint: disable=broad-except
      path = os.path.join(checkpointing.export_dir(workdir, name), str(step))
      raise checkpointing.UnreadableCheckpointError(
          f"{path} could not be read ({checkpointing.short_error(e)}); move it aside (e.g. to {path}.unreadable) and "
          f"rerun: the solve uses the snapshots that remain.") from e
    leaves, structure = jax.tree.flatten(tree)
    host = [np.asarray(leaf, np.float64) for leaf in leaves]
    if totals is None:
      totals = [[np.zeros_like(a) for a in host] for _ in range(coefficients.shape[1])]
      dtypes = [np.asarray(leaf).dtype for leaf in leaves]
    for j in range(coefficients.shape[1]):
      for acc, a in zip(totals[j], host):
        acc += coefficients[i, j] * a
  return [jax.tree.unflatten(structure, [a.astype(d) for a, d in zip(total, dtypes)]) for total in totals]
