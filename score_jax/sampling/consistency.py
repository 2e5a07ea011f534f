"""Consistency-model sampling (Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023,
Algorithm 1): one network evaluation per sample, or k with fresh noise in between.

A consistency model f(y, σ) maps a point of a probability-flow trajectory at noise level σ to
the trajectory's origin.  Like EDM's sampler this works for any linear SDE in y = x/m(t) and
σ = ``sde.noise_level(t)``; f is recovered from ``score_fn`` by Tweedie's formula
(``edm.make_denoiser``), which for the "consistency" parametrization of ``score_fn.py`` gives f
itself.  With levels τ_0 > τ_1 > … > τ_{k−1}:

    y ~ N(0, (τ_0² + v) I)                 (the SDE's prior, as the EDM sampler draws it)
    x ← f(y, τ_0)
    for i = 1 … k − 1:
        y ← x + √(τ_i² − ε²) z_i,  z_i ~ N(0, I)
        x ← f(y, τ_i)

with ε = ``sigma_min`` (the model's boundary σ, the paper's 0.002).  The levels are ``sigmas``
when given, else the first k of EDM's ρ-spaced schedule of k + 1 levels from σ_max to σ_min
(``consistency_sigmas``; one step: τ_0 = σ_max alone).

A student distilled on N fixed levels (``distillation.levels``: N = 18 of EDM's schedule) has
only ever been evaluated there, and between them it can be far off: on digits, two steps
restarting at σ = 12.9 (a level of N = 18) gave FID 3.35, at σ = 15 (between two levels) 177
(BENCHMARKS.md).  ``num_scales`` = N (the distillation's, with the same ``sigma_min``,
``sigma_max`` and ``rho``) puts the default levels on that grid — each EDM-spaced level moved to
the nearest of the N in σ^{1/ρ}, as the paper's code indexes its restart times into the training
discretization — and refuses ``sigmas`` off it.  None: levels anywhere (a model trained on
continuous σ).

Zero-shot editing (the paper's Algorithm 4) is ``constraint=``: before every evaluation the
known coordinates of y are replaced by the observation plus noise at that level, and the output
keeps them exactly (``constraints.finalize``).

Options (``CONSISTENCY_METHOD.defaults``): num_steps = 1, sigmas = None, rho = 7,
sigma_min / sigma_max = None for σ̃(eps) / σ̃(T), num_scales = None.  NFE = k.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.sampling import common, constraints, edm, options
from score_jax.sde import SDE, ScoreFn

Array = Any


def consistency_sigmas(num_steps: int, *, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
  """The k = ``num_steps`` evaluation levels τ_0 = σ_max > … > τ_{k−1} > σ_min: the first k of
  EDM's ρ-spaced schedule of k + 1 levels from σ_max down to σ_min.  Returns [k] float64."""
  return edm.edm_sigmas(num_steps + 1, sigma_min=sigma_min, sigma_max=sigma_max, rho=rho)[:num_steps]


def grid_index(sigmas: np.ndarray, num_scales: int, *, sigma_min: float, sigma_max: float, rho: float) -> np.ndarray:
  """The (fractional) index of each σ in the descending grid ``edm.edm_sigmas(num_scales)``:
  0 at σ_max, N − 1 at σ_min, linear in σ^{1/ρ}."""
  a, b = sigma_max ** (1.0 / rho), sigma_min ** (1.0 / rho)
  return (num_scales - 1) * (a - np.asarray(sigmas, np.float64) ** (1.0 / rho)) / (a - b)


def levels(sde: SDE, opts) -> tuple[np.ndarray, float]:
  """(the evaluation levels [k], the boundary σ ε) that options ``opts`` select."""
  lo, hi = edm._default_range(sde, opts["sigma_min"], opts["sigma_max"])  # pylint: disable=protected-access
  if opts["sigmas"] is not None:
    return np.asarray(opts["sigmas"], np.float64), lo
  taus = consistency_sigmas(opts["num_steps"], sigma_min=lo, sigma_max=hi, rho=opts["rho"])
  n = opts["num_scales"]
  if n is not None:  # each level moved to the nearest of the grid, above its boundary level
    grid = edm.edm_sigmas(n, sigma_min=lo, sigma_max=hi, rho=opts["rho"])[:-1]
    index = np.clip(np.round(grid_index(taus, n, sigma_min=lo, sigma_max=hi, rho=opts["rho"])), 0, n - 2)
    taus = grid[index.astype(int)]
  return taus, lo


def consistency_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, num_steps: int,
                       sigmas: Optional[Sequence[float]], rho: float, sigma_min: Optional[float],
                       sigma_max: Optional[float], num_scales: Optional[int] = None,
                       constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """Draws ``shape`` samples from a consistency model in k = ``num_steps`` evaluations (module docstring).

  Args:
    key: sample i draws its initial and re-injected noise from fold_in(key, i).
    sde: any linear SDE; the levels are its noise levels σ̃(t) = s(t)/m(t).
    score_fn: the score of the model (f read back by Tweedie's formula).
    shape: [B, ...].
    num_steps: k, the number of evaluations.
    sigmas: None, or the k levels τ_0 > … > τ_{k−1} to evaluate at (then ``rho`` and
      ``sigma_max`` are not used).
    rho: ρ of the default levels.
    sigma_min: ε, the model's boundary (None: σ̃(eps)); noise re-injected at τ has std √(τ² − ε²).
    sigma_max: τ_0 of the default levels (None: σ̃(T)).
    num_scales: None, or the N of a distilled student's grid (module docstring): default levels
      on it, ``sigmas`` checked to lie on it.
    constraint: known coordinates replaced before every evaluation and set exactly at the end.

  Returns:
    samples [shape] and the number of evaluations k.
  """
  taus, eps = levels(sde, dict(num_steps=num_steps, sigmas=sigmas, rho=rho, sigma_min=sigma_min,
                               sigma_max=sigma_max, num_scales=num_scales))
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  denoise = edm.make_denoiser(sde, score_fn)
  f32 = lambda a: jnp.asarray(a, jnp.float32)
  times = jnp.clip(sde.time_from_noise_level(f32(taus)), sde.eps, sde.T)  # [k]
  restart_std = f32(np.sqrt(np.maximum(taus**2 - eps**2, 0.0)))  # [k]

  def evaluate(y, i):
    sigma = common.full_t(f32(taus)[i], n)
    y = constraints.project_noise_level(constraint, y, sigma, keys, i)
    return denoise(y, sigma, common.full_t(times[i], n))

  x = evaluate(edm.initial_std(sde, float(taus[0])) * common.normal(keys, shape, 0), 0)
  if len(taus) > 1:
    def step(x, i):
      return evaluate(x + restart_std[i] * common.normal(keys, shape, i), i), None
    x, _ = jax.lax.scan(step, x, jnp.arange(1, len(taus)))
  return constraints.finalize(constraint, x), len(taus)


def _check(sde: SDE, opts) -> None:
  options.count(opts, "num_steps")
  options.positive(opts, "rho")
  _check_grid(opts)
  lo, _ = edm.check_sigma_range(sde, opts["sigma_min"], opts["sigma_max"])
  _, ceiling = edm._default_range(sde, None, None)  # pylint: disable=protected-access
  sigmas = opts["sigmas"]
  if sigmas is None:
    return
  ok = isinstance(sigmas, (tuple, list)) and len(sigmas) >= 1 and all(
      isinstance(s, (int, float)) and not isinstance(s, bool) for s in sigmas)
  options.require(ok, f"sampling option sigmas={sigmas!r} must be None or a non-empty tuple of noise levels.")
  taus = np.asarray(sigmas, np.float64)
  options.require(len(taus) == opts["num_steps"],
                  f"sampling option sigmas={tuple(sigmas)!r} gives {len(taus)} level(s) but num_steps="
                  f"{opts['num_steps']}; set num_steps={len(taus)} (one evaluation per level).")
  options.require(bool(np.all(np.diff(taus) < 0)), f"sampling option sigmas={tuple(sigmas)!r} must decrease.")
  options.require(taus[-1] > lo, f"sampling option sigmas={tuple(sigmas)!r}: every level must exceed "
                  f"sigma_min={lo:.6g}, the model's boundary.")
  slack = edm._RANGE_SLACK  # pylint: disable=protected-access
  options.require(taus[0] <= ceiling * (1.0 + slack), f"sampling option sigmas={tuple(sigmas)!r} starts above "
                  f"the SDE's noise level at T, {ceiling:.6g}.")
  n = opts["num_scales"]
  if n is None:
    return
  _, hi = edm._default_range(sde, opts["sigma_min"], opts["sigma_max"])  # pylint: disable=protected-access
  index = grid_index(taus, n, sigma_min=lo, sigma_max=hi, rho=opts["rho"])
  grid = edm.edm_sigmas(n, sigma_min=lo, sigma_max=hi, rho=opts["rho"])[:-1]
  off = [float(s) for s, i in zip(taus, index) if abs(i - round(i)) > 1e-4]
  options.require(not off, f"sampling option sigmas={tuple(sigmas)!r}: {off} lie between the levels of the "
                  f"distillation grid (num_scales={n}: {', '.join(f'{g:.4g}' for g in grid[:-1])}), where a "
                  "distilled student was never trained; pick levels of the grid, or set num_scales=None to "
                  "evaluate anywhere.")


def _check_grid(opts) -> None:
  n = opts["num_scales"]
  if n is None:
    return
  options.require(isinstance(n, int) and not isinstance(n, bool) and n >= 2,
                  f"sampling option num_scales={n!r} must be None or an integer >= 2 (the distillation's N).")
  options.require(opts["num_steps"] <= n - 1, f"sampling option num_steps={opts['num_steps']} exceeds the "
                  f"{n - 1} levels above the boundary of the grid num_scales={n}; use at most {n - 1} steps.")


CONSISTENCY_METHOD = options.Method(
    consistency_sample, dict(num_steps=1, sigmas=None, rho=7.0, sigma_min=None, sigma_max=None, num_scales=None),
    _check,
    options.no_resampling("consistency"))
