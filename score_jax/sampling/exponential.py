"""Exponential integrator of the reverse SDE (Strasman et al. 2024, arXiv 2402.04650), one compiled scan.

VP and sub-VP share the drift f = −½β(t) x, so the reverse SDE

    dx = [−½β x − g² s] dt + g dw̄    (t decreasing)

is linear in x once the score s is frozen at (x_t, t) over a step t → t' < t.  Its linear
part is then integrated exactly: with B = ∫₀ᵗ β and ΔB = B_t − B_{t'} > 0,

    x_{t'} = e^{ΔB/2} x_t + c s + √v z,
    c = ∫_{t'}^{t} e^{(B_u − B_{t'})/2} g(u)² du,    v = ∫_{t'}^{t} e^{B_u − B_{t'}} g(u)² du.

VP (g² = β, the noise-schedule paper's scheme):
    c = 2(e^{ΔB/2} − 1),  v = e^{ΔB} − 1.
sub-VP (g² = β(1 − e^{−2B}); our analogue, substituting dB = β du):
    c = 2(e^{ΔB/2} − 1) − ⅔ e^{−2B_{t'}} (1 − e^{−3ΔB/2}),
    v = (1 − e^{−ΔB}) e^{−2B_{t'}} (e^{ΔB + 2B_{t'}} − 1).
As ΔB → 0 both c and v tend to g(t)²|Δt|, Euler–Maruyama's coefficients.  VE (f = 0) has no linear part
to integrate; it is rejected.

The step is linear in (x, s, z), so for a Gaussian target with the exact (affine) score the
chain is linear-Gaussian: ``exponential_coeffs`` gives (a, c, v) to propagate mean and
covariance exactly.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from score_jax.sampling import options
from score_jax.sampling.dpm_solver import SKIP_TYPES, run_chain
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any

SDE_KINDS = ("vp", "subvp")


def exponential_coeffs(sde: SDE, t: Array, t_next: Array) -> tuple[Array, Array, Array]:
  """(a, c, v) of the step x_{t_next} = a x_t + c s(x_t, t) + √v z, for t_next < t.

  Args:
    sde: a VP or sub-VP SDE.
    t, t_next: times of any (broadcastable) shape.

  Returns:
    a = e^{ΔB/2}, c and v of the module docstring, each of the broadcast shape of t, t_next.
  """
  if sde.name not in SDE_KINDS:
    raise ValueError(f"the exponential integrator needs a VP or sub-VP SDE, got {sde.name!r}.")
  b, b_next = sde.beta_integral(t), sde.beta_integral(t_next)
  db = b - b_next
  a = jnp.exp(0.5 * db)
  c = 2.0 * jnp.expm1(0.5 * db)
  if sde.name == "vp":
    return a, c, jnp.expm1(db)
  decay = jnp.exp(-2.0 * b_next)  # sub-VP
  c = c + (2.0 / 3.0) * decay * jnp.expm1(-1.5 * db)
  v = -jnp.expm1(-db) * decay * jnp.expm1(db + 2.0 * b_next)
  return a, c, v


# Strasman et al. 2024 (arXiv 2402.04650): the reverse VP SDE's linear part integrated exactly, score frozen.
def exponential_step(sde: SDE, score: Array, x: Array, t: Array, t_next: Array, z: Array) -> tuple[Array, Array]:
  """One exponential-integrator step t → t_next < t with the score frozen at (x_t, t).

  Args:
    sde: a VP or sub-VP SDE.
    score: ∇log p_t(x_t) [B, ...] (already evaluated: the step itself costs no NFE).
    x: x_t [B, ...].
    t, t_next: [B] times (or scalars).
    z: standard normal noise [B, ...].

  Returns:
    (x_{t_next}, its mean a x + c s without the noise), both [B, ...].
  """
  a, c, v = exponential_coeffs(sde, t, t_next)
  x_mean = bcast(a, x) * x + bcast(c, x) * score
  return x_mean + bcast(jnp.sqrt(v), x) * z, x_mean


def exponential_sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], *, num_steps: int,
                       skip_type: str, denoise: bool, constraint=None) -> tuple[Array, int]:
  """Samples with the exponential integrator (Strasman et al. 2024) from the prior at T to eps.

  Args:
    key: PRNG key; sample i draws its noise from fold_in(key, i).
    sde: a VP or sub-VP SDE.
    score_fn: the score.
    shape: [B, ...].
    num_steps: steps = score evaluations.
    skip_type: time grid ("time_uniform" default, "logSNR", "time_quadratic"; see
      ``dpm_solver.time_grid``).
    denoise: one more evaluation for a final Tweedie step at eps.
    constraint: known coordinates (``sampling.constraints``), see ``dpm_solver.run_chain``.

  Returns:
    samples [shape] and the number of score evaluations per sample.
  """
  def step(x, t, t_next, z):
    return exponential_step(sde, score_fn(x, t), x, t, t_next, z)[0]

  return run_chain(key, sde, score_fn, shape, step, num_steps=num_steps, skip_type=skip_type, denoise=denoise,
                   constraint=constraint)


def _check(sde: SDE, opts) -> None:
  options.sde_kind(sde, "exponential", SDE_KINDS)
  options.count(opts, "num_steps")
  options.choice(opts, "skip_type", SKIP_TYPES)


EXPONENTIAL_METHOD = options.Method(exponential_sample, dict(num_steps=1000, skip_type="time_uniform", denoise=True),
                                    _check, options.any_constraint)
