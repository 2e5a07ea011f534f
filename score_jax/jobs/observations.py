"""Inpainting and colorization as observations of the samples: the inputs, what is known of
each sample, and how that enters the sampler (an ``Observation`` of ``jobs.control``); how well
the samples keep it is ``jobs.observation_metrics``, one run ``jobs.controllable.solve``.

Known pixels (inpainting) or the luminance (colorization, in the decoupled colour basis
u = x M of the report's eq. 5.2, ``sampling.constraints.color_matrix``) enter by one of three
methods (``config.controllable.method``):

* ``replacement``: the known coordinates of x(t) are replaced by a fresh sample of
  p_0t(x(t) | x(0) = y) after every predictor and corrector step (Song et al. 2021,
  "Score-Based Generative Modeling through Stochastic Differential Equations", App. I.2;
  the report, "Score-based generative models through SDEs", §5.1–5.2 and App. B);
* ``repaint``: the same with every step repeated ``resample`` times, jumping back by the
  forward transition in between (Lugmayr et al. 2022, "RePaint", Algorithm 1);
* ``posterior``: the score is guided by ∇ log N(y_Ω; x̂_0(x, t)_Ω, C_t) around Tweedie's
  denoiser (Song et al. 2023, "Pseudoinverse-guided diffusion models"; ``guidance.
  posterior_guidance``: the isotropic covariance for images, the Tweedie one where the
  dimension is small), and the known coordinates are re-imposed as by replacement (``resample``
  times), so they come back exactly at the end.

The observation's values and masks are per-sample arrays of the Control: traced, so new
inputs of the same shapes reuse the compiled sampler.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Optional

import numpy as np

from score_jax import experiment
from score_jax import guidance as guidance_lib
from score_jax import sampling
from score_jax.data import embedded
from score_jax.data import pipeline
from score_jax.jobs import control as control_lib
from score_jax.jobs import masks
from score_jax.jobs import sampler as sampler_lib

check = experiment.check
FIELD = "config.controllable"


# --- inputs ---------------------------------------------------------------------------------
def load_inputs(setup: experiment.Setup, opts: experiment.ControllableOptions) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray, str]:
  """The input images in the data range.

  Returns:
    (images float32 [n, H, W, C] in ``data_range``, labels int32 [n] or None for a folder,
    indices int [n] in the split or folder, a description of the source).

  Raises:
    ConfigError: a missing folder, too few images, or images that cannot be decoded.
  """
  data = setup.data
  size, _, channels = data.shape
  if opts.inputs == "folder":
    try:
      dataset = pipeline.get_dataset("folder", "inputs", split="train", path=opts.input_path, image_size=size,
                                     random_flip=False, data_range=data.data_range, channels=channels,
                                     class_folders=False)
    except (ValueError, OSError) as e:
      raise experiment.ConfigError(f"{FIELD}.input_path: {str(e).removeprefix('path: ')}") from e
    source = f"folder {os.path.abspath(opts.input_path)}"
  else:
    split = data.eval_split if opts.inputs == "test" else data.train.info.split
    dataset = data.train if split == data.train.info.split else data.load_split(split)
    source = f"{data.name} {split} split"
  n_have = len(dataset)
  check(opts.first_input + opts.num_inputs <= n_have, f"{FIELD}.num_inputs",
        f"first_input {opts.first_input} + num_inputs {opts.num_inputs} exceeds the {n_have} images of the {source}.")
  indices = np.arange(opts.first_input, opts.first_input + opts.num_inputs)
  try:
    images, labels = dataset.images_at(indices)  # uint8 [n, H, W, C], int32 [n]
  except OSError as e:
    raise experiment.ConfigError(f"{FIELD}.input_path: {e}") from e
  x = embedded.to_data_range(embedded.to_unit_interval(images, levels=dataset.levels), data.data_range)
  return x, (None if opts.inputs == "folder" else np.asarray(labels, np.int32)), indices, source


# --- the constrained problem ----------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Problem:
  """One inpainting or colorization problem: the inputs and what is known of each sample.

  Attributes:
    mode: "inpaint" or "colorize".
    originals: [n, H, W, C] the inputs as loaded.
    labels: [n] their labels (inputs from a split) or None.
    indices: [n] their indices in the split or folder.
    source: where they come from, in words.
    shown: [n, H, W, C] the masked input (``hole_pattern`` where filled) or the gray input, as drawn.
    values: [n, H, W, C] the data whose known coordinates are kept (colorize: the gray image).
    known: [n, H, W, C'] 1 where a coordinate of the (decoupled) state is known, 0 where sampled;
      C' = 1 for inpainting (the same mask on every channel), 3 for colorization.
    fill: [n, H, W] True where a pixel is filled (inpaint), None for colorize.
    basis: the channel basis of the constraint (colorize: ``constraints.color_matrix()``) or None.
    samples_per_input: samples of each input.
  """

  mode: str
  originals: np.ndarray
  labels: Optional[np.ndarray]
  indices: np.ndarray
  source: str
  shown: np.ndarray
  values: np.ndarray
  known: np.ndarray
  fill: Optional[np.ndarray]
  basis: Optional[np.ndarray]
  samples_per_input: int


def hole_pattern(image_size: int, data_range: tuple[float, float]) -> np.ndarray:
  """float32 [S, S]: a checkerboard of 30 % and 70 % gray that marks the pixels to fill in the
  grid's input column (plain mid-gray would merge with the grid's gray padding)."""
  lo, hi = data_range
  i, j = np.indices((image_size, image_size))
  return (lo + (hi - lo) * (0.3 + 0.4 * ((i + j) % 2))).astype(np.float32)


def gray(x: np.ndarray) -> np.ndarray:
  """The gray image (r + g + b)/3 on every channel: the luminance channel of the decoupled basis
  is (r + g + b)/√3, so it is the part of ``x`` that colorization keeps ([n, H, W, 3])."""
  return np.repeat(np.mean(x, axis=-1, keepdims=True, dtype=np.float64), x.shape[-1], axis=-1).astype(x.dtype)


# --- the problem and its observation ----------------------------------------------------------
def prepare(setup: experiment.Setup, opts: experiment.ControllableOptions, mode: str) -> Problem:
  """Loads the inputs and builds what is known of them (masks, gray images); compiles nothing.

  Raises:
    ConfigError: a bad field, named in the one-line message.
  """
  data = setup.data
  check(isinstance(data, experiment.ImageData), "config.data.kind",
        f"--mode={mode} needs image data, got kind 'toy'.")
  size, _, channels = data.shape
  if mode == "colorize":
    check(channels == 3, "config.data.name",
          f"--mode=colorize needs RGB images (3 channels) but dataset {data.name!r} has {channels}; "
          "use an RGB config such as configs/ve/shapes_16.py.")
  x, labels, indices, source = load_inputs(setup, opts)
  if mode == "inpaint":
    fill = masks.make_fill_masks(opts, size, indices)
    known = (~fill)[..., None].astype(np.float32)  # [n, S, S, 1]
    shown = np.where(fill[..., None], hole_pattern(size, data.data_range)[..., None], x)  # [n, S, S, C]
    return Problem(mode, x, labels, indices, source, shown, x, known, fill, None, opts.samples_per_input)
  known = np.broadcast_to(np.array([1.0, 0.0, 0.0], np.float32), x.shape).copy()  # luminance known
  g = gray(x)
  return Problem(mode, x, labels, indices, source, g, g, known, None, sampling.constraints.color_matrix(),
                 opts.samples_per_input)


def observation(problem: Problem, opts: experiment.ControllableOptions, setup: experiment.Setup
                ) -> control_lib.Observation:
  """How the problem's known coordinates enter the sampler, by ``opts.method`` (see the module):
  per-sample ``values`` and ``known`` ([n·k, ...], each input repeated ``samples_per_input``
  times), the replacement constraint, and for "posterior" the guidance transform."""
  k = problem.samples_per_input
  per_sample = {"values": np.repeat(problem.values, k, axis=0), "known": np.repeat(problem.known, k, axis=0)}
  basis, resample = problem.basis, opts.resample

  def constraint(chunk: control_lib.Chunk) -> sampling.constraints.Replacement:
    return sampling.constraints.Replacement(chunk.arrays["values"], chunk.arrays["known"], basis, resample)

  transforms = ()
  if opts.method == "posterior":
    def posterior(score_fn, s: experiment.Setup, chunk: control_lib.Chunk):
      return guidance_lib.posterior_guidance(score_fn, s.sde, chunk.arrays["values"], chunk.arrays["known"],
                                             basis=basis, covariance=opts.covariance,
                                             data_variance=opts.data_variance, scale=opts.guidance_scale)

    transforms = (posterior,)
  return control_lib.Observation(transforms=transforms, constraint=constraint, per_sample=per_sample)


def method_record(opts: experiment.ControllableOptions) -> dict[str, Any]:
  """What metrics.json says of the method (posterior: its covariance and weights)."""
  record: dict[str, Any] = {"method": opts.method}
  if opts.method == "posterior":
    record["posterior"] = {"covariance": opts.covariance, "guidance_scale": opts.guidance_scale,
                           "data_variance": opts.data_variance}
  return record


# --- the modes --------------------------------------------------------------------------------


def grid_rows(problem: Problem, samples: np.ndarray) -> np.ndarray:
  """[n·(2 + k), H, W, C]: per input its original, its masked or gray input, then its k samples."""
  rows = np.concatenate([problem.originals[:, None], problem.shown[:, None], samples], axis=1)  # [n, 2 + k, H, W, C]
  return rows.reshape((-1,) + rows.shape[2:])


def control_for(problem: Problem, opts: experiment.ControllableOptions, setup: experiment.Setup,
                class_part: control_lib.Control) -> control_lib.Control:
  """``class_part`` (``control.unconditional``, or class guidance) observing the problem; the
  config's sampler is checked to impose its constraint (e.g. not an adaptive ODE solver)."""
  control = class_part.observe(observation(problem, opts, setup))
  with experiment.config_field("config.sampling.method"):
    sampler_lib.check_control(setup, len(problem.originals) * problem.samples_per_input, control)
  return control
