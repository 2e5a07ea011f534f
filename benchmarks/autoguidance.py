"""Guidance as of 2024 on digits: classifier-free guidance with and without a limited interval,
and autoguidance by an earlier checkpoint and by a smaller network, for the class-conditional
and the unconditional model.

    python benchmarks/autoguidance.py --root=runs/autoguidance --out=runs/autoguidance_bench --markdown

Under ``--root`` (each trained here if its last checkpoint is missing; checkpoints kept every
1000 steps): ``cond`` (``configs/ve/digits_cond.py``), ``uncond`` (``configs/ve/digits.py``),
and ``cond_small`` / ``uncond_small``, the same with ``nf`` 16 instead of 32 (a quarter of the
parameters).  Every row samples ``--num_samples`` digits per seed of ``--seeds`` (sample j from
the same noise in every row, asking for class j mod 10) with EDM's Heun sampler (18 steps) and
scores them with the in-domain classifier (``benchmarks/guidance.py``'s ``Scorer``):
requested-class accuracy (conditional rows) and FID against the 1500 training digits.  The
interval is in σ̃ (the marginal std of VE, data in [0, 1]): ``--interval`` defaults to EDM2's
(0.28, 5.42] of [−1, 1] images halved for [0, 1] data.  Writes results.json, the table and one
grid per row into a new numbered folder under ``--out``.
"""

import argparse
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # pylint: disable=g-import-not-at-top
import ml_collections  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top
import guidance as guidance_bench  # pylint: disable=g-import-not-at-top
import recipes  # pylint: disable=g-import-not-at-top

from configs import common  # pylint: disable=g-import-not-at-top
from score_jax import experiment  # pylint: disable=g-import-not-at-top
from score_jax import outputs  # pylint: disable=g-import-not-at-top
from score_jax.jobs import control as control_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import params as params_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import sampler as sampler_lib  # pylint: disable=g-import-not-at-top

RUNS = {"cond": ("configs/ve/digits_cond.py", {}), "uncond": ("configs/ve/digits.py", {}),
        "cond_small": ("configs/ve/digits_cond.py", {"nf": 16}), "uncond_small": ("configs/ve/digits.py", {"nf": 16})}
EARLY = 1000


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--root", required=True)
  p.add_argument("--out", required=True)
  p.add_argument("--classifier_dir", default="", help="the in-domain classifier (default <root>/classifier)")
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--seeds", default="0,1")
  p.add_argument("--interval", default="0.14,2.71", help="σ_lo,σ_hi of the limited rows")
  p.add_argument("--markdown", action="store_true")
  return p.parse_args()


def rows(root: str, interval: tuple[float, float]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
  small = {"cond": os.path.join(root, "cond_small"), "uncond": os.path.join(root, "uncond_small")}
  limited = dict(sigma_interval=interval)
  lim = f"σ ∈ ({interval[0]:g}, {interval[1]:g}]"
  out = {"cond": [("conditional, no guidance (w = 0)", dict(kind="none"))]}
  for w in (1.0, 3.0):
    out["cond"] += [(f"CFG w = {w:g}", dict(kind="cfg", w=w)), (f"CFG w = {w:g}, {lim}", dict(kind="cfg", w=w, **limited))]
  for model in ("cond", "uncond"):
    if model == "uncond":
      out["uncond"] = [("unconditional, no guidance", dict(kind="none"))]
    for w in (1.0, 2.0):
      out[model] += [(f"autoguidance w = {w:g} by step {EARLY}", dict(kind="autoguidance", w=w, guide_step=EARLY)),
                     (f"autoguidance w = {w:g} by nf = 16", dict(kind="autoguidance", w=w, guide_workdir=small[model]))]
    out[model].append((f"autoguidance w = 1 by nf = 16, {lim}",
                       dict(kind="autoguidance", w=1.0, guide_workdir=small[model], **limited)))
  return out


def main() -> None:
  args = parse_args()
  interval = tuple(float(v) for v in args.interval.split(","))
  seeds = [int(s) for s in args.seeds.split(",") if s]
  _, out = outputs.next_numbered_dir(args.out)
  configs = {}
  for name, (path, network) in RUNS.items():
    config = recipes.load_config(path)
    config.model.network.update(network)
    configs[name] = config
    seconds = recipes.train_if_needed(config, os.path.join(args.root, name))
    print(f"{name}: {'trained in %.0f s' % seconds if seconds else 'trained before'}", flush=True)
  classifier_dir = args.classifier_dir or os.path.join(args.root, "classifier")
  if not os.path.isfile(os.path.join(classifier_dir, "params.npz")):
    from score_jax.modes import train_classifier  # pylint: disable=g-import-not-at-top
    configs["uncond"].eval.classifier_dir = classifier_dir
    train_classifier.run(configs["uncond"], args.root)
  results: dict[str, Any] = {"settings": vars(args), "rows": []}
  scorer = None
  for model, model_rows in rows(args.root, interval).items():
    config, workdir = configs[model], os.path.join(args.root, model)
    config.eval.classifier_dir = classifier_dir
    config.sampling.method = "edm"
    config.sampling.edm = ml_collections.ConfigDict(dict(num_steps=18))
    config.sampling.num_samples = args.num_samples
    scorer = scorer or guidance_bench.Scorer(config, workdir, cache=args.out)
    step, params = params_lib.load_ema_params(experiment.build(config), workdir)
    for i, (title, fields) in enumerate(model_rows):
      config.guidance.update(common.guidance_section().to_dict())
      config.guidance.update(fields)
      setup = experiment.build(config)
      control = control_lib.from_guidance(experiment.guidance_options(config, setup), setup, workdir,
                                          default=control_lib.network(setup))
      labels = np.arange(args.num_samples, dtype=np.int32) % 10
      draw = sampler_lib.make_sampler(setup, args.num_samples, control)
      scores = []
      for seed in seeds:
        t0 = time.perf_counter()
        x, nfe = draw(params, jax.random.key(seed))
        seconds = time.perf_counter() - t0
        scores.append({"seed": seed, "nfe": int(nfe), "sample_time_s": seconds, **scorer.samples(x, labels)})
        if seed == seeds[0]:
          outputs.save_image_grid(os.path.join(out, f"{model}{i}.png"), x[:100], data_range=setup.data.data_range,
                                  ncol=10, scale=8)
        print(f"{model} | {title} | seed {seed}: accuracy {100 * scores[-1]['accuracy']:.1f} %, "
              f"FID {scores[-1]['fid']:.2f} ({seconds:.0f} s)", flush=True)
      results["rows"].append({"model": model, "title": title, "guidance": fields, "step": step, "scores": scores,
                              "mean_fid": float(np.mean([s["fid"] for s in scores])),
                              "mean_accuracy": float(np.mean([s["accuracy"] for s in scores])),
                              "nfe": scores[0]["nfe"]})
  outputs.write_json(os.path.join(out, "results.json"), results)
  head = ("model", "guidance", "NFE", "requested-class accuracy", "FID (per seed)", "mean FID")
  lines = [(r["model"], r["title"], str(r["nfe"]),
            f"{100 * r['mean_accuracy']:.1f} %" if r["model"] == "cond" else "—",
            " / ".join(f"{s['fid']:.2f}" for s in r["scores"]), f"{r['mean_fid']:.2f}") for r in results["rows"]]
  text = recipes.format_table(head, lines, args.markdown)
  with open(os.path.join(out, "table.md" if args.markdown else "table.txt"), "x") as f:
    f.write(text + "\n")
  print(text)
  print(f"\nWrote {out}.")


if __name__ == "__main__":
  main()
