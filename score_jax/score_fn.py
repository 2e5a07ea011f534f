"""Network -> score function: the parametrization lives here, not in the network.

``get_score_fn`` wraps ``apply_fn(params, x, t)`` into ``score_fn(x, t)``, the signature
every loss and sampler of score_jax takes (EDM's preconditioning wrappers play the same
role around their U-Nets).

What the network is conditioned on is chosen here too (``CONDITIONINGS``): the SDE time t
(the MLP and U-Net), the noise level σ̃(t) = s(t)/m(t) (NCSN++'s Fourier embedding, which
takes the log inside; for VE σ̃ is the marginal std), or score_sde's 999·t for DDPM++'s
positional embedding.  Class labels, when given, are passed through to the network.
"""

from __future__ import annotations

from typing import Any, Callable

import jax.numpy as jnp

from score_jax import sde as sde_lib

Array = Any
ApplyFn = Callable[[Any, Array, Array], Array]
ScoreFn = Callable[[Array, Array], Array]

PARAMETRIZATIONS = ("noise", "score")
CONDITIONINGS = {
    "time": lambda sde, t: t,
    "sigma": lambda sde, t: sde.noise_level(t),
    "ddpm_step": lambda sde, t: 999.0 * t / sde.T,
}


def get_score_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, params: Any, *, parametrization: str = "noise",
                 conditioning: str = "time", labels: Array | None = None) -> ScoreFn:
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
    conditioning: what the network receives as its second argument: one of
      ``CONDITIONINGS`` ("time": t; "sigma": σ̃(t) = s(t)/m(t); "ddpm_step": 999·t/T).
    labels: optional class labels [B], passed as ``apply_fn(params, x, cond, labels)``.

  Returns:
    ``score_fn(x [B, ...], t [] or [B]) -> [B, ...]``; t is broadcast to [B] before it
    reaches the network.

  Raises:
    ValueError: unknown parametrization or conditioning.
  """
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"Unknown parametrization {parametrization!r}; choose one of {list(PARAMETRIZATIONS)}.")
  if conditioning not in CONDITIONINGS:
    raise ValueError(f"Unknown conditioning {conditioning!r}; choose one of {list(CONDITIONINGS)}.")
  cond_of = CONDITIONINGS[conditioning]

  def network(x: Array, t: Array) -> tuple[Array, Array]:
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
    cond = cond_of(sde, t)  # [B]
    out = apply_fn(params, x, cond) if labels is None else apply_fn(params, x, cond, labels)
    return out, t

  if parametrization == "score":

    def score_fn(x: Array, t: Array) -> Array:
      return network(x, t)[0]

  else:

    def score_fn(x: Array, t: Array) -> Array:
      out, t = network(x, t)  # [B, ...], [B]
      return -out / sde_lib.bcast(sde.marginal_std(t), out)

  return score_fn
