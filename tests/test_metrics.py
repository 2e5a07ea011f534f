"""Tests of the sample metrics in score_jax.metrics.samples against closed-form values."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.data import toy
from score_jax.metrics import samples as metrics


def _normal(seed: int, n: int, d: int) -> np.ndarray:
  return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)  # [n, d]


# --- sliced Wasserstein -----------------------------------------------------------------
def test_sliced_w2_of_a_shift_along_random_directions():
  # y = x + δ e_j moves the projections on every direction u by exactly δ u_j, so
  # SW(x, y)² = mean_u (δ u_j)², whose expectation over u uniform on the sphere is δ²/D.
  key, delta, d = jax.random.PRNGKey(0), 2.0, 2
  x = _normal(1, 1000, d)
  sw = [metrics.sliced_wasserstein(key, x, x + delta * np.eye(d, dtype=np.float32)[j], num_projections=512)
        for j in range(d)]
  assert all(isinstance(v, float) for v in sw)
  # Same key, same directions: Σ_j mean_u (δ u_j)² = δ² exactly, since ‖u‖ = 1.
  assert abs(sw[0] ** 2 + sw[1] ** 2 - delta**2) < 1e-4
  # E[SW²] = δ²/D; with 512 directions std(mean u₁²)/E u₁² = √(1/8/512)/0.5 ≈ 3 %, so the
  # square root is within 1.6 % (1 s.d.) of δ/√D: 5 % is 3 s.d.
  assert abs(sw[0] / (delta / math.sqrt(d)) - 1) < 0.05
  # Two samples of one distribution: small relative to that shift (0.06–0.08 over seeds).
  assert metrics.sliced_wasserstein(key, x, _normal(2, 1000, d)) < 0.1 * delta / math.sqrt(d)


def test_sliced_w2_of_independent_samples_in_1d():
  # In 1-D the directions are ±1 and SW = W₂: for N(0, 1) against N(δ, 1), W₂ = δ.  With
  # n = 4000 independent samples, W₂² − δ² ≈ −2δ(x̄ − ȳ) + O(1e-3), s.d. ≈ 4·0.022 ≈ 0.09 on δ² = 4: 1.1 % on W₂.
  key = jax.random.PRNGKey(3)
  x, y = _normal(4, 4000, 1), _normal(5, 4000, 1) + 2.0
  assert abs(metrics.sliced_wasserstein(key, x, y) / 2.0 - 1) < 0.05
  assert abs(metrics.sliced_wasserstein(key, x[:2000], y) / 2.0 - 1) < 0.05  # unequal sizes: s.d. ≈ 1.4 %
  assert abs(metrics.sliced_wasserstein(key, x, x + 1.5) - 1.5) < 1e-4  # a copy: exact


def test_sliced_w2_unequal_sizes_use_interpolated_quantiles():
  key = jax.random.PRNGKey(6)
  # x = {0, 1} and y = {0, ⅓, ⅔, 1} compared at levels ⅛, ⅜, ⅝, ⅞: x's quantiles there are
  # (0, ¼, ¾, 1) (clamped at the ends), so W₂² = 2·(1/12)²/4.
  x, y = np.array([[0.0], [1.0]]), np.array([[0.0], [1 / 3], [2 / 3], [1.0]])
  assert abs(metrics.sliced_wasserstein(key, x, y) - math.sqrt(2 / 144 / 4)) < 1e-6
  assert abs(metrics.sliced_wasserstein(key, y, x) - math.sqrt(2 / 144 / 4)) < 1e-6
  # Every point twice: the same empirical distribution, up to interpolation between neighbours.
  x = _normal(7, 1000, 2)
  assert metrics.sliced_wasserstein(key, x, np.concatenate([x, x])) < 0.02
  with pytest.raises(ValueError, match="same dimension"):
    metrics.sliced_wasserstein(key, x, np.zeros((10, 3)))
  with pytest.raises(ValueError, match="num_projections"):
    metrics.sliced_wasserstein(key, x, x, num_projections=0)


# --- MMD ----------------------------------------------------------------------------------
def _mmd_reference(x: np.ndarray, y: np.ndarray, bandwidths) -> float:
  """Unbiased MMD² with explicit loops (Gretton et al. 2012, eq. 3)."""
  k = lambda a, b: sum(math.exp(-np.sum((a - b) ** 2) / (2 * h * h)) for h in bandwidths)
  n, m = len(x), len(y)
  kxx = sum(k(x[i], x[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  kyy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  kxy = sum(k(x[i], y[j]) for i in range(n) for j in range(m)) / (n * m)
  return kxx + kyy - 2 * kxy


def test_mmd_matches_reference_and_median_heuristic():
  x, y = _normal(8, 5, 2), _normal(9, 7, 2) + 0.5
  np.testing.assert_allclose(metrics.mmd(jnp.asarray(x), y, bandwidths=[0.5, 2.0]),
                             _mmd_reference(x, y, [0.5, 2.0]), rtol=1e-5, atol=1e-6)
  z = np.concatenate([x, y]).astype(np.float64)
  pair = [np.linalg.norm(z[i] - z[j]) for i in range(12) for j in range(12) if i != j]
  h = float(np.median(pair))
  np.testing.assert_allclose(metrics.median_bandwidth(x, y), h, rtol=1e-5)
  np.testing.assert_allclose(metrics.mmd(x, y), _mmd_reference(x, y, [h / 2, h, 2 * h]), rtol=1e-4, atol=1e-6)


def test_mmd_unbiased_and_detects_a_shift():
  n, repeats = 200, 20
  same = np.array([metrics.mmd(_normal(10 + i, n, 2), _normal(50 + i, n, 2)) for i in range(repeats)])
  # Unbiased: the mean over repeats is 0 up to its standard error (here within 3 s.e.).
  se = same.std(ddof=1) / math.sqrt(repeats)
  assert abs(same.mean()) < 3 * se, (same.mean(), se)
  assert np.any(same < 0)  # an unbiased estimate of a zero quantity must go negative
  shifted = metrics.mmd(_normal(90, n, 2), _normal(91, n, 2) + np.array([1.0, 0.0], np.float32))
  assert shifted > 10 * same.std(ddof=1) and shifted > 0.05, (shifted, same.std())


def test_mmd_bad_input():
  x = _normal(0, 10, 2)
  with pytest.raises(ValueError, match="bandwidths"):
    metrics.mmd(x, x, bandwidths=[1.0, -1.0])
  with pytest.raises(ValueError, match="N >= 2"):
    metrics.mmd(x[:1], x)


# --- mode statistics ------------------------------------------------------------------------
def test_mode_statistics_on_exact_and_mode_dropped_samples():
  target = toy.eight_gaussians()
  x, labels = target.sample_with_labels(jax.random.PRNGKey(2), 8000)
  stats = metrics.mode_statistics(x, target)
  assert stats["coverage"] == 1.0
  assert stats["max_share_rel_error"] < 0.10  # 1 s.e. of a share is ~3 %
  assert stats["outlier_fraction"] == 0.0
  assert stats["max_mean_error"] < 0.03  # 1 s.e. of a mode mean is 0.25/√1000 ≈ 0.008
  assert stats["max_std_rel_error"] < 0.08
  dropped = metrics.mode_statistics(np.asarray(x)[np.asarray(labels) != 3], target)
  assert dropped["coverage"] == 7 / 8 and dropped["share"][3] == 0.0


# --- NLL ----------------------------------------------------------------------------------
def test_nll_of_target_samples_is_its_entropy():
  # A single Gaussian: H = (D/2) log(2πe σ²); the NLL of n samples has s.e. √(D/2)/√n ≈ 0.007.
  sigma, d, n = 0.7, 2, 20_000
  gauss = toy.GaussianMixture(means=np.zeros((1, d)), stds=[sigma])
  entropy = 0.5 * d * math.log(2 * math.pi * math.e * sigma**2)
  value = metrics.nll(gauss.sample(jax.random.PRNGKey(3), n), gauss)
  assert isinstance(value, float) and abs(value - entropy) < 0.03
  # Eight modes 12 stds apart: H = log 8 + the entropy of one component, to within 1e-6.
  ring = toy.eight_gaussians()
  ring_entropy = math.log(8) + 0.5 * d * math.log(2 * math.pi * math.e * 0.25**2)
  assert abs(metrics.nll(ring.sample(jax.random.PRNGKey(4), n), ring) - ring_entropy) < 0.03
  # Uniform checkerboard: exactly log(area) = log(8 · 2²).
  board = toy.get_target("checkerboard")
  assert abs(metrics.nll(board.sample(jax.random.PRNGKey(5), 1000), board) - math.log(32)) < 1e-5
  assert metrics.nll(np.array([[-1.0, -3.0]]), board) == math.inf  # a light square
  with pytest.raises(ValueError, match="shape"):
    metrics.nll(np.zeros((4, 3)), board)
