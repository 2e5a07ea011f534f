"""KL analysis of VP samplers on Gaussian targets, after Strasman, Ocello, Boyer, Le Corff and
Lemaire, "An analysis of the noise schedule for score-based generative models" (TMLR 2025,
arXiv 2402.04650), cited below as [S25]; theorem and lemma numbers are those of its arXiv
version, and the three bound terms are those its authors' code evaluates (``upperbounds.py``).

The forward process of [S25] is a VP SDE with a stationary variance σ∞²,

    dX_t = −β(t)/(2σ∞²) X_t dt + √β(t) dB_t,        stationary law π∞ = N(0, σ∞² I),

which ``ScaledVPSDE`` implements on top of ``score_jax.sde.VPSDE`` (σ∞ = 1 is ``VPSDE``).
Two things are computed for a Gaussian target π_data = N(μ, Σ):

* ``kl_upper_bound``: the three terms of the KL bound of [S25, Theorem 3.1] — mixing,
  score approximation and discretization — each in closed form;
* ``exact_kl``: KL(π_data ‖ law of x_N) for what a sampler step (Euler–Maruyama, the
  exponential integrator, or any predictor of ``sampling.steps``) actually produces with the
  exact score, started from the prior.  Every step is affine in (x, z) and, in Σ's
  eigenbasis, acts on each coordinate separately (the SDE is isotropic and the exact score
  of a Gaussian is diagonal there), so the law of the chain is Gaussian and its mean and
  variance are propagated exactly — no Monte Carlo.  The affine map x ↦ A x + b + C z of
  each step is read off the real step function (evaluated at x, z ∈ {0, 1}), so the
  analysis checks the code people sample with.

[S25]'s bound is for an exponential integrator that freezes the score relative to π∞
(``relative_exponential_predictor``; its discretization term vanishes when π_data = π∞).
It does not hold for every target for Euler–Maruyama nor for ``sampling.exponential``'s
step, which freezes the full score: with π_data = π∞ the bound is 0 and both err (the
tests show it); on targets far from π∞ it holds for them too, with a wide margin.

Everything is a pure jnp function of arrays, with the SDE and step counts as static Python
values: it runs eagerly, under ``jit`` (SDE and step count static) and ``vmap`` over
targets.  The schedule parameter a lives in a frozen dataclass, so a sweep over a is a
Python loop; eagerly, JAX compiles each small kernel once per array shape, so such a sweep
costs compilations only for its first a.  Run under ``jax.enable_x64(True)`` for KL values
below ~1e-6, where float32 cancellation dominates.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any, Callable, NamedTuple, Union

import jax
import jax.numpy as jnp

from score_jax import sde as sde_lib
from score_jax.sampling import steps as steps_lib

Array = Any
StepFn = Callable[..., Any]


# --- the forward SDE of [S25] -------------------------------------------------------------

@dataclasses.dataclass(frozen=True)
class ScaledVPSDE(sde_lib.VPSDE):
  """VP SDE with stationary std σ∞, the forward process of [S25]: dx = −β(t)/(2σ∞²) x dt + √β(t) dw.

  x = σ∞ y where y follows ``VPSDE`` with the rate β(t)/σ∞², so this class reuses VPSDE's
  formulas: ``beta`` / ``beta_integral`` return that rescaled rate β/σ∞² and its integral
  B/σ∞², and the diffusion, marginal std, transition variance and prior std are VPSDE's
  times σ∞ (σ∞² for the variance).  ``schedule`` holds the paper's β(t) itself.
  Mean coefficient e^{−B/(2σ∞²)}, marginal std σ∞(1 − e^{−B/σ∞²})^{1/2}, prior N(0, σ∞² I).
  """

  sigma_inf: float = 1.0

  def __post_init__(self):
    if not (isinstance(self.sigma_inf, (int, float)) and math.isfinite(self.sigma_inf) and self.sigma_inf > 0):
      raise ValueError(f"ScaledVPSDE.sigma_inf must be a finite number > 0, got {self.sigma_inf!r}.")
    super().__post_init__()

  def beta(self, t: Array) -> Array:
    return self.schedule.beta(t) / self.sigma_inf**2

  def beta_integral(self, t: Array) -> Array:
    return self.schedule.integral(t) / self.sigma_inf**2

  def diffusion(self, t):
    return self.sigma_inf * super().diffusion(t)

  def marginal_std(self, t):
    return self.sigma_inf * super().marginal_std(t)

  def transition_coeffs(self, t_from, t_to):
    a, q = super().transition_coeffs(t_from, t_to)
    return a, self.sigma_inf**2 * q

  @property
  def prior_std(self) -> float:
    return self.sigma_inf


def sigma_inf(sde: sde_lib.SDE) -> float:
  """σ∞ of a VP-type SDE: ``ScaledVPSDE.sigma_inf``, 1 for ``VPSDE``; ValueError otherwise."""
  if isinstance(sde, ScaledVPSDE):
    return float(sde.sigma_inf)
  if isinstance(sde, sde_lib.VPSDE):
    return 1.0
  raise ValueError(f"The KL analysis of [S25] is for VP SDEs (VPSDE or ScaledVPSDE), got {type(sde).__name__}.")


def _paper_beta(sde: sde_lib.SDE, t: Array) -> Array:
  """β(t) of [S25] (the rate in front of the noise, not divided by σ∞²)."""
  sigma_inf(sde)
  return sde.schedule.beta(t)


def _paper_integral(sde: sde_lib.SDE, t: Array) -> Array:
  """∫₀ᵗ β(s) ds of [S25]."""
  sigma_inf(sde)
  return sde.schedule.integral(t)


# --- Gaussian KL ---------------------------------------------------------------------------

def gaussian_kl(mean0: Array, cov0: Array, mean1: Array, cov1: Array) -> Array:
  """KL(N(mean0, cov0) ‖ N(mean1, cov1)) for full covariances.

  Args:
    mean0, mean1: [..., D] means.
    cov0, cov1: [..., D, D] symmetric positive-definite covariances.

  Returns:
    [...] the divergence, in nats.
  """
  l0 = jnp.linalg.cholesky(cov0)  # [..., D, D]
  l1 = jnp.linalg.cholesky(cov1)
  d = mean0.shape[-1]
  # Textbook formula: ½[tr(Σ1⁻¹Σ0) + δᵀΣ1⁻¹δ − D + log det Σ1 − log det Σ0], δ = μ1 − μ0, with
  # tr(Σ1⁻¹Σ0) = ‖L1⁻¹L0‖²_F and δᵀΣ1⁻¹δ = ‖L1⁻¹δ‖² from the Cholesky factors.
  m = jax.scipy.linalg.solve_triangular(l1, l0, lower=True)  # [..., D, D]
  w = jax.scipy.linalg.solve_triangular(l1, (mean1 - mean0)[..., None], lower=True)[..., 0]  # [..., D]
  diag0 = jnp.diagonal(l0, axis1=-2, axis2=-1)  # [..., D]
  diag1 = jnp.diagonal(l1, axis1=-2, axis2=-1)
  logdet = 2.0 * jnp.sum(jnp.log(diag1) - jnp.log(diag0), axis=-1)
  return 0.5 * (jnp.sum(m**2, axis=(-2, -1)) + jnp.sum(w**2, axis=-1) - d + logdet)


def gaussian_kl_diag(mean0: Array, var0: Array, mean1: Array, var1: Array) -> Array:
  """KL(N(mean0, diag var0) ‖ N(mean1, diag var1)), summed over the last axis.

  The fast path for Gaussians that share an eigenbasis (write both in it first).

  Args:
    mean0, var0, mean1, var1: [..., D] (broadcastable); variances > 0.

  Returns:
    [...] the divergence, in nats.
  """
  # Per coordinate ½[r − 1 − log r + (μ1 − μ0)²/v1] with r = v0/v1, written with r − 1 = (v0 − v1)/v1
  # and log1p so that it keeps its precision when r ≈ 1 (small KL).
  d = (var0 - var1) / var1
  return 0.5 * jnp.sum(d - jnp.log1p(d) + (mean1 - mean0) ** 2 / var1, axis=-1)


def eigenbasis(mean: Array, cov: Array) -> tuple[Array, Array, Array]:
  """Σ = U diag(λ) Uᵀ: returns (ν = Uᵀμ [D], λ [D], U [D, D]); x ↦ Uᵀx maps N(μ, Σ) to N(ν, diag λ)."""
  lam, u = jnp.linalg.eigh(cov)
  return u.T @ mean, lam, u


# --- closed-form quantities of the Gaussian target ------------------------------------------

def gaussian_score_fn(sde: sde_lib.SDE, mean: Array, var: Array) -> Callable[[Array, Array], Array]:
  """The exact score of p_t for a target N(mean, diag var) under any linear ``sde``.

  [S25, Lemma E.1]: p_t = N(m(t) μ, m(t)² Σ + s(t)² I), so ∇log p_t(x) = −(x − m μ)/(m² λ + s²)
  per coordinate of the eigenbasis.

  Args:
    mean, var: [D] the target's mean and variances in a basis where its covariance is diagonal.

  Returns:
    ``score_fn(x [B, D], t [B]) -> [B, D]``.
  """

  def score_fn(x: Array, t: Array) -> Array:
    m = sde_lib.bcast(sde.mean_coeff(t), x)
    s = sde_lib.bcast(sde.marginal_std(t), x)
    return -(x - m * mean) / (m * m * var + s * s)

  return score_fn


def relative_fisher_information(mean: Array, cov: Array, sigma_inf: float = 1.0) -> Array:
  """I(π_data | π∞) = E‖∇log(π_data/π∞)‖² for π_data = N(μ, Σ), π∞ = N(0, σ∞² I) ([S25, Lemma E.4]).

  Args:
    mean: [D]; cov: [D, D].

  Returns:
    [] the relative Fisher information.
  """
  nu, lam, _ = eigenbasis(mean, cov)
  # [S25, Lemma E.4]: tr Σ/σ∞⁴ − 2D/σ∞² + tr Σ⁻¹ + ‖μ‖²/σ∞⁴, written per eigenvalue as (λ − σ∞²)²/(σ∞⁴ λ) ≥ 0.
  s2 = sigma_inf**2
  return jnp.sum((lam - s2) ** 2 / (s2 * s2 * lam)) + jnp.sum(nu**2) / (s2 * s2)


def forward_prior_kl(sde: sde_lib.SDE, mean: Array, cov: Array) -> Array:
  """The exact KL(p_T ‖ π∞) between the forward marginal at T and the prior (not part of the
  bound: its mixing term is the upper bound KL(π_data ‖ π∞) e^{−B(T)/σ∞²} of this)."""
  nu, lam, _ = eigenbasis(mean, cov)
  t = jnp.asarray(sde.T)
  m, s = sde.mean_coeff(t), sde.marginal_std(t)
  return gaussian_kl_diag(m * nu, m * m * lam + s * s, 0.0, jnp.asarray(sde.prior_std) ** 2)


# --- the KL upper bound of [S25, Theorem 3.1] -------------------------------------------------

class KLBound(NamedTuple):
  """The terms of [S25, Theorem 3.1]; ``total`` is their sum, an upper bound on KL(π_data ‖ π̂)."""

  mixing: Array
  approximation: Array
  discretization: Array
  total: Array


def mixing_term(sde: sde_lib.SDE, mean: Array, cov: Array) -> Array:
  """E1 = KL(π_data ‖ π∞) exp(−σ∞⁻² ∫₀ᵀ β(s) ds)  ([S25, Theorem 3.1], first term).

  The forward process contracts KL to π∞ at rate β(t)/σ∞² (π∞ = N(0, σ∞² I) satisfies a
  log-Sobolev inequality with constant σ∞²), so this bounds KL(p_T ‖ π∞) (``forward_prior_kl``).

  Args:
    sde: ``VPSDE`` or ``ScaledVPSDE``.
    mean: [D]; cov: [D, D] of π_data.

  Returns:
    [] the mixing term.
  """
  s = sigma_inf(sde)
  nu, lam, _ = eigenbasis(mean, cov)
  kl0 = gaussian_kl_diag(nu, lam, 0.0, s * s)
  # [S25, Thm 3.1]: E1 = KL(π_data‖π∞) · exp(−(1/σ∞²) ∫₀ᵀ β).
  return kl0 * jnp.exp(-_paper_integral(sde, jnp.asarray(sde.T)) / s**2)


def approximation_term(sde: sde_lib.SDE, num_steps: int, eps2: Union[float, Array] = 0.0) -> Array:
  """E2 = Σ_k ε_k² ∫_{T−t_{k+1}}^{T−t_k} β(s) ds  ([S25, Theorem 3.1], second term).

  ε_k² = E‖s_θ(T − t_k, X̄_{t_k}) − ∇log p_{T−t_k}(X̄_{t_k})‖² is the mean squared score error at
  the start of reverse step k (forward time T − t_k), under the true reverse process.  With
  one ε² bounding every ε_k² (assumption H2 of [S25]) the term is ε² ∫₀ᵀ β.  Zero for the
  exact score.

  Args:
    sde: ``VPSDE`` or ``ScaledVPSDE``.
    num_steps: N, uniform steps h = T/N from T to 0.
    eps2: [] one bound ε² for all steps, or [N] per-step ε_k², k = 0 at time T.

  Returns:
    [] the approximation term.
  """
  ts = jnp.linspace(sde.T, 0.0, num_steps + 1)
  db = _paper_integral(sde, ts[:-1]) - _paper_integral(sde, ts[1:])  # [N] ∫β over each step
  eps2 = jnp.broadcast_to(jnp.asarray(eps2, db.dtype), db.shape)
  # [S25, Thm 3.1]: E2 = Σ_k ε_k² ∫_{T−t_{k+1}}^{T−t_k} β(s) ds.
  return jnp.sum(eps2 * db)


def discretization_term(sde: sde_lib.SDE, mean: Array, cov: Array, num_steps: int) -> Array:
  """E3 = 2 h β(T) max{h β(T)/(4σ∞²), 1} I(π_data | π∞)  ([S25, Theorem 3.1], third term).

  h = T/N is the uniform step and β(T) = max β (the schedules of ``score_jax.schedules``,
  the β_a family included, are non-decreasing).  It bounds the error of freezing the score
  *relative to π∞* over a step (``relative_exponential_predictor``); it vanishes when
  π_data = π∞, where Euler–Maruyama and the full-score exponential integrator still err.

  Args:
    sde: ``VPSDE`` or ``ScaledVPSDE``.
    mean: [D]; cov: [D, D] of π_data.
    num_steps: N.

  Returns:
    [] the discretization term.
  """
  s = sigma_inf(sde)
  h = sde.T / num_steps
  hb = h * _paper_beta(sde, jnp.asarray(sde.T))
  # [S25, Thm 3.1]: E3 = 2 h β(T) max(h β(T)/(4σ∞²), 1) I(π_data | π∞).
  return 2.0 * hb * jnp.maximum(hb / (4.0 * s * s), 1.0) * relative_fisher_information(mean, cov, s)


def kl_upper_bound(sde: sde_lib.SDE, mean: Array, cov: Array, num_steps: int,
                   eps2: Union[float, Array] = 0.0) -> KLBound:
  """The KL upper bound of [S25, Theorem 3.1] for a Gaussian target π_data = N(μ, Σ):

      KL(π_data ‖ π̂_N) ≤ E1 (mixing) + E2 (approximation) + E3 (discretization),

  π̂_N being the law of N uniform steps of the theorem's exponential integrator
  (``relative_exponential_predictor``, method "exponential_relative") from π∞ at T down to 0.

  Args:
    sde: ``VPSDE`` (σ∞ = 1) or ``ScaledVPSDE``, with any non-decreasing schedule.
    mean: [D]; cov: [D, D] of π_data.
    num_steps: N.
    eps2: the score error, [] or [N] (see ``approximation_term``); 0 for the exact score.

  Returns:
    ``KLBound(mixing, approximation, discretization, total)``, each [].
  """
  e1 = mixing_term(sde, mean, cov)
  e2 = approximation_term(sde, num_steps, eps2)
  e3 = discretization_term(sde, mean, cov, num_steps)
  return KLBound(e1, e2, e3, e1 + e2 + e3)


# --- the exact law of a sampler on a Gaussian target -----------------------------------------

def exponential_predictor(sde: sde_lib.SDE, score_fn: Callable[[Array, Array], Array], x: Array, t: Array,
                          t_next: Array, z: Array) -> tuple[Array, Array]:
  """``sampling.exponential.exponential_step`` as a predictor ``(sde, score_fn, x, t, t_next, z)``:
  the reverse drift's linear part +β/(2σ∞²) x integrated exactly, the full score frozen over
  the step — the sampler of [S25]'s code (not the scheme of its theorem, see
  ``relative_exponential_predictor``).

  That step's coefficients are those of σ∞ = 1; for ``ScaledVPSDE`` it is applied to
  y = x/σ∞, which follows the σ∞ = 1 process with the same ``beta_integral`` and has score
  σ∞ ∇log p_t(x), and the result is scaled back: with Δ = ∫_{t'}^{t} β/(2σ∞²),
  x' = e^{Δ} x + 2σ∞²(e^{Δ} − 1) s + σ∞(e^{2Δ} − 1)^{1/2} z.
  """
  from score_jax.sampling.exponential import exponential_step  # pylint: disable=g-import-not-at-top

  s = sigma_inf(sde)
  if s == 1.0:
    return exponential_step(sde, score_fn(x, t), x, t, t_next, z)
  y, y_mean = exponential_step(sde, s * score_fn(x, t), x / s, t, t_next, z)
  return s * y, s * y_mean


def relative_exponential_predictor(sde: sde_lib.SDE, score_fn: Callable[[Array, Array], Array], x: Array,
                                   t: Array, t_next: Array, z: Array) -> tuple[Array, Array]:
  """The exponential integrator of [S25]'s KL theorem: the score relative to π∞ is frozen.

  With ∇log(p_t/π∞)(x) = ∇log p_t(x) + x/σ∞², the reverse SDE is an OU process toward π∞
  plus β times that relative score.  Its OU part is integrated exactly and the relative
  score s̃ is frozen at (x_t, t) (the discretization of Conforti et al. 2023 that [S25]
  extends to time-varying β); over t → t' < t, with Δ = ∫_{t'}^{t} β/(2σ∞²),

      x' = e^{−Δ} x + 2σ∞²(1 − e^{−Δ}) s̃ + σ∞(1 − e^{−2Δ})^{1/2} z,

  which is a x + 2σ∞²(1 − a) s̃ + √q z with (a, q) = ``sde.transition_coeffs(t', t)``.
  For π_data = π∞ it is exact.  ``exponential_predictor`` (the library's step, and the
  sampler of [S25]'s code) freezes the full score instead and expands by e^{+Δ}.
  """
  s2 = sigma_inf(sde) ** 2
  a, q = sde.transition_coeffs(t_next, t)
  relative_score = score_fn(x, t) + x / s2
  # [S25] backward scheme: x' = e^{−Δ} x + 2σ∞²(1 − e^{−Δ}) ∇log(p_t/π∞)(x) + σ∞(1 − e^{−2Δ})^{1/2} z.
  x_mean = sde_lib.bcast(a, x) * x + sde_lib.bcast(2.0 * s2 * (1.0 - a), x) * relative_score
  return x_mean + sde_lib.bcast(jnp.sqrt(q), x) * z, x_mean


STEPS: dict[str, StepFn] = {
    "euler_maruyama": steps_lib.euler_maruyama,
    "exponential": exponential_predictor,
    "exponential_relative": relative_exponential_predictor,
    "reverse_diffusion": steps_lib.reverse_diffusion,
    "ancestral": steps_lib.ancestral,
}


def predictor(method: Union[str, StepFn]) -> StepFn:
  """The step function ``step(sde, score_fn, x, t, t_next, z) -> (x, x_mean)`` for ``method``,
  a name in ``STEPS`` or a step function itself:

  * "euler_maruyama", "reverse_diffusion", "ancestral": ``sampling.steps``' predictors;
  * "exponential": ``exponential_predictor`` (``sampling.exponential.exponential_step``);
  * "exponential_relative": ``relative_exponential_predictor``, the scheme of [S25]'s theorem.
  """
  if callable(method):
    return method
  if method in STEPS:
    return STEPS[method]
  choices = sorted(STEPS)
  raise ValueError(f"Unknown sampler step {method!r}; choose one of {choices} or pass a step function.")


def time_grid(T: float, num_steps: int, t_end: float = 0.0) -> Array:
  """N + 1 equally spaced times from T down to ``t_end`` ([S25] uses t_end = 0, h = T/N)."""
  return jnp.linspace(T, t_end, num_steps + 1)


def step_affine_coeffs(step: StepFn, sde: sde_lib.SDE, score_fn: Callable[[Array, Array], Array], ts: Array,
                       dim: int, dtype=None) -> tuple[Array, Array, Array]:
  """The affine map of every step of a coordinate-wise linear chain, read off the step itself.

  For a step that is affine in (x, z) and acts on each coordinate separately (any predictor
  of ``sampling.steps`` and the exponential integrator, with an isotropic SDE and a diagonal
  affine score), step(x, t_k, t_{k+1}, z) = A_k ⊙ x + b_k + C_k ⊙ z, so
  b = step(0, 0), A = step(1, 0) − b and C = step(0, 1) − b.  All 3N evaluations run as one
  call of the step, on the batch axis (each row with its own t and t_next).

  Args:
    step: ``step(sde, score_fn, x, t, t_next, z) -> (x_next, x_mean)``.
    sde, score_fn: as the sampler gets them.
    ts: [N + 1] the time grid, decreasing.
    dim: D.
    dtype: of x and z (default: ts's dtype).

  Returns:
    (A, b, C), each [N, D].
  """
  n = ts.shape[0] - 1
  dtype = dtype or ts.dtype
  zeros = jnp.zeros((n, dim), dtype)
  ones = jnp.ones((n, dim), dtype)
  x = jnp.concatenate([zeros, ones, zeros])  # [3N, D]: b, A + b, C + b
  z = jnp.concatenate([zeros, zeros, ones])
  t, t_next = jnp.tile(ts[:-1], 3), jnp.tile(ts[1:], 3)
  out = step(sde, score_fn, x, t, t_next, z)[0]
  b, a_plus_b, c_plus_b = out[:n], out[n:2 * n], out[2 * n:]
  return a_plus_b - b, b, c_plus_b - b


def propagate(a: Array, b: Array, c: Array, mean0: Array, var0: Array) -> tuple[Array, Array]:
  """Mean and variance of x_N for x_{k+1} = A_k x_k + b_k + C_k z_k, z_k ~ N(0, I) independent.

  Unrolled with the suffix products P_k = Π_{j>k} A_j and P = Π_j A_j (no sequential loop):
  E x_N = P E x_0 + Σ_k P_k b_k and Var x_N = P² Var x_0 + Σ_k P_k² C_k².

  Args:
    a, b, c: [N, D] per-step coefficients; mean0, var0: [D] (broadcastable) law of x_0.

  Returns:
    (mean [D], var [D]).
  """
  suffix = jnp.cumprod(a[::-1], axis=0)[::-1]  # [N, D]: Π_{j≥k} A_j
  after = jnp.concatenate([suffix[1:], jnp.ones_like(a[:1])])  # [N, D]: P_k = Π_{j>k} A_j
  # Linear-Gaussian recursion E x' = A E x + b, Var x' = A² Var x + C², unrolled.
  mean = suffix[0] * mean0 + jnp.sum(after * b, axis=0)
  var = suffix[0] ** 2 * var0 + jnp.sum((after * c) ** 2, axis=0)
  return mean, var


def sampler_law_eigen(sde: sde_lib.SDE, mean: Array, cov: Array, num_steps: int,
                      method: Union[str, StepFn] = "euler_maruyama", t_end: float = 0.0) -> tuple[Array, Array]:
  """The exact law N(m, diag v) of x_N in Σ's eigenbasis (see ``sampler_law``)."""
  nu, lam, _ = eigenbasis(mean, cov)
  ts = time_grid(sde.T, num_steps, t_end).astype(lam.dtype)
  a, b, c = step_affine_coeffs(predictor(method), sde, gaussian_score_fn(sde, nu, lam), ts, lam.shape[-1])
  return propagate(a, b, c, 0.0, jnp.asarray(sde.prior_std, lam.dtype) ** 2)


def sampler_law(sde: sde_lib.SDE, mean: Array, cov: Array, num_steps: int,
                method: Union[str, StepFn] = "euler_maruyama", t_end: float = 0.0) -> tuple[Array, Array]:
  """The exact law of N sampler steps with the exact score for a Gaussian target, from the prior.

  x_0 ~ N(0, prior_std² I) at time T, then N steps of ``method`` on the uniform grid from T
  to ``t_end`` with the exact score of N(μ, Σ)'s forward marginals; no denoising step.

  Args:
    sde: a linear SDE (``ScaledVPSDE`` / ``VPSDE`` for [S25]; any SDE works).
    mean: [D]; cov: [D, D] of the target.
    num_steps: N.
    method: see ``predictor``.
    t_end: last time of the grid; 0 as in [S25], ``sde.eps`` as ``sampling.sample`` does.

  Returns:
    (mean [D], cov [D, D]) of x_N.
  """
  m, v = sampler_law_eigen(sde, mean, cov, num_steps, method, t_end)
  _, _, u = eigenbasis(mean, cov)
  return u @ m, (u * v) @ u.T


def exact_kl(sde: sde_lib.SDE, mean: Array, cov: Array, num_steps: int,
             method: Union[str, StepFn] = "euler_maruyama", t_end: float = 0.0) -> Array:
  """KL(π_data ‖ law of x_N), exactly, for the chain of ``sampler_law`` (the direction of [S25]).

  Args:
    as ``sampler_law``.

  Returns:
    [] the divergence, in nats.
  """
  nu, lam, _ = eigenbasis(mean, cov)
  m, v = sampler_law_eigen(sde, mean, cov, num_steps, method, t_end)
  return gaussian_kl_diag(nu, lam, m, v)
