"""``--mode=inpaint`` and ``--mode=colorize``: a trained unconditional model, used without
retraining, fills masked regions of images or colours grayscale ones.

Both run the config's sampler (``config.sampling``) on the model's score with known
coordinates re-imposed after every predictor and corrector step (``sampling.constraints``,
the replacement method of Song et al. 2021, "Score-Based Generative Modeling through
Stochastic Differential Equations", App. I.2; the report, "Score-based generative models
through SDEs", §5.1–5.2 and App. B):

* inpaint:  the known pixels of x(t) are replaced by a fresh sample of p_0t(x(t) | x(0) = y);
  masks ``box``, ``half``, ``random_patches`` or an image-sized PNG;
* colorize: the same in the decoupled colour basis u = x M (the report's eq. 5.2, exact
  entries 1/√3, 1/√2, 1/√6), where the known coordinate is the luminance (r + g + b)/√3 of
  the gray input and the two chrominance channels are sampled.

Inputs (``config.controllable``): ``num_inputs`` images from ``first_input`` on, of the held-
out split (``inputs="test"``, i.e. ``config.data.eval_split``), the training split
(``"train"``) or a folder of image files (``"folder"``, ``input_path``; centre-cropped and
resized to ``config.data.image_size``).  Each input gets ``samples_per_input`` samples, with
sample keys as ``--mode=sample``'s (``sample.make_sampler``).  A class-conditional model is
used through its null label, i.e. as the unconditional model it also is.

Outputs go to a new folder ``<workdir>/inpaint/<k>`` (``colorize/<k>``), never overwriting:

* ``grid.png``: one row per input: original | masked input (pixels to fill drawn as a gray
  checkerboard) or gray input | the samples;
* ``results.npz``: ``originals``, ``inputs``, ``known`` (True where a pixel is kept; inpaint),
  ``samples`` [n, samples_per_input, H, W, C], ``labels`` (inputs from a split), ``step``;
* ``metrics.json``: ``known_max_abs_error`` (inpaint; 0: the known pixels come back exactly)
  or ``luminance_max_abs_error`` (colorize; float rounding), the mean absolute difference to
  the original where pixels were sampled, the spread between samples of one input, the
  fraction of values outside the data range, NFE and wall time, and — when an in-domain
  classifier (``--mode=train_classifier``) exists for the data and the inputs have labels —
  its accuracy on the originals, the masked inputs and the samples.

Every field is checked before anything compiles; a bad one is one line naming it
(``experiment.ConfigError``), e.g. a mask PNG whose size is not the images' size or
``--mode=colorize`` on a one-channel dataset.
"""

from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Optional

from absl import logging
import jax
import ml_collections
import numpy as np
from PIL import Image

from score_jax import classifiers
from score_jax import evaluate
from score_jax import experiment
from score_jax import outputs
from score_jax import sample as sample_lib
from score_jax import sampling
from score_jax.data import embedded
from score_jax.data import pipeline

ConfigDict = ml_collections.ConfigDict
check = experiment.check
FIELD = "config.controllable"

MODES = ("inpaint", "colorize")
INPUTS = ("test", "train", "folder")
MASKS = ("box", "half", "random_patches", "png")
HALVES = ("left", "right", "top", "bottom")
_MODE_SALT = {"inpaint": 1, "colorize": 2}  # folded into the sample key: the modes draw apart


@dataclasses.dataclass(frozen=True)
class Options:
  """``config.controllable``, validated (see ``configs/common.py`` for each field's meaning)."""

  inputs: str
  input_path: str
  first_input: int
  num_inputs: int
  samples_per_input: int
  mask: str
  box: Optional[tuple[int, int, int, int]]
  half: str
  num_patches: int
  patch_size: Optional[int]
  mask_seed: int
  mask_path: str
  resample: int


def _int_field(section: dict, name: str, low: int) -> int:
  value = section.get(name)
  check(experiment.is_int(value) and value >= low, f"{FIELD}.{name}", f"must be an integer >= {low}, got {value!r}.")
  return int(value)


def read_options(config: ConfigDict, mode: str) -> Options:
  """``config.controllable`` as ``Options``; a bad field is a ConfigError naming it."""
  check(mode in MODES, "mode", f"unknown {mode!r}; choose one of {list(MODES)}.")
  check("controllable" in config, FIELD,
        "missing; image configs get it from configs/common.py (base_config), toy configs have no images.")
  c = experiment.as_dict(config.controllable)
  check(c.get("inputs") in INPUTS, f"{FIELD}.inputs", f"unknown {c.get('inputs')!r}; choose one of {list(INPUTS)}.")
  path = c.get("input_path") or ""
  check(c["inputs"] != "folder" or bool(path), f"{FIELD}.input_path",
        "not set; inputs='folder' reads the images of this folder.")
  mask = c.get("mask")
  check(mode != "inpaint" or mask in MASKS, f"{FIELD}.mask", f"unknown {mask!r}; choose one of {list(MASKS)}.")
  box = c.get("box")
  if box is not None:
    check(isinstance(box, (tuple, list)) and len(box) == 4 and all(experiment.is_int(v) for v in box),
          f"{FIELD}.box", f"must be (top, left, height, width) in pixels or None, got {box!r}.")
    box = tuple(int(v) for v in box)
  half = c.get("half")
  check(mode != "inpaint" or mask != "half" or half in HALVES, f"{FIELD}.half",
        f"unknown {half!r}; choose the half to fill from {list(HALVES)}.")
  patch_size = c.get("patch_size")
  check(patch_size is None or (experiment.is_int(patch_size) and patch_size >= 1), f"{FIELD}.patch_size",
        f"must be an integer >= 1 or None (a quarter of the side), got {patch_size!r}.")
  mask_path = c.get("mask_path") or ""
  check(mode != "inpaint" or mask != "png" or bool(mask_path), f"{FIELD}.mask_path",
        "not set; mask='png' reads an image-sized mask (white = fill, black = keep).")
  return Options(inputs=c["inputs"], input_path=path, first_input=_int_field(c, "first_input", 0),
                 num_inputs=_int_field(c, "num_inputs", 1), samples_per_input=_int_field(c, "samples_per_input", 1),
                 mask=mask, box=box, half=half, num_patches=_int_field(c, "num_patches", 1), patch_size=patch_size,
                 mask_seed=_int_field(c, "mask_seed", 0), mask_path=mask_path, resample=_int_field(c, "resample", 1))


# --- masks: True where a pixel is to be filled ------------------------------------------------
def box_mask(image_size: int, box: Optional[tuple[int, int, int, int]] = None) -> np.ndarray:
  """bool [S, S], True inside ``box`` = (top, left, height, width); None: the centred box of half the side.

  Raises:
    ConfigError: the box does not lie inside the image.
  """
  s = image_size
  if box is None:
    h = max(1, s // 2)
    box = ((s - h) // 2, (s - h) // 2, h, h)
  top, left, h, w = box
  check(top >= 0 and left >= 0 and h >= 1 and w >= 1 and top + h <= s and left + w <= s, f"{FIELD}.box",
        f"{box} (top, left, height, width) does not lie inside the {s}×{s} images.")
  fill = np.zeros((s, s), bool)
  fill[top:top + h, left:left + w] = True
  return fill


def half_mask(image_size: int, half: str) -> np.ndarray:
  """bool [S, S], True on the ``half`` (left, right, top, bottom) to fill; the odd middle row/column is kept."""
  check(half in HALVES, f"{FIELD}.half", f"unknown {half!r}; choose one of {list(HALVES)}.")
  s, k = image_size, image_size // 2
  fill = np.zeros((s, s), bool)
  part = {"left": (slice(None), slice(0, k)), "right": (slice(None), slice(s - k, s)),
          "top": (slice(0, k), slice(None)), "bottom": (slice(s - k, s), slice(None))}[half]
  fill[part] = True
  return fill


def random_patches_mask(image_size: int, index: int, *, num_patches: int, patch_size: Optional[int],
                        seed: int) -> np.ndarray:
  """bool [S, S], True on ``num_patches`` squares whose corners come from ``default_rng([seed, index])``.

  Args:
    image_size: S.
    index: the input's index in its split or folder (the same image gets the same patches).
    num_patches: squares (they may overlap).
    patch_size: their side; None: max(1, S // 4).
    seed: ``config.controllable.mask_seed``.
  """
  p = max(1, image_size // 4) if patch_size is None else patch_size
  check(p <= image_size, f"{FIELD}.patch_size", f"{p} exceeds the image side {image_size}.")
  rng = np.random.default_rng([seed, index])
  corners = rng.integers(0, image_size - p + 1, size=(num_patches, 2))  # [P, 2] (top, left)
  fill = np.zeros((image_size, image_size), bool)
  for top, left in corners:
    fill[top:top + p, left:left + p] = True
  return fill


def png_mask(path: str, image_size: int) -> np.ndarray:
  """bool [S, S] from a mask image: True where it is white (>= 128 after conversion to gray).

  Raises:
    ConfigError: a missing or undecodable file, or one whose size is not S × S.
  """
  check(os.path.isfile(path), f"{FIELD}.mask_path", f"no file at {path}.")
  try:
    with Image.open(path) as image:
      gray = np.asarray(image.convert("L"))
  except OSError as e:
    raise experiment.ConfigError(f"{FIELD}.mask_path: cannot decode {path}: {e}") from e
  check(gray.shape == (image_size, image_size), f"{FIELD}.mask_path",
        f"the mask is {gray.shape[1]}×{gray.shape[0]} pixels but the images are {image_size}×{image_size} "
        f"(config.data.image_size); draw the mask at the images' size.")
  return gray >= 128


def make_fill_masks(opts: Options, image_size: int, indices: np.ndarray) -> np.ndarray:
  """bool [n, S, S], True where pixels are filled, for the inputs of ``indices`` [n].

  Raises:
    ConfigError: a bad mask field, or a mask that fills no pixel.
  """
  if opts.mask == "random_patches":
    fill = np.stack([random_patches_mask(image_size, int(i), num_patches=opts.num_patches,
                                         patch_size=opts.patch_size, seed=opts.mask_seed) for i in indices])
  else:
    one = {"box": lambda: box_mask(image_size, opts.box), "half": lambda: half_mask(image_size, opts.half),
           "png": lambda: png_mask(opts.mask_path, image_size)}[opts.mask]()
    fill = np.broadcast_to(one, (len(indices), image_size, image_size))
  check(bool(fill.any(axis=(1, 2)).all()), f"{FIELD}.mask", f"mask {opts.mask!r} fills no pixel; nothing to inpaint.")
  return np.ascontiguousarray(fill)


# --- inputs ---------------------------------------------------------------------------------
def load_inputs(setup: experiment.Setup, opts: Options) -> tuple[np.ndarray, Optional[np.ndarray], np.ndarray, str]:
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
class Job:
  """One inpainting or colorization run, before sampling.

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


def prepare(config: ConfigDict, mode: str) -> tuple[experiment.Setup, Options, Job]:
  """Builds and validates everything (config, inputs, masks, sampler × constraint); compiles nothing.

  Raises:
    ConfigError: a bad field, named in the one-line message.
  """
  opts = read_options(config, mode)
  setup = experiment.build(config)
  data = setup.data
  check(isinstance(data, experiment.ImageData), "config.data.kind",
        f"--mode={mode} needs image data, got kind {config.data.kind!r}.")
  size, _, channels = data.shape
  if mode == "colorize":
    check(channels == 3, "config.data.name",
          f"--mode=colorize needs RGB images (3 channels) but dataset {data.name!r} has {channels}; "
          "use an RGB config such as configs/ve/shapes_16.py.")
  x, labels, indices, source = load_inputs(setup, opts)
  lo, hi = data.data_range
  if mode == "inpaint":
    fill = make_fill_masks(opts, size, indices)
    known = (~fill)[..., None].astype(np.float32)  # [n, S, S, 1]
    shown = np.where(fill[..., None], hole_pattern(size, data.data_range)[..., None], x)  # [n, S, S, C]
    job = Job(mode, x, labels, indices, source, shown, x, known, fill, None, opts.samples_per_input)
  else:
    known = np.broadcast_to(np.array([1.0, 0.0, 0.0], np.float32), x.shape).copy()  # luminance known
    g = gray(x)
    job = Job(mode, x, labels, indices, source, g, g, known, None, sampling.constraints.color_matrix(),
              opts.samples_per_input)
  # The sampler must be able to impose the constraint (e.g. not an adaptive ODE solver).
  values, known = _per_sample(job)
  stand_in = sampling.constraints.Replacement(values, known, job.basis, opts.resample)
  with experiment.config_field("config.sampling.method"):
    sampling.check_constraint(setup.sde, values.shape, setup.sampling_method, setup.sampling_options, stand_in)
  return setup, opts, job


def _per_sample(job: Job) -> tuple[np.ndarray, np.ndarray]:
  """(values, known) with each input repeated ``samples_per_input`` times: [n·k, ...]."""
  k = job.samples_per_input
  return np.repeat(job.values, k, axis=0), np.repeat(job.known, k, axis=0)


# --- metrics ----------------------------------------------------------------------------------
def constraint_metrics(job: Job, samples: np.ndarray, data_range: tuple[float, float]) -> dict[str, Any]:
  """How well the samples [n, k, H, W, C] keep what is known, and how they fill the rest.

  Returns (inpaint) ``known_max_abs_error`` over kept pixels; (colorize) ``luminance_max_abs_error``
  of the channel mean against the input's; both: ``sampled_mae_to_original`` (mean |x − original|
  over the sampled part: pixels to fill, or all RGB values for colorize), ``sample_spread``
  (mean over that part of the std between an input's samples; 0 when k = 1),
  ``out_of_range_fraction`` and ``nonfinite_fraction``.
  """
  x = samples.astype(np.float64)
  orig = job.originals.astype(np.float64)[:, None]  # [n, 1, H, W, C]
  lo, hi = data_range
  out: dict[str, Any] = {"nonfinite_fraction": float(1.0 - np.isfinite(x).mean()),
                         "out_of_range_fraction": float(np.mean((x < lo) | (x > hi)))}
  err = np.abs(x - orig)  # [n, k, H, W, C]
  spread = x.std(axis=1) if x.shape[1] > 1 else np.zeros_like(x[:, 0])  # [n, H, W, C]
  if job.mode == "inpaint":
    fill = np.broadcast_to(job.fill[:, None, :, :, None], x.shape)
    out["known_max_abs_error"] = float(err[~fill].max()) if (~fill).any() else 0.0
    out["filled_fraction"] = float(job.fill.mean())
    out["sampled_mae_to_original"] = float(err[fill].mean())
    out["sample_spread"] = float(spread[np.broadcast_to(job.fill[..., None], spread.shape)].mean())
  else:
    out["luminance_max_abs_error"] = float(np.abs(x.mean(axis=-1) - orig.mean(axis=-1)).max())
    out["sampled_mae_to_original"] = float(err.mean())
    out["sample_spread"] = float(spread.mean())
  return out


def classifier_accuracy(config: ConfigDict, workdir: str, data: experiment.ImageData, labels: Optional[np.ndarray],
                        **images: np.ndarray) -> dict[str, Any]:
  """Accuracy of the in-domain classifier (``--mode=train_classifier``) on each named image set.

  Args:
    config, workdir: where the classifier is (``config.eval.classifier_dir`` or ``<workdir>/classifier``).
    data: the image data the model was trained on.
    labels: [n] true labels; None (inputs from a folder): nothing is measured.
    **images: name -> [m·n, H, W, C] in the data range, rows in input order (each input m times).

  Returns:
    {"classifier_accuracy": {name: accuracy}} or, when it cannot be measured,
    {"classifier_accuracy": None, "classifier_note": why}.
  """
  if labels is None:
    return {"classifier_accuracy": None, "classifier_note": "inputs from a folder have no labels"}
  path = classifiers.classifier_dir(config, workdir)
  try:
    model, params, _ = classifiers.load_classifier(path, data)
  except (FileNotFoundError, experiment.ConfigError) as e:
    return {"classifier_accuracy": None, "classifier_note": str(e)}
  apply = jax.jit(lambda u: model.apply({"params": params}, u)["logits"])
  levels, dequantized = int(data.info.levels), bool(config.data.uniform_dequantization)
  accuracy = {}
  for name, x in images.items():
    k = embedded.to_unit_interval(evaluate.to_levels(np.nan_to_num(x), levels=levels, data_range=data.data_range,
                                                     dequantized=dequantized), levels=levels)
    predicted = np.argmax(np.asarray(apply(k)), axis=-1)  # [m·n]
    accuracy[name] = float(np.mean(predicted == np.repeat(labels, len(x) // len(labels))))
  return {"classifier_accuracy": accuracy, "classifier_dir": path}


# --- the modes --------------------------------------------------------------------------------
def grid_rows(job: Job, samples: np.ndarray) -> np.ndarray:
  """[n·(2 + k), H, W, C]: per input its original, its masked or gray input, then its k samples."""
  rows = np.concatenate([job.originals[:, None], job.shown[:, None], samples], axis=1)  # [n, 2 + k, H, W, C]
  return rows.reshape((-1,) + rows.shape[2:])


def run(config: ConfigDict, workdir: str, mode: str) -> str:
  """Inpaints or colorizes ``config.controllable``'s inputs with the EMA model in ``workdir``.

  Args:
    config: the full config; its model must match the checkpoint's.
    workdir: a folder that ``--mode=train`` has written checkpoints (or an EMA export) to.
    mode: "inpaint" or "colorize".

  Returns:
    The new output folder ``<workdir>/<mode>/<k>``.

  Raises:
    ConfigError: a bad field (before anything compiles).  FileNotFoundError: no checkpoint.
  """
  setup, opts, job = prepare(config, mode)
  step, params = sample_lib.load_ema_params(config, setup, workdir)
  k, out = outputs.next_numbered_dir(os.path.join(workdir, mode))
  key = experiment.keys(config.seed)["sample"]
  key = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, step), _MODE_SALT[mode]), k)
  values, known = _per_sample(job)
  n, m = len(job.originals), job.samples_per_input
  basis, resample = job.basis, opts.resample

  def constraint_fn(values, known):
    return sampling.constraints.Replacement(values, known, basis, resample)

  draw = sample_lib.make_sampler(setup, n * m, batch_size=config.sampling.get("batch_size"),
                                 constraint_fn=constraint_fn, null_labels=True)
  t0 = time.perf_counter()
  x, nfe = draw(params, key, values=values, known=known)  # [n·m, H, W, C]
  seconds = time.perf_counter() - t0
  samples = x.reshape((n, m) + x.shape[1:])
  metrics = {"mode": mode, "step": step, "run": k, "workdir": os.path.abspath(workdir), "source": job.source,
             "input_indices": job.indices, "num_inputs": n, "samples_per_input": m, "nfe": nfe,
             "sample_time_s": seconds, "resample": resample,
             "sampling": {"method": setup.sampling_method, **setup.sampling_options}}
  if mode == "inpaint":
    detail = {"box": opts.box, "half": opts.half, "png": opts.mask_path,
              "random_patches": {"num_patches": opts.num_patches, "patch_size": opts.patch_size,
                                 "mask_seed": opts.mask_seed}}[opts.mask]
    metrics["mask"] = {"kind": opts.mask, "detail": detail}
  metrics.update(constraint_metrics(job, samples, setup.data.data_range))
  metrics.update(classifier_accuracy(config, workdir, setup.data, job.labels, original=job.originals,
                                     masked_or_gray_input=job.shown, samples=x))
  if jax.process_index() == 0:
    scale = sample_lib._grid_scale(job.originals.shape[1])  # pylint: disable=protected-access
    outputs.save_image_grid(os.path.join(out, "grid.png"), grid_rows(job, samples), data_range=setup.data.data_range,
                            ncol=2 + m, scale=scale)
    arrays = {"originals": job.originals, "inputs": job.shown, "samples": samples, "step": np.asarray(step)}
    if job.fill is not None:
      arrays["known"] = ~job.fill
    if job.labels is not None:
      arrays["labels"] = job.labels
    outputs.write_npz(os.path.join(out, "results.npz"), **arrays)
    outputs.write_json(os.path.join(out, "metrics.json"), metrics)
  summary = (f"known-pixel error {metrics['known_max_abs_error']:.2e}" if mode == "inpaint"
             else f"luminance error {metrics['luminance_max_abs_error']:.2e}")
  logging.info("%s of %d inputs × %d samples (%d NFE, %.1f s; %s) -> %s", mode, n, m, nfe, seconds, summary, out)
  return out


def inpaint(config: ConfigDict, workdir: str) -> str:
  """``--mode=inpaint`` (see the module docstring); returns the output folder."""
  return run(config, workdir, "inpaint")


def colorize(config: ConfigDict, workdir: str) -> str:
  """``--mode=colorize`` (see the module docstring); returns the output folder."""
  return run(config, workdir, "colorize")
