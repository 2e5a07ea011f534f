"""The noise-schedule analysis (score_jax.analysis): Gaussian KL, the σ∞ VP SDE, the exact law of
samplers on Gaussian targets (against Monte Carlo of the real samplers), the KL bound of
Strasman et al. (arXiv 2402.04650) against the exact KL, and the two scripts end to end."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_jax import sampling, schedules
from score_jax import sde as sde_lib
from score_jax.analysis import kl, plot_schedules, sweep_schedule
from score_jax.data import toy

A_GRID = np.linspace(-6.0, 6.0, 7)
# Few distinct step counts: op-by-op JAX compiles its small kernels once per array shape.
STEP_COUNTS = (10, 40, 100, 400)


def _rotation(d, seed):
  q, r = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
  return q * np.sign(np.diag(r))


def _target(variances, mean, seed=0):
  u = _rotation(len(variances), seed)
  return np.asarray(mean, np.float64), (u * np.asarray(variances, np.float64)) @ u.T


# A correlated 3-D target with well-separated eigenvalues and a non-zero mean.
MEAN, COV = _target([0.2, 1.0, 3.0], [1.0, -0.5, 0.3])


def _sde(a=0.0, T=1.0, sigma_inf=1.0, beta_min=0.1, beta_max=20.0):
  sched = schedules.ExponentialSchedule(beta_min=beta_min, beta_max=beta_max, a=float(a), T=T)
  return kl.ScaledVPSDE(schedule=sched, T=T, sigma_inf=sigma_inf)


def _kl_reference(m0, c0, m1, c1):
  """Textbook KL(N0 ‖ N1) in float64 numpy."""
  inv1 = np.linalg.inv(c1)
  d = m1 - m0
  return 0.5 * (np.trace(inv1 @ c0) + d @ inv1 @ d - len(m0) + np.linalg.slogdet(c1)[1] - np.linalg.slogdet(c0)[1])


# --- Gaussian KL ---------------------------------------------------------------------------

def test_gaussian_kl_matches_numpy_and_monte_carlo():
  m0, c0 = _target([0.3, 1.0, 2.5], [0.5, 0.0, -1.0], seed=1)
  m1, c1 = _target([0.8, 1.5, 0.6], [0.0, 0.4, -0.2], seed=2)
  ref = _kl_reference(m0, c0, m1, c1)
  with jax.enable_x64(True):
    assert float(kl.gaussian_kl(m0, c0, m1, c1)) == pytest.approx(ref, rel=1e-12)
    # Batched, and 0 for identical Gaussians.
    batch = kl.gaussian_kl(np.stack([m0, m1]), np.stack([c0, c1]), np.stack([m1, m1]), np.stack([c1, c1]))
    np.testing.assert_allclose(np.asarray(batch), [ref, 0.0], atol=1e-12)
    assert abs(float(kl.gaussian_kl(m0, c0, m0, c0))) < 1e-12
    # Diagonal fast path = full formula on diagonal covariances.
    v0, v1 = np.array([0.3, 1.0, 2.5]), np.array([0.8, 1.5, 0.6])
    assert float(kl.gaussian_kl_diag(m0, v0, m1, v1)) == pytest.approx(
        _kl_reference(m0, np.diag(v0), m1, np.diag(v1)), rel=1e-12)
    assert float(kl.gaussian_kl_diag(m0, v0, m0, v0)) == 0.0
  assert float(kl.gaussian_kl(m0, c0, m1, c1)) == pytest.approx(ref, rel=1e-4)  # float32
  # Monte Carlo of E_0[log p0 − log p1] with scipy's densities, within 5 standard errors.
  x = stats.multivariate_normal(m0, c0).rvs(100_000, random_state=np.random.default_rng(3))
  ratio = stats.multivariate_normal(m0, c0).logpdf(x) - stats.multivariate_normal(m1, c1).logpdf(x)
  assert abs(ratio.mean() - ref) < 5 * ratio.std() / np.sqrt(len(x))


def test_relative_fisher_information_and_prior_kl_closed_forms():
  with jax.enable_x64(True):
    for s in (1.0, 1.7):
      # I(π_data | π∞) = tr Σ/σ⁴ − 2D/σ² + tr Σ⁻¹ + ‖μ‖²/σ⁴  ([S25], Lemma E.4).
      ref = np.trace(COV) / s**4 - 2 * 3 / s**2 + np.trace(np.linalg.inv(COV)) + MEAN @ MEAN / s**4
      assert float(kl.relative_fisher_information(MEAN, COV, s)) == pytest.approx(ref, rel=1e-12)
      # KL(p_T ‖ π∞) with p_T = N(m μ, m² Σ + s_T² I).
      sde = _sde(a=1.0, sigma_inf=s)
      m, st = float(sde.mean_coeff(1.0)), float(sde.marginal_std(1.0))
      ref_kl = _kl_reference(m * MEAN, m * m * COV + st**2 * np.eye(3), np.zeros(3), s * s * np.eye(3))
      assert float(kl.forward_prior_kl(sde, MEAN, COV)) == pytest.approx(ref_kl, rel=1e-9)


# --- the σ∞ VP SDE --------------------------------------------------------------------------

def test_scaled_vpsde_is_the_papers_forward_process():
  sched = schedules.ExponentialSchedule(a=3.0)
  t = np.linspace(0.05, 1.0, 7)
  with jax.enable_x64(True):
    one, vp = kl.ScaledVPSDE(schedule=sched, sigma_inf=1.0), sde_lib.VPSDE(schedule=sched)
    for fn in ("drift_coeff", "diffusion", "mean_coeff", "marginal_std", "log_snr"):
      np.testing.assert_allclose(getattr(one, fn)(t), getattr(vp, fn)(t), rtol=1e-12, err_msg=fn)
    s = 2.0
    sde = kl.ScaledVPSDE(schedule=sched, sigma_inf=s)
    b, beta = np.asarray(sched.integral(t)), np.asarray(sched.beta(t))
    np.testing.assert_allclose(sde.drift_coeff(t), -beta / (2 * s * s), rtol=1e-12)
    np.testing.assert_allclose(sde.diffusion(t), np.sqrt(beta), rtol=1e-12)
    np.testing.assert_allclose(sde.mean_coeff(t), np.exp(-b / (2 * s * s)), rtol=1e-12)
    np.testing.assert_allclose(sde.marginal_std(t), s * np.sqrt(1 - np.exp(-b / (s * s))), rtol=1e-12)
    assert sde.prior_std == s
    # The transition composes with the marginal: s(t)² = a² s(t0)² + q.
    a, q = sde.transition_coeffs(0.3, t[-1])
    assert float(a**2 * sde.marginal_std(0.3) ** 2 + q) == pytest.approx(float(sde.marginal_std(t[-1]) ** 2), rel=1e-12)
    # The marginal variance solves d/dt s² = 2 f s² + g² of the SDE.
    dvar = jax.grad(lambda u: sde.marginal_std(u) ** 2)(0.3)
    assert float(dvar) == pytest.approx(
        float(2 * sde.drift_coeff(0.3) * sde.marginal_std(0.3) ** 2 + sde.diffusion(0.3) ** 2), rel=1e-9)
  with pytest.raises(ValueError, match="sigma_inf"):
    kl.ScaledVPSDE(sigma_inf=0.0)
  with pytest.raises(ValueError, match="VP SDEs"):
    kl.mixing_term(sde_lib.VESDE(), MEAN, COV)


def test_gaussian_score_matches_toy_target():
  sde = _sde(a=-2.0, sigma_inf=1.5)
  nu, lam, u = kl.eigenbasis(MEAN, COV)
  x = np.random.default_rng(0).normal(size=(5, 3)).astype(np.float32)
  t = jnp.linspace(0.05, 1.0, 5)
  ours = kl.gaussian_score_fn(sde, nu, lam)(x @ u, t) @ u.T  # eigen coordinates and back
  np.testing.assert_allclose(ours, toy.Gaussian(MEAN, COV).score(x, t, sde), rtol=2e-4, atol=2e-5)


# --- exact law of the samplers ----------------------------------------------------------------

def test_step_affine_maps_are_the_papers_schemes():
  """Read off the real steps, the maps are [S25]'s Euler–Maruyama and exponential integrator."""
  s, n = 1.7, 10
  sde = _sde(a=2.0, sigma_inf=s)
  nu, lam = np.array([0.5, -1.0, 0.2]), np.array([0.3, 1.0, 4.0])
  with jax.enable_x64(True):
    ts = kl.time_grid(1.0, n)
    t, tn = np.asarray(ts[:-1])[:, None], np.asarray(ts[1:])[:, None]
    score_fn = kl.gaussian_score_fn(sde, nu, lam)
    m, st = np.asarray(sde.mean_coeff(t)), np.asarray(sde.marginal_std(t))
    v = m * m * lam + st * st  # [N, D] variance of p_t
    beta, h = np.asarray(sde.schedule.beta(t)), t - tn
    # Euler–Maruyama: x + h[β/(2σ²) x + β s] + √(hβ) z.
    a, b, c = kl.step_affine_coeffs(kl.predictor("euler_maruyama"), sde, score_fn, ts, 3)
    np.testing.assert_allclose(a, 1 + h * beta * (1 / (2 * s * s) - 1 / v), rtol=1e-12)
    np.testing.assert_allclose(b, h * beta * m * nu / v, rtol=1e-12)
    np.testing.assert_allclose(c, np.broadcast_to(np.sqrt(h * beta), c.shape), rtol=1e-12)
    # Exponential integrator: e^Δ x + 2σ²(e^Δ − 1) s + σ(e^{2Δ} − 1)^{1/2} z, Δ = ∫β/(2σ²) over the step.
    delta = np.asarray(sde.schedule.integral(t) - sde.schedule.integral(tn)) / (2 * s * s)
    a, b, c = kl.step_affine_coeffs(kl.predictor("exponential"), sde, score_fn, ts, 3)
    np.testing.assert_allclose(a, np.exp(delta) - 2 * s * s * np.expm1(delta) / v, rtol=1e-10)
    np.testing.assert_allclose(b, 2 * s * s * np.expm1(delta) * m * nu / v, rtol=1e-10)
    np.testing.assert_allclose(c, np.broadcast_to(s * np.sqrt(np.expm1(2 * delta)), c.shape), rtol=1e-10)
    # The theorem's integrator: e^{−Δ} x + 2σ²(1 − e^{−Δ})(s + x/σ²) + σ(1 − e^{−2Δ})^{1/2} z.
    a, b, c = kl.step_affine_coeffs(kl.predictor("exponential_relative"), sde, score_fn, ts, 3)
    np.testing.assert_allclose(a, np.exp(-delta) - 2 * s * s * np.expm1(-delta) * (1 / (s * s) - 1 / v), rtol=1e-10)
    np.testing.assert_allclose(b, -2 * s * s * np.expm1(-delta) * m * nu / v, rtol=1e-10)
    np.testing.assert_allclose(c, np.broadcast_to(s * np.sqrt(-np.expm1(-2 * delta)), c.shape), rtol=1e-10)
    # Every step acts per coordinate: the Jacobian of one step is diagonal.
    f = lambda x: kl.predictor("exponential")(sde, score_fn, x[None], ts[3:4], ts[4:5], jnp.zeros((1, 3)))[0][0]
    jac = np.asarray(jax.jacfwd(f)(jnp.ones(3)))
    np.testing.assert_allclose(jac - np.diag(np.diag(jac)), 0.0, atol=1e-14)
  with pytest.raises(ValueError, match="Unknown sampler step"):
    kl.predictor("heun")


def test_sigma_inf_is_a_change_of_scale():
  """ScaledVPSDE(σ, β) on N(μ, Σ) is σ × VPSDE(β/σ²) on N(μ/σ, Σ/σ²): every KL is unchanged."""
  s, a, n = 2.0, 1.5, 40
  with jax.enable_x64(True):
    scaled = _sde(a=a, sigma_inf=s)
    unit = sde_lib.VPSDE(schedule=schedules.ExponentialSchedule(0.1 / s**2, 20.0 / s**2, a=a))
    for method in ("euler_maruyama", "exponential", "exponential_relative", "reverse_diffusion"):
      assert float(kl.exact_kl(scaled, MEAN, COV, n, method)) == pytest.approx(
          float(kl.exact_kl(unit, MEAN / s, COV / s**2, n, method)), rel=1e-9), method
    for x, y in zip(kl.kl_upper_bound(scaled, MEAN, COV, n, eps2=0.1),
                    kl.kl_upper_bound(unit, MEAN / s, COV / s**2, n, eps2=0.1 * s**2)):
      assert float(x) == pytest.approx(float(y), rel=1e-9)


def _delta_method_se(mean, cov, m, c, n):
  """Standard error of KL(N(mean, cov) ‖ N(m̂, Ĉ)) for sample mean/cov of n draws from N(m, c)."""
  g_m, g_c = jax.grad(lambda mm, cc: kl.gaussian_kl(mean, cov, mm, cc), argnums=(0, 1))(m, c)
  g_c = 0.5 * (g_c + g_c.T)
  # Var(gᵀ m̂) = gᵀ C g / n;  Var(tr(G Ĉ)) = 2 tr(G C G C) / n for symmetric G.
  return float(jnp.sqrt((g_m @ c @ g_m + 2 * jnp.trace(g_c @ c @ g_c @ c)) / n))


def _check_against_samples(x, sde, mean, cov, num_steps, method):
  n, d = x.shape
  x = np.asarray(x, np.float64)
  with jax.enable_x64(True):
    m, c = (np.asarray(v) for v in kl.sampler_law(sde, mean, cov, num_steps, method, t_end=sde.eps))
    exact = float(kl.exact_kl(sde, mean, cov, num_steps, method, t_end=sde.eps))
    m_hat, c_hat = x.mean(0), np.cov(x.T)
    estimate = float(kl.gaussian_kl(mean, cov, m_hat, c_hat))
    se = _delta_method_se(mean, cov, m, c, n)
  # Mean and covariance within 5 standard errors of the propagated law.
  assert np.all(np.abs(m_hat - m) < 5 * np.sqrt(np.diag(c) / n)), (m_hat, m)
  se_c = np.sqrt((np.outer(np.diag(c), np.diag(c)) + c**2) / n)
  assert np.all(np.abs(c_hat - c) < 5 * se_c), (c_hat, c)
  # KL within 5 delta-method standard errors plus the O(D²/n) bias of the plug-in estimate.
  assert abs(estimate - exact) < 5 * se + d * (d + 3) / (4 * n), (estimate, exact, se)
  assert exact > 20 * se  # the setting resolves the discretization error


def test_exact_kl_of_euler_maruyama_matches_monte_carlo_of_the_sampler():
  mean, cov = _target([0.3, 2.0], [0.8, -0.4], seed=4)
  sde, num_steps = _sde(a=2.0, sigma_inf=1.5), 8
  score_fn = toy.Gaussian(mean, cov).score_fn(sde)
  x, _ = sampling.sample(jax.random.PRNGKey(0), sde, score_fn, (100_000, 2), method="pc",
                         predictor="euler_maruyama", corrector="none", denoise=False, num_steps=num_steps)
  _check_against_samples(x, sde, mean, cov, num_steps, "euler_maruyama")


@pytest.mark.skipif("exponential" not in sampling.METHODS, reason="no exponential sampler")
def test_exact_kl_of_exponential_integrator_matches_monte_carlo_of_the_sampler():
  mean, cov = _target([0.3, 2.0], [0.8, -0.4], seed=4)
  sde, num_steps = kl.ScaledVPSDE(schedule=schedules.ExponentialSchedule(a=2.0)), 8
  score_fn = toy.Gaussian(mean, cov).score_fn(sde)
  x, _ = sampling.sample(jax.random.PRNGKey(1), sde, score_fn, (100_000, 2), method="exponential",
                         skip_type="time_uniform", denoise=False, num_steps=num_steps)
  _check_against_samples(x, sde, mean, cov, num_steps, "exponential")


# --- the bound of [S25] against the exact KL ---------------------------------------------------

# Targets for the bound: MEAN/COV (far from π∞), near π∞, and π∞ itself (bound 0).
BOUND_TARGETS = {"far": (MEAN, COV), "near": _target([0.9, 1.1, 1.2], [0.1, 0.0, 0.0]),
                 "stationary": (np.zeros(3), np.eye(3))}


@pytest.mark.parametrize("sigma_inf", [1.0, 1.5])
def test_bound_holds_for_every_a(sigma_inf):
  """[S25]'s bound ≥ the exact KL of its scheme on every target, and of Euler–Maruyama and the
  library's exponential integrator on the target far from π∞; every term ≥ 0."""
  with jax.enable_x64(True):
    for name, (mean, cov) in BOUND_TARGETS.items():
      mean, cov = sigma_inf * mean, sigma_inf**2 * cov
      methods = ("exponential_relative",) + (("euler_maruyama", "exponential") if name == "far" else ())
      for a in A_GRID:
        sde = _sde(a=a, sigma_inf=sigma_inf)
        prior_kl = float(kl.forward_prior_kl(sde, mean, cov))
        for n in STEP_COUNTS[::2]:
          bound = kl.kl_upper_bound(sde, mean, cov, n)
          assert all(float(term) >= 0 for term in bound), (name, a, n, bound)
          assert float(bound.approximation) == 0.0
          assert float(bound.mixing) >= prior_kl - 1e-15  # the mixing term bounds KL(p_T ‖ π∞)
          for method in methods:
            exact = float(kl.exact_kl(sde, mean, cov, n, method))
            assert exact <= float(bound.total) + 1e-12, (name, a, n, method, exact, bound)
            assert exact > 0 or name == "stationary"


def test_bound_is_not_for_the_full_score_steps():
  """With π_data = π∞ the bound is 0 and the theorem's scheme is exact, but Euler–Maruyama and
  the full-score exponential integrator are not: the bound is about the relative-score scheme."""
  sde = _sde(a=0.0)
  mean, cov = BOUND_TARGETS["stationary"]
  with jax.enable_x64(True):
    assert float(kl.kl_upper_bound(sde, mean, cov, 20).total) == 0.0
    assert float(kl.exact_kl(sde, mean, cov, 20, "exponential_relative")) < 1e-14
    for method in ("euler_maruyama", "exponential"):
      assert float(kl.exact_kl(sde, mean, cov, 20, method)) > 1e-3, method


def test_bound_terms_closed_forms():
  sde, n = _sde(a=-3.0, sigma_inf=1.2), 40
  with jax.enable_x64(True):
    big_b = float(sde.schedule.integral(1.0))
    kl0 = _kl_reference(MEAN, COV, np.zeros(3), 1.44 * np.eye(3))
    assert float(kl.mixing_term(sde, MEAN, COV)) == pytest.approx(kl0 * np.exp(-big_b / 1.44), rel=1e-10)
    # ε² ∫₀ᵀ β for one ε²; per-step ε_k² weight ∫β over their own step.
    assert float(kl.approximation_term(sde, n, 0.3)) == pytest.approx(0.3 * big_b, rel=1e-10)
    eps2 = np.zeros(n)
    eps2[0] = 1.0  # the first reverse step, from T to T − h
    assert float(kl.approximation_term(sde, n, eps2)) == pytest.approx(
        big_b - float(sde.schedule.integral(1.0 - 1.0 / n)), rel=1e-10)
    hb = 20.0 / n
    fisher = float(kl.relative_fisher_information(MEAN, COV, 1.2))
    assert float(kl.discretization_term(sde, MEAN, COV, n)) == pytest.approx(
        2 * hb * max(hb / (4 * 1.44), 1.0) * fisher, rel=1e-12)
    assert float(kl.discretization_term(sde, MEAN, COV, 2)) == pytest.approx(  # h β(T) > 4σ²: quadratic in h
        2 * 10.0 * (10.0 / (4 * 1.44)) * fisher, rel=1e-12)


def test_exact_kl_decreases_with_steps_and_mixing_with_T():
  with jax.enable_x64(True):
    for a in (-4.0, 0.0):
      sde = _sde(a=a)
      for method in ("euler_maruyama", "exponential", "exponential_relative"):
        kls = [float(kl.exact_kl(sde, MEAN, COV, n, method)) for n in STEP_COUNTS]
        assert all(x > y for x, y in zip(kls, kls[1:])), (a, method, kls)
    for a in (-3.0, 0.0, 3.0):
      mixing = [float(kl.mixing_term(_sde(a=a, T=T), MEAN, COV)) for T in (0.5, 1.0, 2.0, 4.0)]
      assert all(x > y for x, y in zip(mixing, mixing[1:])), (a, mixing)


def test_analysis_functions_jit_and_vmap():
  sde = _sde(a=1.0)
  exact = jax.jit(kl.exact_kl, static_argnums=(0, 3, 4))
  assert float(exact(sde, MEAN, COV, 40, "euler_maruyama")) == pytest.approx(
      float(kl.exact_kl(sde, MEAN, COV, 40, "euler_maruyama")), rel=1e-4)  # float32
  means = jnp.stack([jnp.asarray(MEAN), jnp.zeros(3)])
  bounds = jax.vmap(lambda m: kl.kl_upper_bound(sde, m, COV, 40).total)(means)
  assert bounds.shape == (2,) and float(bounds[1]) < float(bounds[0])


# --- scripts -----------------------------------------------------------------------------------

def test_plot_schedules_end_to_end(tmp_path, capsys):
  out = str(tmp_path / "plots")
  path = plot_schedules.main([f"--out={out}", "--a_values=-5,5"])
  with open(path, "rb") as f:
    png = f.read()
  assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
  with pytest.raises(SystemExit):
    plot_schedules.main([f"--out={out}"])
  assert "refusing to overwrite" in capsys.readouterr().err
  with open(path, "rb") as f:
    assert f.read() == png
  t, curves = plot_schedules.schedule_curves(a_values=[-5.0, 5.0])
  assert set(curves) == {"linear", "quadratic", "exponential a=-5", "exponential a=5", "cosine", "sigmoid"}
  for c in curves.values():
    assert np.all(np.diff(c["alpha_bar"]) <= 0) and np.all(np.diff(c["log_snr"]) < 0)
    ok = c["alpha_bar"] < 0.99  # float32 1 − ᾱ is too coarse above
    np.testing.assert_allclose(c["snr"][ok], (c["alpha_bar"] / (1 - c["alpha_bar"]))[ok], rtol=1e-3)


def test_sweep_schedule_end_to_end(tmp_path, capsys):
  out = str(tmp_path / "sweep")
  args = [f"--out={out}", "--variances=0.5,1,2", "--mean=0.5", "--num_steps=10,40", "--a_min=-4", "--a_max=4",
          "--a_num=3"]
  paths = sweep_schedule.main(args)
  with open(paths["json"]) as f:
    result = json.load(f)
  rows = result["rows"]
  assert len(rows) == 6 and result["config"]["dim"] == 3
  for r in rows:
    assert set(r["exact_kl"]) == {"euler_maruyama", "exponential", "exponential_relative"}
    assert r["total"] == pytest.approx(r["mixing"] + r["approximation"] + r["discretization"])
    assert r["exact_kl"]["exponential_relative"] <= r["total"]
  with open(paths["md"]) as f:
    assert f.read().startswith("| a | N | mixing |")
  with open(paths["png"], "rb") as f:
    assert f.read()[:4] == b"\x89PNG"
  with pytest.raises(SystemExit):
    sweep_schedule.main(args)
  assert "refusing to overwrite" in capsys.readouterr().err
  # One leftover file is enough to refuse, and nothing else gets written.
  other = str(tmp_path / "other")
  os.makedirs(other)
  open(os.path.join(other, "sweep_schedule.md"), "w").close()
  with pytest.raises(SystemExit):
    sweep_schedule.main([f"--out={other}"] + args[1:])
  assert os.listdir(other) == ["sweep_schedule.md"]
