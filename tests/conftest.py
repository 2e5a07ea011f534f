"""Test-wide settings: a persistent JAX compilation cache so reruns skip XLA compiles, the
repository root on sys.path for the config files, and how much XLA optimises.

Most tests compile a program and run it once or a few times on small shapes: compiling is
most of their time (612 s of the suite's 1233 s of worker time, measured on the 2-core CPU),
and XLA's optimisation passes most of that.  So tests compile with
``jax_disable_most_optimizations`` (XLA:CPU's LLVM optimisation off), except tests marked
``@pytest.mark.optimized``: those run long sampler loops, which unoptimised code runs up to
about 3x slower, and they compile as users do.  Child processes started through
``tests/run_main.py`` (several devices, kill -9, SIGTERM, two JAX processes) compile with
``--xla_backend_optimization_level=0`` for the same reason.  Measured on the 2-core CPU from an
empty cache: compile time 612 s -> 318 s, worker time 1233 s -> 944 s.

Mark a test ``optimized`` when its run, not its compile, dominates.  One finding: on jax 0.10,
with the classic emitters below *and* optimisation off, the adaptive solver's batch
independence check fails (a batch of 9 gives other samples for rows 0-7 than a batch of 8,
deterministically); optimised, or unoptimised with the default emitters, it holds.  The
adaptive tests run optimised, as users run them.
"""

import os
import pathlib
import sys

import jax
import pytest

# XLA:CPU's MLIR fusion emitters compile small programs more slowly than the classic
# emitters, and this suite compiles hundreds of them (test_dpm_solver: 49 s against 64 s,
# measured on the 2-core CPU; run times unchanged).  Only on the jax versions where that was
# measured: XLA aborts on a flag it does not know.  Set before any backend starts.
_EMITTERS = "--xla_cpu_use_fusion_emitters=false"
if jax.__version_info__[:2] == (0, 10) and _EMITTERS not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_EMITTERS}".strip()

# Config files import their bases as ``from configs import default_ve`` (main.py runs from the root).
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

_CACHE = os.environ.get("SCORE_JAX_TEST_CACHE", str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
jax.config.update("jax_disable_most_optimizations", True)  # per test below


def pytest_runtest_setup(item):
  """Compiles unoptimised unless the test is marked ``optimized``; module fixtures set up by
  the test's setup follow the same choice."""
  jax.config.update("jax_disable_most_optimizations", item.get_closest_marker("optimized") is None)


def pytest_runtest_teardown(item):
  del item
  jax.config.update("jax_disable_most_optimizations", True)
