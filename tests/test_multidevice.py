"""Data parallelism: 4 simulated devices give the 1-device loss trajectory and parameters; two
JAX processes on localhost (Gloo) train and checkpoint through launch/local_multiprocess.py."""

import json
import os
import sys

import run_main

CONFIG = "configs/ve/digits.py:smoke"
SCRIPT = """
import json, sys
sys.path.insert(0, {root!r})
import jax
from tests.test_configs import load
from score_jax import experiment, train
_, config = load("configs/ve/digits.py", "smoke")
config.training.batch_size = 6
try:
  experiment.build(config)
except experiment.ConfigError as e:
  print("BAD_BATCH", e)
config.training.num_steps = 12
config.training.batch_size = 16
config.sampling.num_samples = 8
result = train.train_and_evaluate(config, {workdir!r})
print("RESULT", json.dumps({{"devices": jax.device_count(), "history": result.history,
                            "mesh": result.metrics["num_devices"]}}))
"""


def _train(workdir: str, devices: int) -> dict:
  result = run_main.run([sys.executable, "-c", SCRIPT.format(root=str(run_main.ROOT), workdir=workdir)],
                        devices=devices)
  assert result.returncode == 0, result.stderr[-3000:]
  lines = result.stdout.splitlines()
  out = json.loads(next(l for l in lines if l.startswith("RESULT "))[len("RESULT "):])
  out["bad_batch"] = next((l[len("BAD_BATCH "):] for l in lines if l.startswith("BAD_BATCH ")), None)
  return out


def test_four_devices_match_one_device(tmp_path):
  one = _train(str(tmp_path / "one"), devices=1)
  four = _train(str(tmp_path / "four"), devices=4)
  assert (one["devices"], one["mesh"]) == (1, 1) and (four["devices"], four["mesh"]) == (4, 4)
  # A batch that does not split over the devices is refused before compiling, naming the field.
  assert one["bad_batch"] is None
  assert four["bad_batch"] == ("config.training.batch_size=6: batch size not divisible by the device count "
                               "(4 devices); use a positive multiple of 4.")
  steps = [s for s, _ in one["history"]]
  assert steps == list(range(12)) and [s for s, _ in four["history"]] == steps
  for (_, a), (_, b) in zip(one["history"], four["history"]):
    assert abs(a - b) <= 1e-5 * abs(a) + 1e-6, (one["history"], four["history"])
  # Adam divides by √v: where a gradient is ~0, reduction-order round-off becomes an update of
  # order lr·1e-2; 12 steps at lr ≤ 2e-4 stay below 2e-5.
  run_main.assert_trees_close(run_main.saved_state(str(tmp_path / "four"), 12)["params"],
                              run_main.saved_state(str(tmp_path / "one"), 12)["params"], rtol=1e-4, atol=2e-5)


def test_two_processes_on_localhost_train_and_checkpoint(tmp_path):
  workdir = str(tmp_path / "two")
  overrides = ["--config.training.num_steps=6", "--config.training.batch_size=8", "--config.training.snapshot_freq=3"]
  result = run_main.run([sys.executable, str(run_main.ROOT / "launch" / "local_multiprocess.py"),
                         "--num_processes=2", "--timeout=500", "--",
                         *run_main.main_command(workdir, CONFIG, overrides)[2:]])
  logs = "".join(open(os.path.join(workdir, f"process_{i}.log")).read()[-1500:] for i in range(2)
                 if os.path.exists(os.path.join(workdir, f"process_{i}.log")))
  assert result.returncode == 0, result.stdout + logs
  assert "2 device(s) in 2 process(es)" in logs
  assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["3", "6"]
  with open(os.path.join(workdir, "metrics_step6.json")) as f:
    metrics = json.load(f)
  assert metrics["num_devices"] == 2 and metrics["final_loss"] is not None
  # Same global batches as one process with two devices: the same parameters.
  reference = str(tmp_path / "ref")
  single = run_main.run(run_main.main_command(reference, CONFIG, overrides), devices=2)
  assert single.returncode == 0, single.stderr[-3000:]
  run_main.assert_trees_close(run_main.saved_state(workdir, 6)["params"], run_main.saved_state(reference, 6)["params"],
                              rtol=1e-4, atol=2e-5)
