"""Consistency distillation on digits: the one-, two- and four-step student against its teacher.

    python benchmarks/distill.py --teacher=runs/posthoc/classic_0.999_rampup \\
        --root=runs/distill --out=runs/distill_bench --markdown

The teacher is a finished ``configs/edm/digits.py`` run (``--teacher``; the one of
``benchmarks/posthoc_ema.py`` with EDM's EMA ramp-up is the digits default).  The student is
``configs/distill/digits.py`` with that teacher, distilled into ``<root>/digits_cd`` unless its
final checkpoint is there (checkpoints every 1000 steps kept, no sample grids during the run);
the distillation's wall time and steps per second are recorded when it runs here.

Rows, each sampled with the seeds of ``--seeds`` (``--num_samples`` each; sample j of every row
starts from ``fold_in(key(seed), j)``) and scored by in-domain FID (the classifier features of
``--mode=train_classifier`` against the 1500 training digits, as in ``benchmarks/recipes.py``:
compare rows with each other, not with published Inception FIDs):

* the teacher's EMA with EDM's Heun sampler at 18 steps (35 NFE) and at 500 steps (999 NFE,
  ``--high_seeds``);
* the student's EMA with ``method="consistency"`` at 1, 2 and 4 steps (the sampler's default
  levels on the distillation's grid of 18), two steps restarting on a grid level and between
  two (the first seed), and the one-step FID at every kept checkpoint.

Rows are cached in each run's ``recipe_fid.jsonl``.  Writes results.json, the table and the
FID-against-step plot into a new numbered folder under ``--out``.
"""

import argparse
import json
import os
import sys
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import numpy as np  # pylint: disable=g-import-not-at-top

import recipes  # pylint: disable=g-import-not-at-top
from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
from score_jax import outputs  # pylint: disable=g-import-not-at-top
from score_jax import runs  # pylint: disable=g-import-not-at-top

STUDENT_CONFIG = "configs/distill/digits.py"
TEACHER_LOW = ("teacher: EDM Heun 18 steps", "edm", dict(num_steps=18, sigma_min=0.002, sigma_max=80.0))
TEACHER_HIGH = ("teacher: EDM Heun 500 steps", "edm", dict(num_steps=500, sigma_min=0.002, sigma_max=80.0))
STUDENT_STEPS = (1, 2, 4)


GRID = 18  # configs/distill/digits.py: config.distill.num_scales


def student_sampler(k: int) -> tuple[str, str, dict]:
  """k steps at the sampler's default levels, on the distillation grid (``num_scales``)."""
  return (f"student: consistency {k} step{'s' if k > 1 else ''}", "consistency",
          dict(num_steps=k, sigma_min=0.002, sigma_max=80.0, rho=7.0, num_scales=GRID))


# Two steps restarting on a level of the grid and between two levels (num_scales=None).
ON_AND_OFF_GRID = [
    ("student: 2 steps, restart at σ = 12.91 (a grid level)", "consistency",
     dict(num_steps=2, sigma_min=0.002, sigma_max=80.0, rho=7.0, sigmas=[80.0, 12.9101], num_scales=None)),
    ("student: 2 steps, restart at σ = 15 (between levels 12.91 and 19.35)", "consistency",
     dict(num_steps=2, sigma_min=0.002, sigma_max=80.0, rho=7.0, sigmas=[80.0, 15.0], num_scales=None)),
]


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--teacher", required=True, help="a finished configs/edm/digits.py run")
  p.add_argument("--root", required=True, help="the student's run goes into <root>/digits_cd")
  p.add_argument("--out", required=True, help="results go into a new numbered folder under this one")
  p.add_argument("--steps", type=int, default=0, help="distillation steps (default: the config's)")
  p.add_argument("--num_samples", type=int, default=1000)
  p.add_argument("--seeds", default="0,1,2")
  p.add_argument("--high_seeds", default="0", help="seeds of the 999-NFE teacher row ('' skips it)")
  p.add_argument("--classifier_dir", default="", help="in-domain classifier (default: the teacher's eval.classifier_dir)")
  p.add_argument("--markdown", action="store_true")
  return p.parse_args()


def distill_if_needed(config, workdir: str) -> dict[str, Any]:
  """Distils unless the final checkpoint exists (resuming from the newest one); the wall time
  and rate of every segment that ran here, kept in ``<workdir>/distill_timing.json``."""
  path = os.path.join(workdir, "distill_timing.json")
  timing = json.load(open(path)) if os.path.isfile(path) else {"segments": []}
  steps = config.training.num_steps
  if steps not in checkpointing.saved_steps(workdir):
    from score_jax.modes import distill  # pylint: disable=g-import-not-at-top
    start = max(checkpointing.saved_steps(workdir), default=0)
    t0 = time.perf_counter()
    distill.run(config, workdir)
    seconds = time.perf_counter() - t0
    timing["segments"].append({"from_step": start, "to_step": steps, "seconds": seconds,
                               "steps_per_s": (steps - start) / seconds})
    with open(path + ".tmp", "w") as f:  # the benchmark's own record, rewritten per segment
      json.dump(timing, f, indent=2)
    os.replace(path + ".tmp", path)
  done = [s for s in timing["segments"] if s["to_step"] <= steps]
  if not done or done[0]["from_step"] != 0:
    return {}
  seconds = sum(s["seconds"] for s in done)
  return {"steps": done[-1]["to_step"], "seconds": seconds, "steps_per_s": done[-1]["to_step"] / seconds,
          "batch_size": config.training.batch_size, "segments": done}


def main() -> None:
  args = parse_args()
  seeds = [int(s) for s in args.seeds.split(",") if s]
  high_seeds = [int(s) for s in args.high_seeds.split(",") if s]
  _, out = outputs.next_numbered_dir(args.out)
  teacher_config = runs.load_config(args.teacher)
  classifier_dir = args.classifier_dir or teacher_config.eval.classifier_dir
  if not classifier_dir or not os.path.isfile(os.path.join(classifier_dir, "params.npz")):
    raise SystemExit(f"--classifier_dir: no params.npz in {classifier_dir!r}; train one with "
                     "--mode=train_classifier (benchmarks/recipes.py does).")
  teacher_config.eval.classifier_dir = classifier_dir
  teacher_final = max(checkpointing.saved_steps(args.teacher))
  config = recipes.load_config(STUDENT_CONFIG)
  config.training.max_to_keep = 1000  # every 1000-step checkpoint, for FID against step
  if args.steps:
    config.training.num_steps = args.steps
  config.distill.teacher_workdir = os.path.abspath(args.teacher)
  config.eval.classifier_dir = classifier_dir
  workdir = os.path.join(args.root, "digits_cd")
  timing = distill_if_needed(config, workdir)
  final = config.training.num_steps
  scorer = recipes.Scorer(config, cache=args.out)

  rows: list[dict[str, Any]] = []

  def measure(cfg, run, step, label, method, options, group_seeds):
    for seed in group_seeds:
      r = {"label": label, **recipes.sample_fid(cfg, run, step, method, options, seed, args.num_samples, scorer)}
      print(f"{label} (step {step}) seed {seed}: NFE {r['nfe']}, FID {r['fid']:.2f} ({r['sample_time_s']:.1f} s)",
            flush=True)
      rows.append(r)

  measure(teacher_config, args.teacher, teacher_final, *TEACHER_LOW, seeds)
  for k in STUDENT_STEPS:
    measure(config, workdir, final, *student_sampler(k), seeds)
  for row in ON_AND_OFF_GRID:
    measure(config, workdir, final, *row, seeds[:1])
  curve = []
  for step in sorted(checkpointing.saved_steps(workdir)):
    label, method, options = student_sampler(1)
    r = recipes.sample_fid(config, workdir, step, method, options, seeds[0], args.num_samples, scorer)
    print(f"student step {step}, 1 step: FID {r['fid']:.2f}", flush=True)
    curve.append(r)
  measure(teacher_config, args.teacher, teacher_final, *TEACHER_HIGH, high_seeds)  # the slow row last

  groups: dict[str, list[dict[str, Any]]] = {}
  for r in rows:
    groups.setdefault(r["label"], []).append(r)
  head = ("model and sampler", "NFE", "FID (per seed)", "mean FID")
  lines = [(label, str(g[0]["nfe"]), " / ".join(f"{r['fid']:.2f}" for r in g), f"{np.mean([r['fid'] for r in g]):.2f}")
           for label, g in groups.items()]
  table = recipes.format_table(head, lines, args.markdown)
  teacher_best = min(np.mean([r["fid"] for r in g]) for label, g in groups.items() if label.startswith("teacher"))
  one_step = np.mean([r["fid"] for r in groups[student_sampler(1)[0]]])
  summary = (f"one-step student / teacher's best mean FID = {one_step:.2f} / {teacher_best:.2f} = "
             f"{one_step / teacher_best:.2f}")
  if timing:
    summary += (f"\ndistillation: {timing['steps']} steps of batch {timing['batch_size']} in "
                f"{timing['seconds'] / 60:.1f} min ({timing['steps_per_s']:.2f} steps/s)")
  results = {"settings": vars(args), "teacher": args.teacher, "teacher_step": teacher_final, "student": workdir,
             "timing": timing, "rows": rows, "curve": curve, "ratio": one_step / teacher_best}
  outputs.write_json(os.path.join(out, "results.json"), results)
  with open(os.path.join(out, "table.md" if args.markdown else "table.txt"), "w") as f:
    f.write(table + "\n\n" + summary + "\n")

  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.plot([r["step"] for r in curve], [r["fid"] for r in curve], marker="o", label="student, 1 step (1 NFE)")
  ax.axhline(teacher_best, color="k", ls="--", label="teacher's best (mean over seeds)")
  recipes.save_log_plot(fig, ax, os.path.join(out, "fid_vs_step.png"), "distillation step (batch 64)",
                        f"in-domain FID, seed {seeds[0]}")
  print(table + "\n\n" + summary)
  print(f"\nWrote {out}.")


if __name__ == "__main__":
  main()
