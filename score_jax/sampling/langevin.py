"""Langevin dynamics and annealed Langevin dynamics (NCSN), each one compiled loop."""

from __future__ import annotations

from typing import Any, Optional

import jax
import jax.numpy as jnp

from score_jax.sampling import common, constraints, options, steps
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any


def langevin_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, num_steps: int,
                    step_size: float, t: Optional[float], denoise: bool,
                    constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """Unadjusted Langevin dynamics x ← x + δ ∇log p_t(x) + √(2δ) z targeting the fixed
  marginal p_t (t = eps by default), started from the SDE's prior.  A ``constraint``
  replaces the known coordinates after every step (``sampling.constraints``)."""
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  t_arr = common.full_t(sde.eps if t is None else t, n)
  x = sde.prior_std * common.normal(keys, shape, 0)
  x = constraints.project(constraint, sde, x, t_arr, keys, 0)

  def body(i, x):
    z = common.normal(keys, shape, i + 1)
    x = x + step_size * score_fn(x, t_arr) + jnp.sqrt(2.0 * step_size) * z
    return constraints.project(constraint, sde, x, t_arr, keys, i + 1)

  x = jax.lax.fori_loop(0, num_steps, body, x)
  if denoise:
    x = steps.denoise(sde, score_fn, x, t_arr)
  return constraints.finalize(constraint, x), num_steps + int(denoise)


def ald_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, num_steps: int,
               n_steps_each: int, step_size: Optional[float], denoise: bool,
               constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """Annealed Langevin dynamics (Song & Ermon 2019, Algorithm 1).

  ``num_steps`` noise levels at times t_1 = T > … > t_L = eps with stds s_i, and
  ``n_steps_each`` Langevin steps at each with step α_i = ε s_i²/s_L².  ``step_size`` is ε;
  by default 0.2 s_L², which is NCSN's ε = 2e-5 at σ_L = 0.01.  A ``constraint`` replaces
  the known coordinates after every Langevin step (``sampling.constraints``).
  """
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  ts = jnp.linspace(sde.T, sde.eps, num_steps)
  s_last = sde.marginal_std(jnp.asarray(sde.eps, jnp.float32))
  eps_step = 0.2 * s_last**2 if step_size is None else step_size
  x = sde.prior_std * common.normal(keys, shape, 0)
  x = constraints.project(constraint, sde, x, common.full_t(sde.T, n), keys, 0)

  def level(i, x):
    t = common.full_t(ts[i], n)
    alpha = eps_step * (sde.marginal_std(t) / s_last) ** 2  # [B]
    level_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i + 1)

    def inner(j, x):
      z = common.normal(level_keys, shape, j)
      x = x + bcast(alpha, x) * score_fn(x, t) + bcast(jnp.sqrt(2.0 * alpha), x) * z
      return constraints.project(constraint, sde, x, t, keys, 1 + i * n_steps_each + j)

    return jax.lax.fori_loop(0, n_steps_each, inner, x)

  x = jax.lax.fori_loop(0, num_steps, level, x)
  if denoise:
    x = steps.denoise(sde, score_fn, x, common.full_t(sde.eps, n))
  return constraints.finalize(constraint, x), num_steps * n_steps_each + int(denoise)


def _check_langevin(sde: SDE, opts) -> None:
  options.count(opts, "num_steps")
  options.positive(opts, "step_size")
  t = opts["t"]
  options.require(t is None or 0.0 < t <= sde.T, f"sampling option t={t!r} must lie in (0, T={sde.T}] (None means eps).")


def _check_ald(sde: SDE, opts) -> None:
  del sde
  options.count(opts, "num_steps")
  options.count(opts, "n_steps_each")
  if opts["step_size"] is not None:
    options.positive(opts, "step_size")


LANGEVIN_METHOD = options.Method(langevin_sample, dict(num_steps=1000, step_size=1e-3, t=None, denoise=False),
                                 _check_langevin, options.no_resampling("langevin"))
ALD_METHOD = options.Method(ald_sample, dict(num_steps=100, n_steps_each=10, step_size=None, denoise=True), _check_ald,
                            options.no_resampling("ald"))
