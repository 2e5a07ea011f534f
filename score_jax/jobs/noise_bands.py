"""How a noise-conditional classifier does across noise levels: held-out accuracy and confusion
in equal-width t bands (the report's fig. 5.10, "Confusion matrix across noise levels"), as
records, a markdown table and a picture.
"""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from score_jax import sde as sde_lib

Array = Any
ACCURACY_TABLE = "accuracy_by_sigma"


def band_times(sde: sde_lib.SDE, num_bands: int) -> np.ndarray:
  """Edges [num_bands + 1] of equal-width t bands over [eps, T] (for VE: equal widths in log σ)."""
  return np.linspace(float(sde.eps), float(sde.T), num_bands + 1)


def accuracy_by_band(logit_fn: Callable[[Array, Array], Array], sde: sde_lib.SDE, x0: np.ndarray, labels: np.ndarray,
                     *, key: jax.Array, num_bands: int, repeats: int, num_classes: int, batch_size: int
                     ) -> list[dict[str, Any]]:
  """Accuracy and confusion of a noise-conditional classifier in each σ band.

  Every held-out image is perturbed ``repeats`` times per band, at t uniform in the band.

  Args:
    logit_fn: ``(x(t) [B, ...], t [B]) -> logits [B, K]``.
    sde: the SDE of the perturbations.
    x0: [N, H, W, C] clean images in the model's data range.
    labels: [N] int classes.
    key: randomness of the times and the noise.
    num_bands: number of equal-width t bands.
    repeats: draws per image and band.
    num_classes: K.
    batch_size: images per call of ``logit_fn``.

  Returns:
    One record per band: t and σ̃ at its edges, accuracy, examples, confusion [K, K] (rows:
    true class, columns: predicted; counts).
  """
  edges = band_times(sde, num_bands)

  @jax.jit
  def predict(k, x, lo, hi):
    kt, kz = jax.random.split(k)
    t = jax.random.uniform(kt, (x.shape[0],), x.dtype, lo, hi)  # [B]
    return jnp.argmax(logit_fn(sde.perturb(x, t, jax.random.normal(kz, x.shape, x.dtype)), t), axis=-1)  # [B]

  records = []
  for b in range(num_bands):
    lo, hi = float(edges[b]), float(edges[b + 1])
    preds = []
    for r in range(repeats):
      for start in range(0, x0.shape[0], batch_size):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, b), r), start)
        x = jnp.asarray(x0[start:start + batch_size])
        preds.append(np.asarray(predict(k, x, lo, hi)))
    pred = np.concatenate(preds)  # [repeats · N], repeat-major
    truth = np.tile(labels, repeats)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (truth, pred), 1)
    records.append({"band": b, "t_lo": lo, "t_hi": hi,
                    "sigma_lo": float(sde.noise_level(jnp.float32(lo))), "sigma_hi": float(sde.noise_level(jnp.float32(hi))),
                    "accuracy": float(np.mean(pred == truth)), "num_examples": int(pred.size),
                    "confusion": confusion})
  return records


def accuracy_markdown(records: list[dict[str, Any]]) -> str:
  """The per-band records as a markdown table (band, t, σ̃ range, accuracy)."""
  lines = ["| band | t | σ̃(t) | accuracy |", "|---:|---|---|---:|"]
  for r in records:
    lines.append(f"| {r['band']} | {r['t_lo']:.3f} – {r['t_hi']:.3f} | {r['sigma_lo']:.3g} – {r['sigma_hi']:.3g} "
                 f"| {100 * r['accuracy']:.1f} % |")
  return "\n".join(lines) + "\n"


def plot_accuracy_by_band(path: str, records: list[dict[str, Any]], *, title: str = "", num_matrices: int = 4) -> None:
  """Accuracy against σ̃ and the confusion matrices of ``num_matrices`` bands, lowest to highest
  noise (the report's fig. 5.10, "Confusion matrix across noise levels"), as a new PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  picks = sorted({int(round(i)) for i in np.linspace(0, len(records) - 1, min(num_matrices, len(records)))})
  fig, axes = plt.subplots(1, 1 + len(picks), figsize=(3.2 * (1 + len(picks)), 3.4), dpi=100)
  mid = [np.sqrt(r["sigma_lo"] * r["sigma_hi"]) for r in records]
  ax = axes[0]
  ax.plot(mid, [100 * r["accuracy"] for r in records], "o-")
  ax.set_xscale("log")
  ax.set_ylim(0, 100)
  ax.set_xlabel("σ̃(t) (band centre)")
  ax.set_ylabel("held-out accuracy (%)")
  ax.grid(alpha=0.3)
  for ax, i in zip(axes[1:], picks):
    r = records[i]
    conf = np.asarray(r["confusion"], np.float64)
    ax.imshow(conf / np.maximum(conf.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_title(f"σ̃ {r['sigma_lo']:.2g}–{r['sigma_hi']:.2g}: {100 * r['accuracy']:.0f} %", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(conf.shape[0]))
    ax.set_yticks(range(conf.shape[0]))
    ax.tick_params(labelsize=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with open(path, "xb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)

