"""The EDM sampler (Karras et al. 2022, Algorithm 2) against exact Gaussian-mixture scores."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.data import toy
from score_jax.sampling import common, edm

from mixture_bar import SCORES, SDES, assert_rejected_before_tracing, assert_reproduces

# Heun at 25 steps (49 NFE) leaves a bias of
# 0.03–0.04 in the mode means and 2–4 % in the stds (measured with 40 000 samples, VP and
# sub-VP); 20 000 samples keep the sampling error of the smallest mode (2 000 samples) small.
N = 20000
# Churn that works here: γ = S_churn/N = 0.1 on σ ∈ [0.05, 50], S_noise = 1.  With the exact
# score churn only adds error at a fixed NFE (measured over 4 seeds at 25 steps, worst mode
# std error: Heun 2.5–5.5 %, γ = 0.1 4.5–7.5 %, γ = 0.2 6.5–9.5 %; EDM's image setting S_churn = 40,
# S_noise = 1.003 gives γ = √2 − 1 and 6–10 %): it pays off with an imperfect network.
CHURN = dict(s_churn=2.5, s_min=0.05, s_max=50.0, s_noise=1.0)


@pytest.mark.parametrize("churn", [False, True], ids=["heun", "churn"])
@pytest.mark.parametrize("sde_name", list(SDES))
def test_edm_reproduces_mixture_in_49_nfe(sde_name, churn):
  opts = CHURN if churn else {}
  x, nfe = sampling.sample(jax.random.PRNGKey(0), SDES[sde_name], SCORES[sde_name], (N, 2), method="edm",
                           num_steps=25, **opts)
  assert nfe == 49
  assert_reproduces(x)


def test_edm_reproduces_gaussian_mean_and_covariance():
  """Mean and covariance of a 4-D Gaussian at 50 steps (99 NFE).  For a Gaussian target the
  sampler is linear, and Heun's error is a variance inflation that falls as 1/N²: for a
  std of 0.3 under VP it is 15 % at 18 steps, 7 % at 25 and 1.5 % at 50."""
  mean = np.array([1.0, -2.0, 0.5, 3.0])
  std = np.array([0.5, 1.0, 2.0, 0.3])
  target = toy.GaussianMixture(means=[mean], stds=[std])
  n = 20000
  # VE's prior N(0, σ_max²) ignores the data mean, which the probability-flow map carries
  # into the output as a shrinkage μ·std/σ_max (5 % of μ at σ_max = 20): take σ_max = 100.
  for sde in (sde_lib.VESDE(sigma_min=0.01, sigma_max=100.0), SDES["vp"], SDES["subvp"]):
    x, _ = sampling.sample(jax.random.PRNGKey(1), sde, target.score_fn(sde), (n, 4), method="edm", num_steps=50)
    x = np.asarray(x, np.float64)
    np.testing.assert_allclose(x.mean(0), mean, atol=5 * std.max() / math.sqrt(n))
    cov = np.cov(x, rowvar=False)
    np.testing.assert_allclose(np.diag(cov), std**2, rtol=0.06)
    corr = cov / np.outer(np.sqrt(np.diag(cov)), np.sqrt(np.diag(cov)))
    assert np.abs(corr - np.eye(4)).max() < 0.05, corr


def test_sigma_schedule_is_eq5():
  sigmas = edm.edm_sigmas(5, sigma_min=0.002, sigma_max=80.0, rho=7.0)
  assert sigmas.shape == (6,) and sigmas[-1] == 0.0
  np.testing.assert_allclose(sigmas[[0, 4]], [80.0, 0.002], rtol=1e-12)
  # Equally spaced in σ^{1/ρ}.
  np.testing.assert_allclose(np.diff(sigmas[:5] ** (1 / 7)), (0.002 ** (1 / 7) - 80.0 ** (1 / 7)) / 4, rtol=1e-10)
  np.testing.assert_allclose(edm.edm_sigmas(1, sigma_min=0.1, sigma_max=3.0, rho=7.0), [3.0, 0.0], rtol=1e-12)
  gammas = edm.edm_gammas(sigmas, s_churn=2.0, s_min=0.01, s_max=10.0)  # σ ≈ 80, 17, 2.5, 0.17, 0.002
  np.testing.assert_allclose(gammas, [0.0, 0.0, 0.4, 0.4, 0.0])
  assert edm.edm_gammas(sigmas, s_churn=100.0, s_min=0.0, s_max=math.inf).max() == pytest.approx(math.sqrt(2) - 1)


def test_no_churn_is_deterministic_given_initial_noise():
  """With S_churn = 0 the output is a function of y_0 alone: another churn-noise stream
  changes nothing; with S_churn > 0 it changes the samples."""
  sde, score = SDES["vp"], SCORES["vp"]
  shape = (64, 2)
  y0 = 150.0 * jax.random.normal(jax.random.PRNGKey(0), shape)
  sigmas = edm.edm_sigmas(10, sigma_min=0.01, sigma_max=150.0, rho=7.0)
  denoiser = edm.make_denoiser(sde, score)
  keys_a = common.per_sample_keys(jax.random.PRNGKey(1), shape[0])
  keys_b = common.per_sample_keys(jax.random.PRNGKey(2), shape[0])

  def solve(keys, s_churn):
    gammas = edm.edm_gammas(sigmas, s_churn=s_churn, s_min=0.0, s_max=math.inf)
    return np.asarray(jax.jit(lambda y, k: edm.edm_solve(denoiser, sde, y, k, sigmas=sigmas, gammas=gammas,
                                                         s_noise=1.0))(y0, keys))

  np.testing.assert_array_equal(solve(keys_a, 0.0), solve(keys_b, 0.0))
  assert np.abs(solve(keys_a, 5.0) - solve(keys_b, 5.0)).max() > 1e-2
  # Through the entry point: the same key gives the same samples.
  a, _ = sampling.sample(jax.random.PRNGKey(3), sde, score, shape, method="edm", num_steps=10)
  b, _ = sampling.sample(jax.random.PRNGKey(3), sde, score, shape, method="edm", num_steps=10)
  np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("num_steps,opts", [(1, {}), (2, {}), (7, {}), (7, dict(s_churn=100.0))])
def test_nfe_counts_every_evaluation_within_eps_and_T(num_steps, opts):
  """NFE = 2N − 1 equals the score evaluations executed, all at times in [eps, T] (churn
  with S_max = ∞ included: σ̂ is capped at σ_max)."""
  sde, exact = SDES["vp"], SCORES["vp"]
  times = []

  def counting_score(x, t):
    jax.debug.callback(lambda t: times.append(np.asarray(t)), t)
    return exact(x, t)

  x, nfe = sampling.sample(jax.random.PRNGKey(0), sde, counting_score, (16, 2), method="edm", num_steps=num_steps,
                           **opts)
  jax.block_until_ready(x)
  assert nfe == 2 * num_steps - 1 == len(times)
  t = np.concatenate(times)
  assert t.min() >= sde.eps * (1 - 1e-6) and t.max() <= sde.T * (1 + 1e-6)


def test_sample_does_not_depend_on_batch_size():
  sde, score = SDES["ve"], SCORES["ve"]
  key = jax.random.PRNGKey(7)
  opts = dict(method="edm", num_steps=8, **CHURN)
  small, _ = sampling.sample(key, sde, score, (8, 2), **opts)
  large, _ = sampling.sample(key, sde, score, (32, 2), **opts)
  np.testing.assert_allclose(small, large[:8], rtol=1e-5, atol=1e-5)
  other, _ = sampling.sample(jax.random.PRNGKey(8), sde, score, (8, 2), **opts)
  assert not np.allclose(small, other)


def test_initial_noise_is_the_sde_prior():
  """y_0 = x(T)/m(T) for x(T) drawn from the prior; with N = 1 the output is D(y_0; σ̃(T))."""
  sde = SDES["vp"]
  target = toy.GaussianMixture(means=[[0.5, -0.5]], stds=[0.7])
  x, _ = sampling.sample(jax.random.PRNGKey(4), sde, target.score_fn(sde), (4, 2), method="edm", num_steps=1)
  keys = common.per_sample_keys(jax.random.PRNGKey(4), 4)
  x_T = sde.prior_std * common.normal(keys, (4, 2), 0)
  t = jnp.full((4,), sde.T)
  want = sde.tweedie_denoise(x_T, t, target.score(x_T, t, sde))
  # D(y; 152) = y − (1 − 1/m)·y + …: float32 cancels |y| ≈ 150 down to about 1e-5.
  np.testing.assert_allclose(x, want, atol=5e-5)


def test_start_below_T_keeps_the_prior_data_variance():
  """VP's prior treats the data as N(0, I) in y, so from σ_0 = sigma_max < σ̃(T) the start
  y_0 ~ N(0, (σ_0² + 1) I) is the exact marginal of a standard normal target: the output
  is N(0, I) (starting from N(0, σ_0² I) would give std σ_0/√(1 + σ_0²) ≈ 0.45)."""
  sde = SDES["vp"]
  target = toy.GaussianMixture(means=[[0.0, 0.0]], stds=[1.0])
  x, _ = sampling.sample(jax.random.PRNGKey(5), sde, target.score_fn(sde), (20000, 2), method="edm",
                         num_steps=10, sigma_max=0.5)
  np.testing.assert_allclose(np.std(np.asarray(x), 0), [1.0, 1.0], rtol=0.03)


BAD = [
    (dict(rho=0.0), "rho"),
    (dict(rho=-7.0), "rho"),
    (dict(num_steps=0), "num_steps"),
    (dict(num_steps=2.5), "num_steps"),
    (dict(s_churn=-1.0), "s_churn"),
    (dict(s_noise=0.0), "s_noise"),
    (dict(s_min=2.0, s_max=1.0), "s_min"),
    (dict(sigma_min=5.0, sigma_max=1.0), "sigma_min"),
    (dict(sigma_min=0.0), "sigma_min"),
    (dict(sigma_min=1e-4), "sigma_min"),
    (dict(sigma_max=100.0), "sigma_max"),
    (dict(nope=1), "nope"),
]


@pytest.mark.parametrize("kwargs,field", BAD)
def test_bad_options_raise_before_tracing(kwargs, field):
  assert_rejected_before_tracing(SDES["ve"], "edm", kwargs, field)