"""FSDP and compile once (README "Scaling out").

FSDP (``config.training.fsdp``): the sharding rule; 4 simulated devices training with sharded
parameters, power-EMA profiles and optimizer state reach the replicated run's parameters; the checkpoint they
write restores on 1 device (this process) and on 2 (a child), equal to what was saved.

Compile once: a ``main.py`` run of the FSDP config after the first loads its train step and
sampler from the persistent compilation cache; a 1-device eval of the 3 FSDP checkpoints
compiles the bits/dim solve once.

One 4-device child trains both runs (the toy target's smoke config: the same sharded step,
Orbax saves and sampler as the image configs, at a fraction of their compile time), with a
compilation cache of its own so that its compiles are cold and the ``main.py`` run's warm.
"""

import functools
import json
import os
import re
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from score_jax import checkpointing
from score_jax import compilation
from score_jax import config_files
from score_jax import experiment
from score_jax import likelihood
from score_jax import sharding
from score_jax.jobs import train_step
from score_jax.modes import eval as eval_mode

import run_main

pytestmark = pytest.mark.xdist_group("fsdp")

STEPS = 12
MIN_SIZE = 64  # the smoke MLP's 16×16 kernels are sharded, its biases replicated
CONFIG = "configs/toy/gmm2d.py:smoke"
OVERRIDES = {"training.num_steps": STEPS, "training.snapshot_freq": 4, "training.max_to_keep": 3,
             "training.log_freq": 4, "training.fsdp_min_size": MIN_SIZE, "sampling.num_samples": 16,
             "sampling.pc.num_steps": 4, "sampling.pc.corrector": "none",
             # The power EMA's two profiles: a second parameter copy, sharded like the others.
             "model.ema.kind": "power", "model.ema.snapshot_freq": 4}
LINE = re.compile(r"Compile: (train step|sampler) ([0-9.]+) s \((\d+) executable\(s\), (\d+) from the persistent cache")


def _config(fsdp: bool):
  config = config_files.load(CONFIG)
  for name, value in {**OVERRIDES, "training.fsdp": fsdp}.items():
    section, field = name.rsplit(".", 1)
    setattr(functools.reduce(getattr, section.split("."), config), field, value)
  return config


def _env(devices: int, cache: str) -> dict:
  """A child's environment with its own compilation cache, every program stored."""
  return dict(run_main.env(devices), JAX_COMPILATION_CACHE_DIR=cache, JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")


def _flat(tree) -> dict:
  return {jax.tree_util.keystr(path): np.asarray(leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}


# Trains the replicated and the FSDP run on 4 devices; saves their final states as npz and the
# FSDP state's partition specs and per-device shard shapes as json.
TRAIN_4 = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/tests")
from test_fsdp import _config, _flat
from score_jax.modes import train
out = {{"devices": jax.device_count()}}
for name, fsdp in (("replicated", False), ("fsdp", True)):
  result = train.run(_config(fsdp), {tmp!r} + "/" + name)
  np.savez({tmp!r} + f"/{{name}}.npz", **_flat(result.state))
  out[name] = {{k: [str(x.sharding.spec), list(x.addressable_shards[0].data.shape), list(x.shape)]
               for k, x in zip(_flat(result.state), jax.tree.leaves(result.state))}}
  out[name + "_compile"] = result.metrics["compile"]
print("RESULT " + json.dumps(out))
"""

# Restores the checkpoints of step STEPS on 2 devices with the FSDP target shardings: the FSDP
# run's, and the replicated run's (a replicated run resumed with FSDP).
RESTORE_2 = """
import json, sys
import jax, numpy as np
sys.path.insert(0, {root!r}); sys.path.insert(0, {root!r} + "/tests")
from test_fsdp import _config, _restore, _flat
def equal(name):
  saved = np.load({tmp!r} + f"/{{name}}.npz")
  return all(np.array_equal(saved[k], v) for k, v in _flat(_restore(_config(True), {tmp!r} + "/" + name)).items())
state = _restore(_config(True), {tmp!r} + "/fsdp")
out = {{"devices": jax.device_count(), "equal": equal("fsdp"), "replicated_equal": equal("replicated"),
        "shards": {{k: [str(x.sharding.spec), list(x.addressable_shards[0].data.shape), len(x.sharding.device_set)]
                   for k, x in zip(_flat(state), jax.tree.leaves(state))}}}}
print("RESULT " + json.dumps(out))
"""


def _restore(config, workdir: str):
  """The checkpoint of step STEPS restored with this process's mesh and the config's state shardings."""
  setup = experiment.build(config)
  shardings = train_step.state_shardings(experiment.train_options(config), setup, experiment.abstract_state(setup))
  with checkpointing.Checkpointer(workdir, create=False, async_save=False) as ckpt:
    return ckpt.restore(experiment.abstract_state(setup, shardings), step=STEPS)


def _child(script: str, devices: int, cache: str) -> dict:
  result = subprocess.run([sys.executable, "-c", script], cwd=run_main.ROOT, env=_env(devices, cache),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  line = next(l for l in result.stdout.splitlines() if l.startswith("RESULT "))
  return json.loads(line[len("RESULT "):])


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
  tmp = str(tmp_path_factory.mktemp("fsdp"))
  out = _child(TRAIN_4.format(root=str(run_main.ROOT), tmp=tmp), devices=4, cache=os.path.join(tmp, "cache"))
  out["tmp"] = tmp
  return out


def test_fsdp_spec_splits_the_largest_divisible_axis():
  assert sharding.fsdp_spec((3, 64, 128), 4, min_size=0) == P(None, None, "data")
  assert sharding.fsdp_spec((3, 3, 64, 6), 4, min_size=0) == P(None, None, "data")  # 6 is not divisible by 4
  assert sharding.fsdp_spec((128, 128), 4, min_size=0) == P("data")  # a tie: the first axis
  assert sharding.fsdp_spec((3, 5, 7), 4, min_size=0) == P()  # no divisible axis: replicated
  assert sharding.fsdp_spec((64, 128), 4, min_size=64 * 128 + 1) == P()  # small: replicated
  assert sharding.fsdp_spec((128,), 4) == P()  # a bias under FSDP_MIN_SIZE
  assert sharding.fsdp_spec((256, 256), 4) == P("data")
  assert sharding.fsdp_spec((256, 256), 1) == P()  # one device: nothing to split
  assert sharding.fsdp_spec((), 4, min_size=0) == P()  # the step counter


def test_fsdp_config_fields_are_validated_before_compiling():
  config = _config(True)
  config.training.fsdp = None
  with pytest.raises(experiment.ConfigError, match=r"^config\.training\.fsdp: must be True or False"):
    experiment.build(config)
  config = _config(True)
  config.training.fsdp_min_size = -1
  with pytest.raises(experiment.ConfigError, match=r"^config\.training\.fsdp_min_size: must be an integer >= 0"):
    experiment.build(config)


def test_four_devices_fsdp_matches_replicated_run(runs):
  assert runs["devices"] == 4
  fsdp, repl = runs["fsdp"], runs["replicated"]
  assert set(fsdp) == set(repl)
  sharded = {k for k, (spec, _, _) in fsdp.items() if "data" in spec}
  # Every kernel of >= MIN_SIZE elements is split 4 ways: params, both EMA profiles and both Adam moments.
  for part in (".params", ".ema_params", ".extra_ema", ".opt_state"):
    assert any(k.startswith(part) for k in sharded), (part, sorted(sharded))
  for k, (spec, shard, shape) in fsdp.items():
    if int(np.prod(shape)) >= MIN_SIZE and any(d % 4 == 0 for d in shape):
      assert k in sharded, (k, spec, shape)
      axis = [i for i, (a, b) in enumerate(zip(shard, shape)) if a != b]
      assert len(axis) == 1 and shard[axis[0]] * 4 == shape[axis[0]], (k, shard, shape)
    else:
      assert k not in sharded and shard == shape, (k, spec, shape)
  assert all(spec == str(P()) for spec, _, _ in repl.values()), repl
  # The same parameters as the replicated run after STEPS steps (reduction order only differs;
  # Adam's 1/√v turns round-off where a gradient is ~0 into updates of order lr·1e-3).
  a, b = np.load(os.path.join(runs["tmp"], "fsdp.npz")), np.load(os.path.join(runs["tmp"], "replicated.npz"))
  assert int(a[".step"]) == int(b[".step"]) == STEPS
  for k in a.files:
    np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=2e-5, err_msg=k)
  with open(os.path.join(runs["tmp"], "fsdp", f"metrics_step{STEPS}.json")) as f:
    metrics = json.load(f)
  assert metrics["num_devices"] == 4 and np.isfinite(metrics["final_loss"])


def test_checkpoint_of_four_devices_restores_on_one_and_two(runs):
  workdir = os.path.join(runs["tmp"], "fsdp")
  saved = np.load(os.path.join(runs["tmp"], "fsdp.npz"))
  # 1 device (this process), with the FSDP and with the replicated target shardings.
  for fsdp in (True, False):
    state = _restore(_config(fsdp), workdir)
    restored = _flat(state)
    assert set(restored) == set(saved.files)
    for k, v in restored.items():
      np.testing.assert_array_equal(v, saved[k], err_msg=k)
    assert all(len(x.sharding.device_set) == 1 for x in jax.tree.leaves(state))
  # 2 devices (a child): split in halves where the 4-device run split in quarters.
  out = _child(RESTORE_2.format(root=str(run_main.ROOT), tmp=runs["tmp"]), devices=2,
               cache=os.path.join(runs["tmp"], "cache"))
  assert out["devices"] == 2 and out["equal"] and out["replicated_equal"]
  for k, (spec, shard, ndev) in out["shards"].items():
    _, _, shape = runs["fsdp"][k]
    assert ndev == 2
    if "data" in spec:
      assert sum(a * 2 == b for a, b in zip(shard, shape)) == 1, (k, shard, shape)
  assert sum("data" in spec for spec, _, _ in out["shards"].values()) >= 6


def test_one_device_eval_of_three_fsdp_checkpoints_compiles_bpd_once(runs):
  # A copy of the FSDP run's config evaluates checkpoints 4, 8, 12 on this process's 1 device.
  config = _config(True)
  ev = config.eval
  ev.num_loss_batches, ev.num_samples, ev.bpd_num_examples, ev.batch_size = 0, 0, 8, 8
  workdir = os.path.join(runs["tmp"], "fsdp")
  assert checkpointing.checkpoint_steps(workdir) == [4, 8, 12]
  before = likelihood._solve._cache_size()  # pylint: disable=protected-access
  records = eval_mode.run(config, workdir).records
  assert [r["step"] for r in records] == [4, 8, 12]
  assert all(np.isfinite(r["bpd"]) for r in records)
  assert len({r["bpd"] for r in records}) == 3  # three different models, one compiled solve
  assert likelihood._solve._cache_size() - before == 1  # pylint: disable=protected-access
  # XLA compiles (or cache loads) while each step's bits/dim ran: only the first step's.
  assert records[0]["bpd_compiles"] >= 1 and [r["bpd_compiles"] for r in records[1:]] == [0, 0], records


def test_second_run_of_the_same_config_loads_from_the_cache(runs):
  # The FSDP run again, now through main.py into a new workdir, with the child's cache folder.
  tmp = runs["tmp"]
  cache, workdir = os.path.join(tmp, "cache"), os.path.join(tmp, "fsdp_again")
  overrides = [f"--config.{k}={v}" for k, v in {**OVERRIDES, "training.fsdp": True}.items()]
  cmd = run_main.main_command(workdir, CONFIG, [*overrides, f"--compilation_cache={cache}"])
  result = subprocess.run(cmd, cwd=run_main.ROOT, env=_env(4, os.path.join(tmp, "unused")), capture_output=True,
                          text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  assert f"Persistent compilation cache: {cache}." in result.stderr  # the flag wins over the environment
  lines = {m.group(1): (float(m.group(2)), int(m.group(3)), int(m.group(4))) for m in LINE.finditer(result.stderr)}
  first = runs["fsdp_compile"]
  assert set(lines) == set(first) == {"train step", "sampler"}
  for what, (seconds, n, hits) in lines.items():
    assert first[what]["cache_hits"] == 0 and first[what]["compiles"] >= 1, (what, first)  # compiled the first time
    assert n >= 1 and hits == n, (what, lines)  # loaded the second
    assert seconds < first[what]["compile_s"], (what, seconds, first)
  # Same config, same parameters.
  run_main.assert_trees_close(run_main.saved_state(workdir, STEPS)["params"],
                              run_main.saved_state(os.path.join(tmp, "fsdp"), STEPS)["params"], rtol=0, atol=0)


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
