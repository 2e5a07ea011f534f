"""Data parallelism: 4 devices give the 1-device loss trajectory and parameters; two JAX processes
on localhost (Gloo) train and checkpoint through launch/local_multiprocess.py and reach the same
parameters.

One child process with 4 simulated devices trains the digits smoke config twice — on a mesh of
one device and on a mesh of all four — and both tests compare against its 1-device run (the
module fixture), so the suite starts three JAX processes here, not five.
"""

import json
import os
import sys

import pytest

import run_main

pytestmark = pytest.mark.xdist_group("multidevice")

CONFIG = "configs/ve/digits.py:smoke"
NUM_STEPS, BATCH, SNAPSHOT = 6, 8, 3
OVERRIDES = [f"--config.training.num_steps={NUM_STEPS}", f"--config.training.batch_size={BATCH}",
             f"--config.training.snapshot_freq={SNAPSHOT}"]
SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import jax
from score_jax import config_files, experiment, sharding
from score_jax.modes import train
config = config_files.load({config!r})
config.training.batch_size = 6
try:
  experiment.build(config)
except experiment.ConfigError as e:
  print("BAD_BATCH", e)
config.training.update(num_steps={steps}, batch_size={batch}, snapshot_freq={snapshot})
out = {{"devices": jax.device_count()}}
for name, devices in (("one", jax.devices()[:1]), ("four", jax.devices())):
  result = train.run(config, {workdir!r} + "/" + name, mesh=sharding.make_mesh(devices=devices))
  out[name] = {{"history": result.history, "mesh": result.metrics["num_devices"]}}
print("RESULT", json.dumps(out))
"""


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  """The 1-device and 4-device runs of one 4-device process: {"one": ..., "four": ..., "dir": ...}."""
  root = tmp_path_factory.mktemp("multidevice")
  script = SCRIPT.format(root=str(run_main.ROOT), config=CONFIG, workdir=str(root), steps=NUM_STEPS, batch=BATCH,
                         snapshot=SNAPSHOT)
  result = run_main.run([sys.executable, "-c", script], devices=4)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  out = json.loads(next(l for l in lines if l.startswith("RESULT "))[len("RESULT "):])
  out["bad_batch"] = next((l[len("BAD_BATCH "):] for l in lines if l.startswith("BAD_BATCH ")), None)
  out["dir"] = str(root)
  return out


def test_four_devices_match_one_device(runs):
  assert runs["devices"] == 4 and (runs["one"]["mesh"], runs["four"]["mesh"]) == (1, 4)
  # A batch that does not split over the devices is refused before compiling, naming the field.
  assert runs["bad_batch"] == ("config.training.batch_size=6: batch size not divisible by the device count "
                               "(4 devices); use a positive multiple of 4.")
  one, four = runs["one"]["history"], runs["four"]["history"]
  steps = [s for s, _ in one]
  assert steps == list(range(NUM_STEPS)) and [s for s, _ in four] == steps
  for (_, a), (_, b) in zip(one, four):
    assert abs(a - b) <= 1e-5 * abs(a) + 1e-6, (one, four)
  # Adam divides by √v: where a gradient is ~0, reduction-order round-off becomes an update of
  # order lr·1e-2; a few steps at lr ≤ 2e-4 stay below 2e-5.
  for step in (SNAPSHOT, NUM_STEPS):
    run_main.assert_trees_close(run_main.saved_state(os.path.join(runs["dir"], "four"), step)["params"],
                                run_main.saved_state(os.path.join(runs["dir"], "one"), step)["params"],
                                rtol=1e-4, atol=2e-5)


def test_two_processes_on_localhost_train_and_checkpoint(runs, tmp_path):
  workdir = str(tmp_path / "two")
  result = run_main.run([sys.executable, str(run_main.ROOT / "launch" / "local_multiprocess.py"),
                         "--num_processes=2", "--timeout=500", "--",
                         *run_main.main_command(workdir, CONFIG, OVERRIDES)[2:]])
  logs = "".join(open(os.path.join(workdir, f"process_{i}.log")).read()[-1500:] for i in range(2)
                 if os.path.exists(os.path.join(workdir, f"process_{i}.log")))
  assert result.returncode == 0, result.stdout + logs
  assert "2 device(s) in 2 process(es)" in logs
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == [str(SNAPSHOT), str(NUM_STEPS)]
  with open(os.path.join(workdir, "metrics_step6.json")) as f:
    metrics = json.load(f)
  assert metrics["num_devices"] == 2 and metrics["final_loss"] is not None
  # Each process feeds its half of the same global batches: the parameters of one device.
  run_main.assert_trees_close(run_main.saved_state(workdir, NUM_STEPS)["params"],
                              run_main.saved_state(os.path.join(runs["dir"], "one"), NUM_STEPS)["params"],
                              rtol=1e-4, atol=2e-5)
