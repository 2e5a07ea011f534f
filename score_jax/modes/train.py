"""``--mode=train``: ``run(config, workdir)`` trains a score model, resuming from the latest
checkpoint, then samples its EMA parameters.  The config becomes components in
``score_jax.experiment``; the step is ``jobs/train_step.py``, the loop ``jobs/train_loop.py``.

The run itself is ``jobs.training.fit`` (shared with ``--mode=distill``). The train step is one ``jax.jit`` over a Mesh of every device (``score_jax.sharding``): the
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

import os
from typing import Optional

import jax

from score_jax import checkpointing
from score_jax import config_files
from score_jax import experiment
from score_jax.jobs import train_loop
from score_jax.jobs import training

ConfigDict = experiment.ConfigDict
ConfigError = experiment.ConfigError
NonFiniteLossError = train_loop.NonFiniteLossError
TrainResult = training.TrainResult


# --- entry point --------------------------------------------------------------------------
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
  setup = experiment.build(config, mesh=mesh, workdir=workdir)
  experiment.check(not setup.pretrained, "config.model.pretrained",
                   f"is {setup.pretrained!r}, but training starts from fresh weights; it is read by --mode=sample "
                   "and --mode=eval only (leave it empty to train).")
  experiment.check(setup.parametrization != "consistency", "config.model.parametrization",
                   "is 'consistency': a consistency model is distilled from a trained score model; run "
                   "--mode=distill with config.distill.teacher_workdir (configs/distill/digits.py).")
  opts = experiment.train_options(config)
  training.refuse_finished(workdir, setup, opts)
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):  # a second trainer on this workdir stops here
    return training.fit(setup, workdir, opts, config_json=config_files.to_json(config),
                        sample_opts=experiment.sample_options(config))


