"""Analytic targets: distributions with exact samples, log-densities and perturbed scores.

A Gaussian mixture stays a Gaussian mixture under every linear SDE of ``score_jax.sde``:
if x(0) ~ Σ_k w_k N(μ_k, diag(σ_k²)) then

    x(t) ~ Σ_k w_k N(m(t) μ_k, diag(m(t)² σ_k² + s(t)²)),

so ∇log p_t is exact at every t.  That lets every sampler and loss be tested against
ground truth, with no training noise in the way.

Preset 2-D targets (``get_target(name)``): "ring8", "grid25", "moons" and "swiss_roll" are
Gaussian mixtures, so they keep the exact perturbed score; "checkerboard" and "funnel"
have exact samples and log-densities only.  In more dimensions: "mixture_nd" (a random
mixture, 16-D by default) and "correlated_gaussian" (a full-covariance ``Gaussian``, 64-D
by default), both with exact perturbed scores.
"""

from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde as sde_lib

Array = Any


@dataclasses.dataclass(frozen=True, eq=False)
class GaussianMixture:
  """Mixture of axis-aligned Gaussians in D dimensions.

  Args:
    means: [K, D] component means.
    stds: [K] (isotropic) or [K, D] (diagonal) component standard deviations, > 0.
    weights: [K] non-negative mixture weights (normalised here); uniform when None.
  """

  means: Array
  stds: Array
  weights: Array = None

  def __post_init__(self):
    means = np.asarray(self.means, np.float32)
    if means.ndim != 2:
      raise ValueError(f"GaussianMixture.means must have shape [K, D], got {means.shape}.")
    k, d = means.shape
    stds = np.asarray(self.stds, np.float32)
    if stds.shape == (k,):
      stds = np.repeat(stds[:, None], d, axis=1)
    if stds.shape != (k, d):
      raise ValueError(f"GaussianMixture.stds must have shape [K]=[{k}] or [K, D]=[{k}, {d}], got {stds.shape}.")
    if not np.all(stds > 0):
      raise ValueError("GaussianMixture.stds must all be > 0.")
    weights = np.full((k,), 1.0 / k, np.float32) if self.weights is None else np.asarray(self.weights, np.float64)
    if weights.shape != (k,) or np.any(weights < 0) or weights.sum() <= 0:
      raise ValueError(f"GaussianMixture.weights must be [K]=[{k}] non-negative with a positive sum, got {weights}.")
    weights = (weights / weights.sum()).astype(np.float32)
    object.__setattr__(self, "means", jnp.asarray(means))
    object.__setattr__(self, "stds", jnp.asarray(stds))
    object.__setattr__(self, "weights", jnp.asarray(weights))

  @property
  def num_components(self) -> int:
    return self.means.shape[0]

  @property
  def dim(self) -> int:
    return self.means.shape[1]

  @property
  def mean(self) -> Array:
    """Mixture mean [D]."""
    return self.weights @ self.means

  @property
  def covariance(self) -> Array:
    """Mixture covariance [D, D]."""
    centred = self.means - self.mean
    within = jnp.einsum("k,kd->d", self.weights, self.stds**2)
    return jnp.diag(within) + jnp.einsum("k,kd,ke->de", self.weights, centred, centred)

  # --- the data distribution --------------------------------------------------------
  def sample_with_labels(self, key: jax.Array, n: int) -> tuple[Array, Array]:
    """n exact samples [n, D] and their component indices [n]."""
    k_lab, k_noise = jax.random.split(key)
    labels = jax.random.categorical(k_lab, jnp.log(self.weights), shape=(n,))
    z = jax.random.normal(k_noise, (n, self.dim))
    return self.means[labels] + self.stds[labels] * z, labels

  def sample(self, key: jax.Array, n: int) -> Array:
    return self.sample_with_labels(key, n)[0]

  def log_prob(self, x: Array) -> Array:
    """log p_0(x) for x [..., D] -> [...]."""
    return self._log_prob(x, 1.0, 0.0)

  # --- the perturbed distribution p_t under an SDE ----------------------------------
  def _components(self, m: Array, s: Array):
    # m, s: [...] -> means [..., K, D], variances [..., K, D]
    m = m[..., None, None]
    s = s[..., None, None]
    return m * self.means, (m * self.stds) ** 2 + s**2

  def _component_logp(self, x, m, s):
    mu, var = self._components(m, s)
    diff = x[..., None, :] - mu
    logn = -0.5 * jnp.sum(jnp.log(2 * math.pi * var) + diff**2 / var, axis=-1)  # [..., K]
    return logn + jnp.log(self.weights), diff, var

  def _log_prob(self, x, m, s):
    m = jnp.broadcast_to(m, x.shape[:-1])
    s = jnp.broadcast_to(s, x.shape[:-1])
    logp, _, _ = self._component_logp(x, m, s)
    return jax.nn.logsumexp(logp, axis=-1)

  def _coeffs(self, sde: sde_lib.SDE, x: Array, t: Array):
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
    return sde.mean_coeff(t), sde.marginal_std(t)

  def log_prob_t(self, x: Array, t: Array, sde: sde_lib.SDE) -> Array:
    """log p_t(x) under ``sde`` for x [B, D], t [] or [B] -> [B]."""
    return self._log_prob(x, *self._coeffs(sde, x, t))

  def score(self, x: Array, t: Array, sde: sde_lib.SDE) -> Array:
    """Exact ∇_x log p_t(x) under ``sde`` for x [B, D], t [] or [B] -> [B, D]."""
    m, s = self._coeffs(sde, x, t)
    logp, diff, var = self._component_logp(x, m, s)
    resp = jax.nn.softmax(logp, axis=-1)  # [B, K]
    return jnp.einsum("...k,...kd->...d", resp, -diff / var)

  def score_fn(self, sde: sde_lib.SDE) -> Callable[[Array, Array], Array]:
    """The exact score as ``score_fn(x, t)``, the signature every sampler takes."""
    return lambda x, t: self.score(x, t, sde)

  def posterior_mean(self, x: Array, t: Array, sde: sde_lib.SDE) -> Array:
    """The ideal denoiser E[x(0) | x(t) = x] [B, D] under ``sde``, computed per component
    (μ_k + m σ_k²/(m² σ_k² + s²) (x − m μ_k), weighted by the posterior of k) rather than
    from the score, so that it checks Tweedie's formula instead of restating it."""
    m, s = self._coeffs(sde, x, t)
    logp, diff, var = self._component_logp(x, m, s)
    resp = jax.nn.softmax(logp, axis=-1)  # [B, K]
    gain = m[..., None, None] * self.stds**2 / var  # [B, K, D]
    return jnp.einsum("...k,...kd->...d", resp, self.means + gain * diff)

  # --- exact references for controllable generation -----------------------------------
  def class_log_prob(self, x: Array, t: Array, sde: sde_lib.SDE) -> Array:
    """The exact noisy classifier log p_t(k | x) [B, K] of the components under ``sde``.

    The posterior of the component label given x(t) (Bayes' rule on the perturbed mixture):
    log w_k + log N(x; m μ_k, m² σ_k² + s²) − log p_t(x), for x [B, D], t [] or [B].
    """
    logp, _, _ = self._component_logp(x, *self._coeffs(sde, x, t))
    return jax.nn.log_softmax(logp, axis=-1)

  def classifier_fn(self, sde: sde_lib.SDE) -> Callable[[Array, Array], Array]:
    """The exact noisy classifier as ``log_prob_fn(x [B, D], t [B]) -> [B, K]`` (``guidance``'s signature)."""
    return lambda x, t: self.class_log_prob(x, t, sde)

  def conditional_score(self, x: Array, t: Array, labels: Array, sde: sde_lib.SDE) -> Array:
    """∇_x log p_t(x | k) [B, D] for each row's component ``labels`` [B] in 0 … K − 1, and the
    mixture's score ∇_x log p_t(x) for the null label K (classifier-free guidance's ∅)."""
    m, s = self._coeffs(sde, x, t)
    logp, diff, var = self._component_logp(x, m, s)
    per_component = -diff / var  # [B, K, D]
    k = self.num_components
    onehot = jax.nn.one_hot(jnp.minimum(labels, k - 1), k)  # [B, K]
    resp = jnp.where((labels >= k)[:, None], jax.nn.softmax(logp, axis=-1), onehot)
    return jnp.einsum("bk,bkd->bd", resp, per_component)

  def component(self, k: int) -> "GaussianMixture":
    """Component k alone, p(x | k), as a one-component mixture."""
    return GaussianMixture(means=self.means[k:k + 1], stds=self.stds[k:k + 1])

  def condition(self, known: Array, values: Array, basis: Array | None = None) -> "GaussianMixture":
    """The exact law of the unknown coordinates given the known ones, in closed form.

    In the coordinates u = x @ basis (x itself without a basis) the components are
    axis-aligned, so given u_A = a each one factorizes: its unknown coordinates keep their
    means and stds, and its weight becomes w_k N(a; μ_kA, σ_kA²)/Σ_j w_j N(a; μ_jA, σ_jA²).

    Args:
      known: [D] booleans, True for the coordinates of u that are given.
      values: [D] values of u (only the known entries are used).
      basis: None, or an orthogonal [D, D] matrix; then every component must be isotropic
        (all its stds equal), which a rotation keeps axis-aligned.

    Returns:
      A GaussianMixture over the unknown coordinates of u, in their order.
    """
    known = np.asarray(known, bool)
    values = np.asarray(values, np.float64)
    means = np.asarray(self.means, np.float64)
    stds = np.asarray(self.stds, np.float64)
    _require(known.shape == (self.dim,) and values.shape == (self.dim,),
             f"condition: known and values must have shape [D]=[{self.dim}], got {known.shape} and {values.shape}.")
    _require(known.any() and not known.all(), "condition: known must mark at least one coordinate, and not all.")
    if basis is not None:
      _require(np.allclose(stds, stds[:, :1]), "condition with a basis needs isotropic components (equal stds).")
      means = means @ np.asarray(basis, np.float64)
    a = values[known]
    logn = -0.5 * np.sum(np.log(2 * np.pi * stds[:, known] ** 2) + (a - means[:, known]) ** 2 / stds[:, known] ** 2,
                         axis=1)
    logw = np.log(np.asarray(self.weights, np.float64)) + logn
    weights = np.exp(logw - logw.max())
    return GaussianMixture(means=means[:, ~known], stds=stds[:, ~known], weights=weights)

  def assign(self, x: Array) -> Array:
    """Index of the nearest component mean (Euclidean) for each row of x [N, D] -> [N]."""
    d2 = jnp.sum((x[:, None, :] - self.means[None]) ** 2, axis=-1)
    return jnp.argmin(d2, axis=-1)


# --- targets without a closed-form perturbed score -----------------------------------
@dataclasses.dataclass(frozen=True, eq=False)
class Gaussian:
  """A Gaussian N(μ, Σ) with full covariance, exact under every linear SDE.

  In Σ's eigenbasis Σ = U diag(λ) Uᵀ each coordinate evolves alone, so
  p_t = N(m(t) μ, U diag(m(t)² λ + s(t)²) Uᵀ) and its score is exact at every t.

  Args:
    mean: [D].
    cov: [D, D] symmetric positive definite.
  """

  mean: Array
  cov: Array

  def __post_init__(self):
    mean = np.asarray(self.mean, np.float64)
    cov = np.asarray(self.cov, np.float64)
    if mean.ndim != 1:
      raise ValueError(f"Gaussian.mean must have shape [D], got {mean.shape}.")
    d = mean.shape[0]
    if cov.shape != (d, d):
      raise ValueError(f"Gaussian.cov must have shape [D, D]=[{d}, {d}], got {cov.shape}.")
    if not np.allclose(cov, cov.T, atol=1e-8 * max(1.0, np.abs(cov).max())):
      raise ValueError("Gaussian.cov must be symmetric.")
    evals, evecs = np.linalg.eigh(cov)
    if evals.min() <= 0:
      raise ValueError(f"Gaussian.cov must be positive definite; its smallest eigenvalue is {evals.min():.3g}.")
    object.__setattr__(self, "mean", jnp.asarray(mean, jnp.float32))
    object.__setattr__(self, "cov", jnp.asarray(cov, jnp.float32))
    object.__setattr__(self, "eigenvalues", jnp.asarray(evals, jnp.float32))  # [D]
    object.__setattr__(self, "eigenvectors", jnp.asarray(evecs, jnp.float32))  # [D, D], columns

  @property
  def dim(self) -> int:
    return self.mean.shape[0]

  @property
  def covariance(self) -> Array:
    return self.cov

  def sample(self, key: jax.Array, n: int) -> Array:
    z = jax.random.normal(key, (n, self.dim))
    return self.mean + (z * jnp.sqrt(self.eigenvalues)) @ self.eigenvectors.T

  def marginal_eigenvalues(self, sde: sde_lib.SDE, t: Array) -> tuple[Array, Array]:
    """(m(t) [...], variances [..., D] of p_t along the eigenvectors)."""
    m, s = sde.mean_coeff(t), sde.marginal_std(t)
    return m, m[..., None] ** 2 * self.eigenvalues + s[..., None] ** 2

  def _logp(self, x, m, var):
    y = (x - m[..., None] * self.mean) @ self.eigenvectors  # [..., D]
    return -0.5 * jnp.sum(jnp.log(2 * math.pi * var) + y**2 / var, axis=-1)

  def log_prob(self, x: Array) -> Array:
    """log p_0(x) for x [..., D] -> [...]."""
    ones = jnp.ones(x.shape[:-1])
    return self._logp(x, ones, ones[..., None] * self.eigenvalues)

  def log_prob_t(self, x: Array, t: Array, sde: sde_lib.SDE) -> Array:
    """log p_t(x) under ``sde`` for x [B, D], t [] or [B] -> [B]."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
    return self._logp(x, *self.marginal_eigenvalues(sde, t))

  def score(self, x: Array, t: Array, sde: sde_lib.SDE) -> Array:
    """Exact ∇_x log p_t(x) for x [B, D], t [] or [B] -> [B, D]."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:-1])
    m, var = self.marginal_eigenvalues(sde, t)
    y = (x - m[..., None] * self.mean) @ self.eigenvectors
    return (-y / var) @ self.eigenvectors.T

  def score_fn(self, sde: sde_lib.SDE) -> Callable[[Array, Array], Array]:
    return lambda x, t: self.score(x, t, sde)

  def condition(self, known: Array, values: Array, basis: Array | None = None) -> "Gaussian":
    """The exact conditional N(μ_B + Σ_BA Σ_AA⁻¹ (a − μ_A), Σ_BB − Σ_BA Σ_AA⁻¹ Σ_AB) of the
    unknown coordinates u_B given the known u_A = a, in u = x @ basis (x without a basis).

    Args:
      known: [D] booleans; values: [D] (known entries used); basis: None or orthogonal [D, D].

    Returns:
      A Gaussian over the unknown coordinates of u.
    """
    known = np.asarray(known, bool)
    values = np.asarray(values, np.float64)
    _require(known.shape == (self.dim,) and values.shape == (self.dim,),
             f"condition: known and values must have shape [D]=[{self.dim}], got {known.shape} and {values.shape}.")
    _require(known.any() and not known.all(), "condition: known must mark at least one coordinate, and not all.")
    mean = np.asarray(self.mean, np.float64)
    cov = np.asarray(self.cov, np.float64)
    if basis is not None:
      basis = np.asarray(basis, np.float64)
      mean, cov = mean @ basis, basis.T @ cov @ basis
    a, b = known, ~known
    gain = np.linalg.solve(cov[np.ix_(a, a)], cov[np.ix_(a, b)]).T  # Σ_BA Σ_AA⁻¹ [|B|, |A|]
    cond_mean = mean[b] + gain @ (values[a] - mean[a])
    cond_cov = cov[np.ix_(b, b)] - gain @ cov[np.ix_(a, b)]
    return Gaussian(mean=cond_mean, cov=0.5 * (cond_cov + cond_cov.T))


class _DensityOnlyTarget:
  """Exact samples and log-density, but p_t under an SDE has no closed form."""

  def score_fn(self, sde: sde_lib.SDE) -> Callable[[Array, Array], Array]:
    raise NotImplementedError(
        f"{type(self).__name__} has no exact perturbed score ∇log p_t under an SDE: only "
        "GaussianMixture targets (ring8, grid25, moons, swiss_roll) have one.  Train a score "
        "model on its samples instead."
    )


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(message)


@dataclasses.dataclass(frozen=True)
class Checkerboard(_DensityOnlyTarget):
  """Uniform density on the dark squares of a ``num_squares`` × ``num_squares`` board
  covering [−half_width, half_width)².

  Square (i, j) (column i from the left, row j from the bottom, from 0) is dark when
  i + j is even, so the bottom-left square is dark; a 4×4 board has 8 dark squares.
  Squares are half-open, [a, a + side) per axis, so every point has one square.

  Args:
    half_width: half the board's side length, > 0.
    num_squares: squares per side, >= 2.
  """

  half_width: float = 4.0
  num_squares: int = 4

  def __post_init__(self):
    _require(self.half_width > 0, f"Checkerboard.half_width must be > 0, got {self.half_width}.")
    _require(
        int(self.num_squares) == self.num_squares and self.num_squares >= 2,
        f"Checkerboard.num_squares must be an integer >= 2, got {self.num_squares}.",
    )

  @property
  def dim(self) -> int:
    return 2

  @property
  def side(self) -> float:
    """Side length of one square."""
    return 2.0 * self.half_width / self.num_squares

  @property
  def dark_corners(self) -> np.ndarray:
    """Lower-left corners [S, 2] of the dark squares."""
    idx = [(i, j) for j in range(self.num_squares) for i in range(self.num_squares) if (i + j) % 2 == 0]
    return np.asarray(idx, np.float32) * self.side - self.half_width

  @property
  def log_density(self) -> float:
    """The constant log-density on the dark squares: −log(S · side²)."""
    return -math.log(len(self.dark_corners) * self.side**2)

  def sample(self, key: jax.Array, n: int) -> Array:
    """n exact samples [n, 2]: a uniform dark square, then a uniform point in it."""
    k_sq, k_pos = jax.random.split(key)
    corners = jnp.asarray(self.dark_corners)  # [S, 2]
    which = jax.random.randint(k_sq, (n,), 0, corners.shape[0])
    return corners[which] + self.side * jax.random.uniform(k_pos, (n, 2))

  def log_prob(self, x: Array) -> Array:
    """log p(x) for x [..., 2] -> [...]: constant on dark squares, −inf elsewhere."""
    x = jnp.asarray(x, jnp.float32)
    cell = jnp.floor((x + self.half_width) / self.side)  # [..., 2]
    on_board = jnp.all((cell >= 0) & (cell < self.num_squares), axis=-1)
    dark = jnp.sum(cell, axis=-1) % 2 == 0
    return jnp.where(on_board & dark, self.log_density, -jnp.inf)


@dataclasses.dataclass(frozen=True)
class Funnel(_DensityOnlyTarget):
  """Neal's funnel (Neal 2003, "Slice sampling", §8) in ``dim`` dimensions.

  Coordinate 0 is v ~ N(0, v_std²); coordinates 1..dim−1 are independent given v,
  x_i | v ~ N(0, e^v).  The neck (v ≪ 0) is exponentially narrow, the mouth wide.

  Args:
    dim: total dimension including v, >= 2.
    v_std: standard deviation of v, > 0 (3 in Neal's definition).
  """

  dim: int = 2
  v_std: float = 3.0

  def __post_init__(self):
    _require(int(self.dim) == self.dim and self.dim >= 2, f"Funnel.dim must be an integer >= 2, got {self.dim}.")
    _require(self.v_std > 0, f"Funnel.v_std must be > 0, got {self.v_std}.")

  def sample(self, key: jax.Array, n: int) -> Array:
    """n exact samples [n, dim], column 0 being v."""
    k_v, k_x = jax.random.split(key)
    v = self.v_std * jax.random.normal(k_v, (n, 1))  # [n, 1]
    x = jnp.exp(0.5 * v) * jax.random.normal(k_x, (n, self.dim - 1))  # [n, dim - 1]
    return jnp.concatenate([v, x], axis=-1)

  def log_prob(self, x: Array) -> Array:
    """log p(v, x_1..) for x [..., dim] -> [...]."""
    x = jnp.asarray(x, jnp.float32)
    v, rest = x[..., 0], x[..., 1:]
    log_2pi = math.log(2 * math.pi)
    logp_v = -0.5 * (log_2pi + (v / self.v_std) ** 2) - math.log(self.v_std)
    z = rest * jnp.exp(-0.5 * v)[..., None]  # [..., dim - 1], standard normal given v
    logp_x = -0.5 * jnp.sum(log_2pi + v[..., None] + z**2, axis=-1)
    return logp_v + logp_x


Target = Any  # GaussianMixture | Gaussian | Checkerboard | Funnel: sample(key, n), log_prob(x), dim


# --- preset 2-D targets ---------------------------------------------------------------
# The two mixtures with isolated modes put neighbouring means at least 10 component
# stds apart, so nearest-mode assignment (metrics.mode_statistics) is unambiguous.
# Moons and swiss roll are mixtures of many narrow components whose neighbouring means
# lie about 1.3 stds apart along the curve: the density is a smooth ridge, and because
# it is still a mixture its perturbed score stays exact under every SDE.


def eight_gaussians(*, radius: float = 4.0, std: float = 0.25) -> GaussianMixture:
  """8 equal-weight isotropic Gaussians with means at angles 2πk/8 on a circle.

  With the defaults neighbouring means are 2·4·sin(π/8) ≈ 3.06 apart, about 12 stds.

  Args:
    radius: circle radius.
    std: per-coordinate standard deviation of every component.

  Returns:
    A GaussianMixture with 8 components in 2-D.
  """
  angles = 2 * np.pi * np.arange(8) / 8
  means = radius * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # [8, 2]
  return GaussianMixture(means=means, stds=np.full(8, std))


def grid25(*, spacing: float = 2.0, std: float = 0.2) -> GaussianMixture:
  """The 5×5 grid of equal-weight Gaussians (MG25), means at spacing·{−2,…,2}².

  With the defaults neighbouring means are 10 stds apart.

  Args:
    spacing: distance between neighbouring means.
    std: per-coordinate standard deviation of every component.

  Returns:
    A GaussianMixture with 25 components in 2-D.
  """
  ticks = spacing * np.arange(-2, 3)
  gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
  means = np.stack([gx.ravel(), gy.ravel()], axis=1)  # [25, 2]
  return GaussianMixture(means=means, stds=np.full(25, std))


def two_moons(*, num_per_moon: int = 32, std: float = 0.15, radius: float = 2.0) -> GaussianMixture:
  """Two interleaved half circles, each a chain of equal-weight Gaussians.

  The upper moon's means are radius·(cos θ, sin θ) and the lower moon's
  radius·(1 − cos θ, ½ − sin θ), for ``num_per_moon`` angles θ evenly spaced in [0, π]; the
  whole picture is then shifted by −radius·(½, ¼) so its bounding box is centred at 0.
  Neighbouring means are radius·π/(num_per_moon − 1) apart (≈ 0.20 with the defaults).

  Args:
    num_per_moon: components per moon, >= 2.
    std: per-coordinate standard deviation of every component.
    radius: radius of each half circle.

  Returns:
    A GaussianMixture with 2·num_per_moon components in 2-D.
  """
  _require(num_per_moon >= 2, f"two_moons: num_per_moon must be >= 2, got {num_per_moon}.")
  theta = np.linspace(0.0, np.pi, num_per_moon)
  upper = np.stack([np.cos(theta), np.sin(theta)], axis=1)  # [M, 2]
  lower = np.stack([1.0 - np.cos(theta), 0.5 - np.sin(theta)], axis=1)  # [M, 2]
  means = radius * (np.concatenate([upper, lower]) - np.array([0.5, 0.25]))  # [2M, 2]
  return GaussianMixture(means=means, stds=np.full(2 * num_per_moon, std))


def swiss_roll(*, num_components: int = 128, std: float = 0.15, radius: float = 4.0) -> GaussianMixture:
  """A 2-D swiss roll: equal-weight Gaussians evenly spaced in arc length along the
  Archimedean spiral c·a(cos a, sin a), a ∈ [1.5π, 4.5π] (one and a half turns).

  c = radius/(4.5π) makes the outer end lie at ``radius``; successive turns are 2πc apart
  (≈ 1.8, about 12 stds, with the defaults) and neighbouring means about 0.2 apart.
  Even arc-length spacing with equal weights gives a uniform density along the curve.

  Args:
    num_components: number of Gaussians along the spiral, >= 2.
    std: per-coordinate standard deviation of every component.
    radius: distance of the outer end from the origin.

  Returns:
    A GaussianMixture with ``num_components`` components in 2-D.
  """
  _require(num_components >= 2, f"swiss_roll: num_components must be >= 2, got {num_components}.")
  a0, a1 = 1.5 * np.pi, 4.5 * np.pi
  c = radius / a1
  # Arc length of r = c·a from 0 to a: (c/2)(a√(1 + a²) + asinh a); invert on a fine grid.
  arc = lambda a: 0.5 * c * (a * np.sqrt(1.0 + a**2) + np.arcsinh(a))
  grid = np.linspace(a0, a1, 20_001)
  a = np.interp(np.linspace(arc(a0), arc(a1), num_components), arc(grid), grid)
  means = c * a[:, None] * np.stack([np.cos(a), np.sin(a)], axis=1)  # [K, 2]
  return GaussianMixture(means=means, stds=np.full(num_components, std))


def mixture_nd(*, dim: int = 16, num_components: int = 8, spread: float = 3.0, std: float = 0.3,
               seed: int = 0) -> GaussianMixture:
  """A random mixture in ``dim`` dimensions: ``num_components`` means drawn uniformly in
  [−spread, spread]^dim (fixed by ``seed``), per-dimension stds in [std/2, 2·std], unequal
  weights.  In 16-D the modes are far apart relative to their widths."""
  rng = np.random.default_rng(seed)
  means = rng.uniform(-spread, spread, size=(num_components, dim))
  stds = std * np.exp(rng.uniform(np.log(0.5), np.log(2.0), size=(num_components, dim)))
  weights = rng.uniform(0.5, 1.5, size=num_components)
  return GaussianMixture(means=means, stds=stds, weights=weights)


def correlated_gaussian(*, dim: int = 64, condition: float = 100.0, seed: int = 0) -> Gaussian:
  """N(μ, Σ) in ``dim`` dimensions with a random rotation and eigenvalues log-spaced over a
  ratio ``condition`` (largest 1), and a random mean of norm about 1: strongly correlated,
  with an exact score and an exactly computable sampler KL."""
  rng = np.random.default_rng(seed)
  q, r = np.linalg.qr(rng.normal(size=(dim, dim)))
  q = q * np.sign(np.diag(r))  # a Haar-random rotation
  evals = np.logspace(0.0, -np.log10(condition), dim)
  mean = rng.normal(size=dim) / np.sqrt(dim)
  return Gaussian(mean=mean, cov=(q * evals) @ q.T)


TARGETS: dict[str, Callable[..., Target]] = {
    "ring8": eight_gaussians,
    "grid25": grid25,
    "moons": two_moons,
    "swiss_roll": swiss_roll,
    "checkerboard": Checkerboard,
    "funnel": Funnel,
    "mixture_nd": mixture_nd,
    "correlated_gaussian": correlated_gaussian,
}


def get_target(name: str, **kwargs) -> Target:
  """Builds a preset target by name, e.g. ``get_target("ring8", std=0.5)``.

  Args:
    name: one of ``TARGETS``.
    **kwargs: keyword arguments of that preset.

  Returns:
    The target (a GaussianMixture, Gaussian, Checkerboard or Funnel).

  Raises:
    ValueError: for an unknown name or an argument the preset does not take.
  """
  if name not in TARGETS:
    raise ValueError(f"Unknown target {name!r}; choose one of {sorted(TARGETS)}.")
  builder = TARGETS[name]
  params = set(inspect.signature(builder).parameters)
  unknown = set(kwargs) - params
  if unknown:
    raise ValueError(f"Target {name!r} has no argument(s) {sorted(unknown)}; it takes {sorted(params)}.")
  return builder(**kwargs)
