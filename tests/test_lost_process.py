"""One process of a two-process run (launch/local_multiprocess.py, Gloo) killed with -9 mid
training: the other stops within the heartbeat timeout and a bit, in one line naming the lost
process and the newest complete checkpoint; relaunching both resumes from that checkpoint and
ends bit-equal to an uninterrupted run (one process with two devices: the same global batches
and the same two-way gradient sums).

Its own xdist group: it shares no fixture with tests/test_multidevice.py, so the two can run on
different workers.
"""

import os
import re
import signal
import subprocess
import sys
import time

import pytest

from score_jax import checkpointing

import run_main

pytestmark = pytest.mark.xdist_group("lost_process")

# The toy smoke config: two processes take about 20 steps/s here, so the kill, sent at the first
# checkpoint, lands with 60 steps to go.
CONFIG = "configs/toy/gmm2d.py:smoke"
STEPS, SNAPSHOT, HEARTBEAT = 80, 20, 3
OVERRIDES = [f"--config.training.num_steps={STEPS}", f"--config.training.snapshot_freq={SNAPSHOT}",
             "--config.training.max_to_keep=10", f"--config.training.log_freq={SNAPSHOT}",
             "--config.sampling.num_samples=16"]


def _launch(workdir: str) -> list[str]:
  return [sys.executable, str(run_main.ROOT / "launch" / "local_multiprocess.py"), "--num_processes=2",
          "--timeout=300", "--", *run_main.main_command(workdir, CONFIG, OVERRIDES)[2:],
          f"--heartbeat_timeout={HEARTBEAT}"]


def _last_line(path: str) -> str:
  with open(path) as f:
    return re.split(r"[\r\n]+", f.read().strip())[-1]


def test_a_lost_process_stops_the_other_in_one_line_and_both_resume(tmp_path):
  workdir = str(tmp_path / "two")
  proc = subprocess.Popen(_launch(workdir), cwd=run_main.ROOT, env=run_main.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    pids = {}
    while len(pids) < 2:  # the launcher's first lines: "process i of 2: pid P, log L"
      match = re.match(r"process (\d) of 2: pid (\d+)", proc.stdout.readline())
      assert match, "the launcher did not name its processes"
      pids[int(match.group(1))] = int(match.group(2))
    run_main.wait_for_checkpoint(workdir, proc, at_least=SNAPSHOT)
    os.kill(pids[1], signal.SIGKILL)
    killed = time.monotonic()
    out = proc.communicate(timeout=60)[0]
    detection = time.monotonic() - killed
  finally:
    if proc.poll() is None:
      proc.kill()
  print(f"kill -9 of process 1 -> the launcher and process 0 out: {detection:.1f} s (heartbeat timeout {HEARTBEAT} s)")
  assert proc.returncode == 128 + signal.SIGKILL, out
  assert detection < HEARTBEAT + 10, out
  assert f"process 1 of 2 was killed by SIGKILL (pid {pids[1]}" in out and "process 0 exited with status 1" in out, out

  steps = checkpointing.committed_steps(workdir)
  newest = steps[-1]
  assert SNAPSHOT <= newest < STEPS, steps  # killed mid-training
  line = _last_line(os.path.join(workdir, "process_0.log"))
  assert line == (f"error: process 1 of 2 was lost (killed, crashed or its machine failed; heartbeat timeout "
                  f"{HEARTBEAT} s); the newest complete checkpoint is step {newest} "
                  f"({os.path.join(workdir, 'checkpoints', str(newest))}): relaunch all 2 processes to resume."), line

  result = run_main.run(_launch(workdir), timeout=300)
  with open(os.path.join(workdir, "process_0.log")) as f:
    relaunched = f.read().split(line, 1)[1]
  assert result.returncode == 0, result.stdout + relaunched[-3000:]
  assert f"Resuming from the checkpoint of step {newest}" in relaunched

  reference = str(tmp_path / "uninterrupted")
  result = run_main.run(run_main.main_command(reference, CONFIG, OVERRIDES), devices=2)
  assert result.returncode == 0, result.stderr[-3000:]
  run_main.assert_trees_close(run_main.saved_state(workdir, STEPS), run_main.saved_state(reference, STEPS),
                              rtol=0, atol=0)  # every leaf bit-equal


def test_the_line_names_the_lost_processes_and_the_newest_committed_checkpoint(tmp_path):
  from score_jax.jobs import peers  # pylint: disable=import-outside-toplevel
  workdir = str(tmp_path)
  assert peers.lost_message([1], 2, 30, workdir) == (
      "error: process 1 of 2 was lost (killed, crashed or its machine failed; heartbeat timeout 30 s); no checkpoint "
      "is complete yet (a relaunch starts from step 0): relaunch all 2 processes to resume.")
  root = tmp_path / "checkpoints"
  for name, committed in (("10", True), ("20", True), ("40", False), ("60.orbax-checkpoint-tmp-1", True)):
    (root / name).mkdir(parents=True)
    if committed:
      (root / name / checkpointing.COMMIT_MARKER).write_text("{}")
  assert checkpointing.committed_steps(workdir) == [10, 20]  # no marker, or not renamed into place: not complete
  assert peers.lost_message([1, 3], 4, 10, workdir) == (
      f"error: processes 1, 3 of 4 were lost (killed, crashed or its machine failed; heartbeat timeout 10 s); the "
      f"newest complete checkpoint is step 20 ({root / '20'}): relaunch all 4 processes to resume.")
