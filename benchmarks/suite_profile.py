"""Where the test suite's time goes: per test file, its duration and how much of it JAX spent
tracing, lowering to StableHLO and compiling with XLA (in the test processes; children that
``tests/run_main.py`` starts are not seen).

    python benchmarks/suite_profile.py                    # the whole suite, -n 2, empty cache
    python benchmarks/suite_profile.py --top=15 -- tests/test_sampling.py tests/test_edm.py

Runs pytest with this file as a plugin (``-p suite_profile``): a listener on JAX's monitoring
events (``/jax/core/compile/jaxpr_trace_duration``, ``.../jaxpr_to_mlir_module_duration``,
``.../backend_compile_duration``) adds each event's seconds to the test that is running, every
xdist worker writes its totals to a JSON file, and the parent prints one line per file, slowest
first, then the suite's totals.  The compilation cache is a fresh temporary folder (the suite
as CI sees it) unless ``--cache`` names one.  Time it only when nothing else computes.
"""

from __future__ import annotations

import argparse
import collections
import glob
import json
import os
import re
import subprocess
import sys
import tempfile

_EVENTS = {"jaxpr_trace_duration": "trace", "jaxpr_to_mlir_module_duration": "lower",
           "backend_compile_duration": "compile"}
_OUT = "SCORE_JAX_SUITE_PROFILE_DIR"

# --- the pytest plugin (imported by each pytest process) -----------------------------------
if os.environ.get(_OUT):
  from jax._src import monitoring  # pylint: disable=g-import-not-at-top

  _current: dict[str, str | None] = {"test": None}
  _seconds: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)

  def _listener(event: str, duration: float, **_: object) -> None:
    kind = _EVENTS.get(event.rsplit("/", 1)[-1])
    if kind and _current["test"]:
      _seconds[_current["test"]][kind] += duration

  monitoring.register_event_duration_secs_listener(_listener)

  def pytest_runtest_logstart(nodeid, location):  # noqa: D103  (pytest hook)
    del location
    _current["test"] = nodeid

  def pytest_sessionfinish(session):  # noqa: D103
    del session
    worker = os.environ.get("PYTEST_XDIST_WORKER", "main")
    with open(os.path.join(os.environ[_OUT], f"jax_{worker}.json"), "w") as f:
      json.dump({test: dict(c) for test, c in _seconds.items()}, f)


# --- the command line ----------------------------------------------------------------------
def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--workers", type=int, default=2, help="pytest -n (0: no xdist)")
  parser.add_argument("--top", type=int, default=30, help="files to print")
  parser.add_argument("--cache", default="", help="compilation cache folder (default: a fresh one)")
  parser.add_argument("pytest_args", nargs="*", help="after --: test paths or pytest options")
  args = parser.parse_args()
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  with tempfile.TemporaryDirectory() as tmp:
    env = dict(os.environ, **{_OUT: tmp, "SCORE_JAX_TEST_CACHE": args.cache or os.path.join(tmp, "cache"),
                              "PYTHONPATH": os.pathsep.join([os.path.dirname(os.path.abspath(__file__)),
                                                             os.environ.get("PYTHONPATH", "")])})
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "suite_profile", "-p", "no:cacheprovider", "--durations=0",
           *(["-n", str(args.workers)] if args.workers else []), *args.pytest_args]
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, check=False)
    jax_seconds: dict[str, dict[str, float]] = {}
    for path in glob.glob(os.path.join(tmp, "jax_*.json")):
      with open(path) as f:
        jax_seconds.update(json.load(f))
  durations: collections.Counter = collections.Counter()
  for line in proc.stdout.splitlines():
    m = re.match(r"\s*([\d.]+)s (?:call|setup|teardown)\s+(\S+)", line)
    if m:
      durations[m.group(2)] += float(m.group(1))
  files: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
  for test, seconds in durations.items():
    row = files[test.split("::")[0]]
    row["total"] += seconds
    row.update(jax_seconds.get(test, {}))
  print(f"{'seconds':>8} {'trace':>7} {'lower':>7} {'compile':>8}  file (JAX columns: test processes only)")
  for name, row in sorted(files.items(), key=lambda kv: -kv[1]["total"])[:args.top]:
    print(f"{row['total']:8.1f} {row['trace']:7.1f} {row['lower']:7.1f} {row['compile']:8.1f}  {name}")
  total = sum((row for row in files.values()), collections.Counter())
  print(f"{total['total']:8.1f} {total['trace']:7.1f} {total['lower']:7.1f} {total['compile']:8.1f}  "
        f"all {len(files)} files (the workers' summed test time)")
  print(proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr[-2000:])
  sys.exit(proc.returncode)


if __name__ == "__main__":
  main()
