"""Samplers for score-based models, all behind one entry point::

    x, nfe = sampling.sample(key, sde, score_fn, shape=(n, d), method="pc",
                             predictor="reverse_diffusion", corrector="langevin", snr=0.16)

Each method runs its whole trajectory as one compiled call (``lax.scan`` / ``fori_loop`` /
a diffrax loop), draws the noise of sample i from ``fold_in(key, i)``, and returns the
samples with the number of score evaluations per sample (NFE).  Options are checked, and
``score_fn``'s output shape compared with x's, before anything compiles; a bad value is a
``ValueError`` naming the option.

The compiled sampler is cached on (sde, score_fn, shape, method, options): pass the same
``score_fn`` object to reuse it.  To sample from a network whose parameters change, jit a
function of the parameters that builds ``score_fn`` inside and calls ``sample``.

Methods and their options (defaults in ``METHODS[name].defaults``; the module of each
documents them):

* ``pc``          predictor ∈ PREDICTORS, corrector ∈ CORRECTORS, snr, n_steps (corrector
                  steps per level), num_steps, denoise                      (``pc.py``)
* ``ode``         probability-flow ODE: solver ∈ {tsit5, dopri5, heun, euler}, rtol, atol,
                  num_steps and shift (heun, euler), max_steps, pcoeff/icoeff/dcoeff, denoise (``ode.py``)
* ``ald``         NCSN annealed Langevin: num_steps (levels), n_steps_each, step_size
* ``langevin``    Langevin dynamics at a fixed time: num_steps, step_size, t (``langevin.py``)
* ``adaptive``    Gotta Go Fast adaptive SDE solver: rel_tol, abs_tol, data_range, h_init,
                  safety, exponent, norm, extrapolation, noise, ...       (``adaptive.py``)
* ``edm``         EDM Heun with stochastic churn: num_steps, rho, sigma_min, sigma_max,
                  s_churn, s_min, s_max, s_noise                          (``edm.py``)
* ``dpm_solver``  DPM-Solver++: order ∈ {1, 2, 3}, variant ∈ {multistep, singlestep},
                  num_steps (NFE budget), skip_type, lower_order_final (VP / sub-VP)
* ``ddim``        DDIM: eta, num_steps, skip_type (VP / sub-VP)           (``dpm_solver.py``)
* ``exponential`` exponential integrator of the reverse SDE: num_steps, skip_type
                  (VP / sub-VP)                                          (``exponential.py``)
* ``consistency`` a consistency model in 1 … k evaluations: num_steps, sigmas, rho,
                  sigma_min, sigma_max                                    (``consistency.py``)
* ``smc``         sequential Monte Carlo for a linear observation (``constraint=`` an
                  ``constraints.Observation``): particles, num_steps, ess_threshold,
                  guidance_scale, data_variance; ``sampling.run_smc`` returns the particles,
                  weights and ESS trace as well                           (``smc.py``)

Inpainting and colorization are an option of the samplers, ``constraint=`` a
``constraints.Replacement`` (known coordinates re-imposed after every step, optionally with
RePaint resampling): pc, ald, langevin, edm, consistency, dpm_solver, ddim, exponential, ode with
solver="heun" and adaptive (on accepted steps) take it; the adaptive ODE solvers reject it.
``constraints.Posterior`` adds posterior guidance of the score, built from the same traced arrays.
"""

from __future__ import annotations

import functools
import weakref
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp

from score_jax.sampling import constraints, steps
from score_jax.sampling.adaptive import ADAPTIVE_METHOD
from score_jax.sampling.consistency import CONSISTENCY_METHOD
from score_jax.sampling.dpm_solver import DDIM_METHOD, DPM_SOLVER_METHOD
from score_jax.sampling.edm import EDM_METHOD
from score_jax.sampling.exponential import EXPONENTIAL_METHOD
from score_jax.sampling.langevin import ALD_METHOD, LANGEVIN_METHOD
from score_jax.sampling.ode import ODE_METHOD, SOLVERS
from score_jax.sampling.options import Method, require as _require
from score_jax.sampling.pc import PC_METHOD
from score_jax.sampling import smc as smc_lib
from score_jax.sampling.smc import SMC_METHOD, SMCResult
from score_jax.sampling.steps import CORRECTORS, PREDICTORS
from score_jax.sde import SDE, ScoreFn

Array = Any


METHODS: dict[str, Method] = {
    "pc": PC_METHOD,
    "ode": ODE_METHOD,
    "ald": ALD_METHOD,
    "langevin": LANGEVIN_METHOD,
    "edm": EDM_METHOD,
    "adaptive": ADAPTIVE_METHOD,
    "dpm_solver": DPM_SOLVER_METHOD,
    "ddim": DDIM_METHOD,
    "exponential": EXPONENTIAL_METHOD,
    "consistency": CONSISTENCY_METHOD,
    "smc": SMC_METHOD,
}


def resolve_options(sde: SDE, method: str, options: Mapping[str, Any]) -> dict[str, Any]:
  """Fills in defaults and checks ``options`` for ``method``; raises ValueError on bad input."""
  _require(method in METHODS, f"Unknown sampling method {method!r}; choose one of {sorted(METHODS)}.")
  spec = METHODS[method]
  unknown = set(options) - set(spec.defaults)
  _require(not unknown, f"sampling method {method!r} has no option(s) {sorted(unknown)}; "
           f"it takes {sorted(spec.defaults)}.")
  # Lists (a config read back from JSON) become tuples: options are static, hashed arguments.
  opts = {name: tuple(v) if isinstance(v, list) else v for name, v in {**spec.defaults, **options}.items()}
  spec.check(sde, opts)
  return opts


# Shapes each score_fn has passed the check for.  Weak keys: the cache must not keep a
# closure (and the parameters or tracers it holds) alive.
_CHECKED: "weakref.WeakKeyDictionary[Callable, set]" = weakref.WeakKeyDictionary()


def _check_score_fn(score_fn: ScoreFn, shape: tuple[int, ...]) -> None:
  try:
    if shape in _CHECKED.get(score_fn, ()):
      return
  except TypeError:  # not weak-referenceable: check every time
    pass
  x = jax.ShapeDtypeStruct(shape, jnp.float32)
  t = jax.ShapeDtypeStruct(shape[:1], jnp.float32)
  try:
    out = jax.eval_shape(score_fn, x, t)
  except Exception as e:  # pylint: disable=broad-except
    raise ValueError(f"score_fn(x, t) failed for x of shape {shape} and t of shape {shape[:1]}: {e}") from e
  out_shape = getattr(out, "shape", None)
  _require(out_shape == shape,
           f"score_fn must return the score with x's shape {shape}, but returned {out_shape}.")
  try:
    _CHECKED.setdefault(score_fn, set()).add(shape)
  except TypeError:
    pass


@functools.partial(jax.jit, static_argnames=("sde", "score_fn", "shape", "method", "options"))
def _sample_compiled(key, constraint, sde, score_fn, shape, method, options):
  extra = {} if constraint is None else {"constraint": constraint}
  score_fn = constraints.guide(constraint, score_fn, sde)  # posterior guidance from the traced observation
  return METHODS[method].run(key, sde, score_fn, shape, **dict(options), **extra)


def check_constraint(sde: SDE, shape: tuple[int, ...], method: str, opts: Mapping[str, Any],
                     constraint: constraints.Constraint) -> None:
  """Raises ValueError unless ``method`` (with resolved ``opts``) can impose ``constraint``."""
  if constraint is None:
    _require(method != "smc", "sampling method 'smc' needs the observation: constraint=constraints.Observation(...).")
    return
  _require(isinstance(constraint, constraints.Observation),
           f"constraint must be a sampling.constraints.Replacement, Posterior or Observation, or None, got "
           f"{type(constraint).__name__}.")
  _require(method == "smc" or isinstance(constraint, constraints.Replacement),
           f"constraint: a plain constraints.Observation is for method 'smc'; for {method!r} pass "
           "constraints.Replacement.of(observation) (or Posterior.of).")
  constraint.check(shape)
  spec = METHODS[method]
  _require(spec.check_constraint is not None,
           f"sampling method {method!r} cannot impose known coordinates (constraint); use one of "
           f"{sorted(m for m, s in METHODS.items() if s.check_constraint is not None)}.")
  spec.check_constraint(sde, opts, constraint)


def _static_args(sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], method: str,
                 options: Mapping[str, Any], constraint: constraints.Constraint = None) -> dict[str, Any]:
  """Checks everything that can be checked before compiling; returns the static arguments."""
  _require(isinstance(sde, SDE), f"sde must be an SDE from score_jax.sde, got {type(sde).__name__}.")
  _require(callable(score_fn), "score_fn must be callable as score_fn(x, t).")
  shape = tuple(shape)
  _require(len(shape) >= 2 and all(isinstance(s, int) and s > 0 for s in shape),
           f"shape must be (batch, *event) with positive integers, got {shape}.")
  opts = resolve_options(sde, method, options)
  check_constraint(sde, shape, method, opts, constraint)
  _check_score_fn(score_fn, shape)
  return dict(sde=sde, score_fn=score_fn, shape=shape, method=method, options=tuple(sorted(opts.items())))


def sample(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], method: str = "pc", *,
           constraint: constraints.Constraint = None, **options) -> tuple[Array, Any]:
  """Draws samples of ``shape`` [B, ...] from the model defined by ``sde`` and ``score_fn``.

  Args:
    key: a PRNG key, sample i using fold_in(key, i); or keys [B], one per sample (to draw
      a large set in chunks with each sample's key fixed by its index in the set).
    sde: the forward SDE (``score_jax.sde``).
    score_fn: ``score_fn(x [B, ...], t [B]) -> [B, ...]``, the score ∇log p_t(x).
    shape: the batch shape, batch first.
    method: one of ``METHODS``.
    constraint: None, or known coordinates to impose after every step (inpainting,
      colorization): a ``constraints.Replacement``, or a ``constraints.Posterior`` (posterior
      guidance of the score, with or without replacement); see ``sampling/constraints.py``.
      Its arrays are traced, so new values or masks of the same shapes reuse the compiled sampler.
    **options: the method's options (see the module docstring).

  Returns:
    (samples [shape], nfe): nfe is the number of score evaluations per sample.
  """
  return _sample_compiled(key, constraint, **_static_args(sde, score_fn, shape, method, options, constraint))


@functools.partial(jax.jit, static_argnames=("sde", "score_fn", "shape", "options"))
def _smc_compiled(key, observation, sde, score_fn, shape, options):
  return smc_lib.smc_run(key, sde, score_fn, shape, **dict(options), constraint=observation)


def run_smc(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], observation: constraints.Observation,
        **options) -> SMCResult:
  """The SMC conditional sampler of ``sampling/smc.py`` (MCGdiff's potentials), all of it:
  particles, weights and the ESS trace (``sample(..., method="smc")`` returns one particle per
  input).  One compiled call; the observation is traced (a new one of the same shapes reuses it).

  Args:
    key, sde, score_fn: as for ``sample`` (score_fn may be any transform: CFG, guidance, ...).
    shape: [B, ...], B inputs (each with its own row of the observation).
    observation: ``constraints.Observation`` (or a ``Replacement`` with resample = 1).
    **options: particles (K), num_steps, ess_threshold, guidance_scale, data_variance.

  Returns:
    ``SMCResult(samples [B, ...], particles [B, K, ...], log_weights [B, K], ess [num_steps, B])``.
  """
  static = _static_args(sde, score_fn, shape, "smc", options, observation)
  return _smc_compiled(key, observation, static["sde"], static["score_fn"], static["shape"], static["options"])


def lower(key: jax.Array, sde: SDE, score_fn: ScoreFn, shape: tuple[int, ...], method: str = "pc", *,
          constraint: constraints.Constraint = None, **options) -> jax.stages.Lowered:
  """The sampler ``sample`` would run, lowered ahead of time: ``.compile()`` gives a
  callable of the key (for timing compilation apart from execution, or inspecting HLO)."""
  return _sample_compiled.lower(key, constraint, **_static_args(sde, score_fn, shape, method, options, constraint))


__all__ = ["sample", "run_smc", "smc_lib", "SMCResult", "lower", "constraints", "check_constraint", "resolve_options", "Method", "METHODS", "PREDICTORS", "CORRECTORS", "SOLVERS", "steps"]
