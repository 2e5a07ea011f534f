"""The recipes of 2022–2023 against closed forms: EDM's preconditioning and loss, the
conversions between score, noise, data and velocity predictions, and rectified flow as an SDE.

Closed forms used: EDM's Table 1 (c_skip, c_out, c_in, c_noise); the ideal denoiser
E[x(0) | x(t)] of a Gaussian mixture, computed per component (``toy.GaussianMixture.posterior_mean``)
rather than from the score; the MMSE of Gaussian data, d v σ²/(v + σ²), which makes the ideal
EDM loss a one-dimensional integral over σ; and rectified flow's marginals N((1 − t) x(0), t²).
"""

import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, stats

from mixture_bar import TARGET, assert_reproduces
from score_jax import losses
from score_jax import sampling
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax.data import toy

SIGMA_DATA = 0.5
# Component stds exactly representable in float32 (the mixture stores float32), so that the
# float64 comparisons below measure the formulas, not the rounding of σ_k².
MIXTURE = toy.GaussianMixture(means=[[-2.0, 0.0], [2.0, 1.0]], stds=[[0.375, 0.25], [0.5, 0.125]], weights=[0.25, 0.75])
SDES = {
    "ve": sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0),
    "vp": sde_lib.VPSDE(),
    "subvp": sde_lib.SubVPSDE(),
    "rectified_flow": sde_lib.RectifiedFlowSDE(),
}


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _points(sde, n=6, seed=0):
  """States x [n, 2] and times t [n] spread over (eps, T)."""
  x = 2.0 * jax.random.normal(jax.random.key(seed), (n, 2), jnp.float64)
  t = jnp.array([0.01, 0.05, 0.2, 0.5, 0.8, 0.99][:n], jnp.float64) * sde.T
  return x, t


def ideal_edm_network(sde, target):
  """The F of EDM's preconditioning that makes D the ideal denoiser: F = (D* − c_skip x̃)/c_out,
  written as ``apply_fn(params, c_in x̃, t)`` (conditioning "time") for ``score_fn.get_score_fn``."""

  def apply_fn(params, x_in, t):
    del params
    sigma = sde.noise_level(t)[:, None]
    c_skip, c_out, c_in, _ = score_fn_lib.edm_coefficients(sigma, SIGMA_DATA)
    x_scaled = x_in / c_in
    ideal = target.posterior_mean(x_scaled * sde.mean_coeff(t)[:, None], t, sde)  # E[x(0) | x(t)]
    return (ideal - c_skip * x_scaled) / c_out

  return apply_fn


def ideal_edm_score(sde, target):
  return score_fn_lib.get_score_fn(sde, ideal_edm_network(sde, target), None, parametrization="edm",
                                   conditioning="time", sigma_data=SIGMA_DATA)


# --- 1. EDM preconditioning ------------------------------------------------------------------------
def test_edm_coefficients_are_table_1():
  """At σ = σ_d the four are 1/2, σ_d/√2, 1/(σ_d√2), ¼ ln σ_d; elsewhere EDM's formulas.  A slip
  of σ_d² for σ_d in c_skip gives 2/3 at σ = σ_d and fails the first row."""
  c_skip, c_out, c_in, c_noise = (np.asarray(c) for c in score_fn_lib.edm_coefficients(0.5, 0.5))
  np.testing.assert_allclose([c_skip, c_out, c_in, c_noise], [0.5, 0.5 / math.sqrt(2), math.sqrt(2), 0.25 * math.log(0.5)],
                             rtol=1e-6)
  for sigma in (0.002, 0.1, 1.0, 80.0):
    total = sigma**2 + 0.25
    got = np.asarray(score_fn_lib.edm_coefficients(np.float64(sigma), 0.5))
    np.testing.assert_allclose(got, [0.25 / total, sigma * 0.5 / math.sqrt(total), 1 / math.sqrt(total),
                                     math.log(sigma) / 4], rtol=1e-6)
  # The limits that make EDM's F a unit-variance target: D → x̃ as σ → 0 and c_out → σ_d as σ → ∞.
  small = score_fn_lib.edm_coefficients(np.float64(1e-6), 0.5)
  large = score_fn_lib.edm_coefficients(np.float64(1e6), 0.5)
  assert float(small[0]) == pytest.approx(1.0, abs=1e-10) and float(large[1]) == pytest.approx(0.5, rel=1e-9)


@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_edm_network_sees_c_in_x_over_m_and_c_noise_and_its_output_becomes_the_score(sde_name, x64):
  """One evaluation pinned against the formula: the network receives c_in x/m(t) and ¼ ln σ̃(t), and
  the score is (D − x̃)/(σ̃² m) with D = c_skip x̃ + c_out F."""
  sde = SDES[sde_name]
  x, t = _points(sde)
  seen = {}

  def apply_fn(params, x_in, cond):
    seen["x"], seen["cond"] = x_in, cond
    return jnp.sin(3.0 * x_in) + params  # any F

  score = score_fn_lib.get_score_fn(sde, apply_fn, 0.25, parametrization="edm", conditioning="log_sigma",
                                    sigma_data=SIGMA_DATA)(x, t)
  m, sigma = np.asarray(sde.mean_coeff(t))[:, None], np.asarray(sde.noise_level(t))[:, None]
  c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
  c_out = sigma * SIGMA_DATA / np.sqrt(sigma**2 + SIGMA_DATA**2)
  c_in = 1.0 / np.sqrt(sigma**2 + SIGMA_DATA**2)
  x_scaled = np.asarray(x) / m
  np.testing.assert_allclose(seen["x"], c_in * x_scaled, rtol=1e-12)
  np.testing.assert_allclose(seen["cond"], 0.25 * np.log(sigma[:, 0]), rtol=1e-12)
  denoised = c_skip * x_scaled + c_out * (np.sin(3.0 * c_in * x_scaled) + 0.25)
  np.testing.assert_allclose(score, (denoised - x_scaled) / (sigma**2 * m), rtol=1e-9)


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_edm_parametrization_of_the_ideal_denoiser_gives_the_exact_score(sde_name, x64):
  sde = SDES[sde_name]
  x, t = _points(sde)
  score = ideal_edm_score(sde, MIXTURE)(x, t)
  exact = MIXTURE.score(x, t, sde)
  np.testing.assert_allclose(score, exact, rtol=1e-6, atol=1e-6 * float(jnp.max(jnp.abs(exact))))


# --- 2. The EDM loss ---------------------------------------------------------------------------------
def _ideal_edm_loss(v: float, dim: int, p_mean: float, p_std: float, lo: float, hi: float) -> float:
  """E_σ[λ(σ) σ² MMSE(σ)/σ²]: λ(σ) d v σ²/(v + σ²) over ln σ ~ N(p_mean, p_std²) truncated to [lo, hi]."""
  weight = stats.norm(p_mean, p_std)
  mass = weight.cdf(math.log(hi)) - weight.cdf(math.log(lo))
  lam = lambda s: (s**2 + SIGMA_DATA**2) / (s * SIGMA_DATA) ** 2
  integrand = lambda u: weight.pdf(u) * lam(math.exp(u)) * dim * v * math.exp(2 * u) / (v + math.exp(2 * u))
  return integrate.quad(integrand, math.log(lo), math.log(hi), limit=200)[0] / mass


@pytest.mark.parametrize("sde_name,std", [("ve", 0.5), ("ve", 0.25), ("vp", 0.25)])
def test_edm_loss_of_the_ideal_denoiser_matches_its_integral(sde_name, std, x64):
  """Gaussian data N(μ, v I) in d = 4 dimensions: the ideal denoiser's error is the MMSE d v σ²/(v + σ²),
  so the EDM loss is a 1-D integral over the log-normal σ; with v = σ_d² it is d at every σ (EDM's
  λ makes the effective target unit-variance).  Monte Carlo over 2¹⁶ draws, within 4 standard errors."""
  sde = SDES[sde_name]
  dim, n, chunks = 4, 1 << 16, 16
  data = toy.GaussianMixture(means=[[0.25, -0.5, 0.0, 0.75]], stds=[std])
  x0 = data.sample(jax.random.key(1), n).astype(jnp.float64)
  options = dict(weighting="edm", noise_distribution="lognormal", p_mean=-1.2, p_std=1.2, sigma_data=SIGMA_DATA,
                 reduce="sum")
  score, key = ideal_edm_score(sde, data), jax.random.key(2)
  loss = float(losses.dsm_loss(key, sde, score, x0, **options))
  # The same draws split into 16 micro-batches (``rows``, one compiled call): their means give the
  # standard error.
  size = n // chunks
  part = lambda i: chunks * losses.dsm_loss(
      key, sde, score, x0, rows=lambda a: jax.lax.dynamic_slice_in_dim(a, i * size, size), **options)
  parts = np.asarray(jax.jit(jax.vmap(part))(jnp.arange(chunks)))
  assert loss == pytest.approx(np.mean(parts), rel=1e-9)
  lo, hi = (float(sde.noise_level(jnp.float64(v))) for v in (sde.train_eps, sde.T))
  expected = _ideal_edm_loss(std**2, dim, -1.2, 1.2, lo, hi)
  if std == SIGMA_DATA:
    assert expected == pytest.approx(dim, rel=1e-6)
  error = np.std(parts, ddof=1) / math.sqrt(chunks)
  assert abs(loss - expected) < 4 * error, (loss, expected, error)
  assert error < 0.01 * expected  # the check has teeth: a 1 % slip is outside the band


def test_edm_weighting_is_lambda_sigma_times_sigma_squared():
  """w(t) = λ(σ̃) σ̃² = 1 + σ̃²/σ_d² of the noise error (losses' table); the velocity weighting is
  1/(1 − t)² under rectified flow."""
  for sde in (SDES["ve"], SDES["vp"]):
    t = jnp.array([0.01, 0.3, 0.9])
    sigma = np.asarray(sde.noise_level(t))
    lam = (sigma**2 + SIGMA_DATA**2) / (sigma * SIGMA_DATA) ** 2
    np.testing.assert_allclose(losses.dsm_weight(sde, t, weighting="edm", sigma_data=SIGMA_DATA), lam * sigma**2,
                               rtol=1e-5)
  rf = SDES["rectified_flow"]
  t = jnp.array([0.01, 0.3, 0.9])
  np.testing.assert_allclose(losses.dsm_weight(rf, t, weighting="velocity"), 1.0 / (1.0 - np.asarray(t)) ** 2, rtol=1e-5)


@pytest.mark.parametrize("sde_name", ["ve", "vp", "rectified_flow"])
def test_lognormal_and_logit_normal_times_have_their_laws(sde_name):
  """ln σ̃(t) of the drawn t is N(−1.2, 1.2²) (the truncation removes < 1e-4 of the mass here), and
  logit(t/T) is N(0, 1); every t lies in [train_eps, T]."""
  sde = SDES[sde_name]
  n = 1 << 16
  for time_sampling in ("uniform", "stratified"):
    t = losses.sample_times(jax.random.key(3), sde, n, time_sampling=time_sampling, noise_distribution="lognormal")
    log_sigma = np.log(np.asarray(sde.noise_level(t), np.float64))
    assert np.all((np.asarray(t) >= sde.train_eps) & (np.asarray(t) <= sde.T))
    assert abs(np.mean(log_sigma) + 1.2) < 0.02 and abs(np.std(log_sigma) - 1.2) < 0.02
    assert stats.kstest(log_sigma, stats.norm(-1.2, 1.2).cdf).statistic < 0.01
  t = np.asarray(losses.sample_times(jax.random.key(4), sde, n, noise_distribution="logit_normal"), np.float64)
  u = t / sde.T
  logit = np.log(u) - np.log1p(-u)
  assert abs(np.mean(logit)) < 0.02 and abs(np.std(logit) - 1.0) < 0.02


def test_noise_distribution_options_are_checked():
  sde = SDES["ve"]
  with pytest.raises(ValueError, match="noise_distribution"):
    losses.sample_times(jax.random.key(0), sde, 4, noise_distribution="log_normal")
  with pytest.raises(ValueError, match="importance_sampling"):
    losses.sample_times(jax.random.key(0), sde, 4, noise_distribution="lognormal", importance_sampling=True)
  with pytest.raises(ValueError, match="p_std"):
    losses.sample_times(jax.random.key(0), sde, 4, noise_distribution="lognormal", p_std=0.0)
  with pytest.raises(ValueError, match="sigma_data"):
    losses.dsm_weight(sde, jnp.ones(2), weighting="edm", sigma_data=-1.0)


# --- 3. Predictions <-> score ------------------------------------------------------------------------
def exact_velocity(sde, target, x, t):
  """m' E[x(0) | x] + s' E[ε | x] from the per-component posterior mean (rectified flow: ε̂ − x̂(0))."""
  x0 = target.posterior_mean(x, t, sde)
  m, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
  noise = (x - m * x0) / s
  return sde.mean_coeff_derivative(t)[:, None] * x0 + sde.marginal_std_derivative(t)[:, None] * noise


@pytest.mark.parametrize("sde_name", sorted(SDES))
def test_every_prediction_converts_to_the_exact_score_and_back(sde_name, x64):
  """On the mixture, the exact ε̂, x̂(0) and û (from the per-component posterior) give the exact score
  through ``to_score``, and ``from_score`` inverts it.  A sign slip in the velocity conversion (û = x̂(0) −
  ε̂ under rectified flow) fails here."""
  sde = SDES[sde_name]
  x, t = _points(sde)
  exact = MIXTURE.score(x, t, sde)
  x0 = MIXTURE.posterior_mean(x, t, sde)
  m, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
  predictions = {"score": exact, "data": x0, "noise": (x - m * x0) / s, "velocity": exact_velocity(sde, MIXTURE, x, t)}
  scale = float(jnp.max(jnp.abs(exact)))
  for name, value in predictions.items():
    np.testing.assert_allclose(score_fn_lib.to_score(sde, name, x, t, value), exact, rtol=1e-7, atol=1e-9 * scale,
                               err_msg=name)
    np.testing.assert_allclose(score_fn_lib.from_score(sde, name, x, t, exact), value, rtol=1e-7,
                               atol=1e-9 * max(1.0, float(jnp.max(jnp.abs(value)))), err_msg=name)
  if sde_name == "rectified_flow":
    noise = predictions["noise"]
    np.testing.assert_allclose(predictions["velocity"], noise - x0, rtol=1e-9, atol=1e-12)


def test_derivatives_of_the_marginal_coefficients():
  """m'(t) and s'(t) of every SDE against central differences of m and s (float64)."""
  with jax.enable_x64(True):
    t = jnp.array([0.05, 0.3, 0.7, 0.95], jnp.float64)
    h = 1e-6
    for name, sde in SDES.items():
      t_ = t * sde.T
      dm = (sde.mean_coeff(t_ + h) - sde.mean_coeff(t_ - h)) / (2 * h)
      ds = (sde.marginal_std(t_ + h) - sde.marginal_std(t_ - h)) / (2 * h)
      np.testing.assert_allclose(sde.mean_coeff_derivative(t_), dm, rtol=1e-6, err_msg=name)
      np.testing.assert_allclose(sde.marginal_std_derivative(t_), ds, rtol=1e-6, err_msg=name)


# --- 4. Rectified flow as an SDE -----------------------------------------------------------------------
def test_rectified_flow_coefficients_and_transitions():
  """m = 1 − t, s = t, f = −1/(1 − t), g² = 2t/(1 − t), σ̃ = t/(1 − t) and its inverse; the transition
  (a, q) between two times composes the marginals exactly.  1 − t ↔ t in the mean fails the first line."""
  with jax.enable_x64(True):
    sde = SDES["rectified_flow"]
    t = jnp.array([0.001, 0.2, 0.5, 0.9, 0.998], jnp.float64)
    np.testing.assert_allclose(sde.mean_coeff(t), 1.0 - t, rtol=1e-15)
    np.testing.assert_allclose(sde.marginal_std(t), t, rtol=1e-15)
    np.testing.assert_allclose(sde.drift_coeff(t), -1.0 / (1.0 - t), rtol=1e-14)
    np.testing.assert_allclose(sde.diffusion(t) ** 2, 2 * t / (1 - t), rtol=1e-14)
    np.testing.assert_allclose(sde.time_from_noise_level(sde.noise_level(t)), t, rtol=1e-12)
    t_from, t_to = t[:-1], t[1:]
    a, q = sde.transition_coeffs(t_from, t_to)
    np.testing.assert_allclose(a * sde.mean_coeff(t_from), sde.mean_coeff(t_to), rtol=1e-14)
    np.testing.assert_allclose(a**2 * sde.marginal_std(t_from) ** 2 + q, sde.marginal_std(t_to) ** 2, rtol=1e-12)
    # No cancellation for adjacent times: q ≈ g² dt.
    a, q = sde.transition_coeffs(jnp.float64(0.5), jnp.float64(0.5 + 1e-9))
    assert float(q) == pytest.approx(float(sde.diffusion(0.5) ** 2) * 1e-9, rel=1e-6)
    # d/dt is_potential = g²/s².
    h = 1e-6
    dp = (sde.is_potential(t[1:-1] + h) - sde.is_potential(t[1:-1] - h)) / (2 * h)
    np.testing.assert_allclose(dp, sde.diffusion(t[1:-1]) ** 2 / t[1:-1] ** 2, rtol=1e-6)
  with pytest.raises(ValueError, match="T must be < 1"):
    sde_lib.get_sde("rectified_flow", T=1.0)
  with pytest.raises(ValueError, match="schedule"):
    sde_lib.get_sde("rectified_flow", schedule="cosine")


def test_rectified_flow_marginals_match_monte_carlo_of_the_forward_sde():
  """Euler–Maruyama of dx = −x/(1 − t) dt + √(2t/(1 − t)) dw from x(0) = 1.5 on 1000 steps: at t = 0.5
  and 0.9 the mean and std of 20 000 paths are (1 − t)·1.5 and t (a mean slipped to t·1.5 is 0.6 away)."""
  sde = SDES["rectified_flow"]
  n, steps, t_end = 20_000, 1000, 0.9
  dt = t_end / steps
  x = jnp.full((n,), 1.5)

  def body(x, i):
    t = i * dt
    z = jax.random.normal(jax.random.fold_in(jax.random.key(5), i), (n,))
    return x + sde.drift_coeff(t) * x * dt + sde.diffusion(t) * math.sqrt(dt) * z, x

  x_end, path = jax.lax.scan(body, x, jnp.arange(steps))
  for t_check, values in ((0.5, path[steps * 5 // 9]), (0.9, x_end)):
    # 4 standard errors of the mean, plus 1 % for the Euler–Maruyama bias.
    tol = 4 * t_check / math.sqrt(n) + 0.01 * 1.5 * (1 - t_check)
    assert abs(float(jnp.mean(values)) - 1.5 * (1 - t_check)) < tol
    assert float(jnp.std(values)) == pytest.approx(t_check, rel=0.03)


def _velocity_score(sde):
  """The mixture's exact velocity as a network, read through the "velocity" parametrization."""
  apply_fn = lambda params, x, cond: exact_velocity(sde, TARGET, x, cond)
  return score_fn_lib.get_score_fn(sde, apply_fn, None, parametrization="velocity", conditioning="time")


RF_VELOCITY = _velocity_score(sde_lib.RectifiedFlowSDE())


@pytest.mark.parametrize("method,opts", [
    ("ode", dict(solver="tsit5")),
    ("ode", dict(solver="heun", num_steps=50)),
    ("ode", dict(solver="euler", num_steps=200, shift=3.0)),
    ("edm", dict(num_steps=18, sigma_max=80.0)),
    ("pc", dict(predictor="reverse_diffusion", corrector="none", num_steps=500)),
], ids=["ode-tsit5", "ode-heun", "euler-shift3", "edm-heun", "reverse-sde"])
def test_rectified_flow_with_the_exact_velocity_reproduces_the_mixture(method, opts):
  sde = sde_lib.RectifiedFlowSDE()
  x, _ = sampling.sample(jax.random.key(11), sde, RF_VELOCITY, (4000, 2), method=method, **opts)
  assert_reproduces(np.asarray(x))


def test_shifted_grid_keeps_its_ends_and_moves_steps_to_high_noise():
  from score_jax.sampling import common  # pylint: disable=g-import-not-at-top
  plain = np.asarray(common.time_grid(0.999, 1e-3, 10))
  shifted = np.asarray(common.time_grid(0.999, 1e-3, 10, shift=3.0))
  assert shifted[0] == pytest.approx(0.999) and shifted[-1] == pytest.approx(1e-3)
  r = (plain - 1e-3) / (0.999 - 1e-3)
  np.testing.assert_allclose((shifted - 1e-3) / (0.999 - 1e-3), 3 * r / (1 + 2 * r), rtol=1e-6, atol=1e-7)
  assert np.all(shifted[1:-1] > plain[1:-1])
  with pytest.raises(ValueError, match="shift"):
    sampling.sample(jax.random.key(0), sde_lib.RectifiedFlowSDE(), RF_VELOCITY, (4, 2), method="ode", shift=2.0)


def test_one_euler_step_of_the_flow_is_its_formula():
  """solver="euler", one step, no denoising: x(eps) = x(T) + (eps − T)·[f x − ½ g² score](x(T), T), with
  x(T) the prior draw of sample i (``fold_in(key, i)``, step 0); with a velocity network that is
  x(T) + (eps − T)·û."""
  from score_jax.sampling import common  # pylint: disable=g-import-not-at-top
  sde = sde_lib.RectifiedFlowSDE()
  velocity = lambda params, x, t: 0.5 * x + jnp.cos(t)[:, None]
  score = score_fn_lib.get_score_fn(sde, velocity, None, parametrization="velocity")
  key = jax.random.key(4)
  x, nfe = sampling.sample(key, sde, score, (8, 2), method="ode", solver="euler", num_steps=1, denoise=False)
  x_T = sde.prior_std * common.normal(common.per_sample_keys(key, 8), (8, 2), 0)
  expected = x_T + (sde.eps - sde.T) * (0.5 * x_T + jnp.cos(sde.T))
  np.testing.assert_allclose(x, expected, rtol=2e-4, atol=2e-4)
  assert int(nfe) == 1


# --- 5. The recipe configs run like every other config --------------------------------------------------
@pytest.mark.parametrize("path,evaluate", [("configs/edm/digits.py", False), ("configs/rf/digits.py", True)])
def test_recipe_smoke_configs_train_resume_sample_and_eval(path, evaluate, tmp_path):
  """4 steps, resumed to 6, then --mode=sample and, for rectified flow (a new SDE through the
  likelihood ODE), --mode=eval: held-out loss and bits/dim (the sample metrics' path is
  test_evaluate's, the same for every config; EDM's eval differs from VE's only in its score_fn)."""
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  from score_jax.modes import eval as eval_mode  # pylint: disable=g-import-not-at-top
  from score_jax.modes import sample as sample_mode  # pylint: disable=g-import-not-at-top
  from score_jax.modes import train  # pylint: disable=g-import-not-at-top
  root = pathlib.Path(__file__).resolve().parents[1]
  spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3], root / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  config.eval.update(dict(num_samples=0, bpd_num_examples=4, num_loss_batches=1, reference=False))
  workdir = str(tmp_path / "run")
  first = train.run(config, workdir)
  assert int(first.state.step) == 4 and np.isfinite(first.metrics["final_loss"])
  config.training.num_steps = 6
  second = train.run(config, workdir)
  assert second.start_step == 4 and int(second.state.step) == 6
  out = sample_mode.run(config, workdir)
  with np.load(os.path.join(out.folder, "samples.npz")) as data:
    assert data["samples"].shape == (8, 8, 8, 1) and np.all(np.isfinite(data["samples"]))
  if not evaluate:
    return
  records = eval_mode.run(config, workdir).records
  assert [r["step"] for r in records] == [4, 6]
  for r in records:
    assert np.isfinite(r["loss"]) and 0.0 < r["bpd"] < 20.0, r


@pytest.mark.parametrize("path,field,value,message", [
    ("configs/edm/digits.py", "model.sigma_data", -1.0, r"^config\.model\.sigma_data: must be a number > 0"),
    ("configs/edm/digits.py", "training.loss_options.sigma_data", 0.3,
     r"^config\.training\.loss_options\.sigma_data: is taken from config\.model\.sigma_data"),
    ("configs/edm/digits.py", "training.loss_options.noise_distribution", "normal",
     r"^config\.training\.loss_options.*noise_distribution='normal'"),
    ("configs/rf/digits.py", "sde.rectified_flow.T", 1.0, r"^config\.sde.*T must be < 1"),
])
def test_bad_recipe_fields_are_one_line_naming_the_field(path, field, value, message):
  import importlib.util  # pylint: disable=g-import-not-at-top
  import pathlib  # pylint: disable=g-import-not-at-top
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  spec = importlib.util.spec_from_file_location(path.replace("/", "_")[:-3],
                                                pathlib.Path(__file__).resolve().parents[1] / path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config("smoke")
  *parents, name = field.split(".")
  section = config
  for p in parents:
    section = section[p]
  section[name] = value
  with pytest.raises(experiment.ConfigError, match=message) as info:
    experiment.build(config)
  assert "\n" not in str(info.value)
