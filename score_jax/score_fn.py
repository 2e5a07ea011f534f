"""Network -> score function: the parametrization lives here, not in the network.

``get_score_fn`` wraps ``apply_fn(params, x, t)`` into ``score_fn(x, t)``, the signature
every loss and sampler of score_jax takes (EDM's preconditioning wrappers play the same
role around their U-Nets).

The network is conditioned on the SDE time t (shape [B]), not on σ(t); a later
σ- or log σ-conditioned parametrization (NCSN++'s Fourier embedding of log σ, EDM's c_noise)
joins ``PARAMETRIZATIONS`` without touching the networks.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from score_jax import sde as sde_lib

Array = Any
ApplyFn = Callable[[Any, Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]

PARAMETRIZATIONS = ("noise", "score")


def get_score_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, params: Any, *, parametrization: str = "noise") -> ScoreFn:
  """Turns a network into a score function ∇log p_t(x).

  Parametrizations:
    * "noise": the network predicts the standard normal noise ε of x(t) = m(t) x(0) + s(t) ε,
      so the score is −out / s(t).  For VE this is score_sde's "scale by σ" (out / σ with the
      sign folded into the network); for VP / sub-VP it is DDPM's −ε / std (Song et al. 2021,
      App. C; Ho et al. 2020).
    * "score": the network output is the score itself.

  Args:
    sde: the forward SDE (supplies s(t) = ``sde.marginal_std``).
    apply_fn: ``apply_fn(params, x [B, ...], t [B]) -> [B, ...]``, e.g. ``model.apply``.
    params: the network's variables, passed as the first argument of ``apply_fn``.
    parametrization: one of ``PARAMETRIZATIONS``.

  Returns:
    ``score_fn(x [B, ...], t [] or [B]) -> [B, ...]``; t is broadcast to [B] before it
    reaches the network.

  Raises:
    ValueError: unknown parametrization.
  """
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"Unknown parametrization {parametrization!r}; choose one of {list(PARAMETRIZATIONS)}.")

  def network(x: Array, t: Array) -> tuple[Array, Array]:
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
    return apply_fn(params, x, t), t

  if parametrization == "score":

    def score_fn(x: Array, t: Array) -> Array:
      return network(x, t)[0]

  else:

    def score_fn(x: Array, t: Array) -> Array:
      out, t = network(x, t)  # [B, ...], [B]
      return -out / sde_lib.bcast(sde.marginal_std(t), out)

  return score_fn
