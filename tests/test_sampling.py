"""Samplers against exact Gaussian-mixture scores: every PC combination, the ODE, ALD, Langevin."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from mixture_bar import (MEAN_TOL, SCORES, SDES, assert_batch_independent, assert_rejected_before_tracing,
                         assert_reproduces, count_evaluations)
from score_jax import sampling
from score_jax.data import toy

# These samplers run thousands of steps: compiled with XLA's optimisation (tests/conftest.py).
pytestmark = pytest.mark.optimized

N = 4000


def _pc_options(predictor, corrector):
  if predictor != "none":
    return dict(num_steps=1000, snr=0.16, n_steps=1)
  if corrector == "langevin":
    # Corrector-only sampling has no predictor to carry x between levels: more steps.
    return dict(num_steps=1000, snr=0.16, n_steps=3)
  return dict(num_steps=500, snr=0.3, n_steps=20)


PC_CASES = [(s, p, c) for s in SDES for p in sampling.PREDICTORS for c in sampling.CORRECTORS
            if not (p == "none" and c == "none")]


@pytest.mark.parametrize("sde_name,predictor,corrector", PC_CASES)
def test_pc_reproduces_mixture(sde_name, predictor, corrector):
  opts = _pc_options(predictor, corrector)
  x, nfe = sampling.sample(jax.random.PRNGKey(0), SDES[sde_name], SCORES[sde_name], (N, 2), method="pc",
                           predictor=predictor, corrector=corrector, denoise=True, **opts)
  per_level = int(predictor != "none") + opts["n_steps"] * int(corrector != "none")
  assert int(nfe) == opts["num_steps"] * per_level + 1
  mean_tol = MEAN_TOL
  if (sde_name, predictor, corrector) == ("subvp", "none", "ald"):
    # Known limitation, measured: ALD's step 2(r s(t))² shrinks like B(t)² for sub-VP while the
    # mode means still move by (1 − m(t))μ ≈ s(t)|μ|/2, so corrector-only ALD lags behind them
    # (mean error ≈ 0.1–0.13 at 10⁴ NFE).  Shares and widths still meet the bar.
    mean_tol = 0.15
  assert_reproduces(x, mean_tol)


@pytest.mark.parametrize("sde_name", list(SDES))
@pytest.mark.parametrize("solver", ["tsit5", "dopri5", "heun"])
def test_ode_reproduces_mixture(sde_name, solver):
  x, nfe = sampling.sample(jax.random.PRNGKey(1), SDES[sde_name], SCORES[sde_name], (N, 2), method="ode",
                           solver=solver, rtol=1e-5, atol=1e-5, num_steps=200)
  assert_reproduces(x)
  if solver == "heun":
    assert int(nfe) == 2 * 200 + 1
  else:
    assert 20 < int(nfe) < 2000


def test_ald_reproduces_mixture_ve():
  x, nfe = sampling.sample(jax.random.PRNGKey(2), SDES["ve"], SCORES["ve"], (N, 2), method="ald",
                           num_steps=100, n_steps_each=10)
  assert int(nfe) == 100 * 10 + 1
  assert_reproduces(x)


def test_langevin_dynamics_reproduces_gaussian():
  """Unadjusted Langevin on one Gaussian: its O(δ) bias is below the tolerance at δ = 1e-2."""
  target = toy.GaussianMixture(means=[[0.5, -0.5]], stds=[[0.8, 1.2]])
  sde = SDES["vp"]
  x, nfe = sampling.sample(jax.random.PRNGKey(3), sde, target.score_fn(sde), (N, 2), method="langevin",
                           num_steps=1000, step_size=1e-2)
  assert int(nfe) == 1000
  np.testing.assert_allclose(np.mean(x, 0), [0.5, -0.5], atol=0.06)
  np.testing.assert_allclose(np.std(x, 0), [0.8, 1.2], rtol=0.05)


def test_ode_nfe_counts_every_evaluation():
  """The reported NFE equals the number of score evaluations actually executed."""
  for solver in ["tsit5", "heun", "euler"]:
    nfe, calls = count_evaluations("vp", "ode", dict(solver=solver, rtol=1e-4, atol=1e-4, num_steps=20), n=64)
    assert nfe == calls, solver


@pytest.mark.parametrize("method,opts", [
    ("pc", dict(predictor="reverse_diffusion", corrector="ald", num_steps=20)),
    ("pc", dict(predictor="ancestral", corrector="none", num_steps=20)),
    ("ald", dict(num_steps=10, n_steps_each=2)),
    ("langevin", dict(num_steps=10)),
])
def test_sample_does_not_depend_on_batch_size(method, opts):
  assert_batch_independent(SDES["ve"], SCORES["ve"], method, opts)


def test_second_call_with_new_key_does_not_retrace():
  traces = []
  sde = SDES["vp"]
  exact = SCORES["vp"]

  def score(x, t):
    traces.append(1)  # runs only while tracing
    return exact(x, t)

  opts = dict(method="pc", predictor="euler_maruyama", corrector="langevin", num_steps=10)
  x1, _ = sampling.sample(jax.random.PRNGKey(0), sde, score, (16, 2), **opts)
  first = len(traces)
  assert first > 0
  x2, _ = sampling.sample(jax.random.PRNGKey(1), sde, score, (16, 2), **opts)
  assert len(traces) == first
  assert not np.allclose(x1, x2)
  sampling.sample(jax.random.PRNGKey(2), sde, score, (16, 2), method="ode", solver="heun", num_steps=5)
  assert len(traces) > first  # a different sampler does compile anew


def test_denoise_is_tweedie_posterior_mean():
  """For x0 ~ N(μ, σ0²): E[x0 | x_t] = μ + m σ0²(x_t − mμ)/(m²σ0² + s²)."""
  mu, s0 = 1.5, 0.7
  target = toy.GaussianMixture(means=[[mu, mu]], stds=[s0])
  sde = SDES["vp"]
  t = jnp.full((5,), 0.3)
  x = jax.random.normal(jax.random.PRNGKey(0), (5, 2))
  got = sampling.steps.denoise(sde, target.score_fn(sde), x, t)
  m, s = float(sde.mean_coeff(0.3)), float(sde.marginal_std(0.3))
  want = mu + m * s0**2 * (np.asarray(x) - m * mu) / (m**2 * s0**2 + s**2)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_predictors_agree_on_one_small_step():
  """Over a tiny step the three predictors are the same first-order scheme: with the same
  noise they differ by O(Δt) relative to the step's displacement."""
  sde = SDES["vp"]
  score = SCORES["vp"]
  x = jax.random.normal(jax.random.PRNGKey(0), (16, 2))
  z = jax.random.normal(jax.random.PRNGKey(1), (16, 2))
  t, t_next = jnp.full((16,), 0.5), jnp.full((16,), 0.5 - 1e-4)
  outs = [np.asarray(sampling.PREDICTORS[p](sde, score, x, t, t_next, z)[0])
          for p in ["euler_maruyama", "reverse_diffusion", "ancestral"]]
  displacement = np.abs(outs[0] - np.asarray(x)).max()
  for o in outs[1:]:
    assert np.abs(o - outs[0]).max() < 1e-2 * displacement


BAD = [
    (dict(method="nope"), "method"),
    (dict(method="pc", predictor="nope"), "predictor"),
    (dict(method="pc", corrector="nope"), "corrector"),
    (dict(method="pc", predictor="none", corrector="none"), "predictor"),
    (dict(method="pc", snr=0.0), "snr"),
    (dict(method="pc", snr=-1.0), "snr"),
    (dict(method="pc", num_steps=0), "num_steps"),
    (dict(method="pc", n_steps=-1), "n_steps"),
    (dict(method="pc", rtol=1e-3), "rtol"),
    (dict(method="ode", rtol=0.0), "rtol"),
    (dict(method="ode", atol=-1.0), "atol"),
    (dict(method="ode", solver="rk4"), "solver"),
    (dict(method="ald", step_size=0.0), "step_size"),
    (dict(method="langevin", t=2.0), "t"),
]


@pytest.mark.parametrize("kwargs,field", BAD)
def test_bad_options_raise_before_compiling(kwargs, field):
  kwargs = dict(kwargs)
  assert_rejected_before_tracing(SDES["ve"], kwargs.pop("method", "pc"), kwargs, field)


def test_score_fn_with_wrong_shape_is_rejected():
  with pytest.raises(ValueError, match="score_fn"):
    sampling.sample(jax.random.PRNGKey(0), SDES["ve"], lambda x, t: x[:, :1], (4, 2), num_steps=3)
  with pytest.raises(ValueError, match="shape"):
    sampling.sample(jax.random.PRNGKey(0), SDES["ve"], SCORES["ve"], (4,), num_steps=3)


@pytest.mark.parametrize("method, options", [("ode", {}), ("pc", {"corrector": "none", "num_steps": 20}),
                                             ("edm", {"num_steps": 8, "s_churn": 10.0})])
def test_per_sample_keys_let_a_large_set_be_drawn_in_chunks(method, options):
  """Keys [n] = fold_in(key, j) reproduce one batch; two chunks with their global indices give the same set."""
  sde = SDES["ve"]
  score_fn = SCORES["ve"]
  key = jax.random.key(3)
  whole, _ = sampling.sample(key, sde, score_fn, (8, 2), method, **options)
  fold = lambda idx: jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.asarray(idx, jnp.uint32))
  same, _ = sampling.sample(fold(range(8)), sde, score_fn, (8, 2), method, **options)
  np.testing.assert_array_equal(np.asarray(same), np.asarray(whole))
  halves = [sampling.sample(fold(range(s, s + 4)), sde, score_fn, (4, 2), method, **options)[0] for s in (0, 4)]
  np.testing.assert_allclose(np.concatenate(halves), np.asarray(whole), rtol=1e-5, atol=1e-5)
  with pytest.raises(ValueError, match="per-sample keys"):
    sampling.sample(fold(range(3)), sde, score_fn, (8, 2), method, **options)
