"""EMA length chosen after training: post-hoc EMA (EDM2) on digits against the classic EMA.

    python benchmarks/posthoc_ema.py --root=runs/posthoc --out=runs/posthoc_bench --markdown
    python benchmarks/posthoc_ema.py --synthetic_only      # the reconstruction-error table alone

Trains ``configs/edm/digits.py`` (4000 steps, batch 64) four times from the same seed, changing
only ``config.model.ema``; the EMA never feeds back into training, so the four runs have the
same raw parameters (checked leaf by leaf: one training trajectory, four ways of averaging it):

* ``power``: EDM2's power-function EMA at σ_rel 0.05 and 0.10, snapshots every 100 steps;
* ``classic_0.999``, ``classic_0.9999``: score_sde's constant rate from step 0;
* ``classic_0.999_rampup``: the rate 0.999 with EDM's ramp-up (ratio 0.05; what the digits
  configs now default to).

Then ``--mode=posthoc_ema`` reconstructs the σ_rel of ``--sigma_rels`` at step 4000 from the 40
snapshot steps, and every set of parameters — each reconstruction, each classic EMA and the raw
parameters of the final checkpoint — is sampled by EDM's Heun sampler (18 steps, 35 NFE) with
the seeds of ``--seeds`` (``--num_samples`` each; sample j of every row starts from the same
noise) and scored by in-domain FID (the classifier features of ``--mode=train_classifier``
against the 1500 training digits; see ``benchmarks/recipes.py``).  Rows are cached per run in
``recipe_fid.jsonl``.  Writes results.json, the table and ``fid_vs_sigma_rel.png`` into a new
numbered folder under ``--out``.

The synthetic part needs no training: a random walk of a few arrays over 2000 steps, the power
EMA of σ_rel 0.05 and 0.10 snapshotted every K steps, and each target σ_rel reconstructed and
compared with its directly tracked EMA (‖reconstruction − tracked‖ / ‖tracked − θ_N‖, and the
relative L2 error of the profile), for several K: the error against the number of snapshots.
"""

import argparse
import math
import os
import sys
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import recipes  # pylint: disable=g-import-not-at-top

from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
from score_jax import ema as ema_lib  # pylint: disable=g-import-not-at-top
from score_jax import outputs  # pylint: disable=g-import-not-at-top

CONFIG = "configs/edm/digits.py"
RUNS = {
    "power": ("power EMA σ_rel 0.05, 0.10 (snapshots every 100 steps)",
              dict(kind="power", sigma_rels=(0.05, 0.10), snapshot_freq=100)),
    "classic_0.999": ("classic 0.999 from step 0 (score_sde)", dict(kind="classic", rate=0.999, rampup_ratio=0.0)),
    "classic_0.9999": ("classic 0.9999 from step 0 (score_sde)", dict(kind="classic", rate=0.9999, rampup_ratio=0.0)),
    "classic_0.999_rampup": ("classic 0.999, EDM ramp-up 0.05", dict(kind="classic", rate=0.999, rampup_ratio=0.05)),
}
SAMPLER = ("EDM Heun 18 steps", "edm", dict(num_steps=18, sigma_min=0.002, sigma_max=80.0))
SYNTHETIC_STEPS = 2000
SYNTHETIC_TARGETS = (0.03, 0.05, 0.08, 0.12, 0.15, 0.2)
SYNTHETIC_EVERY = (1000, 400, 200, 100, 50)


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", help="one run folder per EMA variant goes under it")
  p.add_argument("--out", help="results go into a new numbered folder under this one")
  p.add_argument("--sigma_rels", default="0.03,0.04,0.05,0.06,0.08,0.10,0.13,0.16,0.20")
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--classifier_dir", default="", help="default <root>/classifier (trained if missing)")
  p.add_argument("--markdown", action="store_true")
  p.add_argument("--synthetic_only", action="store_true")
  return p.parse_args()


# --- the synthetic table ---------------------------------------------------------------------
def synthetic_table(markdown: bool) -> tuple[str, list[dict[str, Any]]]:
  """Reconstruction error against the number of snapshots on a random walk (closed-form averages:
  ``ema.power_weights``, equal to the tracked update to 1e-11 in tests/test_ema.py)."""
  rng = np.random.default_rng(0)
  n = SYNTHETIC_STEPS
  walk = np.concatenate([np.zeros((1, 17)), np.cumsum(rng.normal(size=(n, 17)), 0)])  # θ_0 … θ_n

  def average(sigma_rel: float, step: int) -> np.ndarray:
    return ema_lib.power_weights(ema_lib.sigma_rel_to_gamma(sigma_rel), step) @ walk[:step + 1]

  rows = []
  for every in SYNTHETIC_EVERY:
    snaps = [(s, sigma) for s in range(every, n + 1, every) for sigma in (0.05, 0.10)]
    sol = ema_lib.solve_posthoc([s for s, _ in snaps], [g for _, g in snaps], n, SYNTHETIC_TARGETS)
    stack = np.stack([average(g, s) for s, g in snaps])  # [S, 17]
    for j, sigma in enumerate(SYNTHETIC_TARGETS):
      want = average(sigma, n)
      error = np.linalg.norm(sol.coefficients[:, j] @ stack - want) / np.linalg.norm(want - walk[-1])
      rows.append({"snapshot_steps": n // every, "every": every, "sigma_rel": sigma, "param_error": float(error),
                   "profile_error": float(sol.relative_error[j])})
  head = ("snapshot steps (every K)",) + tuple(f"σ_rel {s:g}" for s in SYNTHETIC_TARGETS)
  lines = []
  for every in SYNTHETIC_EVERY:
    cells = [r for r in rows if r["every"] == every]
    lines.append((f"{n // every} ({every})",) + tuple(f"{r['param_error']:.4f} / {r['profile_error']:.3f}"
                                                      for r in cells))
  return recipes.format_table(head, lines, markdown), rows


# --- digits ----------------------------------------------------------------------------------
def _config(ema: dict) -> ml_collections.ConfigDict:
  config = recipes.load_config(CONFIG)
  config.model.ema.update(ema)
  return config


def _raw_params(workdir: str, step: int) -> list[np.ndarray]:
  with checkpointing.Checkpointer(workdir, create=False, async_save=False) as ckpt:
    restored = ckpt.restore(None, step=step)
  import jax  # pylint: disable=g-import-not-at-top
  return [np.asarray(a) for a in jax.tree.leaves(restored["params"])]


def equivalent_sigma_rel(ema: ema_lib.EMA, num_steps: int) -> tuple[float, float]:
  """(σ_rel, weight on θ_0) of a classic EMA after ``num_steps``: the std over k/N of its weights."""
  weights, keep = np.zeros(num_steps + 1), 1.0
  for n in range(num_steps, 0, -1):  # weight of θ_n = (1 − β_n) Π_{j>n} β_j
    (beta, one_minus), = ema.betas(n)
    weights[n] = keep * float(one_minus)
    keep *= float(beta)
  weights[0] = keep
  pos = np.arange(num_steps + 1) / num_steps
  return math.sqrt(np.sum(weights * pos ** 2) - np.sum(weights * pos) ** 2), float(weights[0])


def main() -> None:
  args = parse_args()
  text, synthetic = synthetic_table(args.markdown)
  print("Post-hoc reconstruction on a random walk (parameter error / profile error):\n" + text, flush=True)
  if args.synthetic_only:
    return
  if not args.root or not args.out:
    raise SystemExit("--root and --out are needed (or --synthetic_only)")
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  from score_jax.modes import posthoc_ema  # pylint: disable=g-import-not-at-top
  sigma_rels = [float(s) for s in args.sigma_rels.split(",") if s]
  seeds = [int(s) for s in args.seeds.split(",") if s]
  _, out = outputs.next_numbered_dir(args.out)
  classifier_dir = args.classifier_dir or os.path.join(args.root, "classifier")
  configs = {name: _config(ema) for name, (_, ema) in RUNS.items()}
  for config in configs.values():
    config.eval.classifier_dir = classifier_dir
  if not os.path.isfile(os.path.join(classifier_dir, "params.npz")):
    from score_jax.modes import train_classifier  # pylint: disable=g-import-not-at-top
    train_classifier.run(configs["power"], args.root)
  results: dict[str, Any] = {"settings": vars(args), "synthetic": synthetic, "runs": {}, "rows": []}
  final = configs["power"].training.num_steps
  for name, config in configs.items():
    workdir = os.path.join(args.root, name)
    seconds = recipes.train_if_needed(config, workdir)
    results["runs"][name] = {"workdir": workdir, "train_time_s": seconds}
    print(f"{name}: trained in {seconds:.0f} s" if seconds else f"{name}: trained before", flush=True)
  raw = _raw_params(os.path.join(args.root, "power"), final)
  for name in RUNS:
    other = _raw_params(os.path.join(args.root, name), final)
    diff = max(float(np.max(np.abs(a - b))) for a, b in zip(raw, other))
    results["runs"][name]["raw_params_max_abs_diff_to_power"] = diff
    print(f"{name}: raw parameters differ from the power run's by at most {diff:g}", flush=True)

  power = configs["power"]
  power.posthoc.sigma_rel = tuple(sigma_rels)
  solved = posthoc_ema.run(power, os.path.join(args.root, "power")).metrics
  errors = {t["sigma_rel"]: t["relative_error"] for t in solved["targets"]}
  snapshot_bytes = sum(os.path.getsize(os.path.join(dirpath, f))
                       for dirpath, _, files in os.walk(os.path.join(args.root, "power", "ema", "power_0.050", str(final)))
                       for f in files)
  results["snapshot_bytes_per_profile"] = snapshot_bytes
  scorer = recipes.Scorer(power, cache=args.out)
  label, method, options = SAMPLER
  variants = [("raw parameters", "power", "raw", None, None)]
  for name in ("classic_0.999", "classic_0.9999", "classic_0.999_rampup"):
    sigma, init = equivalent_sigma_rel(experiment.build_ema(configs[name]), final)
    variants.append((RUNS[name][0], name, "ema", sigma, init))
  variants += [(f"post-hoc σ_rel {s:.3f}", "power", ema_lib.profile_name("posthoc", s), s, 0.0) for s in sigma_rels]
  for title, name, params, sigma, init in variants:
    fids = []
    for seed in seeds:
      r = recipes.sample_fid(configs[name], os.path.join(args.root, name), final, method, options, seed,
                             args.num_samples, scorer, params=params)
      fids.append(r["fid"])
      print(f"{title} seed {seed}: FID {r['fid']:.2f} ({r['sample_time_s']:.0f} s)", flush=True)
    results["rows"].append({"title": title, "run": name, "params": params, "sigma_rel": sigma, "init_weight": init,
                            "profile_error": errors.get(sigma) if params.startswith("posthoc") else None,
                            "fids": fids, "mean_fid": float(np.mean(fids))})
  outputs.write_json(os.path.join(out, "results.json"), results)
  head = ("parameters", "σ_rel", "weight on θ_0", "profile error", "FID (per seed)", "mean FID")
  lines = [(r["title"], "—" if r["sigma_rel"] is None else f"{r['sigma_rel']:.3f}",
            "—" if r["init_weight"] is None else f"{r['init_weight']:.3g}",
            "—" if r["profile_error"] is None else f"{r['profile_error']:.3f}",
            " / ".join(f"{f:.2f}" for f in r["fids"]), f"{r['mean_fid']:.2f}") for r in results["rows"]]
  table = recipes.format_table(head, lines, args.markdown)
  with open(os.path.join(out, "table.md" if args.markdown else "table.txt"), "x") as f:
    f.write(table + "\n\n" + text + "\n")
  plot(results, os.path.join(out, "fid_vs_sigma_rel.png"))
  print(table)
  print(f"\nA power-EMA snapshot is {snapshot_bytes / 1e6:.2f} MB per tracked profile.\nWrote {out}.")


def plot(results: dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  post = [r for r in results["rows"] if r["params"].startswith("posthoc")]
  ax.errorbar([r["sigma_rel"] for r in post], [r["mean_fid"] for r in post],
              yerr=[[r["mean_fid"] - min(r["fids"]) for r in post], [max(r["fids"]) - r["mean_fid"] for r in post]],
              marker="o", capsize=3, label="post-hoc power EMA (one run, 40 snapshot steps)")
  for r, marker in zip((r for r in results["rows"] if r["params"] == "ema"), ("s", "^", "D")):
    fids = r["fids"]
    ax.errorbar([r["sigma_rel"]], [r["mean_fid"]], yerr=[[r["mean_fid"] - min(fids)], [max(fids) - r["mean_fid"]]],
                marker=marker, linestyle="none", capsize=3,
                label=f"{r['title']} (at its σ_rel, weight {r['init_weight']:.2g} on θ_0)")
  raw = next(r for r in results["rows"] if r["params"] == "raw")
  ax.axhline(raw["mean_fid"], linestyle="--", color="gray", label=raw["title"])
  recipes.save_log_plot(fig, ax, path, "σ_rel (EMA length relative to the run)", "in-domain FID, EDM Heun 35 NFE")


if __name__ == "__main__":
  main()
