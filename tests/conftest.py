"""Test-wide JAX settings: a persistent compilation cache so reruns skip XLA compiles."""

import os
import pathlib

import jax

_CACHE = os.environ.get("SCORE_JAX_TEST_CACHE", str(pathlib.Path(__file__).resolve().parents[1] / ".jax_cache"))
jax.config.update("jax_compilation_cache_dir", _CACHE)
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
