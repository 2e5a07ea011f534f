"""kill -9 and SIGTERM during training: the relaunched command resumes from the last checkpoint
and reaches the same state as an uninterrupted run, every leaf equal — with the power EMA
(two tracked profiles, the state's extra copies) and its snapshot exports too."""

import os
import re
import signal

import pytest

import run_main

# One worker computes this module's shared fixture (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("preemption")

# The toy target's smoke config: the same training system (sharded step, Orbax, SIGTERM) as the
# image configs at a fraction of their compile time.  A save every 100 steps keeps the run going
# for seconds after the first checkpoint (900 steps, about 2.5 s on a 2-core CPU), so the signal
# lands mid-training.
CONFIG = "configs/toy/gmm2d.py:smoke"
STEPS = 1000
OVERRIDES = [f"--config.training.num_steps={STEPS}", "--config.training.snapshot_freq=100",
             "--config.training.max_to_keep=50", "--config.training.log_freq=100", "--config.sampling.num_samples=16",
             "--config.model.ema.kind=power", "--config.model.ema.snapshot_freq=250"]
PROFILES = ("power_0.050", "power_0.100")


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """Parameters of an uninterrupted run at step STEPS."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  result = run_main.run(run_main.main_command(workdir, CONFIG, OVERRIDES))
  assert result.returncode == 0, result.stderr[-3000:]
  return workdir, run_main.saved_state(workdir, STEPS)


def _snapshots(workdir: str) -> dict:
  from score_jax import checkpointing  # pylint: disable=g-import-not-at-top
  return {(name, step): checkpointing.load_exported_params(workdir, step, profile=name)
          for name in PROFILES for step in checkpointing.exported_steps(workdir, name)}


def _relaunch_and_compare(workdir: str, reference: tuple, resumed_from: int) -> None:
  result = run_main.run(run_main.main_command(workdir, CONFIG, OVERRIDES))
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Resuming from the checkpoint of step {resumed_from}" in result.stderr
  final = run_main.saved_state(workdir, STEPS)
  assert set(final) == {"params", "ema_params", "extra_ema", "opt_state", "step"}
  run_main.assert_trees_close(final, reference[1], rtol=0, atol=0)  # bit-exact, every leaf
  snaps, want = _snapshots(workdir), _snapshots(reference[0])
  assert sorted(snaps) == sorted(want) and len(want) == 2 * STEPS // 250
  run_main.assert_trees_close(snaps, want, rtol=0, atol=0)


def test_kill_9_then_relaunch_resumes_and_matches_uninterrupted_run(tmp_path, reference):
  workdir = str(tmp_path / "killed")
  proc = run_main.start(run_main.main_command(workdir, CONFIG, OVERRIDES), log=str(tmp_path / "killed.log"))
  run_main.wait_for_checkpoint(workdir, proc, at_least=100)
  assert run_main.kill(proc, signal.SIGKILL) == -signal.SIGKILL
  steps = sorted(int(n) for n in os.listdir(os.path.join(workdir, "checkpoints")) if n.isdigit())
  last = steps[-1]
  assert 100 <= last < STEPS, steps  # killed mid-training
  assert not os.path.exists(os.path.join(workdir, f"samples_step{STEPS}.png"))
  _relaunch_and_compare(workdir, reference, resumed_from=last)


def test_sigterm_saves_the_current_step_exits_0_and_resumes(tmp_path, reference):
  workdir = str(tmp_path / "preempted")
  log = str(tmp_path / "preempted.log")
  proc = run_main.start(run_main.main_command(workdir, CONFIG, OVERRIDES), log=log)
  run_main.wait_for_checkpoint(workdir, proc, at_least=100)
  assert run_main.kill(proc, signal.SIGTERM) == 0
  with open(log) as f:
    text = f.read()
  match = re.search(r"SIGTERM: saved the checkpoint of step (\d+)", text)
  assert match, text[-3000:]
  saved = int(match.group(1))
  assert 100 <= saved < STEPS
  assert os.path.isdir(os.path.join(workdir, "checkpoints", str(saved)))
  assert not os.path.exists(os.path.join(workdir, f"samples_step{STEPS}.png"))  # stopped, did not finish
  _relaunch_and_compare(workdir, reference, resumed_from=saved)
