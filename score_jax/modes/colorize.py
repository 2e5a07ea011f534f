"""``--mode=colorize``: a trained model, used without retraining, colours gray versions of RGB images.

The gray input keeps the luminance (r + g + b)/√3 of the decoupled colour basis u = x M (the
report's eq. 5.2, exact entries 1/√3, 1/√2, 1/√6) and the two chrominance channels are sampled,
by ``config.controllable.method`` (``jobs/observations.py``) with ``config.guidance``'s class
guidance if any, from the inputs of ``config.controllable``.

Writes a new folder ``<workdir>/colorize/<k>``: ``grid.png`` (per input: original | gray input |
its samples), ``results.npz`` and ``metrics.json`` (``luminance_max_abs_error``, float rounding
only; the error to the original and the spread between samples; the in-domain classifier's
accuracy when one exists).  A one-channel dataset is refused before anything compiles.
"""

from __future__ import annotations

from score_jax import experiment
from score_jax.jobs import controllable
from score_jax.jobs import writers


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Colorizes ``config.controllable``'s inputs with the EMA model in ``workdir``
  (``jobs.controllable.solve``: problem and control → parameters → draw → write).

  Raises:
    ConfigError: a bad field (before anything compiles).  FileNotFoundError: no checkpoint.
  """
  opts = experiment.controllable_options(config, "colorize")
  setup = experiment.build(config, workdir=workdir)
  return controllable.solve("colorize", setup, opts, experiment.sample_options(config),
                             experiment.guidance_options(config, setup), experiment.classifier_options(config), workdir)
