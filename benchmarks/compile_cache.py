"""Compile time of a cold and a warm ``main.py`` run: the persistent compilation cache at work.

    python benchmarks/compile_cache.py                                   # toy smoke config
    python benchmarks/compile_cache.py --config=configs/ve/digits.py:smoke --runs=3
    python benchmarks/compile_cache.py --min_compile_time=1              # JAX's default threshold

Runs ``main.py --mode=train`` ``--runs`` times, each into a fresh workdir, all with one fresh
cache folder (``--compilation_cache``), and prints each run's "Compile:" lines (train step,
sampler: seconds, executables, how many came from the cache) and its wall time.  Everything
goes to a temporary folder that is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LINE = re.compile(r"Compile: (train step|sampler) ([0-9.]+) s \((\d+) executable\(s\), (\d+) from the persistent cache")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--config", default="configs/toy/gmm2d.py:smoke")
  parser.add_argument("--runs", type=int, default=2)
  parser.add_argument("--min_compile_time", type=float, default=0.0,
                      help="JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS: programs compiled faster are not stored")
  parser.add_argument("overrides", nargs="*", help="extra --config.x.y=v arguments for main.py")
  args = parser.parse_args()
  with tempfile.TemporaryDirectory(prefix="compile_cache_") as tmp:
    cache = os.path.join(tmp, "cache")
    env = dict(os.environ, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=str(args.min_compile_time))
    env.pop("JAX_COMPILATION_CACHE_DIR", None)
    print(f"{args.config}, {args.runs} runs, cache {cache} (min compile time {args.min_compile_time} s)")
    print("| run | train step compile s | from cache | sampler compile s | from cache | wall s |")
    print("|---|---:|---:|---:|---:|---:|")
    for run in range(args.runs):
      cmd = [sys.executable, os.path.join(ROOT, "main.py"), f"--config={args.config}",
             f"--workdir={os.path.join(tmp, f'run{run}')}", f"--compilation_cache={cache}", *args.overrides]
      t0 = time.perf_counter()
      result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, check=False)
      wall = time.perf_counter() - t0
      if result.returncode:
        sys.exit(f"run {run} failed:\n{result.stderr[-3000:]}")
      found = {m.group(1): m.groups()[1:] for m in LINE.finditer(result.stderr)}
      cells = []
      for what in ("train step", "sampler"):
        seconds, n, hits = found.get(what, ("?", "?", "?"))
        cells += [seconds, f"{hits}/{n}"]
      print(f"| {run + 1} | " + " | ".join(cells) + f" | {wall:.1f} |")


if __name__ == "__main__":
  main()
