"""Helpers for tests that run ``main.py`` (or a script) in fresh processes: kill -9, SIGTERM,
several devices, several JAX processes.  Children share the test compilation cache.  Also what
tests of runs share: saved states, tree comparisons, stand-in parameters for workdirs."""

from __future__ import annotations

import os
import pathlib
import signal
import subprocess
import sys
import time
from typing import Optional, Sequence

import jax
import numpy as np

from score_jax import checkpointing

ROOT = pathlib.Path(__file__).resolve().parents[1]
CACHE = os.environ.get("SCORE_JAX_TEST_CACHE", str(ROOT / ".jax_cache"))


def env(devices: int = 1) -> dict[str, str]:
  """Environment of a child: CPU, ``devices`` simulated devices, the shared compilation cache."""
  # Children compile a train step and a sampler, then run a few steps: LLVM optimisation off
  # saves more compile time than it costs them (SCORE_JAX_TEST_OPTIMIZE=1 keeps it on).
  flags = [f for f in os.environ.get("XLA_FLAGS", "").split()  # the test process's (conftest.py)
           if not f.startswith("--xla_force_host_platform_device_count")]
  flags.append(f"--xla_force_host_platform_device_count={devices}")
  if os.environ.get("SCORE_JAX_TEST_OPTIMIZE", "0") != "1":
    flags.append("--xla_backend_optimization_level=0")
  return dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS=" ".join(flags),
              JAX_COMPILATION_CACHE_DIR=CACHE, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0.5",
              PYTHONPATH=str(ROOT))


def main_command(workdir: str, config: str, overrides: Sequence[str] = (), mode: str = "train") -> list[str]:
  return [sys.executable, str(ROOT / "main.py"), f"--config={config}", f"--workdir={workdir}", f"--mode={mode}",
          *overrides]


def run(cmd: Sequence[str], *, devices: int = 1, timeout: float = 600) -> subprocess.CompletedProcess:
  return subprocess.run(list(cmd), cwd=ROOT, env=env(devices), capture_output=True, text=True, timeout=timeout)


def start(cmd: Sequence[str], *, devices: int = 1, log: Optional[str] = None) -> subprocess.Popen:
  out = open(log, "w") if log else subprocess.DEVNULL  # pylint: disable=consider-using-with
  return subprocess.Popen(list(cmd), cwd=ROOT, env=env(devices), stdout=out, stderr=subprocess.STDOUT)


def wait_for_checkpoint(workdir: str, proc: subprocess.Popen, *, at_least: int, timeout: float = 600) -> int:
  """Polls until a finished checkpoint of step >= ``at_least`` exists; returns its step."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    steps = checkpointing.committed_steps(workdir)
    if steps and max(steps) >= at_least:
      return max(steps)
    if proc.poll() is not None:
      raise AssertionError(f"the run ended (status {proc.returncode}) before a checkpoint of step {at_least}")
    time.sleep(0.05)
  raise AssertionError(f"no checkpoint of step >= {at_least} within {timeout} s")


def kill(proc: subprocess.Popen, sig: int = signal.SIGKILL, timeout: float = 120) -> int:
  proc.send_signal(sig)
  return proc.wait(timeout=timeout)


def saved_state(workdir: str, step: int) -> dict:
  """The raw checkpoint of ``step`` (nested dicts of numpy arrays)."""
  with checkpointing.Checkpointer(workdir, create=False, async_save=False) as ckpt:
    return ckpt.restore(None, step=step)


def assert_trees_close(a, b, *, rtol: float = 1e-5, atol: float = 1e-6) -> None:
  import jax  # pylint: disable=g-import-not-at-top
  leaves_a, tree_a = jax.tree.flatten(a)
  leaves_b, tree_b = jax.tree.flatten(b)
  assert tree_a == tree_b
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=rtol, atol=atol)


def stand_in_params(setup, seed: int):
  """Parameters of ``setup``'s network drawn as small normals from ``seed`` with NumPy (nothing
  compiled, unlike an init): tests of plumbing need arrays of the right shapes, not an
  initialisation."""
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda s: (0.05 * rng.standard_normal(s.shape)).astype(s.dtype), experiment.param_shapes(setup))
