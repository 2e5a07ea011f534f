"""README's first run on one's own images, timed: a generated folder, then ``:tiny`` on it.

    python benchmarks/first_run.py                        # afhq_512.py:tiny, 120 images, empty cache
    python benchmarks/first_run.py --keep=runs/first      # keep the folder and the run
    python benchmarks/first_run.py --config=configs/edm/cifar10_ddpmpp.py:tiny --images=200

Writes ``--images`` JPEGs of 48–95 × 48–95 pixels (two bright discs on a dark plain background,
a fixed numpy seed) into a folder, runs ``main.py --mode=train`` with ``--config`` and
``--config.data.path`` pointing at it, with a fresh compilation cache (a user's first run),
and prints the wall time, the train step rate, the "Compile:" lines and where the sample grid
went.  Everything goes to a temporary folder that is removed afterwards unless ``--keep`` names
one.  Time it only when nothing else computes on the machine.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from PIL import Image, ImageDraw

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def write_folder(root: str, count: int, seed: int = 0) -> None:
  """``count`` JPEGs of two coloured discs each, sizes and colours drawn from ``seed``."""
  os.makedirs(root, exist_ok=True)
  rng = np.random.default_rng(seed)
  for i in range(count):
    w, h = int(rng.integers(48, 96)), int(rng.integers(48, 96))
    image = Image.new("RGB", (w, h), tuple(int(v) for v in rng.integers(0, 90, 3)))
    draw = ImageDraw.Draw(image)
    for _ in range(2):
      r = int(rng.integers(8, 20))
      cx, cy = int(rng.integers(r, w - r)), int(rng.integers(r, h - r))
      draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=tuple(int(v) for v in rng.integers(120, 256, 3)))
    image.save(os.path.join(root, f"img{i:03d}.jpg"), quality=90)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/ve/afhq_512.py:tiny")
  parser.add_argument("--images", type=int, default=120)
  parser.add_argument("--keep", default="", help="a folder to keep the images and the run in (must not exist)")
  args = parser.parse_args()
  if args.keep and os.path.exists(args.keep):
    sys.exit(f"--keep: {args.keep} exists; name a new folder (nothing is overwritten).")
  base = args.keep or tempfile.mkdtemp(prefix="first_run_")
  try:
    images, workdir, cache = (os.path.join(base, name) for name in ("images", "run", "cache"))
    write_folder(images, args.images)
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={args.config}", f"--workdir={workdir}",
           "--mode=train", f"--config.data.path={images}", f"--compilation_cache={cache}"]
    print(" ".join(cmd[1:]), flush=True)
    start = time.monotonic()
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    wall = time.monotonic() - start
    log = result.stdout + result.stderr
    if result.returncode != 0:
      sys.exit(f"main.py exited {result.returncode}:\n{log[-3000:]}")
    rates = re.findall(r"([0-9.]+)step/s", log.replace("\r", "\n"))
    print(f"wall {wall:.1f} s; last train step rate {rates[-1] if rates else '?'} steps/s")
    for line in re.findall(r"Compile: .*", log):
      print(" ", line)
    grids = sorted(f for f in os.listdir(workdir) if f.startswith("samples_step") and f.endswith(".png"))
    print(f"grid: {os.path.join(workdir, grids[-1]) if grids else 'none written'}")
  finally:
    if not args.keep:
      shutil.rmtree(base, ignore_errors=True)


if __name__ == "__main__":
  main()
