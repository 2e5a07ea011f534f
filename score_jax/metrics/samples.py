"""Metrics comparing samples with an analytic target (``score_jax.data.toy``)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

Array = Any


def mode_statistics(x: Array, target, *, outlier_sigmas: float = 5.0, min_share: float = 0.5) -> dict:
  """Per-mode statistics of samples against a ``GaussianMixture`` target.

  Each sample goes to its nearest component mean.  A sample whose standardised
  distance to that mean, ‖(x − μ_k)/σ_k‖₂/√D, exceeds ``outlier_sigmas`` is an
  outlier; the rest give each mode's share, mean and std.

  Returns a dict of numpy arrays / floats:
    share [K], mean [K, D], std [K, D] (NaN for an empty mode), outlier_fraction,
    share_rel_error [K] = |share/w − 1|, mean_error [K] = max_d |mean − μ|,
    std_rel_error [K] = max_d |std/σ − 1|, coverage = fraction of modes whose share is
    at least ``min_share`` × their weight, and the worst of each error.
  """
  x = np.asarray(x, np.float64)
  means = np.asarray(target.means, np.float64)
  stds = np.asarray(target.stds, np.float64)
  weights = np.asarray(target.weights, np.float64)
  k, d = means.shape
  if x.ndim != 2 or x.shape[1] != d:
    raise ValueError(f"mode_statistics: samples must have shape [N, {d}], got {x.shape}.")
  finite = np.all(np.isfinite(x), axis=1)
  labels = np.asarray(target.assign(jnp.asarray(np.where(finite[:, None], x, 0.0), jnp.float32)))
  z = (x - means[labels]) / stds[labels]
  dist = np.sqrt(np.mean(z**2, axis=1))
  inlier = finite & (dist <= outlier_sigmas)
  n = x.shape[0]
  share = np.zeros(k)
  mode_mean = np.full((k, d), np.nan)
  mode_std = np.full((k, d), np.nan)
  for j in range(k):
    sel = x[inlier & (labels == j)]
    share[j] = sel.shape[0] / n
    if sel.shape[0] > 1:
      mode_mean[j] = sel.mean(axis=0)
      mode_std[j] = sel.std(axis=0, ddof=1)
  share_rel_error = np.abs(share / weights - 1.0)
  mean_error = np.max(np.abs(mode_mean - means), axis=1)
  std_rel_error = np.max(np.abs(mode_std / stds - 1.0), axis=1)
  return {
      "share": share,
      "mean": mode_mean,
      "std": mode_std,
      "outlier_fraction": float(1.0 - inlier.mean()),
      "share_rel_error": share_rel_error,
      "mean_error": mean_error,
      "std_rel_error": std_rel_error,
      "coverage": float(np.mean(share >= min_share * weights)),
      "max_share_rel_error": float(np.max(share_rel_error)),
      "max_mean_error": float(np.nanmax(mean_error)) if np.any(np.isfinite(mean_error)) else float("nan"),
      "max_std_rel_error": float(np.nanmax(std_rel_error)) if np.any(np.isfinite(std_rel_error)) else float("nan"),
  }
