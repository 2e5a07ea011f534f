"""Inpainting masks: bool [S, S] arrays, True where a pixel is to be filled.

``box`` (a rectangle, default the centred square of half the side), ``half`` (left, right,
top or bottom), ``random_patches`` (squares placed from ``(mask_seed, input index)``, so one
image always gets the same patches) and ``png`` (an image-sized mask file, white = fill, the
convention of diffusers' inpainting pipelines).  Each raises ``ConfigError`` naming its
``config.controllable`` field.
"""

from __future__ import annotations

import os
from typing import Optional

import numpy as np
from PIL import Image

from score_jax import experiment

check = experiment.check
FIELD = "config.controllable"
HALVES = experiment.control_options.HALVES


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


def make_fill_masks(opts: experiment.ControllableOptions, image_size: int, indices: np.ndarray) -> np.ndarray:
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

