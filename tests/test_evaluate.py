"""--mode=eval / fid_stats on a tiny trained digits run: results per checkpoint, caching,
preemption-safe restarts, waiting, the real-vs-noise reference and one-line errors."""

import json
import logging
import math
import os
import pathlib
import shutil

import ml_collections
import numpy as np
import pytest

from score_jax import experiment
from score_jax.modes import train
from score_jax.data import embedded
from score_jax.modes import eval as eval_mode
from score_jax.modes import fid_stats as fid_stats_mode
from score_jax.jobs import features
from score_jax.modes import train_classifier as train_classifier_mode
from tests import run_main
from tests.test_configs import load

# One worker computes this module's shared fixture (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("evaluate")


def _config():
  """digits smoke (4 steps, checkpoints at 2 and 4) with a classifier good enough for features."""
  _, config = load("configs/ve/digits.py", "smoke")
  config.eval.classifier.update(dict(widths=(16, 32), feature_dim=32, num_steps=300, batch_size=64, lr=2e-3))
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A trained smoke run, its classifier, its fid_stats and one eval over both checkpoints."""
  workdir = str(tmp_path_factory.mktemp("eval") / "digits")
  config = _config()
  train.run(config, workdir)
  info = train_classifier_mode.run(config, workdir).metrics
  stats = fid_stats_mode.run(config, workdir).metrics
  records = eval_mode.run(config, workdir).records
  return dict(workdir=workdir, config=config, info=info, stats=stats, records=records)


def _lines(workdir):
  return pathlib.Path(workdir, "eval", "results.jsonl").read_text().splitlines()


def test_eval_writes_one_line_per_checkpoint(run):
  workdir, records = run["workdir"], run["records"]
  assert [r["step"] for r in records] == [2, 4]
  lines = [json.loads(line) for line in _lines(workdir)]
  assert [r["step"] for r in lines] == [2, 4]
  for record in lines:
    for name in ("loss", "bpd", "fid", "kid", "is", "precision", "recall", "sample_time_s", "bpd_time_s"):
      assert isinstance(record[name], float) and math.isfinite(record[name]), (name, record)
    # An 8x8 model of 17 levels: the bpd bound lies between 0 and log2(17) + the noise it cannot explain.
    assert 0.0 < record["bpd"] < 12.0
    assert record["fid"] > 0.0 and record["num_samples"] == 32 and record["nfe"] > 0
    assert record["features"] == "classifier" and record["nonfinite_samples"] == 0
    assert os.path.isfile(os.path.join(workdir, "eval", f"samples_step{record['step']}.png"))
  # Steps compare: the held-out loss batches and keys are fixed, so only the parameters differ.
  assert lines[0]["loss"] != lines[1]["loss"]
  events = os.listdir(os.path.join(workdir, "eval", "tensorboard"))
  assert any(name.startswith("events.out.tfevents") for name in events)


def test_rerun_neither_recomputes_nor_duplicates(run):
  workdir = run["workdir"]
  before = pathlib.Path(workdir, "eval", "results.jsonl").read_bytes()
  assert eval_mode.run(run["config"], workdir).records == []
  assert pathlib.Path(workdir, "eval", "results.jsonl").read_bytes() == before


def test_restart_continues_where_it_stopped(run, tmp_path, caplog):
  """A run killed after its first line evaluates only the second checkpoint on restart."""
  workdir = str(tmp_path / "copy")
  shutil.copytree(run["workdir"], workdir)
  path = pathlib.Path(workdir, "eval", "results.jsonl")
  first = _lines(workdir)[0]
  path.write_text(first + "\n" + '{"step": 4, "lo')  # a torn line, as a kill mid-write leaves it
  with caplog.at_level(logging.INFO):
    records = eval_mode.run(run["config"], workdir).records
  assert [r["step"] for r in records] == [4]
  # Like training, eval logs what its first sampler call and bits/dim solve compiled.
  compiled = [r.getMessage() for r in caplog.records if r.getMessage().startswith("Compile: ")]
  assert [m.split(" s (")[0].rsplit(" ", 1)[0] for m in compiled] == ["Compile: bits/dim solve", "Compile: sampler"]
  steps = [json.loads(line)["step"] for line in _lines(workdir)[:1] + _lines(workdir)[2:]]
  assert steps == [2, 4]
  # Same keys, same parameters: the recomputed step matches the first run's numbers.
  again = json.loads(_lines(workdir)[-1])
  original = json.loads(_lines(run["workdir"])[1])
  for name in ("loss", "bpd", "fid", "kid"):
    assert again[name] == pytest.approx(original[name], rel=1e-4, abs=1e-6), name


def test_fid_stats_are_computed_once_and_reused(run):
  workdir, config = run["workdir"], run["config"]
  paths = run["stats"]
  assert sorted(paths) == ["test", "train"]
  files = [p for split in paths for p in features.stats_paths(workdir, "classifier", split)]
  before = {p: (os.stat(p).st_mtime_ns, pathlib.Path(p).read_bytes()) for p in files}
  assert fid_stats_mode.run(config, workdir).metrics == paths
  assert before == {p: (os.stat(p).st_mtime_ns, pathlib.Path(p).read_bytes()) for p in files}
  with np.load(paths["train"]) as stats:
    assert stats["mu"].shape == (32,) and int(stats["num_samples"]) == 1500


def test_real_held_out_scores_far_better_than_noise(run):
  path = pathlib.Path(run["workdir"], "eval", "reference.json")
  ref = json.loads(path.read_text())
  real, noise = ref["real_heldout"], ref["noise"]
  assert real["num_images"] == embedded.DIGITS_NUM_TEST and noise["num_images"] == 32
  assert real["fid"] < 0.1 * noise["fid"], ref
  assert real["kid"] < 0.3 * noise["kid"], ref  # held-out writers differ: KID is noisier than FID here
  assert real["precision"] > noise["precision"] and real["is"] > noise["is"]
  # Training images themselves (as many as samples) score best: the finite-sample floor.
  assert ref["real_train_subset"]["num_images"] == 32 and ref["real_train_subset"]["fid"] < 0.1 * noise["fid"]
  # Early (4-step) checkpoints are noise-like: far from the real held-out data.
  for record in run["records"]:
    assert record["fid"] > 10 * real["fid"]


def test_empty_workdir_without_wait_is_one_clear_error(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No checkpoint in .*--mode=train.*--config.eval.wait=True"):
    eval_mode.run(_config(), str(tmp_path / "empty"))


def test_empty_workdir_with_wait_logs_and_stops_at_the_timeout(tmp_path, caplog):
  config = _config()
  config.eval.update(dict(wait=True, poll_seconds=0.05, wait_timeout_seconds=0.3, num_samples=0))
  workdir = str(tmp_path / "empty")
  with caplog.at_level(logging.INFO, logger="absl"):
    assert eval_mode.run(config, workdir).records == []
  text = caplog.text
  assert text.count("Waiting for checkpoints in") >= 2  # one message per poll
  assert "waiting up to step 4" in text  # end_step None with wait: config.training.num_steps
  assert "stopped waiting" in text


@pytest.mark.parametrize("field, value, error, message", [
    ("features", "clip", experiment.ConfigError, r"config.eval.features: unknown extractor 'clip'"),
    ("begin_step", 5, experiment.ConfigError, r"config.eval.begin_step: 5 is after config.eval.end_step=3"),
    ("bpd_divergence", "exact_trace", experiment.ConfigError, r"config.eval.bpd_divergence"),
    ("num_sample", 10, experiment.ConfigError, r"config.eval.num_sample: unknown field"),
    ("inception_path", "/nonexistent/inception.npz", FileNotFoundError,
     r"FID Inception weights not found.*config.eval.inception_path"),
])
def test_bad_input_is_one_line_naming_the_field(run, field, value, error, message):
  config = _config()
  config.eval.end_step = 3
  if field == "inception_path":
    config.eval.features = "inception"
    config.eval.end_step = 0
  with config.unlocked():
    config.eval[field] = value
  before = pathlib.Path(run["workdir"], "eval", "results.jsonl").read_bytes()
  with pytest.raises(error, match=message) as caught:
    eval_mode.run(config, run["workdir"])
  assert "\n" not in str(caught.value)
  assert pathlib.Path(run["workdir"], "eval", "results.jsonl").read_bytes() == before


def test_to_levels_inverts_the_pipeline():
  k = np.arange(17, dtype=np.uint8).reshape(1, 17, 1, 1)  # every level of the digits
  for data_range in ((0.0, 1.0), (-1.0, 1.0)):
    plain = embedded.to_data_range(embedded.to_unit_interval(k, levels=17), data_range)
    assert np.array_equal(features.to_levels(plain, levels=17, data_range=data_range, dequantized=False), k)
    noise = np.full(k.shape, 0.999, np.float32)
    deq = embedded.to_data_range(embedded.to_unit_interval(k, levels=17, noise=noise), data_range)
    assert np.array_equal(features.to_levels(deq, levels=17, data_range=data_range, dequantized=True), k)


def test_toy_eval_reports_bpd_against_the_exact_target(tmp_path):
  _, config = load("configs/toy/gmm2d.py", "smoke")
  config.eval = ml_collections.ConfigDict(dict(num_samples=64, sample_batch_size=64, bpd_num_examples=16,
                                               batch_size=16, bpd_rtol=1e-3, bpd_atol=1e-3, num_loss_batches=2))
  config.training.num_steps = 10
  workdir = str(tmp_path / "toy")
  train.run(config, workdir)
  (record,) = eval_mode.run(config, workdir).records
  assert record["step"] == 10 and record["features"] is None
  for name in ("loss", "bpd", "bpd_target", "sliced_w2", "coverage"):
    assert math.isfinite(record[name]), name
  assert 0.5 < record["bpd_target"] < 3.0  # the 8-Gaussian ring: ~1.7 bits per dimension
  assert not os.path.exists(os.path.join(workdir, "eval", "reference.json"))


def test_main_eval_on_an_empty_workdir_exits_with_one_line(tmp_path):
  result = run_main.run(run_main.main_command(str(tmp_path / "none"), "configs/ve/digits.py:smoke", mode="eval"))
  assert result.returncode != 0
  assert result.stderr.strip().splitlines()[-1].startswith("error: No checkpoint in ")


def test_configs_without_eval_fields_get_those_of_common():
  """configs/common.py is the one source of the eval defaults: a config whose eval section lacks
  fields (the toy ones have only a few) reads common's values for them."""
  import ml_collections  # pylint: disable=g-import-not-at-top
  from configs import common  # pylint: disable=g-import-not-at-top
  _, partial = load("configs/ve/digits.py", "smoke")
  partial.eval = ml_collections.ConfigDict(dict(num_samples=40))
  opts, want = experiment.eval_options(partial), common.eval_section()
  assert opts.num_samples == 40 and opts.kid_subsets == want.kid_subsets and opts.features == want.features
  assert opts.classifier.widths == tuple(want.classifier.widths) and opts.classifier.fit.lr == want.classifier.lr
  _, digits = load("configs/ve/digits.py")
  assert experiment.eval_options(digits).features == "classifier"
  _, cifar = load("configs/ve/cifar10_ncsnpp_continuous.py", "smoke")  # smoke switches to embedded shapes
  assert experiment.eval_options(cifar).features == "classifier"
