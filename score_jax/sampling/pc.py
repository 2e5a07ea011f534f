"""Predictor–corrector sampling (Song et al. 2021, Algorithm 1), one compiled scan."""

from __future__ import annotations

from typing import Any

import jax

from score_jax.sampling import common, constraints, options, steps
from score_jax.sde import SDE, ScoreFn

Array = Any


def pc_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, predictor: str,
              corrector: str, snr: float, n_steps: int, num_steps: int, denoise: bool,
              constraint: constraints.Constraint = None) -> tuple[Array, int]:
  """Draws ``shape`` samples by alternating a predictor step t_i → t_{i+1} on the grid of
  ``num_steps`` steps from T to eps with ``n_steps`` corrector steps at t_{i+1}.

  With a ``constraint`` the known coordinates are replaced after the prior draw and after
  every predictor and every corrector step, each step is repeated ``constraint.resample``
  times (RePaint), and the output keeps the known values exactly (``sampling.constraints``).

  Returns:
    samples [shape] and the number of score evaluations per sample.
  """
  n = shape[0]
  predict = steps.PREDICTORS[predictor]
  correct = steps.CORRECTORS[corrector]
  keys = common.per_sample_keys(key, n)
  ts = common.time_grid(sde.T, sde.eps, num_steps)
  x = sde.prior_std * common.normal(keys, shape, 0)  # [B, ...] from the prior
  x = constraints.project(constraint, sde, x, common.full_t(sde.T, n), keys, 0)
  resample = 1 if constraint is None else constraint.resample
  calls = (1 + n_steps) * resample  # replacement calls per grid step

  def body(x, i):
    t, t_next = common.full_t(ts[i], n), common.full_t(ts[i + 1], n)
    step_keys = jax.vmap(jax.random.fold_in, (0, None))(keys, i + 1)
    # α = 1 − β_i of the step's forward transition (1 for VE), as in score_sde's correctors.
    alpha = sde.transition_coeffs(t_next, t)[0] ** 2

    def one_step(x, r):
      # Repetition r > 0 (RePaint) draws its sampler noise from a key with r folded in.
      rkeys = step_keys if isinstance(r, int) and r == 0 else jax.vmap(jax.random.fold_in, (0, None))(step_keys, r)
      first = 1 + i * calls + r * (1 + n_steps)  # this repetition's replacement-call numbers
      x, _ = predict(sde, score_fn, x, t, t_next, common.normal(rkeys, shape, 0))
      x = constraints.project(constraint, sde, x, t_next, keys, first)

      def corrector_step(j, x):
        x = correct(sde, score_fn, x, t_next, common.normal(rkeys, shape, j + 1), snr, alpha)[0]
        return constraints.project(constraint, sde, x, t_next, keys, first + 1 + j)

      return jax.lax.fori_loop(0, n_steps, corrector_step, x)

    return constraints.repeat(constraint, sde, one_step, x, t, t_next, keys, i), None

  x, _ = jax.lax.scan(body, x, jax.numpy.arange(num_steps))
  if denoise:
    x = steps.denoise(sde, score_fn, x, common.full_t(sde.eps, n))
  x = constraints.finalize(constraint, x)
  nfe = num_steps * resample * (steps.PREDICTOR_NFE[predictor] + n_steps * steps.CORRECTOR_NFE[corrector])
  return x, nfe + int(denoise)


def _check(sde: SDE, opts) -> None:
  del sde
  options.choice(opts, "predictor", steps.PREDICTORS)
  options.choice(opts, "corrector", steps.CORRECTORS)
  options.require(
      not (opts["predictor"] == "none" and opts["corrector"] == "none"),
      "sampling options predictor='none' and corrector='none' leave the prior untouched; pick at least one.",
  )
  options.positive(opts, "snr")
  options.count(opts, "num_steps")
  options.count(opts, "n_steps", minimum=0)


PC_METHOD = options.Method(pc_sample, dict(
    predictor="reverse_diffusion", corrector="langevin", snr=0.16, n_steps=1, num_steps=1000, denoise=True), _check,
                           options.any_constraint)
