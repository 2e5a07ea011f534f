"""Tests of score_jax.losses against exact scores, closed forms and hand computations."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import losses
from score_jax import sde as sde_lib
from score_jax.data import toy

SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE()}
TARGET = toy.GaussianMixture(means=[[-2.0, -1.0], [1.5, 1.0], [0.0, 2.5]], stds=[0.4, 0.6, 0.3], weights=[0.3, 0.5, 0.2])


def _draw(key, sde, x, **time_kwargs):
  """The (t, z) that dsm_loss draws from ``key`` (its documented key split)."""
  k_t, k_z = jax.random.split(key)
  t = losses.sample_times(k_t, sde, x.shape[0], dtype=x.dtype, **time_kwargs)
  return t, jax.random.normal(k_z, x.shape, x.dtype)


def _noise_errors(sde, score_fn, x, t, z):
  """Per-example ‖s·score + z‖² summed over dims, [B], recomputed outside the library."""
  std = sde.marginal_std(t)[:, None]
  return jnp.sum((std * score_fn(sde.perturb(x, t, z), t) + z) ** 2, axis=-1)


def _perturbed_scores(score_fn):
  m = 0.05 * jax.random.normal(jax.random.PRNGKey(5), (2, 2))
  return {
      "scaled": lambda y, t: 1.1 * score_fn(y, t),
      "shifted": lambda y, t: score_fn(y, t) + 0.1,
      "linear": lambda y, t: score_fn(y, t) + y @ m,
  }


# --- 1. the exact score beats perturbed scores --------------------------------------------
@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_score_has_lowest_dsm_loss(name):
  sde = SDES[name]
  x = TARGET.sample(jax.random.PRNGKey(0), 4096)
  exact = TARGET.score_fn(sde)
  key = jax.random.PRNGKey(1)
  base = losses.dsm_loss(key, sde, exact, x)
  t, z = _draw(key, sde, x)
  base_per_example = _noise_errors(sde, exact, x, t, z)
  for label, score_fn in _perturbed_scores(exact).items():
    gap = float(losses.dsm_loss(key, sde, score_fn, x) - base)
    assert gap > 0, (name, label, gap)
    # The same key gives the same (t, z): the comparison is paired, and its paired
    # standard error (from per-example differences) shows the ordering is no accident.
    diff = _noise_errors(sde, score_fn, x, t, z) - base_per_example
    z_score = float(jnp.mean(diff) / (jnp.std(diff) / math.sqrt(diff.shape[0])))
    assert z_score > 5, (name, label, z_score)


# --- 2. DSM(s) − DSM(exact) = λ-weighted E‖s − ∇log p_t‖² (Vincent 2011) --------------------
@pytest.mark.parametrize("weighting", ["sigma2", "likelihood"])
def test_dsm_excess_is_weighted_score_error(weighting):
  sde = SDES["vp"]
  x = TARGET.sample(jax.random.PRNGKey(2), 4096)
  exact = TARGET.score_fn(sde)
  m = jnp.array([[0.2, -0.1], [0.05, 0.15]])
  delta = lambda y, t: 0.4 * jnp.sin(y) @ m + 0.2  # noqa: E731
  score_fn = lambda y, t: exact(y, t) + delta(y, t)  # noqa: E731
  key = jax.random.PRNGKey(3)
  excess = float(
      losses.dsm_loss(key, sde, score_fn, x, weighting=weighting, reduce="sum")
      - losses.dsm_loss(key, sde, exact, x, weighting=weighting, reduce="sum")
  )
  t, z = _draw(key, sde, x)
  lam = sde.marginal_std(t) ** 2 if weighting == "sigma2" else sde.diffusion(t) ** 2  # λ(t), [B]
  x_t = sde.perturb(x, t, z)
  d = delta(x_t, t)
  score_error = lam * jnp.sum(d**2, axis=-1)  # λ ‖s − ∇log p_t‖², [B]
  # The excess differs from the mean score error by the mean of a zero-mean cross term,
  # 2λ δ·(∇log p_t + z/s); its standard error sets the tolerance.
  cross = 2 * lam * jnp.sum(d * (exact(x_t, t) + z / sde.marginal_std(t)[:, None]), axis=-1)
  se = float(jnp.std(cross)) / math.sqrt(x.shape[0])
  expected = float(jnp.mean(score_error))
  assert expected > 10 * se  # the identity is tested on a clearly non-zero excess
  assert abs(excess - expected) < 4 * se, (excess, expected, se)


# --- importance sampling of t for the likelihood weighting ----------------------------------
def test_importance_sampling_is_unbiased_for_likelihood_weighting():
  # train_eps = 0.2 so that T − train_eps = 0.8: a normaliser of Z instead of
  # Z/(T − train_eps) would be caught (the check below asserts that the test has the power to see it).
  sde = sde_lib.VPSDE(eps=0.2, train_eps=0.2)
  x = TARGET.sample(jax.random.PRNGKey(4), 256)
  exact = TARGET.score_fn(sde)
  score_fn = lambda y, t: 1.1 * exact(y, t) + 0.1  # noqa: E731

  @jax.jit
  def estimates(keys):  # [2, K]: plain and importance-sampled estimates, independent keys
    def one(k, importance_sampling):
      return losses.dsm_loss(k, sde, score_fn, x, weighting="likelihood", importance_sampling=importance_sampling)

    return jax.vmap(lambda k1, k2: jnp.stack([one(k1, False), one(k2, True)]))(*jnp.split(keys, 2))

  plain, weighted = estimates(jax.random.split(jax.random.PRNGKey(6), 800)).T
  se = math.sqrt(float(jnp.var(plain) + jnp.var(weighted)) / plain.shape[0])
  diff = float(jnp.mean(weighted) - jnp.mean(plain))
  assert abs(diff) < 4 * se, (diff, se)
  assert (1 - (sde.T - sde.train_eps)) * float(jnp.mean(plain)) > 8 * se


# --- 3. ISM and SSM equal ½ ESM up to a constant on a Gaussian -------------------------------
def test_ism_and_ssm_equal_half_esm_plus_constant():
  d, chunks, per_chunk = 3, 20, 1000
  mu = np.array([0.5, -1.0, 2.0])
  chol = np.array([[1.0, 0.0, 0.0], [0.5, 0.8, 0.0], [-0.3, 0.4, 0.9]])
  cov = chol @ chol.T
  prec = np.linalg.inv(cov)
  constant = -0.5 * np.trace(prec)  # −½ E‖∇log p‖²
  rng = np.random.default_rng(0)
  x = jnp.asarray(mu + rng.normal(size=(chunks, per_chunk, d)) @ chol.T, jnp.float32)
  models = [
      (-prec, prec @ mu),  # the exact score: ESM = 0
      (np.zeros((d, d)), np.zeros(d)),
      (0.5 * rng.normal(size=(d, d)), rng.normal(size=d)),
      (-0.5 * prec + 0.3 * rng.normal(size=(d, d)), np.array([1.0, 0.0, -1.0])),
  ]

  @jax.jit
  def objectives(a, b, keys):
    score_fn = lambda y: y @ a.T + b  # noqa: E731

    def one(k, xc):
      return jnp.stack([
          losses.ism_loss(k, score_fn, xc),
          losses.ism_loss(k, score_fn, xc, estimator="hutchinson", num_probes=2),
          losses.ssm_loss(k, score_fn, xc),
          losses.ssm_loss(k, score_fn, xc, variance_reduction=True, projection="rademacher"),
          losses.ssm_loss(k, score_fn, xc, projection="sphere", num_projections=2),
      ])

    return jax.vmap(one)(keys, x)  # [chunks, 5]

  keys = jax.random.split(jax.random.PRNGKey(7), chunks)
  for a, b in models:
    # ESM = E‖(A + P)x + b − Pμ‖² = ‖Aμ + b‖² + tr((A + P) Σ (A + P)ᵀ) in closed form.
    esm = np.sum((a @ mu + b) ** 2) + np.trace((a + prec) @ cov @ (a + prec).T)
    per_chunk_values = np.asarray(objectives(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), keys), np.float64)
    means = per_chunk_values.mean(axis=0)
    se = per_chunk_values.std(axis=0, ddof=1) / math.sqrt(chunks)
    # Tolerance: 4 standard errors of the chunk means, plus float32 round-off.
    np.testing.assert_array_less(np.abs(means - 0.5 * esm - constant), 4 * se + 1e-3 * (1 + esm))
    # Hutchinson vs exact trace on the same points: only the probes differ.
    paired = per_chunk_values[:, 1] - per_chunk_values[:, 0]
    assert abs(paired.mean()) < 4 * paired.std(ddof=1) / math.sqrt(chunks) + 1e-4


def test_ism_exact_trace_of_a_nonlinear_score():
  w = jnp.array([[1.0, 2.0, -0.5], [0.5, -1.0, 0.3], [0.2, 0.1, 0.7]])
  c = jnp.array([0.1, -0.2, 0.3])
  score_fn = lambda y: jnp.tanh(y @ w.T + c)  # noqa: E731
  x = jax.random.normal(jax.random.PRNGKey(8), (16, 3))
  h = np.tanh(np.asarray(x, np.float64) @ np.asarray(w, np.float64).T + np.asarray(c))
  trace = (1 - h**2) @ np.diag(np.asarray(w, np.float64))  # tr(diag(1 − h²) W)
  expected = np.mean(trace + 0.5 * np.sum(h**2, axis=-1))
  np.testing.assert_allclose(float(losses.ism_loss(None, score_fn, x)), expected, rtol=1e-5)


# --- 4. weightings against hand computations; time sampling ---------------------------------
def _numpy_coeffs(name, t):
  """m, s, g² of the default VE / VP SDEs in float64 numpy."""
  if name == "ve":
    sig = 0.01 * (50.0 / 0.01) ** t
    return np.ones_like(t), np.sqrt(sig**2 - 0.01**2), sig**2 * 2 * math.log(50.0 / 0.01)
  big_b = _vp_integral(t)
  return np.exp(-0.5 * big_b), np.sqrt(1 - np.exp(-big_b)), 0.1 + 19.9 * t


def _vp_integral(t):
  return 0.1 * t + 0.5 * 19.9 * t**2  # B(t) = ∫₀ᵗ β for β_min = 0.1, β_max = 20


def _numpy_potential(name, t):
  """An antiderivative of g²/s² for the default VE / VP SDEs in float64 numpy."""
  if name == "ve":
    return np.log(np.expm1(2 * math.log(50.0 / 0.01) * t))
  big_b = _vp_integral(t)
  return big_b + np.log(-np.expm1(-big_b))


OPTIONS = dict(min_snr_gamma=2.0, p2_k=0.5, p2_gamma=0.7)


@pytest.mark.parametrize("name", ["ve", "vp"])
@pytest.mark.parametrize("reduce", ["mean", "sum"])
@pytest.mark.parametrize("weighting", losses.WEIGHTINGS)
def test_dsm_weightings_match_hand_computation(name, reduce, weighting):
  sde = SDES[name]
  x = jnp.asarray(np.linspace(-2, 2, 16).reshape(8, 2), jnp.float32)
  key = jax.random.PRNGKey(9)
  seen = []

  def score_fn(y, t):
    seen.append(np.asarray(t))
    return -y * (1 + t[:, None])

  loss = float(losses.dsm_loss(key, sde, score_fn, x, weighting=weighting, reduce=reduce, **OPTIONS))
  assert np.isfinite(loss)
  t, z = (np.asarray(a, np.float64) for a in _draw(key, sde, x))
  np.testing.assert_array_equal(seen[0], t.astype(np.float32))  # the documented key split
  m, s, g2 = _numpy_coeffs(name, t)
  f = np.zeros_like(t) if name == "ve" else -g2 / 2
  score = -(m[:, None] * np.asarray(x) + s[:, None] * z) * (1 + t[:, None])
  snr = m**2 / s**2
  # λ(t) weights the score error ‖score − ∇log p_0t‖² = ‖score + z/s‖² (not the ε error).
  lam = {
      "sigma2": s**2,
      "likelihood": g2,
      "uniform": np.ones_like(t),
      "min_snr": s**2 * np.minimum(snr, 2.0) / snr,
      "p2": s**2 / (0.5 + snr) ** 0.7,
      # EDM's λ(σ) = (σ² + σ_d²)/(σ σ_d)² of ‖D − x(0)‖² = σ² s² ‖score + z/s‖², σ = s/m, σ_d = 0.5.
      "edm": s**2 * ((s / m) ** 2 + 0.25) / 0.25,
      # ‖û − (ṁ x(0) + ṡ z)‖² with ṁ = f m, ṡ = f s + g²/(2s); f = 0 (VE), −β/2 = −g²/2 (VP).
      "velocity": s**2 * ((m * (f * s + g2 / (2 * s)) - s * f * m) / m) ** 2,
  }[weighting]
  err = (score + z / s[:, None]) ** 2
  err = err.mean(axis=-1) if reduce == "mean" else err.sum(axis=-1)
  np.testing.assert_allclose(loss, np.mean(lam * err), rtol=2e-4)


@pytest.mark.parametrize("name", ["vp", "subvp"])
def test_vp_training_times_reach_below_the_sampling_eps(name):
  """score_sde trains VP / sub-VP from t = 1e-5 (its loss ``eps``), not from the 1e-3 its
  samplers stop at: the times dsm_loss evaluates the network at go below 1e-3."""
  sde = SDES[name]
  seen = []

  def score_fn(y, t):
    seen.append(np.asarray(t))
    return -y

  x = jnp.zeros((4096, 2))
  losses.dsm_loss(jax.random.PRNGKey(12), sde, score_fn, x, time_sampling="stratified")
  t = np.concatenate(seen)
  assert t.min() >= sde.train_eps * (1 - 1e-6)
  # Stratified over [1e-5, 1]: about 4 of 4096 times below 1e-3, the lowest under 2.5e-4 + 1e-5.
  assert 1 <= np.sum(t < sde.eps) <= 6 and t.min() < 2.6e-4


@pytest.mark.parametrize("name", ["ve", "vp"])
def test_importance_sampled_loss_matches_hand_computation(name):
  sde = SDES[name]
  x = jnp.asarray(np.linspace(-1, 1, 16).reshape(8, 2), jnp.float32)
  score_fn = lambda y, t: -0.5 * y  # noqa: E731
  key = jax.random.PRNGKey(10)
  loss = float(losses.dsm_loss(key, sde, score_fn, x, weighting="likelihood", importance_sampling=True, reduce="sum"))
  t, z = (np.asarray(a, np.float64) for a in _draw(key, sde, x, importance_sampling=True))
  m, s, _ = _numpy_coeffs(name, t)
  potential = lambda u: _numpy_potential(name, u)  # noqa: E731
  norm = potential(sde.T) - potential(sde.train_eps)
  score = -0.5 * (m[:, None] * np.asarray(x) + s[:, None] * z)
  expected = norm / (sde.T - sde.train_eps) * np.mean(np.sum((s[:, None] * score + z) ** 2, axis=-1))
  np.testing.assert_allclose(loss, expected, rtol=2e-4)
  # The times invert the CDF: (Φ(t) − Φ(eps))/Z is the uniform the plain sampler would map.
  plain, _ = _draw(key, sde, x)
  u = (np.asarray(plain, np.float64) - sde.train_eps) / (sde.T - sde.train_eps)
  np.testing.assert_allclose((potential(t) - potential(sde.train_eps)) / norm, u, atol=1e-4)


@pytest.mark.parametrize("importance_sampling", [False, True])
def test_time_sampling_structure(importance_sampling):
  sde, b = SDES["vp"], 16
  key = jax.random.PRNGKey(11)
  times = {
      ts: np.asarray(losses.sample_times(key, sde, b, time_sampling=ts, importance_sampling=importance_sampling), np.float64)
      for ts in losses.TIME_SAMPLINGS
  }
  for t in times.values():
    assert t.shape == (b,) and np.all(t >= sde.train_eps) and np.all(t <= sde.T)
  if importance_sampling:
    cdf = lambda u: _numpy_potential("vp", u)  # noqa: E731
    to_unit = lambda t: (cdf(t) - cdf(sde.train_eps)) / (cdf(sde.T) - cdf(sde.train_eps))  # noqa: E731
  else:
    to_unit = lambda t: (t - sde.train_eps) / (sde.T - sde.train_eps)  # noqa: E731
  u = {ts: to_unit(t) for ts, t in times.items()}
  # Stratified: one point in each of the B strata [i/B, (i+1)/B), evenly spaced.
  np.testing.assert_allclose(np.diff(np.sort(u["stratified"])), 1.0 / b, atol=1e-4)
  # Antithetic: the second half mirrors the first, u ↔ 1 − u.
  np.testing.assert_allclose(u["antithetic"][: b // 2] + u["antithetic"][b // 2 :], 1.0, atol=1e-4)
  assert len(np.unique(u["uniform"])) == b


# --- discrete SMLD / DDPM losses -------------------------------------------------------------
@pytest.mark.parametrize("name", ["ve", "vp", "subvp"])
def test_discrete_losses_match_hand_computation(name):
  sde, n = SDES[name], 10
  x = jnp.asarray(np.linspace(-1, 1, 24).reshape(8, 3), jnp.float32)
  score_fn = lambda y, t: -y / (1 + t[:, None])  # noqa: E731
  key = jax.random.PRNGKey(12)
  loss_fn, half = (losses.smld_loss, 0.5) if name == "ve" else (losses.ddpm_loss, 1.0)
  loss = float(loss_fn(key, sde, score_fn, x, num_scales=n))
  k_i, k_z = jax.random.split(key)
  level = np.asarray(jax.random.randint(k_i, (8,), 0, n))
  t = jnp.asarray((level + 1) / n, jnp.float32)  # t_i = T (i + 1)/N, T = 1
  z = jax.random.normal(k_z, x.shape)
  x_t = sde.perturb(x, t, z)
  eps_hat = -sde_lib.bcast(sde.marginal_std(t), x) * score_fn(x_t, t)  # ε̂ = −s·score
  expected = half * np.mean(np.mean(np.asarray(eps_hat - z) ** 2, axis=-1))
  np.testing.assert_allclose(loss, expected, rtol=1e-5)
  if name == "ve":  # NCSN's σ_i is the exact VE marginal std at t_i
    np.testing.assert_allclose(np.asarray(sde.marginal_std(t)), _numpy_coeffs("ve", np.asarray(t, np.float64))[1], rtol=1e-4)


# --- jit and grad -------------------------------------------------------------------------
def test_losses_jit_and_differentiate_through_closed_over_parameters():
  sde = SDES["vp"]
  x = TARGET.sample(jax.random.PRNGKey(13), 32)
  key = jax.random.PRNGKey(14)

  def total(p):
    timed = lambda y, t: -p[0] * y / (1 + t[:, None]) + p[1]  # noqa: E731
    free = lambda y: jnp.tanh(p[0] * y) + p[1]  # noqa: E731
    return (
        losses.dsm_loss(key, sde, timed, x, weighting="likelihood", importance_sampling=True, time_sampling="antithetic")
        + losses.ddpm_loss(key, sde, timed, x)
        + losses.ism_loss(key, free, x, estimator="hutchinson")
        + losses.ssm_loss(key, free, x)
    )

  p = jnp.array([0.9, 0.1])
  value_and_grad = jax.jit(jax.value_and_grad(total))
  _, grad = value_and_grad(p)
  # Central differences of the same compiled loss (the keys are fixed: smooth in p).
  h = 1e-2
  numeric = [float(value_and_grad(p + h * e)[0] - value_and_grad(p - h * e)[0]) / (2 * h) for e in jnp.eye(2)]
  np.testing.assert_allclose(np.asarray(grad), numeric, rtol=1e-2)


# --- 5. bad arguments --------------------------------------------------------------------------
def test_bad_arguments_raise_value_error_naming_the_argument():
  sde_vp, sde_ve = SDES["vp"], SDES["ve"]
  key = jax.random.PRNGKey(0)
  x = jnp.zeros((4, 2))
  score_fn = lambda y, t: -y  # noqa: E731
  free = lambda y: -y  # noqa: E731
  cases = [
      ("weighting", lambda: losses.dsm_loss(key, sde_vp, score_fn, x, weighting="snr")),
      ("reduce", lambda: losses.dsm_loss(key, sde_vp, score_fn, x, reduce="max")),
      ("time_sampling", lambda: losses.dsm_loss(key, sde_vp, score_fn, x, time_sampling="sobol")),
      ("antithetic", lambda: losses.dsm_loss(key, sde_vp, score_fn, x[:3], time_sampling="antithetic")),
      ("importance_sampling", lambda: losses.dsm_loss(key, sde_vp, score_fn, x, importance_sampling=True)),
      ("min_snr_gamma", lambda: losses.dsm_loss(key, sde_vp, score_fn, x, weighting="min_snr", min_snr_gamma=0.0)),
      ("p2_k", lambda: losses.dsm_loss(key, sde_vp, score_fn, x, weighting="p2", p2_k=-1.0)),
      ("score_fn", lambda: losses.dsm_loss(key, sde_vp, lambda y, t: y[:, :1], x)),
      ("sde", lambda: losses.smld_loss(key, sde_vp, score_fn, x)),
      ("sde", lambda: losses.ddpm_loss(key, sde_ve, score_fn, x)),
      ("num_scales", lambda: losses.ddpm_loss(key, sde_vp, score_fn, x, num_scales=0)),
      ("reduce", lambda: losses.smld_loss(key, sde_ve, score_fn, x, reduce="none")),
      ("score_fn", lambda: losses.ism_loss(key, lambda y: y[:, :1], x)),
      ("estimator", lambda: losses.ism_loss(key, free, x, estimator="skilling")),
      ("num_probes", lambda: losses.ism_loss(key, free, x, estimator="hutchinson", num_probes=0)),
      ("projection", lambda: losses.ssm_loss(key, free, x, projection="uniform")),
      ("num_projections", lambda: losses.ssm_loss(key, free, x, num_projections=1.5)),
  ]
  for name, call in cases:
    with pytest.raises(ValueError, match=name):
      call()


def test_bad_arguments_raise_before_tracing():
  traced = []

  def score_fn(y, t):
    traced.append(1)
    return -y

  with pytest.raises(ValueError, match="weighting"):
    jax.jit(lambda x: losses.dsm_loss(jax.random.PRNGKey(0), SDES["vp"], score_fn, x, weighting="bad"))(jnp.zeros((4, 2)))
  assert not traced
