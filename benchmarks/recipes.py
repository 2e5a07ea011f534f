"""Training recipes compared on one network: score_sde's VE, VP DSM, EDM and rectified flow on
digits, each trained from the same seed with the same U-Net, optimizer, batch and step budget
(``configs/{ve,vp,edm,rf}/digits.py``), scored by in-domain FID at ≤ 50 and ~1000 NFE.

    python benchmarks/recipes.py --root=runs/recipes --out=runs/recipes_bench --markdown

Per recipe: trains ``<root>/<recipe>`` unless its final checkpoint is there (checkpoints kept at
every ``snapshot_freq`` = 1000 steps, no sample grids during training), then samples the EMA
parameters with each sampler of ``LOW_NFE`` (the two seeds of ``--seeds``, ``--num_samples``
each) and of ``HIGH_NFE`` (``--high_seeds``), and the FID of the best ≤ 50-NFE sampler at every
checkpoint.  FID uses the in-domain classifier features (``--mode=train_classifier``; trained
into ``<root>/classifier`` if missing) against the 1500 training digits: compare rows with each
other, not with published Inception FIDs.  Sample j of every recipe and sampler starts from
``fold_in(key(seed), j)``.  Each measured row is kept in ``<root>/<recipe>/recipe_fid.jsonl``, so
a rerun (or a run over another --recipes subset) measures only what is missing.  Writes
results.json, a table, and the FID-against-step plot into a new numbered folder under ``--out``.
"""

import argparse
import importlib.util
import json
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
from score_jax import experiment  # pylint: disable=g-import-not-at-top
from score_jax import outputs  # pylint: disable=g-import-not-at-top
from score_jax.jobs import features  # pylint: disable=g-import-not-at-top
from score_jax.jobs import params as params_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

RECIPES = {
    "ve": ("score_sde VE (σ² DSM, t uniform, noise pred.)", "configs/ve/digits.py"),
    "vp": ("VP DSM (ε-prediction, t uniform)", "configs/vp/digits.py"),
    "edm": ("EDM (preconditioning, λ(σ), log-normal σ)", "configs/edm/digits.py"),
    "rf": ("rectified flow (velocity, flow matching)", "configs/rf/digits.py"),
}
EDM_35 = ("EDM Heun 18 steps", "edm", dict(num_steps=18))
# (label, method, options) per recipe at ≤ 50 NFE; EDM Heun (35 NFE) for every recipe, then each
# family's own fast samplers.
LOW_NFE = {
    "ve": [EDM_35, ("PC RD+Langevin 24 steps", "pc", dict(num_steps=24)),
           ("ODE Heun 24 steps", "ode", dict(solver="heun", num_steps=24))],
    "vp": [EDM_35, ("DDIM 50 steps", "ddim", dict(num_steps=50)),
           ("DPM-Solver++(3M) 50 NFE", "dpm_solver", dict(num_steps=50))],
    "edm": [("EDM Heun 18 steps", "edm", dict(num_steps=18, sigma_min=0.002, sigma_max=80.0)),
            ("ODE Heun 24 steps", "ode", dict(solver="heun", num_steps=24))],
    "rf": [("EDM Heun 18 steps, σ ≤ 80", "edm", dict(num_steps=18, sigma_max=80.0)),
           ("ODE Heun 24 steps", "ode", dict(solver="heun", num_steps=24)),
           ("ODE Euler 49 steps", "ode", dict(solver="euler", num_steps=49))],
}
# Each family's ~1000-NFE sampler: score_sde's PC for VE and VP, EDM Heun at 500 steps, the flow ODE
# by Heun at 500 steps.
HIGH_NFE = {
    "ve": [("PC RD+Langevin 500 steps", "pc", dict(num_steps=500))],
    "vp": [("PC Euler–Maruyama 1000 steps", "pc", dict(predictor="euler_maruyama", corrector="none",
                                                       num_steps=1000))],
    "edm": [("EDM Heun 500 steps", "edm", dict(num_steps=500, sigma_min=0.002, sigma_max=80.0))],
    "rf": [("ODE Heun 500 steps", "ode", dict(solver="heun", num_steps=500))],
}


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True, help="one run folder per recipe goes under it")
  p.add_argument("--out", required=True, help="results go into a new numbered folder under this one")
  p.add_argument("--recipes", default=",".join(RECIPES), help="comma-separated subset of " + ",".join(RECIPES))
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--seeds", default="0,1", help="sampling seeds of the ≤ 50-NFE rows")
  p.add_argument("--high_seeds", default="0", help="sampling seeds of the ~1000-NFE rows ('' skips them)")
  p.add_argument("--no_curve", action="store_true", help="skip FID against training step")
  p.add_argument("--classifier_dir", default="", help="in-domain classifier (default <root>/classifier)")
  p.add_argument("--markdown", action="store_true")
  return p.parse_args()


def load_config(path: str) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location("recipe_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.training.max_to_keep = 4  # every 1000-step checkpoint, for FID against step
  config.training.sample_freq = 0
  return config


def train_if_needed(config: ml_collections.ConfigDict, workdir: str) -> float:
  """Trains the recipe unless its last checkpoint exists; returns the seconds spent."""
  if config.training.num_steps in checkpointing.saved_steps(workdir):
    return 0.0
  from score_jax.modes import train  # pylint: disable=g-import-not-at-top
  t0 = time.perf_counter()
  train.run(config, workdir)
  return time.perf_counter() - t0


class Scorer:
  """In-domain FID of samples against the training split (features of ``--mode=train_classifier``)."""

  def __init__(self, config: ml_collections.ConfigDict, cache: str):
    data = experiment.build_image_data(config, "benchmarks/recipes.py")
    self.data, self.opts = data, experiment.eval_options(config)
    self.extractor = features.get_extractor(self.opts, cache, data)
    self.real = features.real_features(cache, data, data.train.info.split, self.extractor, self.opts)

  def fid(self, x: np.ndarray, data: Any) -> float:
    levels = features.to_levels(x, levels=int(data.info.levels), data_range=data.data_range, dequantized=False)
    out = self.extractor(levels)
    return float(features.quality_metrics(out["features"], out["logits"], self.real, self.opts)["fid"])


def _cache_key(step: int, method: str, options: dict, seed: int, n: int, params: str = "ema") -> str:
  return json.dumps([step, method, options, seed, n] + ([] if params == "ema" else [params]), sort_keys=True)


def sample_fid(config, workdir: str, step: int, method: str, options: dict, seed: int, n: int,
               scorer: Scorer, params: str = "ema") -> dict[str, Any]:
  """FID of n samples of the step's EMA parameters (or of ``params``, ``config.sampling.params``);
  rows already measured are read back from ``<workdir>/recipe_fid.jsonl`` (a rerun or a later
  --recipes subset computes only what is new)."""
  cache = os.path.join(workdir, "recipe_fid.jsonl")
  key = _cache_key(step, method, options, seed, n, params)
  if os.path.isfile(cache):
    with open(cache) as f:
      for line in f:
        row = json.loads(line)
        if row["key"] == key:
          return row["result"]
  config = ml_collections.ConfigDict(config.to_dict())
  config.sampling.method = method
  config.sampling[method] = ml_collections.ConfigDict(options)
  config.sampling.params = params
  setup = experiment.build(config)
  found = params_lib.latest_ema_params(setup, workdir, step=step)
  if found is None:
    raise FileNotFoundError(f"no checkpoint of step {step} in {workdir}")
  t0 = time.perf_counter()
  x, nfe = sampler_lib.make_sampler(setup, n)(found[1], jax.random.key(seed))
  seconds = time.perf_counter() - t0
  result = {"step": step, "method": method, "options": options, "params": params, "seed": seed, "nfe": int(nfe),
            "num_samples": n,
            "fid": scorer.fid(x, setup.data), "sample_time_s": seconds}
  with open(cache, "a") as f:
    f.write(json.dumps({"key": key, "result": result}) + "\n")
  return result


DENOISER_SIGMAS = (0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)  # noise std in units of [−1, 1] data


def denoiser_errors(config, workdir: str, step: int) -> dict[str, float]:
  """Held-out denoising error per noise level, comparable across recipes: E‖x̂(0) − x(0)‖²/d in
  [−1, 1] units at x̃ = x(0) + σ z for each σ of DENOISER_SIGMAS, x̂(0) = Tweedie's E[x(0) | x(t)] from
  the recipe's score (``score_fn.from_score``), on the held-out split with one fixed noise draw."""
  from score_jax import score_fn as score_fn_lib  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  setup = experiment.build(config)
  _, params = params_lib.latest_ema_params(setup, workdir, step=step)
  split = setup.data.load_split(setup.data.eval_split)
  levels, _ = split.images_at(np.arange(len(split)))
  lo, hi = setup.data.data_range
  x0 = jnp.asarray(lo + (hi - lo) * levels.astype(np.float32) / (int(setup.data.info.levels) - 1))
  scale = (hi - lo) / 2.0  # data units per [−1, 1] unit
  z = jax.random.normal(jax.random.key(99), x0.shape)
  score = setup.score_fn(params)

  @jax.jit
  def error(sigma):
    t = jnp.full((x0.shape[0],), setup.sde.time_from_noise_level(sigma * scale))
    x_t = setup.sde.perturb(x0, t, z)  # m(t)(x(0) + σ̃(t) z): σ̃(t) = σ in data units
    x_hat = score_fn_lib.from_score(setup.sde, "data", x_t, t, score(x_t, t))
    return jnp.mean(jnp.square((x_hat - x0) / scale))

  return {f"{sigma:g}": float(error(jnp.float32(sigma))) for sigma in DENOISER_SIGMAS}


def best_low(rows: list[dict[str, Any]]) -> dict[str, Any]:
  """The ≤ 50-NFE sampler with the lowest mean FID over seeds."""
  by_label: dict[str, list[float]] = {}
  for r in rows:
    by_label.setdefault(r["label"], []).append(r["fid"])
  label = min(by_label, key=lambda k: np.mean(by_label[k]))
  return next(r for r in rows if r["label"] == label)


def table(results: dict[str, Any], markdown: bool) -> str:
  head = ("recipe", "sampler", "NFE", "FID (per seed)", "mean FID")
  lines = []
  for name, rec in results["recipes"].items():
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rec["low"] + rec["high"]:
      groups.setdefault(r["label"], []).append(r)
    for label, rows in groups.items():
      fids = [r["fid"] for r in rows]
      lines.append((RECIPES[name][0], label, str(rows[0]["nfe"]), " / ".join(f"{f:.2f}" for f in fids),
                    f"{np.mean(fids):.2f}"))
  return format_table(head, lines, markdown)


def format_table(head: tuple, lines: list[tuple], markdown: bool) -> str:
  """Rows as a markdown table, or as plain columns."""
  if markdown:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(c) + " |" for c in lines])
  return "\n".join("  ".join(c) for c in [head] + lines)


def denoiser_table(results: dict[str, Any], markdown: bool) -> str:
  head = ("recipe",) + tuple(f"σ={s:g}" for s in DENOISER_SIGMAS)
  lines = [(RECIPES[n][0],) + tuple(f"{r['denoiser_error'][f'{s:g}']:.4f}" for s in DENOISER_SIGMAS)
           for n, r in results["recipes"].items()]
  return format_table(head, lines, markdown)


def plot_curves(results: dict[str, Any], path: str) -> None:
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, rec in results["recipes"].items():
    curve = rec.get("curve") or []
    if curve:
      ax.plot([r["step"] for r in curve], [r["fid"] for r in curve], marker="o",
              label=f"{RECIPES[name][0]}: {curve[0]['label']} ({curve[0]['nfe']} NFE)")
  save_log_plot(fig, ax, path, "training step (batch 64)", "in-domain FID (EMA parameters)")


def save_log_plot(fig, ax, path: str, xlabel: str, ylabel: str) -> None:
  """Labels, a log y axis, grid and legend; saves ``path`` and closes the figure."""
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_yscale("log")
  ax.grid(True, which="both", alpha=0.3)
  ax.legend(fontsize=6)
  fig.tight_layout()
  fig.savefig(path, dpi=150)
  plt.close(fig)


def main() -> None:
  args = parse_args()
  names = [r for r in args.recipes.split(",") if r]
  unknown = sorted(set(names) - set(RECIPES))
  if unknown:
    raise SystemExit(f"--recipes: unknown {unknown}; choose from {sorted(RECIPES)}")
  seeds = [int(s) for s in args.seeds.split(",") if s]
  high_seeds = [int(s) for s in args.high_seeds.split(",") if s]
  _, out = outputs.next_numbered_dir(args.out)
  classifier_dir = args.classifier_dir or os.path.join(args.root, "classifier")
  base = load_config(RECIPES["ve"][1])
  base.eval.classifier_dir = classifier_dir
  if not os.path.isfile(os.path.join(classifier_dir, "params.npz")):
    from score_jax.modes import train_classifier  # pylint: disable=g-import-not-at-top
    train_classifier.run(base, args.root)
  scorer = Scorer(base, cache=args.out)
  results: dict[str, Any] = {"settings": vars(args), "recipes": {}}
  for name in names:
    config = load_config(RECIPES[name][1])
    config.eval.classifier_dir = classifier_dir
    workdir = os.path.join(args.root, name)
    train_s = train_if_needed(config, workdir)
    final = config.training.num_steps
    rec = {"config": RECIPES[name][1], "train_time_s": train_s, "low": [], "high": [], "curve": []}
    for group, samplers, group_seeds in (("low", LOW_NFE[name], seeds), ("high", HIGH_NFE[name], high_seeds)):
      for label, method, options in samplers:
        for seed in group_seeds:
          r = {"label": label, **sample_fid(config, workdir, final, method, options, seed, args.num_samples, scorer)}
          print(f"{name} step {final} {label} seed {seed}: NFE {r['nfe']}, FID {r['fid']:.2f} "
                f"({r['sample_time_s']:.0f} s)", flush=True)
          rec[group].append(r)
    if not args.no_curve and rec["low"]:
      best = best_low(rec["low"])
      for step in sorted(checkpointing.saved_steps(workdir)):
        if step == final:
          r = dict(best)
        else:
          r = {"label": best["label"], **sample_fid(config, workdir, step, best["method"], best["options"], seeds[0],
                                                     args.num_samples, scorer)}
        print(f"{name} step {step} {best['label']}: FID {r['fid']:.2f}", flush=True)
        rec["curve"].append(r)
    rec["denoiser_error"] = denoiser_errors(config, workdir, final)
    print(f"{name} held-out denoiser error per σ ([−1, 1] units): {rec['denoiser_error']}", flush=True)
    results["recipes"][name] = rec
  outputs.write_json(os.path.join(out, "results.json"), results)  # measured rows are cached per run meanwhile
  text = table(results, args.markdown) + "\n\n" + denoiser_table(results, args.markdown)
  with open(os.path.join(out, "table.md" if args.markdown else "table.txt"), "w") as f:
    f.write(text + "\n")
  if not args.no_curve:
    plot_curves(results, os.path.join(out, "fid_vs_step.png"))
  print(text)
  print(f"\nWrote {out}.")


if __name__ == "__main__":
  main()
