"""The sanity table of an evaluated run: in-domain FID / KID / IS / precision-recall of real
held-out images and of uniform noise (``<workdir>/eval/reference.json``) beside those of every
evaluated checkpoint (``<workdir>/eval/results.jsonl``), with bits/dim and the held-out loss.

    python main.py --config=configs/ve/digits.py --workdir=runs/digits --mode=train_classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits --mode=eval
    python benchmarks/eval_sanity.py --workdir=runs/digits [--markdown]

Reads the two files only (run ``--mode=eval`` first); every row is scored against the same
cached training-split statistics, so a working model sits between noise and real data, and
moves towards the real row as it trains.
"""

import argparse
import json
import math
import os
import sys
from typing import Any, Optional

COLUMNS = (("images", "num_images", "{:d}"), ("FID", "fid", "{:.2f}"), ("KID", "kid", "{:.3g}"),
           ("IS", "is", "{:.2f}"), ("precision", "precision", "{:.3f}"), ("recall", "recall", "{:.3f}"),
           ("bits/dim", "bpd", "{:.3f}"), ("test loss", "loss", "{:.4f}"), ("NFE", "nfe", "{:d}"))


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--workdir", required=True, help="a run evaluated with --mode=eval")
  p.add_argument("--markdown", action="store_true", help="print a Markdown table (for README)")
  return p.parse_args()


def _cell(value: Optional[Any], fmt: str) -> str:
  if value is None or (isinstance(value, float) and not math.isfinite(value)):
    return "–"
  return fmt.format(int(value) if fmt == "{:d}" else value)


def rows(workdir: str) -> list[tuple[str, dict[str, Any]]]:
  """(label, metrics) for real held-out data, noise and each evaluated checkpoint."""
  eval_dir = os.path.join(workdir, "eval")
  out = []
  ref_path = os.path.join(eval_dir, "reference.json")
  if os.path.isfile(ref_path):
    with open(ref_path) as f:
      ref = json.load(f)
    out.append((f"real held-out ({ref.get('heldout_split', 'test')} split)", ref["real_heldout"]))
    if "real_train_subset" in ref:
      out.append(("real training images", ref["real_train_subset"]))
    out.append(("uniform noise", ref["noise"]))
  results = os.path.join(eval_dir, "results.jsonl")
  if os.path.isfile(results):
    with open(results) as f:
      for line in f:
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          continue  # a torn line of a killed eval
        out.append((f"EMA model, step {record['step']}", dict(record, num_images=record.get("num_samples"))))
  return out


def main() -> None:
  args = parse_args()
  table = rows(args.workdir)
  if not table:
    sys.exit(f"error: nothing evaluated in {args.workdir}/eval: run main.py --mode=eval with --workdir={args.workdir}.")
  header = ["", *(name for name, _, _ in COLUMNS)]
  body = [[label, *(_cell(metrics.get(key), fmt) for _, key, fmt in COLUMNS)] for label, metrics in table]
  if args.markdown:
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for row in body:
      print("| " + " | ".join(row) + " |")
    return
  widths = [max(len(row[i]) for row in [header, *body]) for i in range(len(header))]
  for row in [header, *body]:
    print("  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(row, widths))))


if __name__ == "__main__":
  main()
