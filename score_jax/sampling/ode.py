"""Probability-flow ODE sampling (Song et al. 2021, eq. 13), solved on the device by diffrax.

The whole batch is one ODE state, as in score_sde, so adaptive step sizes are shared by
the batch and NFE is one number.  Unlike score_sde (scipy ``solve_ivp`` on the host, one
device round trip per evaluation), the solve is a single compiled diffrax loop.
"""

from __future__ import annotations

from typing import Any

import diffrax
import jax
import jax.numpy as jnp

from score_jax.sampling import common, options, steps
from score_jax.sde import SDE, ScoreFn

Array = Any

# Score evaluations per attempted step, and once at the start (first-same-as-last tableaux).
SOLVERS = {
    "tsit5": (diffrax.Tsit5, 6, 1),
    "dopri5": (diffrax.Dopri5, 6, 1),
    "heun": (diffrax.Heun, 2, 0),
}


def ode_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, solver: str, rtol: float,
               atol: float, num_steps: int, max_steps: int, pcoeff: float, icoeff: float, dcoeff: float,
               denoise: bool) -> tuple[Array, Array]:
  """Integrates the probability-flow ODE from prior noise at T down to eps.

  ``solver`` "tsit5" / "dopri5" use a PID step-size controller with ``rtol``/``atol``;
  "heun" takes ``num_steps`` fixed steps (2 NFE each).

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

  solver_cls, nfe_per_step, nfe_start = SOLVERS[solver]
  if solver == "heun":
    controller, dt0 = diffrax.ConstantStepSize(), -(sde.T - sde.eps) / num_steps
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


def _check(sde: SDE, opts) -> None:
  del sde
  options.choice(opts, "solver", SOLVERS)
  options.positive(opts, "rtol", "atol")
  options.count(opts, "num_steps")
  options.count(opts, "max_steps")


ODE_METHOD = options.Method(ode_sample, dict(
    solver="tsit5", rtol=1e-5, atol=1e-5, num_steps=100, max_steps=16384, pcoeff=0.0, icoeff=1.0, dcoeff=0.0,
    denoise=True), _check)
