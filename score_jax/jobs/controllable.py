"""One inpainting or colorization run, the steps both modes share (``solve``): the problem and
its control, checked before anything compiles → the EMA parameters → ``draw`` → ``write`` a new
folder ``<workdir>/<mode>/<k>`` (``grid.png``, ``results.npz``, ``metrics.json``).
"""

from __future__ import annotations

import os
import time
from typing import Any, Optional

from absl import logging
import jax
import numpy as np

from score_jax import experiment
from score_jax import outputs
from score_jax.jobs import control as control_lib
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import observation_metrics
from score_jax.jobs import observations
from score_jax.jobs import params as params_lib
from score_jax.jobs import sampler as sampler_lib
from score_jax.jobs import writers
from score_jax.jobs.observations import Problem


def draw(setup: experiment.Setup, problem: Problem, control: control_lib.Control, params: Any, key: jax.Array, *,
         batch_size: Optional[int]) -> tuple[np.ndarray, dict[str, Any]]:
  """Samples every input ``samples_per_input`` times: (samples [n, k, H, W, C], {nfe, sample_time_s})."""
  n, k = len(problem.originals), problem.samples_per_input
  t0 = time.perf_counter()
  x, nfe = sampler_lib.make_sampler(setup, n * k, control, batch_size=batch_size)(params, key)  # [n·k, H, W, C]
  return x.reshape((n, k) + x.shape[1:]), {"nfe": nfe, "sample_time_s": time.perf_counter() - t0}


def write(out: str, setup: experiment.Setup, problem: Problem, samples: np.ndarray, step: int,
          metrics: dict[str, Any]) -> None:
  """``grid.png`` (per input: original, masked or gray input, samples), ``results.npz`` and
  ``metrics.json`` into the new folder ``out`` (process 0)."""
  if jax.process_index() != 0:
    return
  m = problem.samples_per_input
  writers.save_grid(os.path.join(out, "grid.png"), observations.grid_rows(problem, samples), setup.data.data_range, ncol=2 + m)
  arrays = {"originals": problem.originals, "inputs": problem.shown, "samples": samples, "step": np.asarray(step)}
  if problem.fill is not None:
    arrays["known"] = ~problem.fill
  if problem.labels is not None:
    arrays["labels"] = problem.labels
  outputs.write_npz(os.path.join(out, "results.npz"), **arrays)
  outputs.write_json(os.path.join(out, "metrics.json"), metrics)


def solve(mode: str, setup: experiment.Setup, opts: experiment.ControllableOptions,
          sample_opts: experiment.SampleOptions, guidance: experiment.GuidanceOptions,
          classifier: experiment.ClassifierOptions, workdir: str) -> writers.Output:
  """One inpainting or colorization run, the steps of every mode: the problem and its control
  (checked before anything compiles) → the EMA parameters → draw → write a new folder
  ``<workdir>/<mode>/<k>``.

  Raises:
    ConfigError: a bad field.  FileNotFoundError: no checkpoint, or classifier guidance without a classifier.
  """
  problem = observations.prepare(setup, opts, mode)
  class_part = control_lib.from_guidance(guidance, setup, workdir, default=control_lib.unconditional(setup))
  control = observations.control_for(problem, opts, setup, class_part)
  step, params = params_lib.load_ema_params(setup, workdir, sample_opts.checkpoint_step)
  k, out = writers.numbered_folder(workdir, mode)
  samples, timing = draw(setup, problem, control, params, keys_lib.draw_key(setup.seed, mode, step, k),
                         batch_size=sample_opts.batch_size)
  metrics = observation_metrics.metrics_of(mode, step, k, workdir, problem, opts, setup, control, samples, timing, classifier=classifier)
  metrics["params"] = setup.sample_params
  if mode == "inpaint":
    metrics.update(observation_metrics.mask_record(opts))
  write(out, setup, problem, samples, step, metrics)
  kept = ("known-pixel error", metrics["known_max_abs_error"]) if mode == "inpaint" else (
      "luminance error", metrics["luminance_max_abs_error"])
  logging.info("%s of %d inputs × %d samples (%d NFE, %.1f s; %s %.2e) -> %s", mode, len(samples), problem.samples_per_input,
               timing["nfe"], timing["sample_time_s"], *kept, out)
  return writers.Output(folder=out, metrics=metrics)

