"""Training objectives for score models: denoising, implicit and sliced score matching.

Time-conditional losses take ``score_fn(x, t)`` with x [B, ...] and t [B] and return a
scalar.  They all rest on one quantity: with x(t) = m(t) x + s(t) z, z ~ N(0, I),

    ℓ(x, t, z) = ‖s(t)·score_fn(x(t), t) + z‖²,

which is the noise-prediction error ‖ε̂ − z‖² for ε̂ = −s·score, and equals
s² ‖score − ∇log p_0t(x(t) | x)‖², the denoising score-matching error scaled by s².  A
weighting λ(t) of the score error is therefore a weight w(t) = λ(t)/s(t)² of ℓ, which
stays finite where s → 0:

    weighting     λ(t) (score error)      w(t) (of ℓ)
    "sigma2"      s²                      1                    (Song et al. 2021, default)
    "likelihood"  g²                      g²/s²                (Song et al. 2021b)
    "uniform"     1                       1/s²
    "min_snr"     s² min(SNR, γ)/SNR      min(SNR, γ)/SNR      (Hang et al. 2023)
    "p2"          s²/(k + SNR)^γ          1/(k + SNR)^γ        (Choi et al. 2022)
    "edm"         s²(σ̃² + σ_d²)/σ_d²      (σ̃² + σ_d²)/σ_d²     (Karras et al. 2022)
    "velocity"    s²(ṡ − ṁ s/m)²          (ṡ − ṁ s/m)²          (flow matching)

with SNR(t) = m²/s² and σ̃ = s/m.  "edm" is EDM's λ(σ) = (σ² + σ_d²)/(σ σ_d)² of the denoiser
error: ‖D − x(0)‖² = σ̃² ℓ for the denoiser D in x/m (``score_fn``), so λ‖D − x(0)‖² = w ℓ.
"velocity" is the conditional flow-matching loss ‖û − (ṁ x(0) + ṡ z)‖² = w ℓ (Lipman et al.
2023); under the rectified-flow SDE it is ‖û − (z − x(0))‖², w = 1/(1 − t)².

Noise levels (``noise_distribution``) are a distribution of σ̃ mapped back to t, drawn from
the u of ``time_sampling`` by the inverse CDF, truncated to [σ̃(train_eps), σ̃(T)] (no mass
is piled up at the ends):

    "uniform_time"  t uniform on [train_eps, T] (score_sde)
    "lognormal"     ln σ̃ ~ N(p_mean, p_std²)   (EDM: −1.2, 1.2)
    "logit_normal"  logit(t/T) ~ N(logit_mean, logit_std²)  (Esser et al. 2024, SD3: 0, 1)

``reduce`` sums or averages ℓ over the non-batch axes (score_sde's
``reduce_mean``); the batch is always averaged.  There is no ½ in front of the continuous
loss (eq. 7 of Song et al. 2021); the discrete SMLD loss keeps NCSN's ½.

Time-free objectives take ``score_fn(x)`` with x [B, ...] and sum over the non-batch axes.

Every option is a Python value checked here before anything is traced, so each function
can be called inside ``jax.jit`` and differentiated with ``jax.grad`` with respect to
parameters that ``score_fn`` closes over.

Gradient accumulation: the time-conditional losses take ``rows``, a function that picks a
micro-batch's rows out of any [B, ...] array.  The times, noise and weights are drawn for
the whole batch exactly as without it, then ``rows`` selects the micro-batch that the score
network sees, and the loss is that micro-batch's share of the batch mean (its sum divided
by B).  Summed over micro-batches that partition the batch, losses and gradients are the
full batch's.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp

from score_jax import sde as sde_lib
from score_jax.sde import _invert_increasing

Array = Any
ScoreFn = Callable[[Array, Array], Array]
StaticScoreFn = Callable[[Array], Array]

WEIGHTINGS = ("sigma2", "likelihood", "uniform", "min_snr", "p2", "edm", "velocity")
NOISE_DISTRIBUTIONS = ("uniform_time", "lognormal", "logit_normal")
REDUCTIONS = ("mean", "sum")
TIME_SAMPLINGS = ("uniform", "stratified", "antithetic")
ISM_ESTIMATORS = ("exact", "hutchinson")
PROJECTIONS = ("gaussian", "rademacher", "sphere")


# --- argument checks (Python, before tracing) ---------------------------------------------
def _check_choice(name: str, value: Any, choices: Sequence[str]) -> None:
  if value not in choices:
    raise ValueError(f"Unknown {name}={value!r}; choose one of {list(choices)}.")


def _check_positive_int(name: str, value: Any) -> None:
  if not isinstance(value, numbers.Integral) or isinstance(value, bool) or value < 1:
    raise ValueError(f"{name} must be an integer >= 1, got {value!r}.")


def _check_number(name: str, value: Any, lower: float, strict: bool) -> None:
  ok = isinstance(value, numbers.Real) and (value > lower if strict else value >= lower)
  if not ok:
    raise ValueError(f"{name} must be a number {'>' if strict else '>='} {lower}, got {value!r}.")


def _check_sde_kind(loss: str, sde: sde_lib.SDE, kinds: Sequence[str], other: str) -> None:
  name = getattr(sde, "name", type(sde).__name__)
  if name not in kinds:
    raise ValueError(f"{loss} needs an sde of kind {list(kinds)}, got {name!r}; use {other} instead.")


def _check_score_shape(score: Array, x: Array) -> None:
  if score.shape != x.shape:
    raise ValueError(f"score_fn must return an array shaped like x {x.shape}, got {score.shape}.")


def _reduce_dims(values: Array, reduce: str) -> Array:
  """[B, ...] -> [B], summing or averaging over the non-batch axes."""
  flat = values.reshape(values.shape[0], -1)
  return jnp.mean(flat, axis=-1) if reduce == "mean" else jnp.sum(flat, axis=-1)


# --- times ---------------------------------------------------------------------------------
def _uniforms(key: jax.Array, batch_size: int, time_sampling: str, dtype) -> Array:
  """[B] numbers in [0, 1), each marginally U(0, 1)."""
  if time_sampling == "uniform":
    return jax.random.uniform(key, (batch_size,), dtype)
  if time_sampling == "stratified":
    # Low-discrepancy sampler of Kingma et al. 2021 (VDM, appendix): one offset, B strata.
    u0 = jax.random.uniform(key, (), dtype)
    return jnp.mod(u0 + jnp.arange(batch_size, dtype=dtype) / batch_size, 1.0)
  # Antithetic pairs (u, 1 − u): the two halves of the batch mirror each other.
  u = jax.random.uniform(key, (batch_size // 2,), dtype)
  return jnp.concatenate([u, 1.0 - u])


def _check_time_sampling(time_sampling: str, batch_size: int) -> None:
  _check_choice("time_sampling", time_sampling, TIME_SAMPLINGS)
  if time_sampling == "antithetic" and batch_size % 2:
    raise ValueError(f"time_sampling='antithetic' pairs u with 1 - u and needs an even batch size, got {batch_size}.")


def _check_noise_distribution(noise_distribution: str, importance_sampling: bool, p_std: Any, logit_std: Any) -> None:
  _check_choice("noise_distribution", noise_distribution, NOISE_DISTRIBUTIONS)
  if importance_sampling and noise_distribution != "uniform_time":
    raise ValueError(f"importance_sampling=True draws t from g²/s² itself; it cannot be combined with "
                     f"noise_distribution={noise_distribution!r} (use 'uniform_time').")
  _check_number("p_std", p_std, 0.0, strict=True)
  _check_number("logit_std", logit_std, 0.0, strict=True)


def likelihood_is_normalizer(sde: sde_lib.SDE) -> Array:
  """Z = ∫ g(t)²/s(t)² dt over [train_eps, T], the normaliser of the importance density of t."""
  return sde.is_potential(jnp.float32(sde.T)) - sde.is_potential(jnp.float32(sde.train_eps))


def _truncated_inverse_cdf(u: Array, lo: Array, hi: Array, mean: float, std: float) -> Array:
  """Maps u ∈ [0, 1) to N(mean, std²) truncated to [lo, hi] by its inverse CDF."""
  cdf = lambda z: jax.scipy.special.ndtr((z - mean) / std)
  p = cdf(lo) + u * (cdf(hi) - cdf(lo))
  return jnp.clip(mean + std * jax.scipy.special.ndtri(p), lo, hi)


def _times_from_uniforms(sde: sde_lib.SDE, u: Array, noise_distribution: str, p_mean: float, p_std: float,
                         logit_mean: float, logit_std: float) -> Array:
  lo_t, hi_t = sde.train_eps, sde.T
  if noise_distribution == "uniform_time":
    return lo_t + (hi_t - lo_t) * u
  if noise_distribution == "lognormal":
    # EDM's training σ (Karras et al. 2022, sec. 5, "Loss weighting and sampling").
    with jax.ensure_compile_time_eval():
      lo, hi = (float(jnp.log(sde.noise_level(jnp.float32(v)))) for v in (lo_t, hi_t))
    sigma = jnp.exp(_truncated_inverse_cdf(u, lo, hi, p_mean, p_std))
    t = sde.time_from_noise_level(sigma)
  else:
    # SD3's logit-normal t (Esser et al. 2024, "Scaling Rectified Flow Transformers for
    # High-Resolution Image Synthesis").
    logit = lambda v: math.log(v / sde.T) - math.log1p(-v / sde.T)
    upper = logit(hi_t) if hi_t < sde.T else math.inf
    t = sde.T * jax.nn.sigmoid(_truncated_inverse_cdf(u, logit(lo_t), upper, logit_mean, logit_std))
  return jnp.clip(t, lo_t, hi_t)


def sample_times(
    key: jax.Array,
    sde: sde_lib.SDE,
    batch_size: int,
    *,
    time_sampling: str = "uniform",
    importance_sampling: bool = False,
    noise_distribution: str = "uniform_time",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    dtype=jnp.float32,
) -> Array:
  """Training times in [sde.train_eps, sde.T] (score_sde's ``eps``, 1e-5, also for VP / sub-VP,
  which sample only down to ``sde.eps`` = 1e-3).

  Args:
    key: PRNG key.
    sde: the SDE, whose ``train_eps`` and ``T`` bound the times.
    batch_size: number of times B.
    time_sampling: "uniform" (i.i.d.), "stratified" (u_i = (u_0 + i/B) mod 1) or
      "antithetic" (the second half of the batch is 1 − u of the first; B even).
    importance_sampling: draw t with density ∝ g(t)²/s(t)² instead of uniformly, by
      inverting the exact CDF (is_potential(t) − is_potential(train_eps))/Z.
    noise_distribution: one of NOISE_DISTRIBUTIONS (module docstring), the law that u is
      pushed through; "uniform_time" unless importance_sampling.
    p_mean, p_std: "lognormal"'s mean and std of ln σ̃.
    logit_mean, logit_std: "logit_normal"'s mean and std of logit(t/T).
    dtype: float dtype of the result.

  Returns:
    t: [B].
  """
  _check_time_sampling(time_sampling, batch_size)
  _check_noise_distribution(noise_distribution, importance_sampling, p_std, logit_std)
  u = _uniforms(key, batch_size, time_sampling, dtype)
  if not importance_sampling:
    return _times_from_uniforms(sde, u, noise_distribution, p_mean, p_std, logit_mean, logit_std).astype(dtype)
  # Importance sampling of t for likelihood weighting (Song et al. 2021b, sec. 5).
  lo = sde.is_potential(jnp.float32(sde.train_eps))
  target = lo + u * likelihood_is_normalizer(sde)
  return _invert_increasing(sde.is_potential, target, sde.train_eps, sde.T).astype(dtype)


# --- denoising score matching --------------------------------------------------------------
def dsm_weight(
    sde: sde_lib.SDE,
    t: Array,
    *,
    weighting: str = "sigma2",
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
    sigma_data: float = 0.5,
) -> Array:
  """The weight w(t) of the noise error ‖s·score + z‖² for a named weighting (table above).

  Args:
    sde: the SDE.
    t: times [B].
    weighting: one of WEIGHTINGS.
    min_snr_gamma: γ of min-SNR-γ.
    p2_k: k of P2.
    p2_gamma: γ of P2.
    sigma_data: σ_d of "edm".

  Returns:
    w: [B].
  """
  _check_choice("weighting", weighting, WEIGHTINGS)
  t = jnp.asarray(t)
  if weighting == "sigma2":
    return jnp.ones_like(t)
  if weighting == "edm":
    # EDM's λ(σ) = (σ² + σ_d²)/(σ σ_d)² of the denoiser error, times σ² (Karras et al. 2022, eq. 8).
    _check_number("sigma_data", sigma_data, 0.0, strict=True)
    return 1.0 + (sde.noise_level(t) / sigma_data) ** 2
  if weighting == "velocity":
    # ‖û − u‖² = ((m ṡ − s ṁ)/m)² ‖ε̂ − z‖² (module docstring).
    m, s = sde.mean_coeff(t), sde.marginal_std(t)
    return ((m * sde.marginal_std_derivative(t) - s * sde.mean_coeff_derivative(t)) / m) ** 2
  if weighting == "likelihood":
    return (sde.diffusion(t) / sde.marginal_std(t)) ** 2
  if weighting == "uniform":
    return sde.marginal_std(t) ** -2
  log_snr = sde.log_snr(t)
  if weighting == "min_snr":
    # Min-SNR-γ (Hang et al. 2023, eq. 11 for ε-prediction): min(SNR, γ)/SNR = min(1, γ/SNR).
    _check_number("min_snr_gamma", min_snr_gamma, 0.0, strict=True)
    return jnp.minimum(1.0, min_snr_gamma * jnp.exp(-log_snr))
  # P2 weighting (Choi et al. 2022, eq. 8): 1/(k + SNR)^γ, computed in log space.
  _check_number("p2_k", p2_k, 0.0, strict=False)
  _check_number("p2_gamma", p2_gamma, 0.0, strict=False)
  log_k = math.log(p2_k) if p2_k > 0 else -math.inf
  return jnp.exp(-p2_gamma * jnp.logaddexp(log_k, log_snr))


def _noise_errors(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, z: Array, reduce: str) -> Array:
  """ℓ = ‖s(t)·score_fn(x(t), t) + z‖² reduced over the non-batch axes: [B]."""
  x_t = sde.perturb(x, t, z)
  score = score_fn(x_t, t)
  _check_score_shape(score, x)
  return _reduce_dims(jnp.square(sde_lib.bcast(sde.marginal_std(t), x) * score + z), reduce)


def _batch_mean_of_errors(sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, t: Array, z: Array, w: Array, reduce: str,
                          rows: Callable[[Array], Array] | None) -> Array:
  """Mean over the batch of w·ℓ; with ``rows``, the selected rows' sum of w·ℓ divided by B."""
  if rows is None:
    return jnp.mean(w * _noise_errors(sde, score_fn, x, t, z, reduce))
  w = jnp.broadcast_to(w, t.shape)  # [B]
  return jnp.sum(rows(w) * _noise_errors(sde, score_fn, rows(x), rows(t), rows(z), reduce)) / x.shape[0]


def dsm_loss(
    key: jax.Array,
    sde: sde_lib.SDE,
    score_fn: ScoreFn,
    x: Array,
    *,
    weighting: str = "sigma2",
    reduce: str = "mean",
    time_sampling: str = "uniform",
    importance_sampling: bool = False,
    min_snr_gamma: float = 5.0,
    p2_k: float = 1.0,
    p2_gamma: float = 1.0,
    sigma_data: float = 0.5,
    noise_distribution: str = "uniform_time",
    p_mean: float = -1.2,
    p_std: float = 1.2,
    logit_mean: float = 0.0,
    logit_std: float = 1.0,
    rows: Callable[[Array], Array] | None = None,
) -> Array:
  """Continuous denoising score matching, mean over the batch of w(t)·ℓ(x, t, z).

  The key is split as ``k_t, k_z = jax.random.split(key)``: t = sample_times(k_t, ...),
  z = jax.random.normal(k_z, x.shape, x.dtype).

  Args:
    key: PRNG key.
    sde: the forward SDE.
    score_fn: score_fn(x_t [B, ...], t [B]) -> [B, ...].
    x: data [B, ...].
    weighting: one of WEIGHTINGS (module docstring).
    reduce: "mean" or "sum" over the non-batch axes.
    time_sampling: "uniform", "stratified" or "antithetic" (see ``sample_times``).
    importance_sampling: only with weighting="likelihood": draw t ∝ g²/s² and weight
      every example by Z/(T − train_eps), Z = ∫ g²/s² dt over [train_eps, T], an unbiased
      estimate of the same loss with less variance.
    min_snr_gamma: γ of the "min_snr" weighting.
    p2_k: k of the "p2" weighting.
    p2_gamma: γ of the "p2" weighting.
    sigma_data: σ_d of the "edm" weighting (and of the "edm" parametrization: give both the
      same value).
    noise_distribution, p_mean, p_std, logit_mean, logit_std: the law of the training noise
      levels (``sample_times``); EDM's recipe is weighting="edm" with "lognormal".
    rows: None, or a map [B, ...] -> [B', ...] picking one micro-batch (module docstring).

  Returns:
    The scalar loss (with ``rows``: the micro-batch's share of it).
  """
  # Denoising score matching over continuous time (Song et al. 2021, eq. 7; Vincent 2011).
  _check_choice("weighting", weighting, WEIGHTINGS)
  _check_choice("reduce", reduce, REDUCTIONS)
  _check_time_sampling(time_sampling, x.shape[0])
  if importance_sampling and weighting != "likelihood":
    raise ValueError(f"importance_sampling=True samples t for weighting='likelihood' only, got weighting={weighting!r}.")
  k_t, k_z = jax.random.split(key)
  t = sample_times(k_t, sde, x.shape[0], time_sampling=time_sampling, importance_sampling=importance_sampling,
                   noise_distribution=noise_distribution, p_mean=p_mean, p_std=p_std, logit_mean=logit_mean,
                   logit_std=logit_std, dtype=x.dtype)
  z = jax.random.normal(k_z, x.shape, x.dtype)
  if importance_sampling:
    w = likelihood_is_normalizer(sde) / (sde.T - sde.train_eps)
  else:
    w = dsm_weight(sde, t, weighting=weighting, min_snr_gamma=min_snr_gamma, p2_k=p2_k, p2_gamma=p2_gamma,
                   sigma_data=sigma_data)
  return _batch_mean_of_errors(sde, score_fn, x, t, z, w, reduce, rows)


# --- discrete-level losses ------------------------------------------------------------------
def _discrete_noise_error(key, sde, score_fn, x, num_scales, reduce, rows) -> Array:
  """Batch mean of ℓ at a level i ~ U{0, ..., N−1} per example, t_i = T (i + 1)/N."""
  _check_positive_int("num_scales", num_scales)
  _check_choice("reduce", reduce, REDUCTIONS)
  k_i, k_z = jax.random.split(key)
  level = jax.random.randint(k_i, (x.shape[0],), 0, num_scales)
  t = sde.T * (level + 1).astype(x.dtype) / num_scales
  z = jax.random.normal(k_z, x.shape, x.dtype)
  return _batch_mean_of_errors(sde, score_fn, x, t, z, jnp.ones_like(t), reduce, rows)


def smld_loss(
    key: jax.Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *, num_scales: int = 1000, reduce: str = "mean",
    rows: Callable[[Array], Array] | None = None,
) -> Array:
  """NCSN's loss over N noise levels, ½ E‖σ_i·score + z‖² (VE only).

  The key is split as ``k_i, k_z = jax.random.split(key)``: the level is
  jax.random.randint(k_i, (B,), 0, N), z = jax.random.normal(k_z, x.shape, x.dtype).

  Args:
    key: PRNG key.
    sde: a VE SDE; σ_i is its exact marginal std at t_i = T (i + 1)/N.
    score_fn: score_fn(x_t [B, ...], t [B]) -> [B, ...], called at t_i.
    x: data [B, ...].
    num_scales: number of noise levels N.
    reduce: "mean" or "sum" over the non-batch axes.
    rows: None, or a micro-batch selector as in ``dsm_loss``.

  Returns:
    The scalar loss.
  """
  # σ²-weighted denoising score matching over noise levels (Song & Ermon 2019, eq. 2 and 5).
  _check_sde_kind("smld_loss", sde, ("ve",), "ddpm_loss")
  return 0.5 * _discrete_noise_error(key, sde, score_fn, x, num_scales, reduce, rows)


def ddpm_loss(
    key: jax.Array, sde: sde_lib.SDE, score_fn: ScoreFn, x: Array, *, num_scales: int = 1000, reduce: str = "mean",
    rows: Callable[[Array], Array] | None = None,
) -> Array:
  """DDPM's simple loss E‖ε̂ − z‖² with ε̂ = −s(t_i)·score (VP and sub-VP).

  The key is split as in ``smld_loss``.

  Args:
    key: PRNG key.
    sde: a VP or sub-VP SDE, perturbed with its exact marginal at t_i = T (i + 1)/N.
    score_fn: score_fn(x_t [B, ...], t [B]) -> [B, ...], called at t_i.
    x: data [B, ...].
    num_scales: number of steps N.
    reduce: "mean" or "sum" over the non-batch axes.
    rows: None, or a micro-batch selector as in ``dsm_loss``.

  Returns:
    The scalar loss.
  """
  # ε-prediction loss L_simple (Ho et al. 2020, eq. 14).
  _check_sde_kind("ddpm_loss", sde, ("vp", "subvp"), "smld_loss")
  return _discrete_noise_error(key, sde, score_fn, x, num_scales, reduce, rows)


# --- noiseless objectives -------------------------------------------------------------------
def _projections(key: jax.Array, shape: tuple[int, ...], num: int, projection: str, dtype) -> Array:
  """[num, *shape] random directions v with E[v vᵀ] = I per example."""
  full = (num,) + tuple(shape)
  if projection == "rademacher":
    return jax.random.rademacher(key, full, dtype)
  v = jax.random.normal(key, full, dtype)
  if projection == "sphere":
    # Uniform on the sphere of radius √D in each example's D = prod(shape[1:]) dimensions.
    d = math.prod(shape[1:])
    norm = jnp.sqrt(jnp.sum(jnp.square(v.reshape(num, shape[0], -1)), axis=-1))
    v = v * sde_lib.bcast(math.sqrt(d) / norm, v)
  return v


def _basis_directions(x: Array) -> Array:
  """[D, *x.shape]: the d-th standard basis vector of every example's D dimensions."""
  d = math.prod(x.shape[1:])
  eye = jnp.eye(d, dtype=x.dtype)[:, None, :]  # [D, 1, D]
  return jnp.broadcast_to(eye, (d, x.shape[0], d)).reshape((d,) + x.shape)


def _score_and_quadratic_forms(score_fn: StaticScoreFn, x: Array, v: Array) -> tuple[Array, Array, Array]:
  """s(x) [B, ...], vᵀ∇s(x)v [M, B] and vᵀs(x) [M, B] for directions v [M, B, ...].

  One Jacobian-vector product per direction over the whole batch; this assumes, as any
  per-example score model does, that example b's score depends on x_b alone.
  """
  score, jv = jax.vmap(lambda u: jax.jvp(score_fn, (x,), (u,)), out_axes=(None, 0))(v)
  _check_score_shape(score, x)
  m, b = v.shape[:2]
  dot = lambda a, c: jnp.sum((a * c).reshape(m, b, -1), axis=-1)
  return score, dot(v, jv), dot(v, jnp.broadcast_to(score, v.shape))


def _half_sq_norm(score: Array) -> Array:
  return 0.5 * _reduce_dims(jnp.square(score), "sum")


def ism_loss(key: jax.Array, score_fn: StaticScoreFn, x: Array, *, estimator: str = "exact", num_probes: int = 1) -> Array:
  """Implicit score matching, mean over the batch of tr ∇s(x) + ½‖s(x)‖².

  Args:
    key: PRNG key (used by "hutchinson" only).
    score_fn: score_fn(x [B, ...]) -> [B, ...], with no time argument.
    x: data [B, ...].
    estimator: "exact" (the trace from D Jacobian-vector products, one per basis vector;
      for small D) or "hutchinson" (mean of vᵀ∇s v over ``num_probes`` Rademacher v).
    num_probes: number of Hutchinson probes per example.

  Returns:
    The scalar loss; it equals ½ E‖s − ∇log p‖² minus ½ E‖∇log p‖².
  """
  # Implicit score matching (Hyvärinen 2005, eq. 4); Hutchinson's trace estimator (1989).
  _check_choice("estimator", estimator, ISM_ESTIMATORS)
  _check_positive_int("num_probes", num_probes)
  if estimator == "exact":
    score, quad, _ = _score_and_quadratic_forms(score_fn, x, _basis_directions(x))
    trace = jnp.sum(quad, axis=0)
  else:
    v = _projections(key, x.shape, num_probes, "rademacher", x.dtype)
    score, quad, _ = _score_and_quadratic_forms(score_fn, x, v)
    trace = jnp.mean(quad, axis=0)
  return jnp.mean(trace + _half_sq_norm(score))


def ssm_loss(
    key: jax.Array,
    score_fn: StaticScoreFn,
    x: Array,
    *,
    variance_reduction: bool = False,
    num_projections: int = 1,
    projection: str = "gaussian",
) -> Array:
  """Sliced score matching, mean over the batch and projections v of
  vᵀ∇s(x)v + ½(vᵀs(x))², or with ``variance_reduction`` vᵀ∇s(x)v + ½‖s(x)‖² (SSM-VR).

  Args:
    key: PRNG key.
    score_fn: score_fn(x [B, ...]) -> [B, ...], with no time argument.
    x: data [B, ...].
    variance_reduction: replace ½(vᵀs)² by its expectation ½‖s‖².
    num_projections: number of projections v per example.
    projection: distribution of v: "gaussian", "rademacher" or "sphere" (uniform on the
      sphere of radius √D); each has E[v vᵀ] = I.

  Returns:
    The scalar loss; in expectation it equals ``ism_loss``.
  """
  # Sliced score matching (Song et al. 2019, eq. 7; SSM-VR, eq. 8).
  _check_choice("projection", projection, PROJECTIONS)
  _check_positive_int("num_projections", num_projections)
  v = _projections(key, x.shape, num_projections, projection, x.dtype)
  score, quad, proj = _score_and_quadratic_forms(score_fn, x, v)
  second = _half_sq_norm(score) if variance_reduction else jnp.mean(0.5 * jnp.square(proj), axis=0)
  return jnp.mean(jnp.mean(quad, axis=0) + second)
