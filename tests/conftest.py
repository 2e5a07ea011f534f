"""Test-wide settings: a persistent JAX compilation cache so reruns skip XLA compiles, and the
repository root on sys.path for the config files.

Child processes started through ``tests/run_main.py`` (several devices, kill -9, SIGTERM, two
JAX processes) compile with XLA:CPU's LLVM optimisation off: they compile a train step and a
sampler and then run a few steps, so compile time is most of their time.  The test process
itself compiles optimised, as users do: many of its tests run long sampler loops, which
unoptimised code runs about 3x slower.
"""

import os
import pathlib
import sys

import jax

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
