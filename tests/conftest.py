"""Test-wide settings: XLA:CPU's LLVM optimisation off, a persistent JAX compilation cache so
reruns skip XLA compiles, and the repository root on sys.path for the config files.

The suite spends most of its time compiling small programs that then run for milliseconds, so
it compiles them with ``--xla_backend_optimization_level=0`` (LLVM only; XLA's own HLO passes
still run, and results are the same bits: no fast-math either way).  That roughly halves a
smoke training run's compile time.  ``SCORE_JAX_TEST_OPTIMIZE=1`` keeps full optimisation;
children of ``run_main`` inherit the choice.
"""

import os
import pathlib
import sys

_FLAG = "--xla_backend_optimization_level=0"
if os.environ.get("SCORE_JAX_TEST_OPTIMIZE", "0") != "1" and _FLAG not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {_FLAG}".strip()  # before any backend starts

import jax  # pylint: disable=wrong-import-position

# Config files import their bases as ``from configs import default_ve`` (main.py runs from the root).
_ROOT = str(pathlib.Path(__file__).resolve().parents[1])
if _ROOT not in sys.path:
  sys.path.insert(0, _ROOT)

_CACHE = os.environ.get("SCORE_JAX_TEST_CACHE", str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
