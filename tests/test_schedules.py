"""Checks every β(t) family in score_jax.schedules against independent computations.

References are computed in float64 with numpy (Gauss–Legendre quadrature, the defining
ᾱ(t) of each family); the code under test runs in float32, which sets the tolerances.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import schedules as sched_lib

# One instance per family and a few parameter corners: exponential a < 0, a = 0, tiny a
# (where the closed form used to cancel in float32), a > 0; T ≠ 1; a cosine cap well
# inside [0, T].
SCHEDULES = [
    sched_lib.LinearSchedule(),
    sched_lib.LinearSchedule(beta_min=0.5, beta_max=3.0, T=2.0),
    sched_lib.QuadraticSchedule(),
    sched_lib.QuadraticSchedule(beta_min=0.0, beta_max=5.0, T=3.0),
    sched_lib.ExponentialSchedule(a=-5.0),
    sched_lib.ExponentialSchedule(a=-1e-3),
    sched_lib.ExponentialSchedule(a=0.0),
    sched_lib.ExponentialSchedule(a=2e-6),
    sched_lib.ExponentialSchedule(a=1e-5),
    sched_lib.ExponentialSchedule(a=1e-3),
    sched_lib.ExponentialSchedule(a=0.5),
    sched_lib.ExponentialSchedule(a=5.0),
    sched_lib.ExponentialSchedule(a=-60.0),
    sched_lib.ExponentialSchedule(a=60.0),
    sched_lib.ExponentialSchedule(beta_min=0.2, beta_max=8.0, a=2.0, T=2.0),
    sched_lib.CosineSchedule(),
    sched_lib.CosineSchedule(max_beta=10.0),
    sched_lib.CosineSchedule(s=0.02, max_beta=20.0, T=2.0),
    sched_lib.SigmoidSchedule(),
    sched_lib.SigmoidSchedule(logsnr_min=-6.0, logsnr_max=4.0, T=2.0),
]
IDS = [repr(s) for s in SCHEDULES]


def _f64(x):
  return np.asarray(x, np.float64)


def _quad_beta(sched, t: float) -> float:
  """∫₀ᵗ β by composite 32-point Gauss–Legendre, split at the cosine cap (a kink in β)."""
  if t == 0.0:
    return 0.0
  breaks = [0.0, t]
  t_cap = getattr(sched, "t_cap", None)
  if t_cap is not None and 0.0 < t_cap < t:
    breaks = [0.0, t_cap, t]
  nodes, weights = np.polynomial.legendre.leggauss(32)
  edges = np.concatenate([np.linspace(lo, hi, 9)[:-1] for lo, hi in zip(breaks[:-1], breaks[1:])] + [[t]])
  lo, hi = edges[:-1, None], edges[1:, None]
  u = 0.5 * (hi - lo) * nodes[None] + 0.5 * (hi + lo)  # [pieces, 32]
  beta = _f64(sched.beta(jnp.asarray(u, jnp.float32)))
  return float(np.sum(0.5 * (hi - lo) * weights[None] * beta))


def _times(sched):
  ts = [0.0, 0.013 * sched.T, 0.1 * sched.T, 0.37 * sched.T, 0.5 * sched.T, 0.8 * sched.T, 0.999 * sched.T, sched.T]
  if isinstance(sched, sched_lib.CosineSchedule):
    ts += [sched.t_cap - 1e-3, min(sched.t_cap + 1e-3, sched.T)]
  return ts


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_integral_matches_quadrature(sched):
  """B(t) = ∫₀ᵗ β(u) du against Gauss–Legendre quadrature of β, past the cosine cap too."""
  for t in _times(sched):
    ref = _quad_beta(sched, t)
    got = float(sched.integral(jnp.float32(t)))
    # float32 evaluation: a few ulps of B plus the float32 rounding of t itself.
    assert got == pytest.approx(ref, rel=1e-5, abs=1e-6), (sched, t)


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_beta_is_derivative_of_integral(sched):
  """β(t) = dB/dt by jax.grad of the closed-form integral (also traces under vmap)."""
  ts = jnp.asarray([t for t in _times(sched) if 0 < t < sched.T], jnp.float32)
  grads = jax.vmap(jax.grad(sched.integral))(ts)
  np.testing.assert_allclose(grads, sched.beta(ts), rtol=1e-4)  # float32 autodiff


@pytest.mark.parametrize("sched", SCHEDULES, ids=IDS)
def test_beta_nonnegative_finite_integral_increasing(sched):
  """β ≥ 0 and finite on a dense grid of [0, T] including both ends; B(0) = 0, B increasing."""
  ts = jnp.linspace(0.0, sched.T, 4001)
  beta, integral = sched.beta(ts), sched.integral(ts)
  assert bool(jnp.all(jnp.isfinite(beta))) and bool(jnp.all(beta >= 0))
  assert float(sched.integral(0.0)) == 0.0
  assert bool(jnp.all(jnp.diff(integral) >= 0))
  assert isinstance(sched, sched_lib.BetaSchedule)


@pytest.mark.parametrize("cls,power", [(sched_lib.LinearSchedule, 1), (sched_lib.QuadraticSchedule, 2)])
def test_polynomial_families_closed_form(cls, power):
  """Linear / quadratic: β = β_min + (β_max − β_min)(t/T)^p and B = β_min t + Δ t^{p+1}/((p+1) T^p)."""
  sched = cls(beta_min=0.3, beta_max=7.0, T=2.5)
  t = np.linspace(0.0, 2.5, 11)
  beta_ref = 0.3 + 6.7 * (t / 2.5) ** power
  int_ref = 0.3 * t + 6.7 * t ** (power + 1) / ((power + 1) * 2.5**power)
  np.testing.assert_allclose(sched.beta(jnp.asarray(t)), beta_ref, rtol=1e-6)
  np.testing.assert_allclose(sched.integral(jnp.asarray(t)), int_ref, rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("a", [-100.0, -8.0, -1.0, -1e-3, 0.0, 1e-7, 1e-3, 1.0, 8.0, 50.0])
def test_exponential_endpoints_and_formula(a):
  """β_a(0) = β_min, β_a(T) = β_max for every a; β_a matches its defining formula."""
  sched = sched_lib.ExponentialSchedule(beta_min=0.1, beta_max=20.0, a=a, T=1.5)
  assert float(sched.beta(0.0)) == pytest.approx(0.1, rel=1e-6)
  assert float(sched.beta(1.5)) == pytest.approx(20.0, rel=1e-6)
  t = np.linspace(0.0, 1.5, 7)
  ratio = t / 1.5 if a == 0 else np.expm1(a * t) / np.expm1(a * 1.5)
  np.testing.assert_allclose(sched.beta(jnp.asarray(t)), 0.1 + 19.9 * ratio, rtol=1e-5)


@pytest.mark.parametrize("a", [1e-7, -1e-7, 1e-4, -1e-4, 1e-2, -1e-2])
def test_exponential_small_a_tends_to_linear(a):
  """|β_a − β_lin| ≤ Δ|a|T/8 and |B_a − B_lin| ≤ Δ|a|T²/12 to first order in a (bounds ×1.5)."""
  T, delta = 1.0, 19.9
  exp_s = sched_lib.ExponentialSchedule(a=a, T=T)
  lin = sched_lib.LinearSchedule(T=T)
  t = jnp.linspace(0.0, T, 101)
  assert float(jnp.max(jnp.abs(exp_s.beta(t) - lin.beta(t)))) <= 1.5 * delta * abs(a) * T / 8 + 1e-5
  assert float(jnp.max(jnp.abs(exp_s.integral(t) - lin.integral(t)))) <= 1.5 * delta * abs(a) * T**2 / 12 + 1e-5


def test_exponential_monotone_in_a():
  """a > 0 puts noise late: for 0 < t < T, B_a(t) strictly decreases as a grows."""
  t = jnp.linspace(0.05, 0.95, 19)
  values = np.stack([sched_lib.ExponentialSchedule(a=a).integral(t) for a in (-4.0, -1.0, 0.0, 1.0, 4.0)])
  assert np.all(np.diff(values, axis=0) < 0)


@pytest.mark.parametrize("sched", [s for s in SCHEDULES if isinstance(s, sched_lib.CosineSchedule)], ids=repr)
def test_cosine_alpha_bar_and_cap(sched):
  """Before t*: exp(−B) = cos²θ(t)/cos²θ(0), θ = (t/T + s)/(1 + s)·π/2 (Nichol & Dhariwal);
  at t* β reaches max_beta continuously, after it β = max_beta and B grows with slope max_beta."""
  theta = lambda t: (t / sched.T + sched.s) / (1 + sched.s) * math.pi / 2
  t_cap = sched.t_cap
  assert 0 < t_cap < sched.T
  t = np.linspace(0.0, t_cap, 50, endpoint=False)
  alpha_bar_ref = np.cos(theta(t)) ** 2 / math.cos(theta(0.0)) ** 2
  np.testing.assert_allclose(np.exp(-_f64(sched.integral(jnp.asarray(t)))), alpha_bar_ref, rtol=1e-5)
  # t* solves 2 tan θ(t*) θ' = max_beta, with θ' = π/(2T(1 + s)).
  dtheta = math.pi / (2 * sched.T * (1 + sched.s))
  assert 2 * math.tan(theta(t_cap)) * dtheta == pytest.approx(sched.max_beta, rel=1e-9)
  assert float(sched.beta(t_cap - 1e-5)) == pytest.approx(sched.max_beta, rel=1e-3)
  after = jnp.linspace(t_cap + 1e-4, sched.T, 5)
  np.testing.assert_allclose(sched.beta(after), sched.max_beta, rtol=1e-7)
  slope = (_f64(sched.integral(after[-1])) - _f64(sched.integral(after[0]))) / (_f64(after[-1]) - _f64(after[0]))
  assert slope == pytest.approx(sched.max_beta, rel=1e-4)


def test_cosine_large_cap_stays_finite():
  """With max_beta = 1e6 (t* within 2e-6 of T) B stays finite and increasing in float32, and
  B(T) ≈ −2 log(cos θ(t*)/cos θ(0)) + max_beta (T − t*)."""
  sched = sched_lib.CosineSchedule(max_beta=1e6)
  assert sched.T - 1e-5 < sched.t_cap < sched.T
  integral = sched.integral(jnp.linspace(0.0, sched.T, 100001))
  assert bool(jnp.all(jnp.isfinite(integral))) and bool(jnp.all(jnp.diff(integral) >= 0))
  theta = lambda t: (t / sched.T + sched.s) / (1 + sched.s) * math.pi / 2
  ref = -2 * math.log(math.cos(theta(sched.t_cap)) / math.cos(theta(0.0))) + 1e6 * (sched.T - sched.t_cap)
  assert float(sched.integral(sched.T)) == pytest.approx(ref, rel=1e-3)  # θ near π/2 in float32


@pytest.mark.parametrize("sched", [s for s in SCHEDULES if isinstance(s, sched_lib.SigmoidSchedule)], ids=repr)
def test_sigmoid_logit_is_linear(sched):
  """logit(exp(−B(t))·σ(λ_max)) = λ_max + (λ_min − λ_max) t/T, and β = σ(−λ(t))(λ_max − λ_min)/T."""
  t = np.linspace(0.0, sched.T, 21)
  lam = sched.logsnr_max + (sched.logsnr_min - sched.logsnr_max) * t / sched.T
  log_sig_max = -np.logaddexp(0.0, -sched.logsnr_max)  # log σ(λ_max)
  log_p = -_f64(sched.integral(jnp.asarray(t))) + log_sig_max
  logit = log_p - np.log(-np.expm1(log_p))
  # float32 B has a relative error ~1e-7, which 1/(1 − p) ≤ e^{λ_max} amplifies at t ≈ 0.
  np.testing.assert_allclose(logit, lam, atol=2e-3)
  beta_ref = (sched.logsnr_max - sched.logsnr_min) / sched.T / (1 + np.exp(lam))
  np.testing.assert_allclose(sched.beta(jnp.asarray(t)), beta_ref, rtol=1e-5)


@pytest.mark.parametrize(
    "build,field",
    [
        (lambda: sched_lib.LinearSchedule(beta_min=-1.0), "beta_min"),
        (lambda: sched_lib.LinearSchedule(beta_min=5.0, beta_max=1.0), "beta_max"),
        (lambda: sched_lib.LinearSchedule(T=0.0), r"\.T"),
        (lambda: sched_lib.QuadraticSchedule(beta_min=-0.1), "beta_min"),
        (lambda: sched_lib.QuadraticSchedule(beta_max=0.05), "beta_max"),
        (lambda: sched_lib.ExponentialSchedule(a=float("inf")), r"\.a"),
        (lambda: sched_lib.ExponentialSchedule(beta_min=-1.0, a=1.0), "beta_min"),
        (lambda: sched_lib.ExponentialSchedule(a=100.0), r"\.a \* T"),
        (lambda: sched_lib.CosineSchedule(s=0.0), r"\.s"),
        (lambda: sched_lib.CosineSchedule(max_beta=-1.0), "max_beta"),
        (lambda: sched_lib.CosineSchedule(max_beta=0.01), "max_beta"),  # below β(0) ≈ 0.0196
        (lambda: sched_lib.CosineSchedule(T=-1.0), r"\.T"),
        (lambda: sched_lib.SigmoidSchedule(logsnr_min=5.0, logsnr_max=1.0), "logsnr_max"),
        (lambda: sched_lib.SigmoidSchedule(T=0.0), r"\.T"),
        (lambda: sched_lib.get_schedule("warp"), "Unknown schedule 'warp'"),
        (lambda: sched_lib.get_schedule("cosine", beta_min=0.1), "fields"),
    ],
)
def test_invalid_schedules_raise(build, field):
  """Bad parameters raise ValueError naming the offending field, at construction."""
  with pytest.raises(ValueError, match=field):
    build()


def test_get_schedule_by_name():
  """get_schedule builds every registered family with its kwargs."""
  for name, cls in sched_lib.SCHEDULES.items():
    assert isinstance(sched_lib.get_schedule(name), cls)
  assert sched_lib.get_schedule("exponential", a=2.0, T=3.0) == sched_lib.ExponentialSchedule(a=2.0, T=3.0)


def test_schedules_hashable_and_jit_static():
  """Frozen dataclasses: equal schedules hash equal and serve as jit static args without retracing."""
  traces = []

  def fn(sched, t):
    traces.append(sched)
    return sched.integral(t), sched.beta(t)

  jitted = jax.jit(fn, static_argnums=0)
  t = jnp.linspace(0.0, 0.9, 4)
  one_per_family = {type(s): s for s in SCHEDULES}.values()  # each new schedule compiles once
  for sched in one_per_family:
    twin = type(sched)(**{f: getattr(sched, f) for f in sched.__dataclass_fields__})
    assert hash(twin) == hash(sched) and twin == sched
    before = len(traces)
    np.testing.assert_allclose(jitted(sched, t * sched.T)[0], sched.integral(t * sched.T), rtol=1e-6)
    jitted(twin, t * sched.T)
    assert len(traces) - before <= 1  # the equal twin hits the cache
