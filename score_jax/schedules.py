"""Noise schedules β(t) for VP and sub-VP SDEs, each with its integral in closed form.

A schedule is a frozen dataclass on t ∈ [0, T] with two pure functions:

* ``beta(t)``      the instantaneous noise rate β(t) ≥ 0;
* ``integral(t)``  B(t) = ∫₀ᵗ β(s) ds, so that ᾱ(t) = exp(−B(t)).

Frozen dataclasses are hashable, so a schedule (and an SDE holding one) can be
a static argument of ``jax.jit``.  Everything an SDE needs (mean coefficient,
marginal std, SNR) is derived from these two functions in ``sde.py``.

Families (references in each docstring):

* ``linear``       β_min + (β_max − β_min) t/T                         (Ho et al. 2020; Song et al. 2021)
* ``quadratic``    β_min + (β_max − β_min) (t/T)²
* ``exponential``  β_min + (β_max − β_min)(e^{at} − 1)/(e^{aT} − 1)  (Strasman et al. 2024, a = 0 is linear)
* ``cosine``       ᾱ(t) = cos²(θ(t))/cos²(θ(0)), θ = (t/T + s)/(1 + s)·π/2, β capped at max_beta
                                                                       (Nichol & Dhariwal 2021)
* ``sigmoid``      ᾱ(t) = σ(λ(t))/σ(λ_max) with λ linear in t (uniform log-SNR spacing)   (Chen 2023; Kingma et al. 2021)
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Protocol, runtime_checkable

import jax.numpy as jnp

Array = Any


@runtime_checkable
class BetaSchedule(Protocol):
  """What an SDE needs from a schedule."""

  T: float

  def beta(self, t: Array) -> Array:
    ...

  def integral(self, t: Array) -> Array:
    ...


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(message)


def _check_range(name: str, beta_min: float, beta_max: float, T: float) -> None:
  _require(beta_min >= 0, f"{name}.beta_min must be >= 0, got {beta_min}; a noise rate cannot be negative.")
  _require(
      beta_max > beta_min,
      f"{name}.beta_max ({beta_max}) must exceed beta_min ({beta_min}); swap them or raise beta_max.",
  )
  _require(T > 0, f"{name}.T must be > 0, got {T}.")


@dataclasses.dataclass(frozen=True)
class LinearSchedule:
  """β(t) = β_min + (β_max − β_min) t/T; B(t) = β_min t + (β_max − β_min) t²/(2T)."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  T: float = 1.0

  def __post_init__(self):
    _check_range("LinearSchedule", self.beta_min, self.beta_max, self.T)

  def beta(self, t: Array) -> Array:
    return self.beta_min + (self.beta_max - self.beta_min) * t / self.T

  def integral(self, t: Array) -> Array:
    return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t**2 / self.T


@dataclasses.dataclass(frozen=True)
class QuadraticSchedule:
  """β(t) = β_min + (β_max − β_min)(t/T)²; B(t) = β_min t + (β_max − β_min) t³/(3T²)."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  T: float = 1.0

  def __post_init__(self):
    _check_range("QuadraticSchedule", self.beta_min, self.beta_max, self.T)

  def beta(self, t: Array) -> Array:
    return self.beta_min + (self.beta_max - self.beta_min) * (t / self.T) ** 2

  def integral(self, t: Array) -> Array:
    return self.beta_min * t + (self.beta_max - self.beta_min) * t**3 / (3.0 * self.T**2)


@dataclasses.dataclass(frozen=True)
class ExponentialSchedule:
  """The parametric family of Strasman et al. (2024, "An analysis of the noise schedule").

  β_a(t) = β_min + (β_max − β_min)(e^{at} − 1)/(e^{aT} − 1), so β_a(0) = β_min and
  β_a(T) = β_max for every a; a > 0 concentrates noise late, a < 0 early, a = 0 is linear.
  B(t) = β_min t + (β_max − β_min)((e^{at} − 1)/a − t)/(e^{aT} − 1).
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  a: float = 0.0
  T: float = 1.0

  def __post_init__(self):
    _check_range("ExponentialSchedule", self.beta_min, self.beta_max, self.T)
    _require(math.isfinite(self.a), f"ExponentialSchedule.a must be finite, got {self.a}.")
    # e^{aT} overflows float32 past aT ≈ 88.7, which turned β and B into NaN near T.
    _require(
        self.a * self.T <= 80.0,
        f"ExponentialSchedule.a * T must be <= 80 (e^(aT) overflows float32), got a={self.a}, T={self.T}.",
    )

  def _linear(self) -> bool:
    # Below this |a·T| the closed form loses more to cancellation than the linear limit
    # differs from it (the relative difference is O(a·T)).
    return abs(self.a * self.T) < 1e-6

  def beta(self, t: Array) -> Array:
    if self._linear():
      return LinearSchedule(self.beta_min, self.beta_max, self.T).beta(t)
    ratio = jnp.expm1(self.a * t) / math.expm1(self.a * self.T)
    return self.beta_min + (self.beta_max - self.beta_min) * ratio

  def integral(self, t: Array) -> Array:
    if self._linear():
      return LinearSchedule(self.beta_min, self.beta_max, self.T).integral(t)
    # (e^{at} − 1)/a − t = (e^x − 1 − x)/a with x = at; the direct difference cancels
    # catastrophically in float32 for small |x|, so there use its Taylor series.
    x = self.a * jnp.asarray(t)
    small = jnp.abs(x) < 0.1
    xs = jnp.where(small, x, 0.0)
    series = xs * xs * (1 / 2 + xs * (1 / 6 + xs * (1 / 24 + xs * (1 / 120 + xs * (1 / 720 + xs / 5040)))))
    excess = jnp.where(small, series, jnp.expm1(x) - x) / (self.a * math.expm1(self.a * self.T))
    return self.beta_min * t + (self.beta_max - self.beta_min) * excess


@dataclasses.dataclass(frozen=True)
class CosineSchedule:
  """Cosine schedule of Nichol & Dhariwal (2021) in continuous time.

  ᾱ(t) = cos²(θ(t))/cos²(θ(0)) with θ(t) = (t/T + s)/(1 + s)·π/2, hence
  β(t) = 2 tan(θ(t)) θ' with θ' = π/(2T(1 + s)).  β diverges at t = T (as the
  discrete schedule needs its 0.999 clip), so β is capped at ``max_beta``: past the
  time t* where β(t*) = max_beta the rate stays constant and B grows linearly.  Both
  t* and B(t*) are closed form, so the capped schedule is still exact.
  """

  s: float = 0.008
  max_beta: float = 100.0
  T: float = 1.0

  def __post_init__(self):
    _require(self.s > 0, f"CosineSchedule.s must be > 0, got {self.s}; Nichol & Dhariwal use 0.008.")
    _require(self.max_beta > 0, f"CosineSchedule.max_beta must be > 0, got {self.max_beta}.")
    _require(self.T > 0, f"CosineSchedule.T must be > 0, got {self.T}.")
    _require(
        self.max_beta > 2 * math.tan(self._theta0) * self._dtheta,
        f"CosineSchedule.max_beta={self.max_beta} is below β(0); raise it.",
    )

  @property
  def _dtheta(self) -> float:
    return math.pi / (2.0 * self.T * (1.0 + self.s))

  @property
  def _theta0(self) -> float:
    return self.s / (1.0 + self.s) * math.pi / 2.0

  @property
  def t_cap(self) -> float:
    """Time t* after which β(t) = max_beta."""
    theta_star = math.atan(self.max_beta / (2.0 * self._dtheta))
    return min((theta_star - self._theta0) / self._dtheta, self.T)

  def _integral_uncapped(self, t: Array) -> Array:
    # B = −2 log(cos θ(t)/cos θ0) with cos(θ0 + δ)/cos θ0 − 1 = −2 sin²(δ/2) − tan θ0 sin δ:
    # exactly 0 at t = 0.  A float32 difference of two logs is off by ~1e-8 there, often
    # below 0, which made VP's marginal_std NaN near t = 0.
    d = self._dtheta * jnp.asarray(t)
    return -2.0 * jnp.log1p(-2.0 * jnp.sin(0.5 * d) ** 2 - math.tan(self._theta0) * jnp.sin(d))

  def beta(self, t: Array) -> Array:
    t_c = jnp.minimum(t, self.t_cap)
    return jnp.where(t < self.t_cap, 2.0 * jnp.tan(self._theta0 + self._dtheta * t_c) * self._dtheta, self.max_beta)

  def integral(self, t: Array) -> Array:
    t_c = jnp.minimum(t, self.t_cap)
    return self._integral_uncapped(t_c) + self.max_beta * jnp.maximum(t - self.t_cap, 0.0)


@dataclasses.dataclass(frozen=True)
class SigmoidSchedule:
  """Sigmoid schedule: ᾱ(t) ∝ σ(λ(t)) with λ falling linearly from ``logsnr_max`` to ``logsnr_min``.

  With λ(t) = λ_max + (λ_min − λ_max) t/T, ᾱ(t) = σ(λ(t))/σ(λ_max) (normalised so
  ᾱ(0) = 1), which is the uniform-log-SNR schedule (Chen 2023, Kingma et al. 2021).
  B(t) = softplus(−λ(t)) − softplus(−λ_max) and β(t) = σ(−λ(t))(λ_max − λ_min)/T,
  finite on all of [0, T].
  """

  logsnr_min: float = -10.0
  logsnr_max: float = 10.0
  T: float = 1.0

  def __post_init__(self):
    _require(
        self.logsnr_max > self.logsnr_min,
        f"SigmoidSchedule.logsnr_max ({self.logsnr_max}) must exceed logsnr_min ({self.logsnr_min}).",
    )
    _require(self.T > 0, f"SigmoidSchedule.T must be > 0, got {self.T}.")

  def _lam(self, t: Array) -> Array:
    return self.logsnr_max + (self.logsnr_min - self.logsnr_max) * t / self.T

  def beta(self, t: Array) -> Array:
    rate = (self.logsnr_max - self.logsnr_min) / self.T
    return rate * jnp.exp(-jnp.logaddexp(0.0, self._lam(t)))  # σ(−λ) = 1/(1 + e^λ)

  def integral(self, t: Array) -> Array:
    # B = log(σ(λ_max)/σ(λ(t))) = log1p(σ(−λ_max) expm1(u)) with u = λ_max − λ(t) ≥ 0, exactly
    # 0 at t = 0; the difference of softplus terms (accurate once u is large) is off by
    # ~1e-7 near t = 0, often below 0, which made VP's marginal_std NaN there.
    u = (self.logsnr_max - self.logsnr_min) * jnp.asarray(t) / self.T
    near = u < 20.0
    z = math.exp(-abs(self.logsnr_max))
    sig_neg_max = z / (1.0 + z) if self.logsnr_max >= 0 else 1.0 / (1.0 + z)  # σ(−λ_max)
    b_near = jnp.log1p(sig_neg_max * jnp.expm1(jnp.where(near, u, 0.0)))
    b_far = jnp.logaddexp(0.0, -self._lam(t)) - jnp.logaddexp(0.0, -self.logsnr_max)
    return jnp.where(near, b_near, b_far)


SCHEDULES = {
    "linear": LinearSchedule,
    "quadratic": QuadraticSchedule,
    "exponential": ExponentialSchedule,
    "cosine": CosineSchedule,
    "sigmoid": SigmoidSchedule,
}


def get_schedule(name: str, **kwargs) -> BetaSchedule:
  """Builds a schedule by name, e.g. ``get_schedule("cosine", s=0.008)``."""
  if name not in SCHEDULES:
    raise ValueError(f"Unknown schedule {name!r}; choose one of {sorted(SCHEDULES)}.")
  try:
    return SCHEDULES[name](**kwargs)
  except TypeError as e:
    fields = [f.name for f in dataclasses.fields(SCHEDULES[name])]
    raise ValueError(f"Schedule {name!r} takes the fields {fields}; got {sorted(kwargs)} ({e}).") from None
