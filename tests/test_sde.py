"""Checks every formula in score_jax.sde against independent computations.

The closed forms are compared with float64 references built from the paper's definitions
(the perturbation kernels of Song et al. 2021, App. B) and with a Monte-Carlo Euler–Maruyama simulation of the
forward SDE; derivatives of the closed forms (jax.grad) are checked against the SDE's
own drift and diffusion.  The code under test runs in float32, which sets the
deterministic tolerances; Monte-Carlo tolerances are 5 standard errors.
"""

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_jax import schedules as sched_lib
from score_jax import sde as sde_lib

# Every SDE family, every schedule family (exponential with a < 0, a = 0, small a > 0,
# a > 0), and T ≠ 1.
SCHEDULE_VARIANTS = [
    sched_lib.LinearSchedule(),
    sched_lib.QuadraticSchedule(),
    sched_lib.ExponentialSchedule(a=-4.0),
    sched_lib.ExponentialSchedule(a=0.0),
    sched_lib.ExponentialSchedule(a=1e-3),
    sched_lib.ExponentialSchedule(a=4.0),
    sched_lib.CosineSchedule(),
    sched_lib.SigmoidSchedule(),
]
ALL_SDES = [
    sde_lib.VESDE(),
    sde_lib.VESDE(sigma_min=0.05, sigma_max=5.0, T=2.0),
    sde_lib.VPSDE(),
    sde_lib.SubVPSDE(),
    sde_lib.VPSDE(T=2.0),
    sde_lib.SubVPSDE(T=2.0, schedule=sched_lib.CosineSchedule(max_beta=50.0, T=2.0)),  # β·h as for T = 1
] + [cls(schedule=s) for s in SCHEDULE_VARIANTS for cls in (sde_lib.VPSDE, sde_lib.SubVPSDE)]
# One per family for the tests that compile per SDE.
FEW_SDES = [
    sde_lib.VESDE(),
    sde_lib.VPSDE(),
    sde_lib.SubVPSDE(),
    sde_lib.VPSDE(schedule=sched_lib.CosineSchedule()),
    sde_lib.SubVPSDE(schedule=sched_lib.SigmoidSchedule()),
]
# Those plus T ≠ 1, for methods that the base class derives from m, s, f and g alone.
SOME_SDES = FEW_SDES + ALL_SDES[4:6] + [ALL_SDES[1]]


def _name(sde):
  sched = getattr(sde, "schedule", None)
  return f"{sde.name}-T{sde.T:g}" + (f"-{sched!r}" if sched is not None else f"-{sde.sigma_min:g}-{sde.sigma_max:g}")


def _f64(x):
  return np.asarray(x, np.float64)


def _beta_integral_ref(sde, ts) -> np.ndarray:
  """∫₀ᵗ β for each t in ``ts``: composite Gauss–Legendre quadrature of ``sde.beta`` (float64
  sums), with a node boundary at the cosine cap where β has a kink."""
  ts = np.atleast_1d(np.asarray(ts, np.float64))
  t_cap = getattr(sde.schedule, "t_cap", np.inf)
  nodes, weights = np.polynomial.legendre.leggauss(32)
  lo_hi = []
  for t in ts:
    breaks = [0.0, t_cap, t] if 0.0 < t_cap < t else [0.0, t]
    edges = np.concatenate([np.linspace(a, b, 9)[:-1] for a, b in zip(breaks[:-1], breaks[1:])] + [[t]])
    edges = np.pad(edges, (0, 17 - edges.size), mode="edge")  # zero-width pieces add nothing
    lo_hi.append(np.stack([edges[:-1], edges[1:]]))
  lo, hi = np.stack(lo_hi, axis=1)[..., None]  # [n_t, 16, 1] each
  u = 0.5 * (hi - lo) * nodes + 0.5 * (hi + lo)  # [n_t, 16, 32]
  beta = _f64(sde.beta(jnp.asarray(u, jnp.float32)))
  return np.sum(0.5 * (hi - lo) * weights * beta, axis=(1, 2))


def _marginal_ref(sde, ts) -> tuple[np.ndarray, np.ndarray]:
  """(m(t), s(t)) for each t in ``ts``, in float64 from the paper's definitions, independent
  of sde.py."""
  ts = np.atleast_1d(np.asarray(ts, np.float64))
  if isinstance(sde, sde_lib.VESDE):
    # eq. 29: Var = σ(t)² − σ(0)² with the geometric σ(t) = σ_min (σ_max/σ_min)^{t/T}.
    sigma = lambda u: sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** (u / sde.T)
    return np.ones_like(ts), np.sqrt(sigma(ts) ** 2 - sigma(0.0) ** 2)
  b = _beta_integral_ref(sde, ts)
  if isinstance(sde, sde_lib.VPSDE):
    return np.exp(-0.5 * b), np.sqrt(-np.expm1(-b))  # VP: m = e^{−B/2}, s² = 1 − e^{−B}
  return np.exp(-0.5 * b), -np.expm1(-b)  # sub-VP: s = 1 − e^{−B}


def _times(sde):
  return [sde.eps, 0.05 * sde.T, 0.2 * sde.T, 0.5 * sde.T, 0.9 * sde.T, sde.T]


# --- closed forms against the paper ------------------------------------------------------


@pytest.mark.parametrize("sde", ALL_SDES, ids=_name)
def test_marginal_matches_paper_formulas(sde):
  """mean_coeff, marginal_std and marginal(x0, t) equal the paper's kernels (float64 reference)."""
  ts = np.asarray([0.0] + _times(sde))
  m_ref, s_ref = _marginal_ref(sde, ts)
  t32 = jnp.asarray(ts, jnp.float32)
  # float32: ~1e-6 relative; s(t) ~ √t near 0, so compare with a relative tolerance.
  np.testing.assert_allclose(sde.mean_coeff(t32), m_ref, rtol=1e-5)
  np.testing.assert_allclose(sde.marginal_std(t32), s_ref, rtol=1e-5, atol=1e-9)
  x0 = jnp.broadcast_to(jnp.asarray([1.5, -1.0, 0.5]), (ts.size, 3))  # [B, D]
  mean, std = sde.marginal(x0, t32)
  np.testing.assert_allclose(mean, m_ref[:, None] * _f64(x0), rtol=1e-5)
  np.testing.assert_allclose(std, s_ref, rtol=1e-5, atol=1e-9)


# --- Monte-Carlo forward simulation --------------------------------------------------------

MC_STEPS, MC_PATHS = 2000, 4000
MC_X0 = np.asarray([1.5, -1.0, 0.5])
MC_CHECK_STEPS = [100, 200, 500, 1000, 1500, 2000]  # t = (0.05, 0.1, 0.25, 0.5, 0.75, 1)·T


def _coefficient_grids(sdes):
  """f and g of each SDE at the step midpoints t_k + h/2: [C, N] each, and h [C]."""
  h = np.asarray([sde.T / MC_STEPS for sde in sdes])
  mids = [(jnp.arange(MC_STEPS) + 0.5) * sde.T / MC_STEPS for sde in sdes]
  f = np.stack([_f64(sde.drift_coeff(t)) for sde, t in zip(sdes, mids)])
  g = np.stack([_f64(sde.diffusion(t)) for sde, t in zip(sdes, mids)])
  return f, g, h


@jax.jit
def _euler_maruyama_moments(key, f, g, h):
  """Euler–Maruyama x_{k+1} = x_k + f_k x_k h + g_k √h z_k for C SDEs at once, from MC_X0.

  One scan over steps; each step draws one z [P, D] shared by all C SDEs (common random
  numbers: each SDE's estimate is still an ordinary Monte-Carlo estimate). Returns the
  path mean and variance after every step, [N, C, D] each.
  """
  num = f.shape[0]
  x = jnp.broadcast_to(jnp.asarray(MC_X0, jnp.float32), (num, MC_PATHS, MC_X0.size))  # [C, P, D]

  def step(x, inputs):
    k, f_k, g_k = inputs
    z = jax.random.normal(jax.random.fold_in(key, k), (MC_PATHS, MC_X0.size))
    x = x + (f_k * h)[:, None, None] * x + (g_k * jnp.sqrt(h))[:, None, None] * z[None]
    return x, (jnp.mean(x, axis=1), jnp.var(x, axis=1))

  _, (means, variances) = jax.lax.scan(step, x, (jnp.arange(f.shape[1]), f.T, g.T))
  return means, variances


@pytest.mark.optimized  # a long Euler–Maruyama loop (tests/conftest.py)
def test_forward_sde_monte_carlo_matches_marginal():
  """Fine Euler–Maruyama of dx = f x dt + g dw (2000 steps, 4000 paths, 3 dims) from a fixed
  x0 reproduces marginal(x0, t) of every SDE × schedule at six times.

  Tolerance: 5 Monte-Carlo standard errors, s/√P for each mean coordinate and s/√(2PD) for
  the std pooled over coordinates; the scheme's own bias is below 1 standard error
  (test_euler_maruyama_bias_is_below_one_standard_error).
  """
  assert {type(s) for s in SCHEDULE_VARIANTS} == set(sched_lib.SCHEDULES.values())  # every family
  f, g, h = _coefficient_grids(ALL_SDES)
  means, variances = _euler_maruyama_moments(jax.random.PRNGKey(0), jnp.asarray(f, jnp.float32),
                                             jnp.asarray(g, jnp.float32), jnp.asarray(h, jnp.float32))
  steps = np.asarray(MC_CHECK_STEPS)
  means, variances = _f64(means)[steps - 1], _f64(variances)[steps - 1]  # [K, C, D]
  x0 = jnp.broadcast_to(jnp.asarray(MC_X0, jnp.float32), (steps.size, MC_X0.size))  # [K, D]
  for c, sde in enumerate(ALL_SDES):
    mean_cf, std_cf = (_f64(v) for v in sde.marginal(x0, jnp.asarray(steps * sde.T / MC_STEPS, jnp.float32)))
    se_mean = std_cf[:, None] / math.sqrt(MC_PATHS)  # [K, 1]
    se_std = std_cf / math.sqrt(2 * MC_PATHS * MC_X0.size)  # [K]
    np.testing.assert_array_less(np.abs(means[:, c] - mean_cf), np.broadcast_to(5 * se_mean, mean_cf.shape), err_msg=_name(sde))
    std_mc = np.sqrt(np.mean(variances[:, c], axis=-1))
    np.testing.assert_array_less(np.abs(std_mc - std_cf), 5 * se_std, err_msg=_name(sde))


def test_euler_maruyama_bias_is_below_one_standard_error():
  """The Euler–Maruyama scheme above, with its moments propagated exactly (float64 recursion
  m_{k+1} = (1 + f_k h) m_k, v_{k+1} = (1 + f_k h)² v_k + g_k² h), is within 1 Monte-Carlo
  standard error of the closed form: the 5-SE tolerance is not spent on discretization."""
  f, g, h = _coefficient_grids(ALL_SDES)
  m, v = np.ones(len(ALL_SDES)), np.zeros(len(ALL_SDES))
  em_m, em_v = [], []
  for k in range(MC_STEPS):
    a = 1.0 + f[:, k] * h
    m, v = a * m, a**2 * v + g[:, k] ** 2 * h
    if k + 1 in MC_CHECK_STEPS:
      em_m.append(m)
      em_v.append(v)
  em_m, em_v = np.stack(em_m, axis=1), np.stack(em_v, axis=1)  # [C, checks]
  for c, sde in enumerate(ALL_SDES):
    m_ref, s_ref = _marginal_ref(sde, np.asarray(MC_CHECK_STEPS) * h[c])
    np.testing.assert_array_less(np.abs(em_m[c] - m_ref) * np.max(np.abs(MC_X0)), s_ref / math.sqrt(MC_PATHS))
    np.testing.assert_array_less(np.abs(np.sqrt(em_v[c]) - s_ref), s_ref / math.sqrt(2 * MC_PATHS * MC_X0.size))


# --- derivatives: the closed forms solve the SDE's moment ODEs -----------------------------


@pytest.mark.parametrize("sde", ALL_SDES, ids=_name)
def test_moment_odes(sde):
  """m' = f m and (s²)' = 2 f s² + g² (mean and variance ODEs of a linear SDE), by jax.grad."""
  ts = jnp.asarray([0.01, 0.2, 0.5, 0.9], jnp.float32) * sde.T
  f, g = sde.drift_coeff(ts), sde.diffusion(ts)
  dm = jax.vmap(jax.grad(sde.mean_coeff))(ts)
  ds2 = jax.vmap(jax.grad(lambda t: sde.marginal_std(t) ** 2))(ts)
  m, s2 = sde.mean_coeff(ts), sde.marginal_std(ts) ** 2
  np.testing.assert_allclose(dm, f * m, rtol=2e-4, atol=1e-12)  # float32 autodiff
  np.testing.assert_allclose(g**2, ds2 - 2 * f * s2, rtol=2e-4)


@pytest.mark.parametrize("sde", ALL_SDES, ids=_name)
def test_is_potential_derivative(sde):
  """d/dt is_potential(t) = g(t)²/s(t)², the likelihood-weighting importance density."""
  ts = jnp.asarray([0.01, 0.2, 0.5, 0.9], jnp.float32) * sde.T
  dpot = jax.vmap(jax.grad(sde.is_potential))(ts)
  np.testing.assert_allclose(dpot, sde.diffusion(ts) ** 2 / sde.marginal_std(ts) ** 2, rtol=2e-4)


@pytest.mark.parametrize("sde", ALL_SDES, ids=_name)
def test_log_snr_and_snr(sde):
  """log_snr = log(m²/s²) and snr = m²/s² (float64 reference), decreasing in t."""
  ts = _times(sde)
  m_ref, s_ref = _marginal_ref(sde, ts)
  ref = 2 * np.log(m_ref) - 2 * np.log(s_ref)
  got = _f64(sde.log_snr(jnp.asarray(ts, jnp.float32)))
  np.testing.assert_allclose(got, ref, rtol=1e-5, atol=2e-5)  # float32 logs
  np.testing.assert_allclose(sde.snr(jnp.asarray(ts, jnp.float32)), np.exp(ref), rtol=1e-4)
  assert np.all(np.diff(got) < 0)


# --- transitions and discretization ------------------------------------------------------


@pytest.mark.parametrize("sde", ALL_SDES, ids=_name)
def test_transition_coeffs(sde):
  """x(t) | x(s) ~ N(a x(s), q I) with a = m(t)/m(s), q = s(t)² − a² s(s)²; from 0 it is the
  marginal; two transitions compose into one; VE: q = σ_t² − σ_s²; VP: q = 1 − a²."""
  T = sde.T
  pairs = [(0.0, 0.3 * T), (sde.eps, 0.5 * T), (0.1 * T, 0.3 * T), (0.3 * T, 0.9 * T), (0.5 * T, T)]
  s, t = (np.asarray(v) for v in zip(*pairs))
  (m_s, s_s), (m_t, s_t) = _marginal_ref(sde, s), _marginal_ref(sde, t)
  a_ref = m_t / m_s
  q_ref = s_t**2 - a_ref**2 * s_s**2
  a, q = sde.transition_coeffs(jnp.asarray(s, jnp.float32), jnp.asarray(t, jnp.float32))
  # float32 B(t) − B(s) loses ~1e-6·B(t) absolute, which q inherits relatively.
  np.testing.assert_allclose(a, a_ref, rtol=1e-5)
  np.testing.assert_allclose(q, q_ref, rtol=5e-5)
  if isinstance(sde, sde_lib.VESDE):
    sigma = lambda u: sde.sigma_min * (sde.sigma_max / sde.sigma_min) ** (u / T)
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_allclose(q, sigma(t) ** 2 - sigma(s) ** 2, rtol=1e-5)
  elif isinstance(sde, sde_lib.VPSDE):
    np.testing.assert_allclose(q, 1 - _f64(a) ** 2, rtol=1e-5)
  # From 0 the transition is the marginal.
  ts = jnp.asarray(_times(sde), jnp.float32)
  a0, q0 = sde.transition_coeffs(jnp.zeros_like(ts), ts)
  np.testing.assert_allclose(a0, sde.mean_coeff(ts), rtol=1e-6)
  np.testing.assert_allclose(q0, sde.marginal_std(ts) ** 2, rtol=1e-5)
  # Chapman–Kolmogorov for Gaussians: s → t → u equals s → u (batched times [3]).
  s, t, u = (jnp.asarray(v, jnp.float32) * T for v in ([0.05, 0.2, 0.4], [0.3, 0.5, 0.7], [0.6, 0.9, 1.0]))
  a_st, q_st = sde.transition_coeffs(s, t)
  a_tu, q_tu = sde.transition_coeffs(t, u)
  a_su, q_su = sde.transition_coeffs(s, u)
  np.testing.assert_allclose(a_st * a_tu, a_su, rtol=1e-5)
  np.testing.assert_allclose(a_tu**2 * q_st + q_tu, q_su, rtol=1e-5)


@pytest.mark.parametrize("sde", SOME_SDES, ids=_name)
def test_discretize_is_smld_or_ddpm_step(sde):
  """discretize(x, s, t) = ((a − 1) x, √q); VE: (0, √(σ_t² − σ_s²)) as SMLD; VP/sub-VP mean
  factor √(1 − β_i) with 1 − β_i = ᾱ(t)/ᾱ(s), ᾱ = m², as DDPM (VP also has G = √β_i)."""
  x = jnp.asarray([[1.0, -2.0, 0.5], [0.3, 0.0, -1.0]])  # [B, D]
  s, t = jnp.asarray([0.1, 0.6]) * sde.T, jnp.asarray([0.11, 0.8]) * sde.T  # [B]
  f_i, g_i = sde.discretize(x, s, t)
  assert f_i.shape == x.shape and g_i.shape == (2,)
  a, q = sde.transition_coeffs(s, t)
  np.testing.assert_allclose(f_i, (a[:, None] - 1) * x, rtol=1e-6, atol=1e-7)
  np.testing.assert_allclose(g_i, np.sqrt(_f64(q)), rtol=1e-6)
  if isinstance(sde, sde_lib.VESDE):
    np.testing.assert_array_equal(f_i, 0.0)
    np.testing.assert_allclose(g_i**2, sde.sigma(t) ** 2 - sde.sigma(s) ** 2, rtol=1e-5)
  else:
    one_minus_beta = _f64(sde.mean_coeff(t)) ** 2 / _f64(sde.mean_coeff(s)) ** 2
    np.testing.assert_allclose(_f64(f_i), (np.sqrt(one_minus_beta)[:, None] - 1) * _f64(x), rtol=2e-5, atol=1e-6)
    if isinstance(sde, sde_lib.VPSDE):
      # The reference 1 − ᾱ_t/ᾱ_s cancels: float32 ᾱ's leave ~1e-7 absolute.
      np.testing.assert_allclose(_f64(g_i) ** 2, 1 - one_minus_beta, rtol=2e-5, atol=5e-7)


# --- prior ------------------------------------------------------------------------------


@pytest.mark.parametrize("sde", SOME_SDES, ids=_name)
def test_prior(sde):
  """prior_logp = Σ log N(z; 0, prior_std²) (scipy); prior_sample has std prior_std (5 SE);
  and the prior is the marginal at T: s(T) ≈ prior_std, m(T) x0 ≈ 0 relative to it."""
  z = np.random.default_rng(0).normal(size=(5, 2, 3)) * sde.prior_std
  ref = stats.norm.logpdf(z, scale=sde.prior_std).reshape(5, -1).sum(-1)
  np.testing.assert_allclose(sde.prior_logp(jnp.asarray(z, jnp.float32)), ref, rtol=1e-5)
  n = 40000
  x = sde.prior_sample(jax.random.PRNGKey(1), (n // 2, 2))
  assert x.shape == (n // 2, 2) and x.dtype == jnp.float32
  assert abs(float(jnp.mean(x))) < 5 * sde.prior_std / math.sqrt(n)
  assert abs(float(jnp.std(x)) - sde.prior_std) < 5 * sde.prior_std / math.sqrt(2 * n)
  assert float(sde.marginal_std(sde.T)) == pytest.approx(sde.prior_std, rel=2e-4)
  if not isinstance(sde, sde_lib.VESDE):
    assert float(sde.mean_coeff(sde.T)) < 0.02


# --- reverse SDE, probability flow, Tweedie on a Gaussian data distribution -----------------

MU = jnp.asarray([1.0, -2.0])  # data N(MU, SIGMA0² I)
SIGMA0 = 0.5


def _gaussian_marginal(sde, t):
  """p_t = N(m μ, v I) with v = m² σ0² + s²: (mean [..., D], v [...]) for t [] or [B]."""
  m, s = sde.mean_coeff(t), sde.marginal_std(t)
  return m[..., None] * MU, m**2 * SIGMA0**2 + s**2


def _gaussian_score_fn(sde):
  """Exact ∇log p_t of the Gaussian data: −(x − m μ)/v."""

  def score_fn(x, t):
    mean, v = _gaussian_marginal(sde, t)
    return -(x - mean) / v[..., None]

  return score_fn


@pytest.mark.parametrize("probability_flow", [False, True])
@pytest.mark.parametrize("sde", SOME_SDES, ids=_name)
def test_reverse_drift_preserves_gaussian_marginals(sde, probability_flow):
  """With the exact score of Gaussian data, the reverse drift r(x) = α x + b run backwards
  keeps p_t: μ' = α μ + b and v' = 2 α v − g² (reverse SDE, eq. 6) or v' = 2 α v (ODE, eq. 13),
  with μ', v' of the closed-form marginal by jax.grad."""
  score_fn = _gaussian_score_fn(sde)
  rev = sde.reverse(score_fn, probability_flow=probability_flow)
  x = jnp.stack([jnp.zeros(2), jnp.ones(2)])  # [2, D]
  for t in [0.05 * sde.T, 0.5 * sde.T, 0.9 * sde.T]:
    t = jnp.float32(t)
    r = rev.drift(x, t)
    np.testing.assert_allclose(r, sde.reverse_drift(x, t, score_fn(x, t), probability_flow), rtol=1e-6)
    if probability_flow:
      np.testing.assert_allclose(r, sde.probability_flow(score_fn)(x, t), rtol=1e-6)
    alpha, b = r[1] - r[0], r[0]
    mean, v = _gaussian_marginal(sde, t)
    dmean = jax.jacfwd(lambda u: _gaussian_marginal(sde, u)[0])(t)
    dv = jax.grad(lambda u: _gaussian_marginal(sde, u)[1])(t)
    g2 = sde.diffusion(t) ** 2
    # Both sides are differences of O(|α| v + g²) terms that cancel where p_t is nearly
    # stationary (VP near T); float32 leaves ~1e-6 of that scale.
    scale = float(jnp.abs(alpha).max() * (v + jnp.abs(mean).max()) + g2)
    np.testing.assert_allclose(alpha * mean + b, dmean, rtol=1e-3, atol=2e-6 * scale)
    np.testing.assert_allclose(2 * alpha * v - (0.0 if probability_flow else g2), dv, rtol=1e-3, atol=2e-6 * scale)
    np.testing.assert_allclose(rev.diffusion(t), 0.0 if probability_flow else sde.diffusion(t), rtol=1e-6)


@pytest.mark.parametrize("sde", FEW_SDES, ids=_name)
def test_probability_flow_rk4_transports_gaussian(sde):
  """RK4 (400 steps) of the probability-flow ODE from T to eps maps x_T = μ_T + √v_T z to
  μ_eps + √v_eps z for every z (the flow of a Gaussian is affine), i.e. it recovers
  N(m(eps) μ, m² σ0² + s²) ≈ N(μ, σ0²) sample by sample."""
  flow = sde.probability_flow(_gaussian_score_fn(sde))
  z = jax.random.normal(jax.random.PRNGKey(2), (64, 2))
  mean_T, v_T = _gaussian_marginal(sde, sde.T)
  mean_e, v_e = _gaussian_marginal(sde, sde.eps)
  steps = 400
  h = (sde.eps - sde.T) / steps

  @jax.jit
  def integrate(x):
    def body(i, x):
      t = sde.T + i * h
      k1 = flow(x, t)
      k2 = flow(x + 0.5 * h * k1, t + 0.5 * h)
      k3 = flow(x + 0.5 * h * k2, t + 0.5 * h)
      k4 = flow(x + h * k3, t + h)
      return x + h / 6 * (k1 + 2 * k2 + 2 * k3 + k4)

    return jax.lax.fori_loop(0, steps, body, x)

  x_eps = integrate(mean_T + jnp.sqrt(v_T) * z)
  # RK4 error at this step size is < 1e-5; float32 rounding of x_T (|x_T| ≤ 4 σ_max) shrinks
  # with the flow.
  np.testing.assert_allclose(x_eps, mean_e + jnp.sqrt(v_e) * z, atol=2e-3 * SIGMA0)
  assert float(v_e) == pytest.approx(SIGMA0**2, rel=0.02)


@pytest.mark.parametrize("sde", SOME_SDES, ids=_name)
def test_tweedie_denoise_is_gaussian_posterior_mean(sde):
  """For x0 ~ N(μ, σ0²) and x_t = m x0 + s z, E[x0 | x_t] = μ + σ0² m (x_t − m μ)/(m² σ0² + s²)."""
  score_fn = _gaussian_score_fn(sde)
  ts = jnp.asarray([sde.eps, 0.1 * sde.T, 0.3 * sde.T, 0.5 * sde.T], jnp.float32)  # [B]
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 2)) * 3.0  # [B, D]
  got = sde.tweedie_denoise(x, ts, score_fn(x, ts))
  m, s = _f64(sde.mean_coeff(ts))[:, None], _f64(sde.marginal_std(ts))[:, None]
  ref = _f64(MU) + SIGMA0**2 * m * (_f64(x) - m * _f64(MU)) / (m**2 * SIGMA0**2 + s**2)
  # (x + s² score)/m cancels as m → 0; at t ≤ T/2 float32 keeps ~1e-4 relative.
  np.testing.assert_allclose(got, ref, rtol=1e-3, atol=1e-3)


# --- std_to_time, shapes, construction -------------------------------------------------


@pytest.mark.parametrize("sde", SOME_SDES, ids=_name)
def test_std_to_time_inverts_marginal_std(sde):
  """std_to_time(marginal_std(t)) = t (where s is not flat) and s(std_to_time(σ)) = σ,
  under jit and vmap."""
  ts = jnp.linspace(0.02, 0.98, 9) * sde.T
  std = sde.marginal_std(ts)
  back = jax.jit(jax.vmap(sde.std_to_time))(std)
  np.testing.assert_allclose(sde.marginal_std(back), std, rtol=2e-5)
  early = ts < 0.5 * sde.T  # s'(t) is large enough here to pin t down in float32
  np.testing.assert_allclose(back[early], ts[early], rtol=1e-4)
  assert float(sde.std_to_time(0.0)) < 1e-6 * sde.T


def test_shapes_and_broadcasting():
  """Per-example t [B] broadcasts over x [B, H, W, C]; scalar t over everything."""
  x = jax.random.normal(jax.random.PRNGKey(4), (3, 4, 4, 2))
  noise = jax.random.normal(jax.random.PRNGKey(5), x.shape)
  t = jnp.asarray([0.1, 0.5, 0.9])
  for sde in FEW_SDES:
    expand = lambda c: jnp.asarray(c)[:, None, None, None]
    np.testing.assert_allclose(sde.drift(x, t), expand(sde.drift_coeff(t)) * x, rtol=1e-6)
    drift, diffusion = sde.sde(x, t)
    assert drift.shape == x.shape and diffusion.shape == (3,)
    mean, std = sde.marginal(x, t)
    assert mean.shape == x.shape and std.shape == (3,)
    np.testing.assert_allclose(sde.perturb(x, t, noise), mean + expand(std) * noise, rtol=1e-6)
    assert sde.prior_logp(x).shape == (3,)
    assert sde.reverse_drift(x, t, noise).shape == x.shape
    assert sde.tweedie_denoise(x, t, noise).shape == x.shape
    mean0, std0 = sde.marginal(x, 0.5)
    np.testing.assert_allclose(mean0, sde.mean_coeff(0.5) * x, rtol=1e-6)
    assert std0.shape == ()


def test_get_sde():
  """get_sde builds by name, forwards fields, schedule names with schedule_kwargs, and T."""
  assert sde_lib.get_sde("ve") == sde_lib.VESDE()
  assert sde_lib.get_sde("ve", sigma_max=10.0).sigma_max == 10.0
  assert sde_lib.get_sde("vp") == sde_lib.VPSDE()
  assert sde_lib.get_sde("subvp", eps=1e-2) == sde_lib.SubVPSDE(eps=1e-2)
  assert sde_lib.get_sde("vp", schedule="linear") == sde_lib.VPSDE()
  cos = sde_lib.get_sde("vp", schedule="cosine", schedule_kwargs={"s": 0.02})
  assert cos.schedule == sched_lib.CosineSchedule(s=0.02)
  sub = sde_lib.get_sde("subvp", T=2.0, schedule="exponential", schedule_kwargs={"a": 3.0})
  assert isinstance(sub, sde_lib.SubVPSDE) and sub.schedule == sched_lib.ExponentialSchedule(a=3.0, T=2.0)
  # beta_min / beta_max given to the SDE reach a named schedule that has them.
  quad = sde_lib.get_sde("vp", beta_min=0.2, beta_max=10.0, schedule="quadratic")
  assert quad.schedule == sched_lib.QuadraticSchedule(beta_min=0.2, beta_max=10.0)
  assert float(quad.beta(1.0)) == pytest.approx(10.0)
  obj = sched_lib.SigmoidSchedule()
  assert sde_lib.get_sde("vp", schedule=obj).schedule is obj
  assert set(sde_lib.SDES) == {"ve", "vp", "subvp", "rectified_flow"}
  assert sde_lib.get_sde("rectified_flow") == sde_lib.RectifiedFlowSDE()


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: sde_lib.VESDE(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
        (lambda: sde_lib.VESDE(sigma_min=0.0), "sigma_min"),
        (lambda: sde_lib.VESDE(T=0.0), r"\.T"),
        (lambda: sde_lib.VPSDE(beta_min=-1.0), "beta_min"),
        (lambda: sde_lib.VPSDE(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sde_lib.SubVPSDE(beta_min=-0.1), "beta_min"),
        (lambda: sde_lib.SubVPSDE(beta_max=0.05), "beta_max"),
        (lambda: sde_lib.VPSDE(schedule=sched_lib.CosineSchedule(T=2.0)), "schedule.T"),
        (lambda: sde_lib.VPSDE(T=0.0), r"\.T must be > 0"),
        (lambda: sde_lib.SubVPSDE(T=-1.0, eps=-2.0), r"\.T must be > 0"),
        (lambda: sde_lib.VPSDE(schedule="cosine"), "schedule"),
        (lambda: sde_lib.get_sde("nope"), "Unknown SDE 'nope'"),
        (lambda: sde_lib.get_sde("ve", schedule="cosine"), "schedule"),
        (lambda: sde_lib.get_sde("ve", schedule=sched_lib.CosineSchedule()), "schedule"),
        (lambda: sde_lib.get_sde("vp", schedule="warp"), "Unknown schedule 'warp'"),
        (lambda: sde_lib.get_sde("vp", schedule="cosine", schedule_kwargs={"foo": 1.0}), "foo"),
        (lambda: sde_lib.get_sde("vp", foo=1.0), "foo"),
    ]
    + [
        (functools.partial(cls, eps=eps), "eps")
        for cls in (sde_lib.VESDE, sde_lib.VPSDE, sde_lib.SubVPSDE)
        for eps in (0.0, -1e-3, 1.0, 2.0)
    ]
    + [
        (functools.partial(cls, train_eps=eps), "train_eps")
        for cls in (sde_lib.VESDE, sde_lib.VPSDE, sde_lib.SubVPSDE)
        for eps in (0.0, -1e-5, 1.0)
    ]
    + [
        (lambda: sde_lib.VPSDE(eps=1e-3, train_eps=1e-2), "train_eps .* must not exceed eps"),
        (lambda: sde_lib.VESDE(eps=1e-6), "train_eps .* must not exceed eps"),
    ],
)
def test_invalid_input_raises_value_error(build, field):
  """Each bad input raises ValueError naming the field, at construction (nothing compiles)."""
  with pytest.raises(ValueError, match=field):
    build()


def test_training_and_sampling_smallest_times_are_score_sde_values():
  """score_sde trains and computes likelihoods from t = 1e-5 for every SDE (its ``eps``) but
  samples VP / sub-VP only down to 1e-3 (``sampling_eps``); VE samples down to 1e-5."""
  assert (sde_lib.VESDE().train_eps, sde_lib.VESDE().eps) == (1e-5, 1e-5)
  for cls in (sde_lib.VPSDE, sde_lib.SubVPSDE):
    assert (cls().train_eps, cls().eps) == (1e-5, 1e-3)
  assert sde_lib.get_sde("vp", eps=1e-2, train_eps=1e-4) == sde_lib.VPSDE(eps=1e-2, train_eps=1e-4)


def test_sdes_hashable_jit_static_and_vmap():
  """Frozen dataclasses: equal SDEs hash equal, serve as jit static arguments (an equal twin
  does not retrace), and every method traces under jit and vmap with eager results."""
  traces = []

  def everything(sde, x, t):
    traces.append(sde)
    return (sde.drift(x, t), sde.diffusion(t), *sde.marginal(x, t), sde.log_snr(t), sde.snr(t),
            *sde.transition_coeffs(0.5 * t, t), *sde.discretize(x, 0.5 * t, t), sde.is_potential(t),
            sde.prior_logp(x), sde.tweedie_denoise(x, t, x), sde.reverse_drift(x, t, x),
            sde.reverse_drift(x, t, x, probability_flow=True))

  jitted = jax.jit(everything, static_argnums=0)
  x = jax.random.normal(jax.random.PRNGKey(6), (3, 2))  # [B, D]
  t = jnp.asarray([0.2, 0.5, 0.8])  # [B]
  for sde in (ALL_SDES[1], ALL_SDES[4], FEW_SDES[3], FEW_SDES[4]):  # VE, VP, VP-cosine, sub-VP-sigmoid
    twin = dataclasses.replace(sde)
    assert twin is not sde and twin == sde and hash(twin) == hash(sde) and {sde: 1}[twin] == 1
    eager = everything(sde, x, t * sde.T)
    before = len(traces)
    for got, ref in zip(jitted(sde, x, t * sde.T), eager):
      np.testing.assert_allclose(got, ref, rtol=1e-5, atol=1e-6)
    jitted(twin, x, t * sde.T)
    assert len(traces) == before + 1  # the twin hits the cache
    # vmap over examples, each with its own scalar t, equals the batched call.
    noise = -x
    np.testing.assert_allclose(jax.vmap(sde.perturb)(x, t * sde.T, noise), sde.perturb(x, t * sde.T, noise), rtol=1e-6)
    np.testing.assert_allclose(jax.vmap(sde.marginal_std)(t * sde.T), sde.marginal_std(t * sde.T), rtol=1e-6)
    vmapped_drift = jax.vmap(lambda xi, ti: sde.reverse_drift(xi[None], ti, xi[None])[0])(x, t * sde.T)
    np.testing.assert_allclose(vmapped_drift, sde.reverse_drift(x, t * sde.T, x), rtol=1e-5)
