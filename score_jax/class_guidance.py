"""Class-guided sampling from a config: ``config.guidance`` -> a guided score for every sample.

    # classifier guidance of an unconditional model by its noise-conditional classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_noisy_classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=sample \
        --config.guidance.kind=classifier --config.guidance.strategy=norm_ratio --config.guidance.ratio=0.5
    # classifier-free guidance of a class-conditional model trained with a null label
    python main.py --config=configs/ve/digits_cond.py --workdir=runs/digits_cond --mode=sample \
        --config.guidance.kind=cfg --config.guidance.w=3

``config.guidance`` (``DEFAULTS`` documents each field):

* ``kind="classifier"``: s(x, t) + λ(σ) ∇_x log p_t(y | x) with the trained noise-conditional
  classifier of ``--mode=train_noisy_classifier`` (``config.noisy_classifier.dir``, default
  ``<workdir>/noisy_classifier``) and the strategies of ``score_jax.guidance.Guidance``
  (the report's §5.3: constant, linear, truncated; and norm_ratio).  A class-conditional
  score model is used with its null label (its unconditional score).
* ``kind="cfg"``: classifier-free guidance (Ho & Salimans 2022), (1 + w) s(x, t, y) − w s(x, t, ∅),
  for a class-conditional model trained with ``training.label_dropout`` > 0.

Sample j asks for class ``labels[j mod len(labels)]`` (default labels 0 … K−1, so a K-column
grid has one class per column).  Every check (the kind, the labels against the classes, a
classifier that exists and was trained on these data under this SDE, a model that can do
CFG, the strategy's numbers) runs before anything compiles.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import classifiers
from score_jax import experiment
from score_jax import guidance as guidance_lib

Array = Any
ConfigDict = ml_collections.ConfigDict
check = experiment.check

KINDS = ("none", "classifier", "cfg")

# What ``config.guidance`` holds; configs/common.py sets the same fields.
DEFAULTS: dict[str, Any] = dict(
    kind="none",  # "none", "classifier" (noise-conditional classifier) or "cfg" (classifier-free)
    labels=(),  # requested classes, cycled over the samples; empty: 0 … K−1
    strategy="constant",  # classifier guidance: constant | linear | truncated | norm_ratio
    scale=1.0,  # λ of constant / truncated
    scale_start=500.0,  # linear: λ at σ_max (the report: 500)
    scale_end=400.0,  # linear: λ at σ_min (the report: 400)
    sigma_min=None,  # linear: σ range of the ramp; None: the SDE's σ̃(eps), σ̃(T)
    sigma_max=None,
    sigma_lo=0.0,  # truncated: guidance only for sigma_lo <= σ <= sigma_hi
    sigma_hi=math.inf,
    ratio=1.0,  # norm_ratio: ‖λ ∇log p_t(y|x)‖ = ratio · ‖s(x, t)‖
    sigma_classifier_max=None,  # evaluate the classifier at min(σ, this); None: at σ
    w=1.0,  # cfg: guidance weight (0: the conditional score)
)
_STRATEGY_FIELDS = ("strategy", "scale", "scale_start", "scale_end", "sigma_min", "sigma_max", "sigma_lo", "sigma_hi",
                    "ratio", "sigma_classifier_max")
# The fields each strategy reads (recorded in metrics.json); sigma_classifier_max applies to all.
_USED_FIELDS = {"constant": ("scale",), "linear": ("scale_start", "scale_end", "sigma_min", "sigma_max"),
                "truncated": ("scale", "sigma_lo", "sigma_hi"), "norm_ratio": ("ratio",)}


@dataclasses.dataclass(frozen=True)
class Guide:
  """A guided score for ``sample.make_sampler``: ``guide(params, index) -> score_fn``.

  Attributes:
    kind: "classifier" or "cfg".
    labels: the requested classes, int32 [L]; sample j asks for labels[j mod L].
    num_classes: K.
    extra_params: what the guided score needs besides the score model's parameters (the
      classifier's parameters), passed through the compiled sampler as an argument.
    make: ``make((params, extra_params), labels [b]) -> score_fn``.
    options: the validated ``config.guidance`` fields in use (for metrics.json).
  """

  kind: str
  labels: np.ndarray
  num_classes: int
  extra_params: Any
  make: Callable[[Any, Array], Callable[[Array, Array], Array]]
  options: dict

  def sampler_params(self, params: Any) -> Any:
    """What to give the sampler's ``draw`` in place of the score model's ``params``."""
    return (params, self.extra_params)

  def labels_of(self, index: Array) -> Array:
    """Requested classes [b] of the samples at positions ``index`` [b]."""
    table = jnp.asarray(self.labels)
    return table[jnp.asarray(index) % table.shape[0]]

  def __call__(self, both: Any, index: Array) -> Callable[[Array, Array], Array]:
    return self.make(both, self.labels_of(index))

  def sample_labels(self, num_samples: int) -> np.ndarray:
    """The requested class of each of ``num_samples`` samples, int32 [N]."""
    return self.labels[np.arange(num_samples) % self.labels.shape[0]]


def guidance_options(config: ConfigDict) -> dict[str, Any]:
  """``config.guidance`` over ``DEFAULTS``, unknown fields refused (ConfigError naming them)."""
  return experiment.merge_defaults(DEFAULTS, experiment.as_dict(config.get("guidance")), "config.guidance")


def _labels(g: dict[str, Any], num_classes: int) -> np.ndarray:
  labels = g["labels"]
  if isinstance(labels, int) and not isinstance(labels, bool):
    labels = (labels,)
  check(isinstance(labels, (tuple, list)) and all(experiment.is_int(k) for k in labels), "config.guidance.labels",
        f"must be a tuple of class ids, got {labels!r}.")
  bad = [k for k in labels if not 0 <= k < num_classes]
  check(not bad, "config.guidance.labels",
        f"class {bad[0] if bad else ''} is outside the {num_classes} classes of the data (0 … {num_classes - 1}).")
  return np.asarray(labels or range(num_classes), np.int32)


def build_guide(config: ConfigDict, setup: experiment.Setup, workdir: str) -> Optional[Guide]:
  """The guide of ``config.guidance``, or None for ``kind="none"`` (or no section).

  Raises:
    ConfigError: an unknown kind or field, a label outside the classes, CFG on a model that
      has no null label, a bad strategy number, a classifier trained on other data or SDE.
    FileNotFoundError: classifier guidance without a trained noise-conditional classifier.
  """
  g = guidance_options(config)
  kind = g["kind"]
  check(kind in KINDS, "config.guidance.kind", f"unknown {kind!r}; choose one of {list(KINDS)}.")
  if kind == "none":
    return None
  data = setup.data
  check(isinstance(data, experiment.ImageData), "config.guidance.kind",
        "class guidance needs labelled image data; toy targets have no classes.")
  num_classes = int(data.num_classes)
  check(num_classes >= 2, "config.guidance.kind", f"the data have {num_classes} class(es); guidance needs >= 2.")
  labels = _labels(g, num_classes)
  sde = setup.sde

  if kind == "cfg":
    check(setup.num_classes > 0, "config.guidance.kind",
          "'cfg' needs a class-conditional model trained with a null label (config.model.class_conditional=True and "
          "config.training.label_dropout > 0, e.g. configs/ve/digits_cond.py); this model is unconditional.")
    check(setup.label_dropout > 0, "config.training.label_dropout",
          "is 0, so the null label of this model was never trained and 'cfg' has no unconditional score; train "
          "with label_dropout > 0 (e.g. 0.1).")
    w = g["w"]
    check(experiment.is_number(w) and w >= 0, "config.guidance.w", f"must be a number >= 0, got {w!r}.")

    def make_cfg(both, y):
      params, _ = both
      labeled = lambda x, t, lab: setup.score_fn(params, lab)(x, t)
      return guidance_lib.classifier_free_guidance(labeled, y, w=float(w), null_label=setup.num_classes)

    return Guide("cfg", labels, num_classes, None, make_cfg, {"kind": kind, "w": float(w), "labels": labels.tolist()})

  fields = {name: g[name] for name in _STRATEGY_FIELDS}
  with experiment.config_field("config.guidance"):
    strategy = guidance_lib.Guidance(**fields)
    if strategy.strategy == "linear":
      strategy.lambda_fn(sde)  # checks the σ range against the SDE's
  path = classifiers.noisy_classifier_dir(config, workdir)
  classifier = classifiers.load_noisy_classifier(path, data, config)

  def make_classifier(both, y):
    params, classifier_params = both

    def log_prob_fn(x, t):
      logits = classifier.model.apply({"params": classifier_params}, x, sde.noise_level(t))  # [B, K]
      return jax.nn.log_softmax(logits, axis=-1)

    return guidance_lib.classifier_guidance(setup.score_fn(params, None), log_prob_fn, y, sde=sde, guidance=strategy)

  used = ("strategy", *_USED_FIELDS[strategy.strategy], "sigma_classifier_max")
  options = {"kind": kind, **{k: fields[k] for k in used if fields[k] is not None}, "labels": labels.tolist(),
             "classifier_dir": path}
  return Guide("classifier", labels, num_classes, classifier.params, make_classifier, options)


__all__ = ["DEFAULTS", "Guide", "KINDS", "build_guide", "guidance_options"]
