"""Sequential Monte Carlo for linear observations (inpainting, colorization): K particles per
input, exact for the model's sampler as K grows.

Choice: MCGdiff's potentials (Cardoso et al., "Monte Carlo guided diffusion for Bayesian linear
inverse problems", ICLR 2024, the noiseless case): the intermediate target at grid time t_k is
the model's law of x(t_k) tilted by the forward marginal of the known coordinates,

    π_k(x) ∝ p_k(x) φ_k(u_A),   φ_k(u_A) = N(u_A; m_k y_A, s_k² I),

u = x @ M the decoupled coordinates (``sampling.constraints``), A the known ones, m_k, s_k the
SDE's mean coefficient and marginal std at t_k.  The last target, at t = eps, is the model's
law conditioned on u_A = m(eps) y_A up to the noise s(eps) of every coordinate at eps (VE:
σ_min = 0.01); the output then sets u_A = y_A exactly.  So the particles' weighted law is the
model's conditional of the unknown coordinates given the known ones, exactly in the limit
K → ∞ (for the model's discretized reverse chain, at the sampler's final noise level).  MCGdiff rather
than TDS (Wu et al., NeurIPS 2023) because its potentials need no Gaussian approximation of
p(y | x(t)) and give a closed-form, fully adapted step on the known coordinates.

One step t → t' (written in u; every SDE here is isotropic, so the reverse kernel commutes with
M).  The model's kernel is the ancestral step (``steps.ancestral``):
p(x' | x) = N(μ, v I), μ = (x + q s(x, t))/a, v = q s(t')²/s(t)² with (a, q) =
``sde.transition_coeffs(t', t)``.  (Measured on the mixtures of tests/test_smc.py, K = 32:
with the reverse-diffusion kernel instead the share errors were 0.05-0.06 against 0.00-0.03;
under VP at 100 steps the ancestral kernel itself samples component stds 9 % low, with or
without reweighting, hence more steps there.)  The proposal is the guided reverse step:

* known coordinates: the product of the kernel and the next potential (fully adapted),
  u'_A ~ N(c, P⁻¹), P = 1/v + 1/s'², c = (μ_A/v + m' y_A/s'²)/P;
* unknown coordinates: u'_B ~ N(μ^g_B, v), μ^g = μ + (q/a) λ ∇log N(y_A; x̂_0,A, r_t² I) — the
  kernel driven by the ΠGDM-guided score (``guidance.posterior_terms``, λ = ``guidance_scale``;
  λ = 0 is the model's own kernel and skips the gradient).

The incremental log-weight of a particle (target ratio over proposal), summed over coordinates:

    log w = log N(μ_A; m' y_A, (v + s'²) I)
          + Σ_B [(u'_B − μ^g_B)² − (u'_B − μ_B)²] / (2v)
          − log N(u_A; m y_A, s² I)                               (the previous potential)

The start is the prior N(0, σ_p² I) times φ_0, sampled exactly (u_A from the product of the two
Gaussians), with equal weights.  After each step the normalized weights give ESS = 1/Σ w_k²; an
input whose ESS falls below ``ess_threshold`` · K is resampled (systematic resampling) and its
weights reset to 1/K.  One particle per input is drawn from the final weights.

Randomness: input i's key is k_i = fold_in(key, i); particle j's noise at step n comes from
fold_in(fold_in(k_i, j), n); the resampling draws from fold_in(fold_in(k_i, SALT), n).  An input's
particles do not depend on the batch around it.  NFE per particle: one score evaluation per step
(with guidance, one VJP of it as well); an input costs K times that.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from score_jax.sampling import common, constraints, options
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any

SALT = 0x5C3C  # fold_in salt of the resampling stream


class SMCResult(NamedTuple):
  """What ``sampling.run_smc`` returns.

  samples: [B, ...] one particle per input drawn from its final weights.
  particles: [B, K, ...] the final particles (known coordinates set exactly).
  log_weights: [B, K] their normalized log-weights.
  ess: [num_steps, B] the effective sample size after each step's reweighting, before resampling.
  """

  samples: Array
  particles: Array
  log_weights: Array
  ess: Array


def _log_normal(u: Array, mean: Array, var: Array, mask: Array) -> Array:
  """Σ over the coordinates where mask = 1 of log N(u; mean, var) -> [N]."""
  logn = -0.5 * (jnp.log(2.0 * math.pi * var) + (u - mean) ** 2 / var)
  return jnp.sum((mask * logn).reshape(u.shape[0], -1), axis=-1)


def weight_update(sde: SDE, x: Array, score: Array, grad: Array, z: Array, y_u: Array, mask: Array,
                  t: Array, t_next: Array, guidance_scale: float, obs: constraints.Observation) -> tuple[Array, Array]:
  """One SMC step of every particle (the module's formulas): (x' [N, ...], log w [N]).

  Args:
    x: particles at t [N, ...]; score, grad: s(x, t) and the posterior-guidance gradient there.
    z: standard normal [N, ...]; y_u: the observation in u [N, ...]; mask: 1 on known u.
    t, t_next: [N].
  """
  a, q = sde.transition_coeffs(t_next, t)
  s_t, s_n, m_t, m_n = sde.marginal_std(t), sde.marginal_std(t_next), sde.mean_coeff(t), sde.mean_coeff(t_next)
  v = bcast(q * (s_n / s_t) ** 2, x)
  mu = obs.decouple((x + bcast(q, x) * score) / bcast(a, x))
  mu_g = mu + obs.decouple(bcast(guidance_scale * q / a, x) * grad)
  sn2, mn = bcast(s_n**2, x), bcast(m_n, x)
  prec = 1.0 / v + 1.0 / sn2
  known = (mu / v + mn * y_u / sn2) / prec + z / jnp.sqrt(prec)
  unknown = mu_g + jnp.sqrt(v) * z
  w_known = _log_normal(mu, mn * y_u, v + sn2, mask)
  w_unknown = jnp.sum(((1.0 - mask) * ((unknown - mu_g) ** 2 - (unknown - mu) ** 2) / (2.0 * v)).reshape(
      x.shape[0], -1), axis=-1)
  w_prev = -_log_normal(obs.decouple(x), bcast(m_t, x) * y_u, bcast(s_t**2, x), mask)
  return obs.couple(mask * known + (1.0 - mask) * unknown), w_known + w_unknown + w_prev


def systematic_resample(key: jax.Array, log_weights: Array) -> Array:
  """Indices [K] of a systematic resampling of normalized log-weights [K]."""
  k = log_weights.shape[0]
  positions = (jax.random.uniform(key, ()) + jnp.arange(k)) / k
  cdf = jnp.cumsum(jnp.exp(log_weights))
  return jnp.minimum(jnp.searchsorted(cdf / cdf[-1], positions), k - 1)


def smc_run(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, particles: int, num_steps: int,
            ess_threshold: float, guidance_scale: float, data_variance: float,
            constraint: constraints.Observation) -> SMCResult:
  """The SMC sampler of the module for ``shape`` [B, ...] inputs; see ``sampling.run_smc``."""
  from score_jax import guidance  # pylint: disable=g-import-not-at-top  (guidance imports sampling)

  b, k = shape[0], particles
  n, event = b * k, tuple(shape[1:])
  obs = constraint
  keys = common.per_sample_keys(key, b)  # [B]
  pkeys = jax.vmap(lambda kk: jax.vmap(lambda j: jax.random.fold_in(kk, j))(jnp.arange(k)))(keys).reshape(
      (n,) + keys.shape[1:])  # [B·K]
  rkeys = jax.vmap(jax.random.fold_in, (0, None))(keys, SALT)  # [B]
  rep = lambda arr: jnp.repeat(jnp.broadcast_to(jnp.asarray(arr, jnp.float32), shape), k, axis=0)  # [B·K, ...]
  values, mask = rep(obs.values), rep(obs.mask)
  y_u = obs.decouple(values)
  ts = common.time_grid(sde.T, sde.eps, num_steps)

  # Start: the prior times φ_0, exactly (u_A from the product of the two Gaussians).
  t0 = common.full_t(ts[0], n)
  z = common.normal(pkeys, (n,) + event, 0)
  m0, s0 = bcast(sde.mean_coeff(t0), z), bcast(sde.marginal_std(t0), z)
  prec = 1.0 / sde.prior_std**2 + 1.0 / s0**2
  u = jnp.where(mask > 0, m0 * y_u / s0**2 / prec + z / jnp.sqrt(prec), sde.prior_std * z)
  x = obs.couple(u)
  log_w = jnp.full((b, k), -math.log(k))

  def terms(x, t):
    if guidance_scale == 0.0:
      return score_fn(x, t), jnp.zeros_like(x)
    return guidance.posterior_terms(score_fn, sde, values, mask, x, t, basis=obs.basis, data_variance=data_variance)

  def body(carry, i):
    x, log_w = carry
    t, t_next = common.full_t(ts[i], n), common.full_t(ts[i + 1], n)
    score, grad = terms(x, t)
    x, inc = weight_update(sde, x, score, grad, common.normal(pkeys, (n,) + event, i + 1), y_u, mask, t, t_next,
                           guidance_scale, obs)
    log_w = log_w + inc.reshape(b, k)
    log_w = log_w - jax.nn.logsumexp(log_w, axis=1, keepdims=True)
    ess = 1.0 / jnp.sum(jnp.exp(2.0 * log_w), axis=1)  # [B]
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(rkeys, i)
    idx = jax.vmap(systematic_resample)(step_keys, log_w)  # [B, K]
    redo = (ess < ess_threshold * k) & (i < num_steps - 1)
    idx = jnp.where(redo[:, None], idx, jnp.arange(k)[None])
    xs = jnp.take_along_axis(x.reshape((b, k, -1)), idx[:, :, None], axis=1).reshape(x.shape)
    log_w = jnp.where(redo[:, None], -math.log(k), log_w)
    return (xs, log_w), ess

  (x, log_w), ess = jax.lax.scan(body, (x, log_w), jnp.arange(num_steps))
  x = constraints.Replacement(values, mask, obs.basis).finalize(x)  # known coordinates exact
  parts = x.reshape((b, k) + event)
  final_keys = jax.vmap(jax.random.fold_in, (0, None))(rkeys, num_steps)
  pick = jax.vmap(lambda kk, lw: jax.random.categorical(kk, lw))(final_keys, log_w)  # [B]
  samples = jnp.take_along_axis(parts, pick.reshape((b, 1) + (1,) * len(event)), axis=1)[:, 0]
  return SMCResult(samples, parts, log_w, ess)


def smc_sample(key, sde, score_fn, shape, *, constraint, **opts) -> tuple[Array, int]:
  """``sampling.sample(method="smc")``: one particle per input, and the NFE per particle."""
  result = smc_run(key, sde, score_fn, shape, constraint=constraint, **opts)
  return result.samples, opts["num_steps"]


def _check(sde: SDE, opts) -> None:
  del sde
  options.count(opts, "particles")
  options.count(opts, "num_steps")
  thr = opts["ess_threshold"]
  options.require(isinstance(thr, (int, float)) and not isinstance(thr, bool) and 0.0 <= thr <= 1.0,
                  f"sampling option ess_threshold={thr!r} must be a number in [0, 1] (resample where ESS < "
                  "ess_threshold · particles; 0: never, 1: every step).")
  for name, strict in (("guidance_scale", False), ("data_variance", True)):
    val = opts[name]
    ok = isinstance(val, (int, float)) and not isinstance(val, bool) and math.isfinite(val) and (
        val > 0 if strict else val >= 0)
    options.require(ok, f"sampling option {name}={val!r} must be a finite number {'>' if strict else '>='} 0.")


def check_constraint(sde: SDE, opts, constraint) -> None:
  del sde, opts
  options.require(type(constraint) in (constraints.Observation, constraints.Replacement) and
                  getattr(constraint, "resample", 1) == 1,
                  "constraint: sampling method 'smc' takes a constraints.Observation (or a Replacement with "
                  f"resample=1), got {type(constraint).__name__}"
                  f"{' with resample=' + str(constraint.resample) if hasattr(constraint, 'resample') else ''}.")


SMC_METHOD = options.Method(smc_sample, dict(particles=16, num_steps=100, ess_threshold=0.5, guidance_scale=1.0,
                                             data_variance=1.0), _check, check_constraint)
