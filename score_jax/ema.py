"""Moving averages of the network parameters, and EMA lengths chosen after training.

Three averages of the parameter trajectory θ_1, θ_2, … (θ_n: after n optimizer updates), each an
update ``avg_n = β_n · avg_{n−1} + (1 − β_n) · θ_n`` with its own β_n:

* **classic** (score_sde's ``ema_rate``): β_n = rate from the first step on.  The average keeps
  a weight rate^n on the initial parameters: 0.999^2000 ≈ 0.14 after 2000 steps.
* **classic with ramp-up** (Karras et al., "Elucidating the Design Space of Diffusion-Based
  Generative Models", NeurIPS 2022, its training loop's ``ema_rampup_ratio``): the half-life in
  steps is min(H, ratio · (n − 1)), H = ln ½ / ln rate the half-life of ``rate``, so
  β_n = min(rate, ½^(1 / (ratio · (n − 1)))); β_1 = 0, so the initial parameters get weight 0 and
  the average follows a window of about ``ratio`` times the run's length until it reaches H.
* **power function** (Karras et al., "Analyzing and Improving the Training Dynamics of
  Diffusion Models", CVPR 2024, sec. 3.1 and appendix C): β_n = (1 − 1/n)^(γ+1).  The product
  Π_{j>k} β_j telescopes to (k/n)^(γ+1), so exactly
  ``avg_n = Σ_{k=1..n} (k^(γ+1) − (k−1)^(γ+1)) / n^(γ+1) · θ_k`` (``power_weights``): a weight
  ∝ τ^γ over the whole run, whose width relative to its length, σ_rel, is the same at every n.
  σ_rel² = (γ+1) / ((γ+2)² (γ+3)) (``gamma_to_sigma_rel``; its inverse ``sigma_rel_to_gamma``
  is the largest root of a cubic).  EDM2 tracks σ_rel = 0.05 and 0.10.

**Post-hoc EMA** (the same paper, sec. 3.2 and appendix C.3): snapshots of power-function
averages taken during training span other profiles.  The profile of snapshot i is
p_i(τ) = (γ_i+1)/t_i · (τ/t_i)^γ_i on [0, t_i]; the average of any target profile p is approximated
by Σ_i x_i · snapshot_i with x the least-squares solution A x = b, A_ij = ⟨p_i, p_j⟩,
b_i = ⟨p_i, p⟩ (``profile_inner`` is the closed form of these inner products), then rescaled
to sum to 1.  ``solve_posthoc`` returns x and the relative L2 error of the approximated
profile, ‖p − Σ x_i p_i‖ / ‖p‖, which says whether a target is within reach of the snapshots.

Everything here is a plain function of numbers or of parameter trees; ``score_jax.train_state``
applies the update, the training job writes the snapshots and ``--mode=posthoc_ema`` solves.
"""

from __future__ import annotations

import dataclasses
import math
import re
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

Array = Any
Params = Any

KINDS = ("classic", "power")
# γ = 0 is the uniform average of the whole run, σ_rel = 1/√12; larger σ_rel needs γ < 0, a
# profile that weighs the first parameters most.
SIGMA_REL_MAX = math.sqrt(1.0 / 12.0)
PROFILE_KINDS = ("power", "posthoc")  # tracked snapshots, reconstructions (``profile_name``)
_PROFILE = re.compile(r"(power|posthoc)_(\d+\.\d{3})")


# --- σ_rel and γ --------------------------------------------------------------------------
def gamma_to_sigma_rel(gamma: float) -> float:
  """σ_rel of the power-function profile with exponent γ (EDM2, eq. 123): √((γ+1) / ((γ+2)² (γ+3)))."""
  gamma = float(gamma)
  return math.sqrt((gamma + 1.0) / ((gamma + 2.0) ** 2 * (gamma + 3.0)))


def sigma_rel_to_gamma(sigma_rel: float) -> float:
  """The exponent γ ≥ 0 of the profile with relative width ``sigma_rel`` in (0, 1/√12].

  σ² (γ+2)² (γ+3) = γ + 1 is the cubic γ³ + 7γ² + (16 − σ⁻²) γ + (12 − σ⁻²) = 0 (EDM2, eq. 126 and
  Algorithm 2); γ is its largest real root.

  Raises:
    ValueError: ``sigma_rel`` outside (0, 1/√12].
  """
  sigma_rel = float(sigma_rel)
  if not 0.0 < sigma_rel <= SIGMA_REL_MAX + 1e-12:
    raise ValueError(f"sigma_rel must lie in (0, {SIGMA_REL_MAX:.4f}] (1/√12, the uniform average), got {sigma_rel}.")
  inv = sigma_rel ** -2
  roots = np.roots([1.0, 7.0, 16.0 - inv, 12.0 - inv])
  return max(0.0, float(roots[np.abs(roots.imag) < 1e-9].real.max()))


# --- the averages tracked during training --------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EMA:
  """Which averages a train state tracks (hashable: a static argument of the train step).

  Attributes:
    kind: "classic" (one average at ``rate``, ramped up with ``rampup_ratio``) or "power"
      (one power-function average per ``sigma_rels`` entry).
    rate: the classic β (score_sde's ``ema_rate``), in [0, 1).
    rampup_ratio: classic only: EDM's ramp-up of the half-life, min(H, ratio · steps); 0: none
      (score_sde: β = rate from the first step).
    sigma_rels: power only: the tracked profiles' σ_rel, each in (0, 1/√12] with at most three
      decimals (snapshot folders are named by σ_rel to three decimals).
  """

  kind: str = "classic"
  rate: float = 0.999
  rampup_ratio: float = 0.0
  sigma_rels: tuple[float, ...] = ()

  def __post_init__(self):
    if self.kind not in KINDS:
      raise ValueError(f"kind={self.kind!r} is unknown; choose one of {list(KINDS)}.")
    if not 0.0 <= self.rate < 1.0:
      raise ValueError(f"rate must lie in [0, 1), got {self.rate}.")
    if not self.rampup_ratio >= 0.0:
      raise ValueError(f"rampup_ratio must be >= 0 (0: no ramp-up), got {self.rampup_ratio}.")
    if self.kind == "power":
      if not self.sigma_rels:
        raise ValueError("sigma_rels must name at least one σ_rel for the power EMA (EDM2: (0.05, 0.10)).")
      for s in self.sigma_rels:
        check_sigma_rel(s, "sigma_rels")
      names = [profile_name("power", s) for s in self.sigma_rels]
      if len(set(names)) != len(names):
        raise ValueError(f"sigma_rels={tuple(self.sigma_rels)} repeats a value.")

  @property
  def num_averages(self) -> int:
    """How many parameter copies the average needs: 1 (classic) or len(sigma_rels)."""
    return len(self.sigma_rels) if self.kind == "power" else 1

  @property
  def gammas(self) -> tuple[float, ...]:
    """The power-function exponents of ``sigma_rels`` (power only)."""
    return tuple(sigma_rel_to_gamma(s) for s in self.sigma_rels)

  def betas(self, n: Array, dtype: Any = jnp.float32) -> list[tuple[Array, Array]]:
    """(β_n, 1 − β_n) of each tracked average at update ``n`` ≥ 1 (may be traced), in ``dtype``
    (the parameters'), both without cancellation: 1 − (1 − 1/n)^(γ+1) is −expm1((γ+1) · log1p(−1/n))."""
    n = jnp.asarray(n, dtype)
    if self.kind == "power":
      out = []
      for gamma in self.gammas:
        log_beta = (gamma + 1.0) * jnp.log1p(-1.0 / n)  # −inf at n = 1: β_1 = 0
        out.append((jnp.exp(log_beta), -jnp.expm1(log_beta)))
      return out
    rate, one_minus_rate = jnp.asarray(self.rate, dtype), jnp.asarray(1.0 - self.rate, dtype)
    if self.rampup_ratio <= 0.0 or self.rate == 0.0:
      return [(rate, one_minus_rate)]
    before = n - 1.0  # updates before this one: EDM's cur_nimg / batch_size
    # ½^(1/(ratio·before)) = exp(ln ½ / (ratio·before)); −inf, so β = 0, at the first update.
    log_ramp = jnp.where(before > 0, math.log(0.5) / (self.rampup_ratio * jnp.maximum(before, 1.0)), -jnp.inf)
    use_rate = log_ramp >= math.log(self.rate)  # the half-life has reached the rate's
    return [(jnp.where(use_rate, rate, jnp.exp(log_ramp)), jnp.where(use_rate, one_minus_rate, -jnp.expm1(log_ramp)))]


def update(average: Params, params: Params, beta: Array, one_minus_beta: Array) -> Params:
  """β · average + (1 − β) · params, leaf by leaf (score_sde's Polyak update at β = ema_rate)."""
  return jax.tree.map(lambda a, p: beta * a + one_minus_beta * p, average, params)


def check_sigma_rel(value: float, name: str) -> float:
  """``value`` as a σ_rel in (0, 1/√12] with at most three decimals, or ValueError naming ``name``."""
  if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)):
    raise ValueError(f"{name}: σ_rel must be a number, got {value!r}.")
  value = float(value)
  if not 0.0 < value <= SIGMA_REL_MAX:
    raise ValueError(f"{name}: σ_rel={value} is outside (0, {SIGMA_REL_MAX:.4f}] (1/√12 is the uniform average of "
                     "the whole run; EDM2 tracks 0.05 and 0.10).")
  if abs(round(value, 3) - value) > 1e-9:
    raise ValueError(f"{name}: σ_rel={value} has more than three decimals; EMA folders are named by σ_rel to three "
                     f"decimals, so use {round(value, 3)}.")
  return round(value, 3)


def profile_name(kind: str, sigma_rel: float) -> str:
  """The export folder of a profile: ``power_0.050`` (a tracked snapshot), ``posthoc_0.080``."""
  if kind not in PROFILE_KINDS:
    raise ValueError(f"kind={kind!r} is unknown; choose one of {list(PROFILE_KINDS)}.")
  return f"{kind}_{float(sigma_rel):.3f}"


def parse_profile_name(name: str) -> tuple[str, float] | None:
  """(kind, σ_rel) of a ``profile_name``, or None for any other name."""
  match = _PROFILE.fullmatch(name)
  return (match.group(1), float(match.group(2))) if match else None


# --- closed forms -------------------------------------------------------------------------
def power_weights(gamma: float, num_steps: int) -> np.ndarray:
  """The weight of θ_0 … θ_N in the power-function average after N updates: [N + 1] float64,
  0 on θ_0 and (k^(γ+1) − (k−1)^(γ+1)) / N^(γ+1) on θ_k; they sum to 1."""
  k = np.arange(num_steps + 1, dtype=np.float64)
  cum = (k / num_steps) ** (gamma + 1.0)  # Σ_{j ≤ k} w_j
  return np.diff(cum, prepend=0.0)


def profile_inner(t_a: Array, gamma_a: Array, t_b: Array, gamma_b: Array) -> np.ndarray:
  """⟨p_a, p_b⟩ = ∫ p_a(τ) p_b(τ) dτ of two power-function profiles ending at t_a and t_b
  (p(τ) = (γ+1)/t · (τ/t)^γ on [0, t]; EDM2, eq. 151 and Algorithm 3), broadcast elementwise:
  (γ_a+1)(γ_b+1) / ((γ_a+γ_b+1) · max(t_a, t_b)) · (t_min / t_max)^(γ of the longer one)."""
  t_a, gamma_a, t_b, gamma_b = (np.asarray(v, np.float64) for v in (t_a, gamma_a, t_b, gamma_b))
  t_max, t_min = np.maximum(t_a, t_b), np.minimum(t_a, t_b)
  longer_gamma = np.where(t_a < t_b, gamma_b, gamma_a)
  return (gamma_a + 1) * (gamma_b + 1) / ((gamma_a + gamma_b + 1) * t_max) * (t_min / t_max) ** longer_gamma


@dataclasses.dataclass(frozen=True)
class Solution:
  """Post-hoc coefficients: ``coefficients`` [num snapshots, num targets] (each column sums to 1)
  and ``relative_error`` [num targets], ‖p − Σ x_i p_i‖ / ‖p‖ of each target profile."""

  coefficients: np.ndarray
  relative_error: np.ndarray


def solve_posthoc(steps: Sequence[float], sigma_rels: Sequence[float], target_step: float,
                  target_sigma_rels: Sequence[float]) -> Solution:
  """The least-squares combination of snapshots that best matches each target profile.

  Args:
    steps: the step of each snapshot (one entry per snapshot and tracked profile).
    sigma_rels: the σ_rel of each snapshot's profile, same length.
    target_step: where the targets end (usually the last snapshot's step).
    target_sigma_rels: the σ_rel of each profile to reconstruct.

  Returns:
    The coefficients and each target's relative profile error.

  Raises:
    ValueError: no snapshot, mismatched lengths, or a σ_rel outside (0, 1/√12].
  """
  steps = np.asarray(steps, np.float64)
  if steps.ndim != 1 or not steps.size or len(sigma_rels) != steps.size:
    raise ValueError(f"steps and sigma_rels must be two lists of the same length >= 1, got {len(steps)} and "
                     f"{len(sigma_rels)}.")
  if np.any(steps <= 0) or target_step <= 0:
    raise ValueError("snapshot steps and target_step must be > 0.")
  gammas = np.array([sigma_rel_to_gamma(s) for s in sigma_rels])
  target_gammas = np.array([sigma_rel_to_gamma(s) for s in target_sigma_rels])
  target_steps = np.full(target_gammas.shape, float(target_step))
  gram = profile_inner(steps[:, None], gammas[:, None], steps[None, :], gammas[None, :])  # [S, S]
  cross = profile_inner(steps[:, None], gammas[:, None], target_steps[None, :], target_gammas[None, :])  # [S, T]
  x = np.linalg.lstsq(gram, cross, rcond=None)[0]
  x = x / np.sum(x, axis=0, keepdims=True)  # each reconstruction an average: weights summing to 1
  norm2 = profile_inner(target_steps, target_gammas, target_steps, target_gammas)
  err2 = norm2 - 2.0 * np.sum(x * cross, axis=0) + np.einsum("it,ij,jt->t", x, gram, x)
  return Solution(coefficients=x, relative_error=np.sqrt(np.maximum(err2, 0.0) / norm2))
