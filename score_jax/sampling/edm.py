"""The EDM sampler (Karras et al. 2022): Heun steps on a ρ-spaced σ schedule, with optional
stochastic churn, for any linear SDE of ``score_jax.sde``.

Every linear SDE is a VE process after rescaling: y = x(t)/m(t) is the data plus
N(0, σ̃(t)²) noise with σ̃ = ``sde.noise_level(t)``.  The sampler works in y and σ̃, so with
VE it is EDM's own sampler and with VP / sub-VP it is EDM's σ(t) reparametrization of
those models.  The denoiser it needs comes from the score by Tweedie's formula and the
chain rule (∇_y = m ∇_x):

    D(y; σ) = y + σ² ∇_y log p(y; σ) = y + σ² m(t) · score_fn(m(t) y, t),   t = t(σ).

Initial noise: y_0 is the SDE's own prior carried into y.  The prior x(T) ~ N(0, p² I)
(p = ``sde.prior_std``) treats the data as N(0, v I) in y with v = (p² − s(T)²)/m(T)²
(σ_min² for VE, 1 for VP), so y_0 ~ N(0, (σ_0² + v) I).  At the default σ_0 = σ̃(T) this is
exactly x(T)/m(T) for x(T) drawn from the prior, as every other sampler here starts.

Options (``EDM_METHOD.defaults``): num_steps N = 18 (NFE 2N − 1 = 35), rho = 7, sigma_min /
sigma_max = None for σ̃(eps) / σ̃(T), and the churn S_churn = 0, S_min = 0, S_max = ∞,
S_noise = 1.  The score is only defined on [eps, T], so σ_min, σ_max must lie in
[σ̃(eps), σ̃(T)] and the churned level σ̂_i = σ_i (1 + γ_i) is capped at σ_max.  Note σ̃(eps)
is small for VE and sub-VP (about 1.3e-4 and 1.1e-4 at their default eps; 0.0105 for VP):
passing a larger sigma_min, as EDM's 0.002, spends fewer steps where nothing changes.
"""

from __future__ import annotations

import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.sampling import common, constraints, options
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any
Denoiser = Callable[[Array, Array, Array], Array]

# σ may exceed σ̃(T) (or undercut σ̃(eps)) by this relative amount, e.g. VE's σ_max given
# for its σ̃(T) = √(σ_max² − σ_min²); the score is then evaluated at the end of [eps, T].
_RANGE_SLACK = 1e-3


def _default_range(sde: SDE, sigma_min: Optional[float], sigma_max: Optional[float]) -> tuple[float, float]:
  """(σ_min, σ_max) with None replaced by σ̃(eps) and σ̃(T), as Python floats."""
  with jax.ensure_compile_time_eval():
    lo = float(sde.noise_level(jnp.float32(sde.eps))) if sigma_min is None else float(sigma_min)
    hi = float(sde.noise_level(jnp.float32(sde.T))) if sigma_max is None else float(sigma_max)
  return lo, hi


def edm_sigmas(num_steps: int, *, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
  """The noise levels σ_0 = σ_max > … > σ_{N−1} = σ_min, σ_N = 0 (N = ``num_steps``).

  Returns:
    [N + 1] float64 array.
  """
  # Karras et al. 2022, eq. 5: σ_i = (σ_max^{1/ρ} + i/(N−1) (σ_min^{1/ρ} − σ_max^{1/ρ}))^ρ.
  frac = np.arange(num_steps, dtype=np.float64) / max(num_steps - 1, 1)
  a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  return np.append((a + frac * (b - a)) ** rho, 0.0)


def edm_gammas(sigmas: np.ndarray, *, s_churn: float, s_min: float, s_max: float) -> np.ndarray:
  """Churn factors γ_i = min(S_churn/N, √2 − 1) for σ_i in [S_min, S_max], else 0: [N]."""
  levels = sigmas[:-1]
  gamma = min(s_churn / len(levels), math.sqrt(2.0) - 1.0)
  return np.where((levels >= s_min) & (levels <= s_max), gamma, 0.0)


def initial_std(sde: SDE, sigma: float) -> float:
  """The std of the first state y_0 at noise level σ: √(σ² + v), v = (p² − s(T)²)/m(T)² the data
  variance the SDE's prior assumes in y (module docstring)."""
  with jax.ensure_compile_time_eval():
    t_end = jnp.float32(sde.T)
    v = float((sde.prior_std**2 - sde.marginal_std(t_end) ** 2) / sde.mean_coeff(t_end) ** 2)
  return math.sqrt(sigma**2 + max(v, 0.0))


def check_sigma_range(sde: SDE, sigma_min: Optional[float], sigma_max: Optional[float]) -> tuple[float, float]:
  """Raises ValueError unless σ_min < σ_max lie in [σ̃(eps), σ̃(T)] (None: those ends); returns them."""
  for name, value in (("sigma_min", sigma_min), ("sigma_max", sigma_max)):
    if value is not None:
      options.positive({name: value}, name)
  lo, hi = _default_range(sde, sigma_min, sigma_max)
  options.require(lo < hi, f"sampling options sigma_min={lo!r} and sigma_max={hi!r}: sigma_min must be smaller.")
  floor, ceiling = _default_range(sde, None, None)
  options.require(
      lo >= floor * (1.0 - _RANGE_SLACK),
      f"sampling option sigma_min={lo!r} is below the SDE's noise level at eps, {floor:.6g}; the score is not "
      "defined there (use None for that level).")
  options.require(
      hi <= ceiling * (1.0 + _RANGE_SLACK),
      f"sampling option sigma_max={hi!r} exceeds the SDE's noise level at T, {ceiling:.6g}; the score is not "
      "defined there (use None for that level).")
  return lo, hi


def make_denoiser(sde: SDE, score_fn: ScoreFn) -> Denoiser:
  """D(y, σ, t) = y + σ² m(t) score_fn(m(t) y, t) for y [B, ...], σ [B] and t = t(σ) [B]."""

  def denoise(y, sigma, t):
    m = bcast(sde.mean_coeff(t), y)
    return y + bcast(sigma**2, y) * m * score_fn(m * y, t)

  return denoise


def euler_step(denoiser: Denoiser, y: Array, sigma: Array, sigma_next: Array, t: Array) -> tuple[Array, Array]:
  """One Euler step of the probability-flow ODE dy/dσ = (y − D(y; σ))/σ from σ to σ_next [B]
  (Karras et al. 2022, Algorithm 1, lines 4–5); returns (y at σ_next, the slope at σ)."""
  d = (y - denoiser(y, sigma, t)) / bcast(sigma, y)
  return y + bcast(sigma_next - sigma, y) * d, d


def heun_step(denoiser: Denoiser, y: Array, sigma: Array, sigma_next: Array, t: Array, t_next: Array) -> Array:
  """One Heun step of dy/dσ = (y − D(y; σ))/σ from σ to σ_next > 0 [B] (Karras et al. 2022,
  Algorithm 1, lines 4–8): the Euler step, then the trapezoid of the slopes at both ends.  ``t``
  and ``t_next`` are the SDE times of the two levels, where ``denoiser`` is evaluated.  It is
  the sampler's step and consistency distillation's teacher step (``distillation.consistency_distillation_loss``)."""
  y_next, d = euler_step(denoiser, y, sigma, sigma_next, t)
  d_next = (y_next - denoiser(y_next, sigma_next, t_next)) / bcast(sigma_next, y)
  return y + bcast(sigma_next - sigma, y) * 0.5 * (d + d_next)


def edm_solve(denoiser: Denoiser, sde: SDE, y: Array, keys: jax.Array, *, sigmas: np.ndarray, gammas: np.ndarray,
              s_noise: float, constraint: constraints.Constraint = None) -> Array:
  """Runs the EDM steps from y = y_0 [B, ...] at σ_0 down to σ_N = 0.

  Args:
    denoiser: D(y, σ, t), see ``make_denoiser``.
    sde: gives the time t(σ) at which the score is evaluated.
    y: the initial state [B, ...] at noise level sigmas[0].
    keys: per-sample keys [B]; step i's churn noise is ``common.normal(keys, ·, i + 1)``.
    sigmas: [N + 1] noise levels ending with 0 (``edm_sigmas``).
    gammas: [N] churn factors (``edm_gammas``); all zero makes the sampler deterministic.
    s_noise: S_noise, the std of the churn noise.
    constraint: known coordinates (``sampling.constraints``), replaced in y at σ_{i+1} after
      every step (the churn only raises their noise from σ_i to σ̂_i, exactly as the forward
      process would) and set exactly at σ = 0.

  Returns:
    y at σ = 0 [B, ...]: samples of the data, 2N − 1 denoiser evaluations later.
  """
  n, shape = y.shape[0], y.shape
  num_steps = len(gammas)
  # σ̂_i = σ_i (1 + γ_i), kept at or below σ_0 so that the score is needed only on [eps, T].
  sigma_hat = np.minimum(sigmas[:-1] * (1.0 + gammas), sigmas[0])
  churn_std = s_noise * np.sqrt(np.maximum(sigma_hat**2 - sigmas[:-1] ** 2, 0.0))
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  times = lambda s: jnp.clip(sde.time_from_noise_level(f32(s)), sde.eps, sde.T)
  # t_next[N − 1] (at σ_N = 0) is never used: the last step is Euler.  [N], [N]
  t_hat, t_next = times(sigma_hat), times(np.maximum(sigmas[1:], sigmas[-2]))
  sigma_hat, sigma_next, churn_std = f32(sigma_hat), f32(sigmas[1:]), f32(churn_std)
  full = lambda a, i: common.full_t(a[i], n)

  def churn(i, y):
    return y + churn_std[i] * common.normal(keys, shape, i + 1)

  def heun(y, i):
    y = heun_step(denoiser, churn(i, y), full(sigma_hat, i), full(sigma_next, i), full(t_hat, i), full(t_next, i))
    return constraints.project_noise_level(constraint, y, full(sigma_next, i), keys, i + 1), None

  # Karras et al. 2022, Algorithm 2: Heun steps, then an Euler step to σ_N = 0.
  y = constraints.project_noise_level(constraint, y, common.full_t(sigmas[0], n), keys, 0)
  y, _ = jax.lax.scan(heun, y, jnp.arange(num_steps - 1))
  last = num_steps - 1
  y, _ = euler_step(denoiser, churn(last, y), full(sigma_hat, last), full(sigma_next, last), full(t_hat, last))
  return constraints.finalize(constraint, y)


def edm_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, num_steps: int, rho: float,
               sigma_min: Optional[float], sigma_max: Optional[float], s_churn: float, s_min: float, s_max: float,
               s_noise: float, constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """Draws ``shape`` samples with the EDM sampler (Karras et al. 2022, Algorithm 2).

  Args:
    key: sample i draws its initial noise and churn noise from fold_in(key, i).
    sde: any linear SDE; the sampler works in y = x/m(t) and σ = ``sde.noise_level(t)``.
    score_fn: score_fn(x [B, ...], t [B]) -> ∇log p_t(x).
    shape: [B, ...].
    num_steps: N, the number of noise levels above 0; NFE = 2N − 1.
    rho: ρ of the σ schedule (eq. 5).
    sigma_min, sigma_max: the schedule's ends; None means σ̃(eps) and σ̃(T).
    s_churn, s_min, s_max, s_noise: stochastic churn (S_churn = 0 turns it off).
    constraint: known coordinates replaced after every step (``sampling.constraints``).

  Returns:
    samples [shape] and the number of score evaluations per sample, 2N − 1.
  """
  lo, hi = _default_range(sde, sigma_min, sigma_max)
  sigmas = edm_sigmas(num_steps, sigma_min=lo, sigma_max=hi, rho=rho)
  gammas = edm_gammas(sigmas, s_churn=s_churn, s_min=s_min, s_max=s_max)
  keys = common.per_sample_keys(key, shape[0])
  y0 = initial_std(sde, sigmas[0]) * common.normal(keys, shape, 0)  # [B, ...]
  y = edm_solve(make_denoiser(sde, score_fn), sde, y0, keys, sigmas=sigmas, gammas=gammas, s_noise=s_noise,
                constraint=constraint)
  return y, 2 * num_steps - 1  # x = m(0) y = y at σ = 0


def _check(sde: SDE, opts) -> None:
  options.count(opts, "num_steps")
  options.positive(opts, "rho", "s_noise")
  for name in ("s_churn", "s_min", "s_max"):
    value = opts[name]
    options.require(isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
                    f"sampling option {name}={value!r} must be a number >= 0.")
  options.require(opts["s_min"] <= opts["s_max"],
                  f"sampling options s_min={opts['s_min']!r} and s_max={opts['s_max']!r}: s_min must not exceed s_max.")
  check_sigma_range(sde, opts["sigma_min"], opts["sigma_max"])


EDM_METHOD = options.Method(edm_sample, dict(
    num_steps=18, rho=7.0, sigma_min=None, sigma_max=None, s_churn=0.0, s_min=0.0, s_max=math.inf, s_noise=1.0),
                            _check, options.no_resampling("edm"))
