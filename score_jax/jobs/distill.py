"""Consistency distillation as a training objective: the teacher (``load_teacher``), the student's
first state (``initial_state``) and the ``train_step.Objective`` of ``--mode=distill``
(``objective``), on the loss of ``score_jax.distillation``.

The teacher is a trained run — its config.json and parameters (EMA, raw, a power or post-hoc
profile) — or a config file plus a converted published checkpoint.  It is checked against the
student before its parameters are read: the same data shape, SDE and classes.  Its parameters are
the train step's traced auxiliary ``aux["teacher"]`` (an argument, never a compiled constant, and
never written into the student's checkpoints).

Per step k (``state.step``): N(k) and μ(k) from the schedules; the loss of the student θ against
the target θ⁻ (``state.target_params``) on the teacher's Heun step; after the optimizer update
θ⁻ ← μ(k) θ⁻ + (1 − μ(k)) θ (``train_state.update_target``).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

import jax
import jax.numpy as jnp

from score_jax import distillation
from score_jax import experiment
from score_jax import train_state as ts_lib
from score_jax.jobs import train_step

Array = Any


@dataclasses.dataclass(frozen=True)
class Teacher:
  """The teacher's components and parameters, and where they came from."""

  setup: experiment.Setup
  params: Any
  source: str  # the run's folder, or "<config spec> + <export folder>" of a published teacher
  step: int


def load_teacher(options: experiment.DistillOptions, student: experiment.Setup, workdir: str) -> Teacher:
  """The teacher of ``config.distill``, built and checked against ``student`` before its parameters are read.

  Raises:
    ConfigError: a teacher of another data shape, SDE or class count, the student's own workdir,
      or a consistency model as the teacher.
    FileNotFoundError: no such run, config file or step.
  """
  from score_jax import config_files  # pylint: disable=g-import-not-at-top
  from score_jax import runs  # pylint: disable=g-import-not-at-top
  from score_jax.jobs import params as params_lib  # pylint: disable=g-import-not-at-top
  if options.teacher_workdir:
    field, where = "config.distill.teacher_workdir", options.teacher_workdir
    experiment.check(os.path.realpath(where) != os.path.realpath(workdir), field,
                     f"is the student's own --workdir {workdir}; the student writes its checkpoints in a folder of "
                     "its own: pass another --workdir.")
    config = runs.load_config(where, options.teacher_step)
  else:
    field, where = "config.distill.teacher_config", options.teacher_config
    try:
      config = config_files.load(where)
    except config_files.ConfigFileError as e:  # its message names --config=<spec>: name the field instead
      raise experiment.ConfigError(f"{field}: {str(e).replace(f'--config={where}: ', '', 1)}") from None
  config.sampling.params = options.teacher_params
  with experiment.config_field(field):  # the task first, the converted export (if any) after
    setup = experiment.build(config, mesh=student.mesh)
  for what, mine, theirs in (("data shape", student.data_shape, setup.data_shape), ("SDE", student.sde, setup.sde),
                             ("classes", student.num_classes, setup.num_classes)):
    experiment.check(mine == theirs, field, f"the teacher ({where}) has {what} {theirs!r} but the student has "
                     f"{mine!r}; distillation needs the same task under the same SDE.")
  experiment.check(setup.parametrization != "consistency", field,
                   f"the teacher ({where}) is itself a consistency model; distil a score model (its ODE is the target).")
  if options.teacher_config and options.teacher_pretrained:
    config.model.pretrained = options.teacher_pretrained
    try:
      setup = experiment.build(config, mesh=student.mesh)  # checks the export against the teacher's network
    except experiment.ConfigError as e:
      message = str(e).replace("config.model.", "the teacher's config.model.", 1)
      raise experiment.ConfigError(f"config.distill.teacher_pretrained: {message}") from None
  step, params = params_lib.load_ema_params(setup, where if options.teacher_workdir else workdir,
                                            options.teacher_step)
  source = os.path.abspath(where) if options.teacher_workdir else (
      f"{options.teacher_config} + {os.path.abspath(options.teacher_pretrained)}")
  return Teacher(setup=setup, params=params, source=source, step=step)


def initial_state(options: experiment.DistillOptions, student: experiment.Setup,
                  teacher: Teacher) -> Callable[[jax.Array], ts_lib.DistillState]:
  """``key -> DistillState`` of a fresh distillation: the student (its averages and target with
  it) starts from the teacher's parameters (``init="teacher"``, the papers' choice; the same
  network is required) or from ``key`` (``init="random"``).

  Raises:
    ConfigError: ``init="teacher"`` with a student network other than the teacher's.
  """
  if options.init == "random":
    return lambda key: experiment.init_state(student, key)
  experiment.check(student.model == teacher.setup.model, "config.distill.init",
                   "is 'teacher' but the student's network (config.model) differs from the teacher's; use the "
                   "teacher's network fields, or --config.distill.init=random.")
  params = teacher.params  # copied: the state is donated to the step, the teacher's arrays are not
  return lambda key: ts_lib.create_distill_state(jax.tree.map(jnp.copy, params), student.tx, student.ema)


def objective(options: experiment.DistillOptions, teacher: Teacher, total_steps: int) -> train_step.Objective:
  """The ``Objective`` of consistency distillation; the step's ``aux`` is ``{"teacher": params}``."""
  loss = dict(options.loss)
  schedule = dict(schedule=loss.pop("scale_schedule"), num_scales=loss["num_scales"],
                  start_scales=loss.pop("start_scales"))
  target = dict(schedule=loss.pop("target_schedule"), target_ema=loss.pop("target_ema"),
                start_scales=schedule["start_scales"])
  max_scales = loss.pop("num_scales")

  def scales(step: Array) -> Array:
    return distillation.num_scales_at(step, total_steps, **schedule)

  def loss_fn(setup, params, *, state, aux, key, x, labels, dropout_key, rows):
    student = setup.score_fn(params, labels, train=True, dropout_key=dropout_key)
    target = setup.score_fn(state.target_params, labels, train=True, dropout_key=dropout_key)
    teacher_fn = teacher.setup.score_fn(aux["teacher"], labels)
    return distillation.consistency_distillation_loss(
        key, setup.sde, student, x, target_score_fn=target, teacher_score_fn=teacher_fn,
        num_scales=scales(state.step), max_scales=max_scales, rows=rows, **loss)

  def after_update(new_state, old_state, aux):
    del aux
    rate = distillation.target_rate_at(scales(old_state.step), **target)
    return ts_lib.update_target(new_state, rate)

  return train_step.Objective(loss=loss_fn, after_update=after_update, name="consistency distillation")


__all__ = ["Teacher", "initial_state", "load_teacher", "objective"]
