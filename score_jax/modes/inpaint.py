"""``--mode=inpaint``: a trained model, used without retraining, fills masked regions of images.

Inputs and masks come from ``config.controllable`` (``box``, ``half``, ``random_patches`` or an
image-sized PNG; ``jobs/masks.py``), the method — replacement, RePaint or posterior guidance —
from ``config.controllable.method`` (``jobs/observations.py``), and ``config.guidance`` guides
the fills to classes (classifier or classifier-free guidance; without it a class-conditional
model is used through its null label).  Every field is checked before anything compiles.

Writes a new folder ``<workdir>/inpaint/<k>``: ``grid.png`` (per input: original | masked input,
the pixels to fill drawn as a gray checkerboard | its samples), ``results.npz`` (``originals``,
``inputs``, ``known``, ``samples`` [n, samples_per_input, H, W, C], ``labels``, ``step``) and
``metrics.json`` (``known_max_abs_error``, 0 when the known pixels come back exactly, the error
and spread where pixels were filled, NFE, time, and the in-domain classifier's accuracy on the
originals, the masked inputs and the fills when one exists).
"""

from __future__ import annotations

from score_jax import experiment
from score_jax.jobs import controllable
from score_jax.jobs import writers


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Inpaints ``config.controllable``'s inputs with the EMA model in ``workdir``
  (``jobs.controllable.solve``: problem and control → parameters → draw → write).

  Raises:
    ConfigError: a bad field (before anything compiles).  FileNotFoundError: no checkpoint.
  """
  opts = experiment.controllable_options(config, "inpaint")
  setup = experiment.build(config, workdir=workdir)
  return controllable.solve("inpaint", setup, opts, experiment.sample_options(config),
                             experiment.guidance_options(config, setup), experiment.classifier_options(config), workdir)
