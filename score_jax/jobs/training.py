"""One training run, whatever it minimises: ``fit(setup, workdir, ...)`` restores or initialises the
state, runs ``train_loop`` with checkpoints, grids and EMA snapshots, then exports the EMA
parameters and samples them.  ``--mode=train`` (score matching) and ``--mode=distill``
(consistency distillation, ``jobs.distill``) are both this function with another ``Objective``
(``jobs.train_step``); the workdir layout, resume and preemption behaviour are the same
(``score_jax/modes/train.py`` documents them).
"""

from __future__ import annotations

import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import numpy as np

from score_jax import checkpointing
from score_jax import compilation
from score_jax import experiment
from score_jax import outputs
from score_jax import sharding as sharding_lib
from score_jax import train_state as ts_lib
from score_jax.jobs import control as control_lib
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import sampler as sampler_lib
from score_jax.jobs import train_loop
from score_jax.jobs import train_step
from score_jax.jobs import writers

ConfigError = experiment.ConfigError


@dataclasses.dataclass(frozen=True)
class TrainResult(writers.Output):
  """What ``run`` returns: the workdir (``folder``), the final ``metrics``, and

  Attributes:
    state: the final TrainState (at the preemption step when preempted).
    start_step: the step training started from (0, or the restored checkpoint's step).
    preempted: SIGTERM stopped the run; a checkpoint of ``state.step`` was saved.
    history: (step, loss) of every step run in this call.
    metrics_path: ``<workdir>/metrics_step{S}.json`` (None when preempted).
    samples_path: ``<workdir>/samples_step{S}.png`` (None when preempted).
  """

  state: ts_lib.TrainState
  start_step: int
  preempted: bool
  history: list[tuple[int, float]]
  metrics_path: Optional[str]
  samples_path: Optional[str]


def write_config(text: str, workdir: str, start_step: int) -> str:
  """Writes the resolved config (its JSON ``text``) as ``config.json``, or, when a run resumes with a
  different config, as ``config_step{start_step}.json``.  Returns the path."""
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return path
    path = os.path.join(workdir, f"config_step{start_step}.json")
    if os.path.exists(path):
      with open(path) as f:
        if f.read() == text:
          return path
      raise FileExistsError(
          f"Refusing to overwrite {path}: it holds a different config for a run resumed at step "
          f"{start_step}. Move it away or use another --workdir.")
  with open(path, "x") as f:
    f.write(text)
  return path


def output_paths(workdir: str, step: int, setup: experiment.Setup) -> dict[str, Optional[str]]:
  images = isinstance(setup.data, experiment.ImageData)
  return {"png": os.path.join(workdir, f"samples_step{step}.png"),
          "npz": os.path.join(workdir, f"samples_step{step}.npz") if images else None,
          "metrics_json": os.path.join(workdir, f"metrics_step{step}.json")}


def refuse_finished(workdir: str, setup: experiment.Setup, opts: experiment.TrainOptions) -> None:
  """Raises FileExistsError when the run in ``workdir`` already wrote its final outputs (before anything compiles)."""
  final = output_paths(workdir, opts.num_steps, setup)
  outputs.refuse_overwrite([p for p in final.values() if p], (
      f"The run in {workdir} has already reached step {opts.num_steps}: raise --config.training.num_steps to "
      f"train on, run --mode=sample to draw new samples, or use another --workdir."))


def fit(setup: experiment.Setup, workdir: str, opts: experiment.TrainOptions, *, config_json: str,
        sample_opts: experiment.SampleOptions, objective: train_step.Objective = train_step.SCORE_MATCHING,
        aux: Any = None, initial_state: Optional[Callable[[jax.Array], ts_lib.TrainState]] = None,
        record: Optional[dict] = None) -> TrainResult:
  """Trains ``setup``'s network in ``workdir`` (the caller holds its ``WorkdirLock`` and has refused
  to overwrite the final outputs, ``output_paths``); at the end exports and samples the EMA.

  Args:
    setup: the components.
    workdir: the run's folder.
    opts: the loop's options (``experiment.train_options``).
    config_json: the resolved config, written as ``config.json`` (``write_config``).
    sample_opts: how many samples the grids and the final draw take.
    objective: what the step minimises (``train_step.Objective``).
    aux: the step's traced auxiliaries, replicated (e.g. a teacher's parameters); None: none.
    initial_state: ``key -> state`` for a fresh run (default ``experiment.init_state``); a
      checkpoint in the workdir is resumed instead.
    record: more entries for the final metrics JSON (e.g. the teacher of a distillation).

  Returns:
    A ``TrainResult``.
  """
  final = output_paths(workdir, opts.num_steps, setup)
  num_steps = opts.num_steps
  keys = experiment.keys(setup.seed)
  repl = sharding_lib.replicated(setup.mesh)
  batch_shardings = jax.tree.map(lambda _: sharding_lib.data_sharding(setup.mesh), experiment.abstract_batch(setup))
  state_sh = train_step.state_shardings(opts, setup, experiment.abstract_state(setup))

  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=opts.max_to_keep)
  try:
    found = ckpt.restore_newest_readable(experiment.abstract_state(setup, state_sh))
    if found is not None:
      state = found[1]
      logging.info("Resuming from the checkpoint of step %d in %s.", int(state.step), ckpt.directory)
    else:
      init = initial_state if initial_state is not None else functools.partial(experiment.init_state, setup)
      state = compilation.run_once(init, keys["init"], out_shardings=state_sh)
    start_step = int(state.step)
    if start_step > num_steps:
      raise ConfigError(f"config.training.num_steps: {num_steps} is below the step of the latest checkpoint "
                        f"({start_step}) in {ckpt.directory}; raise it or use another --workdir.")
    if jax.process_index() == 0:
      write_config(config_json, workdir, start_step)
    logging.info("%d parameters; %d device(s) in %d process(es); global batch %d; state %s.",
                 experiment.num_params(state.params), setup.mesh.size, jax.process_count(), setup.batch_size,
                 "sharded (FSDP)" if opts.fsdp else "replicated")

    compiled: dict[str, compilation.CompileStats] = {}
    control = control_lib.network(setup)
    jitted = jax.jit(train_step.make_train_step(setup, train_key=keys["train"], objective=objective),
                     in_shardings=(state_sh, batch_shardings, jax.tree.map(lambda _: repl, aux)),
                     out_shardings=(state_sh, repl), donate_argnums=0)
    step_fn = compilation.timed_first_call(lambda state, batch: jitted(state, batch, aux), "train step", compiled)
    sampler = compilation.timed_first_call(  # compiles on first use
        sampler_lib.make_sampler(setup, sample_opts.num_samples, control, batch_size=sample_opts.batch_size),
        "sampler", compiled)
    t0 = time.perf_counter()
    feeder = train_loop.BatchFeeder(setup, keys["data"])
    log = train_loop.ScalarLog(workdir, start_step=start_step, num_steps=num_steps, batch_size=setup.batch_size,
                               log_freq=opts.log_freq)
    try:
      with train_loop.Preemption() as preemption:
        state, preempted = train_loop.train_loop(
            step_fn, state, feeder, ckpt, log, preemption, start_step=start_step, num_steps=num_steps,
            snapshot_freq=opts.snapshot_freq, sample_freq=opts.sample_freq,
            grid=lambda state, step: sample_grid(setup, sampler, control, state, step, workdir, log),
            ema_snapshot_freq=opts.ema_snapshot_freq,
            ema_snapshot=lambda state, step: train_loop.write_ema_snapshots(workdir, setup.ema, state, step))
    finally:
      feeder.close()
      log.close()
    if preempted:
      logging.warning("SIGTERM: saved the checkpoint of step %d; relaunch the same command to resume.",
                      int(state.step))
      return TrainResult(folder=os.path.abspath(workdir), metrics={}, state=state, start_step=start_step,
                         preempted=True, history=log.history, metrics_path=None, samples_path=None)
    ckpt.save(num_steps, state)
    train_time = time.perf_counter() - t0
  finally:
    ckpt.close()

  checkpointing.export_params(workdir, num_steps, state.ema_params)  # every process takes part in an Orbax save
  train_loop.write_ema_snapshots(workdir, setup.ema, state, num_steps)
  extra = {"step": num_steps, "start_step": start_step, "train_time_s": train_time,
           "steps_per_s": (num_steps - start_step) / train_time if num_steps > start_step else None,
           "final_loss": log.last_loss, "num_params": experiment.num_params(state.params),
           "num_devices": setup.mesh.size, "batch_size": setup.batch_size, "objective": objective.name,
           **(record or {})}
  t1 = time.perf_counter()
  x, nfe = sampler(state.ema_params, keys_lib.draw_key(setup.seed, "train", num_steps))
  extra.update({"nfe": nfe, "sample_time_s": time.perf_counter() - t1, "num_samples": int(x.shape[0]),
                "sampling": {"method": setup.sampling_method, **setup.sampling_options},
                "compile": {what: stats.as_dict() for what, stats in compiled.items()}})
  metrics = writers.write_samples(setup, x, **final, title=f"{setup.data.name}, EMA model at step {num_steps}",
                                  quality_key=keys_lib.quality_key(setup.seed, "train", num_steps), extra=extra,
                                  labels=control.sample_labels(x.shape[0]))
  return TrainResult(folder=os.path.abspath(workdir), metrics=metrics, state=state, start_step=start_step,
                     preempted=False, history=log.history, metrics_path=final["metrics_json"], samples_path=final["png"])


def sample_grid(setup: experiment.Setup, sampler: Callable[[Any, jax.Array], tuple[np.ndarray, int]],
                 control: control_lib.Control, state: ts_lib.TrainState, step: int, workdir: str,
                 log: train_loop.ScalarLog) -> None:
  """The periodic sample picture of step ``step`` (kept, not rewritten, if a resumed run made it)."""
  paths = output_paths(workdir, step, setup)
  if os.path.exists(paths["png"]):
    logging.info("%s exists (an earlier run of this workdir drew it); kept.", paths["png"])
    return
  x, _ = sampler(state.ema_params, keys_lib.draw_key(setup.seed, "train", step))
  writers.write_samples(setup, x, png=paths["png"], npz=paths["npz"], title=f"EMA model at step {step}",
                        extra={"step": step}, labels=control.sample_labels(x.shape[0]))
  if isinstance(setup.data, experiment.ImageData):
    log.add_image("samples", outputs.image_grid(x[:64], data_range=setup.data.data_range), step)

