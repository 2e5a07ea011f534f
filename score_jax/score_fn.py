"""Network -> score function: the parametrization lives here, not in the network.

``get_score_fn`` wraps ``apply_fn(params, x, t)`` into ``score_fn(x, t)``, the signature
every loss and sampler of score_jax takes (EDM's preconditioning wrappers play the same
role around their U-Nets).

What the network predicts (``PARAMETRIZATIONS``), for x = x(t) = m(t) x(0) + s(t) ε:

    "noise"     ε̂                       score = −ε̂ / s
    "score"     ∇log p_t(x)              score = out
    "data"      x̂(0) = E[x(0) | x]        score = (m x̂(0) − x) / s²
    "velocity"  û = m' x̂(0) + s' ε̂        the conditional flow dx/dt of the path; for rectified
                                         flow û = ε̂ − x̂(0) (Liu et al. 2023; Lipman et al. 2023)
    "edm"       F of EDM's preconditioned denoiser (below)
    "consistency"  F of a consistency model f(x̃, σ) (below), read as a data prediction

``to_score`` and ``from_score`` are the one place that converts between these predictions;
every loss, sampler, likelihood and guidance sees the score.

EDM preconditioning (Karras et al., "Elucidating the Design Space of Diffusion-Based
Generative Models", NeurIPS 2022, Table 1), under any linear SDE: x̃ = x/m(t)
is the data plus N(0, σ²) noise with σ = σ̃(t) = s(t)/m(t), and

    D(x̃; σ) = c_skip(σ) x̃ + c_out(σ) F(c_in(σ) x̃, cond),
    c_skip = σ_d²/(σ² + σ_d²),  c_out = σ σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),
    c_noise = ¼ ln σ  (conditioning "log_sigma"),

with σ_d = ``sigma_data``; the score in x is (D − x̃)/(σ² m), computed as
(c_out F/σ² − x̃/(σ² + σ_d²))/m so that it stays accurate as σ → 0.  With VE (m = 1) this is
EDM's own network; with VP / sub-VP / rectified flow the network sees x/m, as EDM's VP
preconditioning in its σ(t) form.

Consistency models (Song, Dhariwal, Chen & Sutskever, "Consistency Models", ICML 2023, sec. 3
and App. C) map any point of a probability-flow trajectory to its origin,

    f(x̃, σ) = c_skip(σ) x̃ + c_out(σ) F(c_in(σ) x̃, cond),
    c_skip = σ_d²/((σ − ε)² + σ_d²),  c_out = (σ − ε) σ_d/√(σ² + σ_d²),  c_in = 1/√(σ² + σ_d²),

with ε = ``boundary_sigma`` (the paper's 0.002), so that c_skip(ε) = 1 and c_out(ε) = 0: the
boundary condition f(x̃, ε) = x̃ holds exactly, whatever F.  ``score_fn(x, t)`` sees σ only as
σ̃(t), which for t = t(ε) lands a few float roundings off ε (bisection and exp/log, VP more than
VE); levels within ``BOUNDARY_ULPS`` ulps of ε (relative 8e-6 in float32, far below any
discretization step) are read as ε itself, so f(x̃, ε) = x̃ bit for bit through every caller
(the sampler, the loss's target at ε).  f is an estimate of x(0), so the
score it implies is the data prediction's, (f − x̃)/(σ² m), computed from
f − x̃ = (c_skip − 1) x̃ + c_out F; ``sampling.edm.make_denoiser`` turns that score back into f
(``method="consistency"`` samples with it) and is 0 at σ = ε.

What the network is conditioned on is chosen here too (``CONDITIONINGS``): the SDE time t
(the MLP and U-Net), the noise level σ̃(t) = s(t)/m(t) (NCSN++'s Fourier embedding, which
takes the log inside; for VE σ̃ is the marginal std), EDM's c_noise = ¼ ln σ̃(t), or
score_sde's 999·t for DDPM++'s positional embedding.  Class labels, when given, are passed through to the network.

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

PARAMETRIZATIONS = ("noise", "score", "data", "velocity", "edm", "consistency")
# σ̃(t) within this many ulps of a consistency model's boundary ε is the boundary (module docstring).
BOUNDARY_ULPS = 64
CONDITIONINGS = {
    "time": lambda sde, t: t,
    "sigma": lambda sde, t: sde.noise_level(t),
    "log_sigma": lambda sde, t: 0.25 * jnp.log(sde.noise_level(t)),  # EDM's c_noise
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


# --- predictions <-> score ----------------------------------------------------------------
PREDICTIONS = ("noise", "score", "data", "velocity")


def _coefficients(sde: sde_lib.SDE, t: Array, x: Array) -> tuple[Array, Array]:
  return sde_lib.bcast(sde.mean_coeff(t), x), sde_lib.bcast(sde.marginal_std(t), x)


def _check_prediction(prediction: str) -> None:
  if prediction not in PREDICTIONS:
    raise ValueError(f"Unknown prediction {prediction!r}; choose one of {list(PREDICTIONS)}.")


def to_score(sde: sde_lib.SDE, prediction: str, x: Array, t: Array, out: Array) -> Array:
  """The score ∇log p_t(x) that a prediction ``out`` of kind ``prediction`` implies at (x, t).

  Args:
    sde: the forward SDE (m, s and their derivatives).
    prediction: one of ``PREDICTIONS`` (module docstring).
    x: the state x(t) [B, ...].
    t: times [B] (or a scalar).
    out: the prediction [B, ...].

  Returns:
    [B, ...] the score.
  """
  _check_prediction(prediction)
  if prediction == "score":
    return out
  m, s = _coefficients(sde, t, x)
  if prediction == "noise":
    return -out / s
  if prediction == "data":
    return (m * out - x) / s**2
  # velocity û = m' x̂0 + s' ε̂ with m x̂0 + s ε̂ = x: ε̂ = (m û − m' x)/(m s' − s m').
  dm, ds = (sde_lib.bcast(c, x) for c in (sde.mean_coeff_derivative(t), sde.marginal_std_derivative(t)))
  noise = (m * out - dm * x) / (m * ds - s * dm)
  return -noise / s


def from_score(sde: sde_lib.SDE, prediction: str, x: Array, t: Array, score: Array) -> Array:
  """The prediction of kind ``prediction`` that the score ``score`` implies at (x, t); the
  inverse of ``to_score`` (same arguments)."""
  _check_prediction(prediction)
  if prediction == "score":
    return score
  m, s = _coefficients(sde, t, x)
  noise = -s * score
  if prediction == "noise":
    return noise
  data = (x - s * noise) / m  # Tweedie's formula, E[x(0) | x(t)]
  if prediction == "data":
    return data
  dm, ds = (sde_lib.bcast(c, x) for c in (sde.mean_coeff_derivative(t), sde.marginal_std_derivative(t)))
  return dm * data + ds * noise


def edm_coefficients(sigma: Array, sigma_data: float) -> tuple[Array, Array, Array, Array]:
  """EDM's preconditioning (Karras et al. 2022, Table 1): (c_skip, c_out, c_in, c_noise) at σ."""
  sigma = jnp.asarray(sigma)
  total = sigma**2 + sigma_data**2
  return sigma_data**2 / total, sigma * sigma_data / jnp.sqrt(total), 1.0 / jnp.sqrt(total), 0.25 * jnp.log(sigma)


def consistency_coefficients(sigma: Array, sigma_data: float, boundary_sigma: float) -> tuple[Array, Array, Array]:
  """A consistency model's (c_skip, c_out, c_in) at σ (Song et al. 2023, App. C): c_skip = 1 and
  c_out = 0 exactly at σ = ``boundary_sigma``."""
  sigma = jnp.asarray(sigma)
  offset = sigma - boundary_sigma
  c_skip = sigma_data**2 / (offset**2 + sigma_data**2)
  c_out = offset * sigma_data / jnp.sqrt(sigma**2 + sigma_data**2)
  return c_skip, c_out, 1.0 / jnp.sqrt(sigma**2 + sigma_data**2)


def get_score_fn(sde: sde_lib.SDE, apply_fn: ApplyFn, params: Any, *, parametrization: str = "noise",
                 conditioning: str = "time", labels: Array | None = None, centered: bool = True,
                 sigma_data: float = 0.5, boundary_sigma: float = 0.002) -> ScoreFn:
  """Turns a network into a score function ∇log p_t(x).

  Parametrizations:
    * "noise": the network predicts the standard normal noise ε of x(t) = m(t) x(0) + s(t) ε,
      so the score is −out / s(t).  For VE this is score_sde's "scale by σ" (out / σ with the
      sign folded into the network); for VP / sub-VP it is DDPM's −ε / std (Song et al. 2021,
      App. C; Ho et al. 2020).
    * "score": the network output is the score itself.
    * "data", "velocity": x(0)- and flow-prediction, converted by ``to_score``.
    * "edm": EDM's preconditioning with ``sigma_data`` (module docstring): the network sees
      c_in x/m(t) and its output is F.
    * "consistency": a consistency model with ``sigma_data`` and boundary ``boundary_sigma``
      (module docstring); the score is that of its data prediction f.

  Args:
    sde: the forward SDE (supplies s(t) = ``sde.marginal_std``).
    apply_fn: ``apply_fn(params, x [B, ...], t [B]) -> [B, ...]``, e.g. ``model.apply``.
    params: the network's variables, passed as the first argument of ``apply_fn``.
    parametrization: one of ``PARAMETRIZATIONS``.
    conditioning: what the network receives as its second argument: one of
      ``CONDITIONINGS`` ("time": t; "sigma": σ̃(t) = s(t)/m(t); "log_sigma": ¼ ln σ̃(t), EDM's
      c_noise; "ddpm_step": 999·t/T;
      "score_sde": score_sde's convention, see the module docstring — it also fixes how the
      output becomes a score, whatever ``parametrization`` says).
    labels: optional class labels [B], passed as ``apply_fn(params, x, cond, labels)``.
    centered: whether the data live in [−1, 1]; with "score_sde" and ``centered=False`` the
      network receives 2x − 1, as score_sde's NCSN++ computed inside.  Ignored otherwise.
    sigma_data: σ_d of the "edm" and "consistency" parametrizations (EDM: 0.5 for data in [−1, 1]).
    boundary_sigma: ε of the "consistency" parametrization, the noise level where f(x̃, ε) = x̃.

  Returns:
    ``score_fn(x [B, ...], t [] or [B]) -> [B, ...]``; t is broadcast to [B] before it
    reaches the network.

  Raises:
    ValueError: unknown parametrization or conditioning.
  """
  if parametrization not in PARAMETRIZATIONS:
    raise ValueError(f"Unknown parametrization {parametrization!r}; choose one of {list(PARAMETRIZATIONS)}.")
  if parametrization in ("edm", "consistency") and not (isinstance(sigma_data, (int, float)) and sigma_data > 0):
    raise ValueError(f"sigma_data must be a number > 0 for parametrization {parametrization!r}, got {sigma_data!r}.")
  if parametrization == "consistency" and not (isinstance(boundary_sigma, (int, float)) and boundary_sigma > 0):
    raise ValueError(f"boundary_sigma must be a number > 0 for parametrization 'consistency', got {boundary_sigma!r}.")
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

  elif parametrization == "edm":

    def score_fn(x: Array, t: Array) -> Array:
      t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
      m = sde_lib.bcast(sde.mean_coeff(t), x)
      sigma = sde.noise_level(t)  # [B]
      _, c_out, c_in, _ = (sde_lib.bcast(c, x) for c in edm_coefficients(sigma, sigma_data))
      x_scaled = x / m
      out, _ = network(c_in * x_scaled, t)
      s2 = sde_lib.bcast(sigma, x) ** 2
      return (c_out * out / s2 - x_scaled / (s2 + sigma_data**2)) / m

  elif parametrization == "consistency":

    def score_fn(x: Array, t: Array) -> Array:
      t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
      m = sde_lib.bcast(sde.mean_coeff(t), x)
      sigma = sde.noise_level(t)  # [B]
      # σ̃(t) of an evaluation at t(ε) is a few roundings off ε (the σ → t → σ̃ round trip): such
      # a level is the boundary itself, so that f(x̃, ε) = x̃ bit for bit through every caller.
      sigma = jnp.where(jnp.abs(sigma - boundary_sigma) <= BOUNDARY_ULPS * jnp.finfo(sigma.dtype).eps * boundary_sigma,
                        jnp.asarray(boundary_sigma, sigma.dtype), sigma)
      c_skip, c_out, c_in = (sde_lib.bcast(c, x) for c in consistency_coefficients(sigma, sigma_data, boundary_sigma))
      x_scaled = x / m
      out, _ = network(c_in * x_scaled, t)
      s2 = sde_lib.bcast(sigma, x) ** 2
      return ((c_skip - 1.0) * x_scaled + c_out * out) / (s2 * m)  # (f − x̃)/(σ² m)

  elif parametrization == "score":

    def score_fn(x: Array, t: Array) -> Array:
      return network(x, t)[0]

  else:

    def score_fn(x: Array, t: Array) -> Array:
      out, t = network(x, t)  # [B, ...], [B]
      return to_score(sde, parametrization, x, t, out)

  return score_fn
