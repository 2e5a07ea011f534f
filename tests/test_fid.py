"""FID, KID, Inception Score and k-NN precision / recall on synthetic feature arrays."""

import numpy as np
import pytest
import scipy.linalg

from score_jax.metrics import fid


def _random_spd(rng, d, *, rank=None):
  a = rng.standard_normal((d, rank or 2 * d))
  return a @ a.T / a.shape[1]


# ---- Statistics ----


def test_feature_statistics_match_numpy():
  x = np.random.default_rng(0).standard_normal((50, 6))
  mu, sigma = fid.feature_statistics(x)
  np.testing.assert_allclose(mu, x.mean(axis=0))
  np.testing.assert_allclose(sigma, np.cov(x, rowvar=False), rtol=1e-12)
  assert mu.dtype == sigma.dtype == np.float64


def test_feature_stats_save_load_refuses_overwrite(tmp_path):
  x = np.random.default_rng(1).standard_normal((20, 4)).astype(np.float32)
  stats = fid.FeatureStats.from_features(x)
  path = tmp_path / "stats.npz"
  stats.save(path)
  loaded = fid.FeatureStats.load(path)
  np.testing.assert_array_equal(loaded.mu, stats.mu)
  np.testing.assert_array_equal(loaded.sigma, stats.sigma)
  assert loaded.num_samples == 20
  with pytest.raises(FileExistsError):
    stats.save(path)
  np.savez(tmp_path / "other.npz", mu=stats.mu)
  with pytest.raises(ValueError, match="missing"):
    fid.FeatureStats.load(tmp_path / "other.npz")


@pytest.mark.parametrize("call", [
    lambda x: fid.feature_statistics(x),
    lambda x: fid.kid(x, x, num_subsets=2, subset_size=5),
    lambda x: fid.inception_score(x, num_splits=2),
    lambda x: fid.precision_recall(x, x),
])
def test_non_finite_rows_raise_with_count(call):
  x = np.random.default_rng(2).standard_normal((10, 3))
  x[1, 0] = np.nan
  x[4, 2] = np.inf
  x[7] = np.nan
  with pytest.raises(ValueError, match="3 of 10 rows with non-finite"):
    call(x)


# ---- Fréchet distance ----


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_frechet_distance_matches_scipy_sqrtm(seed):
  rng = np.random.default_rng(seed)
  d = 24
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  s1, s2 = _random_spd(rng, d), _random_spd(rng, d)
  covmean = scipy.linalg.sqrtm(s1 @ s2).real
  reference = np.sum((mu1 - mu2) ** 2) + np.trace(s1 + s2 - 2 * covmean)
  value = fid.frechet_distance(mu1, s1, mu2, s2)
  assert isinstance(value, float)
  np.testing.assert_allclose(value, reference, rtol=1e-6)
  np.testing.assert_allclose(fid.trace_sqrt_product(s1, s2), np.trace(covmean), rtol=1e-8)


def test_frechet_distance_closed_forms():
  rng = np.random.default_rng(3)
  d = 10
  mu1, mu2 = rng.standard_normal(d), rng.standard_normal(d)
  a, b = rng.uniform(0.1, 3.0, d), rng.uniform(0.1, 3.0, d)
  closed = np.sum((mu1 - mu2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
  np.testing.assert_allclose(fid.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)), closed, rtol=1e-10)
  # Commuting covariances U diag(a) Uᵀ, U diag(b) Uᵀ have the same closed form.
  u, _ = np.linalg.qr(rng.standard_normal((d, d)))
  s1, s2 = (u * a) @ u.T, (u * b) @ u.T
  np.testing.assert_allclose(fid.frechet_distance(mu1, s1, mu2, s2), closed, rtol=1e-8)
  # Identical Gaussians, including a rank-deficient covariance (fewer samples than dimensions).
  singular = _random_spd(rng, d, rank=4)
  assert abs(fid.frechet_distance(mu1, singular, mu1, singular)) < 1e-9 * np.trace(singular)
  assert abs(fid.frechet_distance(mu1, s1, mu1, s1)) < 1e-9 * np.trace(s1)


def test_frechet_distance_from_features_and_shape_errors():
  rng = np.random.default_rng(4)
  x = rng.standard_normal((400, 5))
  y = rng.standard_normal((400, 5)) * 2.0 + 1.0
  value = fid.frechet_distance(*fid.feature_statistics(x), *fid.feature_statistics(y))
  assert abs(value - (5 * 1.0 + 5 * (2.0 - 1.0) ** 2)) < 1.5  # ‖Δμ‖² + Σ (σ2 − σ1)²
  with pytest.raises(ValueError, match="sigma1"):
    fid.frechet_distance(np.zeros(3), np.eye(2), np.zeros(3), np.eye(3))
  with pytest.raises(ValueError, match="non-finite"):
    fid.frechet_distance(np.array([0.0, np.nan]), np.eye(2), np.zeros(2), np.eye(2))


# ---- KID ----


def _mmd2_brute_force(x, y):
  d = x.shape[1]
  k = lambda a, b: (float(np.dot(a, b)) / d + 1.0) ** 3
  m, n = len(x), len(y)
  xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
  yy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
  xy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
  return xx + yy - 2 * xy


def test_kid_matches_brute_force():
  rng = np.random.default_rng(5)
  x, y = rng.standard_normal((12, 4)), rng.standard_normal((12, 4)) + 0.3
  reference = _mmd2_brute_force(x, y)
  np.testing.assert_allclose(fid.mmd2_unbiased(x, y), reference, rtol=1e-10)
  # One subset of all rows is a permutation of each set: the same estimate, std 0.
  mean, std = fid.kid(x, y, num_subsets=1, subset_size=12)
  np.testing.assert_allclose(mean, reference, rtol=1e-10)
  assert std == 0.0
  np.testing.assert_allclose(fid.mmd2_unbiased(x, y[:9]), _mmd2_brute_force(x, y[:9]), rtol=1e-10)


def test_kid_is_unbiased_for_equal_distributions():
  rng = np.random.default_rng(6)
  estimates = []
  for trial in range(300):
    x, y = rng.standard_normal((30, 6)), rng.standard_normal((30, 6))
    estimates.append(fid.kid(x, y, num_subsets=1, subset_size=30, seed=trial)[0])
  estimates = np.asarray(estimates)
  stderr = estimates.std() / np.sqrt(len(estimates))
  assert abs(estimates.mean()) < 4 * stderr
  assert np.mean(estimates < 0) > 0.2  # the unbiased estimate is negative about half the time


def test_kid_positive_for_shifted_distributions_and_checks_subset_size():
  rng = np.random.default_rng(7)
  x, y = rng.standard_normal((300, 8)), rng.standard_normal((300, 8)) + 0.5
  mean, std = fid.kid(x, y, num_subsets=20, subset_size=100)
  assert mean > 0.01 and mean > 5 * std / np.sqrt(20)
  same, _ = fid.kid(x, rng.standard_normal((300, 8)), num_subsets=20, subset_size=100)
  assert same < mean / 5
  assert fid.kid(x, y, num_subsets=5, subset_size=50, seed=3) == fid.kid(x, y, num_subsets=5, subset_size=50, seed=3)
  with pytest.raises(ValueError, match="subset_size=1000"):
    fid.kid(x, y)


# ---- Inception Score ----


def test_inception_score_uniform_is_one():
  probs = np.full((100, 7), 1 / 7)
  mean, std = fid.inception_score(probs, num_splits=10)
  np.testing.assert_allclose(mean, 1.0, rtol=1e-12)
  assert std < 1e-12
  np.testing.assert_allclose(fid.inception_score(np.zeros((50, 7)), num_splits=5)[0], 1.0)  # logits


def test_inception_score_confident_and_even_is_num_classes():
  k = 8
  labels = np.tile(np.arange(k), 30)  # 240 rows; each split of 24 holds every class 3 times
  probs = np.eye(k)[labels]
  mean, std = fid.inception_score(probs, num_splits=10)
  np.testing.assert_allclose(mean, k, rtol=1e-12)
  assert std < 1e-9
  logits = 50.0 * np.eye(k)[labels]
  np.testing.assert_allclose(fid.inception_score(logits, num_splits=10, from_logits=True)[0], k, rtol=1e-6)
  # All samples in one class: confident but not diverse -> 1.
  np.testing.assert_allclose(fid.inception_score(np.eye(k)[np.zeros(40, int)], num_splits=4)[0], 1.0)


def test_inception_score_rejects_bad_input():
  with pytest.raises(ValueError, match="num_splits"):
    fid.inception_score(np.full((5, 3), 1 / 3), num_splits=10)
  with pytest.raises(ValueError, match="not probability vectors"):
    fid.inception_score(np.ones((5, 3)), num_splits=1, from_logits=False)


# ---- Precision and recall ----


def test_knn_radii_match_sorting():
  x = np.random.default_rng(8).standard_normal((40, 3))
  d2 = np.sum((x[:, None] - x[None]) ** 2, axis=-1)
  expected = np.sort(d2, axis=1)[:, 3]
  np.testing.assert_allclose(fid.knn_radii(x, 3, batch_size=7), expected, rtol=1e-9, atol=1e-12)


def test_precision_recall_identical_and_disjoint():
  rng = np.random.default_rng(9)
  x = rng.standard_normal((200, 5))
  assert fid.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)
  far = rng.standard_normal((150, 5)) + 100.0
  assert fid.precision_recall(x, far, k=3) == (0.0, 0.0)


def test_precision_recall_half_the_modes():
  rng = np.random.default_rng(10)
  angles = 2 * np.pi * np.arange(10) / 10
  centers = 50.0 * np.stack([np.cos(angles), np.sin(angles)], axis=1)  # 10 well-separated 2-D modes
  real = np.concatenate([c + rng.standard_normal((300, 2)) for c in centers])
  fake = np.concatenate([c + rng.standard_normal((300, 2)) for c in centers[:5]])
  precision, recall = fid.precision_recall(real, fake, k=3, batch_size=128)
  # With finite samples a few tail points fall outside the other set's k-NN balls (~3% here).
  assert precision > 0.93
  assert abs(recall - 0.5) < 0.04
  assert fid.precision_recall(real, fake, k=3, batch_size=4096) == (precision, recall)
