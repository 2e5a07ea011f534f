"""Sample quality against NFE for every sampler, on targets whose score is exact.

Targets: the 2-D MG25 grid, a 16-D Gaussian mixture (``mixture_nd``) and a 64-D correlated
Gaussian (``correlated_gaussian``); SDEs VE and VP.  With the exact score the only errors
left are the sampler's own, so the curves compare samplers and nothing else.

Quality figures, chosen to be stable between seeds:
* mixtures: per-mode errors (nearest-mode assignment) averaged over the modes — the share
  error |share/w − 1|, the mean error max_d |mean − μ| and the std error max_d |std/σ − 1|.
  The worst mode (what the sampler tests bound) swings with the few samples of the smallest
  modes; the average over modes does not.  Sliced W2 is also given, as mean ± sd over seeds.
* Gaussian: KL(fit ‖ target) of the Gaussian fitted to the samples in the target's
  eigenbasis (every sampler here acts per eigen-coordinate on a Gaussian with the exact
  score).
Exact target samples scored the same way give each figure's floor (the "exact samples" row).

    python benchmarks/nfe_quality.py --out=bench_out                   # about 15 min per SDE on 2 CPU cores
    python benchmarks/nfe_quality.py --out=bench_out --budgets=quick   # two budgets per sampler
    python benchmarks/nfe_quality.py --out=bench_out --budgets=dense   # NFE 10..2000 densely (hours on a CPU)

Writes ``<out>/nfe_quality.md`` (table) and ``<out>/nfe_quality.png`` (plot); refuses to
overwrite either.
"""

import json
import os
import time

from absl import app, flags
import jax
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.data import toy
from score_jax.metrics.samples import mode_statistics, sliced_wasserstein

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder (created; existing result files are never overwritten).")
flags.DEFINE_list("targets", ["grid25", "mixture_nd", "correlated_gaussian"], "Targets from score_jax.data.toy.")
flags.DEFINE_list("sdes", ["ve", "vp"], "SDEs.")
flags.DEFINE_integer("num_samples", 4000, "Samples per run.")
flags.DEFINE_integer("seeds", 2, "Repetitions with new keys.")
flags.DEFINE_enum("budgets", "default", ["quick", "default", "dense"], "How many NFE budgets per sampler.")
flags.DEFINE_list("samplers", None, "Only these sampler labels (default: all).")

def sampler_grid(budget: str):
  """label -> (method, SDE kinds, [options for each budget]); ``budget`` picks how many."""
  pick = lambda quick, default, dense: dict(quick=quick, default=default, dense=dense)[budget]
  steps = pick([20, 1000], [10, 50, 200, 1000, 2000], [10, 20, 50, 100, 200, 500, 1000, 2000])
  grid = {
      "reverse diffusion": ("pc", ("ve", "vp"), [dict(predictor="reverse_diffusion", corrector="none", num_steps=n)
                                                 for n in steps]),
      "Euler-Maruyama": ("pc", ("ve", "vp"), [dict(predictor="euler_maruyama", corrector="none", num_steps=n)
                                              for n in steps]),
      "rev-diff + Langevin": ("pc", ("ve", "vp"), [dict(predictor="reverse_diffusion", corrector="langevin", num_steps=n)
                                                   for n in pick([10, 500], [10, 50, 250, 1000],
                                                                 [5, 10, 25, 50, 100, 250, 500, 1000])]),
      "ODE Tsit5": ("ode", ("ve", "vp"), [dict(solver="tsit5", rtol=r, atol=r)
                                          for r in pick([1e-2, 1e-4], [1e-2, 1e-3, 1e-5], [1e-1, 1e-2, 1e-3, 1e-4, 1e-5])]),
      "adaptive (GGF)": ("adaptive", ("ve", "vp"), [dict(rel_tol=r) for r in pick([0.05, 0.01], [0.1, 0.05, 0.02, 0.01],
                                                                                 [0.1, 0.05, 0.03, 0.02, 0.01, 0.005])]),
      "EDM Heun": ("edm", ("ve", "vp"), [dict(num_steps=n) for n in pick([10, 25], [5, 10, 18, 25, 50],
                                                                         [5, 8, 13, 18, 25, 50, 100])]),
      "DPM-Solver++ 2M": ("dpm_solver", ("vp",), [dict(order=2, variant="multistep", num_steps=n)
                                                  for n in pick([10, 25], [10, 20, 50], [5, 10, 15, 20, 25, 50, 100])]),
      "DPM-Solver++ 3S": ("dpm_solver", ("vp",), [dict(order=3, variant="singlestep", num_steps=n)
                                                  for n in pick([12, 24], [12, 24, 48], [6, 12, 18, 24, 48, 99])]),
      "DDIM": ("ddim", ("vp",), [dict(num_steps=n, eta=0.0) for n in pick([10, 50], [20, 50, 100, 200],
                                                                          [10, 20, 50, 100, 200])]),
      "exponential integrator": ("exponential", ("vp",), [dict(num_steps=n) for n in pick([20, 1000], [20, 100, 500, 1000],
                                                                                          steps)]),
  }
  if FLAGS.samplers:
    grid = {k: v for k, v in grid.items() if k in FLAGS.samplers}
  return {k: v for k, v in grid.items() if v[0] in sampling.METHODS}


def mixture_quality(x, target, key):
  stats = mode_statistics(x, target)
  ref = target.sample(jax.random.fold_in(key, 99), x.shape[0])
  return dict(share=float(np.mean(stats["share_rel_error"])), mean=float(np.nanmean(stats["mean_error"])),
              std=float(np.nanmean(stats["std_rel_error"])), outliers=stats["outlier_fraction"],
              sw2=sliced_wasserstein(jax.random.fold_in(key, 98), x, ref))


def gaussian_quality(x, target, key):
  """KL(N(m̂, diag v̂) ‖ N(μ, diag λ)) in the target's eigenbasis."""
  del key
  u = np.asarray(target.eigenvectors, np.float64)
  y = np.asarray(x, np.float64) @ u
  mu = np.asarray(target.mean, np.float64) @ u
  lam = np.asarray(target.eigenvalues, np.float64)
  m, v = y.mean(0), y.var(0, ddof=1)
  kl = 0.5 * np.sum(v / lam - 1.0 - np.log(v / lam) + (m - mu) ** 2 / lam)
  return dict(kl=float(kl) if np.isfinite(kl) else float("inf"))


def evaluate(target, x, key):
  x = np.asarray(x)
  if not np.all(np.isfinite(x)):
    nan = float("nan")
    return dict(kl=nan) if isinstance(target, toy.Gaussian) else dict(share=nan, mean=nan, std=nan, outliers=nan,
                                                                       sw2=nan)
  return (gaussian_quality if isinstance(target, toy.Gaussian) else mixture_quality)(x, target, key)


def summarize(runs):
  keys = runs[0].keys()
  return {k: (float(np.mean([r[k] for r in runs])), float(np.std([r[k] for r in runs]))) for k in keys}


def main(_):
  if not FLAGS.out:
    raise app.UsageError("--out=DIR is required.")
  os.makedirs(FLAGS.out, exist_ok=True)
  paths = {ext: os.path.join(FLAGS.out, f"nfe_quality.{ext}") for ext in ("md", "png", "json")}
  for p in paths.values():
    if os.path.exists(p):
      raise SystemExit(f"{p} exists; choose another --out (results are never overwritten).")
  grid = sampler_grid(FLAGS.budgets)
  results = []
  n = FLAGS.num_samples
  print(f"device {jax.devices()[0].device_kind}, {n} samples, {FLAGS.seeds} seeds, samplers {list(grid)}")
  for target_name in FLAGS.targets:
    target = toy.get_target(target_name)
    for sde_name in FLAGS.sdes:
      sde = sde_lib.get_sde(sde_name)
      score_fn = target.score_fn(sde)
      # The floor: exact samples scored the same way.
      floor = summarize([evaluate(target, target.sample(jax.random.PRNGKey(1000 + s), n), jax.random.PRNGKey(s))
                         for s in range(FLAGS.seeds)])
      results.append(dict(target=target_name, sde=sde_name, sampler="exact samples", nfe=0, options={}, **floor))
      for label, (method, kinds, budgets) in grid.items():
        if sde_name not in kinds:
          continue
        for opts in budgets:
          t0 = time.perf_counter()
          runs, nfes = [], []
          for s in range(FLAGS.seeds):
            x, nfe = sampling.sample(jax.random.PRNGKey(s), sde, score_fn, (n, target.dim), method, **opts)
            runs.append(evaluate(target, x, jax.random.PRNGKey(s)))
            nfes.append(int(nfe))
          row = dict(target=target_name, sde=sde_name, sampler=label, nfe=int(np.mean(nfes)), options=opts,
                     seconds=time.perf_counter() - t0, **summarize(runs))
          results.append(row)
          print(_line(row), flush=True)
  with open(paths["json"], "x") as f:
    json.dump(results, f, indent=1)
  with open(paths["md"], "x") as f:
    f.write(_table(results))
  _plot(results, paths["png"])
  print(f"wrote {paths['md']}, {paths['png']}, {paths['json']}")


def _fmt(row, key):
  if key not in row:
    return "–"
  m, s = row[key]
  return f"{m:.3f} ± {s:.3f}"


def _line(row):
  q = (f"KL {_fmt(row, 'kl')}" if "kl" in row else
       f"share {_fmt(row, 'share')} mean {_fmt(row, 'mean')} std {_fmt(row, 'std')} SW2 {_fmt(row, 'sw2')}")
  return f"{row['target']:>20} {row['sde']:>3} {row['sampler']:>24} NFE {row['nfe']:>5}  {q}"


def _table(results):
  lines = ["| target | SDE | sampler | NFE | share err | mean err | std err | outliers | sliced W2 | KL |",
           "|---|---|---|---|---|---|---|---|---|---|"]
  for r in results:
    lines.append(f"| {r['target']} | {r['sde']} | {r['sampler']} | {r['nfe']} | "
                 f"{_fmt(r, 'share')} | {_fmt(r, 'mean')} | {_fmt(r, 'std')} | {_fmt(r, 'outliers')} | {_fmt(r, 'sw2')} | {_fmt(r, 'kl')} |")
  return "\n".join(lines) + "\n"


def _plot(results, path):
  panels = sorted({(r["target"], r["sde"]) for r in results}, key=lambda p: (FLAGS.targets.index(p[0]), p[1]))
  fig, axes = plt.subplots(len(FLAGS.targets), len(FLAGS.sdes), figsize=(6 * len(FLAGS.sdes), 4 * len(FLAGS.targets)),
                           squeeze=False)
  for target_name, sde_name in panels:
    ax = axes[FLAGS.targets.index(target_name)][FLAGS.sdes.index(sde_name)]
    rows = [r for r in results if r["target"] == target_name and r["sde"] == sde_name]
    key = "kl" if "kl" in rows[0] else "std"
    for label in dict.fromkeys(r["sampler"] for r in rows):
      pts = sorted((r["nfe"], r[key][0], r[key][1]) for r in rows if r["sampler"] == label)
      if label == "exact samples":
        ax.axhline(pts[0][1], color="k", ls=":", label="exact samples")
        continue
      nfe, mean, sd = map(np.array, zip(*pts))
      ax.errorbar(nfe, np.minimum(mean, 1e2), yerr=sd, marker="o", ms=3, capsize=2, label=label)
    ax.set(xscale="log", yscale="log", xlabel="NFE", title=f"{target_name}, {sde_name.upper()}",
           ylabel="KL(fit ‖ target)" if key == "kl" else "mean per-mode std error")
    ax.grid(alpha=0.3, which="both")
  axes[0][-1].legend(fontsize=7, loc="upper right")
  fig.tight_layout()
  fig.savefig(path, dpi=110)


if __name__ == "__main__":
  app.run(main)
