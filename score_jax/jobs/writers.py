"""What jobs write, decided once: sample grids (their layout), the samples' npz and metrics
JSON, TensorBoard scalars, and the mode's ``Output``.

Writers never overwrite (``score_jax.outputs`` opens every file with mode "x") and only
process 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Any, Mapping, Optional

from absl import logging
import jax
import numpy as np

from score_jax import experiment
from score_jax import outputs
from score_jax.metrics import samples as sample_metrics

Array = Any


@dataclasses.dataclass(frozen=True)
class Output:
  """What a mode returns: the folder it wrote and what it measured there.

  Attributes:
    folder: the output folder (``samples/<k>``, ``inpaint/<k>``, ``eval``, ``classifier``, ...;
      the workdir itself for training).
    metrics: the metrics written there (metrics.json, info.json, or the records of
      eval/results.jsonl as {"records": [...]}).
  """

  folder: str
  metrics: Mapping[str, Any]


def main_process() -> bool:
  return jax.process_index() == 0


def grid_scale(image_size: int) -> int:
  """Up-scaling that makes a tile at least ~64 pixels wide (8×8 digits: ×8)."""
  return max(1, 64 // image_size)


def grid_columns(labels: Optional[np.ndarray]) -> Optional[int]:
  """One column per class when the samples ask for 2 … 16 classes, else None (a square grid)."""
  classes = 0 if labels is None else len(np.unique(labels))
  return classes if 2 <= classes <= 16 else None


def save_grid(path: str, x: np.ndarray, data_range: tuple[float, float], *, labels: Optional[np.ndarray] = None,
              ncol: Optional[int] = None) -> None:
  """Images [N, H, W, C] as a PNG grid: ``ncol`` columns, else one per requested class."""
  outputs.save_image_grid(path, x, data_range=data_range, ncol=ncol or grid_columns(labels),
                          scale=grid_scale(x.shape[1]))


def write_samples(setup: experiment.Setup, x: np.ndarray, *, png: str, npz: Optional[str] = None,
                  metrics_json: Optional[str] = None, title: str = "", quality_key: Optional[jax.Array] = None,
                  extra: Mapping[str, Any] = (), labels: Optional[np.ndarray] = None) -> dict[str, Any]:
  """Writes samples ``x`` as a picture (grid or scatter), optionally an npz and a metrics JSON.

  ``labels`` (int [N]) are the classes the samples were drawn for (``Control.sample_labels``):
  saved in the npz; a grid has one column per class when there are 2 … 16 of them.  A toy
  target's samples are scored against the exact target with ``quality_key``
  (``jobs.keys.quality_key``).  Returns the metrics (toy targets: sample quality; images: ``extra``).
  """
  metrics = dict(extra)
  data = setup.data
  if isinstance(data, experiment.ToyData) and quality_key is not None:
    metrics.update(sample_metrics.target_quality(quality_key, x, data.target))
  if not main_process():
    return metrics
  if isinstance(data, experiment.ToyData):
    summary = f"SW2 {metrics['sliced_w2']:.3f}" if "sliced_w2" in metrics else ""
    if "coverage" in metrics:
      summary += f", coverage {metrics['coverage']:.2f}"
    outputs.plot_samples(png, x, data.target, title=f"{title}\n{summary}".strip())
  else:
    save_grid(png, x, data.data_range, labels=labels)
  if npz is not None:
    arrays = {"samples": x}
    if labels is not None:
      arrays["labels"] = labels
    if "step" in metrics:
      arrays["step"] = np.asarray(metrics["step"])
    outputs.write_npz(npz, **arrays)
  if metrics_json is not None:
    outputs.write_json(metrics_json, metrics)
  logging.info("Wrote %s.", ", ".join(p for p in (png, npz, metrics_json) if p))
  return metrics


class Scalars:
  """TensorBoard scalars of a job (process 0 only; tensorboardX, no TensorFlow)."""

  def __init__(self, folder: str, flush_secs: int = 10):
    self._writer = None
    if main_process():
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(folder, flush_secs=flush_secs)

  @property
  def logdir(self) -> Optional[str]:
    return None if self._writer is None else self._writer.logdir

  def scalars(self, prefix: str, values: Mapping[str, Any], step: int, *, skip: tuple[str, ...] = (),
              finite_only: bool = True) -> None:
    """Every number of ``values`` (bools excluded; NaN and ±inf too unless ``finite_only`` is
    False) as ``<prefix>/<name>`` at ``step``."""
    if self._writer is None:
      return
    for name, value in values.items():
      if name in skip or not isinstance(value, (int, float)) or isinstance(value, bool):
        continue
      if math.isfinite(value) or not finite_only:
        self._writer.add_scalar(f"{prefix}/{name}", value, step)

  def image(self, tag: str, grid: np.ndarray, step: int) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, grid if grid.shape[-1] == 3 else np.repeat(grid, 3, axis=-1), step, dataformats="HWC")

  def flush(self) -> None:
    if self._writer is not None:
      self._writer.flush()

  def close(self) -> None:
    if self._writer is not None:
      try:
        self._writer.close()
      except OSError as e:  # e.g. a full disk: reported, not raised over the error that stopped the run
        logging.warning("TensorBoard scalars in %s not flushed: %s", self._writer.logdir, e)


def numbered_folder(workdir: str, name: str) -> tuple[int, str]:
  """A new ``<workdir>/<name>/<k>`` folder (the next free k) for one run of a mode."""
  return outputs.next_numbered_dir(os.path.join(workdir, name))
