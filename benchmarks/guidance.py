"""Class guidance on digits, measured: for no guidance, each classifier-guidance strategy at a few
scales (the report's §5.3 strategy comparison) and classifier-free guidance at w = 0, 1, 3, the
in-domain classifier's accuracy on the requested class and the in-domain FID of the samples.

    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_noisy_classifier
    python main.py --config=configs/ve/digits_cond.py --workdir=runs/digits_cond --mode=train
    python benchmarks/guidance.py --workdir=runs/digits_ve --cfg_workdir=runs/digits_cond --out=runs/guidance

Sample j asks for class j mod 10, so each class gets num_samples / 10 samples.  Accuracy is the
share of samples that the in-domain classifier (``--mode=train_classifier``, trained on clean
digits; not the guiding classifier) puts in the requested class; FID is against the training
split's in-domain features (1 500 digits).  FID of a few hundred samples is biased upwards:
compare rows with each other and with the real held-out row (297 test digits), not with
published numbers.  Writes results.json and one grid per row (a column per class) into a new
numbered folder under --out; prints the table (Markdown with --markdown).
"""

import argparse
import importlib.util
import os
import sys
import time
from typing import Any, Optional

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
from score_jax import experiment  # pylint: disable=g-import-not-at-top
from score_jax import outputs  # pylint: disable=g-import-not-at-top
from score_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
from score_jax.data import embedded  # pylint: disable=g-import-not-at-top
from score_jax.jobs import control as control_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import features  # pylint: disable=g-import-not-at-top
from score_jax.jobs import params as params_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import sampler as sampler_lib  # pylint: disable=g-import-not-at-top
from configs import common  # pylint: disable=g-import-not-at-top

# (row name, config.guidance fields) of the classifier-guidance table on the unconditional model.
CLASSIFIER_ROWS: tuple[tuple[str, dict[str, Any]], ...] = (
    ("no guidance", dict(kind="none")),
    ("constant λ=1", dict(kind="classifier", strategy="constant", scale=1.0)),
    ("constant λ=3", dict(kind="classifier", strategy="constant", scale=3.0)),
    ("constant λ=10", dict(kind="classifier", strategy="constant", scale=10.0)),
    ("linear λ 10→3", dict(kind="classifier", strategy="linear", scale_start=10.0, scale_end=3.0)),
    ("truncated λ=10, σ∈[0.1, 2]", dict(kind="classifier", strategy="truncated", scale=10.0, sigma_lo=0.1,
                                        sigma_hi=2.0)),
    ("norm_ratio ρ=0.3", dict(kind="classifier", strategy="norm_ratio", ratio=0.3)),
    ("norm_ratio ρ=1", dict(kind="classifier", strategy="norm_ratio", ratio=1.0)),
)
CFG_WEIGHTS = (0.0, 1.0, 3.0)


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--config", default="configs/ve/digits.py", help="the unconditional model's config")
  p.add_argument("--workdir", required=True, help="its run (checkpoints, classifier/, noisy_classifier/)")
  p.add_argument("--step", type=int, default=None, help="checkpoint step (default: the latest)")
  p.add_argument("--cfg_config", default="configs/ve/digits_cond.py", help="the class-conditional model's config")
  p.add_argument("--cfg_workdir", default="", help="its run; empty: skip the CFG table")
  p.add_argument("--cfg_step", type=int, default=None, help="its checkpoint step (default: the latest)")
  p.add_argument("--params", choices=("ema", "raw"), default="ema",
                 help="the checkpoints' EMA parameters, or the raw ones (early checkpoints: the EMA of rate r "
                 "still holds r^step of the initialization)")
  p.add_argument("--classifier_dir", default="", help="the in-domain classifier (default <workdir>/classifier)")
  p.add_argument("--num_samples", type=int, default=200)
  p.add_argument("--pc_steps", type=int, default=200, help="PC sampler steps")
  p.add_argument("--corrector", default="langevin", help="PC corrector ('none': reverse diffusion alone)")
  p.add_argument("--rows", default="", help="comma-separated indices of CLASSIFIER_ROWS to run (default: all; "
                 "'none': only the CFG table)")
  p.add_argument("--out", required=True, help="results go into a new numbered folder under this one")
  p.add_argument("--markdown", action="store_true")
  return p.parse_args()


def _config(path: str, args: argparse.Namespace, classifier_dir: str):
  spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.sampling.pc.num_steps = args.pc_steps
  config.sampling.pc.corrector = args.corrector
  config.eval.classifier_dir = classifier_dir
  return config


class Scorer:
  """In-domain accuracy on the requested class and FID against the training split."""

  def __init__(self, config, workdir: str, cache: str):
    data = experiment.build_image_data(config, "benchmarks/guidance.py")
    self.data, self.opts = data, experiment.eval_options(config)
    self.extractor = features.get_extractor(self.opts, workdir, data)
    self.real = features.real_features(cache, data, data.train.info.split, self.extractor, self.opts)
    self.dequantized = bool(config.data.uniform_dequantization)

  def __call__(self, levels: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    out = self.extractor(levels)
    accuracy = float(np.mean(np.argmax(out["logits"], axis=1) == labels))
    fid = features.quality_metrics(out["features"], out["logits"], self.real, self.opts)["fid"]
    return {"accuracy": accuracy, "fid": fid, "num_images": int(levels.shape[0])}

  def samples(self, x: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    levels = features.to_levels(x, levels=int(self.data.info.levels), data_range=self.data.data_range,
                                dequantized=self.dequantized)
    return self(levels, labels)

  def held_out(self) -> dict[str, Any]:
    split = self.data.load_split(self.data.eval_split)
    images, labels = split.images_at(np.arange(len(split)))
    return self(images, np.asarray(labels))


def run_rows(config, workdir: str, step: Optional[int], rows, scorer: Scorer, out: str, prefix: str,
             key: jax.Array, which: str = "ema") -> list[dict[str, Any]]:
  """Samples and scores every (name, guidance fields) row with the same keys."""
  results = []
  base = experiment.build(config)
  found = params_lib.latest_ema_params(base, workdir, step=step)
  if found is None:
    raise FileNotFoundError(f"no checkpoint{'' if step is None else f' of step {step}'} in {workdir}")
  step, params = found
  if which == "raw":
    repl = sharding_lib.replicated(base.mesh)
    with checkpointing.Checkpointer(workdir, create=False, async_save=False) as ckpt:
      params = ckpt.restore(experiment.abstract_state(base, repl), step=step).params
  for i, (name, fields) in enumerate(rows):
    config.guidance.update(fields)
    setup = experiment.build(config)
    control = control_lib.from_guidance(experiment.guidance_options(config, setup), setup, workdir,
                                        default=control_lib.network(setup))
    n = config.sampling.num_samples
    labels = np.arange(n, dtype=np.int32) % scorer.data.num_classes
    t0 = time.perf_counter()
    x, nfe = sampler_lib.make_sampler(setup, n, control)(params, key)
    seconds = time.perf_counter() - t0
    record = {"row": name, "guidance": fields, "step": step, "params": which, "nfe": nfe, "sample_time_s": seconds,
              **scorer.samples(x, labels)}
    outputs.save_image_grid(os.path.join(out, f"{prefix}{i}.png"), x, data_range=setup.data.data_range,
                            ncol=scorer.data.num_classes, scale=8)
    print(f"{name}: accuracy {100 * record['accuracy']:.1f} %, FID {record['fid']:.2f}, {seconds:.0f} s", flush=True)
    results.append(record)
    config.guidance.update(common.guidance_section().to_dict())  # back to no guidance for the next row
  return results


def table(results: list[dict[str, Any]], markdown: bool) -> str:
  head = ("setting", "requested-class accuracy", "in-domain FID", "samples", "NFE")
  lines = []
  for r in results:
    cells = (r["row"], f"{100 * r['accuracy']:.1f} %", f"{r['fid']:.2f}", str(r["num_images"]),
             str(r.get("nfe", "–")))
    lines.append(cells)
  if markdown:
    return "\n".join(["| " + " | ".join(head) + " |", "|" + "---|" * len(head)] +
                     ["| " + " | ".join(c) + " |" for c in lines])
  width = max(len(c[0]) for c in lines + [head])
  return "\n".join(f"{c[0]:<{width}}  " + "  ".join(f"{x:>12}" for x in c[1:]) for c in [head] + lines)


def main() -> None:
  args = parse_args()
  classifier_dir = args.classifier_dir or os.path.join(args.workdir, "classifier")
  k, out = outputs.next_numbered_dir(args.out)
  config = _config(args.config, args, classifier_dir)
  config.sampling.num_samples = args.num_samples
  scorer = Scorer(config, args.workdir, cache=args.out)
  key = jax.random.key(2026)
  real = dict(row=f"real held-out digits ({scorer.data.eval_split} split)", **scorer.held_out())
  print(f"{real['row']}: accuracy {100 * real['accuracy']:.1f} %, FID {real['fid']:.2f}", flush=True)
  picked = ([] if args.rows == "none" else [int(i) for i in args.rows.split(",")] if args.rows
            else range(len(CLASSIFIER_ROWS)))
  rows = [CLASSIFIER_ROWS[i] for i in picked]
  results = {"settings": vars(args), "real": real,
             "classifier_guidance": run_rows(config, args.workdir, args.step, rows, scorer, out, "classifier", key,
                                                    args.params)}
  if args.cfg_workdir:
    cfg_config = _config(args.cfg_config, args, classifier_dir)
    cfg_config.sampling.num_samples = args.num_samples
    cfg_rows = [(f"CFG w={w:g}", dict(kind="cfg", w=w)) for w in CFG_WEIGHTS]
    results["cfg"] = run_rows(cfg_config, args.cfg_workdir, args.cfg_step, cfg_rows, scorer, out, "cfg", key, args.params)
  outputs.write_json(os.path.join(out, "results.json"), results)
  if results["classifier_guidance"]:
    print(f"\nClassifier guidance ({args.workdir}, step {results['classifier_guidance'][0]['step']}, {args.params} parameters; PC "
          f"{args.pc_steps} steps, corrector {args.corrector}, {args.num_samples} samples):")
    print(table([real] + results["classifier_guidance"], args.markdown))
  if "cfg" in results:
    print(f"\nClassifier-free guidance ({args.cfg_workdir}, step {results['cfg'][0]['step']}):")
    print(table([real] + results["cfg"], args.markdown))
  print(f"\nWrote {out}.")


if __name__ == "__main__":
  main()
