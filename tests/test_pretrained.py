"""Published-checkpoint loading (score_jax.pretrained) and score_sde's conventions (score_fn).

The golden fixtures in tests/fixtures/pretrained were written by tools/pretrained_fixtures.py
with the reference code itself — score_sde's Flax NCSN++ and diffusers' UNet2DModel — from
float32 weights, their outputs computed in float64.  Here they load through the converter
(neither torch nor score_sde is needed) and must match to 1e-5 relative; in float64 they
agree to ~1e-14 (score_sde's positional embedding is float32 inside: ~1e-8).
"""

from __future__ import annotations

import functools
import gzip
import importlib
import json
import pathlib
import pickle
import re
import shutil
import sys
import types
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

import run_main
from score_jax import config_files
from score_jax import experiment
from score_jax import models
from score_jax import pretrained
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax.modes import train
from score_jax.jobs import params as params_lib
from tools import pretrained_fixtures

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "pretrained"
SCORE_SDE_CASES = ("ve_ncsnpp", "ve_ncsnpp_skip", "vp_ddpmpp", "ddpm_blocks")
RTOL = 1e-5
CONFIG = "configs/ve/cifar10_ncsnpp_continuous.py:smoke"
# The smoke config reshaped into the ve_ncsnpp fixture's network (nf 4, 8×8, attention at 4×4).
FIXTURE_OVERRIDES = ("--config.data.image_size=8", "--config.model.network.nf=4",
                     "--config.model.network.attn_resolutions=(4,)")


def rel_err(got, want) -> float:
  return float(np.max(np.abs(np.asarray(got) - want)) / np.max(np.abs(want)))


def f64(tree):
  return jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)


def case(name: str) -> tuple[dict, dict, Any]:
  """(meta.json, reference arrays, the score_jax network) of a score_sde fixture."""
  meta = json.loads((FIXTURES / name / "meta.json").read_text())
  ref = dict(np.load(FIXTURES / name / "reference.npz"))
  return meta, ref, models.get_model("ncsnpp", **meta["network"])




@pytest.mark.parametrize("name", SCORE_SDE_CASES)
def test_score_sde_checkpoint_matches_score_sde(name):
  """The converted network under conditioning="score_sde" gives score_sde's own score_fn: that is
  its network output (VE: out / σ(t), out already divided by σ inside; VP / sub-VP: −out / s(t))
  fed σ(t) or 999 t and, for uncentered data, 2x − 1."""
  meta, ref, model = case(name)
  src = str(FIXTURES / name / "checkpoint_7")
  ema, info = pretrained.convert(src, model)
  assert info["step"] == 7 and info["format"] == "score_sde" and info["params"] == "ema"
  apply = lambda p, x, c: model.apply({"params": p}, x, c)  # noqa: E731  (op by op: the cases share op compiles)
  with jax.enable_x64(True):
    for key in (k for k in ref if k.startswith("score_")):
      sde = sde_lib.get_sde(key[len("score_"):], **meta["sde_params"])
      score = score_fn_lib.get_score_fn(sde, apply, f64(ema), conditioning="score_sde",
                                        centered=meta["centered"])(jnp.asarray(ref["x"]), jnp.asarray(ref["t"]))
      assert score.dtype == jnp.float64
      assert rel_err(score, ref[key]) < RTOL, key


def test_score_sde_raw_params():
  """--params=raw reads optimizer.target: the raw network output at score_sde's own conditioning."""
  meta, ref, model = case("ve_ncsnpp")
  raw, info = pretrained.convert(str(FIXTURES / "ve_ncsnpp" / "checkpoint_7"), model, params="raw")
  assert info["params"] == "raw"
  with jax.enable_x64(True):
    out = model.apply({"params": f64(raw)}, jnp.asarray(2.0 * ref["x"] - 1.0), jnp.asarray(ref["cond"]))
    out = out / ref["cond"][:, None, None, None]  # score_sde's scale_by_sigma
  assert rel_err(out, ref["out_raw"]) < RTOL
  assert rel_err(ref["out_ema"], ref["out_raw"]) > 0.1  # the two parameter sets differ


def celebahq_like() -> object:
  """The score_jax network of the diffusers fixture (google/ncsnpp-celebahq-256's block types)."""
  return models.get_model("ncsnpp", nf=128, ch_mult=(1, 1), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0,
                          progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
                          image_size=8, num_channels=3)


@pytest.fixture(scope="module")
def diffusers_arrays() -> dict[str, np.ndarray]:
  manifest = json.loads((FIXTURES / "diffusers" / "manifest.json").read_text())
  return pretrained_fixtures.deterministic_weights(manifest["arrays"], manifest["seed"])


def diffusers_folder(path: pathlib.Path, arrays: dict[str, np.ndarray], config: dict | None = None) -> str:
  path.mkdir()
  cfg = json.loads((FIXTURES / "diffusers" / "config.json").read_text()) | (config or {})
  (path / "config.json").write_text(json.dumps(cfg))
  save_file(arrays, str(path / "diffusion_pytorch_model.safetensors"))
  return str(path)


def test_diffusers_folder_matches_diffusers(tmp_path, diffusers_arrays):
  model = celebahq_like()
  params, info = pretrained.convert(diffusers_folder(tmp_path / "new", diffusers_arrays), model)
  assert info["format"] == "diffusers"
  ref = np.load(FIXTURES / "diffusers" / "reference.npz")
  with jax.enable_x64(True):
    apply = jax.jit(lambda p, x, c: model.apply({"params": p}, x, c))  # one compile beats op by op at 128 channels
    out = apply(f64(params), jnp.asarray(ref["x"], jnp.float64), jnp.asarray(ref["sigma"], jnp.float64))
    out = out / ref["sigma"][:, None, None, None]  # diffusers divides by σ (score_sde's scale_by_sigma)
  assert rel_err(out, ref["out"]) < RTOL
  # Files written by older diffusers: query / key / value / proj_attn and a duplicate time_proj.W.
  legacy = {k.replace(".to_q.", ".query.").replace(".to_k.", ".key.").replace(".to_v.", ".value.")
            .replace(".to_out.0.", ".proj_attn."): v for k, v in diffusers_arrays.items()}
  legacy["time_proj.W"] = legacy["time_proj.weight"]
  old, _ = pretrained.convert(diffusers_folder(tmp_path / "legacy", legacy), model)
  jax.tree.map(np.testing.assert_array_equal, old, params)


def test_torch_bin_reader_rebuilds_tensors(tmp_path):
  got = pretrained.read_torch_bin(str(FIXTURES / "torch_bin" / "state.bin"))
  want = np.load(FIXTURES / "torch_bin" / "expected.npz")
  assert sorted(got) == sorted(want.files)
  for k in want.files:  # float16, a transposed view, an offset view, a scalar, a Parameter, int64
    assert got[k].dtype == want[k].dtype and got[k].shape == want[k].shape, k
    np.testing.assert_array_equal(got[k], want[k])
  folder = tmp_path / "bin"
  folder.mkdir()
  (folder / "config.json").write_text("{}")
  shutil.copy(FIXTURES / "torch_bin" / "state.bin", folder / "diffusion_pytorch_model.bin")
  np.testing.assert_array_equal(pretrained.read_diffusers(str(folder))[1]["half.bias"], want["half.bias"])


def test_torch_bin_reader_refuses_other_classes(tmp_path):
  import pickle, zipfile  # pylint: disable=import-outside-toplevel,multiple-imports
  path = tmp_path / "evil.bin"
  with zipfile.ZipFile(path, "w") as z:
    z.writestr("archive/data.pkl", pickle.dumps({"a": print}))
  with pytest.raises(pickle.UnpicklingError, match="refusing builtins.print"):
    pretrained.read_torch_bin(str(path))


def one_line(excinfo) -> str:
  msg = str(excinfo.value)
  assert "\n" not in msg
  return msg


def test_mismatches_are_one_line_naming_the_array(tmp_path, diffusers_arrays):
  src = FIXTURES / "ve_ncsnpp" / "checkpoint_7"
  meta, _, model = case("ve_ncsnpp")
  wider = models.get_model("ncsnpp", **(meta["network"] | {"nf": 8}))
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.convert(str(src), wider)
  assert "'AttnBlockpp_0/NIN_0/b' has shape (8,)" in one_line(e)
  assert "AttnBlock_0/Conv_0/bias needs (16,)" in str(e.value)
  state = flax.serialization.msgpack_restore(src.read_bytes())
  extra = dict(state, params_ema=dict(state["params_ema"], Dense_7={"kernel": np.ones((2, 2), np.float32)}))
  (tmp_path / "extra").write_bytes(flax.serialization.msgpack_serialize(extra))
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.convert(str(tmp_path / "extra"), model)
  assert "'Dense_7/kernel'" in one_line(e) and "no place" in str(e.value)
  missing = dict(state, params_ema={k: v for k, v in state["params_ema"].items() if k != "Dense_1"})
  (tmp_path / "missing").write_bytes(flax.serialization.msgpack_serialize(missing))
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.convert(str(tmp_path / "missing"), model)
  assert "'Dense_1/bias'" in one_line(e) and "temb_dense_1/bias" in str(e.value) and "missing" in str(e.value)
  # A diffusers folder for another network: the config.json key, before any array is read.
  folder = diffusers_folder(tmp_path / "d", {}, {"layers_per_block": 2})
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.convert(folder, celebahq_like())
  assert "layers_per_block=2" in one_line(e)
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.convert(str(FIXTURES / "diffusers" / "config.json"), model)
  assert "not a flax msgpack checkpoint" in one_line(e)


# ---- score_sde's conventions, against their formulas -------------------------------------------


def test_score_sde_conditioning_formulas():
  """VE: cond σ_min (σ_max/σ_min)^t (not the marginal std), score out/σ(t), input 2x − 1 when uncentered;
  VP / sub-VP: cond 999 t, score −out/s(t)."""
  x = jnp.full((2, 3), 0.25)
  t = jnp.asarray([0.1, 0.7])
  seen = {}

  def apply(params, x, cond):
    seen["x"], seen["cond"] = x, cond
    return jnp.ones_like(x) * params

  ve = sde_lib.get_sde("ve", sigma_min=0.01, sigma_max=50.0)
  score = score_fn_lib.get_score_fn(ve, apply, 3.0, conditioning="score_sde", centered=False)(x, t)
  sigma = 0.01 * (50.0 / 0.01) ** np.asarray(t)
  np.testing.assert_allclose(seen["cond"], sigma, rtol=1e-5)
  assert not np.allclose(seen["cond"], ve.marginal_std(t), rtol=1e-3)  # the convention differs from score_jax's
  np.testing.assert_allclose(seen["x"], -0.5)  # 2 · 0.25 − 1
  np.testing.assert_allclose(score, np.broadcast_to(3.0 / sigma[:, None], (2, 3)), rtol=1e-5)
  score_fn_lib.get_score_fn(ve, apply, 3.0, conditioning="score_sde", centered=True)(x, t)
  np.testing.assert_allclose(seen["x"], 0.25)
  for name in ("vp", "subvp"):
    sde = sde_lib.get_sde(name, beta_min=0.1, beta_max=20.0)
    score = score_fn_lib.get_score_fn(sde, apply, 3.0, conditioning="score_sde", centered=True)(x, t)
    np.testing.assert_allclose(seen["cond"], 999.0 * np.asarray(t), rtol=1e-5)
    np.testing.assert_allclose(score, np.broadcast_to(-3.0 / np.asarray(sde.marginal_std(t))[:, None], (2, 3)),
                               rtol=1e-5)


# ---- the export, the config field, --mode=sample end to end -------------------------------------


@pytest.fixture(scope="module")
def export_dir(tmp_path_factory) -> pathlib.Path:
  """The ve_ncsnpp fixture converted by the command line, as a user would."""
  out = tmp_path_factory.mktemp("pt") / "export"
  proc = run_main.run([sys.executable, "-m", "score_jax.pretrained", f"--src={FIXTURES / 've_ncsnpp' / 'checkpoint_7'}",
                       f"--config={CONFIG}", *FIXTURE_OVERRIDES, f"--out={out}"], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  assert "--config.model.pretrained=" in proc.stdout
  return out


def smoke_config(**model):
  from configs.ve import cifar10_ncsnpp_continuous  # pylint: disable=import-outside-toplevel
  config = cifar10_ncsnpp_continuous.get_config("smoke")
  config.data.image_size = 8
  config.model.network.update(nf=4, attn_resolutions=(4,))
  config.model.update(model)
  return config


def test_export_and_config_validation(export_dir):
  meta = pretrained.read_meta(str(export_dir))
  assert meta["step"] == 7 and meta["conditioning"] == "score_sde" and meta["centered"] is False
  with pytest.raises(FileExistsError):  # never overwritten
    pretrained.export(str(FIXTURES / "ve_ncsnpp" / "checkpoint_7"), case("ve_ncsnpp")[2], str(export_dir))
  setup = experiment.build(smoke_config(pretrained=str(export_dir), conditioning="score_sde"))
  assert setup.pretrained == str(export_dir) and setup.centered is False
  assert params_lib.available_steps(setup, "/nonexistent/workdir") == [7]  # what --mode=eval iterates over
  with pytest.raises(experiment.ConfigError, match=r"^config.model.conditioning: .*conditioning=score_sde"):
    experiment.build(smoke_config(pretrained=str(export_dir)))
  config = smoke_config(pretrained=str(export_dir), conditioning="score_sde")
  config.model.network.nf = 8
  with pytest.raises(experiment.ConfigError, match=r"^config.model.pretrained: .*array \S+ has shape") as e:
    experiment.build(config)
  one_line(e)
  with pytest.raises(experiment.ConfigError, match=r"^config.model.pretrained: .*--mode=sample and --mode=eval only"):
    train.run(smoke_config(pretrained=str(export_dir), conditioning="score_sde"),
                             str(export_dir.parent / "never_written"))
  assert not (export_dir.parent / "never_written").exists()
  with pytest.raises(experiment.ConfigError, match=r"^config.model.pretrained: .*not a converted export"):
    experiment.build(smoke_config(pretrained=str(FIXTURES / "ve_ncsnpp" / "checkpoint_7"), conditioning="score_sde"))


# ---- the full-size published networks: every array has its place ---------------------------------


def published(kind: str) -> dict:
  with gzip.open(FIXTURES / f"{kind}_shapes.json.gz", "rt") as f:
    return json.load(f)


def traced(config_path: str, overrides: dict) -> tuple[Any, dict, dict]:
  """(network, {path: shape}, resampling kinds) of a score_jax config, traced once per distinct
  network (sub-VP shares VP's, Church CelebA-HQ's; both formats share a trace)."""
  fields = pretrained_fixtures.score_jax_network(config_path, overrides)
  return _trace_fields(tuple(sorted((k, tuple(v) if isinstance(v, list) else v) for k, v in fields.items())))


@functools.lru_cache(maxsize=None)
def _trace_fields(fields: tuple) -> tuple[Any, dict, dict]:
  model = models.get_model("ncsnpp", **dict(fields))
  shapes, resample = pretrained._trace(model)  # pylint: disable=protected-access
  return model, shapes, resample


@pytest.mark.parametrize("name", sorted(published("score_sde")))
def test_score_sde_published_networks_map_onto_configs(name):
  """score_sde's own configs (names and shapes by jax.eval_shape of its NCSN++, in the fixture) map
  one to one onto the score_jax config of the same experiment — 62.8M to 107.6M parameters."""
  entry = published("score_sde")[name]
  config_path = entry["score_jax_config"]
  config = importlib.import_module(config_path[:-3].replace("/", ".")).get_config()
  assert bool(config.data.centered) == entry["centered"], "config.data.centered differs from score_sde's"
  _, shapes, resample = traced(config_path, entry["overrides"])
  pairs = pretrained._score_sde_names(shapes, resample)  # pylint: disable=protected-access
  pretrained.plan(pairs, {k: tuple(v) for k, v in entry["shapes"].items()}, shapes, name)
  assert sum(np.prod(s) for s in shapes.values()) == sum(np.prod(s) for s in entry["shapes"].values())


@pytest.mark.parametrize("name", sorted(published("diffusers")))
def test_diffusers_published_networks_map_onto_configs(name):
  """diffusers' UNet2DModel for the google/ncsnpp-* configs (built on torch's meta device) maps one
  to one onto the score_jax config."""
  entry = published("diffusers")[name]
  model, shapes, _ = traced(entry["score_jax_config"], {})
  pretrained.check_diffusers_config(entry["config"], model)
  pairs = pretrained._diffusers_names(model, shapes)  # pylint: disable=protected-access
  pretrained.plan(pairs, {k: tuple(v) for k, v in entry["shapes"].items()}, shapes, name)


# ---- diffusers' config.json, field by field ------------------------------------------------------


@functools.lru_cache(maxsize=None)
def fields_fixture() -> dict:
  """tools/pretrained_fixtures.py diffusers_fields: small UNet2DModels run by diffusers."""
  with gzip.open(FIXTURES / "diffusers_fields.json.gz", "rt") as f:
    return json.load(f)


def fields_folder(path: pathlib.Path, name: str) -> str:
  """The folder of a "match" case: its config.json and its weights, drawn from the stored seed."""
  fx = fields_fixture()
  case = fx["match"][name]
  path.mkdir()
  (path / "config.json").write_text(json.dumps(case["config"] | {"_class_name": "UNet2DModel"}))
  save_file(pretrained_fixtures.deterministic_weights(case["manifest"], fx["seed"]),
            str(path / "diffusion_pytorch_model.safetensors"))
  return str(path)


@pytest.mark.parametrize("name", ["base", "narrow4", "center_input", "norm_groups", "layers2_attn_everywhere"])
def test_diffusers_fields_match_diffusers(name, tmp_path):
  """Converted without a config (the network from config.json alone), the folder's network under
  score_sde's conditioning is diffusers' UNet2DModel: narrow widths (group counts diffusers sets
  differently from min(C/4, 32)), norm_num_groups / attn_norm_num_groups, center_input_sample
  True (the base has False), two blocks per level, attention at every level."""
  fx = fields_fixture()
  params, meta = pretrained.convert(fields_folder(tmp_path / name, name))
  model = models.get_model("ncsnpp", **meta["network"])
  assert meta["centered"] is (not fx["match"][name]["config"]["center_input_sample"])
  if name in ("narrow4", "norm_groups"):
    assert model.group_counts  # diffusers' counts differ from NCSN++'s here
  sde = sde_lib.get_sde("ve", **fx["sde"])
  forward = experiment.forward(model)  # one compile per network: center_input shares base's
  apply = lambda p, x, c: forward(p, x, c, None, None, False)  # noqa: E731
  with jax.enable_x64(True):
    score = score_fn_lib.get_score_fn(sde, apply, f64(params), conditioning="score_sde", centered=meta["centered"])(
        jnp.asarray(fx["x"], jnp.float64), jnp.asarray(fx["t"], jnp.float64))
  assert rel_err(score, np.asarray(fx["match"][name]["score"])) < RTOL


def test_diffusers_group_counts_are_needed():
  """Without the group counts (NCSN++'s min(C/4, 32) everywhere) the narrow folder's network differs."""
  fx = fields_fixture()
  cfg = fx["match"]["narrow4"]["config"]
  model, _ = pretrained.diffusers_network(cfg)
  counts = dict(model.group_counts)
  assert counts["AttnBlock_0/GroupNorm_0"] == 32 and counts["GroupNorm_3"] == 32  # attention, output norm
  plain = models.get_model("ncsnpp", **(pretrained.network_record(model) | {"group_counts": ()}))
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.check_diffusers_config(cfg, plain)
  assert "norm_num_groups=32" in one_line(e) and "group_counts" in str(e.value)


def test_diffusers_every_field_matches_or_refuses():
  """No silent path: every UNet2DModel field, perturbed in turn, either converts to a network that
  computes what diffusers computes (the "match" cases above; the "same" fields change nothing
  diffusers computes — the fixture script checked it — and convert to the base's network) or is
  refused in one line naming the field and the folder's value."""
  fx = fields_fixture()
  base = fx["base"]
  tried = set(base) | {k for case in fx["match"].values() for k in case["config"]} | set(fx["same"]) | set(fx["refuse"])
  assert tried >= set(pretrained.DIFFUSERS_DEFAULTS), set(pretrained.DIFFUSERS_DEFAULTS) - tried
  want, want_centered = pretrained.diffusers_fields(base)
  for field, value in fx["same"].items():  # (group counts read none of these fields)
    got, centered = pretrained.diffusers_fields(base | {field: value})
    assert centered == want_centered
    assert got == (want | {"dropout": value} if field == "dropout" else want), field
  for field, value in fx["refuse"].items():
    with pytest.raises(pretrained.PretrainedMismatch) as e:
      pretrained.diffusers_network(base | {field: value})
    assert one_line(e).startswith(f"config.json {field}={json.dumps(value)}: "), str(e.value)
    effect = fx["refuse_effect"][field]  # what diffusers does with it: another output, or no network at all
    assert isinstance(effect, str) or effect > 1e-5, (field, effect)
  # Also: one head at the attention level (32 channels) is two in the 64-channel middle block; no size.
  for field, value in (("_class_name", "UNet2DConditionModel"), ("cross_attention_dim", 768),
                       ("attention_head_dim", 32), ("sample_size", None)):
    with pytest.raises(pretrained.PretrainedMismatch) as e:
      pretrained.diffusers_fields(base | {field: value} | ({"down_block_types": ["AttnSkipDownBlock2D", "SkipDownBlock2D"],
                                  "up_block_types": ["SkipUpBlock2D", "AttnSkipUpBlock2D"]} if value == 32 else {}))
    assert one_line(e).startswith(f"config.json {field}="), str(e.value)


def test_diffusers_config_checks_centring():
  """With a config, center_input_sample is checked against config.data.centered (its opposite);
  sample_size null (diffusers runs at any size) takes the config's image size."""
  base = fields_fixture()["base"]
  model, centered = pretrained.diffusers_network(base)
  pretrained.check_diffusers_config(base | {"sample_size": None}, model)
  assert centered is True  # center_input_sample=False: the network takes x as given
  pretrained.check_diffusers_config(base, model, True)
  with pytest.raises(pretrained.PretrainedMismatch) as e:
    pretrained.check_diffusers_config(base, model, False)
  assert one_line(e).startswith("config.json center_input_sample=false: ") and "data.centered=True" in str(e.value)


def readme_commands() -> list[list[str]]:
  """The command lines of README's "Published checkpoints" section, as argument lists."""
  import shlex  # pylint: disable=import-outside-toplevel
  readme = (pathlib.Path(__file__).parents[1] / "README.md").read_text()
  section = readme.split("## Published checkpoints", 1)[1].split("\n## ", 1)[0]
  text = re.sub(r"\\\n\s*", "", section)  # continuation lines joined
  return [shlex.split(line.strip()) for line in text.splitlines()
          if line.startswith("    python ")]


def substitute(cmd: list[str], values: dict[str, str]) -> list[str]:
  """``cmd`` with the flags in ``values`` given those values (``{"--src": ...}``), for the test's paths."""
  out = []
  for arg in cmd:
    flag = arg.split("=", 1)[0]
    out.append(f"{flag}={values[flag]}" if flag in values else arg)
  return [sys.executable if out[0] == "python" else out[0], *out[1:]]


# The celebahq_256 config shrunk to the ve_ncsnpp_skip fixture's network (the same block options).
SKIP_FIXTURE = ("--config.data.image_size=8", "--config.model.network.nf=4", "--config.model.network.ch_mult=(1,2)",
                "--config.model.network.num_res_blocks=1", "--config.model.network.attn_resolutions=(4,)")
FAST_SAMPLING = ("--config.sampling.pc.num_steps=2", "--config.sampling.num_samples=4")


def test_readme_published_commands_run_without_data(tmp_path):
  """README's convert + sample commands run as written: the score_sde route with
  configs/ve/celebahq_256.py (tfrecords, config.data.path unset: no data here) and the diffusers
  route without --config, whose written config samples through main.py --mode=sample."""
  (score_sde_convert, score_sde_sample, hf_convert, hf_sample) = readme_commands()
  assert "--config=configs/ve/celebahq_256.py" in score_sde_convert and "--mode=sample" in score_sde_sample
  assert not any(a.startswith("--config=") for a in hf_convert) and "--mode=sample" in hf_sample
  out, work = tmp_path / "celebahq", tmp_path / "run"
  src = str(FIXTURES / "ve_ncsnpp_skip" / "checkpoint_7")
  proc = run_main.run([*substitute(score_sde_convert, {"--src": src, "--out": str(out)}), *SKIP_FIXTURE], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  proc = run_main.run([*substitute(score_sde_sample, {"--workdir": str(work), "--config.model.pretrained": str(out)}),
                       *SKIP_FIXTURE, *FAST_SAMPLING], timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  metrics = json.loads((work / "samples" / "0" / "metrics.json").read_text())
  assert metrics["step"] == 7 and metrics["num_samples"] == 4
  x = np.load(work / "samples" / "0" / "samples.npz")["samples"]
  assert x.shape == (4, 8, 8, 3) and np.isfinite(x).all()
  # diffusers: a refusal first (one line, exit 2, the field named), then the folder as it is.
  folder = fields_folder(tmp_path / "folder", "base")
  bad = tmp_path / "bad"
  shutil.copytree(folder, bad)
  (bad / "config.json").write_text(json.dumps(json.loads((bad / "config.json").read_text()) | {"attention_head_dim": 8}))
  hf_out, hf_work = tmp_path / "hf", tmp_path / "hf_run"
  proc = run_main.run(substitute(hf_convert, {"--src": str(bad), "--out": str(hf_out)}), timeout=300)
  assert proc.returncode == 2 and proc.stderr.count("\n") == 1, proc.stderr[-3000:]
  assert proc.stderr.startswith("error: config.json attention_head_dim=8: ") and not hf_out.exists()
  proc = run_main.run(substitute(hf_convert, {"--src": folder, "--out": str(hf_out)}), timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  config = str(hf_out / "config.py")
  assert f"--config={config}" in proc.stdout
  proc = run_main.run([*substitute(hf_sample, {"--config": config, "--workdir": str(hf_work)}), *FAST_SAMPLING],
                      timeout=300)
  assert proc.returncode == 0, proc.stderr[-3000:]
  x = np.load(hf_work / "samples" / "0" / "samples.npz")["samples"]
  assert x.shape == (4, 8, 8, 3) and np.isfinite(x).all()


@pytest.mark.parametrize("config_path", ["configs/ve/cifar10_ncsnpp_continuous.py", "configs/ve/church_256.py",
                                         "configs/ve/ffhq_1024.py"])
def test_sampling_an_export_opens_no_data(config_path, export_dir, monkeypatch):
  """The other published configurations (TFDS, image folder; no data here; celebahq_256's
  tfrecords: README's commands above) build for --mode=sample from an export without opening
  their data: the export gives channels and labels."""
  from score_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(pipeline, "get_dataset", lambda *a, **k: pytest.fail("the data were opened"))
  config = config_files.load(config_path)
  config.data.image_size = 8
  config.model.network.update(nf=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,),
                              progressive="none", progressive_input="residual")
  config.model.update(pretrained=str(export_dir), conditioning="score_sde")
  config.data.centered = False
  setup = experiment.build(config, read_data=False)
  assert setup.data_shape == (8, 8, 3) and setup.data.data_range == (0.0, 1.0)


def test_group_counts_field_is_checked():
  """NCSNpp.group_counts: (norm path, groups) pairs or a dict, stored sorted; bad entries fail in one line."""
  model = models.get_model("ncsnpp", nf=8, ch_mult=(1,), num_res_blocks=1, attn_resolutions=(), image_size=8,
                           group_counts={"GroupNorm_0": 4, "AttnBlock_0/GroupNorm_0": 8})
  assert model.group_counts == (("AttnBlock_0/GroupNorm_0", 8), ("GroupNorm_0", 4))
  for bad in ({"Conv_0/GroupNorm_0": 4}, {"GroupNorm_0": 0}, [("GroupNorm_0", 2), ("GroupNorm_0", 4)], 7):
    with pytest.raises(ValueError, match=r"^NCSNpp.group_counts") as e:
      models.get_model("ncsnpp", nf=8, ch_mult=(1,), image_size=8, attn_resolutions=(), group_counts=bad)
    one_line(e)


def test_written_config_takes_the_scheduler_beside_the_folder(tmp_path):
  """<out>/config.py: the folder's network (group counts included), its centring, and σ_min, σ_max,
  steps and snr of a ScoreSdeVeScheduler config in ../scheduler/ (a pipeline's layout)."""
  cfg = fields_fixture()["match"]["narrow4"]["config"] | {"center_input_sample": True}
  (tmp_path / "pipe" / "unet").mkdir(parents=True)
  (tmp_path / "pipe" / "scheduler").mkdir()
  (tmp_path / "pipe" / "scheduler" / "scheduler_config.json").write_text(json.dumps(
      {"_class_name": "ScoreSdeVeScheduler", "sigma_min": 0.01, "sigma_max": 348.0, "num_train_timesteps": 2000,
       "snr": 0.15}))
  model, centered = pretrained.diffusers_network(cfg)
  meta = {"source": str(tmp_path / "pipe" / "unet"), "network": pretrained.network_record(model), "centered": centered}
  path = tmp_path / "out" / "config.py"
  path.parent.mkdir()
  path.write_text(pretrained.derived_config_text(meta["source"], str(path.parent), meta))
  config = config_files.load(str(path))
  assert config.sde.ve.sigma_max == 348.0 and config.sampling.pc.num_steps == 2000 and config.sampling.pc.snr == 0.15
  assert config.data.centered is False and config.data.image_size == 8 and config.model.conditioning == "score_sde"
  assert config.model.pretrained == str(path.parent)
  net = models.get_model("ncsnpp", **config.model.network.to_dict(), image_size=8)
  assert net.group_counts == model.group_counts and net.ch_mult == (1, 2, 2, 4)


# ---- EDM's network pickles: read as data, never executed ---------------------------------------------


def _edm_pickle(tmp_path, case: str) -> str:
  path = tmp_path / f"{case}.pkl"
  path.write_bytes(gzip.decompress((FIXTURES / "edm" / f"{case}.pkl.gz").read_bytes()))
  return str(path)


@pytest.mark.parametrize("case", ["vp_ddpmpp_uncond", "ve_ncsnpp_cond"])
def test_edm_pickle_reads_every_array_and_the_constructor_arguments(case, tmp_path):
  """EDM's own pickles (tools/edm_fixtures.py): the network's class, its constructor arguments and
  every state_dict array, bit for bit (SHA-256 of the float32 bytes), with no code of the file run."""
  import hashlib  # pylint: disable=import-outside-toplevel
  want = json.loads((FIXTURES / "edm" / f"{case}.json").read_text())
  data = pretrained.read_edm_pickle(_edm_pickle(tmp_path, case))
  net = data["ema"]
  assert net.class_name == want["class_name"] and net.modules["model"].class_name == want["model_class"]
  assert {k: v for k, v in net.init_kwargs.items() if not isinstance(v, dict)} == want["init_kwargs"]
  assert data["dataset_kwargs"]["resolution"] == 8
  state = pretrained.edm_state_dict(net)
  assert sorted(state) == sorted(want["state"])
  for name, (shape, digest) in want["state"].items():
    array = np.ascontiguousarray(state[name], np.float32)
    assert list(array.shape) == shape, name
    assert hashlib.sha256(array.tobytes()).hexdigest() == digest, name
  assert "model.enc.8x8_conv.weight" in state and state["model.enc.8x8_conv.weight"].shape == (8, 3, 3, 3)


def test_edm_reader_refuses_other_classes_and_runs_no_code(tmp_path):
  """A pickle naming a class outside the reader's list is one line naming it, and nothing runs: not
  a global's call (os.system), not a persistent object's source code."""
  marker = tmp_path / "ran"
  evil = tmp_path / "evil.pkl"
  evil.write_bytes(b"cos\nsystem\n(S'touch " + str(marker).encode() + b"'\ntR.")
  with pytest.raises(pretrained.PretrainedMismatch, match=r"names os\.system, which the EDM reader") as e:
    pretrained.read_edm_pickle(str(evil))
  one_line(e)
  # A persistent object whose source would create the marker: read as data only.
  source = f"import pathlib\npathlib.Path({str(marker)!r}).touch()\nclass Net: pass\n"
  meta = dict(type="class", version=6, module_src=source, class_name="Net",
              state=dict(_init_kwargs={"width": 4}, _parameters={}, _buffers={}, _modules={}))

  class Persistent:
    def __reduce__(self):
      return (_reconstruct_persistent_obj, (meta,))

  # Pickled by reference as EDM's persistence module would be (a stand-in module, removed after).
  fake = types.ModuleType("torch_utils.persistence")
  _reconstruct_persistent_obj = lambda meta: None  # noqa: E731  (only pickled by reference)
  _reconstruct_persistent_obj.__module__, _reconstruct_persistent_obj.__qualname__ = fake.__name__, "_reconstruct_persistent_obj"
  fake._reconstruct_persistent_obj = _reconstruct_persistent_obj
  added = [name for name in ("torch_utils", "torch_utils.persistence") if name not in sys.modules]
  sys.modules.setdefault("torch_utils", types.ModuleType("torch_utils"))
  sys.modules["torch_utils.persistence"] = fake
  try:
    blob = pickle.dumps(dict(ema=Persistent()))
  finally:
    for name in added:
      del sys.modules[name]
  (tmp_path / "source.pkl").write_bytes(blob)
  data = pretrained.read_edm_pickle(str(tmp_path / "source.pkl"))
  assert data["ema"].class_name == "Net" and data["ema"].init_kwargs == {"width": 4}
  assert not marker.exists()
