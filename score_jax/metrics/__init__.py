"""Metrics: sample statistics against toy targets (``samples``), and FID / KID / Inception
Score / precision-recall from feature arrays (``fid``, numpy only).

The FID Inception network and its weight loader live in ``score_jax.metrics.inception``
(Flax; import it explicitly), the weight converter in ``score_jax.metrics.convert_inception``.
"""

from score_jax.metrics.fid import (
    FeatureStats,
    feature_statistics,
    frechet_distance,
    inception_score,
    kid,
    mmd2_unbiased,
    precision_recall,
)

__all__ = [
    "FeatureStats",
    "feature_statistics",
    "frechet_distance",
    "inception_score",
    "kid",
    "mmd2_unbiased",
    "precision_recall",
]
