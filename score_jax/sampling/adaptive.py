"""Adaptive step-size solver of the reverse SDE ("Gotta Go Fast", Jolicoeur-Martineau et al.
2021, arXiv 2105.14080, Algorithm 1), one compiled ``lax.while_loop``.

Each attempt is a stochastic improved-Euler step t → t − h that uses one Brownian increment
in both stages; the difference between the Euler–Maruyama proposal x′ and the improved-Euler
one x″ estimates the local error, measured against the mixed tolerance
δ = max(abs_tol, rel_tol·max(|x′|, |x′_prev|)).  Every sample keeps its own t and h and is
accepted or rejected on its own; the loop ends when every sample has reached eps.

Rejected steps and the Brownian path.  The paper draws new noise for every attempt
(``noise="fresh"``).  The accept test then selects the noise — it favours increments that
make the error small — and this bias does not shrink as the tolerance tightens.  In the
paper's image dimensions the error norm averages over 10⁴–10⁵ coordinates and the effect
is small; in low dimensions it is large (measured, 2-D Gaussian N(1, 0.5²) under VE:
std 0.88 at rel_tol 0.01 and 0.95 at 0.002).  The default ``noise="bridge"`` instead keeps
the points of the Brownian path that rejected attempts revealed and draws each new
increment from the Brownian bridge between the nearest known points (rejection sampling
with memory: Rackauckas & Nie 2017, "Adaptive methods for stochastic differential
equations via natural embeddings and rejection sampling with memory").  Every attempt then
sees one consistent Brownian path and the solution converges to the right law (same
target: std 0.50, mean 1.00).  A sample that never rejects gets the same noise either way.
The memory holds ``memory`` points per sample (``memory`` × the state's size); a full one
forgets its farthest point, which ``adaptive_sample_with_stats`` counts.

Default tolerances are the paper's: abs_tol is one 8-bit intensity level of the data range,
(y_max − y_min)/256, i.e. 0.0078 for data in [−1, 1] and 0.0039 for data in [0, 1]; rel_tol =
0.01 is its highest-quality setting (it also uses 0.02, 0.05 and 0.1 to trade quality for
speed); safety θ = 0.9, exponent r = 0.9, h_init = 0.01.

NFE.  Each attempt, accepted or not, costs two score evaluations.  Samples finish after
different numbers of attempts; a batch runs until its slowest sample is done, so the NFE
returned is 2 × the largest number of attempts in the batch (+1 for the final denoising
step), as the paper counts it.  ``adaptive_sample_with_stats`` also gives the per-sample
accepted and rejected counts and the mean NFE.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from score_jax.sampling import common, constraints, options, steps
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any

# Width y_max − y_min of each data range; the default abs_tol is width/256.
DATA_RANGES = {"[-1,1]": 2.0, "[0,1]": 1.0}
NOISES = ("bridge", "fresh")


def _rms(v: Array) -> Array:
  """Root mean square over each example's entries: [B, ...] -> [B] (the paper's scaled L2)."""
  return jnp.sqrt(jnp.mean(jnp.square(v).reshape(v.shape[0], -1), axis=-1))


def _max_abs(v: Array) -> Array:
  """L∞ norm of each example: [B, ...] -> [B]."""
  return jnp.max(jnp.abs(v).reshape(v.shape[0], -1), axis=-1)


NORMS: dict[str, Callable[[Array], Array]] = {"l2": _rms, "linf": _max_abs}


def default_abs_tol(data_range: str) -> float:
  """The paper's absolute tolerance for data in ``data_range``: one 8-bit level, width/256."""
  return DATA_RANGES[data_range] / 256.0


def improved_euler_step(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, h: Array, dw: Array) -> tuple[Array, Array]:
  """One stochastic improved-Euler step of the reverse SDE from t to t − h (h >= 0).

  x′ = x − h[f − g² s](x, t) + g(t) ΔW is Euler–Maruyama; x̃ = x − h[f − g² s](x′, t − h)
  + g(t − h) ΔW re-uses the same increment; their mean x″ = ½(x′ + x̃) is the higher-order
  proposal (Jolicoeur-Martineau et al. 2021, Algorithm 1, with ΔW = √h z).  Two score
  evaluations.

  Args:
    sde: the forward SDE.
    score_fn: score_fn(x [B, ...], t [B]) -> [B, ...].
    x: current state [B, ...] at times t.
    t: current times [B].
    h: step sizes [B].
    dw: Brownian increments [B, ...] over the step, of variance h.

  Returns:
    (x′, x″), each [B, ...].
  """
  h_b = bcast(h, x)
  x_low = x - h_b * sde.reverse_drift(x, t, score_fn(x, t)) + bcast(sde.diffusion(t), x) * dw
  t_next = t - h
  x_tilde = (x - h_b * sde.reverse_drift(x_low, t_next, score_fn(x_low, t_next))
             + bcast(sde.diffusion(t_next), x) * dw)
  return x_low, 0.5 * (x_low + x_tilde)


class PathMemory(NamedTuple):
  """Points of the Brownian path ahead of the current time t that rejected attempts revealed.

  Slot k holds a lag u_k > 0 (+inf when empty) and the increment W(t) − W(t − u_k).
  """

  lag: Array  # [B, K]
  dw: Array  # [B, K, ...]


def empty_memory(shape: tuple[int, ...], size: int) -> PathMemory:
  """A memory of ``size`` empty slots for a batch of ``shape`` [B, ...]."""
  return PathMemory(jnp.full((shape[0], size), jnp.inf, jnp.float32), jnp.zeros((shape[0], size) + shape[1:]))


def _gather(a: Array, i: Array) -> Array:
  """Row b's slot i[b] of a [B, K, ...] -> [B, ...]."""
  return jnp.take_along_axis(a, i.reshape((-1, 1) + (1,) * (a.ndim - 2)), axis=1)[:, 0]


def _per_slot(m: Array, a: Array) -> Array:
  """A [B, K] array reshaped to broadcast against a [B, K, ...]."""
  return m.reshape(m.shape + (1,) * (a.ndim - 2))


def bridge_increment(mem: PathMemory, h: Array, z: Array) -> Array:
  """The increment W(t) − W(t − h) [B, ...] given the known points, from standard normal z.

  Between the nearest known lags u_a < h <= u_b it is drawn from the Brownian bridge,
  mean ΔW_a + (h − u_a)/(u_b − u_a)(ΔW_b − ΔW_a) and variance (h − u_a)(u_b − h)/(u_b − u_a);
  beyond every known lag it is ΔW_a + N(0, h − u_a) (u_a = 0, ΔW_a = 0 when none is below h).
  """
  # Rackauckas & Nie 2017 (rejection sampling with memory): the bridge between revealed points.
  below = mem.lag < h[:, None]  # [B, K]
  above = jnp.isfinite(mem.lag) & ~below
  ia = jnp.argmax(jnp.where(below, mem.lag, -1.0), axis=1)  # [B]
  ib = jnp.argmin(jnp.where(above, mem.lag, jnp.inf), axis=1)  # [B]
  has_a, has_b = jnp.any(below, axis=1), jnp.any(above, axis=1)  # [B]
  u_a = jnp.where(has_a, _gather(mem.lag, ia), 0.0)
  w_a = jnp.where(bcast(has_a, z), _gather(mem.dw, ia), 0.0)
  u_b = jnp.where(has_b, _gather(mem.lag, ib), 1.0)  # any finite value: unused without b
  w_b = _gather(mem.dw, ib)
  span = jnp.where(has_b, u_b - u_a, 1.0)
  frac = jnp.where(has_b, (h - u_a) / span, 0.0)
  var = jnp.where(has_b, (h - u_a) * (u_b - h) / span, h - u_a)
  return w_a + bcast(frac, z) * (w_b - w_a) + bcast(jnp.sqrt(jnp.maximum(var, 0.0)), z) * z


def update_memory(mem: PathMemory, h: Array, dw: Array, rejected: Array, accepted: Array) -> tuple[PathMemory, Array]:
  """Records a rejected attempt's point (h, dw), or moves the memory to t − h on acceptance.

  A full memory forgets its farthest point to make room (counted: the second output, [B]).
  """
  # Rejected: store (h, dw) in an empty slot, or in place of the farthest point when full.
  new = rejected & ~jnp.any(mem.lag == h[:, None], axis=1)
  full = jnp.all(jnp.isfinite(mem.lag), axis=1)
  slot = jnp.where(full, jnp.argmax(mem.lag, axis=1), jnp.argmax(~jnp.isfinite(mem.lag), axis=1))  # [B]
  put = new[:, None] & (jnp.arange(mem.lag.shape[1]) == slot[:, None])  # [B, K]
  lag = jnp.where(put, h[:, None], mem.lag)
  dws = jnp.where(_per_slot(put, mem.dw), dw[:, None], mem.dw)
  # Accepted: lags and increments become relative to t − h; points now behind are dropped.
  shifted = lag - h[:, None]
  keep = shifted > 0
  lag = jnp.where(accepted[:, None], jnp.where(keep, shifted, jnp.inf), lag)
  dws = jnp.where(_per_slot(accepted[:, None], dws), jnp.where(_per_slot(keep, dws), dws - dw[:, None], 0.0), dws)
  return PathMemory(lag, dws), new & full


class _State(NamedTuple):
  x: Array  # [B, ...] current state
  x_prev: Array  # [B, ...] x′ of the last accepted step (the prior sample before any)
  t: Array  # [B] current time, from T down to eps
  h: Array  # [B] next step size
  memory: PathMemory  # the Brownian path ahead of t (noise="bridge")
  attempts: Array  # [B] int32, steps tried
  accepted: Array  # [B] int32, steps accepted
  forgotten: Array  # [B] int32, path points dropped from a full memory


def _solve(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, abs_tol: Optional[float],
           rel_tol: float, data_range: str, norm: str, h_init: float, safety: float, exponent: float,
           extrapolation: bool, noise: str, memory: int, max_steps: int,
           denoise: bool, constraint: constraints.Constraint = None) -> tuple[Array, dict[str, Array]]:
  """Runs the adaptive solver; returns the samples [shape] and a dict of statistics."""
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  atol = default_abs_tol(data_range) if abs_tol is None else abs_tol
  error_norm = NORMS[norm]
  eps = sde.eps
  x = sde.prior_std * common.normal(keys, shape, 0)  # [B, ...] from the prior
  x = constraints.project(constraint, sde, x, common.full_t(sde.T, n), keys, 0)
  zeros = jnp.zeros((n,), jnp.int32)
  init = _State(x=x, x_prev=x, t=common.full_t(sde.T, n), h=common.full_t(min(h_init, sde.T - eps), n),
                memory=empty_memory(shape, memory if noise == "bridge" else 1), attempts=zeros, accepted=zeros,
                forgotten=zeros)

  def cond(s: _State) -> Array:
    return jnp.any(s.t > eps) & (jnp.max(s.attempts) < max_steps)

  def body(s: _State) -> _State:
    live = s.t > eps  # [B]
    # Attempt k (from 1) of sample i draws its normal from fold_in(fold_in(key, i), k).
    z = common.normal(jax.vmap(jax.random.fold_in)(keys, s.attempts + 1), shape, 0)
    dw = bridge_increment(s.memory, s.h, z) if noise == "bridge" else bcast(jnp.sqrt(s.h), z) * z
    x_low, x_high = improved_euler_step(sde, score_fn, s.x, s.t, s.h, dw)
    # Jolicoeur-Martineau et al. 2021, Algorithm 1: mixed tolerance, scaled error, E ≤ 1 accepts.
    tol = jnp.maximum(atol, rel_tol * jnp.maximum(jnp.abs(x_low), jnp.abs(s.x_prev)))
    err = error_norm((x_low - x_high) / tol)  # [B]
    accept = live & (err <= 1.0)
    mem, forgot = s.memory, jnp.zeros_like(live)
    if noise == "bridge":
      mem, forgot = update_memory(s.memory, s.h, dw, live & ~accept, accept)
    reached_end = s.h >= s.t - eps  # the step lands on eps exactly
    t = jnp.where(accept, jnp.where(reached_end, eps, s.t - s.h), s.t)
    grow = jnp.maximum(err, 1e-12) ** -exponent  # E = 0 (no error) would be an infinite factor
    h = jnp.where(t > eps, jnp.minimum(t - eps, safety * s.h * grow), 0.0)
    accept_b = bcast(accept, s.x)
    x_new = x_high if extrapolation else x_low
    if constraint is not None:  # replacement on accepted steps, call number = the attempt's
      x_new = constraint.project(sde, x_new, t, constraints.noise(jax.vmap(jax.random.fold_in)(keys, s.attempts + 1),
                                                                  shape, 0))
    return _State(
        x=jnp.where(accept_b, x_new, s.x),
        x_prev=jnp.where(accept_b, x_low, s.x_prev),
        t=t,
        h=h,
        memory=mem,
        attempts=s.attempts + live.astype(jnp.int32),
        accepted=s.accepted + accept.astype(jnp.int32),
        forgotten=s.forgotten + forgot.astype(jnp.int32),
    )

  s = jax.lax.while_loop(cond, body, init)
  unfinished = s.t > eps  # [B], only when max_steps ran out: such samples are NaN
  x = jnp.where(bcast(unfinished, s.x), jnp.nan, s.x)
  if denoise:
    x = steps.denoise(sde, score_fn, x, common.full_t(eps, n))
  x = constraints.finalize(constraint, x)
  nfe_per_sample = 2 * s.attempts + int(denoise)  # [B]
  stats = dict(nfe=jnp.max(nfe_per_sample), nfe_mean=jnp.mean(nfe_per_sample), accepted=s.accepted,
               rejected=s.attempts - s.accepted, forgotten=s.forgotten, unfinished=jnp.sum(unfinished))
  return x, stats


def adaptive_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], **opts) -> tuple[Array, Array]:
  """Samples with the adaptive solver (``sampling.sample(..., method="adaptive")``).

  Args:
    key: PRNG key; sample i draws all its noise from fold_in(key, i).
    sde: the forward SDE (VE, VP or sub-VP).
    score_fn: score_fn(x [B, ...], t [B]) -> [B, ...].
    shape: batch shape [B, ...].
    **opts: abs_tol (None: the paper's for ``data_range``), rel_tol, data_range ("[-1,1]" or
      "[0,1]"), norm ("l2": root mean square, or "linf"), h_init, safety θ, exponent r,
      extrapolation (accept x″ rather than x′), noise ("bridge" or the paper's "fresh"),
      memory (path points a sample keeps with "bridge"), max_steps (attempts per sample;
      samples still short of eps then come back as NaN), denoise (a final Tweedie step, 1 NFE),
      constraint (known coordinates replaced after every accepted step, ``sampling.constraints``).

  Returns:
    samples [shape] and the NFE of the batch: 2 × the most attempts of any sample, + denoise.
  """
  x, stats = _solve(key, sde, score_fn, shape, **opts)
  return x, stats["nfe"]


@functools.partial(jax.jit, static_argnames=("sde", "score_fn", "shape", "options"))
def _solve_compiled(key, sde, score_fn, shape, options):
  return _solve(key, sde, score_fn, shape, **dict(options))


def adaptive_sample_with_stats(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...],
                               **opts) -> tuple[Array, dict[str, Array]]:
  """As ``sampling.sample(..., method="adaptive", **opts)``, with the solver's statistics.

  Options are checked as by ``sampling.sample`` (ValueError before compiling).

  Returns:
    samples [shape] and a dict: nfe (as ``sample`` returns it), nfe_mean (over samples),
    accepted [B] and rejected [B] step counts, forgotten [B] (path points a full memory
    dropped), unfinished (samples that ran out of max_steps).
  """
  from score_jax import sampling  # the package imports this module: import it lazily

  static = sampling._static_args(sde, score_fn, shape, "adaptive", opts)  # pylint: disable=protected-access
  del static["method"]
  return _solve_compiled(key, **static)


def _check(sde: SDE, opts) -> None:
  del sde
  options.positive(opts, "rel_tol", "h_init", "exponent")
  if opts["abs_tol"] is not None:
    options.positive(opts, "abs_tol")
  options.choice(opts, "data_range", DATA_RANGES)
  options.choice(opts, "norm", NORMS)
  options.choice(opts, "noise", NOISES)
  safety = opts["safety"]
  options.require(isinstance(safety, (int, float)) and not isinstance(safety, bool) and 0.0 < safety <= 1.0,
                  f"sampling option safety={safety!r} must lie in (0, 1].")
  for name in ("extrapolation", "denoise"):
    options.require(isinstance(opts[name], bool), f"sampling option {name}={opts[name]!r} must be True or False.")
  options.count(opts, "memory")
  options.count(opts, "max_steps")


ADAPTIVE_METHOD = options.Method(adaptive_sample, dict(
    abs_tol=None, rel_tol=0.01, data_range="[-1,1]", norm="l2", h_init=0.01, safety=0.9, exponent=0.9,
    extrapolation=True, noise="bridge", memory=8, max_steps=10_000, denoise=True), _check,
                                 options.no_resampling("adaptive"))
