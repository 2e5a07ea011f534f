"""Compile once: JAX's persistent compilation cache, and how long compiles take.

``main.py`` turns the cache on for every mode (``enable_persistent_cache``): XLA executables
are written to a folder keyed by the program, its shardings, the devices and the JAX / XLA
versions, so a second run of the same config loads its train step and sampler from disk
instead of compiling them again.  The folder, in order of precedence:

1. ``python main.py --compilation_cache=DIR`` (``--compilation_cache=off`` disables it);
2. the environment variable ``JAX_COMPILATION_CACHE_DIR`` (JAX's own; the tests' child
   processes set it to share one cache);
3. ``$XDG_CACHE_HOME/score_jax/jax``, default ``~/.cache/score_jax/jax``.

JAX only writes programs whose compilation took at least
``JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS`` (default 1 s), so trivial programs do not
fill the folder.

``timed_first_call`` wraps a jitted function so that its first call (where it compiles)
logs one line: the compile time and how many executables came from the persistent cache,
counted from ``jax.monitoring`` events of the calling thread.

``run_once`` compiles a program that runs once (initialisation) without LLVM optimisation on
CPU, where optimising dozens of random draws costs far more than running them.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import threading
import time
from typing import Any, Callable, Iterator, Optional

from absl import logging
import jax

OFF = ("off", "none", "0", "false")
_BACKEND_COMPILE = "/jax/core/compile/backend_compile_duration"  # compile or load from the persistent cache
_CACHE_HIT = "/jax/compilation_cache/cache_hits"
_CACHE_MISS = "/jax/compilation_cache/cache_misses"


def default_cache_dir() -> str:
  """``$XDG_CACHE_HOME/score_jax/jax`` (``~/.cache/score_jax/jax`` when XDG_CACHE_HOME is unset)."""
  root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
  return os.path.join(root, "score_jax", "jax")


def enable_persistent_cache(directory: Optional[str] = None) -> Optional[str]:
  """Turns on JAX's persistent compilation cache; call before anything compiles.

  Args:
    directory: the folder; "off" (or "none", "0", "false") disables the cache; None uses
      ``JAX_COMPILATION_CACHE_DIR`` when set, else ``default_cache_dir()``.

  Returns:
    The folder in use, or None when disabled.
  """
  if directory is not None and directory.strip().lower() in OFF:
    jax.config.update("jax_enable_compilation_cache", False)
    return None
  directory = directory or os.environ.get("JAX_COMPILATION_CACHE_DIR") or default_cache_dir()
  directory = os.path.abspath(os.path.expanduser(directory))
  jax.config.update("jax_enable_compilation_cache", True)
  jax.config.update("jax_compilation_cache_dir", directory)
  return directory


@dataclasses.dataclass
class CompileStats:
  """What one block compiled (``compile_events``).

  Attributes:
    compiles: executables compiled or loaded from the persistent cache.
    cache_hits: of them, loaded from the persistent cache.
    cache_misses: looked up in the persistent cache and compiled.
    compile_s: seconds spent compiling or loading them (XLA only; tracing and lowering excluded).
    wall_s: seconds of the whole block.
  """

  compiles: int = 0
  cache_hits: int = 0
  cache_misses: int = 0
  compile_s: float = 0.0
  wall_s: float = 0.0

  def as_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)


@contextlib.contextmanager
def compile_events() -> Iterator[CompileStats]:
  """Counts the compilations of the calling thread inside the block (other threads' are not
  counted: a data feeder compiling in the background does not blur the numbers)."""
  stats = CompileStats()
  thread = threading.get_ident()

  def on_event(event: str, **kwargs: Any) -> None:
    if threading.get_ident() != thread:
      return
    if event == _CACHE_HIT:
      stats.cache_hits += 1
    elif event == _CACHE_MISS:
      stats.cache_misses += 1

  def on_duration(event: str, duration: float, **kwargs: Any) -> None:
    if event == _BACKEND_COMPILE and threading.get_ident() == thread:
      stats.compiles += 1
      stats.compile_s += duration

  jax.monitoring.register_event_listener(on_event)
  jax.monitoring.register_event_duration_secs_listener(on_duration)
  t0 = time.perf_counter()
  try:
    yield stats
  finally:
    stats.wall_s = time.perf_counter() - t0
    jax.monitoring.unregister_event_listener(on_event)
    jax.monitoring.unregister_event_duration_listener(on_duration)


def describe(what: str, stats: CompileStats) -> str:
  """The log line of one compiled function, e.g. "Compile: train step 2.41 s (1 executable,
  0 from the persistent cache; first call 2.87 s)"."""
  return (f"Compile: {what} {stats.compile_s:.2f} s ({stats.compiles} executable(s), {stats.cache_hits} from the "
          f"persistent cache; first call {stats.wall_s:.2f} s)")


def timed_first_call(fn: Callable[..., Any], what: str,
                     record: Optional[dict[str, CompileStats]] = None) -> Callable[..., Any]:
  """``fn`` whose first call logs ``describe(what, stats)`` and stores the stats in ``record[what]``."""
  done = False

  def call(*args: Any, **kwargs: Any) -> Any:
    nonlocal done
    if done:
      return fn(*args, **kwargs)
    with compile_events() as stats:
      out = jax.block_until_ready(fn(*args, **kwargs))
    done = True
    logging.info("%s", describe(what, stats))
    if record is not None:
      record[what] = stats
    return out

  return call


def run_once(fn: Callable[..., Any], *args: Any, out_shardings: Any = None) -> Any:
  """``jax.jit(fn, out_shardings=...)(*args)`` for a program that runs once, such as initialisation.

  On CPU it compiles with LLVM's optimisation off: initialisation is dozens of threefry draws
  of distinct shapes, which XLA:CPU spends a long time optimising (the digits smoke network's
  init: 8.3 s against 1.9 s unoptimised, measured on a quiet 2-core CPU) for a program whose
  run time is milliseconds.  The values agree with an optimised compile's to float rounding
  (LLVM contracts a few multiply-adds differently: 1-ulp differences).  Other backends compile
  as usual.
  """
  lowered = jax.jit(fn, out_shardings=out_shardings).lower(*args)
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return lowered.compile(compiler_options=options)(*args)


__all__ = ["CompileStats", "OFF", "compile_events", "default_cache_dir", "describe", "enable_persistent_cache",
           "run_once", "timed_first_call"]
