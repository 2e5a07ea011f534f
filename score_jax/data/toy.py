"""Analytic targets: distributions with exact samples, log-densities and perturbed scores.

A Gaussian mixture stays a Gaussian mixture under every linear SDE of ``score_jax.sde``:
if x(0) ~ Σ_k w_k N(μ_k, diag(σ_k²)) then

    x(t) ~ Σ_k w_k N(m(t) μ_k, diag(m(t)² σ_k² + s(t)²)),

so ∇log p_t is exact at every t.  That lets every sampler and loss be tested against
ground truth, with no training noise in the way.
"""

from __future__ import annotations

import dataclasses
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

  def assign(self, x: Array) -> Array:
    """Index of the nearest component mean (Euclidean) for each row of x [N, D] -> [N]."""
    d2 = jnp.sum((x[:, None, :] - self.means[None]) ** 2, axis=-1)
    return jnp.argmin(d2, axis=-1)
