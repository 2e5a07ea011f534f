"""Embedded image datasets that need no download, and a deterministic, host-sharded batcher.

Two datasets, ``get_dataset(name, split=..., **options)``:

``digits``
  scikit-learn's 8×8 handwritten digits (``sklearn.datasets.load_digits``, whose data ship
  inside the scikit-learn wheel: nothing is fetched).  1797 grey images of 10 classes whose
  pixels are counts 0..16, i.e. 17 quantization levels.  Split: the first 1500 images are
  "train", the last 297 "test" (the file's own order, which groups writers, so the test
  images come mostly from writers unseen in training; every class has 27..33 test images).

``shapes``
  Generated RGB images of one shape (circle, square, triangle, cross) on a plain
  background, labelled by shape.  Each example's class is its index mod 4 (balanced);
  centre, size, rotation and colours are drawn from numpy Generators seeded with
  (data_seed, split, block of 1024 examples), so the first n examples do not depend on
  how many were asked for, and the picture at another ``image_size`` is the same scene.
  Foreground and background differ in luma (0.299 R + 0.587 G + 0.114 B) by at least
  ``min_contrast``.  Shapes are rasterised by their signed distance, with a one-pixel
  anti-aliasing ramp, vectorised in numpy (20 000 images of 32×32 take about a second).

Images are stored as integer levels, uint8 [N, H, W, C] in 0..levels−1 (digits: 17
levels; shapes and resized digits: 256), and turned into floats only per batch.

Preprocessing, as in score_sde's ``datasets.py``:

* resize (once, when the data are built): Pillow's ``resize`` per channel on the float
  image; Pillow widens its filter when shrinking, so down-sampling is anti-aliased.
  "nearest" keeps the levels; every other method re-quantizes to 256 levels.
* random horizontal flip (default on for shapes, off for digits, which are not mirror
  symmetric);
* uniform dequantization: x = (k + u) / levels with u ~ U[0, 1), so x stays within its
  level's bin [k/levels, (k+1)/levels]; without it x = k / (levels − 1) ∈ [0, 1];
* ``data_range``: the affine map of [0, 1] onto (lo, hi); (0, 1) keeps it, (−1, 1) is
  score_sde's ``data.centered``.

Batching (``IndexedDataset``, the base of ``EmbeddedDataset`` and of the file-backed
datasets of ``score_jax.data.pipeline``) is a pure function of (seed, step): the data form
an endless stream, epoch after epoch, each epoch a permutation of the dataset drawn from
``default_rng([seed, 0, epoch])``; the global batch of step s is stream positions
[s·B, (s+1)·B), and process p of P takes its contiguous B/P share.  The flip bit and
dequantization noise of an example come from ``default_rng([seed, 1, epoch, index])``,
so the global batch is the same for every process count, and a resumed run sees exactly
the stream of an uninterrupted one.  After the gather, every dataset runs the same
``preprocess_batch``: flip, dequantize, map to ``data_range``.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Iterator, Mapping, Optional

import numpy as np
from PIL import Image

SPLITS = ("train", "test")
RESIZE_METHODS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "box": Image.Resampling.BOX,
    "lanczos": Image.Resampling.LANCZOS,
}
SHAPE_NAMES = ("circle", "square", "triangle", "cross")
DIGITS_NUM_TEST = 297
_BLOCK = 1024  # shapes: examples per parameter block (one Generator each)
_STREAM_PERMUTATION, _STREAM_EXAMPLE = 0, 1  # sub-streams of the batching seed


# --- metadata -----------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a dataset holds, known without building it.

  Attributes:
    name: the dataset's name.
    split: "train" or "test".
    num_examples: N.
    image_size: H = W of the stored images.
    channels: C (1 grey, 3 RGB).
    levels: quantization levels of the stored integers (pixel values 0..levels−1).
    num_classes: number of labels.
    class_names: one name per label.
  """

  name: str
  split: str
  num_examples: int
  image_size: int
  channels: int
  levels: int
  num_classes: int
  class_names: tuple[str, ...]

  @property
  def shape(self) -> tuple[int, int, int]:
    """Shape of one example, (H, W, C)."""
    return (self.image_size, self.image_size, self.channels)


def _check_int_any(value: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise ValueError(f"{field}: must be an integer, got {value!r}.")
  return int(value)


def _check_int(value: Any, field: str, low: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
    raise ValueError(f"{field}: must be an integer >= {low}, got {value!r}.")
  return int(value)


# --- preprocessing: pure functions --------------------------------------------------------
def resize_images(images: np.ndarray, *, levels: int, size: int,
                  method: str = "bilinear") -> tuple[np.ndarray, int]:
  """Resizes integer-level images to size × size with Pillow, one channel at a time.

  Args:
    images: uint8 [N, H, W, C], values in 0..levels−1.
    levels: their quantization levels.
    size: the new height and width.
    method: one of ``RESIZE_METHODS``.  Shrinking is anti-aliased (Pillow widens the filter).

  Returns:
    (uint8 [N, size, size, C], new levels): "nearest" keeps the values and levels; every
    other method re-quantizes x ∈ [0, 1] to 256 levels, round(255 x).
  """
  if method not in RESIZE_METHODS:
    raise ValueError(f"resize_method: unknown {method!r}; choose one of {sorted(RESIZE_METHODS)}.")
  if not (isinstance(size, int) and size >= 1):
    raise ValueError(f"image_size: must be an integer >= 1, got {size!r}.")
  n, h, w, c = images.shape
  if (h, w) == (size, size):
    return images, levels
  resample = RESIZE_METHODS[method]
  x = images.astype(np.float32) / (levels - 1)  # [N, H, W, C] in [0, 1]
  out = np.empty((n, size, size, c), np.float32)
  for i in range(n):
    for ch in range(c):
      plane = Image.fromarray(x[i, :, :, ch]).resize((size, size), resample=resample)
      out[i, :, :, ch] = np.asarray(plane)
  if method == "nearest":
    return np.rint(out * (levels - 1)).astype(np.uint8), levels
  return np.rint(np.clip(out, 0.0, 1.0) * 255.0).astype(np.uint8), 256


def flip_horizontal(images: np.ndarray, flip: np.ndarray) -> np.ndarray:
  """Mirrors the images whose ``flip`` is set (left <-> right).

  Args:
    images: [B, H, W, C].
    flip: bool [B].

  Returns:
    [B, H, W, C], a new array.
  """
  return np.where(flip[:, None, None, None], images[:, :, ::-1, :], images)


def to_unit_interval(images: np.ndarray, *, levels: int, noise: Optional[np.ndarray] = None) -> np.ndarray:
  """Integer levels -> float32 in [0, 1].

  Args:
    images: integer [B, H, W, C] in 0..levels−1.
    levels: quantization levels.
    noise: None, or uniform dequantization noise in [0, 1), float [B, H, W, C].

  Returns:
    float32 [B, H, W, C]: k / (levels − 1) without noise; (k + u) / levels with it, so each
    value stays in its level's bin [k/levels, (k+1)/levels].
  """
  k = images.astype(np.float32)
  if noise is None:
    return k / np.float32(levels - 1)
  return (k + noise.astype(np.float32)) / np.float32(levels)


def to_data_range(x: np.ndarray, data_range: tuple[float, float]) -> np.ndarray:
  """Maps [0, 1] affinely onto ``data_range`` = (lo, hi); (−1, 1) is score_sde's "centered"."""
  lo, hi = data_range
  return (x * np.float32(hi - lo) + np.float32(lo)).astype(np.float32)


def from_data_range(x: Any, data_range: tuple[float, float]) -> np.ndarray:
  """Inverse of ``to_data_range``, clipped to [0, 1]: model samples -> displayable images."""
  lo, hi = data_range
  return np.clip((np.asarray(x, np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _check_data_range(data_range: Any) -> tuple[float, float]:
  try:
    lo, hi = (float(v) for v in data_range)
  except (TypeError, ValueError):
    raise ValueError(f"data_range: must be a pair (lo, hi), e.g. (0, 1) or (-1, 1), got {data_range!r}.") from None
  if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
    raise ValueError(f"data_range: needs finite lo < hi, got {data_range!r}.")
  return lo, hi


# --- digits -------------------------------------------------------------------------------
def load_digits(split: str) -> tuple[np.ndarray, np.ndarray]:
  """scikit-learn's 8×8 digits, read from the copy inside the scikit-learn package.

  Args:
    split: "train" (the first 1500 images) or "test" (the last ``DIGITS_NUM_TEST`` = 297).

  Returns:
    (uint8 [N, 8, 8, 1] with values 0..16 (17 levels), int32 [N] labels 0..9).
  """
  try:
    from sklearn import datasets as sk_datasets  # pylint: disable=g-import-not-at-top
  except ImportError as e:
    raise ImportError("dataset 'digits' reads scikit-learn's bundled copy: pip install scikit-learn") from e
  bunch = sk_datasets.load_digits()
  images = np.rint(bunch.images).astype(np.uint8)[..., None]  # [1797, 8, 8, 1]
  labels = bunch.target.astype(np.int32)  # [1797]
  cut = len(labels) - DIGITS_NUM_TEST
  part = slice(0, cut) if split == "train" else slice(cut, None)
  return images[part], labels[part]


# --- shapes -------------------------------------------------------------------------------
_LUMA = np.array([0.299, 0.587, 0.114])
_COLOUR_TRIES = 16  # candidate (foreground, background) pairs per example
_SIZE_RANGE = (0.2, 0.4)  # circumradius as a fraction of the image side


def _shape_params(indices: np.ndarray, *, seed: int, split: str, min_contrast: float) -> dict[str, np.ndarray]:
  """Resolution-free parameters of the examples ``indices`` (sorted, from 0) of a split.

  Returns a dict of arrays with leading dimension len(indices): "label" [n], "radius" [n]
  (circumradius / image side), "centre" [n, 2] (x, y in units of the image side), "angle" [n]
  (radians), "foreground" and "background" [n, 3] (RGB in [0, 1]).
  """
  split_id = SPLITS.index(split)
  parts = []
  for block in np.unique(indices // _BLOCK):
    rng = np.random.default_rng([seed, split_id, int(block)])
    radius = rng.uniform(*_SIZE_RANGE, size=_BLOCK)
    where = rng.uniform(size=(_BLOCK, 2))
    angle = rng.uniform(0.0, 2 * np.pi, size=_BLOCK)
    colours = rng.uniform(size=(_BLOCK, _COLOUR_TRIES, 2, 3))  # [n, tries, fg/bg, RGB]
    take = indices[indices // _BLOCK == block] % _BLOCK
    parts.append((take + block * _BLOCK, radius[take], where[take], angle[take], colours[take]))
  index, radius, where, angle, colours = (np.concatenate(a) for a in zip(*parts))
  # Centre so that the circumscribed circle lies inside the image with a margin.
  margin = radius + 0.02
  centre = margin[:, None] + where * (1.0 - 2.0 * margin[:, None])  # [n, 2]
  luma = colours @ _LUMA  # [n, tries, 2]
  ok = np.abs(luma[..., 0] - luma[..., 1]) >= min_contrast  # [n, tries]
  first = np.argmax(ok, axis=1)  # first passing pair (0 where none passes)
  picked = colours[np.arange(len(index)), first]  # [n, 2, 3]
  fg, bg = picked[:, 0], picked[:, 1]
  # None of the tries passed (about 1 in 200 at min_contrast 0.3): black or white, whichever is farther from the background.
  none = ~ok.any(axis=1)
  fg[none] = np.where((bg[none] @ _LUMA < 0.5)[:, None], 1.0, 0.0)
  return {"label": (index % len(SHAPE_NAMES)).astype(np.int32), "radius": radius, "centre": centre,
          "angle": angle, "foreground": fg, "background": bg}


def _box_sdf(x: np.ndarray, y: np.ndarray, half_x: Any, half_y: Any) -> np.ndarray:
  """Signed distance to an axis-aligned box centred at 0 (negative inside)."""
  qx, qy = np.abs(x) - half_x, np.abs(y) - half_y
  outside = np.hypot(np.maximum(qx, 0.0), np.maximum(qy, 0.0))
  return outside + np.minimum(np.maximum(qx, qy), 0.0)


def _shape_sdf(label: int, x: np.ndarray, y: np.ndarray, r: np.ndarray) -> np.ndarray:
  """Signed distance (pixels) to shape ``label`` of circumradius r, in its own rotated frame.

  x, y: [n, S, S] coordinates relative to the centre; r: [n, 1, 1].
  """
  name = SHAPE_NAMES[label]
  if name == "circle":
    return np.hypot(x, y) - r
  if name == "square":
    half = r / np.sqrt(2.0)
    return _box_sdf(x, y, half, half)
  if name == "triangle":  # equilateral: 3 half-planes at the inradius r/2 (exact near edges)
    normals = -np.pi / 2 + 2 * np.pi * np.arange(3) / 3
    return np.max([np.cos(a) * x + np.sin(a) * y for a in normals], axis=0) - r / 2
  # cross: two bars of half-length a and half-width a/3 whose corners touch the circle r
  a = r / np.sqrt(1.0 + 1.0 / 9.0)
  return np.minimum(_box_sdf(x, y, a, a / 3), _box_sdf(x, y, a / 3, a))


def render_shapes(params: Mapping[str, np.ndarray], image_size: int) -> np.ndarray:
  """Rasterises shapes from ``_shape_params`` into uint8 RGB images.

  Coverage of a pixel is clip(0.5 − d, 0, 1) for the signed distance d (in pixels) from its
  centre to the shape's edge, a one-pixel anti-aliasing ramp; colour = bg + coverage·(fg − bg).

  Args:
    params: the parameter dict (n examples).
    image_size: S.

  Returns:
    uint8 [n, S, S, 3], 256 levels.
  """
  s = image_size
  n = len(params["label"])
  out = np.empty((n, s, s, 3), np.uint8)
  coords = (np.arange(s, dtype=np.float32) + 0.5)  # pixel centres
  chunk = max(1, (1 << 20) // (s * s))  # about a million pixels at a time
  for start in range(0, n, chunk):
    part = slice(start, min(start + chunk, n))
    label = params["label"][part]
    r = (params["radius"][part] * s).astype(np.float32)[:, None, None]  # [c, 1, 1]
    cx, cy = ((params["centre"][part] * s).astype(np.float32).T)[:, :, None, None]  # [c, 1, 1] each
    angle = params["angle"][part].astype(np.float32)[:, None, None]
    dx = coords[None, None, :] - cx  # [c, 1, S]
    dy = coords[None, :, None] - cy  # [c, S, 1]
    cos, sin = np.cos(angle), np.sin(angle)
    x = cos * dx + sin * dy  # [c, S, S], rotated by −angle
    y = -sin * dx + cos * dy
    sdf = np.empty_like(x)
    for k in range(len(SHAPE_NAMES)):
      sel = label == k
      if sel.any():
        sdf[sel] = _shape_sdf(k, x[sel], y[sel], r[sel])
    coverage = np.clip(0.5 - sdf, 0.0, 1.0)[..., None]  # [c, S, S, 1]
    fg = params["foreground"][part][:, None, None, :].astype(np.float32)  # [c, 1, 1, 3]
    bg = params["background"][part][:, None, None, :].astype(np.float32)
    out[part] = np.rint((bg + coverage * (fg - bg)) * 255.0).astype(np.uint8)
  return out


def generate_shapes(num_examples: int, *, image_size: int = 32, seed: int = 0, split: str = "train",
                    min_contrast: float = 0.3) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
  """The first ``num_examples`` images of the shapes dataset's ``split``.

  Args:
    num_examples: N.
    image_size: S.
    seed: the generation seed (``data_seed`` of ``get_dataset``).
    split: "train" or "test" (independent streams).
    min_contrast: least luma difference between foreground and background, in [0, 0.5].

  Returns:
    (uint8 [N, S, S, 3] images, int32 [N] labels indexing ``SHAPE_NAMES``, the parameter
    dict of ``_shape_params``).
  """
  num_examples = _check_int(num_examples, "num_examples", 1)
  params = _shape_params(np.arange(num_examples), seed=seed, split=split, min_contrast=min_contrast)
  return render_shapes(params, image_size), params["label"], params


# --- registry -----------------------------------------------------------------------------
def _digits_levels(image_size: int, resize_method: str) -> int:
  return 17 if image_size == 8 or resize_method == "nearest" else 256


def _build_digits(split: str, image_size: int, resize_method: str,
                  opts: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  del opts  # digits have no options
  images, labels = load_digits(split)
  images, _ = resize_images(images, levels=17, size=image_size, method=resize_method)
  return images, labels


def _validate_shapes(opts: Mapping[str, Any]) -> None:
  _check_int(opts["num_train"], "num_train", 1)
  _check_int(opts["num_test"], "num_test", 1)
  _check_int(opts["data_seed"], "data_seed", 0)
  if not 0.0 <= opts["min_contrast"] <= 0.5:
    raise ValueError(f"min_contrast: must lie in [0, 0.5] (a luma difference), got {opts['min_contrast']!r}.")


def _build_shapes(split: str, image_size: int, resize_method: str,
                  opts: Mapping[str, Any]) -> tuple[np.ndarray, np.ndarray]:
  del resize_method  # drawn at image_size
  images, labels, _ = generate_shapes(opts["num_" + split], image_size=image_size, seed=opts["data_seed"],
                                      split=split, min_contrast=opts["min_contrast"])
  return images, labels


@dataclasses.dataclass(frozen=True)
class _Spec:
  """How to build one embedded dataset and what it holds."""

  class_names: tuple[str, ...]
  channels: int
  default_size: int
  default_flip: bool
  options: Mapping[str, Any]  # dataset-specific options and their defaults
  num_examples: Callable[[str, Mapping[str, Any]], int]  # (split, options) -> N
  levels: Callable[[int, str], int]  # (image_size, resize_method) -> levels of the stored images
  build: Callable[..., tuple[np.ndarray, np.ndarray]]  # (split, image_size, resize_method, options)
  validate: Callable[[Mapping[str, Any]], None] = lambda opts: None


DATASETS: dict[str, _Spec] = {
    "digits": _Spec(class_names=tuple(str(d) for d in range(10)), channels=1, default_size=8, default_flip=False,
                    options={}, levels=_digits_levels, build=_build_digits,
                    num_examples=lambda split, o: 1797 - DIGITS_NUM_TEST if split == "train" else DIGITS_NUM_TEST),
    "shapes": _Spec(class_names=SHAPE_NAMES, channels=3, default_size=32, default_flip=True,
                    options={"num_train": 20000, "num_test": 2000, "data_seed": 0, "min_contrast": 0.3},
                    num_examples=lambda split, o: o["num_" + split], levels=lambda size, method: 256,
                    build=_build_shapes, validate=_validate_shapes),
}


@functools.lru_cache(maxsize=8)
def _build(name: str, split: str, image_size: int, resize_method: str,
           options: tuple[tuple[str, Any], ...]) -> tuple[np.ndarray, np.ndarray]:
  """(images uint8 [N, S, S, C], labels int32 [N]), built once and kept read-only."""
  images, labels = DATASETS[name].build(split, image_size, resize_method, dict(options))
  images.flags.writeable = False
  labels.flags.writeable = False
  return images, labels


# --- batching -----------------------------------------------------------------------------
@functools.lru_cache(maxsize=4)
def epoch_permutation(seed: int, epoch: int, num_examples: int) -> np.ndarray:
  """The order of epoch ``epoch``: a permutation [N] of 0..N−1 from (seed, epoch), read-only."""
  perm = np.random.default_rng([seed, _STREAM_PERMUTATION, epoch]).permutation(num_examples)
  perm.flags.writeable = False
  return perm


def _seed_entropy(seed: int) -> int:
  """Any Python int as a non-negative one (numpy seeds must be >= 0)."""
  return _check_int_any(seed, "seed") & ((1 << 64) - 1)


def batch_positions(step: int, *, num_examples: int, global_batch_size: int, seed: int,
                    process_index: int = 0, process_count: int = 1) -> tuple[np.ndarray, np.ndarray]:
  """Which examples this process reads at ``step``.

  The stream is the concatenation of ``epoch_permutation(seed, e, N)`` for e = 0, 1, ...;
  step s's global batch is positions [s·B, (s+1)·B), and process p takes the contiguous
  positions [s·B + p·B/P, s·B + (p+1)·B/P).

  Args:
    step: training step, >= 0.
    num_examples: N.
    global_batch_size: B, divisible by ``process_count``.
    seed: the batching seed.
    process_index: p in 0..P−1.
    process_count: P >= 1.

  Returns:
    (epochs int64 [B/P], dataset indices int64 [B/P]).
  """
  step = _check_int(step, "step", 0)
  batch = _check_int(global_batch_size, "global_batch_size", 1)
  count = _check_int(process_count, "process_count", 1)
  index = _check_int(process_index, "process_index", 0)
  if index >= count:
    raise ValueError(f"process_index: must lie in [0, process_count={count}), got {index}.")
  if batch % count:
    raise ValueError(f"global_batch_size: {batch} is not divisible by process_count={count}; "
                     f"use a multiple of {count}.")
  local = batch // count
  seed = _seed_entropy(seed)
  pos = step * batch + index * local + np.arange(local, dtype=np.int64)  # [B/P] stream positions
  epochs = pos // num_examples
  indices = np.empty_like(pos)
  for e in np.unique(epochs):
    sel = epochs == e
    indices[sel] = epoch_permutation(seed, int(e), num_examples)[pos[sel] % num_examples]
  return epochs, indices


def example_randomness(epochs: np.ndarray, indices: np.ndarray, *, seed: int, shape: tuple[int, ...],
                       dequantize: bool) -> tuple[np.ndarray, Optional[np.ndarray]]:
  """The flip bits and dequantization noise of the examples at (epoch, index).

  Each example draws from its own ``default_rng([seed, 1, epoch, index])``: first the flip
  bit, then (if ``dequantize``) its noise, so a batch does not depend on how it was split
  between processes, and the flip bit does not depend on ``dequantize``.

  Args:
    epochs: int [b], the epoch of each example.
    indices: int [b], its dataset index.
    seed: the batching seed (any integer).
    shape: (H, W, C) of one example.
    dequantize: whether to draw the noise.

  Returns:
    (flip bool [b], noise float32 [b, H, W, C] in [0, 1) or None).
  """
  seed = _seed_entropy(seed)
  flip = np.zeros(len(indices), bool)  # [b]
  noise = np.empty((len(indices), *shape), np.float32) if dequantize else None
  for j, (e, i) in enumerate(zip(np.asarray(epochs).tolist(), np.asarray(indices).tolist())):
    rng = np.random.default_rng([seed, _STREAM_EXAMPLE, e, i])
    flip[j] = rng.random() < 0.5  # drawn first, so it does not depend on dequantization
    if noise is not None:
      noise[j] = rng.random(shape, dtype=np.float32)
  return flip, noise


def preprocess_batch(images: np.ndarray, epochs: np.ndarray, indices: np.ndarray, *, seed: int, levels: int,
                     random_flip: bool, uniform_dequantization: bool,
                     data_range: tuple[float, float]) -> np.ndarray:
  """Integer-level images of a batch -> model inputs: flip, dequantize, map to ``data_range``.

  The one place where every dataset (embedded, folder, tfds, tfrecords) turns its gathered
  uint8 images into floats.

  Args:
    images: integer [b, H, W, C] in 0..levels−1, the examples at (epochs, indices).
    epochs: int [b] (from ``batch_positions``).
    indices: int [b] dataset indices.
    seed: the batching seed.
    levels: quantization levels of ``images``.
    random_flip: mirror each example whose flip bit is set.
    uniform_dequantization: (k + u) / levels instead of k / (levels − 1).
    data_range: (lo, hi) that [0, 1] is mapped onto.

  Returns:
    float32 [b, H, W, C] in ``data_range``.
  """
  noise = None
  if random_flip or uniform_dequantization:
    flip, noise = example_randomness(epochs, indices, seed=seed, shape=images.shape[1:],
                                     dequantize=uniform_dequantization)
    if random_flip:
      images = flip_horizontal(images, flip)
  x = to_unit_interval(images, levels=levels, noise=noise)  # [b, H, W, C] in [0, 1]
  return to_data_range(x, data_range)


class IndexedDataset:
  """Batching shared by every dataset of random-access integer images (a mixin).

  A subclass provides ``__len__``, ``levels``, ``random_flip``, ``uniform_dequantization``,
  ``data_range`` and ``images_at(indices) -> (uint8 [n, H, W, C], int32 [n])``; this class
  turns them into the deterministic, host-sharded ``batch_at`` and ``iterate``.
  """

  levels: int
  random_flip: bool
  uniform_dequantization: bool
  data_range: tuple[float, float]

  def __len__(self) -> int:
    raise NotImplementedError

  def images_at(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """The stored examples ``indices``: (uint8 [n, H, W, C] in 0..levels−1, int32 [n] labels)."""
    raise NotImplementedError

  def batch_at(self, step: int, *, global_batch_size: int, seed: int, process_index: int = 0,
               process_count: int = 1) -> dict[str, np.ndarray]:
    """This process's share of the global batch of ``step``; a pure function of (seed, step).

    Args:
      step: training step, >= 0.
      global_batch_size: B over all processes, divisible by ``process_count``.
      seed: the batching seed (any integer).
      process_index: this process, 0..P−1 (``jax.process_index()``).
      process_count: P (``jax.process_count()``).

    Returns:
      {"image": float32 [B/P, H, W, C] in ``data_range``, "label": int32 [B/P]}.

    Raises:
      ValueError: a bad argument, named in the message.
    """
    epochs, indices = batch_positions(step, num_examples=len(self), global_batch_size=global_batch_size,
                                      seed=seed, process_index=process_index, process_count=process_count)
    images, labels = self.images_at(indices)  # [b, H, W, C] uint8, [b] int32
    image = preprocess_batch(images, epochs, indices, seed=seed, levels=self.levels, random_flip=self.random_flip,
                             uniform_dequantization=self.uniform_dequantization, data_range=self.data_range)
    return {"image": image, "label": labels}

  def iterate(self, start_step: int = 0, *, global_batch_size: int, seed: int, process_index: int = 0,
              process_count: int = 1, num_steps: Optional[int] = None) -> Iterator[dict[str, np.ndarray]]:
    """``batch_at`` for steps start_step, start_step + 1, ... (``num_steps`` of them, or forever).

    Args:
      start_step: the first step (a resumed run's restored step).
      global_batch_size, seed, process_index, process_count: as in ``batch_at``.
      num_steps: how many batches; None for an endless iterator.

    Returns:
      An iterator over the batches of ``batch_at``; bad arguments raise here, not at the first next().
    """
    batch_positions(start_step, num_examples=len(self), global_batch_size=global_batch_size, seed=seed,
                    process_index=process_index, process_count=process_count)
    if num_steps is not None:
      _check_int(num_steps, "num_steps", 0)
    return self._iterate(start_step, global_batch_size, seed, process_index, process_count, num_steps)

  def _iterate(self, step, global_batch_size, seed, process_index, process_count, num_steps):
    stop = None if num_steps is None else step + num_steps
    while stop is None or step < stop:
      yield self.batch_at(step, global_batch_size=global_batch_size, seed=seed, process_index=process_index,
                          process_count=process_count)
      step += 1


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset(IndexedDataset):
  """An embedded dataset with its preprocessing; the arrays are built on first use and cached.

  Attributes:
    name: a key of ``DATASETS``.
    split: "train" or "test".
    image_size: stored H = W (digits: resized from 8 when different; shapes: drawn at it).
    resize_method: Pillow method for digits at another size, a key of ``RESIZE_METHODS``.
    random_flip: mirror each example with probability ½ in ``batch_at``.
    uniform_dequantization: add U[0, 1) noise per pixel before scaling, (k + u) / levels.
    data_range: (lo, hi) that [0, 1] is mapped onto; (−1, 1) is score_sde's "centered".
    options: dataset-specific options (shapes: num_train, num_test, data_seed, min_contrast).
  """

  name: str
  split: str
  image_size: int
  resize_method: str
  random_flip: bool
  uniform_dequantization: bool
  data_range: tuple[float, float]
  options: tuple[tuple[str, Any], ...]

  @property
  def info(self) -> DatasetInfo:
    """Metadata, known without building the arrays."""
    spec = DATASETS[self.name]
    return DatasetInfo(name=self.name, split=self.split, num_examples=len(self), image_size=self.image_size,
                       channels=spec.channels, levels=self.levels, num_classes=len(spec.class_names),
                       class_names=spec.class_names)

  @property
  def levels(self) -> int:
    """Quantization levels of ``images``: 17 for digits at 8×8 or resized by "nearest", else 256."""
    return DATASETS[self.name].levels(self.image_size, self.resize_method)

  def __len__(self) -> int:
    return DATASETS[self.name].num_examples(self.split, dict(self.options))

  @property
  def images(self) -> np.ndarray:
    """uint8 [N, H, W, C] integer levels 0..levels−1 (read-only)."""
    return _build(self.name, self.split, self.image_size, self.resize_method, self.options)[0]

  @property
  def labels(self) -> np.ndarray:
    """int32 [N] (read-only)."""
    return _build(self.name, self.split, self.image_size, self.resize_method, self.options)[1]

  def as_float(self) -> np.ndarray:
    """float32 [N, H, W, C] in [0, 1], k / (levels − 1): the data without random preprocessing."""
    return to_unit_interval(self.images, levels=self.levels)

  def images_at(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """The examples ``indices``: (uint8 [n, H, W, C] in 0..levels−1, int32 [n] labels)."""
    return self.images[indices], self.labels[indices]


def get_dataset(name: str, *, split: str = "train", image_size: Optional[int] = None,
                resize_method: str = "bilinear", random_flip: Optional[bool] = None,
                uniform_dequantization: bool = False, data_range: tuple[float, float] = (0.0, 1.0),
                **options: Any) -> EmbeddedDataset:
  """An embedded dataset, validated; its arrays are built on first use and cached in memory.

  Args:
    name: "digits" or "shapes".
    split: "train" or "test".
    image_size: H = W; None for the dataset's default (digits 8, shapes 32).
    resize_method: for digits at another size, a key of ``RESIZE_METHODS``.
    random_flip: None for the dataset's default (digits off, shapes on).
    uniform_dequantization: (k + u) / levels instead of k / (levels − 1).
    data_range: (lo, hi) for [0, 1]; (0, 1) or (−1, 1) in practice.
    **options: dataset-specific; shapes: num_train (20000), num_test (2000), data_seed (0),
      min_contrast (0.3, least luma difference of foreground and background).

  Returns:
    An ``EmbeddedDataset``.

  Raises:
    ValueError: an unknown name, split or option, or a bad value; the message names it.
  """
  if name not in DATASETS:
    raise ValueError(f"name: unknown embedded dataset {name!r}; choose one of {sorted(DATASETS)}.")
  spec = DATASETS[name]
  if split not in SPLITS:
    raise ValueError(f"split: unknown {split!r} for dataset {name!r}; choose one of {list(SPLITS)}.")
  unknown = sorted(set(options) - set(spec.options))
  if unknown:
    raise ValueError(f"{unknown[0]}: not an option of dataset {name!r}; "
                     f"its options are {sorted(spec.options) or 'none'}.")
  opts = {**spec.options, **options}
  spec.validate(opts)
  size = spec.default_size if image_size is None else _check_int(image_size, "image_size", 1)
  if resize_method not in RESIZE_METHODS:
    raise ValueError(f"resize_method: unknown {resize_method!r}; choose one of {sorted(RESIZE_METHODS)}.")
  return EmbeddedDataset(name=name, split=split, image_size=size, resize_method=resize_method,
                         random_flip=spec.default_flip if random_flip is None else bool(random_flip),
                         uniform_dequantization=bool(uniform_dequantization),
                         data_range=_check_data_range(data_range), options=tuple(sorted(opts.items())))
