"""Analysis of noise schedules and samplers on Gaussian targets, where everything is exact.

``kl``: the KL upper bound of Strasman et al. (TMLR 2025, arXiv 2402.04650) for the VP SDE
with stationary std σ∞ (``ScaledVPSDE``) and the exact KL of what a sampler step produces.
Scripts: ``python -m score_jax.analysis.sweep_schedule --out=DIR`` (bound and exact KL
against the β_a parameter a) and ``python -m score_jax.analysis.plot_schedules --out=DIR``
(ᾱ, β, SNR and log-SNR of every schedule).
"""

from score_jax.analysis.kl import (
    STEPS,
    KLBound,
    ScaledVPSDE,
    approximation_term,
    discretization_term,
    eigenbasis,
    exact_kl,
    exponential_predictor,
    forward_prior_kl,
    gaussian_kl,
    gaussian_kl_diag,
    gaussian_score_fn,
    kl_upper_bound,
    mixing_term,
    predictor,
    propagate,
    relative_exponential_predictor,
    relative_fisher_information,
    sampler_law,
    sampler_law_eigen,
    sigma_inf,
    step_affine_coeffs,
    time_grid,
)

__all__ = [
    "STEPS", "KLBound", "ScaledVPSDE", "approximation_term", "discretization_term", "eigenbasis", "exact_kl",
    "exponential_predictor", "forward_prior_kl", "gaussian_kl", "gaussian_kl_diag", "gaussian_score_fn",
    "kl_upper_bound", "mixing_term", "predictor", "propagate", "relative_exponential_predictor",
    "relative_fisher_information", "sampler_law", "sampler_law_eigen", "sigma_inf", "step_affine_coeffs", "time_grid",
]
