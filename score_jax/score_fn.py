"""Network -> score function: the parametrization lives here, not in the network.

``get_score_fn`` wraps ``apply_fn(params, x, t)`` into ``score_fn(x, t)``, the signature
every loss and sampler of score_jax takes (EDM's preconditioning wrappers play the same
role around their U-Nets).

What the network is conditioned on is chosen here too (``CONDITIONINGS``): the SDE time t
(the MLP and U-Net), the noise level σ̃(t) = s(t)/m(t) (NCSN++'s Fourier embedding, which
takes the log inside; for VE σ̃ is the marginal std), or score_sde's 999·t for DDPM++'s
positional embedding.  Class labels, when given, are passed through to the network.

Two conventions for NCSN++ / DDPM++ networks:

* score_jax's (the default for new runs): a VE network sees the exact marginal std
  s(t) = √(σ(t)² − σ_min²) ("sigma"), inputs as the data pipeline gives them, and the score
  is −out / s(t).
* score_sde's (``conditioning="score_sde"``, for checkpoints trained by score_sde, Song et
  al. 2021, loaded with ``score_jax.pretrained``): a VE network sees the geometric noise scale
  σ(t) = σ_min (σ_max/σ_min)^t — not the marginal std — and its output divided by σ(t) *is*
  the score (score_sde's ``scale_by_sigma``); a VP / sub-VP network sees 999·t and the score
  is −out / s(t).  With uncentered data (``centered=False``, images in [0, 1]) score_sde's
  NCSN++ mapped its input to 2x − 1 itself, so this convention does that before the network.
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
    "score_sde": lambda sde, t: score_sde_cond(sde, t),
}


# score_sde's continuous-time conditioning (Song et al. 2021, code release: models/utils.get_score_fn).
def score_sde_cond(sde: sde_lib.SDE, t: Array) -> Array:
  """What a score_sde network was fed at time t: σ_min (σ_max/σ_min)^t for VE, 999·t/T otherwise.

  Args:
    sde: the forward SDE.
    t: [B] times.

  Returns:
    [B] conditioning values.
  """
  if isinstance(sde, sde_lib.VESDE):
    return sde.sigma(t)
  return 999.0 * t / sde.T


def score_sde_score(sde: sde_lib.SDE, out: Array, t: Array) -> Array:
  """A score_sde network's output as a score: out / σ(t) for VE, −out / s(t) for VP / sub-VP.

  Args:
    sde: the forward SDE.
    out: [B, ...] network output.
    t: [B] times.

  Returns:
    [B, ...] the score.
  """
  if isinstance(sde, sde_lib.VESDE):
    return out / sde_lib.bcast(sde.sigma(t), out)
  return -out / sde_lib.bcast(sde.marginal_std(t), out)


def get_score_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, params: Any, *, parametrization: str = "noise",
                 conditioning: str = "time", labels: Array | None = None, centered: bool = True) -> ScoreFn:
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
      ``CONDITIONINGS`` ("time": t; "sigma": σ̃(t) = s(t)/m(t); "ddpm_step": 999·t/T;
      "score_sde": score_sde's convention, see the module docstring — it also fixes how the
      output becomes a score, whatever ``parametrization`` says).
    labels: optional class labels [B], passed as ``apply_fn(params, x, cond, labels)``.
    centered: whether the data live in [−1, 1]; with "score_sde" and ``centered=False`` the
      network receives 2x − 1, as score_sde's NCSN++ computed inside.  Ignored otherwise.

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
    if conditioning == "score_sde" and not centered:
      x = 2.0 * x - 1.0  # score_sde's NCSN++ took [0, 1] data and centered them itself
    out = apply_fn(params, x, cond) if labels is None else apply_fn(params, x, cond, labels)
    return out, t

  if conditioning == "score_sde":

    def score_fn(x: Array, t: Array) -> Array:
      out, t = network(x, t)
      return score_sde_score(sde, out, t)

  elif parametrization == "score":

    def score_fn(x: Array, t: Array) -> Array:
      return network(x, t)[0]

  else:

    def score_fn(x: Array, t: Array) -> Array:
      out, t = network(x, t)  # [B, ...], [B]
      return -out / sde_lib.bcast(sde.marginal_std(t), out)

  return score_fn
