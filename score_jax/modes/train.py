"""``--mode=train``: ``run(config, workdir)`` trains a score model, resuming from the latest
checkpoint, then samples its EMA parameters.  The config becomes components in
``score_jax.experiment``; the step is ``jobs/train_step.py``, the loop ``jobs/train_loop.py``.

The train step is one ``jax.jit`` over a Mesh of every device (``score_jax.sharding``): the
global batch is split over the "data" axis, the TrainState is replicated and donated, or
with ``config.training.fsdp`` sharded over the same axis (``state_shardings``).  The same
code runs on 1 CPU, 8 TPU cores or a pod (``main.py`` calls ``jax.distributed.initialize()``
on multi-process launches).  The first calls of the train step and of the sampler log their
compile time (``score_jax.compilation``).

Data and noise: batch s is a pure function of (seed, s) (``jobs.train_loop.BatchFeeder``) and
the loss of step s draws its times and noise from ``fold_in(train_key, s)``, so a resumed run —
after a crash, ``kill -9`` or preemption — sees exactly the data and noise of an uninterrupted
one.  Grids and final samples draw from ``jobs.keys.draw_key(seed, "train", step)``.

Workdir layout::

    <workdir>/config.json                 resolved config of the first run
    <workdir>/train.lock                  flock'ed by the training run that writes here (pid, host, start)
    <workdir>/config_step{S}.json         ... of a run resumed at step S with a changed config
    <workdir>/checkpoints/<step>/         Orbax checkpoints of the TrainState (async)
    <workdir>/ema/<step>/                 EMA parameters only, exported at the end of training
    <workdir>/ema/power_<σ_rel>/<step>/   power EMA (config.model.ema.kind="power"): each tracked profile,
                                          every config.model.ema.snapshot_freq steps and at the end
    <workdir>/ema/posthoc_<σ_rel>/<step>/ written by --mode=posthoc_ema
    <workdir>/tensorboard/                scalars: loss, loss_ema, grad_norm, lr, images_per_s, ...
    <workdir>/samples_step{S}.png         samples of the EMA model (image grid or toy scatter)
    <workdir>/samples_step{S}.npz         ... as arrays (images)
    <workdir>/metrics_step{S}.json        end of training: times, loss, sampler, NFE (toy: quality)
    <workdir>/samples/<k>/                one --mode=sample draw

No file is ever overwritten: outputs are named by step (or by a fresh folder), and a run
that would overwrite one stops before compiling with a message saying what to do.

Preemption: SIGTERM makes the loop save a checkpoint at the current step and return
(``TrainResult.preempted``); ``main.py`` then exits 0 and the relaunched command resumes.
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
from score_jax import config_files
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

ConfigDict = experiment.ConfigDict
ConfigError = experiment.ConfigError
NonFiniteLossError = train_loop.NonFiniteLossError


# --- entry point --------------------------------------------------------------------------
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


def _write_config(config: ConfigDict, workdir: str, start_step: int) -> str:
  """Writes the resolved config as ``config.json``, or, when a run resumes with a
  different config, as ``config_step{start_step}.json``.  Returns the path."""
  text = config_files.to_json(config)
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


def _output_paths(workdir: str, step: int, setup: experiment.Setup) -> dict[str, Optional[str]]:
  images = isinstance(setup.data, experiment.ImageData)
  return {"png": os.path.join(workdir, f"samples_step{step}.png"),
          "npz": os.path.join(workdir, f"samples_step{step}.npz") if images else None,
          "metrics_json": os.path.join(workdir, f"metrics_step{step}.json")}


def run(config: ConfigDict, workdir: str, *, mesh: Optional[jax.sharding.Mesh] = None) -> TrainResult:
  """Trains a score model on ``config.data``; at the end samples its EMA parameters.

  Resumes from the newest readable checkpoint in ``<workdir>/checkpoints`` when there is one
  (damaged newer ones are moved aside as ``<step>.unreadable``).  Holds the workdir's
  ``checkpointing.WorkdirLock`` from before the restore to the end.

  Args:
    config: the full config (see ``configs/default_ve.py`` or ``configs/toy/gmm2d.py``).
    workdir: the run's folder (created if missing).
    mesh: the devices to train on; default ``sharding.make_mesh()`` over every device (pass e.g.
      ``sharding.make_mesh(devices=jax.devices()[:1])`` to train on one).

  Returns:
    A ``TrainResult``.

  Raises:
    ConfigError (a ValueError): a bad config value (before anything compiles).
    FileExistsError: the run's outputs for ``config.training.num_steps`` already exist.
    NonFiniteLossError: the loss became NaN or infinite; the message names the step.
    checkpointing.WorkdirLockedError: another training run uses ``workdir``.
    checkpointing.UnreadableCheckpointError: checkpoints exist but none is readable.
    checkpointing.DiskFullError: a save ran out of space (the previous checkpoint is intact).
  """
  setup = experiment.build(config, mesh=mesh)
  experiment.check(not setup.pretrained, "config.model.pretrained",
                   f"is {setup.pretrained!r}, but training starts from fresh weights; it is read by --mode=sample "
                   "and --mode=eval only (leave it empty to train).")
  opts = experiment.train_options(config)
  num_steps = opts.num_steps
  final = _output_paths(workdir, num_steps, setup)
  outputs.refuse_overwrite([p for p in final.values() if p], (
      f"The run in {workdir} has already reached step {num_steps}: raise --config.training.num_steps to "
      f"train on, run --mode=sample to draw new samples, or use another --workdir."))
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):  # a second trainer on this workdir stops here
    return _train(config, workdir, setup, opts, final)


def _train(config: ConfigDict, workdir: str, setup: experiment.Setup, opts: experiment.TrainOptions,
           final: dict[str, Optional[str]]) -> TrainResult:
  num_steps = opts.num_steps
  keys = experiment.keys(setup.seed)
  repl = sharding_lib.replicated(setup.mesh)
  batch_shardings = jax.tree.map(lambda _: sharding_lib.data_sharding(setup.mesh), experiment.abstract_batch(setup))
  state_sh = train_step.state_shardings(opts, setup, experiment.abstract_state(setup, keys["init"]))

  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=opts.max_to_keep)
  try:
    found = ckpt.restore_newest_readable(experiment.abstract_state(setup, keys["init"], state_sh))
    if found is not None:
      state = found[1]
      logging.info("Resuming from the checkpoint of step %d in %s.", int(state.step), ckpt.directory)
    else:
      state = compilation.run_once(functools.partial(experiment.init_state, setup), keys["init"],
                                  out_shardings=state_sh)
    start_step = int(state.step)
    if start_step > num_steps:
      raise ConfigError(f"config.training.num_steps: {num_steps} is below the step of the latest checkpoint "
                        f"({start_step}) in {ckpt.directory}; raise it or use another --workdir.")
    if jax.process_index() == 0:
      _write_config(config, workdir, start_step)
    logging.info("%d parameters; %d device(s) in %d process(es); global batch %d; state %s.",
                 experiment.num_params(state.params), setup.mesh.size, jax.process_count(), setup.batch_size,
                 "sharded (FSDP)" if opts.fsdp else "replicated")

    compiled: dict[str, compilation.CompileStats] = {}
    sample_opts, control = experiment.sample_options(config), control_lib.network(setup)
    step_fn = compilation.timed_first_call(
        jax.jit(train_step.make_train_step(setup, train_key=keys["train"]), in_shardings=(state_sh, batch_shardings),
                out_shardings=(state_sh, repl), donate_argnums=0), "train step", compiled)
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
            grid=lambda state, step: _sample_grid(setup, sampler, control, state, step, workdir, log),
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
           "num_devices": setup.mesh.size, "batch_size": setup.batch_size}
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


def _sample_grid(setup: experiment.Setup, sampler: Callable[[Any, jax.Array], tuple[np.ndarray, int]],
                 control: control_lib.Control, state: ts_lib.TrainState, step: int, workdir: str,
                 log: train_loop.ScalarLog) -> None:
  """The periodic sample picture of step ``step`` (kept, not rewritten, if a resumed run made it)."""
  paths = _output_paths(workdir, step, setup)
  if os.path.exists(paths["png"]):
    logging.info("%s exists (an earlier run of this workdir drew it); kept.", paths["png"])
    return
  x, _ = sampler(state.ema_params, keys_lib.draw_key(setup.seed, "train", step))
  writers.write_samples(setup, x, png=paths["png"], npz=paths["npz"], title=f"EMA model at step {step}",
                        extra={"step": step}, labels=control.sample_labels(x.shape[0]))
  if isinstance(setup.data, experiment.ImageData):
    log.add_image("samples", outputs.image_grid(x[:64], data_range=setup.data.data_range), step)

