"""Typed records of the job sections: what a mode reads of ``config.sampling`` (beyond the
sampler), ``config.training`` (beyond the loss), ``config.eval`` and the two classifiers.

Each ``*_options(config)`` merges the section over its defaults, refuses unknown fields and
checks every value, raising ``ConfigError`` naming the field before anything compiles.  The
defaults are the sections of ``configs/common.py`` (``eval_section`` and friends), the one
place they are written: a config without a section (the toy ones have no classifiers) gets
them from there.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Optional

from configs import common as config_defaults
from score_jax import ema as ema_lib
from score_jax import likelihood
from score_jax import sharding as sharding_lib
from score_jax.models import classifier as classifier_lib
from score_jax.experiment import checks
from score_jax.experiment.checks import ConfigDict, as_dict, check, int_field, is_int, is_number, positive_field

EXTRACTORS = ("classifier", "inception")


def section(config: ConfigDict, name: str, defaults: ConfigDict, prefix: Optional[str] = None) -> dict[str, Any]:
  """``config[name]`` over ``defaults`` as a plain dict; an unknown field is a ConfigError."""
  return checks.merge_defaults(defaults.to_dict(), as_dict(config.get(name)), prefix or f"config.{name}")


# --- config.sampling, config.training -----------------------------------------------------
@dataclasses.dataclass(frozen=True)
class SampleOptions:
  """What the sampling modes read of ``config.sampling`` besides the sampler itself.

  Attributes:
    num_samples: samples of --mode=sample and of the training run's grids.
    batch_size: samples per compiled sampler call (None: all at once).
    checkpoint_step: the step --mode=sample (inpaint, colorize) loads; None: the latest.
  """

  num_samples: int
  batch_size: Optional[int]
  checkpoint_step: Optional[int]


def sample_options(config: ConfigDict) -> SampleOptions:
  s = config.sampling
  batch = s.get("batch_size")
  check(batch is None or (is_int(batch) and batch >= 1), "config.sampling.batch_size",
        f"must be None (all samples in one call) or an integer >= 1, got {batch!r}.")
  step = s.get("checkpoint_step")
  check(step is None or (is_int(step) and step >= 0), "config.sampling.checkpoint_step",
        f"must be None (the latest) or an integer >= 0, got {step!r}.")
  return SampleOptions(num_samples=int_field(s, "num_samples", 1, "config.sampling"), batch_size=batch,
                       checkpoint_step=step)


@dataclasses.dataclass(frozen=True)
class TrainOptions:
  """``config.training``'s loop fields (``build`` checks them; the loss and batch live in ``Setup``),
  and ``ema_snapshot_freq``, the steps between power-EMA snapshots (``config.model.ema.snapshot_freq``;
  0 without the power EMA)."""

  num_steps: int
  snapshot_freq: int
  max_to_keep: int
  log_freq: int
  sample_freq: int
  fsdp: bool
  fsdp_min_size: int
  ema_snapshot_freq: int = 0


def train_options(config: ConfigDict) -> TrainOptions:
  tr = config.training
  return TrainOptions(num_steps=int(tr.num_steps), snapshot_freq=int(tr.snapshot_freq), max_to_keep=int(tr.max_to_keep),
                      log_freq=int(tr.log_freq), sample_freq=int(tr.get("sample_freq", 0)),
                      fsdp=bool(tr.get("fsdp", False)),
                      fsdp_min_size=int(tr.get("fsdp_min_size", sharding_lib.FSDP_MIN_SIZE)),
                      ema_snapshot_freq=_ema_snapshot_freq(config))


def _ema_snapshot_freq(config: ConfigDict) -> int:
  """Steps between power-EMA snapshots (``config.model.ema.snapshot_freq``); 0 without the power EMA."""
  ema = config.model.get("ema")
  if ema is None or ema.get("kind", "classic") != "power":
    return 0
  return int_field(as_dict(ema), "snapshot_freq", 1, "config.model.ema")


# --- the classifiers ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FitOptions:
  """How a classifier is fitted: ``num_steps`` Adam steps of ``batch_size`` examples, peak
  ``lr`` with cosine decay to 0, random translations of up to ``max_shift`` pixels."""

  num_steps: int
  batch_size: int
  lr: float
  max_shift: int


@dataclasses.dataclass(frozen=True)
class ClassifierOptions:
  """The in-domain classifier of offline FID (``config.eval.classifier`` and its folder).

  Attributes:
    widths, feature_dim: the CNN's fields (``models.classifier.Classifier``).
    fit: its training.
    dir: ``config.eval.classifier_dir``; "" means ``<workdir>/classifier``.
    eval_batch_size: images per forward pass (``config.eval.batch_size``).
  """

  widths: tuple[int, ...]
  feature_dim: int
  fit: FitOptions
  dir: str = ""
  eval_batch_size: int = 128


@dataclasses.dataclass(frozen=True)
class NoisyClassifierOptions:
  """``config.noisy_classifier`` (``configs/common.py`` documents each field), with what its
  training and its check against a guided run read elsewhere in the config.

  Attributes:
    model, network, fit, dir, num_bands, band_repeats: the section's fields ("" dir:
      ``<workdir>/noisy_classifier``).
    sde_name, sde_options: the SDE it is trained under (``config.sde``), recorded in its info.json.
    time_sampling: how its training times are drawn (``config.training.loss_options``).
    eval_batch_size: images per forward pass (``config.eval.batch_size``).
  """

  model: str
  network: dict
  fit: FitOptions
  dir: str
  num_bands: int
  band_repeats: int
  sde_name: str
  sde_options: dict
  time_sampling: str
  eval_batch_size: int


def _fit_options(section: dict, prefix: str) -> FitOptions:
  return FitOptions(num_steps=int_field(section, "num_steps", 1, prefix),
                    batch_size=int_field(section, "batch_size", 1, prefix),
                    lr=positive_field(section, "lr", prefix),
                    max_shift=int_field(section, "max_shift", 0, prefix))


def _eval_section(config: ConfigDict) -> dict[str, Any]:
  return section(config, "eval", config_defaults.eval_section())


def classifier_options(config: ConfigDict) -> ClassifierOptions:
  """The in-domain classifier's options (``config.eval.classifier``, ``classifier_dir``, ``batch_size``).

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  e = _eval_section(config)
  prefix = "config.eval.classifier"
  c = checks.merge_defaults(config_defaults.eval_section().classifier.to_dict(), as_dict(e["classifier"]), prefix)
  widths = c["widths"]
  check(isinstance(widths, (tuple, list)) and len(widths) >= 1 and all(is_int(w) and w >= 1 for w in widths),
        f"{prefix}.widths", f"must be a non-empty tuple of integers >= 1, got {widths!r}.")
  check(isinstance(e["classifier_dir"], str), "config.eval.classifier_dir",
        f"must be a path string, got {e['classifier_dir']!r}.")
  return ClassifierOptions(widths=tuple(int(w) for w in widths), feature_dim=int_field(c, "feature_dim", 1, prefix),
                           fit=_fit_options(c, prefix), dir=e["classifier_dir"],
                           eval_batch_size=int_field(e, "batch_size", 1, "config.eval"))


def noisy_classifier_options(config: ConfigDict) -> NoisyClassifierOptions:
  """``config.noisy_classifier`` (common's section where missing), validated.

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  prefix = "config.noisy_classifier"
  c = section(config, "noisy_classifier", config_defaults.noisy_classifier_section())
  check(c["model"] in classifier_lib.NOISY_CLASSIFIERS, f"{prefix}.model",
        f"unknown {c['model']!r}; choose one of {sorted(classifier_lib.NOISY_CLASSIFIERS)}.")
  check(isinstance(c["network"], dict), f"{prefix}.network", f"must be a section of module fields, got {c['network']!r}.")
  check(isinstance(c["dir"], str), f"{prefix}.dir", f"must be a path string, got {c['dir']!r}.")
  return NoisyClassifierOptions(
      model=c["model"], network=dict(c["network"]), fit=_fit_options(c, prefix), dir=c["dir"],
      num_bands=int_field(c, "num_bands", 1, prefix), band_repeats=int_field(c, "band_repeats", 1, prefix),
      sde_name=config.sde.name, sde_options=as_dict(config.sde.get(config.sde.name)),
      time_sampling=as_dict(config.training.get("loss_options")).get("time_sampling", "uniform"),
      eval_batch_size=int_field(_eval_section(config), "batch_size", 1, "config.eval"))


# --- config.eval --------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """``config.eval``, validated (``configs/common.py``'s ``eval_section`` documents each field)."""

  begin_step: int
  end_step: Optional[int]
  wait: bool
  poll_seconds: float
  wait_timeout_seconds: Optional[float]
  batch_size: int
  num_loss_batches: int
  bpd_num_examples: Optional[int]
  bpd_num_repeats: int
  bpd_rtol: float
  bpd_atol: float
  bpd_divergence: str
  num_samples: int
  sample_batch_size: int
  features: str
  inception_path: str
  classifier_dir: str
  classifier: ClassifierOptions
  kid_subsets: int
  kid_subset_size: int
  is_splits: int
  pr_k: int
  real_features_max: int
  reference: bool


def eval_options(config: ConfigDict) -> EvalOptions:
  """``config.eval`` (common's ``eval_section`` where a field or the section is missing), validated.

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  e = _eval_section(config)
  check(e["features"] in EXTRACTORS, "config.eval.features",
        f"unknown extractor {e['features']!r}; choose one of {list(EXTRACTORS)}.")
  steps = {}
  for name in ("begin_step", "end_step"):
    value = e[name]
    check(value is None or (is_int(value) and value >= 0), f"config.eval.{name}",
          f"must be None or an integer >= 0, got {value!r}.")
    steps[name] = int(value) if value else None
  begin, end = steps["begin_step"] or 0, steps["end_step"]
  check(end is None or begin <= end, "config.eval.begin_step",
        f"{begin} is after config.eval.end_step={end}; swap them, or set end_step=0 for the latest.")
  check(isinstance(e["wait"], bool), "config.eval.wait", f"must be True or False, got {e['wait']!r}.")
  timeout = e["wait_timeout_seconds"]
  check(timeout is None or (is_number(timeout) and timeout > 0), "config.eval.wait_timeout_seconds",
        f"must be None (wait until end_step) or a number > 0, got {timeout!r}.")
  bpd_n = e["bpd_num_examples"]
  check(bpd_n is None or (is_int(bpd_n) and bpd_n >= 0), "config.eval.bpd_num_examples",
        f"must be None (the whole split), 0 (skip) or an integer >= 1, got {bpd_n!r}.")
  check(e["bpd_divergence"] in likelihood.DIVERGENCES, "config.eval.bpd_divergence",
        f"unknown {e['bpd_divergence']!r}; choose one of {list(likelihood.DIVERGENCES)}.")
  for name in ("inception_path", "classifier_dir"):
    check(isinstance(e[name], str), f"config.eval.{name}", f"must be a path string, got {e[name]!r}.")
  check(isinstance(e["reference"], bool), "config.eval.reference", f"must be True or False, got {e['reference']!r}.")
  integer = functools.partial(int_field, e, prefix="config.eval")
  positive = functools.partial(positive_field, e, prefix="config.eval")
  return EvalOptions(
      begin_step=begin, end_step=end, wait=e["wait"], poll_seconds=positive("poll_seconds"),
      wait_timeout_seconds=None if timeout is None else float(timeout), batch_size=integer("batch_size", 1),
      num_loss_batches=integer("num_loss_batches", 0), bpd_num_examples=None if bpd_n is None else int(bpd_n),
      bpd_num_repeats=integer("bpd_num_repeats", 1), bpd_rtol=positive("bpd_rtol"), bpd_atol=positive("bpd_atol"),
      bpd_divergence=e["bpd_divergence"], num_samples=integer("num_samples", 0),
      sample_batch_size=integer("sample_batch_size", 1), features=e["features"], inception_path=e["inception_path"],
      classifier_dir=e["classifier_dir"], classifier=classifier_options(config),
      kid_subsets=integer("kid_subsets", 1), kid_subset_size=integer("kid_subset_size", 2),
      is_splits=integer("is_splits", 1), pr_k=integer("pr_k", 1), real_features_max=integer("real_features_max", 2),
      reference=e["reference"])



# --- config.posthoc -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class PosthocOptions:
  """``--mode=posthoc_ema`` (``config.posthoc``).

  Attributes:
    sigma_rels: the σ_rel of each profile to reconstruct (three decimals at most).
    step: the step the profiles end at; None: the last snapshot.
    max_error: the largest relative L2 error of a reconstructed profile that is accepted.
  """

  sigma_rels: tuple[float, ...]
  step: Optional[int]
  max_error: float


def posthoc_options(config: ConfigDict) -> PosthocOptions:
  """``config.posthoc`` (common's ``posthoc_section`` where a field or the section is missing), validated.

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  p = section(config, "posthoc", config_defaults.posthoc_section())
  field = "config.posthoc.sigma_rel"
  values = p["sigma_rel"]
  values = (values,) if is_number(values) else values
  check(isinstance(values, (tuple, list)) and len(values) >= 1, field,
        "names no σ_rel; give one value or a list, e.g. --config.posthoc.sigma_rel=0.08 or "
        "--config.posthoc.sigma_rel='(0.03,0.05,0.08,0.12)'.")
  sigma_rels = []
  for value in values:
    try:
      sigma_rels.append(ema_lib.check_sigma_rel(value, field))
    except ValueError as e:
      raise checks.ConfigError(str(e)) from None
  step = p["step"]
  check(step is None or (is_int(step) and step >= 1), "config.posthoc.step",
        f"must be None (the last snapshot) or an integer >= 1, got {step!r}.")
  max_error = p["max_error"]
  check(is_number(max_error) and 0 < max_error < 1, "config.posthoc.max_error",
        f"must be a number in (0, 1) (relative L2 error of a reconstructed profile), got {max_error!r}.")
  return PosthocOptions(sigma_rels=tuple(sorted(set(sigma_rels))), step=step, max_error=float(max_error))


# --- config.distill -----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DistillOptions:
  """``--mode=distill`` (``config.distill``; ``configs/common.distill_section`` documents each field).

  Attributes:
    teacher_workdir: the teacher's training run ("" when ``teacher_config`` is given).
    teacher_step: its step to load; None: the newest.
    teacher_params: which of its parameters ("ema", "raw", "power_<σ_rel>", "posthoc_<σ_rel>").
    teacher_config: instead of a run, a config file (``path.py[:variant]``) ...
    teacher_pretrained: ... and the converted export it describes.
    init: "teacher" (the student starts from the teacher's weights) or "random".
    loss: the keyword options of ``distillation.consistency_distillation_loss`` and its schedules
      (num_scales, start_scales, scale_schedule, target_ema, target_schedule, sigma_min,
      sigma_max, rho, metric, huber_c, weighting, index, p_mean, p_std).
  """

  teacher_workdir: str
  teacher_step: Optional[int]
  teacher_params: str
  teacher_config: str
  teacher_pretrained: str
  init: str
  loss: dict


INIT_KINDS = ("teacher", "random")


def _check_sampling_grid(config: ConfigDict, loss: dict) -> None:
  """The consistency sampler's grid (``config.sampling.consistency.num_scales``, when set) is the
  one the distillation ends on: its N(K) levels on the same σ range and ρ."""
  from score_jax import distillation  # pylint: disable=g-import-not-at-top
  sampling = config.get("sampling") or {}
  grid = sampling.get("consistency") or {}
  if sampling.get("method") != "consistency" or grid.get("num_scales") is None:
    return
  total = int(config.training.num_steps)
  final = int(distillation.num_scales_at(total, total, schedule=loss["scale_schedule"], num_scales=loss["num_scales"],
                                         start_scales=loss["start_scales"]))
  check(grid["num_scales"] == final, "config.sampling.consistency.num_scales",
        f"is {grid['num_scales']!r} but the distillation ends on N = {final} levels (config.distill.num_scales, "
        f"scale_schedule {loss['scale_schedule']!r}); set it to {final}, or to None to sample off the grid.")
  for name in ("sigma_min", "sigma_max", "rho"):
    value = grid.get(name)
    check(value is None or math.isclose(float(value), float(loss[name]), rel_tol=1e-6),
          f"config.sampling.consistency.{name}", f"is {value!r} but config.distill.{name} is {loss[name]!r}; the "
          "sampler's grid must be the distillation's: set both to the same value.")


def distill_options(config: ConfigDict, boundary_sigma: float) -> DistillOptions:
  """``config.distill`` validated; ``boundary_sigma`` is the student's ε (``Setup.boundary_sigma``).

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  from score_jax import distillation  # pylint: disable=g-import-not-at-top
  d = section(config, "distill", config_defaults.distill_section())
  workdir, teacher_config = str(d["teacher_workdir"] or ""), str(d["teacher_config"] or "")
  check(bool(workdir) != bool(teacher_config), "config.distill.teacher_workdir",
        "name the teacher: the folder of its training run (--config.distill.teacher_workdir=runs/digits_edm), or a "
        "config file and its converted export (--config.distill.teacher_config=... and teacher_pretrained=...), "
        "one of the two." if not (workdir and teacher_config) else
        "and config.distill.teacher_config are both set; give one of them.")
  check(not teacher_config or bool(d["teacher_pretrained"]), "config.distill.teacher_pretrained",
        "is empty; a teacher_config needs the converted export of its network (python -m score_jax.pretrained).")
  step = d["teacher_step"]
  check(step is None or (is_int(step) and step >= 0), "config.distill.teacher_step",
        f"must be None (the newest) or an integer >= 0, got {step!r}.")
  which = d["teacher_params"]  # checked against the teacher's own config when it is built
  check(isinstance(which, str) and bool(which), "config.distill.teacher_params",
        f"must be 'ema', 'raw', 'power_<σ_rel>' or 'posthoc_<σ_rel>', got {which!r}.")
  check(d["init"] in INIT_KINDS, "config.distill.init", f"unknown {d['init']!r}; choose one of {list(INIT_KINDS)}.")
  loss = {name: d[name] for name in ("num_scales", "start_scales", "scale_schedule", "target_ema", "target_schedule",
                                     "sigma_min", "sigma_max", "rho", "metric", "huber_c", "weighting", "index",
                                     "p_mean", "p_std")}
  try:
    distillation.check_options(**loss, prefix="config.distill.")
  except ValueError as e:
    raise checks.ConfigError(str(e)) from None
  check(math.isclose(float(loss["sigma_min"]), boundary_sigma, rel_tol=1e-6), "config.distill.sigma_min",
        f"is {loss['sigma_min']!r} but the student's config.model.boundary_sigma is {boundary_sigma!r}; the "
        "discretization must start at the boundary where f(x, ε) = x: set both to the same value.")
  _check_sampling_grid(config, loss)
  return DistillOptions(teacher_workdir=workdir, teacher_step=step, teacher_params=which,
                        teacher_config=teacher_config, teacher_pretrained=str(d["teacher_pretrained"] or ""),
                        init=d["init"], loss=loss)
