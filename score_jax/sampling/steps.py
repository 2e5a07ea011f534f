"""Pure sampler steps: predictors, correctors and the final denoising step.

Every step is a pure function of explicit inputs, with no randomness of its own:

    predictor(sde, score_fn, x, t, t_next, z)      -> (x, x_mean)   one reverse step t -> t_next < t
    corrector(sde, score_fn, x, t, z, snr, alpha)  -> (x, x_mean)   one step at fixed t

``z`` is standard normal noise of x's shape, drawn by the driver from per-sample keys;
``t``, ``t_next`` are [B] arrays.  ``x_mean`` is the step without its noise term.
Each step costs one score evaluation (``PREDICTOR_NFE`` / ``CORRECTOR_NFE``).
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from score_jax.sde import SDE, ScoreFn, bcast

Array = Any


def _norm(v: Array) -> Array:
  """Per-example Euclidean norm [B] of v [B, ...]."""
  return jnp.sqrt(jnp.sum(jnp.square(v).reshape(v.shape[0], -1), axis=-1))


# --- predictors ---------------------------------------------------------------------------

def euler_maruyama(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array, z: Array):
  """Euler–Maruyama on the reverse SDE (Song et al. 2021, eq. 6):
  x ← x + [f − g² s] Δt + g √|Δt| z with Δt = t_next − t < 0."""
  dt = t_next - t
  x_mean = x + sde.reverse_drift(x, t, score_fn(x, t)) * bcast(dt, x)
  return x_mean + bcast(sde.diffusion(t) * jnp.sqrt(-dt), x) * z, x_mean


def reverse_diffusion(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array, z: Array):
  """Reverse diffusion (Song et al. 2021, eq. 46): invert the exact forward step
  x_t = x_next + f_i + G_i z of ``sde.discretize`` as x_next = x_t − f_i + G_i² s + G_i z."""
  f, g = sde.discretize(x, t_next, t)
  x_mean = x - f + bcast(g**2, x) * score_fn(x, t)
  return x_mean + bcast(g, x) * z, x_mean


def ancestral(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array, z: Array):
  """Ancestral sampling (Ho et al. 2020; Song et al. 2021, eq. 47 for SMLD): draw from the
  exact Gaussian posterior p(x_next | x_t, x̂_0) of the forward chain, with x̂_0 from
  Tweedie's formula.  With x_t = a x_next + √q z: mean (x_t + q s)/a and variance
  q s_next²/s_t², which is SMLD's σ_{i−1}²(σ_i² − σ_{i−1}²)/σ_i² for VE and DDPM's
  (x + β_i s)/√(1 − β_i) mean with the posterior variance β̃_i for VP."""
  a, q = sde.transition_coeffs(t_next, t)
  x_mean = (x + bcast(q, x) * score_fn(x, t)) / bcast(a, x)
  var = q * (sde.marginal_std(t_next) / sde.marginal_std(t)) ** 2
  return x_mean + bcast(jnp.sqrt(var), x) * z, x_mean


def no_predictor(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, t_next: Array, z: Array):
  """Corrector-only sampling: the time moves on, x does not."""
  del sde, score_fn, t, t_next, z
  return x, x


# --- correctors ---------------------------------------------------------------------------

def _langevin_update(x, grad, z, step):
  x_mean = x + bcast(step, x) * grad
  return x_mean + bcast(jnp.sqrt(2.0 * step), x) * z, x_mean


def langevin(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, z: Array, snr: float, alpha: Array):
  """Langevin corrector (Song et al. 2021, Algorithm 5): step ε = 2α(r‖z‖/‖s‖)² so the
  signal-to-noise ratio of the update is the target ``snr`` r.

  The norms are averaged over the batch, as in score_sde's code (and so ``snr`` values
  tuned there carry over): per-example norms make ‖s‖ → 0 at a mode's centre blow the
  step up, which in low dimensions happens often.  The price is that a sample's step
  size depends on its batch (weakly, for large batches); the ``ald`` corrector's step
  does not.
  """
  del sde
  grad = score_fn(x, t)
  step = 2.0 * alpha * (snr * jnp.mean(_norm(z)) / jnp.mean(_norm(grad))) ** 2
  return _langevin_update(x, grad, z, step)


def ald(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, z: Array, snr: float, alpha: Array):
  """Annealed-Langevin corrector (Song & Ermon 2019, as a PC corrector): step
  ε = 2α(r s(t))², proportional to the current noise variance."""
  grad = score_fn(x, t)
  step = 2.0 * alpha * (snr * sde.marginal_std(t)) ** 2
  return _langevin_update(x, grad, z, step)


def no_corrector(sde: SDE, score_fn: ScoreFn, x: Array, t: Array, z: Array, snr: float, alpha: Array):
  del sde, score_fn, t, z, snr, alpha
  return x, x


PREDICTORS: dict[str, Callable] = {
    "euler_maruyama": euler_maruyama,
    "reverse_diffusion": reverse_diffusion,
    "ancestral": ancestral,
    "none": no_predictor,
}
CORRECTORS: dict[str, Callable] = {"langevin": langevin, "ald": ald, "none": no_corrector}
PREDICTOR_NFE = {"euler_maruyama": 1, "reverse_diffusion": 1, "ancestral": 1, "none": 0}
CORRECTOR_NFE = {"langevin": 1, "ald": 1, "none": 0}


def denoise(sde: SDE, score_fn: ScoreFn, x: Array, t: Array) -> Array:
  """Final denoising step: the posterior mean E[x_0 | x_t] by Tweedie's formula (one NFE)."""
  return sde.tweedie_denoise(x, t, score_fn(x, t))
