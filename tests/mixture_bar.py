"""What the sampler tests share: the 2-D four-mode target, the issue's bar for reproducing it,
and the checks every sampler gets (batch independence, options rejected before tracing).

Test modules import it as ``from mixture_bar import ...`` (pytest puts tests/ on sys.path).
"""

import jax
import numpy as np
import pytest

from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.data import toy
from score_jax.metrics.samples import mode_statistics

# Four well-separated modes with unequal weights and widths.
TARGET = toy.GaussianMixture(
    means=[[-3.0, -3.0], [3.0, -3.0], [-3.0, 3.0], [3.0, 3.0]],
    stds=[0.3, 0.5, 0.4, 0.6],
    weights=[0.1, 0.2, 0.3, 0.4],
)
SDES = {
    "ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=20.0),
    "vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0),
    "subvp": sde_lib.SubVPSDE(beta_min=0.1, beta_max=20.0),
}
SCORES = {name: TARGET.score_fn(sde) for name, sde in SDES.items()}

# The bar: each mode's share within ±20 %, its mean within 0.06 and std within 10 %
# of the truth, under 1 % outliers.
SHARE_TOL, MEAN_TOL, STD_TOL, OUTLIER_TOL = 0.20, 0.06, 0.10, 0.01


def assert_reproduces(x, mean_tol: float = MEAN_TOL) -> None:
  """Asserts that samples x [N, 2] meet the bar on TARGET."""
  stats = mode_statistics(x, TARGET)
  assert stats["outlier_fraction"] <= OUTLIER_TOL, stats
  assert stats["max_share_rel_error"] <= SHARE_TOL, stats["share"]
  assert stats["max_mean_error"] <= mean_tol, stats["mean"]
  assert stats["max_std_rel_error"] <= STD_TOL, stats["std"]


def assert_batch_independent(sde, score_fn, method: str, opts: dict) -> None:
  """Sample i draws its noise from fold_in(key, i): the first 8 of a batch of 32 equal a
  batch of 8, the same key repeats, and another key differs."""

  key = jax.random.PRNGKey(7)
  small, _ = sampling.sample(key, sde, score_fn, (8, 2), method=method, **opts)
  large, _ = sampling.sample(key, sde, score_fn, (32, 2), method=method, **opts)
  np.testing.assert_allclose(small, large[:8], rtol=1e-5, atol=1e-5)
  again, _ = sampling.sample(key, sde, score_fn, (8, 2), method=method, **opts)
  np.testing.assert_array_equal(small, again)
  other, _ = sampling.sample(jax.random.PRNGKey(8), sde, score_fn, (8, 2), method=method, **opts)
  assert not np.allclose(small, other)


def assert_rejected_before_tracing(sde, method: str, kwargs: dict, field: str) -> None:
  """sample(..., **kwargs) raises a ValueError naming ``field`` without tracing score_fn."""

  calls = []

  def score(x, t):
    calls.append(1)
    return x

  with pytest.raises(ValueError, match=field):
    sampling.sample(jax.random.PRNGKey(0), sde, score, (4, 2), method=method, **kwargs)
  assert not calls  # nothing was traced, let alone compiled


def count_evaluations(sde_name: str, method: str, opts: dict, n: int = 8):
  """(reported NFE, score evaluations actually executed, counted by a host callback) of one
  sampler run on the mixture's exact score."""
  calls = []
  exact = SCORES[sde_name]

  def counting_score(x, t):
    jax.debug.callback(lambda: calls.append(1))
    return exact(x, t)

  x, nfe = sampling.sample(jax.random.PRNGKey(0), SDES[sde_name], counting_score, (n, 2), method=method, **opts)
  jax.block_until_ready(x)
  return int(nfe), len(calls)
