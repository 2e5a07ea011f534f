"""DPM-Solver++ (Lu et al. 2022b, arXiv 2211.01095) and DDIM (Song et al. 2021a, arXiv 2010.02502)
for VP and sub-VP SDEs, each one compiled loop.

Both samplers work in the half log-SNR λ_t = log(α_t/σ_t) (= ½ ``sde.log_snr``) with
α_t = ``mean_coeff``, σ_t = ``marginal_std``, and the data prediction (Tweedie)

    x̂_0(x, t) = (x + σ_t² ∇log p_t(x)) / α_t.

Why the solvers hold for sub-VP too.  Every SDE here has x_t | x_0 ~ N(α_t x_0, σ_t² I)
with f = d log α/dt, and the marginal variance obeys dσ²/dt = 2fσ² + g², so
g²/(2σ²) = d log σ/dt − f.  (Check for sub-VP, σ = 1 − e^{−B}, g² = β(1 − e^{−2B}):
2fσ² + g² = β(1 − e^{−B})(−(1 − e^{−B}) + 1 + e^{−B}) = 2βe^{−B}(1 − e^{−B}) = dσ²/dt.)
With ∇log p_t(x) = (α_t x̂_0 − x)/σ_t² the probability-flow ODE dx/dt = f x − ½g² ∇log p_t
becomes dx/dt = (d log σ/dt) x + (dλ/dt) α_t x̂_0, i.e. d(x/σ)/dλ = e^{λ} x̂_0, and so

    x_{t'} = (σ_{t'}/σ_t) x_t + σ_{t'} ∫_{λ_t}^{λ_{t'}} e^{λ} x̂_0(λ) dλ.

Nothing here uses α² + σ² = 1; only α and σ enter.  Expanding x̂_0 in powers of
u = λ − λ_t over a step of length h = λ_{t'} − λ_t gives

    x_{t'} = (σ_{t'}/σ_t) x_t + α_{t'} [ψ_0(h) x̂_0 + ψ_1(h) x̂_0' + ψ_2(h) x̂_0'' + …],
    ψ_k(h) = ∫_0^h e^{u−h} u^k/k! du:  ψ_0 = 1 − e^{−h},  ψ_1 = h − ψ_0,  ψ_2 = h²/2 − ψ_1,

where ' is d/dλ.  Order 1 (ψ_0 term alone) is DPM-Solver++(1) = DDIM with η = 0; the
higher orders estimate x̂_0' and x̂_0'' from earlier evaluations (multistep) or from
intermediate points inside the step (single-step).

VE SDEs (α = 1, λ = −log σ) are rejected: use ``pc``, ``ode`` or the EDM sampler there.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.sampling import common, constraints, options, steps
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any

SKIP_TYPES = ("logSNR", "time_uniform", "time_quadratic")
VARIANTS = ("multistep", "singlestep")
ORDERS = (1, 2, 3)
SDE_KINDS = ("vp", "subvp")
# The DPM-Solver++ authors' stabilizing trick (diffusers' ``lower_order_final``): below 15
# steps, lower orders at the last multistep steps.
LOWER_ORDER_FINAL_BELOW = 15


# --- shared pieces: λ, time grids, data prediction -------------------------------------------

def half_log_snr(sde: SDE, t: Array) -> Array:
  """λ_t = log(α_t/σ_t) = ½ log SNR(t)."""
  return 0.5 * sde.log_snr(t)


def time_grid(sde: SDE, num_steps: int, skip_type: str) -> Array:
  """num_steps + 1 times [num_steps + 1] from T down to eps.

  Args:
    sde: a VP or sub-VP SDE.
    num_steps: number of intervals.
    skip_type: "logSNR" (uniform in λ, DPM-Solver's default), "time_uniform" (uniform in t),
      or "time_quadratic" (uniform in √t).

  Returns:
    The grid, decreasing, with exactly T first and eps last.
  """
  T, eps = sde.T, sde.eps
  if skip_type == "logSNR":
    lam_T = half_log_snr(sde, jnp.asarray(T, jnp.float32))
    lam_eps = half_log_snr(sde, jnp.asarray(eps, jnp.float32))
    lams = jnp.linspace(lam_T, lam_eps, num_steps + 1)
    ts = sde.time_from_log_snr(2.0 * lams)
  elif skip_type == "time_uniform":
    ts = jnp.linspace(T, eps, num_steps + 1)
  elif skip_type == "time_quadratic":
    ts = jnp.square(jnp.linspace(np.sqrt(T), np.sqrt(eps), num_steps + 1))
  else:
    raise ValueError(f"sampling option skip_type={skip_type!r} is unknown; choose one of {list(SKIP_TYPES)}.")
  return ts.at[0].set(T).at[-1].set(eps).astype(jnp.float32)


def data_prediction(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
  """x̂_0(x, t) = (x + σ_t² score)/α_t [B, ...] (one score evaluation); t is [B]."""
  return sde.tweedie_denoise(x, t, score_fn(x, t))


def _psi(h: Array) -> tuple[Array, Array, Array]:
  """ψ_0, ψ_1, ψ_2 of the module docstring for step lengths h > 0 in λ."""
  psi0 = -jnp.expm1(-h)
  psi1 = h - psi0
  psi2 = 0.5 * h * h - psi1
  return psi0, psi1, psi2


def _first_order(sde: SDE, x: Array, m0: Array, t: Array, t_next: Array) -> Array:
  """x_{t'} = (σ_{t'}/σ_t) x_t + α_{t'} ψ_0(h) x̂_0: DPM-Solver++(1) from data prediction m0."""
  h = half_log_snr(sde, t_next) - half_log_snr(sde, t)
  ratio = sde.marginal_std(t_next) / sde.marginal_std(t)
  return bcast(ratio, x) * x + bcast(sde.mean_coeff(t_next) * _psi(h)[0], x) * m0


# --- DPM-Solver++ ----------------------------------------------------------------------------

def dpm_solver_orders(order: int, num_steps: int, variant: str, lower_order_final: bool) -> tuple[int, ...]:
  """The order of each step, for a budget of ``num_steps`` score evaluations.

  Multistep: one evaluation per step (num_steps steps); the first steps warm up with orders 1, 2, and with
  ``lower_order_final`` and fewer than 15 steps the last ones use orders …, 2, 1.
  Single-step: ``order`` evaluations per step (the orders sum to num_steps):
  ⌊num_steps/order⌋ steps of ``order`` and one step of the remainder order;
  with ``lower_order_final`` an order-3 budget divisible by 3 ends in steps of order 2 and 1
  (DPM-Solver's allocation) instead of a last order-3 step.
  """
  if variant == "multistep":
    orders = [min(order, i + 1) for i in range(num_steps)]
    if lower_order_final and num_steps < LOWER_ORDER_FINAL_BELOW:
      orders = [min(o, num_steps - i) for i, o in enumerate(orders)]
    return tuple(orders)
  q, r = divmod(num_steps, order)
  if r:
    return (order,) * q + (r,)
  if lower_order_final and order == 3:
    return (3,) * (q - 1) + (2, 1)
  return (order,) * q


def _runs(orders: tuple[int, ...]) -> list[tuple[int, int, int]]:
  """Consecutive runs of equal order as (order, first step, number of steps)."""
  runs = []
  for i, o in enumerate(orders):
    if runs and runs[-1][0] == o:
      runs[-1] = (o, runs[-1][1], runs[-1][2] + 1)
    else:
      runs.append((o, i, 1))
  return runs


# Lu et al. 2022b (arXiv 2211.01095), Algorithm 2 (2M) and its order-3 analogue (3M).
def multistep_update(sde: SDE, order: int, x: Array, t: Array, t_next: Array, m0: Array,
                     history: tuple[Array, Array, Array, Array]) -> Array:
  """One DPM-Solver++ multistep step t → t_next from x̂_0 at t (m0) and earlier ones.

  Args:
    sde: a VP or sub-VP SDE.
    order: 1, 2 (Algorithm 2, "2M") or 3 ("3M").
    x: x_t [B, ...].
    t, t_next: [B] times, t_next < t.
    m0: x̂_0(x_t, t) [B, ...].
    history: (m1, m2, lam1, lam2): x̂_0 [B, ...] at the previous two grid times and their
      λ [B]; entries the order does not need are ignored.

  Returns:
    x_{t_next} [B, ...].
  """
  if order == 1:
    return _first_order(sde, x, m0, t, t_next)
  m1, m2, lam1, lam2 = history
  lam, lam_next = half_log_snr(sde, t), half_log_snr(sde, t_next)
  h, h0 = lam_next - lam, lam - lam1
  ratio = sde.marginal_std(t_next) / sde.marginal_std(t)
  alpha_next = sde.mean_coeff(t_next)
  psi0, psi1, psi2 = _psi(h)
  d0 = (m0 - m1) / bcast(h0, x)  # backward difference ≈ x̂_0'
  if order == 2:
    # DPM-Solver++(2M), Lu et al. 2022b Algorithm 2: D = (1 + 1/(2r)) m0 − 1/(2r) m1, r = h0/h.
    return bcast(ratio, x) * x + bcast(alpha_next * psi0, x) * (m0 + bcast(0.5 * h, x) * d0)
  # DPM-Solver++(3M) (the multistep scheme of Lu et al. 2022b at order 3): the ψ_1, ψ_2 terms of
  # the module docstring with x̂_0', x̂_0'' at λ_t of the quadratic through the last three x̂_0.
  h1 = lam1 - lam2
  d1 = (m1 - m2) / bcast(h1, x)
  d01 = (d0 - d1) / bcast(h0 + h1, x)  # second divided difference = x̂_0''/2
  deriv1 = d0 + bcast(h0, x) * d01
  deriv2 = 2.0 * d01
  return (bcast(ratio, x) * x
          + bcast(alpha_next, x) * (bcast(psi0, x) * m0 + bcast(psi1, x) * deriv1 + bcast(psi2, x) * deriv2))


# Lu et al. 2022b, Algorithm 1 (2S); Lu et al. 2022a (arXiv 2206.00927) DPM-Solver-3 as data prediction (3S).
def singlestep_update(sde: SDE, score_fn: ScoreFn, order: int, x: Array, t: Array, t_next: Array,
                      mids: tuple[Array, Array]) -> Array:
  """One DPM-Solver++ single-step step t → t_next with ``order`` score evaluations.

  Args:
    sde: a VP or sub-VP SDE.
    score_fn: the score.
    order: 1, 2 (Algorithm 1, "2S", r = ½) or 3 ("3S", r_1 = ⅓, r_2 = ⅔).
    x: x_t [B, ...].
    t, t_next: [B] times, t_next < t.
    mids: intermediate times [B] at λ_t + r h: (s_{½}, unused) for order 2,
      (s_{⅓}, s_{⅔}) for order 3.

  Returns:
    x_{t_next} [B, ...].
  """
  m0 = data_prediction(sde, score_fn, x, t)
  if order == 1:
    return _first_order(sde, x, m0, t, t_next)
  h = half_log_snr(sde, t_next) - half_log_snr(sde, t)
  ratio = sde.marginal_std(t_next) / sde.marginal_std(t)
  alpha_next = sde.mean_coeff(t_next)
  psi0, psi1, _ = _psi(h)
  if order == 2:
    # DPM-Solver++(2S), Lu et al. 2022b Algorithm 1 with r = ½: D = (1 − 1/(2r)) m0 + 1/(2r) m1 = m1.
    r = 0.5
    m1 = data_prediction(sde, score_fn, _first_order(sde, x, m0, t, mids[0]), mids[0])
    return bcast(ratio, x) * x + bcast(alpha_next * psi0, x) * (m0 + (m1 - m0) / (2.0 * r))
  # DPM-Solver-3 (Lu et al. 2022a, arXiv 2206.00927; r_1 = ⅓, r_2 = ⅔) in data-prediction form:
  # a second-order step to s_⅔ using x̂_0' ≈ (m1 − m0)/(r_1 h), then the final step with
  # x̂_0' ≈ (m2 − m0)/(r_2 h); the error of the latter, ≈ x̂_0'' r_2 h/2, times ψ_1 ≈ h²/2
  # matches ψ_2 x̂_0'' ≈ h³/6 x̂_0'' to leading order, so the local error is O(h⁴).
  r1, r2 = 1.0 / 3.0, 2.0 / 3.0
  s1, s2 = mids
  m1 = data_prediction(sde, score_fn, _first_order(sde, x, m0, t, s1), s1)
  h2 = r2 * h
  psi0_2, psi1_2, _ = _psi(h2)
  u2 = (bcast(sde.marginal_std(s2) / sde.marginal_std(t), x) * x
        + bcast(sde.mean_coeff(s2), x) * (bcast(psi0_2, x) * m0 + bcast(psi1_2 / (r1 * h), x) * (m1 - m0)))
  m2 = data_prediction(sde, score_fn, u2, s2)
  return bcast(ratio, x) * x + bcast(alpha_next, x) * (bcast(psi0, x) * m0 + bcast(psi1 / h2, x) * (m2 - m0))


def _scan(body, carry, start: int, length: int):
  """Steps start, …, start + length − 1 of ``body(carry, i) -> (carry, None)``: a scan, or a
  plain call for a single (warm-up or final) step."""
  if length == 1:
    return body(carry, start)[0]
  return jax.lax.scan(body, carry, jnp.arange(start, start + length))[0]


def _midpoint_times(sde: SDE, ts: Array, fractions: tuple[float, ...]) -> tuple[Array, ...]:
  """Times [K] at λ_i + r h_i of each interval of the grid ``ts`` [K + 1], one array per fraction r."""
  lams = half_log_snr(sde, ts)
  h = lams[1:] - lams[:-1]
  return tuple(sde.time_from_log_snr(2.0 * (lams[:-1] + r * h)) for r in fractions)


def dpm_solver_solve(sde: SDE, score_fn: ScoreFn, x: Array, *, order: int, variant: str, num_steps: int,
                     skip_type: str, lower_order_final: bool, constraint: constraints.Constraint = None,
                     keys: jax.Array = None) -> tuple[Array, int]:
  """Integrates the probability-flow ODE from x at time T down to eps with DPM-Solver++.

  Args:
    sde: a VP or sub-VP SDE.
    score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``.
    x: the state at T [B, ...].
    order, variant, num_steps, skip_type, lower_order_final: as in ``dpm_solver_sample``.
    constraint: known coordinates replaced after every step (``sampling.constraints``),
      with their noise from the per-sample ``keys`` [B].

  Returns:
    (x at eps [B, ...], the number of score evaluations = num_steps).
  """
  n = x.shape[0]
  orders = dpm_solver_orders(order, num_steps, variant, lower_order_final)
  ts = time_grid(sde, len(orders), skip_type)  # [K + 1]

  if variant == "multistep":
    zeros_t = jnp.zeros((n,), jnp.float32)
    carry = (x, jnp.zeros_like(x), jnp.zeros_like(x), zeros_t, zeros_t)  # x, m1, m2, λ1, λ2
    for o, start, length in _runs(orders):

      def ms_body(carry, i, o=o):
        x, m1, m2, lam1, lam2 = carry
        t, t_next = common.full_t(ts[i], n), common.full_t(ts[i + 1], n)
        m0 = data_prediction(sde, score_fn, x, t)
        x = multistep_update(sde, o, x, t, t_next, m0, (m1, m2, lam1, lam2))
        x = constraints.project(constraint, sde, x, t_next, keys, i + 1)
        return (x, m0, m1, half_log_snr(sde, t), lam1), None

      carry = _scan(ms_body, carry, start, length)
    return carry[0], len(orders)

  for o, start, length in _runs(orders):
    fractions = {1: (), 2: (0.5,), 3: (1.0 / 3.0, 2.0 / 3.0)}[o]
    mids = _midpoint_times(sde, ts, fractions) + (ts[:-1],) * (2 - len(fractions))  # unused ones: padding

    def ss_body(x, i, o=o, mids=mids):
      t, t_next = common.full_t(ts[i], n), common.full_t(ts[i + 1], n)
      x = singlestep_update(sde, score_fn, o, x, t, t_next,
                            (common.full_t(mids[0][i], n), common.full_t(mids[1][i], n)))
      return constraints.project(constraint, sde, x, t_next, keys, i + 1), None

    x = _scan(ss_body, x, start, length)
  return x, sum(orders)


def dpm_solver_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, order: int,
                      variant: str, num_steps: int, skip_type: str, lower_order_final: bool,
                      denoise: bool, constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """DPM-Solver++ (Lu et al. 2022b) on the probability-flow ODE from prior noise at T to eps.

  Args:
    key: PRNG key; sample i starts from fold_in(key, i).
    sde: a VP or sub-VP SDE.
    score_fn: the score.
    shape: [B, ...].
    order: 1, 2 or 3.
    variant: "multistep" (2M / 3M; one score evaluation per step) or "singlestep"
      (2S / 3S; ``order`` evaluations per step).  Not called ``method``, which names the
      sampler in ``sampling.sample``.
    num_steps: the budget of score evaluations (DPM-Solver's ``steps``), denoise excluded.
    skip_type: time grid, see ``time_grid``.
    lower_order_final: lower orders at the last steps, see ``dpm_solver_orders``.
    denoise: one more evaluation for a final Tweedie step at eps.  Off by default as in
      DPM-Solver: the last step already lands at eps, where σ_eps ≈ 0.01 (VP).
    constraint: known coordinates replaced after every step (``sampling.constraints``).

  Returns:
    samples [shape] and the number of score evaluations per sample.
  """
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  x = sde.prior_std * common.normal(keys, shape, 0)  # [B, ...] from the prior
  x = constraints.project(constraint, sde, x, common.full_t(sde.T, n), keys, 0)
  x, nfe = dpm_solver_solve(sde, score_fn, x, order=order, variant=variant, num_steps=num_steps,
                            skip_type=skip_type, lower_order_final=lower_order_final, constraint=constraint, keys=keys)
  if denoise:
    x = steps.denoise(sde, score_fn, x, common.full_t(sde.eps, n))
  return constraints.finalize(constraint, x), nfe + int(denoise)


# --- DDIM ------------------------------------------------------------------------------------

# Song et al. 2021a (arXiv 2010.02502), eq. 12 with σ_η = η × the DDPM posterior std, for general α_t, σ_t.
def ddim_step(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array, z: Array,
              eta: float) -> tuple[Array, Array]:
  """One DDIM step t → t_next (Song et al. 2021a, eq. 12) for any α, σ.

  x_{t'} = α_{t'} x̂_0 + √(σ_{t'}² − σ_η²) ε̂ + σ_η z with ε̂ = (x − α_t x̂_0)/σ_t and
  σ_η = η σ_{t'} √(1 − e^{−2h}), h = λ_{t'} − λ_t.  For VP this is DDIM's
  η √((1 − ᾱ_{t'})/(1 − ᾱ_t)) √(1 − ᾱ_t/ᾱ_{t'}); in general σ_η² at η = 1 is the variance
  of the forward chain's posterior q(x_{t'} | x_t, x_0) (the ``ancestral`` predictor), and
  η = 0 is DPM-Solver++(1).

  Args:
    sde: a VP or sub-VP SDE.
    score_fn: the score.
    x: x_t [B, ...].
    t, t_next: [B] times, t_next < t.
    z: standard normal noise [B, ...].
    eta: η ∈ [0, 1].

  Returns:
    (x_{t_next}, its mean without the noise term), both [B, ...].
  """
  m0 = data_prediction(sde, score_fn, x, t)
  h = half_log_snr(sde, t_next) - half_log_snr(sde, t)
  sigma_next = sde.marginal_std(t_next)
  rho2 = -jnp.expm1(-2.0 * h)  # 1 − e^{−2h}
  eps_hat = (x - bcast(sde.mean_coeff(t), x) * m0) / bcast(sde.marginal_std(t), x)
  x_mean = (bcast(sde.mean_coeff(t_next), x) * m0
            + bcast(sigma_next * jnp.sqrt(jnp.maximum(1.0 - eta**2 * rho2, 0.0)), x) * eps_hat)
  return x_mean + bcast(eta * sigma_next * jnp.sqrt(rho2), x) * z, x_mean


def ddim_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, eta: float,
                num_steps: int, skip_type: str, denoise: bool,
                constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """DDIM (Song et al. 2021a) with stochasticity η from prior noise at T to eps.

  Args:
    key: PRNG key; sample i draws its noise from fold_in(key, i).
    sde: a VP or sub-VP SDE.
    score_fn: the score.
    shape: [B, ...].
    eta: η = 0 deterministic (DPM-Solver++(1)), η = 1 ancestral.
    num_steps: steps = score evaluations.
    skip_type: time grid, see ``time_grid``; "time_uniform" by default (DDIM's), with
      "logSNR" η = 0 reproduces DPM-Solver++(1) step for step.
    denoise: one more evaluation for a final Tweedie step at eps.
    constraint: known coordinates (``sampling.constraints``), see ``run_chain``.

  Returns:
    samples [shape] and the number of score evaluations per sample.
  """
  def step(x, t, t_next, z):
    return ddim_step(sde, score_fn, x, t, t_next, z, eta)[0]

  return run_chain(key, sde, score_fn, shape, step, num_steps=num_steps, skip_type=skip_type, denoise=denoise,
                   constraint=constraint)


def run_chain(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], step: Callable, *,
              num_steps: int, skip_type: str, denoise: bool,
              constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """The driver of one-evaluation stochastic steps (DDIM, the exponential integrator).

  Starts from the prior, applies ``x ← step(x [B, ...], t [B], t_next [B], z [B, ...])`` over
  the ``time_grid`` with z from fold_in(fold_in(key, i), k) at step k, in one scan, and
  optionally denoises at eps.  A ``constraint`` replaces the known coordinates after every
  step, repeating each ``constraint.resample`` times (``sampling.constraints``).

  Returns:
    samples [shape] and num_steps × resample + denoise, the score evaluations per sample.
  """
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  ts = time_grid(sde, num_steps, skip_type)
  x = sde.prior_std * common.normal(keys, shape, 0)  # [B, ...] from the prior
  x = constraints.project(constraint, sde, x, common.full_t(sde.T, n), keys, 0)
  resample = 1 if constraint is None else constraint.resample

  def body(x, k):
    t, t_next = common.full_t(ts[k], n), common.full_t(ts[k + 1], n)

    def one_step(x, r):
      # Repetition r > 0 (RePaint) draws its noise from a key with r folded in.
      rkeys = keys if isinstance(r, int) and r == 0 else jax.vmap(jax.random.fold_in, (0, None))(keys, r)
      x = step(x, t, t_next, common.normal(rkeys, shape, k + 1))
      return constraints.project(constraint, sde, x, t_next, keys, 1 + k * resample + r)

    return constraints.repeat(constraint, sde, one_step, x, t, t_next, keys, k), None

  x, _ = jax.lax.scan(body, x, jnp.arange(num_steps))
  if denoise:
    x = steps.denoise(sde, score_fn, x, common.full_t(sde.eps, n))
  return constraints.finalize(constraint, x), num_steps * resample + int(denoise)


# --- declarations ----------------------------------------------------------------------------

def _check_int_choice(opts, name: str, choices: tuple[int, ...]) -> None:
  value = opts[name]
  options.require(isinstance(value, int) and not isinstance(value, bool) and value in choices,
                  f"sampling option {name}={value!r} must be one of {list(choices)}.")


def _check_dpm_solver(sde: SDE, opts) -> None:
  options.sde_kind(sde, "dpm_solver", SDE_KINDS)
  _check_int_choice(opts, "order", ORDERS)
  options.choice(opts, "variant", VARIANTS)
  options.count(opts, "num_steps")
  options.choice(opts, "skip_type", SKIP_TYPES)


def _check_ddim(sde: SDE, opts) -> None:
  options.sde_kind(sde, "ddim", SDE_KINDS)
  eta = opts["eta"]
  options.require(isinstance(eta, (int, float)) and not isinstance(eta, bool) and 0.0 <= eta <= 1.0,
                  f"sampling option eta={eta!r} must lie in [0, 1] (0: deterministic DDIM, 1: ancestral).")
  options.count(opts, "num_steps")
  options.choice(opts, "skip_type", SKIP_TYPES)


DPM_SOLVER_METHOD = options.Method(dpm_solver_sample, dict(
    order=2, variant="multistep", num_steps=20, skip_type="logSNR", lower_order_final=True, denoise=False),
    _check_dpm_solver, options.no_resampling("dpm_solver"))
# DDIM's grid is uniform in time (its "linear" subsequence): measured on the 4-mode mixture,
# first-order steps lose less on it than on the uniform-λ grid (mean error 0.05 vs 0.09 at 50 steps).
DDIM_METHOD = options.Method(ddim_sample, dict(eta=0.0, num_steps=100, skip_type="time_uniform", denoise=False),
                             _check_ddim, options.any_constraint)
