"""Classifier guidance, classifier-free guidance and posterior guidance (score_jax.guidance),
against exact scores and the exact noisy classifier of a Gaussian mixture (data.toy)."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import guidance, sampling
from score_jax import sde as sde_lib
from score_jax.data import toy
from score_jax.sampling import common

SDES = {
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0),
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0),
}
# Three modes, unequal weights and widths; the requested one (1) is not the heaviest.
MIX = toy.GaussianMixture(means=[[-3.0, -3.0], [3.0, -2.0], [0.0, 3.0]], stds=[0.4, 0.5, 0.6],
                          weights=[0.3, 0.2, 0.5])
REQUESTED = 1


# --- λ(σ) of every strategy, and the classifier's σ clamp ---------------------------------

def test_constant_and_truncated_lambda():
  sde = SDES["ve"]
  sig = jnp.array([0.5, 1.0, 30.0, 100.0, 150.0])
  np.testing.assert_array_equal(guidance.Guidance("constant", scale=500.0).lambda_fn(sde)(sig), 500.0)
  # Zone 1 <= σ <= 100, both ends inside (the report's printed test compares with
  # σ_limit_pred_max twice, which would reject every σ).
  lam = guidance.Guidance("truncated", scale=7.0, sigma_lo=1.0, sigma_hi=100.0).lambda_fn(sde)(sig)
  np.testing.assert_array_equal(lam, [0.0, 7.0, 7.0, 7.0, 0.0])


def test_linear_lambda_ends_middle_and_clipping():
  sde = SDES["ve"]
  g = guidance.Guidance("linear", scale_start=500.0, scale_end=400.0, sigma_min=1.0, sigma_max=11.0)
  lam = g.lambda_fn(sde)(jnp.array([0.5, 1.0, 6.0, 8.5, 11.0, 20.0]))
  np.testing.assert_allclose(lam, [400.0, 400.0, 450.0, 475.0, 500.0, 500.0], rtol=1e-6)
  # Defaults: the SDE's σ̃(eps) and σ̃(T).
  lo, hi = float(sde.noise_level(jnp.float32(sde.eps))), float(sde.noise_level(jnp.float32(sde.T)))
  lam = guidance.Guidance("linear").lambda_fn(sde)(jnp.array([lo, hi, 0.5 * (lo + hi)]))
  np.testing.assert_allclose(lam, [400.0, 500.0, 450.0], rtol=1e-5)


def test_norm_ratio_scale_sets_the_ratio_per_example():
  score = jnp.array([[3.0, 4.0], [0.0, 1.0], [1.0, 0.0]])
  grad = jnp.array([[0.0, 0.01], [2.0, 0.0], [0.0, 0.0]])
  lam = guidance.norm_ratio_scale(score, grad, 0.5)
  np.testing.assert_allclose(lam, [250.0, 0.25, 0.0], rtol=1e-6)
  np.testing.assert_allclose(guidance.norm_ratios(score, grad), [0.002, 2.0, 0.0], rtol=1e-6)


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_classifier_sigma_clamp(name):
  """With sigma_classifier_max the classifier sees min(σ, σ_c) on the input rescaled by m(t_c)/m(t)."""
  sde = SDES[name]

  def log_prob_fn(x, t):  # logits [σ̃(t)·Σx, 0]: the gradient of log p(0 | x) reveals σ̃ and the input scale
    return jax.nn.log_softmax(jnp.stack([sde.noise_level(t) * jnp.sum(x, axis=1), jnp.zeros(x.shape[0])], axis=1))

  t = jnp.array([0.2, 0.6, 0.95])
  x = jnp.ones((3, 2))
  sigma = sde.noise_level(t)
  cap = float(sigma[1])
  grad = guidance.classifier_grad(log_prob_fn, jnp.zeros(3, jnp.int32), sde, x, t, sigma_classifier_max=cap)
  t_c = sde.time_from_noise_level(jnp.minimum(sigma, cap))
  slope = jnp.minimum(sigma, cap) * sde.mean_coeff(t_c) / sde.mean_coeff(t)  # d logit / d x_i
  # ∇_x log sigmoid(a) = (1 − sigmoid(a)) ∇a, a = slope·Σx = 2·slope.
  np.testing.assert_allclose(grad[:, 0], slope * jax.nn.sigmoid(-2.0 * slope), rtol=2e-4)
  np.testing.assert_allclose(grad[:1, 0], sigma[:1] * jax.nn.sigmoid(-2.0 * sigma[:1]), rtol=1e-5)  # below the cap
  assert float(slope[2]) < float(sigma[2]) - 1.0  # above it: clamped


def test_bad_guidance_fields_name_the_field():
  with pytest.raises(ValueError, match="strategy"):
    guidance.Guidance("cosine")
  with pytest.raises(ValueError, match="sigma_hi"):
    guidance.Guidance("truncated", sigma_lo=5.0, sigma_hi=1.0)
  with pytest.raises(ValueError, match="ratio"):
    guidance.Guidance("norm_ratio", ratio=-1.0)
  with pytest.raises(ValueError, match="sigma_classifier_max"):
    guidance.Guidance("constant", sigma_classifier_max=0.0)
  with pytest.raises(ValueError, match="w="):
    guidance.classifier_free_guidance(lambda x, t, l: x, jnp.zeros(2, jnp.int32), w=-1.0, null_label=3)


# --- the exact noisy classifier and one guided step ----------------------------------------

@pytest.mark.parametrize("name", list(SDES))
def test_exact_classifier_is_bayes_rule(name):
  """∇log p_t(x | k) = ∇log p_t(x) + ∇log p_t(k | x) and Σ_k p_t(k | x) = 1, in float64."""
  sde = SDES[name]
  with jax.enable_x64(True):
    x = jax.random.normal(jax.random.PRNGKey(0), (6, 2), jnp.float64) * 3.0
    t = jnp.linspace(0.05, 0.9, 6, dtype=jnp.float64)
    logp = MIX.class_log_prob(x, t, sde)
    np.testing.assert_allclose(jnp.sum(jnp.exp(logp), axis=1), 1.0, rtol=1e-12)
    for k in range(3):
      labels = jnp.full((6,), k)
      grad = guidance.classifier_grad(MIX.classifier_fn(sde), labels, sde, x, t)
      np.testing.assert_allclose(MIX.score(x, t, sde) + grad, MIX.conditional_score(x, t, labels, sde),
                                 rtol=1e-10, atol=1e-10)
    # The null label K is the unconditional score.
    np.testing.assert_allclose(MIX.conditional_score(x, t, jnp.full((6,), 3), sde), MIX.score(x, t, sde), rtol=1e-12)


def test_guided_score_single_step_formulas():
  sde = SDES["vp"]
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 2)) * 2.0
  t = jnp.array([0.1, 0.3, 0.5, 0.9])
  labels = jnp.array([0, 1, 2, 1])
  score, clf = MIX.score_fn(sde), MIX.classifier_fn(sde)
  grad = guidance.classifier_grad(clf, labels, sde, x, t)
  sigma = sde.noise_level(t)
  for g, lam in [(guidance.Guidance("constant", scale=3.0), jnp.full(4, 3.0)),
                 (guidance.Guidance("truncated", scale=2.0, sigma_lo=0.2, sigma_hi=1.0),
                  jnp.where((sigma >= 0.2) & (sigma <= 1.0), 2.0, 0.0)),
                 (guidance.Guidance("norm_ratio", ratio=0.7), guidance.norm_ratio_scale(score(x, t), grad, 0.7))]:
    out = guidance.classifier_guidance(score, clf, labels, sde=sde, guidance=g)(x, t)
    np.testing.assert_allclose(out, score(x, t) + lam[:, None] * grad, rtol=1e-5, atol=1e-6)
  out = guidance.classifier_guidance(score, clf, labels, sde=sde, guidance=guidance.Guidance("norm_ratio", ratio=0.7))(x, t)
  np.testing.assert_allclose(guidance.norm_ratios(score(x, t), out - score(x, t)), 0.7, rtol=1e-5)


def test_classifier_free_guidance_one_batched_call():
  sde = SDES["ve"]
  calls = []

  def labeled(x, t, l):
    calls.append(x.shape[0])
    return MIX.conditional_score(x, t, l, sde)

  x = jax.random.normal(jax.random.PRNGKey(2), (5, 2))
  t = jnp.full((5,), 0.3)
  labels = jnp.array([0, 1, 2, 0, 1])
  out = guidance.classifier_free_guidance(labeled, labels, w=2.0, null_label=3)(x, t)
  assert calls == [10]  # one network call on the doubled batch
  cond = MIX.conditional_score(x, t, labels, sde)
  np.testing.assert_allclose(out, 3.0 * cond - 2.0 * MIX.score(x, t, sde), rtol=1e-5, atol=1e-5)


def test_norm_ratio_trajectory_records_the_ratio_against_sigma():
  sde = SDES["ve"]
  labels = jnp.full((8,), REQUESTED)
  key = jax.random.PRNGKey(3)
  score, clf = MIX.score_fn(sde), MIX.classifier_fn(sde)
  sigmas, ratios = guidance.norm_ratio_trajectory(key, sde, score, clf, labels, (8, 2), num_steps=20)
  assert sigmas.shape == (20,) and ratios.shape == (20, 8)
  np.testing.assert_allclose(sigmas[0], sde.noise_level(jnp.float32(sde.T)), rtol=1e-6)
  assert np.all(np.diff(np.asarray(sigmas)) < 0) and np.all(np.isfinite(ratios))
  # The first entry is the ratio at the prior sample (drawn as every sampler draws it).
  x_T = sde.prior_std * common.normal(common.per_sample_keys(key, 8), (8, 2), 0)
  t_T = jnp.full((8,), sde.T)
  np.testing.assert_allclose(ratios[0], guidance.norm_ratios(score(x_T, t_T), guidance.classifier_grad(
      clf, labels, sde, x_T, t_T)), rtol=1e-5)
  # Unguided samples that end in another mode see a classifier gradient that dwarfs the score.
  assert float(jnp.max(ratios[-1])) > 10.0 * float(jnp.max(ratios[0]))


# --- What it must show 1: guided sampling reproduces the requested component ---------------

# EDM with churn above σ = 0.5: under VE (σ_max = 20) the prior N(0, σ_max²) misses p_T's mean
# by |μ| ≈ 3.6, which the deterministic sampler would carry to the output (a 0.08 shift).
EDM = dict(method="edm", num_steps=40, s_churn=40.0, s_min=0.5)


def _sample(sde, score_fn, n=2000, key=0):
  x, _ = sampling.sample(jax.random.PRNGKey(key), sde, score_fn, (n, 2), **EDM)
  return np.asarray(x)


def _assert_component(x, share_min):
  comp = MIX.component(REQUESTED)
  labels = np.asarray(MIX.assign(jnp.asarray(x)))
  share = np.mean(labels == REQUESTED)
  assert share >= share_min, share
  sel = x[labels == REQUESTED]
  np.testing.assert_allclose(sel.mean(axis=0), comp.means[0], atol=0.06)
  np.testing.assert_allclose(sel.std(axis=0, ddof=1), comp.stds[0], rtol=0.10)


@pytest.mark.parametrize("name", list(SDES))
def test_guided_sampling_reproduces_the_requested_component(name):
  """λ = 1 with the exact classifier and w = 0 are the conditional score: the requested
  component (share >= 97 %, mean within 0.06, std within 10 %); λ = 4 puts >= 99 % there."""
  sde = SDES[name]
  labels = jnp.full((2000,), REQUESTED)
  score, clf = MIX.score_fn(sde), MIX.classifier_fn(sde)
  _assert_component(_sample(sde, guidance.classifier_guidance(score, clf, labels, sde=sde)), 0.97)
  cfg = guidance.classifier_free_guidance(lambda x, t, l: MIX.conditional_score(x, t, l, sde), labels, w=0.0,
                                          null_label=3)
  _assert_component(_sample(sde, cfg, key=1), 0.97)
  strong = guidance.classifier_guidance(score, clf, labels, sde=sde, guidance=guidance.Guidance("constant", scale=4.0))
  labels4 = np.asarray(MIX.assign(jnp.asarray(_sample(sde, strong, key=2))))
  assert np.mean(labels4 == REQUESTED) >= 0.99


# --- posterior guidance, one step against its formula -----------------------------------------

@pytest.mark.parametrize("name", ["ve", "subvp"])
def test_posterior_guidance_single_step(name):
  """On a Gaussian the denoiser is affine, x̂_0 = (x + s² s(x))/m with ∂x̂_0/∂x = (I − s² C⁻¹)/m,
  C = m²Σ + s²I.  Isotropic: s + Jᵀ A(y − A x̂_0)/r², r² = σ̃²/(1 + σ̃²).  Tweedie: the exact
  conditional score −K⁻¹(x − m[y_A; μ_B|A]), K = m² diag(0, Σ_B|A) + s² I.  (Tolerance 1e-4: the
  target's score uses its float32 eigendecomposition, the reference the float32 covariance.)"""
  sde = SDES[name]
  with jax.enable_x64(True):
    g = toy.correlated_gaussian(dim=4, condition=10.0, seed=2)
    mu, cov = np.asarray(g.mean, np.float64), np.asarray(g.cov, np.float64)
    known = np.array([True, False, True, False])
    x = np.random.default_rng(3).normal(size=(3, 4))
    y = np.random.default_rng(4).normal(size=(3, 4))
    t = np.array([0.2, 0.5, 0.8])
    mask = jnp.asarray(known, jnp.float64)
    score = g.score_fn(sde)
    iso = guidance.posterior_guidance(score, sde, jnp.asarray(y), mask)(jnp.asarray(x), jnp.asarray(t))
    exact = guidance.posterior_guidance(score, sde, jnp.asarray(y), mask, covariance="tweedie")(
        jnp.asarray(x), jnp.asarray(t))
    for b in range(3):
      m, s = float(sde.mean_coeff(jnp.float64(t[b]))), float(sde.marginal_std(jnp.float64(t[b])))
      c_inv = np.linalg.inv(m**2 * cov + s**2 * np.eye(4))
      sc = -c_inv @ (x[b] - m * mu)
      x0 = (x[b] + s**2 * sc) / m
      jac = (np.eye(4) - s**2 * c_inv) / m
      r2 = (s / m) ** 2 / (1.0 + (s / m) ** 2)
      np.testing.assert_allclose(iso[b], sc + jac.T @ (known * (y[b] - x0)) / r2, rtol=1e-4, atol=1e-4)
      cond = g.condition(known, y[b])
      mean_t = np.zeros(4)
      mean_t[known], mean_t[~known] = m * y[b][known], m * np.asarray(cond.mean, np.float64)
      k = s**2 * np.eye(4)
      k[np.ix_(~known, ~known)] += m**2 * np.asarray(cond.cov, np.float64)
      np.testing.assert_allclose(exact[b], -np.linalg.solve(k, x[b] - mean_t), rtol=1e-4, atol=1e-4)


# --- a limited guidance interval and autoguidance (Kynkäänniemi et al. 2024; Karras et al. 2024) ---
def test_interval_is_open_below_closed_above_and_lambda_is_exactly_zero_outside():
  sde = SDES["ve"]
  sigma = jnp.array([0.1, 0.5, 0.50001, 1.0, 2.0, 2.00001, 30.0])
  np.testing.assert_array_equal(guidance.in_interval(sigma, (0.5, 2.0)), [0, 0, 1, 1, 1, 0, 0])
  np.testing.assert_array_equal(guidance.in_interval(sigma, None), 1.0)
  x = jax.random.normal(jax.random.PRNGKey(5), (6, 2)) * 2.0
  t = sde.time_from_noise_level(jnp.array([0.2, 0.4, 0.8, 1.5, 3.0, 8.0]))
  inside = np.asarray(guidance.in_interval(sde.noise_level(t), (0.5, 2.0)), bool)
  assert inside.tolist() == [False, False, True, True, False, False]
  labels = jnp.array([0, 1, 2, 0, 1, 2])
  score, clf = MIX.score_fn(sde), MIX.classifier_fn(sde)
  for strategy in (guidance.Guidance("constant", scale=4.0, sigma_interval=(0.5, 2.0)),
                   guidance.Guidance("norm_ratio", ratio=0.5, sigma_interval=(0.5, 2.0))):
    out = guidance.classifier_guidance(score, clf, labels, sde=sde, guidance=strategy)(x, t)
    np.testing.assert_array_equal(out[~inside], score(x, t)[~inside])  # λ = 0 exactly
    assert np.all(np.abs(out[inside] - score(x, t)[inside]) > 1e-6)
  labeled = lambda x, t, l: MIX.conditional_score(x, t, l, sde)
  cfg = guidance.classifier_free_guidance(labeled, labels, w=2.0, null_label=3, sde=sde, sigma_interval=(0.5, 2.0))(x, t)
  cond, uncond = MIX.conditional_score(x, t, labels, sde), MIX.score(x, t, sde)
  np.testing.assert_array_equal(cfg[~inside], cond[~inside])
  np.testing.assert_allclose(cfg[inside], (3.0 * cond - 2.0 * uncond)[inside], rtol=1e-5, atol=1e-5)
  for bad in ((2.0, 0.5), (-1.0, 1.0), (1.0,)):
    with pytest.raises(ValueError, match="sigma_interval"):
      guidance.check_interval(bad)
  with pytest.raises(ValueError, match="needs the sde"):
    guidance.classifier_free_guidance(labeled, labels, w=1.0, null_label=3, sigma_interval=(0.5, 2.0))


# Two classes on a line: class 0 has modes at −2 and +2 (weight ½ each), class 1 one mode at +6.
LINE = toy.GaussianMixture(means=[[-2.0], [2.0], [6.0]], stds=[0.3] * 3, weights=[0.25, 0.25, 0.5])
CLASS0 = toy.GaussianMixture(means=[[-2.0], [2.0]], stds=[0.3] * 2, weights=[0.5, 0.5])


def _cfg_mode_shares(w, sigma_interval, n=4000):
  sde = SDES["ve"]

  def labeled(x, t, l):
    return jnp.where((l == 0)[:, None], CLASS0.score(x, t, sde), LINE.score(x, t, sde))

  score = guidance.classifier_free_guidance(labeled, jnp.zeros((n,), jnp.int32), w=w, null_label=1, sde=sde,
                                            sigma_interval=sigma_interval)
  x, _ = sampling.sample(jax.random.key(0), sde, score, (n, 1), "edm", num_steps=64)
  x = np.asarray(x)[:, 0]
  return np.mean(x < 0), np.mean((x > 0) & (x < 4)), np.mean(x > 4)


def test_cfg_everywhere_drops_a_mode_and_a_limited_interval_keeps_both():
  # At high noise p(class 0 | x) grows towards the left, so w = 3 there pushes every sample to −2.
  left, right, other = _cfg_mode_shares(3.0, None)
  assert right < 0.05 and other == 0.0, (left, right)
  # Guidance only for σ ≤ 1, where the class-0 modes are apart: both keep their weight ½.
  left, right, other = _cfg_mode_shares(3.0, (0.0, 1.0))
  assert abs(left - 0.5) <= 0.05 and abs(right - 0.5) <= 0.05 and other < 0.005, (left, right, other)


def _gaussian_score(sde, var):
  """The exact score of N(0, var) under ``sde``: −x / (m(t)² var + s(t)²)."""
  return lambda x, t: -x / (sde_lib.bcast(sde.mean_coeff(t), x) ** 2 * var + sde_lib.bcast(sde.marginal_std(t), x) ** 2)


def autoguided_variance(w: float, n: int = 40_000) -> tuple[float, float]:
  """(sampled variance, closed form) of the probability-flow ODE following the autoguided score
  of a good N(0, 1) and a bad N(0, 1.5²) under VE.  The guided score is −a(v) x with
  a(v) = (1 + w)/(1 + v) − w/(1.5² + v), v = s(t)², and dx/dv = ½ a(v) x, so from x(T) ~ N(0, σ_max²)
  Var x(eps) = σ_max² ((1 + v₀)/(1 + v_T))^(1+w) ((1.5² + v_T)/(1.5² + v₀))^w."""
  sde = SDES["ve"]
  good, bad = 1.0, 1.5 ** 2
  score = guidance.autoguidance(_gaussian_score(sde, good), _gaussian_score(sde, bad), w=w)
  x, _ = sampling.sample(jax.random.key(0), sde, score, (n, 1), "ode", solver="tsit5", rtol=1e-6, atol=1e-6,
                         denoise=False)
  v0, vT = (float(sde.marginal_std(jnp.float32(t))) ** 2 for t in (sde.eps, sde.T))
  closed = sde.prior_std ** 2 * ((good + v0) / (good + vT)) ** (1 + w) * ((bad + vT) / (bad + v0)) ** w
  return float(np.var(np.asarray(x))), closed


@pytest.mark.parametrize("w", [1.0, 2.0])
def test_autoguided_gaussian_variance_follows_the_closed_form(w):
  sampled, closed = autoguided_variance(w)
  assert abs(sampled / closed - 1) < 0.02, (sampled, closed)
  # Not the tilted density p_good^(1+w) / p_bad^w (variance 1 / ((1 + w) − w / 1.5²)): the ODE of a
  # guided score does not sample it.
  assert abs(closed * ((1 + w) - w / 1.5 ** 2) - 1) > 0.2


def test_a_swapped_autoguidance_weight_fails_the_variance_test(monkeypatch):
  def slipped(good, bad, w, t, sde, sigma_interval):  # w ↔ 1 − w
    return (1.0 - w) * good + w * bad
  monkeypatch.setattr(guidance, "_combine", slipped)
  sampled, closed = autoguided_variance(1.0, n=4000)
  assert abs(sampled / closed - 1) >= 0.02, (sampled, closed)


def test_autoguidance_pair_fn_is_the_two_calls_and_bad_arguments_are_refused():
  sde = SDES["vp"]
  x = jax.random.normal(jax.random.PRNGKey(3), (5, 2))
  t = jnp.array([0.1, 0.3, 0.5, 0.7, 0.9])
  good, bad = MIX.score_fn(sde), MIX.component(0).score_fn(sde)
  two = guidance.autoguidance(good, bad, w=1.5)(x, t)
  one = guidance.autoguidance(None, w=1.5, pair_fn=lambda x, t: (good(x, t), bad(x, t)))(x, t)
  np.testing.assert_array_equal(two, one)
  np.testing.assert_allclose(two, 2.5 * good(x, t) - 1.5 * bad(x, t), rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="score_fn and guide_score_fn, or pair_fn"):
    guidance.autoguidance(good, w=1.0)
  with pytest.raises(ValueError, match="w=-1"):
    guidance.autoguidance(good, bad, w=-1.0)


# --- numerics where p_t(y | x) saturates, the norm_ratio floor and cap, option types (issue 23) ---

def _exact_class_grad(mix, sde, x, t, y):
  """∇log p_t(y | x) = Σ_{k≠y} r_k (s_y − s_k) from the per-component scores s_k, in float64
  numpy, with the responsibilities r_k from log-space (so no 1 − r_y is formed); and 1 − r_y."""
  m, s = float(sde.mean_coeff(jnp.float32(t))), float(sde.marginal_std(jnp.float32(t)))
  mu, sd = np.asarray(mix.means, np.float64), np.asarray(mix.stds, np.float64)
  var = (m * sd) ** 2 + s ** 2  # [K, D]
  diff = x[:, None, :] - m * mu  # [B, K, D]
  logn = -0.5 * np.sum(np.log(2 * np.pi * var) + diff ** 2 / var, axis=-1) + np.log(np.asarray(mix.weights, np.float64))
  top = logn.max(axis=1, keepdims=True)
  r = np.exp(logn - top - np.log(np.sum(np.exp(logn - top), axis=1, keepdims=True)))  # [B, K]
  scores = -diff / var
  others = [k for k in range(mix.num_components) if k != y]
  grad = sum(r[:, k:k + 1] * (scores[:, y] - scores[:, k]) for k in others)
  return grad, r[:, others].sum(axis=1)


def _angles(a, b):
  cos = np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
  return np.degrees(np.arccos(np.clip(cos, -1.0, 1.0)))


def test_classifier_gradient_keeps_its_direction_where_the_class_probability_saturates():
  """Where 1 − p_t(y|x) < 1e-7 (here 1e-29 … 1e-8) the float32 gradient is within 1° of the
  float64 closed form; the naive gradient of log_softmax_y (what this replaced) is not."""
  sde = SDES["ve"]
  x = np.asarray(jnp.array([[3.0, -2.0]]) + 0.3 * jax.random.normal(jax.random.PRNGKey(0), (32, 2)), np.float64)
  x[:, 0] += np.linspace(0.0, 3.0, 32)
  t = 0.05
  ref, one_minus_p = _exact_class_grad(MIX, sde, x, t, REQUESTED)
  assert one_minus_p.max() < 1e-7 and one_minus_p.min() > 1e-35, one_minus_p
  x32, t32, labels = jnp.asarray(x, jnp.float32), jnp.full((32,), t), jnp.full((32,), REQUESTED)
  clf = MIX.classifier_fn(sde)
  stable = np.asarray(guidance.classifier_grad(clf, labels, sde, x32, t32), np.float64)
  assert _angles(stable, ref).max() < 1.0, _angles(stable, ref)
  np.testing.assert_allclose(np.linalg.norm(stable, axis=1), np.linalg.norm(ref, axis=1), rtol=1e-3)
  naive = np.asarray(jax.grad(lambda v: jnp.sum(clf(v, t32)[:, REQUESTED]))(x32), np.float64)
  assert _angles(naive, ref).max() > 5.0  # the cancellation this form avoids
  # norm_ratio guidance adds exactly ρ‖s‖ along that direction.
  score = MIX.score_fn(sde)
  out = guidance.classifier_guidance(score, clf, labels, sde=sde, guidance=guidance.Guidance("norm_ratio", ratio=0.5))
  added = np.asarray(out(x32, t32) - score(x32, t32), np.float64)
  assert _angles(added, ref).max() < 1.0
  np.testing.assert_allclose(np.linalg.norm(added, axis=1),
                             0.5 * np.linalg.norm(np.asarray(score(x32, t32)), axis=1), rtol=1e-4)


def test_norm_ratio_resolves_tiny_gradients_and_has_a_floor_and_a_cap():
  score = jnp.array([[3.0, 4.0], [3.0, 4.0], [3.0, 4.0]])
  grad = jnp.array([[6e-25, 8e-25], [0.0, 1e-33], [0.0, 2.0]])  # squares of the first underflow in float32
  floor = guidance.norm_floor(jnp.float32)
  assert 9e-32 < floor < 1.1e-31
  np.testing.assert_allclose(guidance.norm_ratio_scale(score, grad, 0.5), [2.5e24, 0.0, 1.25], rtol=1e-6)
  np.testing.assert_allclose(guidance.norm_ratio_scale(score, grad, 0.5, floor=1e-20), [0.0, 0.0, 1.25], rtol=1e-6)
  np.testing.assert_allclose(guidance.norm_ratio_scale(score, grad, 0.5, max_scale=100.0), [100.0, 0.0, 1.25],
                             rtol=1e-6)
  g = guidance.Guidance("norm_ratio", ratio=np.float32(0.5), max_scale=jnp.float32(100.0), norm_floor=1e-20)
  assert (g.ratio, g.max_scale, g.norm_floor) == (0.5, 100.0, 1e-20) and type(g.max_scale) is float
  with pytest.raises(ValueError, match=r"^guidance max_scale=-1\.0 must be a finite real number > 0"):
    guidance.Guidance("norm_ratio", max_scale=-1.0)


def test_numeric_options_take_python_numpy_and_jax_scalars_and_refuse_the_rest():
  sde = SDES["ve"]
  x, t, labels = jax.random.normal(jax.random.PRNGKey(4), (3, 2)), jnp.full((3,), 0.3), jnp.array([0, 1, 2])
  labeled = lambda x, t, l: MIX.conditional_score(x, t, l, sde)
  want = guidance.classifier_free_guidance(labeled, labels, w=2.0, null_label=3)(x, t)
  for w in (2, np.float32(2.0), np.int64(2), np.array(2.0), jnp.float32(2.0), jnp.array(2, jnp.int32)):
    np.testing.assert_array_equal(guidance.classifier_free_guidance(labeled, labels, w=w, null_label=3)(x, t), want)
  assert guidance.Guidance("constant", scale=jnp.float32(3.0)).scale == 3.0
  assert guidance.Guidance("truncated", sigma_lo=np.float32(1.0), sigma_hi=np.inf).sigma_hi == math.inf
  assert guidance.check_interval((np.float32(0.5), jnp.float32(2.0))) == (0.5, 2.0)
  for bad in ("2", True, jnp.ones(2), np.nan, None):
    with pytest.raises(ValueError, match=r"^classifier_free_guidance w=|^guidance w=") as e:
      guidance.classifier_free_guidance(labeled, labels, w=bad, null_label=3)
    assert "\n" not in str(e.value) and "Python, NumPy or JAX scalar" in str(e.value)
  with pytest.raises(ValueError, match=r"^guidance scale=\[1\.0\] must be"):
    guidance.Guidance("constant", scale=[1.0])
  with pytest.raises(ValueError, match=r"^guidance data_variance="):
    guidance.posterior_guidance(MIX.score_fn(sde), sde, x, jnp.ones(2), data_variance=jnp.zeros(()))


def test_labels_outside_the_classes_are_one_line_errors():
  sde = SDES["ve"]
  labeled = lambda x, t, l: MIX.conditional_score(x, t, l, sde)
  for bad, msg in ((jnp.array([0, 3]), r"labels must be classes 0 … 2; got labels from 0 to 3"),
                   (np.array([-1, 1]), r"labels must be classes 0 … 2; got labels from -1 to 1"),
                   (np.array([0.0, 1.0]), r"labels must be integer class ids")):
    with pytest.raises(ValueError, match=r"^classifier_free_guidance " + msg):
      guidance.classifier_free_guidance(labeled, bad, w=1.0, null_label=3)
  with pytest.raises(ValueError, match=r"null_label=0 must be an integer >= 1"):
    guidance.classifier_free_guidance(labeled, jnp.array([0]), w=1.0, null_label=0)
  score, clf = MIX.score_fn(sde), MIX.classifier_fn(sde)
  with pytest.raises(ValueError, match=r"^classifier guidance labels must be classes 0; got labels from -2"):
    guidance.classifier_guidance(score, clf, jnp.array([-2, 0]), sde=sde)
  # The upper end is K of the classifier's output: refused before sampling compiles anything.
  guided = guidance.classifier_guidance(score, clf, jnp.array([0, 1, 2, 3]), sde=sde)
  with pytest.raises(ValueError, match=r"classifier guidance labels must be classes 0 … 2; got labels from 0 to 3") as e:
    sampling.sample(jax.random.PRNGKey(0), sde, guided, (4, 2), "edm", num_steps=2)
  assert "\n" not in str(e.value)
