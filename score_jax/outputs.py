"""Files a run writes: JSON results, sample pictures, fresh output folders — never overwriting.

Every writer opens its file with mode "x" (create, fail if present): a user's checkpoints,
samples and results are never replaced.  Callers name outputs by step or take a fresh
folder from ``next_numbered_dir``; ``refuse_overwrite`` lets them stop before compiling.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image

Array = Any


def refuse_overwrite(paths: Sequence[str], hint: str) -> None:
  """Raises FileExistsError naming the existing ``paths`` (with ``hint`` on what to do)."""
  existing = [p for p in paths if os.path.exists(p)]
  if existing:
    raise FileExistsError(f"Refusing to overwrite {', '.join(existing)}. {hint}")


def file_digest(path: str) -> str:
  """First 16 hex digits of the SHA-256 of a file: which weights made a set of features."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    for block in iter(lambda: f.read(1 << 22), b""):
      digest.update(block)
  return digest.hexdigest()[:16]


def json_ready(value: Any) -> Any:
  """numpy/jax values -> JSON types; NaN and ±inf become None (strict JSON)."""
  if isinstance(value, dict):
    return {k: json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [json_ready(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return json_ready(np.asarray(value).tolist())
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def write_json(path: str, payload: Mapping[str, Any]) -> None:
  """Writes ``payload`` as indented, sorted, strict JSON to a new file ``path``."""
  with open(path, "x") as f:
    json.dump(json_ready(payload), f, indent=2, sort_keys=True, allow_nan=False)
    f.write("\n")


def append_jsonl(path: str, record: Mapping[str, Any]) -> None:
  """Appends one JSON line (results logs grow; earlier lines are never rewritten).

  A torn last line (a process killed mid-write) is ended first, so the new line stays whole.
  """
  if os.path.isfile(path) and os.path.getsize(path):
    with open(path, "rb") as f:
      f.seek(-1, os.SEEK_END)
      torn = f.read(1) != b"\n"
    if torn:
      with open(path, "a") as f:
        f.write("\n")
  with open(path, "a") as f:
    f.write(json.dumps(json_ready(record), sort_keys=True, allow_nan=False) + "\n")


def write_npz(path: str, **arrays: Any) -> None:
  """``np.savez`` to a new file ``path``."""
  with open(path, "xb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in arrays.items()})


def next_numbered_dir(root: str) -> tuple[int, str]:
  """Creates and returns ``(k, <root>/<k>)`` for the next free integer k (safe against races)."""
  os.makedirs(root, exist_ok=True)
  while True:
    taken = [int(n) for n in os.listdir(root) if n.isdigit()]
    k = max(taken) + 1 if taken else 0
    path = os.path.join(root, str(k))
    try:
      os.mkdir(path)
      return k, path
    except FileExistsError:  # another process took k; try the next one
      continue


# --- pictures -----------------------------------------------------------------------------
def image_grid(images: Array, *, data_range: tuple[float, float] = (0.0, 1.0), ncol: int | None = None,
               padding: int = 2, scale: int = 1) -> np.ndarray:
  """Tiles images into one uint8 picture.

  Args:
    images: [N, H, W, C] with C in {1, 3}, values in ``data_range`` (clipped).
    data_range: (lo, hi) mapped onto 0..255.
    ncol: images per row; default ⌈√N⌉.
    padding: pixels of mid-grey between tiles (grey separates both dark and light images).
    scale: integer nearest-neighbour up-scaling of each tile (8×8 digits are tiny).

  Returns:
    uint8 [rows·(H+p)+p, ncol·(W+p)+p, C] grid.
  """
  x = np.asarray(images, np.float32)
  if x.ndim != 4 or x.shape[-1] not in (1, 3):
    raise ValueError(f"images: expected [N, H, W, C] with C in (1, 3), got shape {x.shape}.")
  lo, hi = data_range
  x = np.clip((x - lo) / (hi - lo), 0.0, 1.0)
  x = np.nan_to_num(x, nan=0.0)
  x = np.round(x * 255.0).astype(np.uint8)  # [N, H, W, C]
  if scale > 1:
    x = x.repeat(scale, axis=1).repeat(scale, axis=2)
  n, h, w, c = x.shape
  ncol = ncol or int(math.ceil(math.sqrt(n)))
  nrow = int(math.ceil(n / ncol))
  grid = np.full((nrow * (h + padding) + padding, ncol * (w + padding) + padding, c), 128, np.uint8)
  for i in range(n):
    r, col = divmod(i, ncol)
    top, left = padding + r * (h + padding), padding + col * (w + padding)
    grid[top:top + h, left:left + w] = x[i]
  return grid


def save_image_grid(path: str, images: Array, **grid_options: Any) -> np.ndarray:
  """Writes ``image_grid(images, **grid_options)`` as a PNG to a new file; returns the grid."""
  grid = image_grid(images, **grid_options)
  picture = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
  with open(path, "xb") as f:
    picture.save(f, format="PNG")
  return grid


def plot_samples(path: str, x: Array, target: Any, *, title: str = "") -> None:
  """Scatter of samples over the target density exp(log p) on a grid (PNG, Agg backend).

  Args:
    path: output file; must not exist.
    x: [N, D] samples.
    target: a target with ``log_prob``, ``sample`` and ``dim`` (the density is drawn for D = 2).
    title: figure title.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  x = np.asarray(x)[:, :2]  # beyond 2-D: the first two coordinates, without the density
  ref = np.asarray(target.sample(jax.random.key(0), 4096))[:, :2]  # [4096, 2] frames the view
  lo, hi = ref.min(axis=0), ref.max(axis=0)
  centre, half = 0.5 * (lo + hi), 0.5 * float(np.max(hi - lo)) * 1.2 + 0.5

  fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
  if target.dim == 2:
    g = np.linspace(-half, half, 200)
    gx, gy = np.meshgrid(centre[0] + g, centre[1] + g)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # [G², 2]
    density = np.exp(np.asarray(jax.jit(target.log_prob)(jnp.asarray(grid)))).reshape(gx.shape)
    ax.contourf(gx, gy, density, levels=20, cmap="Blues")
  ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:orange", alpha=0.4, linewidths=0, label=f"{len(x)} samples")
  if target.dim == 2:
    # Density contours over the samples at 1%, 10% and 50% of the peak keep both visible.
    ax.contour(gx, gy, density, levels=density.max() * np.array([0.01, 0.1, 0.5]), colors="navy",
               linewidths=0.6)
  ax.set_xlim(centre[0] - half, centre[0] + half)
  ax.set_ylim(centre[1] - half, centre[1] + half)
  ax.set_aspect("equal")
  ax.legend(loc="upper right", fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  with open(path, "xb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)
