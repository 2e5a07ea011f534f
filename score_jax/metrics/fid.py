"""Sample-quality metrics computed from feature arrays: FID, KID, Inception Score and
k-NN precision / recall.

Every function takes numpy(-convertible) arrays of per-image features (typically the
2048-d ``pool`` features or the 1008-way ``logits`` of ``score_jax.metrics.inception``),
does its arithmetic in float64 with numpy only, and returns Python floats.  Rows that
contain NaN or Inf are never averaged in silently: they raise ``ValueError`` saying how
many rows are affected.

Typical use::

  real = FeatureStats.load("cifar10_train_stats.npz")   # made once with FeatureStats.save
  fake = FeatureStats.from_features(fake_pool)           # fake_pool [N, 2048]
  fid = frechet_distance(real.mu, real.sigma, fake.mu, fake.sigma)
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional, Union

import numpy as np

Array = Any
PathLike = Union[str, os.PathLike]


def _as_features(name: str, features: Array, *, min_rows: int = 1) -> np.ndarray:
  """Converts to a float64 [N, D] array; raises ValueError on a wrong shape or non-finite rows.

  Args:
    name: argument name used in error messages.
    features: array-like of shape [N, D].
    min_rows: smallest acceptable N.

  Returns:
    The features as a float64 numpy array [N, D].
  """
  x = np.asarray(features, dtype=np.float64)
  if x.ndim != 2:
    raise ValueError(f"{name} must have shape [N, D], got shape {x.shape}.")
  if x.shape[0] < min_rows or x.shape[1] < 1:
    raise ValueError(f"{name} needs at least {min_rows} row(s) and 1 column, got shape {x.shape}.")
  bad = ~np.all(np.isfinite(x), axis=1)  # [N]
  if bad.any():
    raise ValueError(f"{name} has {int(bad.sum())} of {x.shape[0]} rows with non-finite values (NaN or Inf); "
                     "drop or fix those samples before computing the metric.")
  return x


# ---- Feature statistics and the Fréchet distance ----


def feature_statistics(features: Array) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (unbiased, ddof = 1) of a feature array.

  Args:
    features: [N, D] features, N >= 2.

  Returns:
    mu [D] and sigma [D, D], float64.
  """
  x = _as_features("features", features, min_rows=2)  # [N, D]
  mu = x.mean(axis=0)  # [D]
  centered = x - mu  # [N, D]
  sigma = centered.T @ centered / (x.shape[0] - 1)  # [D, D]
  return mu, sigma


@dataclasses.dataclass(frozen=True)
class FeatureStats:
  """First two moments of a feature set, as FID needs them, with ``.npz`` save / load.

  Attributes:
    mu: [D] feature mean.
    sigma: [D, D] feature covariance (ddof = 1).
    num_samples: number of feature rows the moments were computed from.
  """

  mu: np.ndarray
  sigma: np.ndarray
  num_samples: int

  @classmethod
  def from_features(cls, features: Array) -> "FeatureStats":
    """Statistics of a [N, D] feature array (see ``feature_statistics``)."""
    mu, sigma = feature_statistics(features)
    return cls(mu=mu, sigma=sigma, num_samples=int(np.shape(features)[0]))

  def save(self, path: PathLike) -> None:
    """Writes ``mu``, ``sigma`` and ``num_samples`` to a new ``.npz`` file.

    Args:
      path: destination; it must not exist yet (the file is opened with mode "xb", so
        precomputed reference statistics are never overwritten by accident).

    Raises:
      FileExistsError: if ``path`` exists.
    """
    with open(path, "xb") as f:
      np.savez(f, mu=np.asarray(self.mu, np.float64), sigma=np.asarray(self.sigma, np.float64),
               num_samples=np.asarray(self.num_samples, np.int64))

  @classmethod
  def load(cls, path: PathLike) -> "FeatureStats":
    """Reads statistics written by ``save``.

    Args:
      path: an ``.npz`` file with arrays ``mu`` [D], ``sigma`` [D, D] and ``num_samples``.

    Returns:
      The stored statistics (float64).

    Raises:
      ValueError: if an array is missing or the shapes disagree.
    """
    with np.load(path, allow_pickle=False) as data:
      missing = [k for k in ("mu", "sigma", "num_samples") if k not in data.files]
      if missing:
        raise ValueError(f"{os.fspath(path)!r} is not a FeatureStats file: missing array(s) {missing}.")
      mu = np.asarray(data["mu"], np.float64)
      sigma = np.asarray(data["sigma"], np.float64)
      num_samples = int(data["num_samples"])
    if mu.ndim != 1 or sigma.shape != (mu.shape[0], mu.shape[0]):
      raise ValueError(f"{os.fspath(path)!r}: mu {mu.shape} and sigma {sigma.shape} do not form [D], [D, D].")
    return cls(mu=mu, sigma=sigma, num_samples=num_samples)


def _clip_eigenvalues(evals: np.ndarray) -> np.ndarray:
  """Zeroes eigenvalues of a PSD matrix that are round-off: negative or below D · eps · λ_max.

  Their square roots would otherwise add ~sqrt(eps) noise each (e.g. the D − N + 1 zero
  eigenvalues of a covariance estimated from N < D samples).
  """
  tol = max(float(evals.max(initial=0.0)), 0.0) * evals.shape[0] * np.finfo(np.float64).eps
  return np.where(evals > tol, evals, 0.0)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
  """Symmetric square root of a symmetric positive semi-definite matrix."""
  evals, evecs = np.linalg.eigh((matrix + matrix.T) / 2)  # [D], [D, D]
  return (evecs * np.sqrt(_clip_eigenvalues(evals))) @ evecs.T


def trace_sqrt_product(sigma1: Array, sigma2: Array) -> float:
  """tr((Σ1 Σ2)^½) for symmetric PSD Σ1, Σ2, without a general matrix square root.

  Σ1 Σ2 is similar to the symmetric PSD matrix Σ1^½ Σ2 Σ1^½ (their non-zero eigenvalues
  agree even when Σ1 is singular, e.g. fewer samples than feature dimensions), so the
  trace is the sum of the square roots of the eigenvalues of the latter; eigenvalues
  that are round-off (negative, or below D · eps · λ_max) count as zero.

  Args:
    sigma1: [D, D] covariance.
    sigma2: [D, D] covariance.

  Returns:
    The trace, a Python float.
  """
  s1 = np.asarray(sigma1, np.float64)
  s2 = np.asarray(sigma2, np.float64)
  root1 = _sqrt_psd(s1)  # [D, D]
  inner = root1 @ s2 @ root1  # [D, D]
  evals = np.linalg.eigvalsh((inner + inner.T) / 2)  # [D]
  return float(np.sum(np.sqrt(_clip_eigenvalues(evals))))


# Fréchet distance between Gaussians (Heusel et al. 2017, Eq. 6; Dowson & Landau 1982).
def frechet_distance(mu1: Array, sigma1: Array, mu2: Array, sigma2: Array) -> float:
  """Fréchet (2-Wasserstein²) distance between N(mu1, sigma1) and N(mu2, sigma2).

  d² = ‖μ1 − μ2‖² + tr(Σ1 + Σ2 − 2 (Σ1 Σ2)^½), with the last trace from
  ``trace_sqrt_product`` (symmetric eigendecompositions in float64; no scipy needed).

  Args:
    mu1: [D] mean of the first feature set.
    sigma1: [D, D] covariance of the first feature set.
    mu2: [D] mean of the second feature set.
    sigma2: [D, D] covariance of the second feature set.

  Returns:
    The distance as a Python float (the FID when the statistics are Inception pool features).

  Raises:
    ValueError: on mismatched shapes or non-finite entries.
  """
  m1 = np.asarray(mu1, np.float64)
  m2 = np.asarray(mu2, np.float64)
  s1 = np.asarray(sigma1, np.float64)
  s2 = np.asarray(sigma2, np.float64)
  if m1.ndim != 1 or m1.shape != m2.shape:
    raise ValueError(f"frechet_distance: mu1 {m1.shape} and mu2 {m2.shape} must both be [D].")
  d = m1.shape[0]
  if s1.shape != (d, d) or s2.shape != (d, d):
    raise ValueError(f"frechet_distance: sigma1 {s1.shape} and sigma2 {s2.shape} must both be [{d}, {d}].")
  for name, a in (("mu1", m1), ("sigma1", s1), ("mu2", m2), ("sigma2", s2)):
    if not np.all(np.isfinite(a)):
      raise ValueError(f"frechet_distance: {name} has {int(np.sum(~np.isfinite(a)))} non-finite entries.")
  diff = m1 - m2  # [D]
  return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2.0 * trace_sqrt_product(s1, s2))


# ---- Kernel Inception Distance ----


def polynomial_kernel(x: np.ndarray, y: np.ndarray, *, degree: int = 3, gamma: Optional[float] = None,
                      coef0: float = 1.0) -> np.ndarray:
  """k(x, y) = (γ x·y + c)^degree for all pairs of rows; γ defaults to 1 / D.

  Args:
    x: [N, D].
    y: [M, D].
    degree: polynomial degree.
    gamma: scale of the inner product; None means 1 / D.
    coef0: additive constant c.

  Returns:
    The Gram matrix [N, M], float64.
  """
  if gamma is None:
    gamma = 1.0 / x.shape[1]
  return (gamma * (x @ y.T) + coef0) ** degree  # [N, M]


# Unbiased MMD² estimator (Gretton et al. 2012, Eq. 3; used by KID, Bińkowski et al. 2018).
def mmd2_unbiased(x: Array, y: Array, *, degree: int = 3, gamma: Optional[float] = None,
                  coef0: float = 1.0) -> float:
  """Unbiased MMD² between two samples under the polynomial kernel.

  MMD²_u = Σ_{i≠j} k(x_i, x_j) / (m(m−1)) + Σ_{i≠j} k(y_i, y_j) / (n(n−1)) − 2 Σ_{i,j} k(x_i, y_j) / (mn).
  It can be negative when the two distributions are equal.

  Args:
    x: [m, D], m >= 2.
    y: [n, D], n >= 2.
    degree: polynomial kernel degree.
    gamma: inner-product scale; None means 1 / D.
    coef0: additive constant of the kernel.

  Returns:
    MMD²_u as a Python float.
  """
  x = _as_features("x", x, min_rows=2)
  y = _as_features("y", y, min_rows=2)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"mmd2_unbiased: feature dimensions differ: {x.shape} vs {y.shape}.")
  kw = dict(degree=degree, gamma=gamma, coef0=coef0)
  k_xx = polynomial_kernel(x, x, **kw)  # [m, m]
  k_yy = polynomial_kernel(y, y, **kw)  # [n, n]
  k_xy = polynomial_kernel(x, y, **kw)  # [m, n]
  m, n = x.shape[0], y.shape[0]
  term_xx = (k_xx.sum() - np.trace(k_xx)) / (m * (m - 1))
  term_yy = (k_yy.sum() - np.trace(k_yy)) / (n * (n - 1))
  return float(term_xx + term_yy - 2.0 * k_xy.mean())


# Kernel Inception Distance: mean unbiased MMD² over random subsets (Bińkowski et al. 2018, "KID" definition).
def kid(features1: Array, features2: Array, *, num_subsets: int = 100, subset_size: int = 1000,
        degree: int = 3, gamma: Optional[float] = None, coef0: float = 1.0,
        seed: int = 0) -> tuple[float, float]:
  """Kernel Inception Distance with the cubic polynomial kernel k(x, y) = (x·y / D + 1)³.

  Each of ``num_subsets`` rounds draws ``subset_size`` rows without replacement from each
  feature set (independently per round) and computes ``mmd2_unbiased`` on them.

  Args:
    features1: [N1, D] features of the first set.
    features2: [N2, D] features of the second set.
    num_subsets: number of random subset pairs.
    subset_size: rows per subset; must not exceed min(N1, N2).
    degree: polynomial kernel degree.
    gamma: inner-product scale; None means 1 / D.
    coef0: additive constant of the kernel.
    seed: seed of the numpy generator that draws the subsets.

  Returns:
    (mean, std) of the per-subset MMD² estimates (std with ddof = 0), Python floats.
    The mean is an unbiased estimate and may be slightly negative for equal distributions.
  """
  x = _as_features("features1", features1, min_rows=2)
  y = _as_features("features2", features2, min_rows=2)
  if x.shape[1] != y.shape[1]:
    raise ValueError(f"kid: feature dimensions differ: features1 {x.shape} vs features2 {y.shape}.")
  if num_subsets < 1:
    raise ValueError(f"kid: num_subsets must be >= 1, got {num_subsets}.")
  if subset_size < 2 or subset_size > min(x.shape[0], y.shape[0]):
    raise ValueError(f"kid: subset_size={subset_size} must lie in [2, min(N1, N2) = "
                     f"{min(x.shape[0], y.shape[0])}]; pass a smaller subset_size or more samples.")
  rng = np.random.default_rng(seed)
  values = np.empty(num_subsets)  # [S]
  for s in range(num_subsets):
    ix = rng.choice(x.shape[0], subset_size, replace=False)
    iy = rng.choice(y.shape[0], subset_size, replace=False)
    values[s] = mmd2_unbiased(x[ix], y[iy], degree=degree, gamma=gamma, coef0=coef0)
  return float(values.mean()), float(values.std())


# ---- Inception Score ----


def _log_probs(logits_or_probs: np.ndarray, from_logits: Optional[bool]) -> np.ndarray:
  """Row-wise log class probabilities [N, K] (-inf where a probability is exactly 0)."""
  p = logits_or_probs
  if from_logits is None:
    from_logits = not (np.all(p >= 0) and np.allclose(p.sum(axis=1), 1.0, atol=1e-4))
  if from_logits:
    shifted = p - p.max(axis=1, keepdims=True)  # [N, K]
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
  if np.any(p < 0) or not np.allclose(p.sum(axis=1), 1.0, atol=1e-4):
    raise ValueError("inception_score: from_logits=False but the rows are not probability vectors.")
  p = p / p.sum(axis=1, keepdims=True)
  with np.errstate(divide="ignore"):
    return np.log(p)


# Inception Score: exp(E_x KL(p(y|x) ‖ p(y))) (Salimans et al. 2016, Sec. 4).
def inception_score(logits_or_probs: Array, *, num_splits: int = 10,
                    from_logits: Optional[bool] = None) -> tuple[float, float]:
  """Inception Score of class predictions, averaged over consecutive splits.

  Per split, p(y) is the mean of the split's p(y|x) and the score is
  exp(mean_x Σ_y p(y|x) (log p(y|x) − log p(y))), with 0 · log 0 = 0.

  Args:
    logits_or_probs: [N, K] logits (softmax is applied) or class probabilities.
    num_splits: number of consecutive, near-equal splits (``np.array_split``), N >= num_splits.
    from_logits: True for logits, False for probabilities; None guesses: rows that are
      non-negative and sum to 1 are probabilities, anything else logits.

  Returns:
    (mean, std) over splits (std with ddof = 0), Python floats; 1 for uninformative
    predictions, K for confident predictions spread evenly over K classes.
  """
  p = _as_features("logits_or_probs", logits_or_probs)
  if num_splits < 1 or num_splits > p.shape[0]:
    raise ValueError(f"inception_score: num_splits={num_splits} must lie in [1, N = {p.shape[0]}].")
  log_p = _log_probs(p, from_logits)  # [N, K]
  scores = []
  for part in np.array_split(log_p, num_splits):
    probs = np.exp(part)  # [n, K]
    # 0 · log 0 = 0: where p(y|x) = 0 the term vanishes (and p(y) may be 0 there too).
    with np.errstate(divide="ignore", invalid="ignore"):
      log_marginal = np.log(probs.mean(axis=0))  # [K]
      terms = np.where(probs > 0, probs * (part - log_marginal), 0.0)  # [n, K]
    scores.append(np.exp(terms.sum(axis=1).mean()))
  scores = np.asarray(scores)
  return float(scores.mean()), float(scores.std())


# ---- k-NN precision and recall ----


def _squared_distances(a: np.ndarray, b: np.ndarray, b_sq: np.ndarray) -> np.ndarray:
  """‖a_i − b_j‖² [n, m] from the expansion ‖a‖² + ‖b‖² − 2 a·b, clipped at 0."""
  d2 = np.sum(a * a, axis=1)[:, None] + b_sq[None, :] - 2.0 * (a @ b.T)  # [n, m]
  return np.maximum(d2, 0.0)


def knn_radii(features: np.ndarray, k: int, *, batch_size: int = 1024) -> np.ndarray:
  """Squared distance from every row to its k-th nearest other row of the same set.

  Args:
    features: [N, D] float64, N > k.
    k: neighbour rank (1 = nearest other point).
    batch_size: rows per block of the [batch, N] distance matrix.

  Returns:
    [N] squared radii.
  """
  n = features.shape[0]
  sq = np.sum(features * features, axis=1)  # [N]
  radii = np.empty(n)
  for start in range(0, n, batch_size):
    d2 = _squared_distances(features[start:start + batch_size], features, sq)  # [b, N]
    # Index 0 of each sorted row is the point itself (distance 0), so the k-th other neighbour is index k.
    radii[start:start + batch_size] = np.partition(d2, k, axis=1)[:, k]
  return radii


# Improved precision and recall with k-NN manifolds (Kynkäänniemi et al. 2019, Eq. 1-2).
def precision_recall(real: Array, fake: Array, *, k: int = 3, batch_size: int = 1024) -> tuple[float, float]:
  """Precision (fake samples inside the real manifold) and recall (real inside the fake one).

  Each set's manifold is the union of balls around its points, with radius the distance
  to the point's k-th nearest neighbour in the same set.  A point lies inside a manifold
  when it is within (≤) the radius of at least one of its points.

  Args:
    real: [N, D] real features, N > k.
    fake: [M, D] generated features, M > k.
    k: neighbour rank of the radii (3 in the paper).
    batch_size: rows per block of every distance matrix (memory is O(batch_size · max(N, M))).

  Returns:
    (precision, recall) as Python floats in [0, 1].
  """
  r = _as_features("real", real, min_rows=k + 1)
  f = _as_features("fake", fake, min_rows=k + 1)
  if r.shape[1] != f.shape[1]:
    raise ValueError(f"precision_recall: feature dimensions differ: real {r.shape} vs fake {f.shape}.")
  if k < 1:
    raise ValueError(f"precision_recall: k must be >= 1, got {k}.")
  radii_real = knn_radii(r, k, batch_size=batch_size)  # [N]
  radii_fake = knn_radii(f, k, batch_size=batch_size)  # [M]
  r_sq = np.sum(r * r, axis=1)  # [N]
  fake_in_real = np.zeros(f.shape[0], dtype=bool)  # [M]
  real_in_fake = np.zeros(r.shape[0], dtype=bool)  # [N]
  for start in range(0, f.shape[0], batch_size):
    stop = start + batch_size
    d2 = _squared_distances(f[start:stop], r, r_sq)  # [b, N]
    fake_in_real[start:stop] = np.any(d2 <= radii_real[None, :], axis=1)
    real_in_fake |= np.any(d2 <= radii_fake[start:stop, None], axis=0)
  return float(fake_in_real.mean()), float(real_in_fake.mean())
