"""Run every job of the command line on smoke configs and compare what they wrote.

For the job-layer refactor of issue 18 ("One way through the job layer"): the refactor must
leave every mode's outputs unchanged.  Run the modes once on the old code and once on the new
code, each into a fresh folder, then compare the two folders file by file:

    python tools/job_outputs.py run --code=/tmp/base --out=runs/job_outputs_before
    python tools/job_outputs.py run --code=.         --out=runs/job_outputs_after
    python tools/job_outputs.py compare runs/job_outputs_before runs/job_outputs_after

``run`` starts each mode as ``python main.py ...`` in a subprocess whose working directory is
the code root ``--code`` (default: the repository holding this script), with workdirs under
``OUT/work/<run>/`` and a compilation cache of its own in ``OUT/jax_cache``.  It refuses an
``OUT`` that exists, stops at the first command that fails (naming it, with its stderr tail),
and finally copies every ``.npz`` / ``.json`` / ``.jsonl`` the modes wrote into
``OUT/outputs/<run>/`` (same relative paths; checkpoints, EMA exports, TensorBoard logs and
the resolved ``config*.json`` are left out).  ``OUT/logs/`` holds each command's output and
``OUT/manifest.json`` the commands, code root and wall times.

``compare A B`` needs the same set of files under ``A/outputs`` and ``B/outputs``.  Arrays
of ``.npz`` files must have the same names, shapes, dtypes and values (``np.array_equal``,
NaN equal to NaN); JSON and JSON-lines files are parsed and compared recursively, without
the volatile keys of ``VOLATILE_KEYS`` below (less ``KEPT_KEYS``), and with each run's
folders (``OUT`` and the code root) in string values replaced by placeholders.  One line
per file, then the JSON keys that were dropped, then ``N files identical, M differ``; exit
status 1 if any differ.  ``--new_keys=method,posterior`` lets B's JSON add those keys (what
the change adds to its metrics; each file says which it added); nothing else may differ.

Only numpy and the standard library.
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import math
import os
import shutil
import subprocess
import sys
import time
from typing import Any, Optional

import numpy as np

# JSON keys dropped before comparing (fnmatch patterns on the key; they vary from one run to
# the next and say nothing about what a job computed):
VOLATILE_KEYS = (
    "*_s",          # wall times and rates: sample_time_s, train_time_s, steps_per_s, images_per_s
    "*time*",       # time_s, loss_time_s, wall_time, timestamps
    "compile",      # compile statistics ...
    "*_compiles",   # ... bpd_compiles
    "workdir",      # absolute paths
    "classifier_dir",
)
# ... except these, which match a pattern above but are settings, not measurements:
KEPT_KEYS = ("time_sampling",)  # the training-time distribution of a noisy classifier
# String values (anywhere in a JSON value): each run's OUT folder and code root become these
# placeholders, so "OUT/work/digits_ve/classifier" compares equal across runs.
OUT_PLACEHOLDER, CODE_PLACEHOLDER = "<OUT>", "<CODE>"

COLLECTED_SUFFIXES = (".npz", ".json", ".jsonl")
SKIPPED_DIRS = ("checkpoints", "ema", "tensorboard")
SKIPPED_FILES = ("config*.json",)
MANIFEST = "manifest.json"
SMOKE = ":smoke"

# RePaint by name: after issue 18, resample > 1 needs config.controllable.method="repaint" (before it,
# resample alone meant RePaint and the field did not exist).  Passed only to code whose
# configs/common.py defines the field, so both sides run the same sampler.
REPAINT = "--config.controllable.method=repaint"

# (run name, config file, [(extra flags of one command) ...]); each run has its own workdir and
# its commands run in order.  "--mode=..." is part of the extra flags.
RUNS: tuple[tuple[str, str, tuple[tuple[str, ...], ...]], ...] = (
    ("digits_ve", "configs/ve/digits.py", (
        ("--mode=train",),
        ("--mode=sample",),
        ("--mode=train_classifier",),
        ("--mode=inpaint",),
        ("--mode=inpaint", "--config.controllable.mask=half", "--config.controllable.resample=2", REPAINT),
        ("--mode=eval",),
        ("--mode=train_noisy_classifier",),
        ("--mode=sample", "--config.guidance.kind=classifier", "--config.guidance.scale=2.0"),
    )),
    ("shapes_rgb", "configs/ve/shapes_16.py", (
        ("--mode=train",),
        ("--mode=colorize",),
        ("--mode=sample",),
    )),
    ("digits_cond", "configs/ve/digits_cond.py", (
        ("--mode=train", "--config.training.label_dropout=0.1"),
        ("--mode=sample", "--config.training.label_dropout=0.1", "--config.guidance.kind=cfg",
         "--config.guidance.w=2.0"),
    )),
    ("toy_gmm", "configs/toy/gmm2d.py", (
        ("--mode=train",),
        ("--mode=sample",),
        ("--mode=eval",),
    )),
)


# ----------------------------------------------------------------------------------- run


def _default_code_root() -> str:
  return os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _check_code_root(code: str) -> None:
  """The code root has main.py, and a child Python started there imports its score_jax (not
  an installed copy from elsewhere)."""
  if not os.path.isfile(os.path.join(code, "main.py")):
    sys.exit(f"error: --code={code} has no main.py")
  probe = "import importlib.util; print(importlib.util.find_spec('score_jax').origin)"
  origin = subprocess.run([sys.executable, "-c", probe], cwd=code, capture_output=True, text=True, check=True,
                          env=_child_env(code)).stdout.strip()
  if not os.path.realpath(origin).startswith(os.path.realpath(code) + os.sep):
    sys.exit(f"error: python in {code} imports score_jax from {origin}, not from {code}")


def _child_env(code: str) -> dict[str, str]:
  env = dict(os.environ)
  env["PYTHONPATH"] = code + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
  env.pop("JAX_COMPILATION_CACHE_DIR", None)  # --compilation_cache names the cache
  return env


def _tail(path: str, lines: int = 30) -> str:
  with open(path, errors="replace") as f:
    return "".join(f.readlines()[-lines:])


def _git_commit(code: str) -> str | None:
  result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=code, capture_output=True, text=True)
  return result.stdout.strip() or None


def _collect(workdir: str, dest: str) -> list[str]:
  """Copies the mode outputs of ``workdir`` into ``dest``; returns their relative paths."""
  copied = []
  for root, dirs, files in os.walk(workdir):
    dirs[:] = sorted(d for d in dirs if d not in SKIPPED_DIRS)
    for name in sorted(files):
      if not name.endswith(COLLECTED_SUFFIXES) or any(fnmatch.fnmatch(name, p) for p in SKIPPED_FILES):
        continue
      rel = os.path.relpath(os.path.join(root, name), workdir)
      os.makedirs(os.path.dirname(os.path.join(dest, rel)), exist_ok=True)
      shutil.copy2(os.path.join(workdir, rel), os.path.join(dest, rel))
      copied.append(rel)
  return copied


def run(code: str, out: str, timeout: float) -> None:
  code, out = os.path.abspath(code), os.path.abspath(out)
  if os.path.exists(out):
    sys.exit(f"error: {out} exists; pass a new --out (nothing is overwritten)")
  _check_code_root(code)
  logs = os.path.join(out, "logs")
  os.makedirs(logs)
  cache = os.path.join(out, "jax_cache")
  manifest: dict[str, Any] = {"code": code, "out": out, "git_commit": _git_commit(code), "python": sys.executable,
                              "commands": []}
  env = _child_env(code)
  t_start = time.perf_counter()
  number = 0
  with open(os.path.join(code, "configs", "common.py")) as f:
    has_method = "ctl.method" in f.read()
  for name, config, commands in RUNS:
    workdir = os.path.join(out, "work", name)
    for extra in commands:
      extra = tuple(e for e in extra if e != REPAINT or has_method)
      number += 1
      argv = [sys.executable, "main.py", f"--config={config}{SMOKE}", f"--workdir={workdir}", *extra,
              f"--compilation_cache={cache}"]
      shown = " ".join(argv[1:])
      mode = extra[0].split("=", 1)[1]
      log = os.path.join(logs, f"{number:02d}_{name}_{mode}")
      out_log, err = log + ".stdout.log", log + ".stderr.log"
      print(f"[{number:2d}] {name}: {' '.join(extra)}", flush=True)
      t0 = time.perf_counter()
      with open(out_log, "w") as stdout, open(err, "w") as stderr:
        try:
          rc = subprocess.run(argv, cwd=code, env=env, stdout=stdout, stderr=stderr, timeout=timeout).returncode
        except subprocess.TimeoutExpired:
          rc = "timeout"
      seconds = time.perf_counter() - t0
      manifest["commands"].append({"run": name, "argv": argv[1:], "cwd": code, "seconds": round(seconds, 1),
                                   "returncode": rc})
      _write_json(os.path.join(out, MANIFEST), manifest)
      if rc != 0:
        what = f"timed out after {timeout:.0f} s" if rc == "timeout" else f"failed with exit status {rc}"
        sys.exit(f"error: command {number} {what} (cwd {code}):\n  {shown}\n"
                 f"stderr tail ({err}):\n{_tail(err)}")
      print(f"     {seconds:.0f} s", flush=True)
  manifest["seconds"] = round(time.perf_counter() - t_start, 1)
  manifest["collected"] = {}
  for name, _, _ in RUNS:
    manifest["collected"][name] = _collect(os.path.join(out, "work", name), os.path.join(out, "outputs", name))
  _write_json(os.path.join(out, MANIFEST), manifest)
  total = sum(map(len, manifest["collected"].values()))
  print(f"{number} commands in {manifest['seconds']:.0f} s; {total} files in {os.path.join(out, 'outputs')}")


def _write_json(path: str, value: Any) -> None:
  with open(path + ".tmp", "w") as f:
    json.dump(value, f, indent=1)
  os.replace(path + ".tmp", path)


# ------------------------------------------------------------------------------- compare


def _volatile(key: str) -> bool:
  return key not in KEPT_KEYS and any(fnmatch.fnmatchcase(key, pattern) for pattern in VOLATILE_KEYS)


class _Normalizer:
  """Drops volatile keys and replaces one run's folders in strings by placeholders."""

  def __init__(self, folder: str):
    self.prefixes = [(os.path.abspath(folder), OUT_PLACEHOLDER)]
    manifest = os.path.join(folder, MANIFEST)
    if os.path.exists(manifest):
      with open(manifest) as f:
        meta = json.load(f)
      self.prefixes += [(meta["out"], OUT_PLACEHOLDER), (meta["code"], CODE_PLACEHOLDER)]
    self.prefixes.sort(key=lambda p: -len(p[0]))  # OUT may lie inside the code root: replace it first
    self.dropped: set[str] = set()

  def __call__(self, value: Any) -> Any:
    if isinstance(value, dict):
      kept = {}
      for key, item in value.items():
        if _volatile(key):
          self.dropped.add(key)
        else:
          kept[key] = self(item)
      return kept
    if isinstance(value, list):
      return [self(item) for item in value]
    if isinstance(value, str):
      for prefix, placeholder in self.prefixes:
        value = value.replace(prefix, placeholder)
    return value


def _json_diffs(a: Any, b: Any, where: str = "$", new_keys: tuple[str, ...] = (),
                added: Optional[set] = None) -> list[str]:
  """Human-readable differences between two parsed JSON values (NaN equals NaN).  A key of
  ``new_keys`` present in B only is not a difference; it is noted in ``added``."""
  if isinstance(a, dict) and isinstance(b, dict):
    diffs = [f"{where}.{k}: only in A" for k in a if k not in b]
    for k in b:
      if k not in a:
        if k in new_keys and added is not None:
          added.add(k)
        else:
          diffs.append(f"{where}.{k}: only in B")
    for k in a:
      if k in b:
        diffs += _json_diffs(a[k], b[k], f"{where}.{k}", new_keys, added)
    return diffs
  if isinstance(a, list) and isinstance(b, list):
    if len(a) != len(b):
      return [f"{where}: {len(a)} items != {len(b)}"]
    return [d for i, (x, y) in enumerate(zip(a, b)) for d in _json_diffs(x, y, f"{where}[{i}]", new_keys, added)]
  if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
    return []
  if type(a) is not type(b) or a != b:
    return [f"{where}: {a!r} != {b!r}"]
  return []


def _load_json(path: str) -> Any:
  with open(path) as f:
    if path.endswith(".jsonl"):
      return [json.loads(line) for line in f if line.strip()]
    return json.load(f)


def _npz_diffs(path_a: str, path_b: str) -> list[str]:
  with np.load(path_a, allow_pickle=False) as fa, np.load(path_b, allow_pickle=False) as fb:
    names_a, names_b = set(fa.files), set(fb.files)
    diffs = [f"array {n}: only in A" for n in sorted(names_a - names_b)]
    diffs += [f"array {n}: only in B" for n in sorted(names_b - names_a)]
    for n in sorted(names_a & names_b):
      a, b = fa[n], fb[n]
      if a.shape != b.shape or a.dtype != b.dtype:
        diffs.append(f"array {n}: {a.dtype}{list(a.shape)} != {b.dtype}{list(b.shape)}")
      elif not np.array_equal(a, b, equal_nan=a.dtype.kind in "fc"):
        if a.dtype.kind in "biufc":
          gap = np.abs(a.astype(np.float64) - b.astype(np.float64))
          diffs.append(f"array {n}: max abs difference {np.nanmax(gap):.3g} "
                       f"({np.count_nonzero(a != b)} of {a.size} values differ)")
        else:
          diffs.append(f"array {n}: {np.count_nonzero(a != b)} of {a.size} values differ")
  return diffs


def _files(folder: str) -> set[str]:
  root = os.path.join(folder, "outputs")
  if not os.path.isdir(root):
    sys.exit(f"error: {root} is not a folder (made by `job_outputs.py run --out={folder}`)")
  return {os.path.relpath(os.path.join(d, f), root) for d, _, files in os.walk(root) for f in files}


def compare(folder_a: str, folder_b: str, new_keys: tuple[str, ...] = ()) -> int:
  """Compares two ``run`` folders; JSON keys of ``new_keys`` may appear in B only (what a change
  adds to its metrics), every other difference counts."""
  files_a, files_b = _files(folder_a), _files(folder_b)
  norm_a, norm_b = _Normalizer(folder_a), _Normalizer(folder_b)
  same = differ = 0
  for rel in sorted(files_a ^ files_b):
    print(f"{rel}: only in {'A' if rel in files_a else 'B'}")
    differ += 1
  for rel in sorted(files_a & files_b):
    path_a, path_b = (os.path.join(f, "outputs", rel) for f in (folder_a, folder_b))
    if rel.endswith(".npz"):
      diffs = _npz_diffs(path_a, path_b)
    elif rel.endswith((".json", ".jsonl")):
      added: set = set()
      diffs = _json_diffs(norm_a(_load_json(path_a)), norm_b(_load_json(path_b)), new_keys=new_keys, added=added)
    else:
      with open(path_a, "rb") as fa, open(path_b, "rb") as fb:
        diffs = [] if fa.read() == fb.read() else ["bytes differ"]
    if diffs:
      differ += 1
      shown = diffs[:5] + ([f"... {len(diffs) - 5} more"] if len(diffs) > 5 else [])
      print(f"{rel}: " + "; ".join(shown))
    else:
      same += 1
      note = f" (B adds {', '.join(sorted(added))})" if rel.endswith((".json", ".jsonl")) and added else ""
      print(f"{rel}: same{note}")
  print(f"(JSON keys dropped: {', '.join(sorted(norm_a.dropped | norm_b.dropped)) or 'none'})")
  print(f"{same} files identical, {differ} differ")
  return 1 if differ else 0


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  sub = parser.add_subparsers(dest="command", required=True)
  p_run = sub.add_parser("run", help="run the modes on smoke configs into a new folder OUT")
  p_run.add_argument("--code", default=_default_code_root(), help="code root holding main.py (default: this repository)")
  p_run.add_argument("--out", required=True, help="new folder for workdirs, logs and collected outputs")
  p_run.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed to one command")
  p_cmp = sub.add_parser("compare", help="compare the outputs of two runs")
  p_cmp.add_argument("a")
  p_cmp.add_argument("b")
  p_cmp.add_argument("--new_keys", default="", help="comma-separated JSON keys B may add (printed per file); "
                     "every other key, value and array must be equal")
  args = parser.parse_args(argv)
  if args.command == "run":
    run(args.code, args.out, args.timeout)
    return 0
  return compare(args.a, args.b, tuple(k for k in args.new_keys.split(",") if k))


if __name__ == "__main__":
  sys.exit(main())
