"""Typed records of sample-time control: ``config.guidance`` (class guidance) and
``config.controllable`` (inpainting and colorization inputs, masks and method).

``guidance_options(config, setup)`` and ``controllable_options(config, mode)`` check every field
against its section of ``configs/common.py`` (the single source of defaults) and, for
guidance, against the components (labels inside the data's classes, a model that can do
classifier-free guidance), raising ``ConfigError`` naming the field before anything compiles.
``score_jax.jobs.control`` turns them into a ``Control``.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Optional

import numpy as np

from configs import common as config_defaults
from score_jax import guidance as guidance_lib
from score_jax.experiment import checks
from score_jax.experiment.checks import ConfigDict, check, is_int, is_number
from score_jax.experiment.components import Setup
from score_jax.experiment.data import ImageData
from score_jax.experiment.options import section

GUIDANCE_KINDS = ("none", "classifier", "cfg", "autoguidance")
_STRATEGY_FIELDS = ("strategy", "scale", "scale_start", "scale_end", "sigma_min", "sigma_max", "sigma_lo", "sigma_hi",
                    "ratio", "sigma_classifier_max")
# The fields each strategy reads (recorded in metrics.json); sigma_classifier_max applies to all.
_USED_FIELDS = {"constant": ("scale",), "linear": ("scale_start", "scale_end", "sigma_min", "sigma_max"),
                "truncated": ("scale", "sigma_lo", "sigma_hi"), "norm_ratio": ("ratio",)}


# --- config.guidance ----------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class GuidanceOptions:
  """``config.guidance``, validated against the components.

  Attributes:
    kind: one of ``GUIDANCE_KINDS``.
    labels: requested classes int32 [L] (sample j asks for labels[j mod L]); empty for "none".
    w: classifier-free guidance's or autoguidance's weight.
    strategy: classifier guidance's ``guidance.Guidance`` (None for other kinds).
    classifier_dir: ``config.noisy_classifier.dir`` ("" : ``<workdir>/noisy_classifier``).
    record: the fields in use, for metrics.json.
    sigma_interval: (σ_lo, σ_hi): guidance only for σ_lo < σ ≤ σ_hi; None: every σ.
    guide_workdir, guide_step: autoguidance's guiding run ("": this workdir) and step (None: its latest).
  """

  kind: str
  labels: np.ndarray
  w: float = 1.0
  strategy: Optional[guidance_lib.Guidance] = None
  classifier_dir: str = ""
  record: dict = dataclasses.field(default_factory=dict)
  sigma_interval: Optional[tuple[float, float]] = None
  guide_workdir: str = ""
  guide_step: Optional[int] = None


def _labels(labels: Any, num_classes: int) -> np.ndarray:
  if is_int(labels):
    labels = (labels,)
  check(isinstance(labels, (tuple, list)) and all(is_int(k) for k in labels), "config.guidance.labels",
        f"must be a tuple of class ids, got {labels!r}.")
  bad = [k for k in labels if not 0 <= k < num_classes]
  check(not bad, "config.guidance.labels",
        f"class {bad[0] if bad else ''} is outside the {num_classes} classes of the data (0 … {num_classes - 1}).")
  return np.asarray(labels or range(num_classes), np.int32)


def guidance_options(config: ConfigDict, setup: Setup) -> GuidanceOptions:
  """``config.guidance`` over common's ``guidance_section``, checked against ``setup``.

  Raises:
    ConfigError: an unknown kind or field, a label outside the classes, CFG on a model that
      has no null label, a bad strategy number.
  """
  g = section(config, "guidance", config_defaults.guidance_section())
  kind = g["kind"]
  check(kind in GUIDANCE_KINDS, "config.guidance.kind", f"unknown {kind!r}; choose one of {list(GUIDANCE_KINDS)}.")
  if kind == "none":
    return GuidanceOptions("none", np.zeros((0,), np.int32))
  interval = g["sigma_interval"]
  try:
    interval = guidance_lib.check_interval(None if interval is None else tuple(interval))
  except (ValueError, TypeError) as e:
    raise checks.ConfigError(f"config.guidance.sigma_interval: {e}") from None
  limited = {} if interval is None else {"sigma_interval": list(interval)}
  if kind == "autoguidance":
    return _autoguidance_options(g, setup, interval, limited)
  data = setup.data
  check(isinstance(data, ImageData), "config.guidance.kind",
        "class guidance needs labelled image data; toy targets have no classes.")
  num_classes = int(data.num_classes)
  check(num_classes >= 2, "config.guidance.kind", f"the data have {num_classes} class(es); guidance needs >= 2.")
  labels = _labels(g["labels"], num_classes)
  if kind == "cfg":
    check(setup.num_classes > 0, "config.guidance.kind",
          "'cfg' needs a class-conditional model trained with a null label (config.model.class_conditional=True and "
          "config.training.label_dropout > 0, e.g. configs/ve/digits_cond.py); this model is unconditional.")
    check(setup.label_dropout > 0, "config.training.label_dropout",
          "is 0, so the null label of this model was never trained and 'cfg' has no unconditional score; train "
          "with label_dropout > 0 (e.g. 0.1).")
    w = g["w"]
    check(is_number(w) and w >= 0, "config.guidance.w", f"must be a number >= 0, got {w!r}.")
    return GuidanceOptions("cfg", labels, w=float(w), sigma_interval=interval,
                           record={"kind": kind, "w": float(w), "labels": labels.tolist(), **limited})
  fields = {name: g[name] for name in _STRATEGY_FIELDS}
  with checks.config_field("config.guidance"):
    strategy = guidance_lib.Guidance(**fields, sigma_interval=interval)
    if strategy.strategy == "linear":
      strategy.lambda_fn(setup.sde)  # checks the σ range against the SDE's
  directory = section(config, "noisy_classifier", config_defaults.noisy_classifier_section())["dir"]
  check(isinstance(directory, str), "config.noisy_classifier.dir", f"must be a path string, got {directory!r}.")
  used = ("strategy", *_USED_FIELDS[strategy.strategy], "sigma_classifier_max")
  record = {"kind": kind, **{k: fields[k] for k in used if fields[k] is not None}, "labels": labels.tolist(), **limited}
  return GuidanceOptions("classifier", labels, strategy=strategy, classifier_dir=directory, record=record,
                         sigma_interval=interval)


def _autoguidance_options(g: dict, setup: Setup, interval: Optional[tuple[float, float]],
                          limited: dict) -> GuidanceOptions:
  """Autoguidance: the weight, the guiding run and step; labels only for a class-conditional model."""
  w = g["w"]
  check(is_number(w) and w >= 0, "config.guidance.w", f"must be a number >= 0 (0: no guidance), got {w!r}.")
  workdir, step = g["guide_workdir"], g["guide_step"]
  check(isinstance(workdir, str), "config.guidance.guide_workdir", f"must be a path string, got {workdir!r}.")
  check(step is None or (is_int(step) and step >= 0), "config.guidance.guide_step",
        f"must be None (the guiding run's latest) or an integer >= 0, got {step!r}.")
  check(workdir or step is not None, "config.guidance.guide_step",
        "autoguidance needs a worse model: set guide_step to an earlier checkpoint of this run, or guide_workdir "
        "to another run (e.g. a smaller network).")
  labels = _labels(g["labels"], setup.num_classes) if setup.num_classes else np.zeros((0,), np.int32)
  record = {"kind": "autoguidance", "w": float(w), "guide_workdir": workdir, "guide_step": step, **limited}
  if setup.num_classes:
    record["labels"] = labels.tolist()
  return GuidanceOptions("autoguidance", labels, w=float(w), record=record, sigma_interval=interval,
                         guide_workdir=workdir, guide_step=step)


# --- config.controllable ------------------------------------------------------------------
CONTROLLABLE_MODES = ("inpaint", "colorize")
INPUTS = ("test", "train", "folder")
MASKS = ("box", "half", "random_patches", "png")
HALVES = ("left", "right", "top", "bottom")
METHODS = ("replacement", "repaint", "posterior")
FIELD = "config.controllable"


@dataclasses.dataclass(frozen=True)
class ControllableOptions:
  """``config.controllable``, validated (``configs/common.py`` documents each field)."""

  inputs: str
  input_path: str
  first_input: int
  num_inputs: int
  samples_per_input: int
  mask: str
  box: Optional[tuple[int, int, int, int]]
  half: str
  num_patches: int
  patch_size: Optional[int]
  mask_seed: int
  mask_path: str
  resample: int
  method: str = "replacement"
  covariance: str = "isotropic"
  guidance_scale: float = 1.0
  data_variance: float = 1.0


def controllable_options(config: ConfigDict, mode: str) -> ControllableOptions:
  """``config.controllable`` as ``ControllableOptions``; a bad field is a ConfigError naming it."""
  check(mode in CONTROLLABLE_MODES, "mode", f"unknown {mode!r}; choose one of {list(CONTROLLABLE_MODES)}.")
  check("controllable" in config, FIELD,
        "missing; image configs get it from configs/common.py (base_config), toy configs have no images.")
  c = section(config, "controllable", config_defaults.controllable_section())
  integer = lambda name, low: checks.int_field(c, name, low, FIELD)  # noqa: E731
  check(c["inputs"] in INPUTS, f"{FIELD}.inputs", f"unknown {c['inputs']!r}; choose one of {list(INPUTS)}.")
  path = c["input_path"] or ""
  check(c["inputs"] != "folder" or bool(path), f"{FIELD}.input_path",
        "not set; inputs='folder' reads the images of this folder.")
  mask = c["mask"]
  check(mode != "inpaint" or mask in MASKS, f"{FIELD}.mask", f"unknown {mask!r}; choose one of {list(MASKS)}.")
  box = c["box"]
  if box is not None:
    check(isinstance(box, (tuple, list)) and len(box) == 4 and all(is_int(v) for v in box),
          f"{FIELD}.box", f"must be (top, left, height, width) in pixels or None, got {box!r}.")
    box = tuple(int(v) for v in box)
  half = c["half"]
  check(mode != "inpaint" or mask != "half" or half in HALVES, f"{FIELD}.half",
        f"unknown {half!r}; choose the half to fill from {list(HALVES)}.")
  patch_size = c["patch_size"]
  check(patch_size is None or (is_int(patch_size) and patch_size >= 1), f"{FIELD}.patch_size",
        f"must be an integer >= 1 or None (a quarter of the side), got {patch_size!r}.")
  mask_path = c["mask_path"] or ""
  check(mode != "inpaint" or mask != "png" or bool(mask_path), f"{FIELD}.mask_path",
        "not set; mask='png' reads an image-sized mask (white = fill, black = keep).")
  method = c["method"]
  check(method in METHODS, f"{FIELD}.method", f"unknown {method!r}; choose one of {list(METHODS)}.")
  resample = integer("resample", 1)
  check(method != "replacement" or resample == 1, f"{FIELD}.resample",
        f"{resample} repetitions of every step is RePaint; set {FIELD}.method='repaint' (replacement repeats nothing).")
  check(method != "repaint" or resample >= 2, f"{FIELD}.resample",
        f"method 'repaint' repeats every step resample >= 2 times, got {resample}.")
  covariance = c["covariance"]
  check(covariance in guidance_lib.COVARIANCES, f"{FIELD}.covariance",
        f"unknown {covariance!r}; choose one of {list(guidance_lib.COVARIANCES)}.")
  scale, variance = c["guidance_scale"], c["data_variance"]
  check(is_number(scale) and scale >= 0, f"{FIELD}.guidance_scale", f"must be a number >= 0, got {scale!r}.")
  check(is_number(variance) and variance > 0, f"{FIELD}.data_variance", f"must be a number > 0, got {variance!r}.")
  return ControllableOptions(
      inputs=c["inputs"], input_path=path, first_input=integer("first_input", 0), num_inputs=integer("num_inputs", 1),
      samples_per_input=integer("samples_per_input", 1), mask=mask, box=box, half=half,
      num_patches=integer("num_patches", 1), patch_size=patch_size, mask_seed=integer("mask_seed", 0),
      mask_path=mask_path, resample=resample, method=method, covariance=covariance, guidance_scale=float(scale),
      data_variance=float(variance))
