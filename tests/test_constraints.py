"""Inpainting and colorization as an option of the samplers (score_jax.sampling.constraints),
and the exact conditionals of data.toy they are checked against."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from mixture_bar import assert_rejected_before_tracing, count_evaluations

from score_jax import guidance, sampling
from score_jax import sde as sde_lib
from score_jax.data import toy
from score_jax.metrics.samples import mode_statistics
from score_jax.sampling import common, constraints, steps

SDES = {
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0),
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0),
}
M = constraints.color_matrix()


# --- the pieces, pinned against their formulas ------------------------------------------------

def test_color_matrix_has_the_exact_entries_and_is_orthogonal():
  a, b, c = 1 / math.sqrt(3), 1 / math.sqrt(6), 1 / math.sqrt(2)
  np.testing.assert_array_equal(M, [[a, -2 * b, 0.0], [a, b, c], [a, b, -c]])
  np.testing.assert_allclose(M @ M.T, np.eye(3), atol=1e-15)
  np.testing.assert_allclose(M[:, 0], 1 / math.sqrt(3))  # decoupled channel 0 = (r + g + b)/√3
  # The report's printed 3-digit rounding (eq. 5.2).
  np.testing.assert_allclose(M, [[0.577, -0.816, 0], [0.577, 0.408, 0.707], [0.577, 0.408, -0.707]], atol=6e-4)


@pytest.mark.parametrize("name", list(SDES))
def test_replacement_step_formula(name):
  sde = SDES[name]
  k1, k2, k3 = jax.random.split(jax.random.PRNGKey(0), 3)
  x, y, z = (jax.random.normal(k, (4, 3)) for k in (k1, k2, k3))
  t = jnp.array([0.1, 0.4, 0.7, 1.0])
  m, s = sde.mean_coeff(t)[:, None], sde.marginal_std(t)[:, None]
  mask = jnp.array([1.0, 0.0, 1.0])
  out = constraints.Replacement(y, mask).project(sde, x, t, z)
  np.testing.assert_allclose(out, jnp.where(mask > 0, m * y + s * z, x), rtol=1e-6)
  # In the color basis: the luminance of u = x @ M is replaced, the chrominance kept.
  out = constraints.Replacement(y, jnp.array([1.0, 0.0, 0.0]), basis=M).project(sde, x, t, z)
  u, uy = x @ M, y @ M
  np.testing.assert_allclose(out @ M, jnp.concatenate([m * uy[:, :1] + s * z[:, :1], u[:, 1:]], axis=1), atol=1e-5)


def test_finalize_keeps_known_values_exactly():
  x = jax.random.normal(jax.random.PRNGKey(1), (5, 4, 4, 1))
  y = jax.random.uniform(jax.random.PRNGKey(2), (5, 4, 4, 1))
  mask = jnp.zeros((1, 4, 4, 1)).at[:, 1:3, 1:3].set(1.0)
  out = constraints.Replacement(y, mask).finalize(x)
  np.testing.assert_array_equal(np.where(mask > 0, out, 0.0), np.where(mask > 0, y, 0.0))
  np.testing.assert_array_equal(np.where(mask > 0, 0.0, out), np.where(mask > 0, 0.0, x))


def test_repaint_jump_back_is_the_forward_transition():
  """With an identity step, resample = 3 leaves x ← a(a x + √q z₁) + √q z₂: two jumps t' → t."""
  sde = SDES["vp"]
  x = jax.random.normal(jax.random.PRNGKey(3), (4, 2))
  keys = common.per_sample_keys(jax.random.PRNGKey(4), 4)
  t, t_next = jnp.full((4,), 0.5), jnp.full((4,), 0.45)
  c = constraints.Replacement(jnp.zeros((4, 2)), jnp.array([1.0, 0.0]), resample=3)
  seen = []

  def step(x, r):
    seen.append(r)
    return x

  out = constraints.repeat(c, sde, step, x, t, t_next, keys, 7)
  a, q = sde.transition_coeffs(t_next, t)
  z1, z2 = (constraints.noise(keys, (4, 2), 7 * 3 + r, stream=1) for r in (1, 2))
  expected = a[0] * (a[0] * x + jnp.sqrt(q[0]) * z1) + jnp.sqrt(q[0]) * z2
  np.testing.assert_allclose(out, expected, rtol=1e-5)
  assert seen[0] == 0 and len(seen) == 2  # the first call, then one traced loop body


def test_one_pc_step_with_replacement():
  """num_steps = 1, no corrector: project the prior sample at T, a reverse-diffusion step to
  eps, then the known coordinate set exactly."""
  sde = SDES["ve"]
  target = toy.GaussianMixture(means=[[-1.0, 0.0], [1.0, 1.0]], stds=[0.5, 0.5])
  score = target.score_fn(sde)
  y = jnp.full((6, 2), 0.25)
  c = constraints.Replacement(y, jnp.array([1.0, 0.0]))
  key = jax.random.PRNGKey(5)
  x, nfe = sampling.sample(key, sde, score, (6, 2), method="pc", constraint=c, num_steps=1, corrector="none",
                           denoise=False)
  keys = common.per_sample_keys(key, 6)
  x0 = sde.prior_std * common.normal(keys, (6, 2), 0)
  x0 = c.project(sde, x0, jnp.full((6,), sde.T), constraints.noise(keys, (6, 2), 0))
  step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, 1)
  x1, _ = steps.reverse_diffusion(sde, score, x0, jnp.full((6,), sde.T), jnp.full((6,), sde.eps),
                                  common.normal(step_keys, (6, 2), 0))
  assert nfe == 1
  np.testing.assert_array_equal(x[:, 0], 0.25)
  np.testing.assert_allclose(x[:, 1], x1[:, 1], rtol=1e-5)


@pytest.mark.parametrize("method,opts", [
    ("pc", dict(num_steps=4)), ("ald", dict(num_steps=3, n_steps_each=2)), ("langevin", dict(num_steps=3)),
    ("edm", dict(num_steps=4)), ("ddim", dict(num_steps=4)), ("exponential", dict(num_steps=4)),
    ("dpm_solver", dict(num_steps=4)), ("ode", dict(solver="heun", num_steps=4)), ("adaptive", dict(rel_tol=0.5)),
])
def test_every_fixed_grid_sampler_keeps_known_coordinates(method, opts):
  sde = SDES["vp"]
  target = toy.GaussianMixture(means=[[-1.0, 0.0], [1.0, 1.0]], stds=[0.5, 0.5])
  y = jax.random.normal(jax.random.PRNGKey(6), (5, 2))
  c = constraints.Replacement(y, jnp.array([0.0, 1.0]))
  x, _ = sampling.sample(jax.random.PRNGKey(7), sde, target.score_fn(sde), (5, 2), method=method, constraint=c, **opts)
  np.testing.assert_array_equal(x[:, 1], y[:, 1])
  assert np.all(np.isfinite(x)) and np.all(x[:, 0] != y[:, 0])


def test_resampling_multiplies_the_evaluations():
  c = constraints.Replacement(jnp.zeros((8, 2)), jnp.array([1.0, 0.0]), resample=3)
  nfe, calls = count_evaluations("vp", "pc", dict(num_steps=5, n_steps=1, denoise=True, constraint=c))
  assert nfe == calls == 5 * 3 * 2 + 1
  nfe, calls = count_evaluations("vp", "ddim", dict(num_steps=5, constraint=c))
  assert nfe == calls == 5 * 3


@pytest.mark.parametrize("kwargs,field", [
    (dict(method="pc", constraint=constraints.Replacement(jnp.zeros((3, 2)), jnp.ones(2))), "values"),
    (dict(method="pc", constraint=constraints.Replacement(jnp.zeros((4, 2)), jnp.ones(3))), "mask"),
    (dict(method="pc", constraint=constraints.Replacement(jnp.zeros((4, 2)), jnp.full(2, 0.5))), "mask"),
    (dict(method="pc", constraint=constraints.Replacement(jnp.zeros((4, 2)), jnp.ones(2), resample=0)), "resample"),
    (dict(method="pc", constraint=constraints.Replacement(jnp.zeros((4, 2)), jnp.ones(2), basis=np.eye(3))), "basis"),
    (dict(method="ode", constraint=constraints.Replacement(jnp.zeros((4, 2)), jnp.ones(2))), "solver"),
    (dict(method="edm", constraint=constraints.Replacement(jnp.zeros((4, 2)), jnp.ones(2), resample=2)), "resample"),
    (dict(method="pc", constraint="box"), "constraint"),
])
def test_bad_constraints_are_rejected_before_tracing(kwargs, field):
  assert_rejected_before_tracing(SDES["vp"], kwargs.pop("method"), kwargs, field)


# --- the exact references ----------------------------------------------------------------------

def test_mixture_condition_is_the_exact_conditional_density():
  """log p(u_B | u_A = a) = log p(x) − log p_A(a): the difference must not depend on u_B."""
  mix = toy.GaussianMixture(means=[[-2.0, 1.0, 0.0], [1.0, -1.0, 2.0], [0.5, 2.0, -1.0]], stds=[0.5, 0.8, 0.6],
                            weights=[0.2, 0.5, 0.3])
  for basis in (None, M):
    known = np.array([True, False, False])
    a = np.array([0.4, 0.0, 0.0])
    cond = mix.condition(known, a, basis=basis)
    ub = np.random.default_rng(0).normal(size=(5, 2)) * 2.0
    u = np.concatenate([np.full((5, 1), 0.4), ub], axis=1)
    x = u if basis is None else u @ M.T
    diff = np.asarray(mix.log_prob(jnp.asarray(x))) - np.asarray(cond.log_prob(jnp.asarray(ub)))
    np.testing.assert_allclose(diff, diff[0], atol=1e-5)
  with pytest.raises(ValueError, match="isotropic"):
    toy.GaussianMixture(means=[[0.0, 0.0, 0.0]], stds=[[1.0, 2.0, 1.0]]).condition(known, a, basis=M)


def test_gaussian_condition_is_the_exact_conditional_density():
  g = toy.correlated_gaussian(dim=4, condition=10.0, seed=1)
  known = np.array([True, False, True, False])
  a = np.array([0.3, 0.0, -0.5, 0.0])
  cond = g.condition(known, a)
  xb = np.random.default_rng(1).normal(size=(6, 2))
  x = np.zeros((6, 4))
  x[:, known], x[:, ~known] = a[known], xb
  diff = np.asarray(g.log_prob(jnp.asarray(x, jnp.float32))) - np.asarray(cond.log_prob(jnp.asarray(xb, jnp.float32)))
  np.testing.assert_allclose(diff, diff[0], atol=2e-4)


# --- What it must show 1: inpainting and colorization reproduce the exact conditional ---------

# One known coordinate that is informative about the mode: given x_0 = 1 the exact weights are
# 0.354 / 0.646 (against 0.5 / 0.5 a priori).
INPAINT_TARGET = toy.GaussianMixture(means=[[-0.3, -2.0], [0.3, 2.0]], stds=[[1.0, 0.5], [1.0, 0.4]])
# Three colour channels, isotropic components (so luminance conditioning stays axis-aligned):
# given the luminance 0.8 the exact chrominance weights are 0.385 / 0.615 (0.5 / 0.5 a priori).
COLOR_TARGET = toy.GaussianMixture(means=np.array([[0.0, -2.0, 0.0], [0.4, 2.0, 0.5]]) @ M.T, stds=[0.8, 0.7])


# EDM with churn above σ = 0.5: under VE (σ_max = 20) the deterministic sampler would carry the
# prior's miss of p_T's mean (|μ|σ_data/σ_max, up to 0.05 here) to the output.
EDM = dict(method="edm", num_steps=40, s_churn=40.0, s_min=0.5)


def _assert_matches(samples, cond, mean_tol=0.06):
  stats = mode_statistics(samples, cond)
  assert stats["outlier_fraction"] <= 0.01, stats
  assert stats["max_share_rel_error"] <= 0.20, (stats["share"], np.asarray(cond.weights))
  assert stats["max_mean_error"] <= mean_tol, stats["mean"]
  assert stats["max_std_rel_error"] <= 0.10, stats["std"]


@pytest.mark.parametrize("name", list(SDES))
def test_inpainting_and_colorization_reproduce_the_exact_conditional(name):
  """Posterior guidance (Tweedie covariance) with replacement (EDM, 40 steps, churn above
  σ = 0.5) on the exact score: the unknown coordinates follow the exact conditional of
  data.toy, the known ones come back exactly.  Replacement alone does not: it leaves the
  mode weights near their prior 0.5 / 0.5 (see BENCHMARKS.md)."""
  sde, n = SDES[name], 2000
  y = jnp.zeros((n, 2)).at[:, 0].set(1.0)
  mask = jnp.array([1.0, 0.0])
  score = guidance.posterior_guidance(INPAINT_TARGET.score_fn(sde), sde, y, mask, covariance="tweedie")
  x, _ = sampling.sample(jax.random.PRNGKey(0), sde, score, (n, 2), **EDM, constraint=constraints.Replacement(y, mask))
  np.testing.assert_array_equal(x[:, 0], 1.0)
  _assert_matches(np.asarray(x)[:, 1:], INPAINT_TARGET.condition(np.array([True, False]), np.array([1.0, 0.0])))

  lum = 0.8
  gray = jnp.full((n, 3), lum / math.sqrt(3.0))  # three equal channels of luminance 0.8
  mask = jnp.array([1.0, 0.0, 0.0])
  score = guidance.posterior_guidance(COLOR_TARGET.score_fn(sde), sde, gray, mask, basis=M, covariance="tweedie")
  x, _ = sampling.sample(jax.random.PRNGKey(1), sde, score, (n, 3), **EDM,
                         constraint=constraints.Replacement(gray, mask, basis=M))
  u = np.asarray(x, np.float64) @ M
  np.testing.assert_allclose(u[:, 0], lum, atol=2e-6)  # the luminance of every output is the input's
  # Means within 0.1 = 1/8 of a component std: posterior guidance is an approximation, and here
  # it pushes the two chrominance modes apart by about 0.06 (measured, all three SDEs).
  _assert_matches(u[:, 1:], COLOR_TARGET.condition(np.array([True, False, False]), np.array([lum, 0.0, 0.0]),
                                                   basis=M), mean_tol=0.10)


# --- traced observations (issue 23, point 2) -----------------------------------------------------

def test_a_second_observation_of_the_same_shape_reuses_the_compiled_sampler():
  """constraints.Posterior carries values, mask and basis as traced arrays: a new image of the
  same shape runs the compiled sampler again (no trace of the score, one jit cache entry), and
  gives what the closure of guidance.posterior_guidance plus Replacement gives — which, holding
  its arrays, is traced and compiled anew for every image."""
  sde = SDES["vp"]
  traces = []

  def score(x, t):
    traces.append(x.shape)
    return INPAINT_TARGET.score(x, t, sde)

  mask = jnp.array([1.0, 0.0])
  opts = dict(method="pc", num_steps=3, corrector="none", denoise=False)
  key = jax.random.PRNGKey(0)
  outs = []
  for a in (0.5, -1.0, 2.0):
    obs = constraints.Observation(jnp.zeros((4, 2)).at[:, 0].set(a), mask)
    c = constraints.Posterior.of(obs, covariance="tweedie")
    size = sampling._sample_compiled._cache_size()  # pylint: disable=protected-access
    x, _ = sampling.sample(key, sde, score, (4, 2), constraint=c, **opts)
    outs.append((np.asarray(x), sampling._sample_compiled._cache_size() - size, len(traces)))  # pylint: disable=protected-access
  assert [grew for _, grew, _ in outs] == [1, 0, 0]  # compiled once
  assert outs[1][2] == outs[2][2] == outs[0][2]  # the score was not traced again
  np.testing.assert_array_equal(outs[2][0][:, 0], 2.0)
  # The closure form: the same samples, a new trace for each image.
  y = jnp.zeros((4, 2)).at[:, 0].set(2.0)
  before = len(traces)
  closure = guidance.posterior_guidance(score, sde, y, mask, covariance="tweedie")
  x, _ = sampling.sample(key, sde, closure, (4, 2), constraint=constraints.Replacement(y, mask), **opts)
  assert len(traces) > before
  np.testing.assert_allclose(np.asarray(x), outs[2][0], rtol=1e-5, atol=1e-6)
  # replace=False: guidance alone, the known coordinate not imposed.
  c = constraints.Posterior(y, mask, covariance="tweedie", replace=False)
  x, _ = sampling.sample(key, sde, score, (4, 2), constraint=c, **opts)
  closure_only, _ = sampling.sample(key, sde, closure, (4, 2), **opts)
  np.testing.assert_allclose(np.asarray(x), np.asarray(closure_only), rtol=1e-5, atol=1e-6)
  assert np.all(np.asarray(x)[:, 0] != 2.0)


@pytest.mark.parametrize("make,field", [
    (lambda: constraints.Posterior(jnp.zeros((4, 2)), jnp.full(2, 0.5)), "mask"),
    (lambda: constraints.Posterior(jnp.zeros((4, 2)), jnp.ones(2), covariance="full"), "covariance"),
    (lambda: constraints.Posterior(jnp.zeros((4, 2)), jnp.ones(2), scale=-1.0), "scale"),
    (lambda: constraints.Posterior(jnp.zeros((4, 2)), jnp.ones(2), resample=2, replace=False), "resample"),
])
def test_bad_posterior_observations_are_rejected_before_tracing(make, field):
  assert_rejected_before_tracing(SDES["vp"], "pc", dict(constraint=make()), field)


def test_posterior_guidance_refuses_a_non_binary_mask():
  with pytest.raises(ValueError, match=r"^constraint mask must hold only 0 \(sampled\) and 1 \(known\)"):
    guidance.posterior_guidance(lambda x, t: x, SDES["vp"], jnp.zeros((4, 2)), jnp.array([0.5, 0.0]))
