"""Consistency distillation (Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023,
sec. 4 and Algorithm 2; the improved recipe of Song & Dhariwal, "Improved Techniques for Training
Consistency Models", ICLR 2024): the objective, its discretization and its schedules.

Notation of the papers, in EDM's variables of any linear SDE (y = x/m(t), σ = s(t)/m(t), see
``sampling.edm``): the discretization has N levels ε = σ_1 < σ_2 < … < σ_N = σ_max,

    σ_i = (ε^{1/ρ} + (i − 1)/(N − 1) (σ_max^{1/ρ} − ε^{1/ρ}))^ρ            (``levels``)

and one term of the loss draws data x, an index n ∈ {1, …, N − 1} and z ~ N(0, I):

    y_{n+1} = x + σ_{n+1} z
    ŷ_n     = one Heun step of the teacher's probability-flow ODE from σ_{n+1} to σ_n
              (``sampling.edm.heun_step`` on the teacher's denoiser, 2 evaluations)
    loss    = λ(σ_n) d(f_θ(y_{n+1}, σ_{n+1}), stopgrad f_θ⁻(ŷ_n, σ_n))

with the target network θ⁻ ← stopgrad(μ θ⁻ + (1 − μ) θ) after every update (μ = 0: θ⁻ = θ, as
the improved recipe and the CIFAR-10 JAX release use).  The consistency functions f come from
score functions by Tweedie's formula (``edm.make_denoiser``), so the student is any network of
``score_fn.py`` — the "consistency" parametrization makes f(y, ε) = y exact.

Options (checked in Python before tracing):

    metric       "l2": mean of (f_θ − f_θ⁻)² over the dimensions (the paper's squared ℓ2);
                 "l1": mean of |f_θ − f_θ⁻|; "pseudo_huber": √(‖f_θ − f_θ⁻‖² + c²) − c with
                 c = ``huber_c`` (None: 0.00054 √d for d dimensions, the improved recipe's)
    weighting    "uniform": λ = 1; "inverse_step": λ(σ_n) = 1/(σ_{n+1} − σ_n) (improved recipe)
    index        "uniform": n uniform on {1, …, N − 1} (the paper's CD); "lognormal":
                 P(n) ∝ erf((ln σ_{n+1} − P_mean)/(√2 P_std)) − erf((ln σ_n − P_mean)/(√2 P_std))
                 (improved recipe, P_mean = −1.1, P_std = 2.0)

Schedules of the step k of K (``num_scales_at``, ``target_rate_at``): N(k) is "constant" (N =
``num_scales``, the paper's CD: 18 on CIFAR-10), "sqrt" (the paper's CT: ⌈√(k/K ((s₁ + 1)² − s₀²)
+ s₀²) − 1⌉ + 1) or "exponential" (improved: min(s₀ 2^⌊k/K'⌋, s₁) + 1 with K' = ⌊K/(⌊log₂⌊s₁/s₀⌋⌋ + 1)⌋),
with s₀ = ``start_scales`` and s₁ = ``num_scales``; μ(k) is "fixed" (μ = ``target_ema``) or
"adaptive" (the paper's CT: exp(s₀ ln μ₀ / N(k)), μ₀ = ``target_ema``).
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp

from score_jax import sde as sde_lib
from score_jax.sampling import edm

Array = Any
ScoreFn = Callable[[Array, Array], Array]

METRICS = ("l2", "l1", "pseudo_huber")
WEIGHTINGS = ("uniform", "inverse_step")
INDEX_DISTRIBUTIONS = ("uniform", "lognormal")
SCALE_SCHEDULES = ("constant", "sqrt", "exponential")
TARGET_SCHEDULES = ("fixed", "adaptive")


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(message)


def _number(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool)


def levels(num_scales: Array, size: int, *, sigma_min: float, sigma_max: float, rho: float) -> Array:
  """σ_1 … σ_N of the discretization (module docstring), padded to ``size`` ≥ N with σ_max.

  Args:
    num_scales: N ≥ 2, a Python int or a traced integer (the schedule's N(k)).
    size: the static length of the result.
    sigma_min, sigma_max, rho: ε, σ_max and ρ.

  Returns:
    [size] increasing levels; entries N … size − 1 are σ_max.
  """
  i = jnp.arange(size, dtype=jnp.float32)
  frac = jnp.minimum(i / (jnp.asarray(num_scales, jnp.float32) - 1.0), 1.0)
  a, b = sigma_min ** (1.0 / rho), sigma_max ** (1.0 / rho)
  return (a + frac * (b - a)) ** rho


def num_scales_at(step: Array, total_steps: int, *, schedule: str, num_scales: int, start_scales: int) -> Array:
  """N(k) of step k of K = ``total_steps`` (module docstring); an int32 scalar."""
  k = jnp.asarray(step, jnp.float32)
  if schedule == "constant":
    return jnp.asarray(num_scales, jnp.int32)
  s0, s1 = float(start_scales), float(num_scales)
  if schedule == "sqrt":
    n = jnp.ceil(jnp.sqrt(k / total_steps * ((s1 + 1.0) ** 2 - s0**2) + s0**2) - 1.0)
    return jnp.maximum(n, 1.0).astype(jnp.int32) + 1
  stages = math.floor(math.log2(math.floor(s1 / s0))) + 1
  k_prime = max(math.floor(total_steps / stages), 1)
  n = jnp.minimum(s0 * 2.0 ** jnp.floor(k / k_prime), s1)
  return n.astype(jnp.int32) + 1


def target_rate_at(scales: Array, *, schedule: str, target_ema: float, start_scales: int) -> Array:
  """μ(k) for N(k) = ``scales``: ``target_ema`` ("fixed"), or exp(s₀ ln μ₀ / N(k)) ("adaptive")."""
  if schedule == "fixed":
    return jnp.asarray(target_ema, jnp.float32)
  if target_ema <= 0:
    return jnp.zeros((), jnp.float32)
  return jnp.exp(start_scales * math.log(target_ema) / jnp.asarray(scales, jnp.float32))


def check_options(*, num_scales: Any, start_scales: Any, scale_schedule: str, target_ema: Any,
                  target_schedule: str, sigma_min: Any, sigma_max: Any, rho: Any, metric: str,
                  huber_c: Any, weighting: str, index: str, p_mean: Any, p_std: Any, prefix: str = "") -> None:
  """Raises ValueError naming the option (with ``prefix``, e.g. "config.distill.") on a bad value."""
  _require(isinstance(num_scales, int) and not isinstance(num_scales, bool) and num_scales >= 2,
           f"{prefix}num_scales={num_scales!r} must be an integer >= 2 (the discretization's levels; CD: 18).")
  _require(scale_schedule in SCALE_SCHEDULES,
           f"{prefix}scale_schedule={scale_schedule!r} is unknown; choose one of {list(SCALE_SCHEDULES)}.")
  if scale_schedule != "constant":
    _require(isinstance(start_scales, int) and not isinstance(start_scales, bool) and 2 <= start_scales <= num_scales,
             f"{prefix}start_scales={start_scales!r} must be an integer in [2, num_scales={num_scales}].")
  _require(target_schedule in TARGET_SCHEDULES,
           f"{prefix}target_schedule={target_schedule!r} is unknown; choose one of {list(TARGET_SCHEDULES)}.")
  _require(_number(target_ema) and 0.0 <= target_ema < 1.0,
           f"{prefix}target_ema={target_ema!r} must be a number in [0, 1) (μ of the target network; 0: θ⁻ = θ).")
  _require(_number(sigma_min) and _number(sigma_max) and 0 < sigma_min < sigma_max,
           f"{prefix}sigma_min={sigma_min!r}, sigma_max={sigma_max!r}: need 0 < sigma_min < sigma_max.")
  _require(_number(rho) and rho > 0, f"{prefix}rho={rho!r} must be a number > 0 (EDM: 7).")
  _require(metric in METRICS, f"{prefix}metric={metric!r} is unknown; choose one of {list(METRICS)}.")
  _require(huber_c is None or (_number(huber_c) and huber_c > 0),
           f"{prefix}huber_c={huber_c!r} must be None (0.00054·√d) or a number > 0.")
  _require(weighting in WEIGHTINGS, f"{prefix}weighting={weighting!r} is unknown; choose one of {list(WEIGHTINGS)}.")
  _require(index in INDEX_DISTRIBUTIONS,
           f"{prefix}index={index!r} is unknown; choose one of {list(INDEX_DISTRIBUTIONS)}.")
  _require(_number(p_std) and p_std > 0 and _number(p_mean), f"{prefix}p_mean={p_mean!r}, p_std={p_std!r}: "
           "need numbers with p_std > 0.")


def distance(a: Array, b: Array, *, metric: str, huber_c: Optional[float] = None) -> Array:
  """d(a, b) per example [B] for a, b [B, ...] (module docstring)."""
  diff = (a - b).reshape(a.shape[0], -1)
  if metric == "l2":
    return jnp.mean(jnp.square(diff), axis=-1)
  if metric == "l1":
    return jnp.mean(jnp.abs(diff), axis=-1)
  c = 0.00054 * math.sqrt(diff.shape[-1]) if huber_c is None else float(huber_c)
  return jnp.sqrt(jnp.sum(jnp.square(diff), axis=-1) + c * c) - c


def _draw_index(key: jax.Array, sigmas: Array, num_scales: Array, batch: int, *, index: str, p_mean: float,
                p_std: float) -> Array:
  """[B] 0-based n (student at sigmas[n + 1], target at sigmas[n]), 0 ≤ n < N − 1."""
  size = sigmas.shape[0]
  valid = jnp.arange(size - 1) < num_scales - 1  # [size − 1]
  if index == "uniform":
    logits = jnp.zeros((size - 1,), jnp.float32)
  else:
    cdf = jax.scipy.special.erf((jnp.log(sigmas) - p_mean) / (math.sqrt(2.0) * p_std))
    logits = jnp.log(jnp.maximum(cdf[1:] - cdf[:-1], 1e-30))
  logits = jnp.where(valid, logits, -jnp.inf)
  return jax.random.categorical(key, logits, shape=(batch,))


def consistency_distillation_loss(key: jax.Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *,
                                  target_score_fn: ScoreFn, teacher_score_fn: ScoreFn, num_scales: Array,
                                  max_scales: int, sigma_min: float, sigma_max: float, rho: float = 7.0,
                                  metric: str = "l2", huber_c: Optional[float] = None, weighting: str = "uniform",
                                  index: str = "uniform", p_mean: float = -1.1, p_std: float = 2.0,
                                  rows: Optional[Callable[[Array], Array]] = None) -> Array:
  """The consistency distillation loss, mean over the batch (module docstring).

  The key is split as ``k_n, k_z = jax.random.split(key)``: n from k_n (``index``), z =
  ``jax.random.normal(k_z, x.shape)``.

  Args:
    key: PRNG key.
    sde: the forward SDE (the levels are its noise levels σ̃; t(σ) is where networks are evaluated).
    score_fn: the student's score (differentiated).
    x: data [B, ...].
    target_score_fn: the target network's score (θ⁻; its output is stop-gradiented).
    teacher_score_fn: the teacher's score, whose Heun step gives ŷ_n.
    num_scales: N(k), an int or traced int ≤ ``max_scales``.
    max_scales: the largest N of the schedule (static).
    sigma_min, sigma_max, rho: the discretization (ε is the student's boundary).
    metric, huber_c, weighting, index, p_mean, p_std: module docstring.
    rows: None, or a map [B, ...] -> [B', ...] picking one micro-batch (``losses`` module
      docstring): everything is drawn for the whole batch, the networks see the rows.

  Returns:
    The scalar loss (with ``rows``: the micro-batch's share of it).
  """
  k_n, k_z = jax.random.split(key)
  batch = x.shape[0]
  sigmas = levels(num_scales, max_scales, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)  # [max_scales]
  n = _draw_index(k_n, sigmas, num_scales, batch, index=index, p_mean=p_mean, p_std=p_std)  # [B]
  z = jax.random.normal(k_z, x.shape, x.dtype)
  sigma_lo, sigma_hi = sigmas[n].astype(x.dtype), sigmas[n + 1].astype(x.dtype)  # [B], [B]
  if weighting == "uniform":
    weight = jnp.ones_like(sigma_lo)
  else:
    weight = 1.0 / (sigma_hi - sigma_lo)
  if rows is not None:
    x, z, sigma_lo, sigma_hi, weight = (rows(a) for a in (x, z, sigma_lo, sigma_hi, weight))
  times = lambda s: jnp.clip(sde.time_from_noise_level(s), sde.eps, sde.T)
  t_lo, t_hi = times(sigma_lo), times(sigma_hi)
  y_hi = x + sde_lib.bcast(sigma_hi, x) * z
  teacher = edm.make_denoiser(sde, teacher_score_fn)
  y_lo = jax.lax.stop_gradient(edm.heun_step(teacher, y_hi, sigma_hi, sigma_lo, t_hi, t_lo))
  student = edm.make_denoiser(sde, score_fn)(y_hi, sigma_hi, t_hi)
  target = jax.lax.stop_gradient(edm.make_denoiser(sde, target_score_fn)(y_lo, sigma_lo, t_lo))
  per_example = weight * distance(student, target, metric=metric, huber_c=huber_c)  # [B']
  return jnp.sum(per_example) / batch


__all__ = ["METRICS", "WEIGHTINGS", "INDEX_DISTRIBUTIONS", "SCALE_SCHEDULES", "TARGET_SCHEDULES", "levels",
           "num_scales_at", "target_rate_at", "check_options", "distance", "consistency_distillation_loss"]
