"""The command line's first hour: every slip is one line on stderr naming the fix (exit 2),
``--help`` lists the modes and every config file (exit 0), and a trained run is usable from
Python in any directory through ``score_jax.load_run``."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

import score_jax
from score_jax import config_files
from score_jax import sampling
from score_jax.modes import train

import run_main

# One worker computes this module's shared fixture (pytest.ini: --dist loadgroup).
pytestmark = pytest.mark.xdist_group("cli")

ROOT = pathlib.Path(__file__).resolve().parents[1]
SMOKE = "configs/toy/gmm2d.py:smoke"

# (name, extra arguments, what the one line must say); {tmp} is a fresh folder, {file} a file.
SLIPS = [
    ("unknown_field", [f"--config={SMOKE}", "--config.training.num_stepz=5"],
     "no field config.training.num_stepz; did you mean num_steps?"),
    ("field_of_a_value", [f"--config={SMOKE}", "--config.training.num_steps.x=5"],
     "config.training.num_steps is a value (int), not a section"),
    ("missing_config_file", ["--config=configs/toy/gmm3d.py"], "no such config file; config files: "),
    ("unknown_variant", ["--config=configs/toy/gmm2d.py:smok"], "unknown variant 'smok'; choose one of"),
    ("workdir_is_a_file", [f"--config={SMOKE}", "--workdir={file}"], "is a file, not a folder"),
    ("workdir_is_a_file_sample", [f"--config={SMOKE}", "--workdir={file}", "--mode=sample"],
     "is a file, not a folder"),
    ("unknown_mode", [f"--config={SMOKE}", "--mode=fly"], "value should be one of"),
    ("bad_value", [f"--config={SMOKE}", "--config.training.num_steps=many"], "--config.training.num_steps=many"),
    ("no_workdir", [f"--config={SMOKE}"], "Flag --workdir must have a value"),
    ("heartbeat_timeout", [f"--config={SMOKE}", "--distributed", "--heartbeat_timeout=0"],
     "flag --heartbeat_timeout=0: 0 is not a positive integer"),
]


@pytest.fixture(scope="module")
def slips(tmp_path_factory):
  """Runs every slip at once (each is a fresh ``main.py`` process), from a directory that is not
  the repository, so config paths must resolve through the installed ``configs`` package."""
  tmp = tmp_path_factory.mktemp("slips")
  a_file = tmp / "not_a_folder"
  a_file.write_text("a user's file\n")
  procs = {}
  for name, args, _ in SLIPS:
    args = [a.replace("{file}", str(a_file)) for a in args]
    if not any(a.startswith("--workdir") for a in args) and name != "no_workdir":
      args.append(f"--workdir={tmp / name}")
    procs[name] = subprocess.Popen([sys.executable, str(ROOT / "main.py"), *args], cwd=tmp, env=run_main.env(),
                                   stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  results = {name: (proc.wait(timeout=300), *proc.communicate()) for name, proc in procs.items()}
  assert a_file.read_text() == "a user's file\n"  # untouched
  return results


@pytest.mark.parametrize("name, args, fix", SLIPS, ids=[s[0] for s in SLIPS])
def test_a_slip_is_one_line_naming_the_fix(slips, name, args, fix):
  del args
  returncode, stdout, stderr = slips[name]
  lines = stderr.strip().splitlines()
  assert returncode == 2, stderr
  assert len(lines) == 1, stderr
  assert lines[0].startswith("error: ") and fix in lines[0], lines[0]
  assert "Traceback" not in stdout + stderr


def test_help_lists_modes_and_every_config_file_and_exits_0():
  result = subprocess.run([sys.executable, str(ROOT / "main.py"), "--help"], cwd="/", env=run_main.env(),
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  lines = result.stdout.splitlines()
  files = sorted(p.relative_to(ROOT).as_posix() for p in (ROOT / "configs").rglob("*.py")
                 if "def get_config" in p.read_text())
  assert len(files) >= 14
  for path in files:
    assert sum(line.split()[:1] == [path] for line in lines) == 1, path  # one line each
  import main  # pylint: disable=import-outside-toplevel
  for mode in main.MODES:
    assert sum(line.split()[:1] == [mode] for line in lines) == 1, mode


def test_config_files_load_by_path_from_anywhere(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_files.load("configs/ve/digits.py:smoke")
  assert config.data.name == "digits"
  assert config_files.load(str(ROOT / "configs/toy/gmm2d.py")).training.num_steps > 0
  with pytest.raises(config_files.ConfigFileError, match=r"^no field config\.sampling\.pc\.snrr; did you mean snr\?$"):
    config_files.check_fields(config, ["sampling.pc.snrr"])
  config_files.check_fields(config, ["sampling.pc.snr", "sde.ve.sigma_max"])  # existing fields pass


def test_load_run_from_another_directory_matches_sample_mode(tmp_path, monkeypatch):
  workdir = tmp_path / "run"
  config = config_files.load(SMOKE)
  config.sampling.pc.corrector = "none"  # the langevin corrector's step uses batch-mean norms
  config.sampling.num_samples = 16
  train.run(config, str(workdir))
  overrides = ["--config.sampling.pc.corrector=none", "--config.sampling.num_samples=16"]
  result = run_main.run(run_main.main_command(str(workdir), SMOKE, overrides, mode="sample"))
  assert result.returncode == 0, result.stderr[-2000:]
  assert "Unable to initialize backend 'tpu'" not in result.stdout + result.stderr  # no TPU probe noise
  with np.load(workdir / "samples" / "0" / "samples.npz") as data:
    cli = data["samples"]

  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  monkeypatch.chdir(elsewhere)
  run = score_jax.load_run("../run")
  assert run.step == config.training.num_steps and run.data_shape == (2,)
  assert run.sampling_method == "pc" and run.sampling_options["corrector"] == "none"
  key = run.draw_key(0)
  keys = jax.vmap(lambda j: jax.random.fold_in(key, j))(np.arange(16, dtype=np.uint32))
  x, nfe = sampling.sample(keys, run.sde, run.score_fn, (16,) + run.data_shape, run.sampling_method,
                           **run.sampling_options)
  np.testing.assert_allclose(np.asarray(x), cli, rtol=1e-5, atol=1e-5)
  assert int(np.max(nfe)) == config.sampling.pc.num_steps + 1  # predictor steps + the denoise

  with pytest.raises(FileNotFoundError, match=r"no checkpoint or EMA export of step 7"):
    score_jax.load_run(str(workdir), step=7)
  with pytest.raises(FileNotFoundError, match=r"config\.json does not exist"):
    score_jax.load_run(str(elsewhere))


def test_configs_import_from_anywhere_after_install(tmp_path):
  """``pip install`` (editable or not) installs ``configs`` beside ``score_jax``."""
  env = {k: v for k, v in run_main.env().items() if k != "PYTHONPATH"}
  code = "from configs.toy import gmm2d; from configs.ve import digits; print(digits.get_config('smoke').data.name)"
  result = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=120)
  assert result.returncode == 0 and result.stdout.strip() == "digits", result.stderr
