"""Probability-flow likelihoods against closed forms: Gaussians, a Gaussian mixture and
dequantized uniform integers, whose perturbed densities p_t (and so scores) are exact.

What the ODE computes is the density of the model whose prior is the SDE's π, not the true
p_T: log q(x) = log p_eps(x) + log π(z) − log p_T(z) with z = x(T).  Per point the tests
compare against that exact value (tightly); the mean over a dataset, where the prior term
averages to −KL(p_T ‖ π) ≈ 0, is held to the issue's bar against log p_eps itself.
"""

import math

import jax
import jax.numpy as jnp
from jax.scipy.special import log_ndtr
import numpy as np
import pytest

from mixture_bar import TARGET as MIXTURE
from score_jax import likelihood
from score_jax import sde as sde_lib
from score_jax.data import toy

LN2 = math.log(2.0)
BAR = 0.01  # the bar: bits/dim of a dataset within 0.01 of the closed form
POINT_TOL = 2e-3  # bits/dim, per point, against the exact model density
GAUSS = toy.Gaussian(mean=[0.5, -1.0, 0.2], cov=[[1.0, 0.6, 0.1], [0.6, 0.8, -0.2], [0.1, -0.2, 0.3]])
DEFAULT_SDES = {"ve": sde_lib.VESDE(), "vp": sde_lib.VPSDE(), "subvp": sde_lib.SubVPSDE(),
                "rectified_flow": sde_lib.RectifiedFlowSDE()}


def to_bits(nats, d):
  return np.asarray(nats) / (d * LN2)


def gaussian_flow(target: toy.Gaussian, sde, x, t_from, t_to):
  """The probability-flow map of a Gaussian from t_from to t_to [B, D]: per eigen-coordinate
  x − m μ scales by the ratio of the marginal stds (the PF-ODE is linear here)."""
  m0, var0 = target.marginal_eigenvalues(sde, jnp.asarray(t_from))
  m1, var1 = target.marginal_eigenvalues(sde, jnp.asarray(t_to))
  y = (x - m0 * target.mean) @ target.eigenvectors  # [B, D]
  return m1 * target.mean + (y * jnp.sqrt(var1 / var0)) @ target.eigenvectors.T


def model_logp(target, sde, x, z):
  """log p_eps(x) + log π(z) − log p_T(z): the exact density of the ODE model with prior π."""
  return target.log_prob_t(x, sde.train_eps, sde) + sde.prior_logp(z) - target.log_prob_t(z, sde.T, sde)


# --- 1. Gaussians under their exact score --------------------------------------------------------
@pytest.mark.parametrize("sde_name,target", [("ve", GAUSS), ("vp", GAUSS), ("subvp", GAUSS), ("rectified_flow", GAUSS),
                                             ("vp", toy.correlated_gaussian(dim=16, seed=1))],
                         ids=["ve-3d", "vp-3d", "subvp-3d", "rf-3d", "vp-16d"])
def test_gaussian_bits_per_dim_matches_closed_form(sde_name, target):
  sde = DEFAULT_SDES[sde_name]
  score = target.score_fn(sde)
  x = target.sample(jax.random.PRNGKey(0), 64)
  d = target.dim
  logp, z, nfe = likelihood.log_likelihood(jax.random.PRNGKey(1), sde, score, x, divergence="exact")
  assert 20 < int(nfe) < 2000
  # x(T) is the closed-form flow map of x, and logp the exact model density, per point.
  z_exact = gaussian_flow(target, sde, x, sde.train_eps, sde.T)
  np.testing.assert_allclose(z, z_exact, rtol=1e-3, atol=1e-3 * sde.prior_std)
  np.testing.assert_array_less(np.abs(to_bits(logp - model_logp(target, sde, x, z_exact), d)), POINT_TOL)
  # The bar: the dataset's bits/dim against the closed form of log p_eps.
  bpd, _ = likelihood.bits_per_dim(jax.random.PRNGKey(1), sde, score, x, divergence="exact")  # same compiled solve
  closed = -to_bits(target.log_prob_t(x, sde.train_eps, sde), d)
  assert abs(float(np.mean(bpd)) - float(np.mean(closed))) < BAR
  np.testing.assert_allclose(bpd, -to_bits(logp, d), rtol=1e-6)


# --- 2. Hutchinson is unbiased -------------------------------------------------------------------
def test_hutchinson_is_unbiased_and_its_variance_behaves():
  """Copies of one point get independent probes (fold_in(key, i)), so the batch is a sample
  of the estimator: its mean is the exact value within 4 standard errors, Rademacher has a
  smaller variance than Gaussian probes (it only sees off-diagonal Jacobian terms), and
  averaging num_probes = 8 divides the standard deviation by about √8."""
  sde = DEFAULT_SDES["vp"]
  score = GAUSS.score_fn(sde)
  n = 256
  x = jnp.repeat(GAUSS.sample(jax.random.PRNGKey(3), 1), n, axis=0)  # [n, 3], one point
  exact, z_exact, _ = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, score, x[:1], divergence="exact")
  key = jax.random.PRNGKey(4)
  std = {}
  for probe, num_probes in [("rademacher", 1), ("gaussian", 1), ("gaussian", 8)]:
    logp, z, _ = likelihood.log_likelihood(key, sde, score, x, probe=probe, num_probes=num_probes)
    logp = np.asarray(logp, np.float64)
    np.testing.assert_allclose(z, jnp.broadcast_to(z_exact, z.shape), rtol=1e-4, atol=1e-4)  # probes leave x(t) alone
    se = logp.std(ddof=1) / math.sqrt(n)
    assert se > 0
    assert abs(logp.mean() - float(exact[0])) < 4 * se, (probe, num_probes, logp.mean(), float(exact[0]), se)
    std[probe, num_probes] = logp.std(ddof=1)
  assert std["rademacher", 1] < std["gaussian", 1]
  assert 2.3 < std["gaussian", 1] / std["gaussian", 8] < 3.4, std


# --- 3. A Gaussian mixture -----------------------------------------------------------------------
@pytest.mark.parametrize("sde_name", ["ve", "vp"])
def test_mixture_nll_matches_closed_form(sde_name):
  # The default SDEs: with mixture_bar's σ_max = 20 the prior term log π(z) − log p_T(z) of
  # this wide mixture is 0.05 bits/dim per point (std), too much for the dataset check.
  sde = DEFAULT_SDES[sde_name]
  x = MIXTURE.sample(jax.random.PRNGKey(5), 64)
  logp, z, _ = likelihood.log_likelihood(jax.random.PRNGKey(0), sde, MIXTURE.score_fn(sde), x, divergence="exact")
  np.testing.assert_array_less(np.abs(to_bits(logp - model_logp(MIXTURE, sde, x, z), 2)), POINT_TOL)
  closed = -to_bits(MIXTURE.log_prob_t(x, sde.train_eps, sde), 2)
  assert abs(-float(np.mean(to_bits(logp, 2))) - float(np.mean(closed))) < BAR


# --- 4. Discrete data: the dequantization offset, and batch independence ------------------------
def _log_diff_ndtr(a, b):
  """log(Φ(a) − Φ(b)) for a > b, from the tail that keeps precision."""
  flip = b > 0
  la, lb = log_ndtr(jnp.where(flip, -b, a)), log_ndtr(jnp.where(flip, -a, b))
  d = lb - la  # < 0
  return la + jnp.where(d > -LN2, jnp.log(-jnp.expm1(d)), jnp.log1p(-jnp.exp(d)))


def box_log_prob_t(x, t, sde, lo, hi):
  """log p_t(x) [B] for x(0) uniform on [lo, hi]^D: per coordinate
  (Φ((x − m lo)/s) − Φ((x − m hi)/s)) / (m (hi − lo))."""
  t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
  m, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
  return jnp.sum(_log_diff_ndtr((x - m * lo) / s, (x - m * hi) / s) - jnp.log(m * (hi - lo)), axis=-1)


def box_score_fn(sde, lo, hi):
  return lambda x, t: jax.grad(lambda y: jnp.sum(box_log_prob_t(y, t, sde, lo, hi)))(x)


def test_bpd_offset_values():
  assert likelihood.bpd_offset(None) == 0.0
  assert likelihood.bpd_offset(256) == 8.0  # score_sde's offset on [0, 1]
  assert likelihood.bpd_offset(256, (-1.0, 1.0)) == 7.0  # and on centred data
  assert likelihood.bpd_offset(16, (0.0, 4.0)) == 2.0


@pytest.mark.parametrize("levels,data_range", [(256, (-1.0, 1.0)), (17, (0.0, 1.0))])
def test_uniform_integers_have_log2_levels_bits_per_dim(levels, data_range):
  """Integers uniform over L levels carry exactly log₂ L bits per dimension; dequantized and
  mapped onto data_range, the model with their exact score must say so."""
  sde = DEFAULT_SDES["ve"]  # s(eps) ≈ 1e-4, so p_eps is the box density to 1e-4 bits
  lo, hi = data_range
  images = jax.random.randint(jax.random.PRNGKey(6), (32, 4), 0, levels).astype(jnp.uint8)
  x = likelihood.dequantize(jax.random.PRNGKey(7), images, levels=levels, data_range=data_range)
  assert float(x.min()) >= lo and float(x.max()) <= hi
  score = box_score_fn(sde, lo, hi)
  bpd, _ = likelihood.bits_per_dim(jax.random.PRNGKey(8), sde, score, x, levels=levels, data_range=data_range,
                                   divergence="exact")
  assert abs(float(np.mean(bpd)) - math.log2(levels)) < BAR
  # Per point, against the exact model density (with (0, 1) the cube's centre is off the
  # prior's, and the prior term alone is up to 0.016 bits/dim).
  _, z, _ = likelihood.log_likelihood(jax.random.PRNGKey(8), sde, score, x, divergence="exact")
  model = box_log_prob_t(x, sde.train_eps, sde, lo, hi) + sde.prior_logp(z) - box_log_prob_t(z, sde.T, sde, lo, hi)
  np.testing.assert_allclose(bpd, -to_bits(model, 4) + likelihood.bpd_offset(levels, data_range), atol=POINT_TOL)


def test_dataset_bits_per_dim_does_not_depend_on_batch_size():
  sde = DEFAULT_SDES["vp"]
  score = box_score_fn(sde, 0.0, 1.0)
  images = np.asarray(jax.random.randint(jax.random.PRNGKey(9), (11, 4), 0, 256), np.uint8)
  run = lambda batch_size: likelihood.bits_per_dim_dataset(
      jax.random.PRNGKey(10), sde, score, images, levels=256, batch_size=batch_size, num_repeats=2)
  bpd4, nfe4 = run(4)
  bpd8, _ = run(8)
  assert bpd4.shape == (2, 11) and nfe4.shape == (2, 3)
  # Equal up to round-off (XLA vectorizes another batch size differently), which the
  # adaptive steps amplify to about the solver's tolerance; other probes or noise would
  # move a point by ~0.01-0.1.
  np.testing.assert_allclose(bpd4, bpd8, rtol=0, atol=1e-3)
  assert not np.allclose(bpd4[0], bpd4[1], atol=1e-3)  # each repeat dequantizes and probes afresh
  # The Hutchinson estimates scatter around log₂ 256 = 8 (VP's s(eps) = 0.01 blurs the cube's faces).
  assert abs(float(bpd4.mean()) - 8.0) < 0.3
  # dequantize draws example i's noise from fold_in(key, first_index + i).
  key = jax.random.PRNGKey(11)
  whole = likelihood.dequantize(key, images, levels=256)
  part = likelihood.dequantize(key, images[5:], levels=256, first_index=5)
  np.testing.assert_array_equal(whole[5:], part)


# --- 5. Bookkeeping: NFE and argument checks -----------------------------------------------------
def test_nfe_counts_every_evaluation():
  """Dopri5 here (Tsit5 everywhere else): 1 + 6 evaluations per attempted step, as ode.py."""
  calls = []
  exact = GAUSS.score_fn(DEFAULT_SDES["vp"])

  def counting_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return exact(x, t)

  x = GAUSS.sample(jax.random.PRNGKey(12), 1)
  logp, _, nfe = likelihood.log_likelihood(jax.random.PRNGKey(0), DEFAULT_SDES["vp"], counting_score, x,
                                           solver="dopri5", rtol=1e-4, atol=1e-4)
  jax.block_until_ready(logp)
  assert int(nfe) == len(calls) > 10


BAD_ARGS = [
    (dict(divergence="trace"), "divergence"),
    (dict(probe="sphere"), "probe"),
    (dict(num_probes=0), "num_probes"),
    (dict(num_probes=1.5), "num_probes"),
    (dict(solver="heun"), "solver"),
    (dict(rtol=0.0), "rtol"),
    (dict(atol=-1e-5), "atol"),
    (dict(eps=0.0), "eps"),
    (dict(eps=1.0), "eps"),
    (dict(max_steps=0), "max_steps"),
    (dict(first_index=-1), "first_index"),
    (dict(levels=1), "levels"),
    (dict(levels=256, data_range=(1.0, -1.0)), "data_range"),
]


@pytest.mark.parametrize("kwargs,field", BAD_ARGS, ids=[f"{f}-{i}" for i, (_, f) in enumerate(BAD_ARGS)])
def test_bad_arguments_rejected_before_tracing(kwargs, field):
  calls = []

  def score(x, t):
    calls.append(1)
    return x

  x = jnp.zeros((4, 2))
  with pytest.raises(ValueError, match=field):
    likelihood.bits_per_dim(jax.random.PRNGKey(0), DEFAULT_SDES["vp"], score, x, **kwargs)
  assert not calls  # nothing was traced, let alone compiled


def test_bad_inputs_rejected():
  sde, score = DEFAULT_SDES["vp"], GAUSS.score_fn(DEFAULT_SDES["vp"])
  with pytest.raises(ValueError, match="dequantize"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), sde, score, jnp.zeros((4, 3), jnp.uint8))
  with pytest.raises(ValueError, match="shape"):
    likelihood.log_likelihood(jax.random.PRNGKey(0), sde, lambda x, t: x[:, :2], jnp.zeros((4, 3)))
  with pytest.raises(ValueError, match="0..levels-1"):
    likelihood.dequantize(jax.random.PRNGKey(0), np.full((2, 3), 17, np.uint8), levels=17)
  with pytest.raises(ValueError, match="images"):
    likelihood.dequantize(jax.random.PRNGKey(0), np.zeros((2, 3), np.float32), levels=17)


def test_default_start_is_the_training_eps_not_the_sampling_eps():
  """score_sde integrates the likelihood ODE from its loss eps, 1e-5, also for VP, which samples
  only down to 1e-3: the resolved start of a default solve is sde.train_eps."""
  x = jnp.zeros((2, 3))
  for sde in DEFAULT_SDES.values():
    opts = dict(divergence="exact", probe="rademacher", num_probes=1, solver="tsit5", rtol=1e-5, atol=1e-5,
                max_steps=10)
    assert likelihood._config(sde, lambda y, t: y, x, 0, eps=None, **opts).eps == sde.train_eps == 1e-5
    assert likelihood._config(sde, lambda y, t: y, x, 0, eps=0.3, **opts).eps == 0.3
