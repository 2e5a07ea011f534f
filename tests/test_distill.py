"""Consistency distillation: the parametrization's boundary, the schedules' formulas and the
distance (Song et al. 2023; Song & Dhariwal 2024).  More to come with issue 21."""

import math

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import distillation
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax.models import mlp
from score_jax.sampling import edm


def test_boundary_condition_holds_exactly_whatever_the_network():
  eps = 0.002
  c_skip, c_out, _ = score_fn_lib.consistency_coefficients(jnp.float32(eps), 0.5, eps)
  assert float(c_skip) == 1.0 and float(c_out) == 0.0
  # A slip (c_skip at σ instead of σ − ε) would leave c_skip(ε) = σ_d²/(ε² + σ_d²) < 1.
  sde = sde_lib.VESDE(sigma_min=0.002, sigma_max=80.0)
  model = mlp.MLPScore(hidden=16, num_layers=1)
  params = model.init(jax.random.key(0), jnp.zeros((1, 2)), jnp.ones((1,)))["params"]
  score = score_fn_lib.get_score_fn(sde, lambda p, x, c: 100.0 * model.apply({"params": p}, x, c), params,
                                    parametrization="consistency", conditioning="log_sigma", boundary_sigma=eps)
  y = jax.random.normal(jax.random.key(1), (64, 2))
  sigma = jnp.full((64,), eps)
  t = sde.time_from_noise_level(sigma)
  f = edm.make_denoiser(sde, score)(y, sigma, t)
  # Through score_fn(x, t) σ is recomputed from t (σ → t → σ̃(t)), one float32 rounding away from ε:
  # f equals y to an ulp here, exactly at the coefficients above.  (Issue 21 asks for exactness
  # through the sampler too: to do, by evaluating f at σ directly.)
  np.testing.assert_allclose(np.asarray(f), np.asarray(y), rtol=0, atol=3e-7)
  far = edm.make_denoiser(sde, score)(y, jnp.full((64,), 1.0), sde.time_from_noise_level(jnp.full((64,), 1.0)))
  assert float(jnp.max(jnp.abs(far - y))) > 1e-2  # away from ε the network matters


def test_levels_and_schedules_match_their_formulas():
  sig = np.asarray(distillation.levels(18, 20, sigma_min=0.002, sigma_max=80.0, rho=7.0))
  i = np.arange(18)
  want = (0.002 ** (1 / 7) + i / 17 * (80.0 ** (1 / 7) - 0.002 ** (1 / 7))) ** 7
  np.testing.assert_allclose(sig[:18], want, rtol=1e-5)
  np.testing.assert_allclose(sig[18:], 80.0, rtol=1e-6)
  # The paper's CT schedule (s0 = 2, s1 = 150): N(0) = 2, N(K) = 151.
  sqrt = lambda k: int(distillation.num_scales_at(k, 1000, schedule="sqrt", num_scales=150, start_scales=2))
  assert sqrt(0) == 2 and sqrt(1000) == 151
  assert sqrt(500) == math.ceil(math.sqrt(0.5 * (151**2 - 4) + 4) - 1) + 1
  # The improved recipe (s0 = 10, s1 = 1280, K = 400k): K' = 50 000, doubling each stage.
  exp = lambda k: int(distillation.num_scales_at(k, 400_000, schedule="exponential", num_scales=1280, start_scales=10))
  assert [exp(0), exp(49_999), exp(50_000), exp(399_999)] == [11, 11, 21, 1281]
  mu = distillation.target_rate_at(2, schedule="adaptive", target_ema=0.9, start_scales=2)
  assert float(mu) == np.float32(0.9)


def test_pseudo_huber_distance():
  a = jnp.zeros((2, 4, 4, 1))
  b = jnp.ones((2, 4, 4, 1))
  c = 0.00054 * 4.0
  got = distillation.distance(a, b, metric="pseudo_huber")
  np.testing.assert_allclose(got, math.sqrt(16 + c * c) - c, rtol=1e-6)
  np.testing.assert_allclose(distillation.distance(a, b, metric="l2"), 1.0)


def test_one_loss_term_pinned_against_its_formula():
  """The loss of Gaussian data N(0, s0² I) under VE, every network the exact denoiser
  D(y, σ) = s0²/(s0² + σ²) y, equals the hand computation: the student at σ_{n+1} on
  y = x + σ_{n+1} z, the target at σ_n on the teacher's Heun step from σ_{n+1} to σ_n."""
  s0, eps, smax, n_levels = 1.5, 0.002, 80.0, 6
  sde = sde_lib.VESDE(sigma_min=eps, sigma_max=smax)
  exact = lambda x, t: -x / (s0**2 + sde_lib.bcast(sde.marginal_std(t), x) ** 2)
  key = jax.random.key(3)
  x = s0 * jax.random.normal(jax.random.key(4), (16, 3))
  got = distillation.consistency_distillation_loss(
      key, sde, exact, x, target_score_fn=exact, teacher_score_fn=exact, num_scales=n_levels, max_scales=8,
      sigma_min=eps, sigma_max=smax, rho=7.0, metric="l2")
  # The draws, as the docstring says: k_n, k_z = split(key); n uniform on {0..N−2}; z normal.
  k_n, k_z = jax.random.split(key)
  logits = jnp.where(jnp.arange(7) < n_levels - 1, 0.0, -jnp.inf)
  n = np.asarray(jax.random.categorical(k_n, logits, shape=(16,)))
  z = np.asarray(jax.random.normal(k_z, x.shape), np.float64)
  assert n.max() <= n_levels - 2
  i = np.arange(n_levels)
  sig = (eps ** (1 / 7) + i / (n_levels - 1) * (smax ** (1 / 7) - eps ** (1 / 7))) ** 7
  lo, hi = sig[n][:, None], sig[n + 1][:, None]
  den = lambda y, s: s0**2 / (s0**2 + s**2) * y
  xs = np.asarray(x, np.float64)
  y_hi = xs + hi * z
  d = (y_hi - den(y_hi, hi)) / hi
  y_euler = y_hi + (lo - hi) * d
  d_next = (y_euler - den(y_euler, lo)) / lo
  y_lo = y_hi + (lo - hi) * 0.5 * (d + d_next)
  want = np.mean(np.mean((den(y_hi, hi) - den(y_lo, lo)) ** 2, axis=-1))
  np.testing.assert_allclose(float(got), want, rtol=2e-4)
  assert want > 1e-4  # the Heun step's error is what the loss sees: not a 0 = 0 comparison


def test_two_step_consistency_sampling_pinned_against_algorithm_1():
  """method="consistency", 2 steps, with the exact Gaussian denoiser as f: x = f(y_0, τ_0), then
  x = f(x + √(τ_1² − ε²) z_1, τ_1), each draw from the documented key."""
  from score_jax import sampling  # pylint: disable=g-import-not-at-top
  from score_jax.sampling import common  # pylint: disable=g-import-not-at-top
  s0, eps, smax = 1.5, 0.002, 80.0
  sde = sde_lib.VESDE(sigma_min=eps, sigma_max=smax)
  exact = lambda x, t: -x / (s0**2 + sde_lib.bcast(sde.marginal_std(t), x) ** 2)
  key = jax.random.key(11)
  got, nfe = sampling.sample(key, sde, exact, (8, 3), "consistency", num_steps=2, sigmas=(60.0, 2.5),
                             sigma_min=eps)
  assert nfe == 2
  keys = common.per_sample_keys(key, 8)
  z0, z1 = (np.asarray(common.normal(keys, (8, 3), i), np.float64) for i in (0, 1))
  den = lambda y, s: s0**2 / (s0**2 + s**2) * y
  v = eps**2  # VE's prior N(0, σ_max²) in y: the data's share σ_min² (sampling/edm.py)
  x = den(math.sqrt(60.0**2 + v) * z0, 60.0)
  x = den(x + math.sqrt(2.5**2 - eps**2) * z1, 2.5)
  # f is read back from the score as y + σ² score at t(σ) in float32: at σ = 60, s(t(σ)) = σ (1 ± 4e-7)
  # moves D = y (1 − σ²/(s0² + s²)) by ~60 |z| · 5e-7 — the 3e-5 scale of the tolerance.
  np.testing.assert_allclose(np.asarray(got), x, rtol=1e-4, atol=1e-4)
