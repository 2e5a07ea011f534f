"""Probability-flow ODE sampling (Song et al. 2021, eq. 13), solved on the device by diffrax.

The whole batch is one ODE state, as in score_sde, so adaptive step sizes are shared by
the batch and NFE is one number.  Unlike score_sde (scipy ``solve_ivp`` on the host, one
device round trip per evaluation), the solve is a single compiled diffrax loop.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from score_jax.sampling import common, constraints, options, steps
from score_jax.sde import SDE, ScoreFn

Array = Any

# The diffrax solver class, score evaluations per attempted step, and once at the start
# (first-same-as-last tableaux).  Classes by name: diffrax (with equinox, optimistix, lineax) is
# imported on the first solve, not by every process that imports the samplers (0.42 s after jax, flax, optax and orbax, on a 2-core CPU).
SOLVERS = {
    "tsit5": ("Tsit5", 6, 1),
    "dopri5": ("Dopri5", 6, 1),
    "heun": ("Heun", 2, 0),
    "euler": ("Euler", 1, 0),
}


def solver_class(name: str):
  """The diffrax solver class of ``SOLVERS[name]`` (imports diffrax)."""
  import diffrax  # pylint: disable=g-import-not-at-top
  return getattr(diffrax, SOLVERS[name][0])
FIXED_STEP = ("heun", "euler")


def ode_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, solver: str, rtol: float,
               atol: float, num_steps: int, max_steps: int, pcoeff: float, icoeff: float, dcoeff: float,
               denoise: bool, shift: float = 1.0, constraint: constraints.Constraint = None) -> tuple[Array, Array]:
  """Integrates the probability-flow ODE from prior noise at T down to eps.

  ``solver`` "tsit5" / "dopri5" use a PID step-size controller with ``rtol``/``atol``;
  "heun" and "euler" take ``num_steps`` fixed steps (2 and 1 NFE each) on
  ``common.time_grid(T, eps, num_steps, shift)`` — with the rectified-flow SDE, "euler" on a
  uniform or shifted grid is the flow-matching sampler of Liu et al. 2023 and SD3.  A
  ``constraint`` (fixed steps only: an adaptive solver's step control cannot see a state that
  changes between its steps) replaces the known coordinates after every step, the steps
  being diffrax's steps run one by one (``sampling.constraints``).

  Returns:
    samples [shape] and the number of score evaluations (a scalar array).
  """
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  x_T = sde.prior_std * common.normal(keys, shape, 0)
  drift = sde.probability_flow(score_fn)

  def vector_field(t, x, args):
    del args
    return drift(x, common.full_t(t, n))

  import diffrax  # pylint: disable=g-import-not-at-top
  solver_cls, (_, nfe_per_step, nfe_start) = solver_class(solver), SOLVERS[solver]
  if constraint is not None:
    x = _fixed_steps_with_constraint(sde, vector_field, solver_cls(), x_T, keys, num_steps, shift, constraint)
    if denoise:
      x = steps.denoise(sde, score_fn, x, common.full_t(sde.eps, n))
    return constraints.finalize(constraint, x), jnp.asarray(nfe_per_step * num_steps + int(denoise), jnp.int32)
  if solver in FIXED_STEP:
    controller, dt0 = diffrax.StepTo(common.time_grid(sde.T, sde.eps, num_steps, shift)), None
  else:
    controller = diffrax.PIDController(rtol=rtol, atol=atol, pcoeff=pcoeff, icoeff=icoeff, dcoeff=dcoeff)
    dt0 = None
  sol = diffrax.diffeqsolve(
      diffrax.ODETerm(vector_field), solver_cls(), t0=sde.T, t1=sde.eps, dt0=dt0, y0=x_T,
      stepsize_controller=controller, saveat=diffrax.SaveAt(t1=True), max_steps=max_steps)
  x = sol.ys[0]
  nfe = nfe_start + nfe_per_step * sol.stats["num_steps"]
  if denoise:
    x = steps.denoise(sde, score_fn, x, common.full_t(sde.eps, n))
  return x, jnp.asarray(nfe, jnp.int32) + int(denoise)


def _fixed_steps_with_constraint(sde: SDE, vector_field, solver, x: Array, keys: jax.Array, num_steps: int,
                                 shift: float, constraint: constraints.Replacement) -> Array:
  """``num_steps`` diffrax steps from T to eps, replacing the known coordinates after each."""
  import diffrax  # pylint: disable=g-import-not-at-top
  n = x.shape[0]
  term = diffrax.ODETerm(vector_field)
  ts = common.time_grid(sde.T, sde.eps, num_steps, shift)
  x = constraints.project(constraint, sde, x, common.full_t(sde.T, n), keys, 0)

  def body(x, i):
    x = solver.step(term, ts[i], ts[i + 1], x, None, None, False)[0]
    return constraints.project(constraint, sde, x, common.full_t(ts[i + 1], n), keys, i + 1), None

  return jax.lax.scan(body, x, jnp.arange(num_steps))[0]


def _check_constraint(sde: SDE, opts, constraint) -> None:
  options.no_resampling("ode")(sde, opts, constraint)
  options.require(opts["solver"] in FIXED_STEP,
                  f"sampling option solver={opts['solver']!r} is adaptive and cannot impose known coordinates "
                  "(constraint): its error control never sees the replaced state; use solver='heun' or 'euler' "
                  "with num_steps, or another method.")


def _check(sde: SDE, opts) -> None:
  del sde
  options.choice(opts, "solver", SOLVERS)
  options.positive(opts, "rtol", "atol", "shift")
  options.count(opts, "num_steps")
  options.count(opts, "max_steps")
  options.require(opts["shift"] == 1.0 or opts["solver"] in FIXED_STEP,
                  f"sampling option shift={opts['shift']!r} moves a fixed time grid; solver={opts['solver']!r} "
                  "chooses its own steps: use solver='euler' or 'heun', or shift=1.")


ODE_METHOD = options.Method(ode_sample, dict(
    solver="tsit5", rtol=1e-5, atol=1e-5, num_steps=100, max_steps=16384, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
    denoise=True, shift=1.0), _check, _check_constraint)
