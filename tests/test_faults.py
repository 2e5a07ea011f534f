"""Faults that used to lose work, made to happen for real on a smoke run: a damaged latest
checkpoint (truncated or deleted array file, no commit marker), two trainers on one workdir,
a disk that fills up during a save, kill -9 in the middle of an asynchronous save, and eval
polling while training writes.  Each ends in the state README's "What survives what" says."""

import errno
import glob
import json
import logging
import os
import pathlib
import shutil
import signal
import sys
import time

import pytest

import run_main
from score_jax import checkpointing
from score_jax import experiment
from score_jax.jobs import params as params_lib
from score_jax.modes import eval as eval_mode
from score_jax.modes import train
from configs.toy import gmm2d

# One worker computes this module's shared fixture (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("faults")

# Smoke config of the toy target with checkpoints every 4 steps, all kept.
FIELDS = {"training.num_steps": 20, "training.snapshot_freq": 4, "training.max_to_keep": 10,
          "sampling.num_samples": 8, "eval.num_samples": 0, "eval.bpd_num_examples": 0, "eval.num_loss_batches": 1}
STEPS = FIELDS["training.num_steps"]


def _config(**changes):
  config = gmm2d.get_config("smoke")
  for name, value in {**FIELDS, **changes}.items():
    section, field = name.split(".")
    config[section][field] = value
  return config


def _step_dir(workdir: str, step: int, kind: str = "checkpoints") -> str:
  return os.path.join(workdir, kind, str(step))


def _largest_array_file(folder: str) -> str:
  files = glob.glob(os.path.join(folder, "**", "d", "*"), recursive=True)  # OCDBT data files
  return max(files, key=os.path.getsize)


def _damage(folder: str, how: str) -> None:
  if how == "truncated":  # as a full disk or a crashed copy leaves it
    os.truncate(_largest_array_file(folder), 100)
  elif how == "deleted":
    os.remove(_largest_array_file(folder))
  elif how == "no_commit_marker":
    os.remove(os.path.join(folder, checkpointing.COMMIT_MARKER))
  else:
    raise ValueError(how)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
  """An uninterrupted run to step 20: checkpoints 4, 8, ..., 20 and the EMA export of step 20."""
  workdir = str(tmp_path_factory.mktemp("uninterrupted"))
  train.run(_config(), workdir)
  return workdir


def _stopped_at(reference: str, step: int, tmp_path: pathlib.Path) -> str:
  """A copy of the reference run as if it had been stopped after saving ``step``."""
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  for later in checkpointing.checkpoint_steps(workdir):
    if later > step:
      shutil.rmtree(_step_dir(workdir, later))
  shutil.rmtree(os.path.join(workdir, "ema"))
  for name in (f"samples_step{STEPS}.png", f"metrics_step{STEPS}.json"):
    os.remove(os.path.join(workdir, name))
  return workdir


def _assert_same_state(workdir: str, reference: str, step: int) -> None:
  got, want = run_main.saved_state(workdir, step), run_main.saved_state(reference, step)
  for part in ("params", "ema_params", "opt_state", "step"):
    run_main.assert_trees_close(got[part], want[part])


def _unreadable_lines(caplog) -> list[str]:
  return [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING and "unreadable" in r.getMessage()]


def test_damaged_checkpoints_are_set_aside_and_training_resumes_from_the_newest_readable(reference, tmp_path, caplog):
  workdir = _stopped_at(reference, 16, tmp_path)
  damage = {16: "truncated", 12: "deleted", 8: "no_commit_marker"}
  for step, how in damage.items():
    _damage(_step_dir(workdir, step), how)
  with caplog.at_level(logging.INFO, logger="absl"):
    result = train.run(_config(), workdir)
  assert result.start_step == 4
  lines = _unreadable_lines(caplog)
  assert len(lines) == 3  # one line each: step, folder, array and error, where it went, what next
  for line, (step, how) in zip(lines, damage.items()):
    folder = _step_dir(workdir, step)
    assert line.startswith(f"Step {step}: {folder} is unreadable (")
    assert ("no commit marker" if how == "no_commit_marker" else "(array ") in line
    assert f"moved to {folder}.unreadable; trying {_step_dir(workdir, step - 4)}." in line
    assert os.path.isdir(folder + ".unreadable")  # kept, not deleted
  assert "OUT_OF_RANGE" in lines[0]  # the truncated file
  assert "Resuming from the checkpoint of step 4" in caplog.text
  for step in (8, 12, 16, 20):  # re-made, equal to the uninterrupted run's
    _assert_same_state(workdir, reference, step)


def test_no_readable_checkpoint_stops_naming_what_was_tried(reference, tmp_path):
  workdir = _stopped_at(reference, 8, tmp_path)
  _damage(_step_dir(workdir, 8), "truncated")
  _damage(_step_dir(workdir, 4), "deleted")
  with pytest.raises(checkpointing.UnreadableCheckpointError) as raised:
    train.run(_config(), workdir)
  message = str(raised.value)
  assert "\n" not in message and message.startswith("No readable checkpoint: tried ")
  assert message.index(_step_dir(workdir, 8)) < message.index(_step_dir(workdir, 4))
  assert os.path.isdir(_step_dir(workdir, 8) + ".unreadable") and os.path.isdir(_step_dir(workdir, 4) + ".unreadable")


def test_sample_and_eval_fall_back_past_damaged_exports_and_checkpoints(reference, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  shutil.copytree(reference, workdir)
  # A config with another network is not damage: one clear error, nothing moved aside.
  other = _config()
  other.model.network.hidden = 32
  with pytest.raises(checkpointing.CheckpointMismatchError, match="does not fit this config's model"):
    params_lib.latest_ema_params(experiment.build(other), workdir)
  assert not glob.glob(os.path.join(workdir, "*", "*.unreadable"))

  _damage(_step_dir(workdir, 20, "ema"), "truncated")
  _damage(_step_dir(workdir, 20), "no_commit_marker")
  config = _config()
  with caplog.at_level(logging.WARNING, logger="absl"):
    step, params = params_lib.latest_ema_params(experiment.build(config), workdir)  # what --mode=sample loads
  assert step == 16
  run_main.assert_trees_close(params, run_main.saved_state(reference, 16)["ema_params"])
  lines = _unreadable_lines(caplog)
  assert [line.split(" is unreadable")[0] for line in lines] == [
      f"Step 20: {_step_dir(workdir, 20, 'ema')}", f"Step 20: {_step_dir(workdir, 20)}"]  # export, then checkpoint
  assert os.path.isdir(_step_dir(workdir, 20, "ema") + ".unreadable") and os.path.isdir(_step_dir(workdir, 20) + ".unreadable")

  # --mode=eval: a damaged step is reported, set aside and skipped; the others are evaluated.
  _damage(_step_dir(workdir, 16), "deleted")
  config.eval.begin_step = 12
  records = eval_mode.run(config, workdir).records
  assert [r["step"] for r in records] == [12]
  assert os.path.isdir(_step_dir(workdir, 16) + ".unreadable")


def test_a_full_disk_stops_the_run_and_keeps_the_previous_checkpoint(reference, tmp_path, monkeypatch):
  workdir = _stopped_at(reference, 8, tmp_path)
  from orbax.checkpoint._src.path import async_path  # pylint: disable=g-import-not-at-top
  real_write = async_path.write_text

  async def full_disk(path, text):  # Orbax's writes of a save in progress go to its temporary folder
    if ".orbax-checkpoint-tmp" in str(path):
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
    return await real_write(path, text)

  monkeypatch.setattr(async_path, "write_text", full_disk)
  with pytest.raises(checkpointing.DiskFullError) as raised:
    train.run(_config(), workdir)
  message = str(raised.value)
  assert "\n" not in message
  assert message.startswith(f"Disk full: the checkpoint of step 12 could not be written to {workdir}/checkpoints (")
  assert " free, about " in message and " needed); the checkpoint of step 8 is intact" in message
  assert checkpointing.checkpoint_steps(workdir) == [4, 8]
  assert not os.path.exists(os.path.join(workdir, f"samples_step{STEPS}.png"))  # stopped, did not train on
  _assert_same_state(workdir, reference, 8)  # the previous checkpoint reads back whole


# A trainer whose asynchronous save of step 8 never finishes (its metadata write blocks), so
# that it can be killed in the middle of that save; it says so in <workdir>/stalled.
_STALLING_TRAINER = r"""
import json, os, sys, threading, time
from orbax.checkpoint._src.path import async_path
from configs.toy import gmm2d
from score_jax.modes import train
from score_jax.modes import eval as eval_mode

workdir, fields = sys.argv[1], json.loads(sys.argv[2])
real_write = async_path.write_text
async def stall(path, text):
  if "8.orbax-checkpoint-tmp" in str(path):
    with open(os.path.join(workdir, "stalled"), "w") as f:
      f.write(threading.current_thread().name)
    time.sleep(3600)
  return await real_write(path, text)
async_path.write_text = stall
config = gmm2d.get_config("smoke")
for name, value in fields.items():
  section, field = name.split(".")
  config[section][field] = value
train.run(config, workdir)
"""


def test_two_jobs_on_one_workdir_and_kill_9_in_the_middle_of_a_save(reference, tmp_path, caplog):
  workdir = str(tmp_path / "run")
  first = run_main.start([sys.executable, "-c", _STALLING_TRAINER, workdir, json.dumps(FIELDS)], log=str(tmp_path / "first.log"))
  lock_file = pathlib.Path(workdir, checkpointing.LOCK_FILE)
  second = None
  try:
    deadline = time.monotonic() + 300
    while not (lock_file.exists() and lock_file.read_text().startswith(f"pid {first.pid} ")):
      assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
      time.sleep(0.05)
    # A second trainer on the same workdir (a resubmitted job), through main.py as a user runs it.
    second = run_main.start(run_main.main_command(workdir, "configs/toy/gmm2d.py:smoke",
                                                  [f"--config.{k}={v}" for k, v in FIELDS.items()]),
                            log=str(tmp_path / "second.log"))

    # Meanwhile --mode=eval polls alongside: it reads only committed checkpoints while training writes.
    config = _config(**{"eval.end_step": 4, "eval.wait": True, "eval.poll_seconds": 0.2})
    with caplog.at_level(logging.INFO, logger="absl"):
      records = eval_mode.run(config, workdir).records
    assert [r["step"] for r in records] == [4]
    assert "Waiting for checkpoints" in caplog.text

    stalled = pathlib.Path(workdir, "stalled")
    while not stalled.exists():
      assert first.poll() is None and time.monotonic() < deadline, (tmp_path / "first.log").read_text()[-3000:]
      time.sleep(0.05)
    assert stalled.read_text() != "MainThread"  # the save is asynchronous

    # ... is refused in one line naming the first, which trains on undisturbed.
    assert second.wait(timeout=300) == 1
    last = (tmp_path / "second.log").read_text().strip().splitlines()[-1]
    assert last.startswith(f"error: {workdir} is in use by a training run (pid {first.pid} on host "), last
    assert "one training run per --workdir" in last
    assert first.poll() is None
  finally:
    assert run_main.kill(first, signal.SIGKILL) == -signal.SIGKILL
    if second is not None and second.poll() is None:
      run_main.kill(second, signal.SIGKILL)

  assert checkpointing.checkpoint_steps(workdir) == [4]  # step 8 was mid-save: not committed
  assert glob.glob(os.path.join(workdir, "checkpoints", "8.orbax-checkpoint-tmp*"))
  with caplog.at_level(logging.INFO, logger="absl"):
    result = train.run(_config(), workdir)  # the lock died with the killed process
  assert result.start_step == 4
  assert not glob.glob(os.path.join(workdir, "checkpoints", "*.orbax-checkpoint-tmp*"))  # the half save is gone
  _assert_same_state(workdir, reference, STEPS)


def test_disk_full_is_recognised_in_tensorstore_s_message():
  # What Orbax re-raised when a save filled a 256 KB tmpfs (Linux, TensorStore's file driver).
  real = ValueError('RESOURCE_EXHAUSTED: Error writing "params.a/0" in OCDBT database at local file "/w/checkpoints/'
                    '4.orbax-checkpoint-tmp/default.orbax-checkpoint-tmp/ocdbt.process_0/": Failed writing: "/w/...": '
                    "Failed to write 33382 bytes to file 7: No space left on device [os_error_code='28']")
  assert checkpointing._is_disk_full(real)  # pylint: disable=protected-access
  wrapped = RuntimeError("save failed")
  wrapped.__cause__ = OSError(errno.EDQUOT, "Disk quota exceeded")
  assert checkpointing._is_disk_full(wrapped)  # pylint: disable=protected-access
  assert not checkpointing._is_disk_full(ValueError('OUT_OF_RANGE: Error reading "params.a/0"'))  # pylint: disable=protected-access
