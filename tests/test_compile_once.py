"""Compile once: a second ``main.py`` run of the same config loads its train step and sampler
from the persistent compilation cache (the log line says so, and its compile time drops);
where the cache lives (``--compilation_cache``, ``JAX_COMPILATION_CACHE_DIR``, the XDG default).

The bits/dim solve compiled once for all checkpoints of an eval is in tests/test_fsdp.py
(it evaluates that file's FSDP checkpoints)."""

import json
import os
import re
import subprocess

import jax
import pytest

from score_jax import compilation

import run_main

pytestmark = pytest.mark.xdist_group("compile_once")

CONFIG = "configs/toy/gmm2d.py:smoke"
OVERRIDES = ["--config.training.num_steps=2", "--config.training.snapshot_freq=2", "--config.training.log_freq=1",
             "--config.sampling.num_samples=8", "--config.sampling.pc.num_steps=2"]
LINE = re.compile(r"Compile: (train step|sampler) ([0-9.]+) s \((\d+) executable\(s\), (\d+) from the persistent cache")


def _train(workdir: str, cache: str) -> tuple[dict, dict]:
  """One ``main.py`` training run with its own cache folder; (log lines by name, metrics["compile"])."""
  env = dict(run_main.env(), JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")  # cache even the toy's quick compiles
  cmd = run_main.main_command(workdir, CONFIG, [*OVERRIDES, f"--compilation_cache={cache}"])
  result = subprocess.run(cmd, cwd=run_main.ROOT, env=env, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Persistent compilation cache: {cache}." in result.stderr
  lines = {m.group(1): (float(m.group(2)), int(m.group(3)), int(m.group(4))) for m in LINE.finditer(result.stderr)}
  with open(os.path.join(workdir, "metrics_step2.json")) as f:
    return lines, json.load(f)["compile"]


def test_second_run_of_the_same_config_loads_from_the_cache(tmp_path):
  cache = str(tmp_path / "cache")
  first, first_metrics = _train(str(tmp_path / "first"), cache)
  second, second_metrics = _train(str(tmp_path / "second"), cache)
  assert set(first) == set(second) == {"train step", "sampler"}
  for what in ("train step", "sampler"):
    (t1, n1, hits1), (t2, n2, hits2) = first[what], second[what]
    assert n1 == n2 >= 1 and hits1 == 0 and hits2 == n2, (what, first, second)  # all compiled, then all loaded
    assert t2 < t1, (what, t1, t2)
    assert first_metrics[what]["cache_misses"] == n1 and second_metrics[what]["cache_hits"] == n2
  assert os.listdir(cache)


def test_cache_folder_precedence(monkeypatch, tmp_path):
  saved = {name: getattr(jax.config, name) for name in ("jax_compilation_cache_dir", "jax_enable_compilation_cache")}
  try:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR", raising=False)
    assert compilation.enable_persistent_cache() == str(tmp_path / "xdg" / "score_jax" / "jax")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "xdg" / "score_jax" / "jax")
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))  # set by the user (or the tests)
    assert compilation.enable_persistent_cache() == str(tmp_path / "env")
    assert compilation.enable_persistent_cache(str(tmp_path / "flag")) == str(tmp_path / "flag")  # the flag wins
    assert jax.config.jax_enable_compilation_cache
    assert compilation.enable_persistent_cache("off") is None
    assert not jax.config.jax_enable_compilation_cache
  finally:
    for name, value in saved.items():
      jax.config.update(name, value)
