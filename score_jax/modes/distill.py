"""``--mode=distill``: consistency distillation (Song, Dhariwal, Chen & Sutskever, "Consistency
Models", ICML 2023, Algorithm 2) of a trained score model into a network sampled in 1 … k steps.

    python main.py --config=configs/edm/digits.py --workdir=runs/digits_edm --mode=train
    python main.py --config=configs/distill/digits.py --workdir=runs/digits_cd --mode=distill
    python main.py --config=configs/distill/digits.py --workdir=runs/digits_cd --mode=sample \\
        --config.sampling.consistency.num_steps=2

The student is this config's network with ``config.model.parametrization = "consistency"``; the
teacher is ``config.distill.teacher_workdir`` (or ``teacher_config`` + ``teacher_pretrained``),
checked before anything compiles (``jobs.distill``).  The student's run is an ordinary run in
its own ``--workdir`` — ``config.json``, Orbax checkpoints of a ``train_state.DistillState`` (the
train state plus the target network), the EMA export, TensorBoard scalars, sample grids — run by
``jobs.training.fit`` like ``--mode=train``: it resumes from its newest checkpoint, saves on
SIGTERM, and never overwrites its outputs.  So ``--mode=sample``, ``eval``, ``inpaint`` and
``score_jax.load_run`` read it as they read any run, with ``config.sampling.method =
"consistency"``.  The teacher's source and step are recorded in the final metrics.json.
"""

from __future__ import annotations

import os

from score_jax import checkpointing
from score_jax import config_files
from score_jax import experiment
from score_jax.jobs import distill
from score_jax.jobs import training


def run(config: experiment.ConfigDict, workdir: str) -> training.TrainResult:
  """Distils the teacher of ``config.distill`` into the student network of ``config`` in ``workdir``.

  Raises:
    ConfigError (a ValueError): a bad config value, or a teacher that does not fit the student
      (before anything compiles).
    FileNotFoundError: no teacher run, config file or step.
    FileExistsError: the student's run has already reached ``config.training.num_steps``.
  """
  setup = experiment.build(config, workdir=workdir)
  experiment.check(setup.parametrization == "consistency", "config.model.parametrization",
                   f"is {setup.parametrization!r}; the student of --mode=distill is a consistency model: set it to "
                   "'consistency' (configs/distill/digits.py).")
  experiment.check(not setup.pretrained, "config.model.pretrained",
                   "is set, but the student is trained here; name a published teacher with "
                   "config.distill.teacher_config and config.distill.teacher_pretrained.")
  options = experiment.distill_options(config, setup.boundary_sigma)
  opts = experiment.train_options(config)
  teacher = distill.load_teacher(options, setup, workdir)
  training.refuse_finished(workdir, setup, opts)
  init = distill.initial_state(options, setup, teacher)
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):
    result = training.fit(setup, workdir, opts, config_json=config_files.to_json(config),
                          sample_opts=experiment.sample_options(config),
                          objective=distill.objective(options, teacher, opts.num_steps),
                          aux={"teacher": teacher.params}, initial_state=init,
                          record={"teacher": {"source": teacher.source, "step": teacher.step,
                                              "params": teacher.setup.sample_params}})
  return result
