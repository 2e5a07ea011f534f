"""Tests of the analytic targets in score_jax.data.toy: exact densities, scores, samplers."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from score_jax import sde as sde_lib
from score_jax.data import toy

SDES = {
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0),
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0),
}
MIXTURE_PRESETS = ["ring8", "grid25", "moons", "swiss_roll"]


def _mixture() -> toy.GaussianMixture:
  """Three unequal components, one of them anisotropic."""
  return toy.GaussianMixture(
      means=[[-2.0, 0.0], [1.5, 1.0], [0.5, -2.0]],
      stds=[[0.5, 0.5], [0.3, 0.8], [0.6, 0.4]],
      weights=[0.5, 0.3, 0.2],
  )


def _grid(lo: float, hi: float, h: float) -> tuple[np.ndarray, float]:
  """Cell midpoints [G², 2] of a square grid on [lo, hi]² with cell side h, and the cell area."""
  ticks = np.arange(lo + h / 2, hi, h)
  gx, gy = np.meshgrid(ticks, ticks, indexing="ij")
  return np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32), h * h


def _integrate(log_density, lo: float, hi: float, h: float):
  """(∫ p, ∫ x p [2], ∫ x xᵀ p [2, 2]) by the midpoint rule for a 2-D log-density."""
  pts, area = _grid(lo, hi, h)
  p = np.exp(np.asarray(jax.jit(log_density)(pts), np.float64)) * area  # [G²]
  pts = pts.astype(np.float64)
  return p.sum(), p @ pts, np.einsum("n,nd,ne->de", p, pts, pts)


def _assert_moments(x, mean, cov, *, k_se: float = 5.0, cov_rtol: float = 0.05) -> None:
  """Sample mean within k_se standard errors of ``mean``; sample covariance within
  ``cov_rtol`` of ``cov`` relative to its largest entry."""
  x = np.asarray(x, np.float64)
  mean, cov = np.asarray(mean, np.float64), np.asarray(cov, np.float64)
  se = np.sqrt(np.diag(cov) / x.shape[0])
  np.testing.assert_array_less(np.abs(x.mean(axis=0) - mean), k_se * se)
  np.testing.assert_allclose(np.cov(x, rowvar=False), cov, atol=cov_rtol * np.abs(cov).max())


# --- GaussianMixture -------------------------------------------------------------------
def test_mixture_log_prob_integrates_to_one():
  # Midpoint rule, h = 0.02 on [-6, 6]²: quadrature error ~1e-5, mass outside ~1e-9.
  mass, _, _ = _integrate(_mixture().log_prob, -6.0, 6.0, 0.02)
  assert abs(mass - 1.0) < 1e-3


@pytest.mark.parametrize("name", sorted(SDES))
def test_exact_score_equals_autodiff_of_log_prob_t(name):
  sde, gm = SDES[name], _mixture()
  x = gm.sample(jax.random.PRNGKey(0), 64) + 0.5 * jax.random.normal(jax.random.PRNGKey(1), (64, 2))

  @jax.jit
  @jax.vmap
  def both(t):  # [] -> ([64, 2], [64, 2])
    auto = jax.grad(lambda z: jnp.sum(gm.log_prob_t(z, t, sde)))(x)
    return gm.score_fn(sde)(x, t), auto

  ts = jnp.array([1e-3, 0.1, 0.5, 1.0])
  exact, auto = both(ts)
  for i, t in enumerate(ts):
    scale = float(jnp.max(jnp.abs(auto[i])))
    np.testing.assert_allclose(exact[i], auto[i], rtol=1e-4, atol=1e-5 * scale, err_msg=f"{name} t={t}")


@pytest.mark.parametrize("name", sorted(SDES))
def test_log_prob_t_tends_to_log_prob_as_t_to_zero(name):
  sde, gm = SDES[name], _mixture()
  x = gm.sample(jax.random.PRNGKey(2), 256)
  gap = jax.jit(jax.vmap(lambda t: jnp.max(jnp.abs(gm.log_prob_t(x, t, sde) - gm.log_prob(x)))))
  errors = gap(jnp.array([1e-2, 1e-3, 1e-4, 0.0]))
  assert errors[0] > errors[1] > errors[2], errors
  assert errors[2] < 2e-3, errors
  assert errors[3] < 1e-5, errors  # at t = 0 exactly every SDE has m = 1, s = 0


def test_mixture_sample_moments_match_mean_and_covariance():
  gm = _mixture()
  x, _ = _sample_and_log_prob(gm, jax.random.PRNGKey(3), 40_000)
  _assert_moments(x, gm.mean, gm.covariance)


@pytest.mark.parametrize("name", sorted(SDES))
def test_perturbed_samples_match_log_prob_t(name):
  # x(0) ~ mixture, x(t) = sde.perturb(x(0), t, z): its moments must be those of the
  # density exp(log_prob_t), integrated on a grid (and m·mean, m²·cov + s²·I).
  sde, gm, t, n = SDES[name], _mixture(), 0.3, 40_000

  @jax.jit
  def perturbed(key):  # [n, 2]
    k0, kz = jax.random.split(key)
    return sde.perturb(gm.sample(k0, n), jnp.full((n,), t), jax.random.normal(kz, (n, 2)))

  m, s = float(sde.mean_coeff(t)), float(sde.marginal_std(t))
  mass, first, second = _integrate(lambda z: gm.log_prob_t(z, t, sde), -8.0, 8.0, 0.02)
  assert abs(mass - 1.0) < 1e-3
  grid_cov = second - np.outer(first, first)
  np.testing.assert_allclose(first, m * np.asarray(gm.mean), atol=1e-3)
  np.testing.assert_allclose(grid_cov, m**2 * np.asarray(gm.covariance) + s**2 * np.eye(2), atol=2e-3)
  _assert_moments(perturbed(jax.random.PRNGKey(4)), first, grid_cov)


# --- presets ----------------------------------------------------------------------------
def _sample_and_log_prob(target, key: jax.Array, n: int):
  """Samples [n, D] and their log-densities [n], in one compiled call."""
  return jax.jit(lambda k: (lambda x: (x, target.log_prob(x)))(target.sample(k, n)))(key)


@pytest.mark.parametrize("name", sorted(toy.TARGETS))
def test_preset_samples_have_finite_log_prob(name):
  target = toy.get_target(name)
  x, logp = _sample_and_log_prob(target, jax.random.PRNGKey(5), 20_000)
  assert x.shape == (20_000, target.dim) and logp.shape == (20_000,)
  assert bool(jnp.all(jnp.isfinite(logp)))
  if isinstance(target, toy.GaussianMixture):  # sample moments match the analytic ones
    _assert_moments(x, target.mean, target.covariance)


@pytest.mark.parametrize("name", MIXTURE_PRESETS)
def test_mixture_preset_geometry_and_score(name):
  target = toy.get_target(name)
  assert isinstance(target, toy.GaussianMixture)
  means, stds = np.asarray(target.means), np.asarray(target.stds)
  if name in ("ring8", "grid25"):  # isolated modes: neighbours >= 10 stds apart
    dist = np.linalg.norm(means[:, None] - means[None], axis=-1) + np.diag(np.full(len(means), np.inf))
    assert dist.min() >= 10 * stds.max() - 1e-5
  else:  # a chain of components: consecutive means within 2 stds, evenly spaced
    step = np.linalg.norm(np.diff(means, axis=0), axis=1)
    chain = np.delete(step, len(means) // 2 - 1) if name == "moons" else step  # moons: 2 chains
    assert chain.max() < 2 * stds.min() and chain.max() / chain.min() < 1.01
  x = means[:8] + 0.3
  score = jax.jit(target.score_fn(SDES["vp"]))(x, jnp.full((8,), 0.5))
  assert score.shape == (8, 2) and bool(jnp.all(jnp.isfinite(score)))


def test_ring8_and_grid25_geometry():
  ring = toy.eight_gaussians()
  np.testing.assert_allclose(np.linalg.norm(ring.means, axis=1), 4.0, rtol=1e-6)
  np.testing.assert_allclose(ring.stds, 0.25)
  grid = toy.grid25(spacing=1.0, std=0.05)
  np.testing.assert_allclose(np.unique(np.asarray(grid.means)), [-2, -1, 0, 1, 2])
  np.testing.assert_allclose(grid.mean, [0.0, 0.0], atol=1e-6)


def test_swiss_roll_turns_are_separated():
  roll = toy.swiss_roll()
  means = np.asarray(roll.means, np.float64)
  radii = np.linalg.norm(means, axis=1)
  np.testing.assert_allclose(radii[[0, -1]], [4.0 / 3.0, 4.0], rtol=1e-4)
  # Means more than half a turn apart along the spiral (radius = c·angle) are >= 8 stds apart.
  angle = radii / (4.0 / (4.5 * np.pi))
  far = np.abs(np.subtract.outer(angle, angle)) > np.pi
  dist = np.linalg.norm(means[:, None] - means[None], axis=-1)
  assert dist[far].min() >= 8 * 0.15


def test_checkerboard_support_and_density():
  board = toy.get_target("checkerboard")
  x = np.asarray(_sample_and_log_prob(board, jax.random.PRNGKey(8), 20_000)[0])
  cell = np.floor((x + 4.0) / 2.0).astype(int)  # 4×4 board on [-4, 4)², squares of side 2
  assert np.all((cell >= 0) & (cell <= 3))
  assert np.all(cell.sum(axis=1) % 2 == 0)  # dark squares only
  counts = np.bincount(cell[:, 0] * 4 + cell[:, 1], minlength=16)[[0, 2, 5, 7, 8, 10, 13, 15]]
  assert np.all(np.abs(counts / 20_000 - 1 / 8) < 0.01)  # each dark square ~1/8 (5 s.e.)
  # Cells of side 0.05 tile each square exactly, so the midpoint rule is exact.
  mass, _, _ = _integrate(board.log_prob, -5.0, 5.0, 0.05)
  assert abs(mass - 1.0) < 1e-4
  np.testing.assert_allclose(board.log_prob(jnp.array([[-3.0, -3.0], [-1.0, -3.0], [4.5, 0.0]])),
                             [-math.log(32.0), -np.inf, -np.inf])


def test_funnel_log_prob_matches_scipy_and_samples():
  funnel = toy.get_target("funnel", dim=4)
  x = np.asarray(_sample_and_log_prob(funnel, jax.random.PRNGKey(9), 20_000)[0], np.float64)
  assert x.shape == (20_000, 4)
  v = x[:, 0]
  expected = stats.norm.logpdf(v, 0.0, 3.0) + stats.norm.logpdf(x[:, 1:], 0.0, np.exp(v / 2)[:, None]).sum(axis=1)
  np.testing.assert_allclose(funnel.log_prob(x[:500]), expected[:500], rtol=1e-5, atol=1e-4)
  assert abs(v.mean()) < 5 * 3.0 / math.sqrt(len(v)) and abs(v.std() / 3.0 - 1) < 0.03
  # x_i / e^{v/2} is standard normal whatever v is.
  z = x[:, 1:] / np.exp(v / 2)[:, None]
  assert stats.kstest(z.ravel(), "norm").pvalue > 1e-3


@pytest.mark.parametrize("name", ["checkerboard", "funnel"])
def test_density_only_targets_have_no_exact_score(name):
  with pytest.raises(NotImplementedError, match="only GaussianMixture"):
    toy.get_target(name).score_fn(SDES["ve"])


def test_bad_input():
  with pytest.raises(ValueError, match="'nope'.*ring8"):
    toy.get_target("nope")
  with pytest.raises(ValueError, match="bogus"):
    toy.get_target("ring8", bogus=1.0)
  with pytest.raises(ValueError, match="Funnel.dim"):
    toy.get_target("funnel", dim=1)
  with pytest.raises(ValueError, match="Checkerboard.half_width"):
    toy.Checkerboard(half_width=0.0)


def _random_gaussian(d=5, seed=0):
  rng = np.random.default_rng(seed)
  a = rng.normal(size=(d, d))
  return toy.Gaussian(mean=rng.normal(size=d), cov=a @ a.T / d + 0.1 * np.eye(d)), a @ a.T / d + 0.1 * np.eye(d)


def test_full_covariance_gaussian_score_density_and_samples():
  """Gaussian(μ, Σ): log_prob equals scipy's, the exact score equals autodiff of log_prob_t
  under each SDE, and samples have mean μ and covariance Σ."""
  g, cov = _random_gaussian()
  x = jax.jit(g.sample, static_argnums=1)(jax.random.PRNGKey(0), 40_000)
  ref = stats.multivariate_normal(np.asarray(g.mean, np.float64), cov)
  np.testing.assert_allclose(g.log_prob(x[:10]), ref.logpdf(np.asarray(x[:10], np.float64)), rtol=1e-5, atol=1e-4)
  # Sample covariance entries have standard error ≈ √((Σ_ii Σ_jj + Σ_ij²)/n) ≤ 0.02 here.
  np.testing.assert_allclose(np.cov(np.asarray(x).T), cov, atol=0.04)
  np.testing.assert_allclose(np.mean(np.asarray(x), 0), g.mean, atol=0.03)
  t = jnp.array([1e-3, 0.2, 0.5, 0.9])
  for sde in [sde_lib.VESDE(), sde_lib.VPSDE(), sde_lib.SubVPSDE()]:
    auto = jax.vmap(jax.grad(lambda a, b: g.log_prob_t(a[None], b, sde)[0]))(x[:4], t)
    np.testing.assert_allclose(g.score(x[:4], t, sde), auto, rtol=1e-4, atol=1e-4)


def test_high_dimensional_presets():
  mix = toy.get_target("mixture_nd")
  assert (mix.dim, mix.num_components) == (16, 8)
  gap = np.linalg.norm(np.asarray(mix.means)[:, None] - np.asarray(mix.means)[None], axis=-1)
  assert gap[gap > 0].min() > 10 * float(np.max(mix.stds))  # well separated
  gauss = toy.get_target("correlated_gaussian")
  assert gauss.dim == 64
  np.testing.assert_allclose([float(gauss.eigenvalues.min()), float(gauss.eigenvalues.max())], [0.01, 1.0], rtol=1e-4)
  with pytest.raises(ValueError, match="positive definite"):
    toy.Gaussian(mean=[0.0, 0.0], cov=[[1.0, 2.0], [2.0, 1.0]])
