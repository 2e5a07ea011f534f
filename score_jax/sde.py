"""Forward SDEs of score-based generative modeling (Song et al., ICLR 2021).

Every SDE here is linear, dx = f(t) x dt + g(t) dw, so its marginal given x(0) is
Gaussian, p_0t(x(t) | x(0)) = N(m(t) x(0), s(t)² I), and so is the transition between
any two times.  Each class is a frozen (hashable) dataclass whose methods are pure
jnp functions: they trace under ``jit``/``vmap``/``grad`` and an SDE can be passed to
a jitted function as a static argument.

Time arguments ``t`` are scalars or arrays of shape ``[B]`` for ``x`` of shape
``[B, ...]``; coefficients broadcast over the trailing axes.

Conventions (all exact, no approximations):

* VE  (eq. 30 of the paper): σ(t) = σ_min (σ_max/σ_min)^{t/T}, f = 0, g = σ(t)√(2 log(σ_max/σ_min)/T).
  The marginal variance from x(0) is σ(t)² − σ_min² (eq. 29).  score_sde's code rounds this
  to σ(t)²; the difference is at most σ_min² and vanishes at t = 0, where ours is exact.
  The prior is N(0, σ_max² I).
* VP  (eq. 32): f = −β(t)/2, g = √β(t), m = e^{−B/2}, s² = 1 − e^{−B}, with B(t) = ∫₀ᵗ β.
* sub-VP (eq. 34): f = −β(t)/2, g = √(β(t)(1 − e^{−2B})), m = e^{−B/2}, s = 1 − e^{−B}.
* rectified flow (Liu et al., "Flow Straight and Fast", ICLR 2023; the linear path of Lipman
  et al., "Flow Matching for Generative Modeling", ICLR 2023): x(t) = (1 − t) x(0) + t ε, so
  m = 1 − t, s = t, f = −1/(1 − t), g² = 2t/(1 − t).  The drift is singular at t = 1, where
  x(1) = ε exactly; T is therefore kept below 1 (default 0.999, σ̃(T) = 999) and the prior
  is N(0, T² I), the marginal at T without the data's (1 − T)² share.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Optional

import jax
import jax.numpy as jnp

from score_jax import schedules as sched_lib

Array = Any
ScoreFn = Callable[[Array, Array], Array]


def bcast(c: Array, x: Array) -> Array:
  """Reshapes a per-example coefficient ``c`` ([] or [B]) to broadcast against ``x`` [B, ...]."""
  c = jnp.asarray(c)
  return c.reshape(c.shape + (1,) * (x.ndim - c.ndim))


def _require(cond: bool, message: str) -> None:
  if not cond:
    raise ValueError(message)


class ReverseSDE(NamedTuple):
  """Reverse-time SDE dx = [f − g² ∇log p_t] dt + g dw̄ (eq. 6), or with
  ``probability_flow`` the ODE dx = [f − ½ g² ∇log p_t] dt (eq. 13), as functions."""

  drift: Callable[[Array, Array], Array]
  diffusion: Callable[[Array], Array]


class SDE:
  """Shared behaviour of the linear SDEs.  Subclasses are frozen dataclasses with fields
  ``T`` (time horizon), ``eps`` and ``train_eps``, and implement the coefficient functions
  below.

  Two smallest times, as in score_sde's code (the ``eps=1e-5`` default of its
  ``get_sde_loss_fn`` and ``get_likelihood_fn``, and ``sampling_eps`` in its run_lib.py):

  * ``train_eps``: the training losses draw t from [train_eps, T] and the likelihood ODE
    starts at train_eps (score_sde's ``eps``, 1e-5 for every SDE), so bits/dim are measured
    at the smallest time the network was trained on, comparably with the paper's;
  * ``eps``: the time every sampler stops at and denoises from (score_sde's
    ``sampling_eps``: 1e-5 for VE, 1e-3 for VP and sub-VP, whose scores blow up like
    1/s(t) with s(1e-5)² ≈ 1e-6).

  ``train_eps ≤ eps`` is required: a sampler never queries the network below the times
  it was trained on."""

  T: float
  eps: float
  train_eps: float
  name: str = "sde"

  def _check_times(self) -> None:
    cls = type(self).__name__
    defaults = type(self).__dataclass_fields__
    _require(self.T > 0, f"{cls}.T must be > 0, got {self.T}.")
    for field in ("eps", "train_eps"):
      value = getattr(self, field)
      _require(
          0.0 < value < self.T,
          f"{cls}.{field} must lie in (0, T={self.T}), got {value}; the usual value is {defaults[field].default}.",
      )
    _require(
        self.train_eps <= self.eps,
        f"{cls}.train_eps ({self.train_eps}) must not exceed eps ({self.eps}): samplers stop at eps and would "
        "query the network below the times it was trained on; lower eps or raise train_eps.",
    )

  # --- coefficients (subclasses) -------------------------------------------------------
  def drift_coeff(self, t: Array) -> Array:
    """f(t) in the linear drift f(t)·x."""
    raise NotImplementedError

  def diffusion(self, t: Array) -> Array:
    """g(t)."""
    raise NotImplementedError

  def mean_coeff(self, t: Array) -> Array:
    """m(t): E[x(t) | x(0)] = m(t) x(0)."""
    raise NotImplementedError

  def marginal_std(self, t: Array) -> Array:
    """s(t): Std[x(t) | x(0)] = s(t) per coordinate."""
    raise NotImplementedError

  def mean_coeff_derivative(self, t: Array) -> Array:
    """m'(t) = f(t) m(t)."""
    return self.drift_coeff(t) * self.mean_coeff(t)

  def marginal_std_derivative(self, t: Array) -> Array:
    """s'(t) = f(t) s(t) + g(t)²/(2 s(t)), from d(s²)/dt = 2 f s² + g²."""
    s = self.marginal_std(t)
    return self.drift_coeff(t) * s + 0.5 * self.diffusion(t) ** 2 / s

  def transition_coeffs(self, t_from: Array, t_to: Array) -> tuple[Array, Array]:
    """(a, q) with x(t_to) | x(t_from) ~ N(a x(t_from), q I) for t_from ≤ t_to.

    This exact discretization is what the reverse-diffusion and ancestral predictors
    invert: for VE it is SMLD's σ_i² − σ_{i−1}² step, for VP DDPM's √(1 − β_i) and β_i
    with 1 − β_i = ᾱ(t_to)/ᾱ(t_from).
    """
    raise NotImplementedError

  def is_potential(self, t: Array) -> Array:
    """An antiderivative of g(t)²/s(t)², the density (up to normalization) of the
    importance distribution of t for likelihood weighting (Song et al. 2021b)."""
    raise NotImplementedError

  @property
  def prior_std(self) -> float:
    raise NotImplementedError

  # --- derived ------------------------------------------------------------------------
  def drift(self, x: Array, t: Array) -> Array:
    return bcast(self.drift_coeff(t), x) * x

  def sde(self, x: Array, t: Array) -> tuple[Array, Array]:
    """(f(x, t), g(t))."""
    return self.drift(x, t), self.diffusion(t)

  def marginal(self, x0: Array, t: Array) -> tuple[Array, Array]:
    """Mean [B, ...] and std [B] (or []) of p_0t(x(t) | x(0) = x0)."""
    return bcast(self.mean_coeff(t), x0) * x0, self.marginal_std(t)

  def perturb(self, x0: Array, t: Array, noise: Array) -> Array:
    """x(t) = m(t) x0 + s(t) z for given standard normal ``noise`` z."""
    return bcast(self.mean_coeff(t), x0) * x0 + bcast(self.marginal_std(t), x0) * noise

  def snr(self, t: Array) -> Array:
    """m(t)²/s(t)²."""
    return jnp.exp(self.log_snr(t))

  def log_snr(self, t: Array) -> Array:
    return 2.0 * (jnp.log(self.mean_coeff(t)) - jnp.log(self.marginal_std(t)))

  def prior_sample(self, key: jax.Array, shape: tuple[int, ...], dtype=jnp.float32) -> Array:
    return self.prior_std * jax.random.normal(key, shape, dtype)

  def prior_logp(self, z: Array) -> Array:
    """log N(z; 0, prior_std² I), summed over all but the leading axis: [B]."""
    d = math.prod(z.shape[1:])
    sq = jnp.sum(jnp.square(z).reshape(z.shape[0], -1), axis=-1)
    return -0.5 * d * math.log(2 * math.pi * self.prior_std**2) - 0.5 * sq / self.prior_std**2

  def discretize(self, x: Array, t_from: Array, t_to: Array) -> tuple[Array, Array]:
    """Exact one-step forward discretization x(t_to) = x + f_i + G_i z, as score_sde's
    ``discretize``: returns (f_i [B, ...], G_i [B] or [])."""
    a, q = self.transition_coeffs(t_from, t_to)
    return bcast(a - 1.0, x) * x, jnp.sqrt(q)

  def reverse_drift(self, x: Array, t: Array, score: Array, probability_flow: bool = False) -> Array:
    """f(x, t) − c g(t)² score with c = 1 (reverse SDE) or ½ (probability-flow ODE)."""
    c = 0.5 if probability_flow else 1.0
    return self.drift(x, t) - c * bcast(self.diffusion(t) ** 2, x) * score

  def reverse(self, score_fn: ScoreFn, probability_flow: bool = False) -> ReverseSDE:
    """The reverse-time SDE (or probability-flow ODE, with zero diffusion) for ``score_fn``."""

    def drift(x, t):
      return self.reverse_drift(x, t, score_fn(x, t), probability_flow)

    def diffusion(t):
      g = self.diffusion(t)
      return jnp.zeros_like(g) if probability_flow else g

    return ReverseSDE(drift, diffusion)

  def probability_flow(self, score_fn: ScoreFn) -> Callable[[Array, Array], Array]:
    """dx/dt of the probability-flow ODE (eq. 13)."""
    return self.reverse(score_fn, probability_flow=True).drift

  def tweedie_denoise(self, x: Array, t: Array, score: Array) -> Array:
    """E[x(0) | x(t)] = (x + s² ∇log p_t(x)) / m (Tweedie's formula)."""
    return (x + bcast(self.marginal_std(t) ** 2, x) * score) / bcast(self.mean_coeff(t), x)

  def noise_level(self, t: Array) -> Array:
    """σ̃(t) = s(t)/m(t) = e^{−λ(t)/2}: x(t)/m(t) is the data plus N(0, σ̃²) noise, so every
    linear SDE is a VE process in σ̃ after rescaling (the σ of EDM, Karras et al. 2022, eq. 4)."""
    return self.marginal_std(t) / self.mean_coeff(t)

  def time_from_noise_level(self, sigma: Array) -> Array:
    """The time t with noise_level(t) = sigma, by bisection on [0, T] (σ̃ is increasing)."""
    return _invert_increasing(self.noise_level, sigma, 0.0, self.T)

  def time_from_log_snr(self, log_snr: Array) -> Array:
    """The time t with log_snr(t) = λ, by bisection on [0, T] (λ is decreasing)."""
    return _invert_increasing(lambda t: -self.log_snr(t), -jnp.asarray(log_snr), 0.0, self.T)

  def std_to_time(self, std: Array) -> Array:
    """The time t with marginal_std(t) = std, by bisection on [0, T] (s is increasing)."""
    return _invert_increasing(self.marginal_std, std, 0.0, self.T)


def _invert_increasing(fn: Callable[[Array], Array], y: Array, lo: float, hi: float, iters: int = 60) -> Array:
  """Solves fn(t) = y for an increasing ``fn`` on [lo, hi] by bisection (elementwise)."""
  y = jnp.asarray(y, float)  # float32, or float64 under jax.enable_x64
  lo_arr = jnp.full_like(y, lo)
  hi_arr = jnp.full_like(y, hi)

  def body(_, bounds):
    lo_b, hi_b = bounds
    mid = 0.5 * (lo_b + hi_b)
    above = fn(mid) >= y
    return jnp.where(above, lo_b, mid), jnp.where(above, mid, hi_b)

  lo_arr, hi_arr = jax.lax.fori_loop(0, iters, body, (lo_arr, hi_arr))
  return 0.5 * (lo_arr + hi_arr)


@dataclasses.dataclass(frozen=True)
class VESDE(SDE):
  """Variance-exploding SDE: dx = σ(t)√(2 log(σ_max/σ_min)/T) dw."""

  sigma_min: float = 0.01
  sigma_max: float = 50.0
  T: float = 1.0
  eps: float = 1e-5
  train_eps: float = 1e-5
  name: str = dataclasses.field(default="ve", init=False)

  def __post_init__(self):
    _require(self.sigma_min > 0, f"VESDE.sigma_min must be > 0, got {self.sigma_min}.")
    _require(
        self.sigma_min < self.sigma_max,
        f"VESDE.sigma_min ({self.sigma_min}) must be smaller than sigma_max ({self.sigma_max}); "
        "swap them, or choose sigma_max about the largest distance between data points.",
    )
    self._check_times()

  @property
  def _log_ratio(self) -> float:
    return math.log(self.sigma_max / self.sigma_min)

  def sigma(self, t: Array) -> Array:
    """σ(t) = σ_min (σ_max/σ_min)^{t/T}, the noise scale of NCSN at time t."""
    return self.sigma_min * jnp.exp(self._log_ratio * t / self.T)

  def drift_coeff(self, t):
    return jnp.zeros_like(jnp.asarray(t, float))

  def diffusion(self, t):
    return self.sigma(t) * math.sqrt(2.0 * self._log_ratio / self.T)

  def mean_coeff(self, t):
    return jnp.ones_like(jnp.asarray(t, float))

  def marginal_std(self, t):
    # σ(t)² − σ_min² = σ_min² (e^{2 log(σ_max/σ_min) t/T} − 1), without cancellation.
    return self.sigma_min * jnp.sqrt(jnp.expm1(2.0 * self._log_ratio * t / self.T))

  def transition_coeffs(self, t_from, t_to):
    # σ_to² − σ_from² = σ_from² (e^{2 log(σ_max/σ_min)(t_to − t_from)/T} − 1), without the
    # cancellation of the plain difference when t_to is close to t_from (or to 0).
    q = self.sigma(t_from) ** 2 * jnp.expm1(2.0 * self._log_ratio * (t_to - t_from) / self.T)
    return jnp.ones_like(q), q

  def is_potential(self, t):
    return jnp.log(jnp.expm1(2.0 * self._log_ratio * t / self.T))

  @property
  def prior_std(self) -> float:
    return self.sigma_max


class _BetaSDE(SDE):
  """Common parts of VP and sub-VP: a β schedule, mean coefficient e^{−B(t)/2}."""

  beta_min: float
  beta_max: float
  schedule: Optional[sched_lib.BetaSchedule]

  def _init_schedule(self) -> None:
    cls = type(self).__name__
    _require(self.T > 0, f"{cls}.T must be > 0, got {self.T}.")
    if self.schedule is None:
      _require(self.beta_min >= 0, f"{cls}.beta_min must be >= 0, got {self.beta_min}; a noise rate cannot be negative.")
      _require(
          self.beta_max > self.beta_min,
          f"{cls}.beta_max ({self.beta_max}) must exceed beta_min ({self.beta_min}); swap them or raise beta_max.",
      )
      object.__setattr__(self, "schedule", sched_lib.LinearSchedule(self.beta_min, self.beta_max, self.T))
    else:
      _require(
          isinstance(self.schedule, sched_lib.BetaSchedule),
          f"{cls}.schedule must be a schedule from score_jax.schedules, got {type(self.schedule).__name__}.",
      )
      _require(
          self.schedule.T == self.T,
          f"{cls}.schedule.T ({self.schedule.T}) differs from {cls}.T ({self.T}); build both with the same T.",
      )
    self._check_times()

  def beta(self, t: Array) -> Array:
    return self.schedule.beta(t)

  def beta_integral(self, t: Array) -> Array:
    return self.schedule.integral(t)

  def drift_coeff(self, t):
    return -0.5 * self.beta(t)

  def mean_coeff(self, t):
    return jnp.exp(-0.5 * self.beta_integral(t))

  def log_snr(self, t):
    b = self.beta_integral(t)
    return -b - 2.0 * jnp.log(self.marginal_std(t))

  @property
  def prior_std(self) -> float:
    return 1.0


@dataclasses.dataclass(frozen=True)
class VPSDE(_BetaSDE):
  """Variance-preserving SDE: dx = −½β(t) x dt + √β(t) dw.

  ``schedule`` (any from ``score_jax.schedules``) replaces the linear β(t) built from
  ``beta_min``/``beta_max``; when it is given those two fields are not used.
  """

  beta_min: float = 0.1
  beta_max: float = 20.0
  schedule: Optional[sched_lib.BetaSchedule] = None
  T: float = 1.0
  eps: float = 1e-3
  train_eps: float = 1e-5
  name: str = dataclasses.field(default="vp", init=False)

  def __post_init__(self):
    self._init_schedule()

  def diffusion(self, t):
    return jnp.sqrt(self.beta(t))

  def marginal_std(self, t):
    return jnp.sqrt(-jnp.expm1(-self.beta_integral(t)))

  def transition_coeffs(self, t_from, t_to):
    db = self.beta_integral(t_to) - self.beta_integral(t_from)
    return jnp.exp(-0.5 * db), -jnp.expm1(-db)

  def is_potential(self, t):
    # d/dt log(e^B − 1) = β e^B/(e^B − 1) = g²/s².
    b = self.beta_integral(t)
    return b + jnp.log(-jnp.expm1(-b))


@dataclasses.dataclass(frozen=True)
class SubVPSDE(_BetaSDE):
  """sub-VP SDE: dx = −½β(t) x dt + √(β(t)(1 − e^{−2B(t)})) dw."""

  beta_min: float = 0.1
  beta_max: float = 20.0
  schedule: Optional[sched_lib.BetaSchedule] = None
  T: float = 1.0
  eps: float = 1e-3
  train_eps: float = 1e-5
  name: str = dataclasses.field(default="subvp", init=False)

  def __post_init__(self):
    self._init_schedule()

  def diffusion(self, t):
    return jnp.sqrt(self.beta(t) * -jnp.expm1(-2.0 * self.beta_integral(t)))

  def marginal_std(self, t):
    return -jnp.expm1(-self.beta_integral(t))

  def transition_coeffs(self, t_from, t_to):
    # q = s_to² − a² s_from² = (1 − e^{−(B_to − B_from)})(1 − e^{−(B_to + B_from)}).
    b0, b1 = self.beta_integral(t_from), self.beta_integral(t_to)
    return jnp.exp(-0.5 * (b1 - b0)), jnp.expm1(-(b1 - b0)) * jnp.expm1(-(b1 + b0))

  def is_potential(self, t):
    # d/dt [B + 2 log(1 − e^{−B})] = β(1 + e^{−B})/(1 − e^{−B}) = g²/s².
    b = self.beta_integral(t)
    return b + 2.0 * jnp.log(-jnp.expm1(-b))


@dataclasses.dataclass(frozen=True)
class RectifiedFlowSDE(SDE):
  """Rectified flow as a forward SDE: the marginals of x(t) = (1 − t) x(0) + t ε.

  Its probability-flow ODE is the flow dx/dt = E[ε − x(0) | x(t)], the velocity a
  rectified-flow network predicts (``score_fn`` parametrization "velocity"); the reverse SDE
  exists on [eps, T] only, its g² = 2t/(1 − t) growing without bound towards t = 1.  T < 1 is
  required: at t = 1 the score form of the drift is 0/0 (the velocity form is finite), and
  σ̃(T) = T/(1 − T) is the largest noise level the samplers see.
  """

  T: float = 0.999
  eps: float = 1e-3
  train_eps: float = 1e-5
  name: str = dataclasses.field(default="rectified_flow", init=False)

  def __post_init__(self):
    _require(self.T < 1.0, f"RectifiedFlowSDE.T must be < 1, got {self.T}: the drift −x/(1 − t) is singular at t = 1 "
             "(x(1) is pure noise); the usual value is 0.999.")
    self._check_times()

  def drift_coeff(self, t):
    return -1.0 / (1.0 - jnp.asarray(t, float))

  def diffusion(self, t):
    t = jnp.asarray(t, float)
    return jnp.sqrt(2.0 * t / (1.0 - t))

  def mean_coeff(self, t):
    return 1.0 - jnp.asarray(t, float)

  def marginal_std(self, t):
    return jnp.asarray(t, float) * 1.0

  def mean_coeff_derivative(self, t):
    return -jnp.ones_like(jnp.asarray(t, float))

  def marginal_std_derivative(self, t):
    return jnp.ones_like(jnp.asarray(t, float))

  def transition_coeffs(self, t_from, t_to):
    # a = (1 − t_to)/(1 − t_from); q = t_to² − a² t_from², factored so that t_to ≈ t_from
    # does not cancel: q = (t_to − t_from)(t_to + t_from − 2 t_to t_from)/(1 − t_from)².
    a = (1.0 - t_to) / (1.0 - t_from)
    q = (t_to - t_from) * (t_to + t_from - 2.0 * t_to * t_from) / (1.0 - t_from) ** 2
    return a, q

  def is_potential(self, t):
    # g²/s² = 2/(t(1 − t)), whose antiderivative is 2 logit(t).
    t = jnp.asarray(t, float)
    return 2.0 * (jnp.log(t) - jnp.log1p(-t))

  def log_snr(self, t):
    t = jnp.asarray(t, float)
    return 2.0 * (jnp.log1p(-t) - jnp.log(t))

  def time_from_noise_level(self, sigma):
    sigma = jnp.asarray(sigma, float)
    return sigma / (1.0 + sigma)  # σ̃ = t/(1 − t)

  @property
  def prior_std(self) -> float:
    # x(T) = (1 − T) x(0) + T ε: the prior N(0, T² I) neglects the data's share (1 − T)² Var x(0)
    # (2.5e-7 for data of std 0.5 at T = 0.999), which N(0, I) would overstate 8000-fold.
    return self.T


SDES = {"ve": VESDE, "vp": VPSDE, "subvp": SubVPSDE, "rectified_flow": RectifiedFlowSDE}


def get_sde(name: str, **kwargs) -> SDE:
  """Builds an SDE by name ("ve", "vp", "subvp", "rectified_flow"); ``schedule`` may be a schedule name with
  ``schedule_kwargs`` for VP / sub-VP, e.g. ``get_sde("vp", schedule="cosine")``."""
  if name not in SDES:
    raise ValueError(f"Unknown SDE {name!r}; choose one of {sorted(SDES)}.")
  kwargs = dict(kwargs)
  sched = kwargs.pop("schedule", None)
  sched_kwargs = dict(kwargs.pop("schedule_kwargs", None) or {})
  if isinstance(sched, str):
    if name not in ("vp", "subvp"):
      raise ValueError(f"schedule applies to VP and sub-VP SDEs only; remove it for {name!r}.")
    if sched == "linear" and not sched_kwargs:
      sched = None
    else:
      sched_kwargs.setdefault("T", kwargs.get("T", 1.0))
      # beta_min / beta_max given to the SDE also set a named schedule that has them
      # (quadratic, exponential, linear), rather than being silently ignored.
      sched_cls = sched_lib.SCHEDULES.get(sched)
      sched_fields = {f.name for f in dataclasses.fields(sched_cls)} if sched_cls else set()
      for field in ("beta_min", "beta_max"):
        if field in kwargs and field in sched_fields:
          sched_kwargs.setdefault(field, kwargs[field])
      sched = sched_lib.get_schedule(sched, **sched_kwargs)
  if sched is not None:
    kwargs["schedule"] = sched
  fields = {f.name for f in dataclasses.fields(SDES[name]) if f.init}
  unknown = set(kwargs) - fields
  if unknown:
    raise ValueError(f"SDE {name!r} has no field(s) {sorted(unknown)}; it takes {sorted(fields)}.")
  return SDES[name](**kwargs)
