"""Sweep of the β_a noise-schedule parameter a on a Gaussian target: the KL upper bound of
Strasman et al. (TMLR 2025, arXiv 2402.04650, Theorem 3.1) term by term, against the exact
KL(π_data ‖ law of the samples) with the exact score (``score_jax.analysis.kl``; no Monte
Carlo) of Euler–Maruyama, of ``sampling.exponential``'s exponential integrator (full score
frozen) and of the theorem's exponential integrator (score relative to π∞ frozen).

    python -m score_jax.analysis.sweep_schedule --out=DIR
    python -m score_jax.analysis.sweep_schedule --out=DIR --variances=0.01,1,4 --mean=0.5 \\
        --num_steps=10,50,500 --T=2 --sigma_inf=1.5 --a_min=-6 --a_max=6 --a_num=13

The target is N(μ, U diag(variances) Uᵀ) with U a random rotation (``--rotation_seed``; −1
keeps it diagonal).  The SDE is dx = −β_a(t)/(2σ∞²) x dt + √β_a(t) dw with
β_a(t) = β_min + (β_max − β_min)(e^{at} − 1)/(e^{aT} − 1); every sampler runs N uniform
steps from the prior at T down to t = 0, as in the paper.

Writes DIR/sweep_schedule.png (one panel per N), DIR/sweep_schedule.json and
DIR/sweep_schedule.md; refuses to overwrite any of them.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Any, Optional, Sequence

import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from score_jax import schedules  # pylint: disable=wrong-import-position
from score_jax.analysis import kl  # pylint: disable=wrong-import-position

OUTPUTS = ("sweep_schedule.png", "sweep_schedule.json", "sweep_schedule.md")
METHOD_LABELS = {
    "euler_maruyama": "Euler–Maruyama",
    "exponential": "exp. integrator, full score",
    "exponential_relative": "exp. integrator, relative score (the theorem's)",
    "reverse_diffusion": "reverse diffusion",
    "ancestral": "ancestral",
}


def output_paths(out: str) -> dict[str, str]:
  """{"png", "json", "md"} -> path under ``out``; FileExistsError if any exists already."""
  paths = {name.rsplit(".", 1)[1]: os.path.join(out, name) for name in OUTPUTS}
  existing = [p for p in paths.values() if os.path.exists(p)]
  if existing:
    raise FileExistsError(f"refusing to overwrite {', '.join(existing)}; choose another --out or move them away.")
  return paths


def gaussian_target(variances: Sequence[float], mean: Sequence[float],
                    rotation_seed: int) -> tuple[np.ndarray, np.ndarray]:
  """(μ [D], Σ [D, D]) with Σ = U diag(variances) Uᵀ, U a seeded random rotation (identity if seed < 0)."""
  lam = np.asarray(variances, np.float64)
  if lam.ndim != 1 or lam.size == 0 or np.any(lam <= 0):
    raise ValueError(f"variances must be a non-empty list of numbers > 0, got {list(variances)}.")
  d = lam.size
  mu = np.asarray(mean, np.float64).reshape(-1)
  if mu.size not in (1, d):
    raise ValueError(f"mean must have 1 or {d} entries (one per variance), got {list(mean)}.")
  mu = np.broadcast_to(mu, (d,)).copy()
  u = np.eye(d)
  if rotation_seed >= 0:
    q, r = np.linalg.qr(np.random.default_rng(rotation_seed).normal(size=(d, d)))
    u = q * np.sign(np.diag(r))
  return mu, (u * lam) @ u.T


def sweep(mean: np.ndarray, cov: np.ndarray, a_values: Sequence[float], num_steps: Sequence[int], *, T: float,
          beta_min: float, beta_max: float, sigma_inf: float, eps2: float,
          methods: Sequence[str]) -> list[dict[str, Any]]:
  """One row per (a, N): the bound's terms, its total, the exact KL of each method and KL(p_T ‖ π∞).

  Runs in float64 (``jax.enable_x64``): the exact KL reaches 1e-8 at large N.
  """
  rows = []
  with jax.enable_x64(True):
    for a in a_values:
      sched = schedules.ExponentialSchedule(beta_min=beta_min, beta_max=beta_max, a=float(a), T=T)
      sde = kl.ScaledVPSDE(schedule=sched, T=T, sigma_inf=sigma_inf)
      prior_kl = float(kl.forward_prior_kl(sde, mean, cov))
      for n in num_steps:
        bound = kl.kl_upper_bound(sde, mean, cov, n, eps2)
        row = dict(a=float(a), num_steps=int(n), **{k: float(v) for k, v in bound._asdict().items()},
                   forward_prior_kl=prior_kl)
        row["exact_kl"] = {m: float(kl.exact_kl(sde, mean, cov, n, m)) for m in methods}
        rows.append(row)
  return rows


def _plot(rows: list[dict[str, Any]], methods: Sequence[str], config: dict[str, Any], path: str) -> None:
  ns = sorted({r["num_steps"] for r in rows})
  fig, axes = plt.subplots(1, len(ns), figsize=(max(5.2 * len(ns), 10.0), 4.8), sharey=True, squeeze=False)
  for ax, n in zip(axes[0], ns):
    sel = [r for r in rows if r["num_steps"] == n]
    a = np.array([r["a"] for r in sel])
    ax.plot(a, [r["total"] for r in sel], "k-", lw=2, label="bound (total)")
    ax.plot(a, [r["mixing"] for r in sel], "--", color="tab:purple", lw=1.2, label="mixing term")
    if any(r["approximation"] > 0 for r in sel):
      ax.plot(a, [r["approximation"] for r in sel], "-.", color="tab:green", lw=1.2, label="approximation term")
    ax.plot(a, [r["discretization"] for r in sel], ":", color="tab:red", lw=2, label="discretization term")
    ax.plot(a, [r["forward_prior_kl"] for r in sel], color="0.6", lw=1, label="exact KL(p_T ‖ π∞)")
    for m, style, color in zip(methods, ("o-", "s-", "^-", "v-"), ("tab:blue", "tab:orange", "tab:cyan", "tab:brown")):
      ax.plot(a, [r["exact_kl"][m] for r in sel], style, color=color, ms=3.5,
              label=f"exact KL, {METHOD_LABELS.get(m, m)}")
    ax.set_yscale("log")
    ax.set_xlabel("schedule parameter a")
    ax.set_title(f"N = {n} steps")
    ax.grid(True, which="both", alpha=0.25)
  axes[0, 0].set_ylabel("KL(π_data ‖ π̂)  [nats]")
  handles, labels = axes[0, 0].get_legend_handles_labels()
  fig.legend(handles, labels, loc="lower center", ncol=4, fontsize=8, frameon=False)
  fig.suptitle(f"β_a schedule sweep: D={config['dim']} Gaussian, T={config['T']}, β∈[{config['beta_min']}, "
               f"{config['beta_max']}], σ∞={config['sigma_inf']}", fontsize=10)
  fig.tight_layout(rect=(0, 0.1, 1, 1))
  with open(path, "xb") as f:
    fig.savefig(f, format="png", dpi=110)
  plt.close(fig)


def _table(rows: list[dict[str, Any]], methods: Sequence[str]) -> str:
  head = ["a", "N", "mixing", "approximation", "discretization", "bound", "KL(p_T‖π∞)"]
  head += [f"exact KL {METHOD_LABELS.get(m, m)}" for m in methods]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for r in sorted(rows, key=lambda r: (r["num_steps"], r["a"])):
    cells = [f"{r['a']:g}", str(r["num_steps"])]
    cells += [f"{r[k]:.3e}" for k in ("mixing", "approximation", "discretization", "total", "forward_prior_kl")]
    cells += [f"{r['exact_kl'][m]:.3e}" for m in methods]
    lines.append("| " + " | ".join(cells) + " |")
  lines.append("")
  for n in sorted({r["num_steps"] for r in rows}):
    sel = [r for r in rows if r["num_steps"] == n]
    best = [f"bound at a = {min(sel, key=lambda r: r['total'])['a']:g}"]
    best += [f"{METHOD_LABELS.get(m, m)} at a = {min(sel, key=lambda r: r['exact_kl'][m])['a']:g}" for m in methods]
    lines.append(f"- N = {n}: smallest " + ", ".join(best) + ".")
  return "\n".join(lines) + "\n"


def _floats(text: str) -> list[float]:
  return [float(v) for v in text.split(",") if v.strip()]


def _ints(text: str) -> list[int]:
  return [int(v) for v in text.split(",") if v.strip()]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(prog="python -m score_jax.analysis.sweep_schedule",
                              description=__doc__.split("\n\n")[0])
  p.add_argument("--out", required=True,
                 help="Output folder (created; existing result files are never overwritten).")
  p.add_argument("--variances", type=_floats, default=[0.1, 0.5, 1.0, 2.0], help="Eigenvalues of Σ, comma-separated.")
  p.add_argument("--mean", type=_floats, default=[1.0], help="μ: one value for all coordinates, or one per coordinate.")
  p.add_argument("--rotation_seed", type=int, default=0, help="Seed of the random eigenbasis; -1 for a diagonal Σ.")
  p.add_argument("--num_steps", type=_ints, default=[20, 200], help="Step counts N, comma-separated.")
  p.add_argument("--T", type=float, default=1.0, help="Time horizon.")
  p.add_argument("--beta_min", type=float, default=0.1)
  p.add_argument("--beta_max", type=float, default=20.0)
  p.add_argument("--sigma_inf", type=float, default=1.0, help="Stationary std σ∞ of the forward SDE.")
  p.add_argument("--a_min", type=float, default=-10.0)
  p.add_argument("--a_max", type=float, default=10.0)
  p.add_argument("--a_num", type=int, default=21)
  p.add_argument("--eps2", type=float, default=0.0, help="Score error ε² of the approximation term (0: exact score).")
  p.add_argument("--methods", type=lambda s: [m for m in s.split(",") if m],
                 default=["euler_maruyama", "exponential", "exponential_relative"],
                 help=f"Sampler steps, comma-separated, from {sorted(kl.STEPS)}.")
  args = p.parse_args(argv)
  if args.a_num < 1 or any(n < 1 for n in args.num_steps) or not args.num_steps:
    p.error("--a_num and every --num_steps must be >= 1.")
  for m in args.methods:
    try:
      kl.predictor(m)
    except ValueError as e:
      p.error(str(e))
  return args


def main(argv: Optional[Sequence[str]] = None) -> dict[str, str]:
  """Runs the sweep; returns the paths written."""
  args = parse_args(argv)
  try:
    mean, cov = gaussian_target(args.variances, args.mean, args.rotation_seed)
    os.makedirs(args.out, exist_ok=True)
    paths = output_paths(args.out)
  except (ValueError, FileExistsError) as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from e
  a_values = np.linspace(args.a_min, args.a_max, args.a_num)
  config = dict(dim=int(mean.size), variances=args.variances, mean=mean.tolist(), cov=cov.tolist(),
                rotation_seed=args.rotation_seed, num_steps=args.num_steps, T=args.T, beta_min=args.beta_min,
                beta_max=args.beta_max, sigma_inf=args.sigma_inf, eps2=args.eps2, methods=args.methods,
                a_values=a_values.tolist(), t_end=0.0)
  rows = sweep(mean, cov, a_values, args.num_steps, T=args.T, beta_min=args.beta_min, beta_max=args.beta_max,
               sigma_inf=args.sigma_inf, eps2=args.eps2, methods=args.methods)
  with open(paths["json"], "x") as f:
    json.dump(dict(config=config, rows=rows), f, indent=1)
  with open(paths["md"], "x") as f:
    f.write(_table(rows, args.methods))
  _plot(rows, args.methods, config, paths["png"])
  print(f"wrote {paths['png']}, {paths['json']}, {paths['md']}")
  return paths


if __name__ == "__main__":
  main()
