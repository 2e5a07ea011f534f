"""Exact likelihoods of score-based models through the probability-flow ODE.

The probability-flow ODE dx/dt = f̃(x, t) = f(x, t) − ½ g(t)² ∇log p_t(x) (Song et al.
2021, eq. 13) moves p_eps onto p_T, so by the instantaneous change of variables

    log p_eps(x(eps)) = log p_T(x(T)) + ∫_eps^T ∇·f̃(x(t), t) dt      (App. D.2, eq. 39)

with p_T replaced by the SDE's prior.  ``log_likelihood`` integrates the augmented state
[x, Δ] with dΔ/dt = ∇·f̃ from eps to T and returns log p_T(x(T)) + Δ(T).  Note what it is
the density of: the model's marginal at time eps, i.e. the data convolved with the small
noise of time eps (a Gaussian of std ``sde.marginal_std(eps)``), not the data themselves.

eps defaults to ``sde.train_eps`` = 1e-5 (for VP and sub-VP too, although they sample only
down to ``sde.eps`` = 1e-3), the time score_sde's ``get_likelihood_fn`` starts from, so with
the same dequantization and offsets (below) the bits/dim here are the quantity score_sde
reports, computed from the same ODE with the same fixed-probe Hutchinson estimator.  What
can still differ: the ODE solver and its error norm (below), and for a VE network the noise
level its score is parametrized by (score_sde's σ(t), by default here the exact marginal
std √(σ(t)² − σ_min²) of ``score_jax.sde``; at most σ_min² apart in variance).

How it is solved:

* On the device with diffrax (Tsit5 or Dopri5 and a PID step-size controller), the whole
  batch in one compiled call.  The solve is ``vmap``-ed over examples, so each example
  takes its own adaptive steps: an example's error is controlled exactly as if it were
  solved alone (RMS norm over its own D + 1 state entries, diffrax's default), and its
  result does not depend on which other examples share the batch (up to round-off: XLA
  may vectorize another batch size differently, and the adaptive steps amplify that to
  about the solver's tolerance).  score_sde instead
  solves the flattened batch as one state with scipy on the host; there the RMS norm
  averages over the batch, so a larger batch loosens every example's error control.
* The divergence ∇·f̃ of one example is a sum of quadratic forms vᵀ(∂f̃/∂x)v, each from
  one Jacobian-vector product of that example's drift: "exact" uses the D standard basis
  vectors (D JVPs, for small D); "hutchinson" averages ``num_probes`` random probes v with
  E[v vᵀ] = I (Rademacher or Gaussian), drawn once per example and kept fixed along the
  trajectory (Grathwohl et al. 2019).  The Hutchinson log-likelihood is an unbiased
  estimate of the exact one (up to solver error), not a bound.
* Example i of a batch draws its probes from fold_in(key, first_index + i), so a result
  does not depend on the batch size or position; pass ``first_index`` when a dataset is
  evaluated in batches.

NFE: each vector-field evaluation is one score evaluation (with its JVPs) for every
example of the batch; the count returned is what ``score_jax.sampling.ode`` counts,
1 + 6 per attempted step for Tsit5 / Dopri5, for the example that needed the most steps
(the other lanes of the vmapped loop idle until it is done).

Bits per dimension.  For continuous data bpd = −log p(x)/(D ln 2).  Image data are
integers k ∈ {0, …, L−1}^D that were uniformly dequantized to u = (k + r)/L ∈ [0, 1]^D,
r ~ U[0, 1)^D (``score_jax.data.embedded.to_unit_interval``), and mapped onto the data
range by x = lo + (hi − lo) u (``to_data_range``).  The probability of the integers is the
mass of their bin, P(k) = ∫_bin p_U(u) du = L^{−D} E_r[p_U((k + r)/L)], and Jensen's
inequality gives log P(k) ≥ E_r[log p_U(u)] − D log L.  With p_U(u) = (hi − lo)^D p_X(x),

    −log₂ P(k) / D  ≤  E_r[−log₂ p_X(x) / D] + log₂ L − log₂(hi − lo),

which is what ``bits_per_dim(..., levels=L, data_range=(lo, hi))`` returns, for one draw
of r (average over several dequantizations for the expectation: score_sde's
``num_repeats``).  With L = 256 the offset is +8 on [0, 1] and +7 on [−1, 1], score_sde's
numbers.  Check: integers uniform over L levels have density (hi − lo)^{−D} after
dequantization, and the formula gives exactly log₂ L bits per dimension.
"""

from __future__ import annotations

import functools
import math
import numbers
from typing import Any, NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.data.embedded import _check_data_range, to_data_range, to_unit_interval
from score_jax.sampling.ode import SOLVERS as _ODE_SOLVERS
from score_jax.sampling.ode import solver_class as _solver_class
from score_jax.sde import SDE, ScoreFn

Array = Any

DIVERGENCES = ("hutchinson", "exact")
PROBES = ("rademacher", "gaussian")
SOLVERS = ("tsit5", "dopri5")


class _Config(NamedTuple):
  """The static options of one compiled solve (hashable)."""

  divergence: str
  probe: str
  num_probes: int
  solver: str
  rtol: float
  atol: float
  eps: float
  max_steps: int


# --- argument checks (Python, before anything is traced) ----------------------------------
def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(message)


def _is_int(value: Any) -> bool:
  return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _is_real(value: Any) -> bool:
  return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


def _check_levels(levels: Any) -> int:
  _require(_is_int(levels) and levels >= 2, f"levels={levels!r} must be an integer >= 2 (256 for 8-bit images).")
  return int(levels)


def _config(sde: SDE, score_fn: ScoreFn, x: Array, first_index: Any, *, divergence: str, probe: str,
            num_probes: int, solver: str, rtol: float, atol: float, eps: Optional[float],
            max_steps: int) -> _Config:
  """Validates every argument of ``log_likelihood``; returns the static options."""
  _require(isinstance(sde, SDE), f"sde must be an SDE from score_jax.sde, got {type(sde).__name__}.")
  _require(callable(score_fn), "score_fn must be callable as score_fn(x [B, ...], t [B]).")
  _require(divergence in DIVERGENCES, f"divergence={divergence!r} is unknown; choose one of {list(DIVERGENCES)}.")
  _require(probe in PROBES, f"probe={probe!r} is unknown; choose one of {list(PROBES)}.")
  _require(_is_int(num_probes) and num_probes >= 1, f"num_probes={num_probes!r} must be an integer >= 1.")
  _require(solver in SOLVERS, f"solver={solver!r} is unknown; choose one of {list(SOLVERS)} (adaptive solvers).")
  _require(_is_real(rtol) and rtol > 0, f"rtol={rtol!r} must be a number > 0.")
  _require(_is_real(atol) and atol > 0, f"atol={atol!r} must be a number > 0.")
  _require(_is_int(max_steps) and max_steps >= 1, f"max_steps={max_steps!r} must be an integer >= 1.")
  eps = sde.train_eps if eps is None else eps
  _require(_is_real(eps) and 0.0 < eps < sde.T, f"eps={eps!r} must lie in (0, T={sde.T}); None uses sde.train_eps.")
  _require(_is_int(first_index) and first_index >= 0, f"first_index={first_index!r} must be an integer >= 0.")
  shape = getattr(x, "shape", None)
  _require(shape is not None and len(shape) >= 2 and all(s > 0 for s in shape),
           f"x must be a non-empty batch [B, ...] with at least one data axis, got shape {shape}.")
  _require(jnp.issubdtype(x.dtype, jnp.floating),
           f"x must be floating point data, got dtype {x.dtype}; dequantize integer levels first (``dequantize``).")
  if divergence == "exact":  # probes unused: one compiled solve whatever they were set to
    probe, num_probes = PROBES[0], 1
  return _Config(divergence, probe, int(num_probes), solver, float(rtol), float(atol), float(eps), int(max_steps))


# --- the augmented ODE --------------------------------------------------------------------------
def _example_keys(key: jax.Array, first_index: Array, n: int) -> jax.Array:
  """Keys [n]: key_i = fold_in(key, first_index + i)."""
  index = jnp.asarray(first_index, jnp.uint32) + jnp.arange(n, dtype=jnp.uint32)
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(index)


def _probes(keys: jax.Array, shape: tuple[int, ...], config: _Config, dtype) -> Array:
  """Hutchinson probes [B, P, ...] with E[v vᵀ] = I, example i's from keys[i]."""
  full = (config.num_probes,) + tuple(shape[1:])
  draw = jax.random.rademacher if config.probe == "rademacher" else jax.random.normal
  return jax.vmap(lambda k: draw(k, full, dtype))(keys)


def _basis(shape: tuple[int, ...], dtype) -> Array:
  """[D, ...]: the D standard basis vectors of one example's shape."""
  d = math.prod(shape)
  return jnp.eye(d, dtype=dtype).reshape((d,) + tuple(shape))


def _drift_and_divergence(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, directions: Array,
                          weight: float) -> tuple[Array, Array]:
  """One example's probability-flow drift f̃(x, t) [...] and weight · Σ_v vᵀ(∂f̃/∂x)v [].

  Args:
    x: one example [...]; score_fn sees it as a batch of one.
    t: the time [].
    directions: [P, ...] the vectors v (probes, or the basis for the exact trace).
    weight: 1/P for a Hutchinson mean, 1 for the exact trace.
  """

  def drift(y):
    yb, tb = y[None], jnp.reshape(t, (1,)).astype(y.dtype)  # [1, ...], [1]
    score = score_fn(yb, tb)
    if score.shape != yb.shape:
      raise ValueError(f"score_fn must return the score with x's shape {yb.shape}, but returned {score.shape}.")
    return sde.reverse_drift(yb, tb, score, probability_flow=True)[0]

  # Probability-flow ODE (Song et al. 2021, eq. 13); Hutchinson–Skilling trace estimate of
  # its divergence (Grathwohl et al. 2019, eq. 7): one JVP per direction, the drift shared.
  dx, jv = jax.vmap(lambda v: jax.jvp(drift, (x,), (v,)), out_axes=(None, 0))(directions)  # [...], [P, ...]
  quad = jnp.sum((jv * directions).reshape(directions.shape[0], -1), axis=1)  # [P]
  return dx, weight * jnp.sum(quad)


@functools.partial(jax.jit, static_argnames=("sde", "score_fn", "config", "with_params"))
def _solve(key: jax.Array, x: Array, first_index: Array, params: Any, *, sde: SDE, score_fn: ScoreFn,
           config: _Config, with_params: bool) -> tuple[Array, Array, Array]:
  """(log p_eps(x) [B], x(T) [B, ...], NFE []) by one vmapped diffrax solve.

  ``with_params``: ``score_fn`` is ``score_fn(params, x, t)`` and ``params`` a traced argument
  (one compilation for every parameter set of the same shapes); else ``params`` is None.
  """
  if with_params:
    score_fn = functools.partial(score_fn, params)
  n = x.shape[0]
  if config.divergence == "exact":
    directions, in_axes = _basis(x.shape[1:], x.dtype), None  # [D, ...], shared by the batch
    weight = 1.0
  else:
    directions, in_axes = _probes(_example_keys(key, first_index, n), x.shape, config, x.dtype), 0  # [B, P, ...]
    weight = 1.0 / config.num_probes

  def field(t, state, args):
    y, _ = state
    return _drift_and_divergence(sde, score_fn, y, t, args, weight)

  import diffrax  # pylint: disable=g-import-not-at-top  (imported on the first solve, as in sampling.ode)
  solver_cls, (_, nfe_per_step, nfe_start) = _solver_class(config.solver), _ODE_SOLVERS[config.solver]
  controller = diffrax.PIDController(rtol=config.rtol, atol=config.atol)

  def solve_one(x0, dirs):
    # Instantaneous change of variables along the PF-ODE (Song et al. 2021, App. D.2, eq. 39).
    sol = diffrax.diffeqsolve(
        diffrax.ODETerm(field), solver_cls(), t0=config.eps, t1=sde.T, dt0=None,
        y0=(x0, jnp.zeros((), x0.dtype)), args=dirs, stepsize_controller=controller,
        saveat=diffrax.SaveAt(t1=True), max_steps=config.max_steps)
    return sol.ys[0][0], sol.ys[1][0], sol.stats["num_steps"]

  z, delta, num_steps = jax.vmap(solve_one, in_axes=(0, in_axes))(x, directions)  # [B, ...], [B], [B]
  logp = sde.prior_logp(z) + delta
  nfe = nfe_start + nfe_per_step * jnp.max(num_steps)
  return logp, z, jnp.asarray(nfe, jnp.int32)


# --- public API -----------------------------------------------------------------------------------
def log_likelihood(key: jax.Array, sde: SDE, score_fn: ScoreFn, x: Array, *, divergence: str = "hutchinson",
                   probe: str = "rademacher", num_probes: int = 1, solver: str = "tsit5", rtol: float = 1e-5,
                   atol: float = 1e-5, eps: Optional[float] = None, max_steps: int = 16384,
                   first_index: int = 0, params: Any = None) -> tuple[Array, Array, Array]:
  """Log-likelihood of each example under the model's probability-flow ODE.

  Args:
    key: PRNG key for the Hutchinson probes (unused by "exact"); example i uses
      fold_in(key, first_index + i).
    sde: the forward SDE (``score_jax.sde``).
    score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``, the score ∇log p_t(x); it is
      called on one example at a time (a batch of one, vmapped), so an example's result
      never mixes with another's.  The compiled solve is cached on (sde, score_fn, x's
      shape and dtype, options): pass the same ``score_fn`` object to reuse it.  With
      ``params``, it is called as ``score_fn(params, x, t)`` instead.
    x: continuous data [B, ...] (dequantized, in the range the model was trained on).
    divergence: "hutchinson" (unbiased estimate) or "exact" (D JVPs per evaluation).
    probe: Hutchinson probe distribution, "rademacher" or "gaussian".
    num_probes: Hutchinson probes per example, averaged; fixed along the trajectory.
    solver: "tsit5" or "dopri5" (adaptive, PID step-size control).
    rtol, atol: the step-size controller's tolerances.
    eps: the time the ODE starts from; None for ``sde.train_eps`` (score_sde's 1e-5: the
      smallest time the network was trained on).
    max_steps: most steps per example before the solve fails.
    first_index: the batch's offset in a larger dataset, for the probe keys.
    params: a pytree of arrays (e.g. network parameters) passed to ``score_fn`` as its first
      argument and to the compiled solve as an argument, not baked in as constants: the
      checkpoints of a run share one compilation (``score_fn`` the same object each time).

  Returns:
    (logp [B]: log p_eps(x) in nats of the continuous data, z [B, ...]: x mapped to time T,
    nfe []: vector-field evaluations of the example that needed the most).

  Raises:
    ValueError: a bad argument, named in the message, before ``score_fn`` is traced.
  """
  config = _config(sde, score_fn, x, first_index, divergence=divergence, probe=probe, num_probes=num_probes,
                   solver=solver, rtol=rtol, atol=atol, eps=eps, max_steps=max_steps)
  return _solve(key, jnp.asarray(x), first_index, params, sde=sde, score_fn=score_fn, config=config,
                with_params=params is not None)


def bpd_offset(levels: Optional[int], data_range: tuple[float, float] = (0.0, 1.0)) -> float:
  """Bits per dimension to add to −log₂ p(x)/D for data of ``levels`` uniformly dequantized
  levels mapped onto ``data_range``: log₂ levels − log₂(hi − lo) (module docstring); 0 for
  continuous data (``levels`` None)."""
  if levels is None:
    return 0.0
  levels = _check_levels(levels)
  lo, hi = _check_data_range(data_range)
  return math.log2(levels) - math.log2(hi - lo)


def bits_per_dim(key: jax.Array, sde: SDE, score_fn: ScoreFn, x: Array, *, levels: Optional[int] = None,
                 data_range: tuple[float, float] = (0.0, 1.0), **options: Any) -> tuple[Array, Array]:
  """Bits per dimension of each example.

  Args:
    key, sde, score_fn, x: as in ``log_likelihood``.
    levels: None for continuous data: bpd = −log p(x)/(D ln 2).  For data that were
      ``levels`` integer levels, uniformly dequantized (``dequantize``): the bpd of the
      integers, an upper bound in expectation over the dequantization noise (module docstring).
    data_range: (lo, hi) the dequantized [0, 1] data were mapped onto; used with ``levels``.
    **options: ``log_likelihood``'s keyword options (divergence, probe, num_probes, solver,
      rtol, atol, eps, max_steps, first_index, params).

  Returns:
    (bpd [B], nfe []).

  Raises:
    ValueError: a bad argument, named in the message, before ``score_fn`` is traced.
  """
  offset = bpd_offset(levels, data_range)
  logp, _, nfe = log_likelihood(key, sde, score_fn, x, **options)
  d = math.prod(x.shape[1:])
  return -logp / (d * math.log(2.0)) + offset, nfe


def dequantize(key: jax.Array, images: Array, *, levels: int, data_range: tuple[float, float] = (0.0, 1.0),
               first_index: int = 0) -> Array:
  """Uniform dequantization (k + r)/L, r ~ U[0, 1), mapped onto ``data_range``.

  The maps are ``score_jax.data.embedded``'s ``to_unit_interval`` and ``to_data_range``,
  the training pipeline's own; only the noise is drawn here, example i's from
  fold_in(key, first_index + i).

  Args:
    key: PRNG key.
    images: integer levels [B, ...] in 0..levels−1 (e.g. uint8 images).
    levels: quantization levels L.
    data_range: (lo, hi) for [0, 1]; (−1, 1) is score_sde's "centered".
    first_index: the batch's offset in a larger dataset.

  Returns:
    float32 [B, ...] in data_range.
  """
  levels = _check_levels(levels)
  data_range = _check_data_range(data_range)
  _require(_is_int(first_index) and first_index >= 0, f"first_index={first_index!r} must be an integer >= 0.")
  images = jnp.asarray(images)
  _require(jnp.issubdtype(images.dtype, jnp.integer) and images.ndim >= 2,
           f"images must be integer levels [B, ...], got dtype {images.dtype} and shape {images.shape}.")
  if not isinstance(images, jax.core.Tracer):
    lo, hi = int(jnp.min(images)), int(jnp.max(images))
    _require(0 <= lo and hi < levels, f"images must lie in 0..levels-1 = 0..{levels - 1}, got values in {lo}..{hi}.")
  keys = _example_keys(key, first_index, images.shape[0])
  noise = jax.vmap(lambda k: jax.random.uniform(k, images.shape[1:], jnp.float32))(keys)  # [B, ...] in [0, 1)
  return to_data_range(to_unit_interval(images, levels=levels, noise=noise), data_range)


def bits_per_dim_dataset(key: jax.Array, sde: SDE, score_fn: ScoreFn, images: Array, *, levels: int,
                         data_range: tuple[float, float] = (0.0, 1.0), batch_size: int = 128,
                         num_repeats: int = 1, **options: Any) -> tuple[np.ndarray, np.ndarray]:
  """Bits per dimension of integer-valued data, over ``num_repeats`` dequantizations.

  The data's bpd (score_sde's reported number) is the mean of the returned array.  Pass r
  dequantizes with fold_in(fold_in(key, r), 0) and probes with fold_in(fold_in(key, r), 1),
  example j by its index in ``images``, so the numbers do not depend on ``batch_size``.  The
  last batch is padded to ``batch_size`` (padding discarded) so one compiled solve serves all.

  Args:
    key: PRNG key.
    sde, score_fn: as in ``log_likelihood``.
    images: integer levels [N, ...] in 0..levels−1 (host or device array).
    levels, data_range: as in ``bits_per_dim``.
    batch_size: examples per solve.
    num_repeats: dequantization passes over the data.
    **options: ``log_likelihood``'s keyword options except first_index (e.g. ``params``).

  Returns:
    (bpd [num_repeats, N], nfe [num_repeats, ceil(N / batch_size)]) as numpy arrays.
  """
  _require(_is_int(batch_size) and batch_size >= 1, f"batch_size={batch_size!r} must be an integer >= 1.")
  _require(_is_int(num_repeats) and num_repeats >= 1, f"num_repeats={num_repeats!r} must be an integer >= 1.")
  _require("first_index" not in options, "first_index is set per batch by bits_per_dim_dataset; do not pass it.")
  bpd_offset(levels, data_range)  # checks levels and data_range before any work
  n = images.shape[0]
  bpds, nfes = [], []
  for r in range(num_repeats):
    k_pass = jax.random.fold_in(key, r)
    k_deq, k_probe = jax.random.fold_in(k_pass, 0), jax.random.fold_in(k_pass, 1)
    row_bpd, row_nfe = [], []
    for start in range(0, n, batch_size):
      batch = np.asarray(images[start:start + batch_size])
      pad = batch_size - batch.shape[0]
      if pad:
        batch = np.concatenate([batch, np.repeat(batch[-1:], pad, axis=0)])
      x = dequantize(k_deq, batch, levels=levels, data_range=data_range, first_index=start)
      bpd, nfe = bits_per_dim(k_probe, sde, score_fn, x, levels=levels, data_range=data_range,
                              first_index=start, **options)
      row_bpd.append(bpd[:batch_size - pad])
      row_nfe.append(nfe)
    bpds.append(jnp.concatenate(row_bpd))
    nfes.append(jnp.stack(row_nfe))
  return np.asarray(jnp.stack(bpds)), np.asarray(jnp.stack(nfes))


__all__ = ["log_likelihood", "bits_per_dim", "bpd_offset", "dequantize", "bits_per_dim_dataset",
           "DIVERGENCES", "PROBES", "SOLVERS"]
