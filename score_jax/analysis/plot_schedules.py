"""ᾱ(t), β(t), SNR and log-SNR of every noise schedule in ``score_jax.schedules`` on a VP SDE.

    python -m score_jax.analysis.plot_schedules --out=DIR
    python -m score_jax.analysis.plot_schedules --out=DIR --T=2 --a_values=-5,5

Each schedule is built with its default parameters (and the given T); the exponential family
β_a of Strasman et al. (arXiv 2402.04650) is drawn for several a (a = 0 is the linear
schedule).  On the VP SDE dx = −½β(t) x dt + √β(t) dw: ᾱ(t) = e^{−B(t)} with B = ∫₀ᵗ β is the
squared mean coefficient, SNR(t) = ᾱ/(1 − ᾱ) and log-SNR = log ᾱ − log(1 − ᾱ).

Writes DIR/schedules.png (2×2 panels); refuses to overwrite it.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Optional, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from score_jax import schedules  # pylint: disable=wrong-import-position
from score_jax import sde as sde_lib  # pylint: disable=wrong-import-position

OUTPUT = "schedules.png"
DEFAULT_A_VALUES = (-10.0, -4.0, 4.0, 10.0)


def schedule_curves(T: float = 1.0, a_values: Sequence[float] = DEFAULT_A_VALUES,
                    num_points: int = 400) -> tuple[np.ndarray, dict[str, dict[str, np.ndarray]]]:
  """The curves of every schedule on a VP SDE.

  Args:
    T: time horizon of every schedule.
    a_values: parameters of the exponential family to draw.
    num_points: times in (0, T]; the first is T/1000, where the SNR is still finite.

  Returns:
    (t [P], {label: {"alpha_bar", "beta", "snr", "log_snr": [P]}}).
  """
  t = np.linspace(T * 1e-3, T, num_points)
  scheds = {}
  for name, cls in schedules.SCHEDULES.items():
    if name == "exponential":
      for a in a_values:
        scheds[f"exponential a={a:g}"] = cls(a=float(a), T=T)
    else:
      scheds[name] = cls(T=T)
  curves = {}
  for label, sched in scheds.items():
    sde = sde_lib.VPSDE(schedule=sched, T=T)
    curves[label] = dict(alpha_bar=np.asarray(sde.mean_coeff(t)) ** 2, beta=np.asarray(sde.beta(t)),
                         snr=np.asarray(sde.snr(t)), log_snr=np.asarray(sde.log_snr(t)))
  return t, curves


def plot(t: np.ndarray, curves: dict[str, dict[str, np.ndarray]], path: str, T: float) -> None:
  """Draws the 2×2 panels into a new file ``path`` (mode "x": never overwrites)."""
  fig, axes = plt.subplots(2, 2, figsize=(10, 7.5), sharex=True)
  panels = [("alpha_bar", "ᾱ(t) = exp(−∫₀ᵗ β)", "linear"), ("beta", "β(t)", "log"),
            ("snr", "SNR(t) = ᾱ/(1 − ᾱ)", "log"), ("log_snr", "log-SNR(t)", "linear")]
  for ax, (key, title, scale) in zip(axes.ravel(), panels):
    for label, c in curves.items():
      style = "--" if label.startswith("exponential") else "-"
      ax.plot(t, c[key], style, lw=1.4, label=label)
    ax.set_title(title)
    ax.set_yscale(scale)
    ax.grid(True, which="both", alpha=0.25)
  for ax in axes[1]:
    ax.set_xlabel("t")
  axes[0, 0].legend(fontsize=8)
  fig.suptitle(f"Noise schedules on the VP SDE (default parameters, T = {T:g})", fontsize=11)
  fig.tight_layout()
  with open(path, "xb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m score_jax.analysis.plot_schedules",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True,
                 help="Output folder (created; an existing schedules.png is never overwritten).")
  p.add_argument("--T", type=float, default=1.0, help="Time horizon of every schedule.")
  p.add_argument("--a_values", type=lambda s: [float(v) for v in s.split(",") if v.strip()],
                 default=list(DEFAULT_A_VALUES), help="Parameters a of the exponential schedules, comma-separated.")
  return p.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> str:
  """Writes the plot; returns its path."""
  args = parse_args(argv)
  path = os.path.join(args.out, OUTPUT)
  if os.path.exists(path):
    print(f"error: refusing to overwrite {path}; choose another --out or move it away.", file=sys.stderr)
    raise SystemExit(2)
  try:
    t, curves = schedule_curves(args.T, args.a_values)
  except ValueError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from e
  os.makedirs(args.out, exist_ok=True)
  plot(t, curves, path, args.T)
  print(f"wrote {path}")
  return path


if __name__ == "__main__":
  main()
