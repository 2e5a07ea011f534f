"""How well inpainting and colorization samples keep what is known and fill the rest: the
metrics.json of ``--mode=inpaint`` / ``--mode=colorize`` (``jobs.observations``)."""

from __future__ import annotations

import os
from typing import Any, Optional

import jax
import numpy as np

from score_jax import experiment
from score_jax.data import embedded
from score_jax.jobs import classifiers
from score_jax.jobs import control as control_lib
from score_jax.jobs import features
from score_jax.jobs.observations import Problem, method_record


# --- metrics and the picture ------------------------------------------------------------------
def constraint_metrics(problem: Problem, samples: np.ndarray, data_range: tuple[float, float]) -> dict[str, Any]:
  """How well the samples [n, k, H, W, C] keep what is known, and how they fill the rest.

  Returns (inpaint) ``known_max_abs_error`` over kept pixels; (colorize) ``luminance_max_abs_error``
  of the channel mean against the input's; both: ``sampled_mae_to_original`` (mean |x − original|
  over the sampled part: pixels to fill, or all RGB values for colorize), ``sample_spread``
  (mean over that part of the std between an input's samples; 0 when k = 1),
  ``out_of_range_fraction`` and ``nonfinite_fraction``.
  """
  x = samples.astype(np.float64)
  orig = problem.originals.astype(np.float64)[:, None]  # [n, 1, H, W, C]
  lo, hi = data_range
  out: dict[str, Any] = {"nonfinite_fraction": float(1.0 - np.isfinite(x).mean()),
                         "out_of_range_fraction": float(np.mean((x < lo) | (x > hi)))}
  err = np.abs(x - orig)  # [n, k, H, W, C]
  spread = x.std(axis=1) if x.shape[1] > 1 else np.zeros_like(x[:, 0])  # [n, H, W, C]
  if problem.mode == "inpaint":
    fill = np.broadcast_to(problem.fill[:, None, :, :, None], x.shape)
    out["known_max_abs_error"] = float(err[~fill].max()) if (~fill).any() else 0.0
    out["filled_fraction"] = float(problem.fill.mean())
    out["sampled_mae_to_original"] = float(err[fill].mean())
    out["sample_spread"] = float(spread[np.broadcast_to(problem.fill[..., None], spread.shape)].mean())
  else:
    out["luminance_max_abs_error"] = float(np.abs(x.mean(axis=-1) - orig.mean(axis=-1)).max())
    out["sampled_mae_to_original"] = float(err.mean())
    out["sample_spread"] = float(spread.mean())
  return out


def classifier_accuracy(opts: experiment.ClassifierOptions, workdir: str, data: experiment.ImageData,
                        labels: Optional[np.ndarray], *, requested: Optional[np.ndarray] = None,
                        **images: np.ndarray) -> dict[str, Any]:
  """Accuracy of the in-domain classifier (``--mode=train_classifier``) on each named image set.

  Args:
    opts, workdir: where the classifier is (``config.eval.classifier_dir`` or ``<workdir>/classifier``).
    data: the image data the model was trained on.
    labels: [n] true labels; None (inputs from a folder): nothing is measured.
    requested: [m·n] the classes class-guided samples asked for, or None.
    **images: name -> [m·n, H, W, C] in the data range, rows in input order (each input m times).

  Returns:
    {"classifier_accuracy": {name: accuracy}} (with ``requested``, also
    "requested_class_accuracy": how often the samples are classified as the class they asked
    for) or, when it cannot be measured,
    {"classifier_accuracy": None, "classifier_note": why}.
  """
  if labels is None:
    return {"classifier_accuracy": None, "classifier_note": "inputs from a folder have no labels"}
  path = classifiers.resolve_dir(opts.dir, workdir, "classifier")
  try:
    model, params, _ = classifiers.load_classifier(path, data)
  except (FileNotFoundError, experiment.ConfigError) as e:
    return {"classifier_accuracy": None, "classifier_note": str(e)}
  apply = jax.jit(lambda u: model.apply({"params": params}, u)["logits"])
  levels, dequantized = int(data.info.levels), bool(data.train.uniform_dequantization)
  accuracy, out = {}, {"classifier_dir": path}
  for name, x in images.items():
    k = embedded.to_unit_interval(features.to_levels(np.nan_to_num(x), levels=levels, data_range=data.data_range,
                                                     dequantized=dequantized), levels=levels)
    predicted = np.argmax(np.asarray(apply(k)), axis=-1)  # [m·n]
    accuracy[name] = float(np.mean(predicted == np.repeat(labels, len(x) // len(labels))))
    if requested is not None and name == "samples":
      out["requested_class_accuracy"] = float(np.mean(predicted == requested))
  return {"classifier_accuracy": accuracy, **out}


def metrics_of(mode: str, step: int, run: int, workdir: str, problem: Problem, opts: experiment.ControllableOptions,
               setup: experiment.Setup, control: control_lib.Control, samples: np.ndarray, timing: dict[str, Any], *,
               classifier: experiment.ClassifierOptions) -> dict[str, Any]:
  """The metrics.json of an inpainting or colorization run (see ``constraint_metrics`` and
  ``classifier_accuracy``), with the method, the sampler and the control's record."""
  n, m = samples.shape[:2]
  flat = samples.reshape((n * m,) + samples.shape[2:])
  metrics = {"mode": mode, "step": step, "run": run, "workdir": os.path.abspath(workdir), "source": problem.source,
             "input_indices": problem.indices, "num_inputs": n, "samples_per_input": m, **timing,
             "resample": opts.resample, "sampling": {"method": setup.sampling_method, **setup.sampling_options},
             **method_record(opts), **control.record}
  metrics.update(constraint_metrics(problem, samples, setup.data.data_range))
  metrics.update(classifier_accuracy(classifier, workdir, setup.data, problem.labels,
                                     requested=control.sample_labels(n * m) if control.labels is not None else None,
                                     original=problem.originals, masked_or_gray_input=problem.shown, samples=flat))
  return metrics


def mask_record(opts: experiment.ControllableOptions) -> dict[str, Any]:
  """What metrics.json says of an inpainting mask."""
  detail = {"box": opts.box, "half": opts.half, "png": opts.mask_path,
            "random_patches": {"num_patches": opts.num_patches, "patch_size": opts.patch_size,
                               "mask_seed": opts.mask_seed}}[opts.mask]
  return {"mask": {"kind": opts.mask, "detail": detail}}

