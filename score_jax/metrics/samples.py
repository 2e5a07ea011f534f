"""Metrics comparing samples with an analytic target (``score_jax.data.toy``) or with
another set of samples: per-mode statistics, sliced Wasserstein-2, MMD and NLL."""

from __future__ import annotations

import functools
from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.data import toy

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


def _as_samples(name: str, x: Array, min_n: int) -> jnp.ndarray:
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2 or x.shape[0] < min_n:
    raise ValueError(f"{name} must have shape [N, D] with N >= {min_n}, got {x.shape}.")
  return x


def _pair(fn: str, x: Array, y: Array, min_n: int = 2) -> tuple[jnp.ndarray, jnp.ndarray]:
  x, y = _as_samples(f"{fn}: x", x, min_n), _as_samples(f"{fn}: y", y, min_n)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"{fn}: x and y must have the same dimension, got {x.shape[1]} and {y.shape[1]}.")
  return x, y


def _quantiles(proj: jnp.ndarray, num_levels: int) -> jnp.ndarray:
  """Empirical quantiles of each column of proj [N, P] at levels (i + ½)/L -> [L, P].

  The i-th of N sorted values sits at level (i + ½)/N; in between, linear interpolation
  (constant beyond the ends).  For L = N this returns the sorted values themselves.
  """
  n = proj.shape[0]
  srt = jnp.sort(proj, axis=0)  # [N, P]
  if num_levels == n:
    return srt
  pos = np.clip((np.arange(num_levels) + 0.5) * (n / num_levels) - 0.5, 0, n - 1)  # [L], static
  lo = np.floor(pos).astype(np.int32)
  hi = np.minimum(lo + 1, n - 1)
  frac = jnp.asarray(pos - lo, proj.dtype)[:, None]  # [L, 1]
  return (1.0 - frac) * srt[lo] + frac * srt[hi]


@functools.partial(jax.jit, static_argnames="num_projections")
def _sliced_w2(key: jax.Array, x: jnp.ndarray, y: jnp.ndarray, num_projections: int) -> jnp.ndarray:
  dirs = jax.random.normal(key, (x.shape[1], num_projections))
  dirs = dirs / jnp.linalg.norm(dirs, axis=0, keepdims=True)  # [D, P], uniform on the sphere
  levels = max(x.shape[0], y.shape[0])
  qx = _quantiles(x @ dirs, levels)  # [L, P]
  qy = _quantiles(y @ dirs, levels)  # [L, P]
  return jnp.sqrt(jnp.mean((qx - qy) ** 2))


def sliced_wasserstein(key: jax.Array, x: Array, y: Array, *, num_projections: int = 128) -> float:
  """Sliced Wasserstein-2 distance between two sample sets (Rabin et al. 2011).

  SW₂(x, y)² = E_u[W₂²(u·x, u·y)] for u uniform on the unit sphere, estimated with
  ``num_projections`` random directions; the 1-D W₂² is the mean squared difference of
  the sorted projections.  For sets of unequal size N ≠ M both empirical quantile
  functions are evaluated, by linear interpolation between order statistics, at the
  max(N, M) levels (i + ½)/max(N, M); for N = M this is exactly the sorted-sample formula.

  For x ~ N(0, I) and y ~ N(δ, I) in D dimensions the population value is
  SW₂² = E_u[(δ·u)²] = ‖δ‖²/D.

  Args:
    key: PRNG key for the directions.
    x: [N, D] samples (numpy or jax), N >= 1.
    y: [M, D] samples, M >= 1.
    num_projections: number of random directions, >= 1.

  Returns:
    The estimate of SW₂ as a Python float.
  """
  if num_projections < 1:
    raise ValueError(f"sliced_wasserstein: num_projections must be >= 1, got {num_projections}.")
  x, y = _pair("sliced_wasserstein", x, y, min_n=1)
  return float(_sliced_w2(key, x, y, num_projections))


def median_bandwidth(x: Array, y: Array) -> float:
  """The median heuristic: median distance between distinct points of the pooled sample.

  Args:
    x: [N, D] samples.
    y: [M, D] samples.

  Returns:
    The median pairwise Euclidean distance as a Python float.
  """
  z = jnp.concatenate(_pair("median_bandwidth", x, y))  # [N + M, D]
  d2 = _sq_dists(z, z)
  off_diag = ~jnp.eye(z.shape[0], dtype=bool)
  return float(jnp.median(jnp.sqrt(d2[off_diag])))


def _sq_dists(a: jnp.ndarray, b: jnp.ndarray) -> jnp.ndarray:
  """Pairwise squared distances [N, M], exactly 0 on identical rows."""
  return jnp.sum((a[:, None, :] - b[None, :, :]) ** 2, axis=-1)


@jax.jit
def _mmd2_unbiased(x: jnp.ndarray, y: jnp.ndarray, bandwidths: jnp.ndarray) -> jnp.ndarray:
  def kernel(a, b):  # Σ_h exp(−‖a − b‖²/(2h²)): [N, M]
    d2 = _sq_dists(a, b)
    return jnp.sum(jnp.exp(-d2[..., None] / (2.0 * bandwidths**2)), axis=-1)

  def mean_off_diag(k):
    n = k.shape[0]
    return (jnp.sum(k) - jnp.trace(k)) / (n * (n - 1))

  return mean_off_diag(kernel(x, x)) + mean_off_diag(kernel(y, y)) - 2.0 * jnp.mean(kernel(x, y))


def mmd(x: Array, y: Array, *, bandwidths: Optional[Sequence[float]] = None) -> float:
  """Unbiased estimate of the squared maximum mean discrepancy (Gretton et al. 2012, eq. 3).

  MMD² = E k(x, x') + E k(y, y') − 2 E k(x, y) with the sum of RBF kernels
  k(a, b) = Σ_h exp(−‖a − b‖²/(2h²)); the within-set terms leave out i = j, so the
  estimate has mean 0 when x and y come from one distribution and can be negative.

  Args:
    x: [N, D] samples (numpy or jax), N >= 2.
    y: [M, D] samples, M >= 2.
    bandwidths: length scales h; by default h₀·(½, 1, 2) with h₀ the median heuristic
      (``median_bandwidth``), computed on the pooled samples.

  Returns:
    The MMD² estimate as a Python float.
  """
  x, y = _pair("mmd", x, y)
  if bandwidths is None:
    bandwidths = median_bandwidth(x, y) * np.array([0.5, 1.0, 2.0])
  bandwidths = jnp.asarray(bandwidths, jnp.float32).reshape(-1)
  if bandwidths.size == 0 or not bool(jnp.all(bandwidths > 0)):
    raise ValueError(f"mmd: bandwidths must be a non-empty list of positive numbers, got {bandwidths}.")
  return float(_mmd2_unbiased(x, y, bandwidths))


def nll(x: Array, target) -> float:
  """Mean negative log-likelihood −(1/N) Σ log p(x_i) of samples under a toy target.

  For the target's own samples this estimates its differential entropy (in nats).

  Args:
    x: [N, D] samples (numpy or jax).
    target: anything with ``log_prob(x) -> [N]`` (``score_jax.data.toy`` targets).

  Returns:
    The mean NLL as a Python float (+inf if any sample has zero density).
  """
  x = jnp.asarray(x, jnp.float32)
  if x.ndim != 2 or x.shape[1] != target.dim:
    raise ValueError(f"nll: samples must have shape [N, {target.dim}], got {x.shape}.")
  return float(-jnp.mean(target.log_prob(x)))


# --- all of the above against an analytic target ---------------------------------------
def target_quality(key: jax.Array, x: Array, target: Any) -> dict[str, Any]:
  """Sample-quality metrics against an analytic target.

  Args:
    key: PRNG key for fresh target samples and projection directions.
    x: [N, D] model samples.
    target: the ``score_jax.data.toy`` target.

  Returns:
    {"sliced_w2", "nll", "nonfinite_fraction"} plus, for a Gaussian mixture, mode coverage,
    per-mode shares and the worst share / mean / std errors and outlier fraction.
  """
  x = np.asarray(x, np.float32)
  finite = np.all(np.isfinite(x), axis=1)
  k_ref, k_proj = jax.random.split(key)
  ref = target.sample(k_ref, x.shape[0])  # [N, D] fresh exact samples
  out: dict[str, Any] = {
      "num_samples": int(x.shape[0]),
      "nonfinite_fraction": float(1.0 - finite.mean()),
      "sliced_w2": sliced_wasserstein(k_proj, x[finite], ref) if finite.any() else float("nan"),
      "sliced_w2_target_vs_target": sliced_wasserstein(
          k_proj, np.asarray(target.sample(jax.random.fold_in(k_ref, 1), x.shape[0])), ref),
      "nll": nll(x[finite], target) if finite.any() else float("nan"),
  }
  if isinstance(target, toy.GaussianMixture):
    stats = mode_statistics(x, target)
    out.update({name: stats[name] for name in (
        "coverage", "share", "outlier_fraction", "max_share_rel_error", "max_mean_error", "max_std_rel_error")})
    out["target_weights"] = np.asarray(target.weights)
  return out

