"""Controllable generation as score functions: every function here takes score functions
``score_fn(x [B, ...], t [B]) -> [B, ...]`` and returns one, so every sampler of
``score_jax.sampling`` (pc, ode, edm, dpm_solver, ddim, adaptive, ald, ...) takes the result
unchanged.

* ``classifier_guidance``: s(x, t) + λ(σ) ∇_x log p_t(y | x) (Song et al. 2021, "Score-Based
  Generative Modeling through Stochastic Differential Equations", eq. 14 and App. I.4;
  the report, §5.3 eq. 5.5) with the report's strategies for λ as named options of
  ``Guidance``: ``constant`` (the "amplified" scale, λ = 500 in the report), ``linear`` (λ
  moving linearly in σ from λ_start at σ_max to λ_end at σ_min; the report's 500 → 400),
  ``truncated`` (guidance only for σ_lo ≤ σ ≤ σ_hi, the report's "double truncation"), and
  ``norm_ratio`` (ours: λ per example so that ‖λ ∇log p_t(y|x)‖ = ρ ‖s(x, t)‖, scale-free;
  λ = 0 where ‖∇log p_t(y|x)‖ is below a floor at which it is no longer resolvable, and an
  optional cap ``max_scale``).  The gradient is formed as Σ_{j≠y} p_j (∇ℓ_y − ∇ℓ_j), which
  keeps its direction in float32 where p_t(y|x) saturates (``classifier_grad``).
  Any strategy can evaluate the classifier at min(σ, σ_classifier_max) (the report's
  "classifier truncation"; ``sigma_classifier_max``).
* ``norm_ratios`` / ``norm_ratio_trajectory``: the diagnostic ‖∇log p_t(y|x)‖ / ‖s(x, t)‖
  per example, and recorded along a sampling trajectory against σ.
* ``classifier_free_guidance`` (Ho & Salimans 2022): (1 + w) s(x, t, y) − w s(x, t, ∅) in
  one batched network call.
* ``autoguidance`` (Karras et al., "Guiding a Diffusion Model with a Bad Version of Itself",
  NeurIPS 2024, eq. 1): (1 + w) s_good(x, t) − w s_bad(x, t), the bad model a smaller or
  less-trained one of the same task; EDM2's guidance weight is 1 + w.
* ``sigma_interval`` of every kind (Kynkäänniemi et al., "Applying Guidance in a Limited
  Interval Improves Sample and Distribution Quality in Diffusion Models", NeurIPS 2024):
  guidance only for σ_lo < σ ≤ σ_hi, the unguided score elsewhere (``in_interval``).
* ``posterior_guidance``: inpainting / colorization by the gradient of a Gaussian
  approximation of log p(y_Ω | x(t)) around the Tweedie denoiser (Song et al. 2023,
  "Pseudoinverse-guided diffusion models", ΠGDM; Chung et al. 2023, DPS), the alternative to
  the samplers' replacement option (``sampling.constraints``).

Noise level.  The strategies are written in σ = σ̃(t) = s(t)/m(t) (``sde.noise_level``), the
std of the noise on the data once x(t) is rescaled by 1/m(t): for VE it is the marginal std
√(σ(t)² − σ_min²) ≈ σ(t) (the report's σ), for VP / sub-VP the EDM-style σ.  The classifier
itself is conditioned on the time t: ``log_prob_fn(x [B, ...], t [B]) -> [B, K]`` log-probs
(wrap a σ-conditioned network as ``lambda x, t: net(x, sde.noise_level(t))``).

Per-example gradients.  ∇_x log p_t(y|x) is the gradient of Σ_b log p_t(y_b | x_b): it is
per example when the classifier treats the examples of a batch independently (no batch
statistics), as every classifier here does in inference mode.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import numpy as np

from score_jax.sampling import common, steps
from score_jax.sde import SDE, ScoreFn, bcast

Array = Any
LogProbFn = Callable[[Array, Array], Array]  # (x [B, ...], t [B]) -> log-probs [B, K]
LabeledScoreFn = Callable[[Array, Array, Array], Array]  # (x [B, ...], t [B], labels [B]) -> [B, ...]

STRATEGIES = ("constant", "linear", "truncated", "norm_ratio")
Interval = Optional[tuple[float, float]]


def check_interval(sigma_interval: Interval) -> Interval:
  """``sigma_interval`` as (σ_lo, σ_hi) with 0 ≤ σ_lo < σ_hi (σ_hi may be inf), or None."""
  if sigma_interval is None:
    return None
  fail = ValueError(f"guidance sigma_interval={sigma_interval!r} must be (σ_lo, σ_hi) with 0 <= σ_lo < σ_hi "
                    "(guidance for σ_lo < σ <= σ_hi; Kynkäänniemi et al. 2024).")
  if not (isinstance(sigma_interval, (tuple, list)) and len(sigma_interval) == 2):
    raise fail
  try:
    lo, hi = (_scalar(v, "sigma_interval", allow_inf=True) for v in sigma_interval)
  except ValueError:
    raise fail from None
  if not 0.0 <= lo < hi:
    raise fail
  return lo, hi


def in_interval(sigma: Array, sigma_interval: Interval) -> Array:
  """1 where σ_lo < σ ≤ σ_hi, else 0, [B] in σ's dtype (all ones for None)."""
  if sigma_interval is None:
    return jnp.ones_like(sigma)
  lo, hi = sigma_interval
  return ((sigma > lo) & (sigma <= hi)).astype(sigma.dtype)


def _norm(v: Array) -> Array:
  """Per-example Euclidean norm [B] of v [B, ...], scaled by the largest entry first so that
  squares neither underflow (|v| < 1e-19 in float32) nor overflow."""
  flat = v.reshape(v.shape[0], -1)
  big = jnp.max(jnp.abs(flat), axis=-1)  # [B]
  safe = jnp.where(big > 0, big, 1.0)
  return big * jnp.sqrt(jnp.sum(jnp.square(flat / safe[:, None]), axis=-1))


def norm_floor(dtype) -> float:
  """The default ``Guidance.norm_floor`` of a dtype: tiny/eps (float32 ≈ 9.9e-32, float64 ≈
  1e-292), the norm below which a gradient's entries are subnormal and hold fewer than full bits."""
  info = jnp.finfo(dtype)
  return float(info.tiny) / float(info.eps)


def _scalar(value, name: str, *, minimum: float = -math.inf, strict: bool = False, allow_inf: bool = False,
            what: str = "guidance") -> float:
  """``value`` as a Python float: a Python, NumPy or (concrete) JAX real scalar, finite (or +inf
  with ``allow_inf``) and ≥ (or > with ``strict``) ``minimum``; otherwise a one-line ValueError
  naming the option."""
  bound = f"{'>' if strict else '>='} {minimum}"
  fail = ValueError(f"{what} {name}={value!r} must be a {'' if allow_inf else 'finite '}real number {bound} "
                    "(a Python, NumPy or JAX scalar).")
  if isinstance(value, (bool, np.bool_)) or isinstance(value, jax.core.Tracer):
    raise fail
  if isinstance(value, (int, float, np.integer, np.floating)):
    v = float(value)
  elif isinstance(value, (np.ndarray, jax.Array)) and value.shape == () and (
      np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)):
    v = float(value)
  else:
    raise fail
  if math.isnan(v) or (math.isinf(v) and not (allow_inf and v > 0)) or not (v > minimum if strict else v >= minimum):
    raise fail
  return v


def _number(value, name: str, *, minimum: float = -math.inf, strict: bool = False) -> float:
  return _scalar(value, name, minimum=minimum, strict=strict)


def check_labels(labels: Array, num_classes: Optional[int], name: str) -> Array:
  """``labels`` as int32 [B], checked (when concrete) to be integers in 0 … num_classes − 1;
  a one-line ValueError naming ``name`` otherwise.  Traced labels pass unchecked."""
  if isinstance(labels, jax.core.Tracer):
    return labels
  arr = np.asarray(labels)
  if arr.ndim != 1 or not (np.issubdtype(arr.dtype, np.integer) or arr.size == 0):
    raise ValueError(f"{name} labels must be integer class ids of shape [B], got dtype {arr.dtype} shape {arr.shape}.")
  if arr.size and (arr.min() < 0 or (num_classes is not None and arr.max() >= num_classes)):
    top = "" if num_classes is None else f" … {num_classes - 1}"
    raise ValueError(f"{name} labels must be classes 0{top}; got labels from {arr.min()} to {arr.max()}.")
  return jnp.asarray(arr, jnp.int32)


@dataclasses.dataclass(frozen=True)
class Guidance:
  """How strongly classifier guidance pulls, as a function of the noise level σ.

  Fields (only those of the chosen strategy are used; each is checked on construction):
    strategy: one of ``STRATEGIES``.
    scale: λ for "constant" and "truncated" (the report: 500).
    scale_start, scale_end: "linear": λ at σ_max and at σ_min (the report: 500 and 400).
    sigma_min, sigma_max: "linear": the σ range of the ramp; None means the SDE's σ̃(eps) and
      σ̃(T) (see ``lambda_fn``).  Outside the range λ stays at its end value.
    sigma_lo, sigma_hi: "truncated": the guidance zone σ_lo ≤ σ ≤ σ_hi (the report's
      σ_limit_pred_min / max, e.g. 1 and 100); λ = 0 outside it.
    ratio: "norm_ratio": ρ, so that ‖λ ∇log p_t(y|x)‖ = ρ ‖s(x, t)‖ for every example.
    sigma_classifier_max: any strategy: the classifier is evaluated at min(σ, this) (the
      report's σ_max_classifier ≈ 50, where its classifier stopped being useful); None: at σ.
    sigma_interval: any strategy: λ is set to 0 outside σ_lo < σ ≤ σ_hi (``in_interval``); None: everywhere.
    norm_floor: "norm_ratio": ‖∇log p_t(y|x)‖ below this is not resolvable and gets λ = 0 (no
      guidance there, rather than rounding noise scaled up to ρ‖s‖); None: the dtype's
      ``norm_floor`` (float32: 1.2e-38 / 1.2e-7 ≈ 1e-31, below which the gradient's entries
      are subnormal and have lost relative precision).
    max_scale: "norm_ratio": an optional cap on λ (None: none).

  Every numeric field accepts Python, NumPy and JAX scalars and is stored as a Python float.
  """

  strategy: str = "constant"
  scale: float = 1.0
  scale_start: float = 500.0
  scale_end: float = 400.0
  sigma_min: Optional[float] = None
  sigma_max: Optional[float] = None
  sigma_lo: float = 0.0
  sigma_hi: float = math.inf
  ratio: float = 1.0
  sigma_classifier_max: Optional[float] = None
  sigma_interval: Interval = None
  norm_floor: Optional[float] = None
  max_scale: Optional[float] = None

  def __post_init__(self):
    if self.strategy not in STRATEGIES:
      raise ValueError(f"guidance strategy={self.strategy!r} is unknown; choose one of {list(STRATEGIES)}.")
    put = lambda name, **kw: object.__setattr__(self, name, _scalar(getattr(self, name), name, **kw))
    if self.strategy in ("constant", "truncated"):
      put("scale")
    if self.strategy == "linear":
      put("scale_start")
      put("scale_end")
      for name in ("sigma_min", "sigma_max"):
        if getattr(self, name) is not None:
          put(name, minimum=0.0, strict=True)
      if self.sigma_min is not None and self.sigma_max is not None and not self.sigma_min < self.sigma_max:
        raise ValueError(f"guidance sigma_min={self.sigma_min} must be smaller than sigma_max={self.sigma_max}.")
    if self.strategy == "truncated":
      put("sigma_lo", minimum=0.0)
      put("sigma_hi", minimum=0.0, allow_inf=True)
      if not self.sigma_hi > self.sigma_lo:
        raise ValueError(f"guidance sigma_hi={self.sigma_hi!r} must exceed sigma_lo={self.sigma_lo!r}: "
                         "the zone is sigma_lo <= σ <= sigma_hi.")
    if self.strategy == "norm_ratio":
      put("ratio", minimum=0.0)
      for name in ("norm_floor", "max_scale"):
        if getattr(self, name) is not None:
          put(name, minimum=0.0, strict=True)
    if self.sigma_classifier_max is not None:
      put("sigma_classifier_max", minimum=0.0, strict=True)
    object.__setattr__(self, "sigma_interval", check_interval(self.sigma_interval))

  def lambda_fn(self, sde: SDE) -> Callable[[Array], Array]:
    """λ(σ) [B] for σ [B] (not for "norm_ratio", whose λ depends on x: see ``norm_ratio_scale``).

    constant:  λ = scale.
    linear:    λ = λ_end + (λ_start − λ_end)(σ − σ_min)/(σ_max − σ_min), σ clipped to [σ_min, σ_max].
    truncated: λ = scale if σ_lo ≤ σ ≤ σ_hi else 0 (the report's zone test with its typo fixed:
               its printed test compares σ with σ_limit_pred_max on both sides).
    """
    if self.strategy == "constant":
      return lambda sigma: jnp.full_like(sigma, self.scale)
    if self.strategy == "truncated":
      return lambda sigma: jnp.where((sigma >= self.sigma_lo) & (sigma <= self.sigma_hi), self.scale, 0.0)
    if self.strategy == "linear":
      with jax.ensure_compile_time_eval():
        lo = float(sde.noise_level(jnp.float32(sde.eps))) if self.sigma_min is None else self.sigma_min
        hi = float(sde.noise_level(jnp.float32(sde.T))) if self.sigma_max is None else self.sigma_max
      if not lo < hi:
        raise ValueError(f"guidance sigma_min={lo} must be smaller than sigma_max={hi}.")

      def linear(sigma):
        frac = (jnp.clip(sigma, lo, hi) - lo) / (hi - lo)
        return self.scale_end + (self.scale_start - self.scale_end) * frac

      return linear
    raise ValueError("guidance strategy 'norm_ratio' sets λ per example from the norms: use norm_ratio_scale.")

  def classifier_sigma(self, sigma: Array) -> Array:
    """The σ the classifier is evaluated at: min(σ, sigma_classifier_max), or σ."""
    return sigma if self.sigma_classifier_max is None else jnp.minimum(sigma, self.sigma_classifier_max)


def norm_ratio_scale(score: Array, grad: Array, ratio: float, *, floor: Optional[float] = None,
                     max_scale: Optional[float] = None) -> Array:
  """λ [B] with ‖λ grad‖ = ratio ‖score‖ per example, capped at ``max_scale`` when given.

  Where ‖grad‖ < ``floor`` (None: ``norm_floor(grad.dtype)``) the gradient is not resolvable —
  its direction is rounding, not the classifier — and λ = 0: no guidance there.
  """
  floor = norm_floor(grad.dtype) if floor is None else floor
  g = _norm(grad)
  ok = g >= floor
  lam = jnp.where(ok, ratio * _norm(score) / jnp.where(ok, g, 1.0), 0.0)
  return lam if max_scale is None else jnp.minimum(lam, max_scale)


def norm_ratios(score: Array, grad: Array) -> Array:
  """The diagnostic ‖∇log p_t(y|x)‖ / ‖s(x, t)‖ [B] (the report's "30 000:1" is its inverse)."""
  return _norm(grad) / _norm(score)


def classifier_grad(log_prob_fn: LogProbFn, labels: Array, sde: SDE, x: Array, t: Array,
                    sigma_classifier_max: Optional[float] = None) -> Array:
  """∇_x log p_t(y | x) [B, ...] for labels y [B] at times t [B].

  Computed in the form Σ_{j≠y} p_j (∇ℓ_y − ∇ℓ_j) of the classifier's logits ℓ (its log-probs),
  which keeps its relative precision where p_t(y|x) saturates: the naive gradient of
  log_softmax_y forms 1 − p_y, which float32 rounds to 0 once 1 − p_y < 6e-8, leaving the
  rounding of the other terms as the "direction".

  With ``sigma_classifier_max`` the classifier sees the noise level σ_c = min(σ̃(t), σ_c,max):
  it is evaluated at the time t_c with σ̃(t_c) = σ_c on the input x m(t_c)/m(t) (the same
  signal scaled as at t_c; for VE the input is x itself, as in the report), and the
  gradient is taken through that rescaling.
  """
  labels = jnp.asarray(labels, jnp.int32)

  if sigma_classifier_max is None:
    logits_fn = lambda x: log_prob_fn(x, t)  # [B, K]
  else:
    sigma = sde.noise_level(t)
    t_c = jnp.where(sigma > sigma_classifier_max, sde.time_from_noise_level(
        jnp.minimum(sigma, sigma_classifier_max)), t)
    rescale = sde.mean_coeff(t_c) / sde.mean_coeff(t)  # [B]
    logits_fn = lambda x: log_prob_fn(bcast(rescale, x) * x, t_c)

  # ∇log p(y|x) = Σ_{j≠y} p_j (∇ℓ_y − ∇ℓ_j) for logits ℓ (log-probs are logits too): one VJP of
  # ℓ with the cotangent c_j = −p_j (j ≠ y), c_y = Σ_{j≠y} p_j, summed from the small p_j so
  # that no 1 − p_y is formed; it cancels to nothing in float32 once 1 − p_y < 6e-8.
  logits, vjp = jax.vjp(logits_fn, x)
  num_classes = logits.shape[-1]
  if not isinstance(labels, jax.core.Tracer):
    check_labels(labels, num_classes, "classifier guidance")
  probs = jax.nn.softmax(jax.lax.stop_gradient(logits), axis=-1)  # [B, K]
  is_y = jax.nn.one_hot(labels, num_classes, dtype=bool)
  others = jnp.where(is_y, 0.0, probs)
  cot = jnp.where(is_y, jnp.sum(others, axis=-1, keepdims=True), -others).astype(logits.dtype)
  return vjp(cot)[0]


# Song et al. 2021, eq. 14 / the report's eq. 5.5: ∇log p_t(x|y) = ∇log p_t(x) + λ ∇log p_t(y|x).
def classifier_guidance(score_fn: ScoreFn, log_prob_fn: LogProbFn, labels: Array, *, sde: SDE,
                        guidance: Guidance = Guidance()) -> ScoreFn:
  """The guided score s(x, t) + λ(σ) ∇_x log p_t(y | x).

  Args:
    score_fn: the unconditional score ``score_fn(x [B, ...], t [B])``.
    log_prob_fn: the noise-conditional classifier, ``log_prob_fn(x [B, ...], t [B]) -> [B, K]``
      log-probabilities (log-softmax of logits).
    labels: requested classes y [B] (int) in 0 … K − 1, K the classifier's classes (checked
      when concrete: negatives here, the upper end when the guided score is first traced).
    sde: the SDE (σ = ``sde.noise_level(t)``).
    guidance: the strategy and its parameters.

  Returns:
    ``guided(x, t) -> [B, ...]``; each call costs one score and one classifier gradient.
  """
  if not isinstance(guidance, Guidance):
    raise ValueError(f"guidance must be a guidance.Guidance, got {type(guidance).__name__}.")
  labels = check_labels(labels, None, "classifier guidance")  # the upper end against K when first called
  lam_fn = None if guidance.strategy == "norm_ratio" else guidance.lambda_fn(sde)

  def guided(x: Array, t: Array) -> Array:
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
    score = score_fn(x, t)
    grad = classifier_grad(log_prob_fn, labels, sde, x, t, guidance.sigma_classifier_max)
    if lam_fn is None:
      lam = norm_ratio_scale(score, grad, guidance.ratio, floor=guidance.norm_floor, max_scale=guidance.max_scale)
    else:
      lam = lam_fn(sde.noise_level(t))
    if guidance.sigma_interval is not None:
      lam = lam * in_interval(sde.noise_level(t), guidance.sigma_interval)
    return score + bcast(lam, x) * grad

  return guided


def norm_ratio_trajectory(key: jax.Array, sde: SDE, score_fn: ScoreFn, log_prob_fn: LogProbFn, labels: Array,
                          shape: tuple[int, ...], *, guided_score_fn: Optional[ScoreFn] = None,
                          num_steps: int = 100, predictor: str = "reverse_diffusion") -> tuple[Array, Array]:
  """Records ‖∇log p_t(y|x)‖ / ‖s(x, t)‖ along a reverse-diffusion trajectory.

  The trajectory follows ``guided_score_fn`` (default: ``score_fn``, i.e. unguided) with
  ``num_steps`` steps of ``predictor`` (``sampling.steps.PREDICTORS``) from the prior at T;
  at each grid time t_i the ratio of the raw classifier gradient to the unguided score is
  recorded, the quantity the report found near 1/30 000 and ``norm_ratio`` fixes to ρ.

  Returns:
    (sigmas [num_steps] = σ̃(t_i), ratios [num_steps, B]).
  """
  if predictor not in steps.PREDICTORS or predictor == "none":
    raise ValueError(f"norm_ratio_trajectory predictor={predictor!r}; choose one of "
                     f"{sorted(p for p in steps.PREDICTORS if p != 'none')}.")
  step_fn = steps.PREDICTORS[predictor]
  follow = score_fn if guided_score_fn is None else guided_score_fn
  n = shape[0]
  keys = common.per_sample_keys(key, n)
  ts = common.time_grid(sde.T, sde.eps, num_steps)

  @jax.jit
  def run(x):
    def body(x, i):
      t, t_next = common.full_t(ts[i], n), common.full_t(ts[i + 1], n)
      ratio = norm_ratios(score_fn(x, t), classifier_grad(log_prob_fn, labels, sde, x, t))
      x, _ = step_fn(sde, follow, x, t, t_next, common.normal(keys, shape, i + 1))
      return x, ratio

    return jax.lax.scan(body, x, jnp.arange(num_steps))[1]

  ratios = run(sde.prior_std * common.normal(keys, shape, 0))
  return sde.noise_level(ts[:-1]), ratios


# Ho & Salimans 2022, "Classifier-free diffusion guidance", eq. 6, written for scores.
def classifier_free_guidance(labeled_score_fn: LabeledScoreFn, labels: Array, *, w: float,
                             null_label: int, sde: Optional[SDE] = None, sigma_interval: Interval = None) -> ScoreFn:
  """(1 + w) s(x, t, y) − w s(x, t, ∅), both halves from ONE network call on a batch of 2B.

  Args:
    labeled_score_fn: ``(x [N, ...], t [N], labels [N]) -> [N, ...]``, the class-conditional
      score, unconditional for ``null_label``; for a network,
      ``lambda x, t, l: score_fn.get_score_fn(sde, apply_fn, params, labels=l)(x, t)``.
    labels: requested classes y [B] (int), each in 0 … null_label − 1 (checked when concrete).
    w: guidance weight ≥ 0 (0: the conditional score; the sampled law sharpens as w grows); a
      Python, NumPy or JAX scalar.
    null_label: the id of ∅ (``num_classes`` for the networks here, ``layers.ClassEmbedding``);
      the classes are 0 … null_label − 1.
    sde, sigma_interval: guidance only for σ_lo < σ̃(t) ≤ σ_hi (the conditional score elsewhere).

  Returns:
    ``guided(x [B, ...], t [B]) -> [B, ...]``.
  """
  w = _number(w, "w", minimum=0.0)
  if not (isinstance(null_label, (int, np.integer)) and not isinstance(null_label, bool) and null_label >= 1):
    raise ValueError(f"classifier_free_guidance null_label={null_label!r} must be an integer >= 1: the id of ∅ "
                     "after the classes 0 … null_label − 1 (num_classes for the networks here).")
  null_label = int(null_label)
  sigma_interval = _interval_with_sde(sigma_interval, sde)
  labels = check_labels(labels, null_label, "classifier_free_guidance")

  def guided(x: Array, t: Array) -> Array:
    n = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (n,))
    both = labeled_score_fn(jnp.concatenate([x, x]), jnp.concatenate([t, t]),
                            jnp.concatenate([labels, jnp.full((n,), null_label, jnp.int32)]))  # [2B, ...]
    return _combine(both[:n], both[n:], w, t, sde, sigma_interval)

  return guided


def _interval_with_sde(sigma_interval: Interval, sde: Optional[SDE]) -> Interval:
  sigma_interval = check_interval(sigma_interval)
  if sigma_interval is not None and sde is None:
    raise ValueError("guidance sigma_interval needs the sde (σ = sde.noise_level(t)).")
  return sigma_interval


def _combine(good: Array, bad: Array, w: float, t: Array, sde: Optional[SDE], sigma_interval: Interval) -> Array:
  """(1 + w) good − w bad, with w set to 0 outside ``sigma_interval``."""
  if sigma_interval is None:
    return (1.0 + w) * good - w * bad
  w_t = bcast(w * in_interval(sde.noise_level(t), sigma_interval), good)
  return (1.0 + w_t) * good - w_t * bad


# Karras et al. 2024, "Guiding a Diffusion Model with a Bad Version of Itself", eq. 1, for scores.
def autoguidance(score_fn: Optional[ScoreFn], guide_score_fn: Optional[ScoreFn] = None, *, w: float,
                 pair_fn: Optional[Callable[[Array, Array], tuple[Array, Array]]] = None,
                 sde: Optional[SDE] = None, sigma_interval: Interval = None) -> ScoreFn:
  """(1 + w) s_good(x, t) − w s_bad(x, t): the model guided away from a worse version of itself.

  Args:
    score_fn: the good model's score; with ``guide_score_fn`` the bad (guiding) one's: two calls.
    pair_fn: instead of the two, ``(x, t) -> (s_good, s_bad)`` in one call (the jobs' shared-
      architecture case: both parameter sets in one batched network evaluation).
    w: guidance weight ≥ 0 (0: the good model alone; EDM2's weight is 1 + w).
    sde, sigma_interval: guidance only for σ_lo < σ̃(t) ≤ σ_hi (the good score elsewhere).

  Returns:
    ``guided(x [B, ...], t [B]) -> [B, ...]``.
  """
  w = _number(w, "w", minimum=0.0)
  sigma_interval = _interval_with_sde(sigma_interval, sde)
  if (pair_fn is None) == (score_fn is None or guide_score_fn is None):
    raise ValueError("autoguidance takes score_fn and guide_score_fn, or pair_fn alone.")
  if pair_fn is None:
    pair_fn = lambda x, t: (score_fn(x, t), guide_score_fn(x, t))

  def guided(x: Array, t: Array) -> Array:
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])
    good, bad = pair_fn(x, t)
    return _combine(good, bad, w, t, sde, sigma_interval)

  return guided


COVARIANCES = ("isotropic", "tweedie")


# ΠGDM (Song et al. 2023) / DPS (Chung et al. 2023): ∇log p_t(x|y) ≈ ∇log p_t(x) + ∇_x log N(y; A x̂_0(x), C_t).
def check_posterior_options(covariance: str, data_variance, scale) -> tuple[float, float]:
  """(data_variance, scale) as floats; a one-line ValueError naming a bad option."""
  if covariance not in COVARIANCES:
    raise ValueError(f"posterior_guidance covariance={covariance!r} is unknown; choose one of {list(COVARIANCES)}.")
  return (_number(data_variance, "data_variance", minimum=0.0, strict=True), _number(scale, "scale", minimum=0.0))


def posterior_guidance(score_fn: ScoreFn, sde: SDE, values: Array, mask: Array, *, basis: Optional[Array] = None,
                       covariance: str = "isotropic", data_variance: float = 1.0, scale: float = 1.0) -> ScoreFn:
  """Inpainting / colorization by guidance: s(x, t) + scale ∇_x log N(y_Ω; (x̂_0(x, t))_Ω, C_t).

  x̂_0 = (x + s(t)² s(x, t))/m(t) is Tweedie's posterior mean, and the law of x(0) given
  x(t) is approximated by a Gaussian around it.  Its covariance C_t:
    "isotropic": r_t² I with r_t² = v σ̃²/(v + σ̃²), σ̃ = s/m (ΠGDM's choice for data of
      variance v = ``data_variance``); the gradient is one vector-Jacobian product of x̂_0.
    "tweedie": the exact posterior covariance of the second-order Tweedie formula,
      Cov[x(0) | x(t)] = (s²/m) ∂x̂_0/∂x, restricted to the known coordinates.  For a
      Gaussian target with the exact score this makes the guided score the exact
      ∇log p_t(x | y_Ω), so any sampler draws the exact conditional; it needs the full
      Jacobian (D Jacobian-vector products per call), so it is for small D only.

  Args:
    score_fn: the unconditional score.
    sde: the SDE.
    values: y [B, ...] (x's shape; unknown coordinates ignored).
    mask: 1 for known coordinates of u = x @ basis (or of x), 0 otherwise; broadcasts to x.
    basis: None, or the orthogonal channel matrix of ``sampling.constraints.color_matrix``.
    covariance: one of ``COVARIANCES``.
    data_variance: v for "isotropic".
    scale: multiplies the guidance term (1 is Bayes' rule under the approximation).

  Returns:
    ``guided(x, t) -> [B, ...]``.  Each call evaluates the score once and differentiates it.

  The observation is checked here where concrete (values of the samples' shape, a binary mask,
  an orthogonal basis: ``sampling.constraints.check_observation``).  The closure holds the
  arrays, so a sampler compiled for it is compiled again for a new image; to reuse it, pass
  the observation to the sampler as ``constraint=sampling.constraints.Posterior(...)``.
  """
  data_variance, scale = check_posterior_options(covariance, data_variance, scale)
  if not isinstance(values, jax.core.Tracer):
    from score_jax.sampling import constraints  # pylint: disable=g-import-not-at-top
    constraints.check_observation(constraints.Observation(values, mask, basis), tuple(np.shape(values)))
  def guided(x: Array, t: Array) -> Array:
    score, grad = posterior_terms(score_fn, sde, values, mask, x, t, basis=basis, covariance=covariance,
                                  data_variance=data_variance)
    return score + scale * grad

  return guided


def posterior_terms(score_fn: ScoreFn, sde: SDE, values: Array, mask: Array, x: Array, t: Array, *,
                    basis: Optional[Array] = None, covariance: str = "isotropic",
                    data_variance: float = 1.0) -> tuple[Array, Array]:
  """(s(x, t), ∇_x log N(y_Ω; (x̂_0)_Ω, C_t)) [B, ...] each: the two terms of
  ``posterior_guidance`` (unchecked; values, mask and basis may be traced)."""
  basis_arr = None if basis is None else jnp.asarray(basis, x.dtype)
  decouple = (lambda v: v) if basis_arr is None else (lambda v: v @ basis_arr)
  couple = (lambda u: u) if basis_arr is None else (lambda u: u @ basis_arr.T)
  t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
  m, s = sde.mean_coeff(t), sde.marginal_std(t)
  mask_u = jnp.broadcast_to(jnp.asarray(mask, x.dtype), x.shape)
  y_u = decouple(jnp.asarray(values, x.dtype))

  def denoised(x, t=t):
    score = score_fn(x, t)
    return sde.tweedie_denoise(x, t, score), score

  (x0, vjp, score) = jax.vjp(denoised, x, has_aux=True)
  resid = mask_u * (y_u - decouple(x0))  # [B, ...] in u
  if covariance == "isotropic":
    sigma2 = (s / m) ** 2
    r2 = data_variance * sigma2 / (data_variance + sigma2)  # [B]
    grad = vjp(couple(resid / bcast(r2, x)))[0]
  else:
    grad = _tweedie_grad(denoised, x, t, m, s, mask_u, resid, decouple)
  return score, grad


def _tweedie_grad(denoised, x, t, m, s, mask_u, resid, decouple):
  """Jᵀ Aᵀ (A C Aᵀ)⁻¹ (y − A x̂_0) per example, C = (s²/m) J, J = ∂x̂_0/∂x (flattened)."""
  d = math.prod(x.shape[1:])
  eye = jnp.eye(d, dtype=x.dtype)
  to_u = jax.vmap(lambda e: decouple(e.reshape(x.shape[1:])).reshape(-1))(eye)  # [D, D], row i = decouple(e_i)

  def one(xi, ti, mi, si, maski, residi):
    def f(v):  # u-space x̂_0 [D] of one example
      return decouple(denoised(v.reshape((1,) + x.shape[1:]), ti[None])[0])[0].reshape(-1)

    ju = jax.jacfwd(f)(xi.reshape(-1))  # [D, D]: ∂û_0/∂x
    # As column vectors x = to_u u, so ∂û_0/∂u = ju @ to_u; by the second-order Tweedie
    # formula (u(t) follows the same linear SDE) Cov[u(0) | x(t)] = (s²/m) ∂û_0/∂u.
    cov_u = (si**2 / mi) * ju @ to_u
    k = maski.reshape(-1)
    c = cov_u * k[:, None] * k[None, :] + jnp.diag(1.0 - k)  # the known block, identity elsewhere
    sol = jnp.linalg.solve(0.5 * (c + c.T), residi.reshape(-1) * k)
    return (ju.T @ sol).reshape(x.shape[1:])

  return jax.vmap(one)(x, t, m, s, mask_u, resid)
