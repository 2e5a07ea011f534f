"""Known coordinates imposed during sampling: inpainting and colorization as an option of the
samplers (``sampling.sample(..., constraint=Replacement(...))``), not copies of them.

Replacement (Song et al. 2021, "Score-Based Generative Modeling through Stochastic
Differential Equations", App. I.2; the report, App. B.1).  To sample x(0) given the known
coordinates y_Ω = A x(0), the sampler runs unchanged on the unconditional score and after
every predictor and corrector step (and once on the prior sample) the known coordinates of
the state x(t) are overwritten with a fresh sample of the forward marginal

    x_Ω(t) ← m(t) y_Ω + s(t) z,   z ~ N(0, I),

so that they are distributed as they would be had x(0) had those values.  The last output
takes y_Ω exactly (``finalize``): the known pixels come back bit for bit.

Colorization (the report, App. B.2) is the same operation in a rotated channel basis: with an
orthogonal M acting on the channel axis (``color_matrix``), u = x @ M per pixel, the first
decoupled channel is the luminance (r + g + b)/√3 and the other two are chrominance.  Every SDE here is isotropic, so it commutes with M: replacing the luminance
channel of u and coupling back with Mᵀ is replacement in that basis.

Resampling (Lugmayr et al. 2022, "RePaint", Algorithm 1): each step t → t' < t is done
``resample`` times; between repetitions the state jumps back to t with the forward transition
x(t) = a x(t') + √q z of ``sde.transition_coeffs(t', t)``, which lets the unknown coordinates
absorb the information the replaced ones carry.  NFE grows by the factor ``resample``.

The observation.  ``Observation(values, mask, basis)`` is what is known; ``Replacement`` (with
RePaint's ``resample``), ``Posterior`` (posterior guidance of the score built inside the
compiled sampler, with or without replacement) and ``sampling.run_smc`` (method "smc") all take it, checked once
(``check_observation``: values of the samples' shape, a binary mask, an orthogonal basis).
Its arrays are pytree children: a new image of the same shapes reuses the compiled sampler.

Noise.  The replacement noise of sample i comes from ``fold_in(fold_in(key_i, SALT), n)`` with
n a per-call counter, a stream apart from the sampler's own noise (RePaint's jump-back noise
from SALT + 1), so a constrained run draws the same sampler noise as an unconstrained one
with the same key.
"""

from __future__ import annotations

import math
from typing import Any, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.sampling import common
from score_jax.sde import SDE, bcast

Array = Any

# fold_in salt of the replacement noise stream (any constant the samplers do not use).
SALT = 0x1A9A


def color_matrix() -> np.ndarray:
  """The orthogonal channel matrix M of the report's eq. 5.2 with exact entries
  (0.577 = 1/√3, 0.816 = 2/√6, 0.408 = 1/√6, 0.707 = 1/√2):

      M = [[1/√3, −2/√6,    0 ],
           [1/√3,  1/√6,  1/√2],
           [1/√3,  1/√6, −1/√2]].

  Decoupled channels u = x @ M (x's channels as a row vector) are the luminance
  (r + g + b)/√3 and two chrominance channels (−2r + g + b)/√6 and (g − b)/√2; M Mᵀ = I.

  Returns:
    [3, 3] float64.
  """
  a, b, c = 1.0 / math.sqrt(3.0), 1.0 / math.sqrt(6.0), 1.0 / math.sqrt(2.0)
  return np.array([[a, -2.0 * b, 0.0], [a, b, c], [a, b, -c]], np.float64)


@jax.tree_util.register_pytree_node_class
class Observation:
  """What is known of each sample: y_Ω = A x(0) for a linear A, as values, a mask and a basis —
  the one object every conditional method takes (``Replacement``, RePaint through its
  ``resample``, ``Posterior`` guidance, ``sampling.smc``).  Its arrays are pytree children, so
  they are traced: a new observation of the same shapes reuses a compiled sampler.

  Args:
    values: y [B, ...] (x's shape); unknown coordinates ignored.  With ``basis``, values in data
      space (a gray image as three equal channels); the known part is taken in the decoupled basis.
    mask: broadcasting to x's shape: 1 where a coordinate of u = x @ basis (or of x) is known,
      0 where it is sampled.  Must be 0 or 1 (checked where concrete).
    basis: None, or an orthogonal [C, C] matrix M on the last axis (``color_matrix()``).
  """

  def __init__(self, values: Array, mask: Array, basis: Optional[Array] = None):
    self.values = values
    self.mask = mask
    self.basis = basis

  def tree_flatten(self):
    return (self.values, self.mask, self.basis), None

  @classmethod
  def tree_unflatten(cls, aux, children):
    del aux
    return cls(*children)

  def decouple(self, x: Array) -> Array:
    """u = x @ M on the last axis (the identity without a basis)."""
    return x if self.basis is None else x @ jnp.asarray(self.basis, x.dtype)

  def couple(self, u: Array) -> Array:
    """x = u @ Mᵀ, the inverse of ``decouple``."""
    return u if self.basis is None else u @ jnp.asarray(self.basis, u.dtype).T

  def check(self, shape: tuple[int, ...]) -> None:
    """Raises ValueError (naming the field) unless the observation fits samples of ``shape``."""
    check_observation(self, shape)


def check_observation(obs, shape: tuple[int, ...]) -> None:
  """The checks of ``Observation.check``: values of the samples' shape, a binary mask that
  broadcasts to it, an orthogonal [C, C] basis (the last two where concrete)."""
  vshape = tuple(np.shape(obs.values))
  if vshape != tuple(shape):
    raise ValueError(f"constraint values must have the samples' shape {tuple(shape)}, got {vshape}.")
  mshape = tuple(np.shape(obs.mask))
  try:
    out = np.broadcast_shapes(mshape, tuple(shape))
  except ValueError:
    out = None
  if out != tuple(shape):
    raise ValueError(f"constraint mask of shape {mshape} does not broadcast to the samples' shape {tuple(shape)}.")
  if not isinstance(obs.mask, jax.core.Tracer):
    m = np.asarray(obs.mask)
    if not np.all((m == 0) | (m == 1)):
      raise ValueError("constraint mask must hold only 0 (sampled) and 1 (known).")
  if obs.basis is not None:
    c = shape[-1]
    bshape = tuple(np.shape(obs.basis))
    if bshape != (c, c):
      raise ValueError(f"constraint basis must be a [C, C] = [{c}, {c}] matrix on the channel axis, got {bshape}.")
    if not isinstance(obs.basis, jax.core.Tracer):
      b = np.asarray(obs.basis, np.float64)
      if not np.allclose(b @ b.T, np.eye(c), atol=1e-5):
        raise ValueError("constraint basis must be orthogonal (M Mᵀ = I): the SDE commutes only with rotations.")


@jax.tree_util.register_pytree_node_class
class Replacement(Observation):
  """Known coordinates of x(0), re-imposed after every sampler step.

  Args:
    values: y [B, ...] (x's shape): the data whose known coordinates are kept; its unknown
      coordinates are ignored.  With ``basis`` these are values in data space (e.g. a gray
      image as three equal channels); the known part is taken in the decoupled basis.
    mask: [B, ...] or anything broadcasting to x's shape: 1 where a coordinate of the
      decoupled state u is known, 0 where it is sampled.  Must be 0 or 1.
    basis: None (the coordinates of x) or an orthogonal [C, C] matrix M acting on the last
      axis: u = x @ M decouples, x = u @ Mᵀ couples back (``color_matrix()`` for colorization).
    resample: RePaint's number of repetitions of every step (1 = plain replacement).
  """

  def __init__(self, values: Array, mask: Array, basis: Optional[Array] = None, resample: int = 1):
    super().__init__(values, mask, basis)
    self.resample = resample

  @classmethod
  def of(cls, observation: Observation, resample: int = 1) -> "Replacement":
    """Replacement (RePaint with ``resample`` > 1) of ``observation``'s known coordinates."""
    return cls(observation.values, observation.mask, observation.basis, resample)

  @property
  def observation(self) -> Observation:
    return Observation(self.values, self.mask, self.basis)

  def tree_flatten(self):
    return (self.values, self.mask, self.basis), self.resample

  @classmethod
  def tree_unflatten(cls, resample, children):
    values, mask, basis = children
    return cls(values, mask, basis, resample)

  def check(self, shape: tuple[int, ...]) -> None:
    """Raises ValueError (naming the field) unless the constraint fits samples of ``shape``."""
    check_observation(self, shape)
    r = self.resample
    if not (isinstance(r, int) and not isinstance(r, bool) and r >= 1):
      raise ValueError(f"constraint resample={r!r} must be an integer >= 1 (1: plain replacement).")

  # --- the operations the samplers call ------------------------------------------
  def known_marginal(self, sde: SDE, t: Array, z: Array) -> Array:
    """m(t) y_Ω + s(t) z in the decoupled basis: a sample of p_0t(u_Ω(t) | u_Ω(0) = y_Ω)."""
    y = self.decouple(jnp.asarray(self.values, z.dtype))
    return bcast(sde.mean_coeff(t), z) * y + bcast(sde.marginal_std(t), z) * z

  def project(self, sde: SDE, x: Array, t: Array, z: Array) -> Array:
    """x with its known coordinates replaced by ``known_marginal`` (t [B], z of x's shape)."""
    u = self.decouple(x)
    mask = jnp.asarray(self.mask, x.dtype)
    return self.couple(mask * self.known_marginal(sde, t, z) + (1.0 - mask) * u)

  def project_noise_level(self, y: Array, sigma: Array, z: Array) -> Array:
    """The same in EDM's variables y = x/m(t) at noise level σ = s(t)/m(t) [B]: known ← y_Ω + σ z."""
    u = self.decouple(y)
    mask = jnp.asarray(self.mask, y.dtype)
    known = self.decouple(jnp.asarray(self.values, y.dtype)) + bcast(sigma, z) * z
    return self.couple(mask * known + (1.0 - mask) * u)

  def finalize(self, x: Array) -> Array:
    """x with its known coordinates set to y exactly (the output at t = 0)."""
    u = self.decouple(x)
    mask = jnp.asarray(self.mask, x.dtype)
    y = self.decouple(jnp.asarray(self.values, x.dtype))
    out = self.couple(mask * y + (1.0 - mask) * u)
    if self.basis is None:
      # Bit-exact known values (the basis round trip above is exact only up to rounding).
      out = jnp.where(jnp.broadcast_to(mask, x.shape) > 0, jnp.asarray(self.values, x.dtype), out)
    return out


@jax.tree_util.register_pytree_node_class
class Posterior(Replacement):
  """Posterior guidance of the score by an observation (``guidance.posterior_guidance``: ΠGDM /
  DPS with the isotropic or the Tweedie covariance), optionally with replacement.

  Given to ``sampling.sample(..., constraint=Posterior(...))`` the guided score is built inside
  the compiled sampler from the traced values, mask and basis, so a new observation of the same
  shapes reuses the compiled sampler (``guidance.posterior_guidance`` on its own closes over
  its arrays: a new closure, a new compilation).

  Args:
    values, mask, basis: the observation (see ``Observation``).
    resample: RePaint repetitions of the replacement (with ``replace``).
    covariance, data_variance, scale: those of ``guidance.posterior_guidance``.
    replace: also re-impose the known coordinates after every step (and exactly at the end).
  """

  def __init__(self, values: Array, mask: Array, basis: Optional[Array] = None, resample: int = 1, *,
               covariance: str = "isotropic", data_variance: float = 1.0, scale: float = 1.0, replace: bool = True):
    super().__init__(values, mask, basis, resample)
    self.covariance, self.data_variance, self.scale, self.replace = covariance, data_variance, scale, replace

  @classmethod
  def of(cls, observation: Observation, resample: int = 1, **kwargs) -> "Posterior":
    return cls(observation.values, observation.mask, observation.basis, resample, **kwargs)

  def tree_flatten(self):
    return (self.values, self.mask, self.basis), (self.resample, self.covariance, self.data_variance, self.scale,
                                                  self.replace)

  @classmethod
  def tree_unflatten(cls, aux, children):
    resample, covariance, data_variance, scale, replace = aux
    return cls(*children, resample, covariance=covariance, data_variance=data_variance, scale=scale, replace=replace)

  def check(self, shape: tuple[int, ...]) -> None:
    super().check(shape)
    from score_jax import guidance  # pylint: disable=g-import-not-at-top  (guidance imports sampling)
    guidance.check_posterior_options(self.covariance, self.data_variance, self.scale)
    if not isinstance(self.replace, bool):
      raise ValueError(f"constraint replace={self.replace!r} must be True or False.")
    if not self.replace and self.resample != 1:
      raise ValueError(f"constraint resample={self.resample} repeats replacement steps; it needs replace=True.")

  def guide(self, score_fn, sde: SDE):
    """The guided score of ``score_fn`` (called inside the compiled sampler, arrays traced)."""
    from score_jax import guidance  # pylint: disable=g-import-not-at-top
    return guidance.posterior_guidance(score_fn, sde, self.values, self.mask, basis=self.basis,
                                       covariance=self.covariance, data_variance=self.data_variance, scale=self.scale)

  def project(self, sde: SDE, x: Array, t: Array, z: Array) -> Array:
    return super().project(sde, x, t, z) if self.replace else x

  def project_noise_level(self, y: Array, sigma: Array, z: Array) -> Array:
    return super().project_noise_level(y, sigma, z) if self.replace else y

  def finalize(self, x: Array) -> Array:
    return super().finalize(x) if self.replace else x


Constraint = Optional[Replacement]


def guide(constraint: Constraint, score_fn, sde: SDE):
  """The score the sampler follows under ``constraint``: ``score_fn``, or its guided version."""
  return constraint.guide(score_fn, sde) if hasattr(constraint, "guide") else score_fn


def noise(keys: jax.Array, shape: tuple[int, ...], count: Array, stream: int = 0) -> Array:
  """The replacement noise [shape] of call number ``count`` (its own stream, see the module);
  ``stream`` 1 is RePaint's jump-back noise."""
  salted = jax.vmap(jax.random.fold_in, (0, None))(keys, SALT + stream)
  return common.normal(salted, shape, count)


def project(constraint: Constraint, sde: SDE, x: Array, t: Array, keys: jax.Array, count: Array) -> Array:
  """Applies ``constraint`` at time t [B] (a no-op without one); ``count`` numbers the call."""
  if constraint is None:
    return x
  return constraint.project(sde, x, t, noise(keys, x.shape, count))


def project_noise_level(constraint: Constraint, y: Array, sigma: Array, keys: jax.Array, count: Array) -> Array:
  """``project`` in EDM's y = x/m and σ = s/m (a no-op without a constraint)."""
  if constraint is None:
    return y
  return constraint.project_noise_level(y, sigma, noise(keys, y.shape, count))


def finalize(constraint: Constraint, x: Array) -> Array:
  """The known coordinates set exactly (a no-op without a constraint)."""
  return x if constraint is None else constraint.finalize(x)


def repeat(constraint: Constraint, sde: SDE, step, x: Array, t: Array, t_next: Array, keys: jax.Array,
           count: Array) -> Array:
  """Runs ``step(x, r) -> x`` (t → t_next, r the repetition) once, or ``resample`` times
  with a jump back to t in between (RePaint; Lugmayr et al. 2022, Algorithm 1).

  The jump back draws x(t) = a x(t_next) + √q z with (a, q) = ``sde.transition_coeffs(t_next, t)``;
  its noise is call ``count``·R + r (R = resample) of a second stream.  The first call of
  ``step`` gets r as the Python int 0, the later ones a traced r.
  """
  resample = 1 if constraint is None else constraint.resample
  x = step(x, 0)
  if resample == 1:
    return x
  a, q = sde.transition_coeffs(t_next, t)

  def again(r, x):
    z = noise(keys, x.shape, count * resample + r, stream=1)
    x = bcast(a, x) * x + bcast(jnp.sqrt(q), x) * z
    return step(x, r)

  return jax.lax.fori_loop(1, resample, again, x)
