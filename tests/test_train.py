"""End-to-end training and sampling at smoke size, plus the MLP and score parametrization."""

import importlib.util
import json
import math
import os
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax import compilation
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax.modes import train
from score_jax.models import MLPScore, get_model
from score_jax.modes import sample as sample_mode
from score_jax.jobs import params as params_lib
from score_jax.jobs import sampler as sampler_lib

_CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "toy" / "gmm2d.py"


def _smoke_config():
  spec = importlib.util.spec_from_file_location("gmm2d_config", _CONFIG)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config("smoke")


def _finite_numbers(tree) -> list[float]:
  if isinstance(tree, dict):
    return [v for value in tree.values() for v in _finite_numbers(value)]
  if isinstance(tree, list):
    return [v for value in tree for v in _finite_numbers(value)]
  if isinstance(tree, (int, float)) and not isinstance(tree, bool):
    assert math.isfinite(tree)
    return [float(tree)]
  return []


def test_train_resume_and_sample(tmp_path):
  workdir = str(tmp_path / "run")
  config = _smoke_config()
  first = train.run(config, workdir)
  assert first.start_step == 0 and int(first.state.step) == 20
  assert os.path.isdir(os.path.join(workdir, "checkpoints", "20"))
  assert os.path.isfile(os.path.join(workdir, "config.json"))
  assert os.path.isfile(os.path.join(workdir, "samples_step20.png"))
  with open(first.metrics_path) as f:
    metrics = json.load(f)
  for name in ("sliced_w2", "nll", "coverage", "nfe", "train_time_s", "final_loss"):
    assert name in metrics and math.isfinite(metrics[name]), name
  assert _finite_numbers({k: v for k, v in metrics.items() if k not in ("max_mean_error", "max_std_rel_error")})
  first_bytes = pathlib.Path(first.metrics_path).read_bytes()

  # Re-running the finished command refuses rather than overwrite its outputs.
  with pytest.raises(FileExistsError, match="num_steps"):
    train.run(config, workdir)

  # Raising num_steps resumes from the checkpoint of step 20, not from step 0.
  config.training.num_steps = 30
  second = train.run(config, workdir)
  assert second.start_step == 20 and int(second.state.step) == 30
  assert second.metrics["start_step"] == 20
  assert os.path.isfile(os.path.join(workdir, "metrics_step30.json"))
  assert os.path.isfile(os.path.join(workdir, "config_step20.json"))  # the changed config, beside the first
  assert pathlib.Path(first.metrics_path).read_bytes() == first_bytes

  # --mode=sample: a new folder per call, from the latest checkpoint's EMA parameters.
  outs = [sample_mode.run(config, workdir).folder for _ in range(2)]
  assert [os.path.relpath(o, workdir) for o in outs] == [os.path.join("samples", "0"), os.path.join("samples", "1")]
  for out in outs:
    assert sorted(os.listdir(out)) == ["metrics.json", "samples.npz", "samples.png"]
    with np.load(os.path.join(out, "samples.npz")) as data:
      assert data["samples"].shape == (config.sampling.num_samples, 2) and int(data["step"]) == 30
  d0, d1 = (np.load(os.path.join(o, "samples.npz"))["samples"] for o in outs)
  assert not np.allclose(d0, d1)  # each draw has its own key


def test_sample_without_checkpoint_says_what_to_do(tmp_path):
  with pytest.raises(FileNotFoundError, match=r"No checkpoint.*--mode=train"):
    sample_mode.run(_smoke_config(), str(tmp_path / "empty"))


def test_nonfinite_loss_stops_and_names_the_step(tmp_path):
  config = _smoke_config()
  config.optim.lr = 1e30
  config.optim.warmup = 0
  config.optim.grad_clip = -1.0
  with pytest.raises(train.NonFiniteLossError, match=r"at step \d+"):
    train.run(config, str(tmp_path / "nan"))
  assert not os.path.exists(tmp_path / "nan" / "checkpoints" / "10")  # nothing non-finite was saved


@pytest.mark.parametrize("field, value, message", [
    ("training.num_steps", 0, "config.training.num_steps"),
    ("training.batch_size", 0, "config.training.batch_size"),
    ("sde.name", "foo", "config.sde"),
    ("sampling.method", "bogus", "config.sampling"),
    ("model.parametrization", "eps", "config.model.parametrization"),
    ("model.conditioning", "log_time", "config.model.conditioning"),
    ("optim.decay", "linear", "config.optim.decay"),
])
def test_bad_config_values_name_the_field(tmp_path, field, value, message):
  config = _smoke_config()
  section, name = field.split(".")
  config[section][name] = value
  with pytest.raises(train.ConfigError, match=message):
    train.run(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")  # failed before touching the workdir


def test_a_decay_without_its_length_names_the_field(tmp_path):
  config = _smoke_config()
  config.optim.decay = "cosine"
  with pytest.raises(train.ConfigError, match="config.optim.decay_steps"):
    train.run(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_learning_rate_schedules_pinned_against_their_formulas():
  from score_jax import train_state as ts_lib  # pylint: disable=g-import-not-at-top
  lr, warmup, n = 1e-3, 100, 1000

  def at(decay, steps):
    schedule = ts_lib.create_learning_rate_schedule(dict(lr=lr, warmup=warmup, decay=decay, decay_steps=n))
    return np.array([float(schedule(t)) for t in steps])

  steps = [0, 50, 100, 350, 600, 1100, 1500, 4100]
  ramp = np.minimum(np.array(steps) / warmup, 1.0)
  np.testing.assert_allclose(at("constant", steps), lr * ramp, rtol=1e-6)
  # Cosine: lr/2 (1 + cos(pi (t - warmup) / n)) after the warmup, 0 from warmup + n on.
  after = np.clip((np.array(steps) - warmup) / n, 0.0, 1.0)
  cosine = np.where(np.array(steps) < warmup, lr * ramp, 0.5 * lr * (1 + np.cos(np.pi * after)))
  np.testing.assert_allclose(at("cosine", steps), cosine, rtol=1e-5, atol=1e-12)
  assert at("cosine", [600])[0] == pytest.approx(lr / 2, rel=1e-5)
  # EDM2's inverse square root: the warmup multiplies; 1/sqrt(t / t_ref) past t_ref = decay_steps.
  inv = lr * ramp / np.sqrt(np.maximum(np.array(steps) / n, 1.0))
  np.testing.assert_allclose(at("inverse_sqrt", steps), inv, rtol=1e-6)
  assert at("inverse_sqrt", [4000])[0] == pytest.approx(lr / 2, rel=1e-6)
  with pytest.raises(ValueError, match="decay_steps"):
    ts_lib.create_learning_rate_schedule(dict(lr=lr, warmup=warmup, decay="cosine"))


@pytest.mark.parametrize("shape", [(3, 2), (4, 5), (2, 3, 2)])
def test_mlp_output_has_input_shape(shape):
  model = MLPScore(hidden=8, num_layers=2, embed_dim=8, num_fourier_features=4)
  x = jnp.ones(shape)
  t = jnp.linspace(0.1, 1.0, shape[0])  # [B]
  params = compilation.run_once(model.init, jax.random.key(0), x, t)
  assert model.apply(params, x, t).shape == shape
  assert model.apply(params, x, 0.5).shape == shape  # a scalar t is broadcast


def test_mlp_fourier_frequencies_are_not_trained():
  model = get_model("mlp", hidden=8, num_layers=1, embed_dim=8, num_fourier_features=4)
  x, t = jnp.ones((3, 2)), jnp.full((3,), 0.3)
  params = compilation.run_once(model.init, jax.random.key(0), x, t)["params"]
  grads = jax.grad(lambda p: jnp.sum(model.apply({"params": p}, x, t) ** 2))(params)
  assert np.all(np.asarray(grads["time_fourier"]["W"]) == 0.0)
  with pytest.raises(ValueError, match="no field"):
    get_model("mlp", width=3)


@pytest.mark.parametrize("sde", [sde_lib.VPSDE(), sde_lib.VESDE(sigma_min=0.01, sigma_max=10.0), sde_lib.SubVPSDE()])
def test_score_fn_parametrizations(sde):
  apply_fn = lambda params, x, t: params * x + t[:, None]  # a stand-in network, t must be [B]
  x = jnp.arange(6.0).reshape(3, 2)  # [3, 2]
  t = jnp.array([0.1, 0.5, 0.9])  # [3]
  out = 2.0 * x + t[:, None]
  noise = score_fn_lib.get_score_fn(sde, apply_fn, 2.0, parametrization="noise")
  np.testing.assert_allclose(noise(x, t), -out / sde.marginal_std(t)[:, None], rtol=1e-6)
  raw = score_fn_lib.get_score_fn(sde, apply_fn, 2.0, parametrization="score")
  np.testing.assert_allclose(raw(x, t), out, rtol=1e-6)
  # A scalar t reaches the network as [B].
  np.testing.assert_allclose(raw(x, 0.5), 2.0 * x + 0.5, rtol=1e-6)
  with pytest.raises(ValueError, match="parametrization"):
    score_fn_lib.get_score_fn(sde, apply_fn, 2.0, parametrization="eps_hat")


@pytest.mark.parametrize("sde", [sde_lib.VESDE(), sde_lib.VPSDE()], ids=["ve", "vp"])
def test_score_fn_conditioning_and_labels(sde):
  """The network receives t, σ̃(t) = s(t)/m(t) or 999·t as chosen, and labels when given."""
  x = jnp.zeros((3, 2))
  t = jnp.array([0.1, 0.5, 0.9])
  seen = lambda params, x, cond: x + cond[:, None]  # the raw output shows what the network got
  got = {c: score_fn_lib.get_score_fn(sde, seen, None, parametrization="score", conditioning=c)(x, t)[:, 0]
         for c in score_fn_lib.CONDITIONINGS}
  np.testing.assert_allclose(got["time"], t, rtol=1e-6)
  np.testing.assert_allclose(got["sigma"], sde.marginal_std(t) / sde.mean_coeff(t), rtol=1e-5)
  np.testing.assert_allclose(got["ddpm_step"], 999.0 * t, rtol=1e-6)
  np.testing.assert_allclose(got["log_sigma"], 0.25 * np.log(sde.marginal_std(t) / sde.mean_coeff(t)), rtol=1e-5)
  with_labels = lambda params, x, cond, labels: x + labels[:, None]
  labels = jnp.array([3.0, 1.0, 7.0])
  out = score_fn_lib.get_score_fn(sde, with_labels, None, parametrization="score", labels=labels)(x, t)
  np.testing.assert_allclose(out[:, 0], labels)
  with pytest.raises(ValueError, match="conditioning"):
    score_fn_lib.get_score_fn(sde, seen, None, conditioning="log_time")


# --- image training -----------------------------------------------------------------------
def _digits_smoke():
  from test_configs import load  # pylint: disable=g-import-not-at-top
  return load("configs/ve/digits.py", "smoke")[1]


def _tensorboard_scalars(logdir: str) -> dict[str, list[tuple[int, float]]]:
  """Scalars of every event file under ``logdir``, read with TensorBoard's own Event proto."""
  from tensorboardX.proto import event_pb2  # pylint: disable=g-import-not-at-top
  from score_jax.data import pipeline  # pylint: disable=g-import-not-at-top
  scalars: dict[str, list[tuple[int, float]]] = {}
  for file in sorted(pathlib.Path(logdir).glob("events.out.tfevents.*")):
    offsets, lengths = pipeline.tfrecord_index(str(file))
    data = file.read_bytes()
    for offset, length in zip(offsets.tolist(), lengths.tolist()):
      event = event_pb2.Event.FromString(data[offset:offset + length])
      for value in event.summary.value:
        if value.HasField("simple_value"):
          scalars.setdefault(value.tag, []).append((event.step, value.simple_value))
  return scalars


def test_digits_train_writes_grids_tensorboard_and_ema_export_then_samples_from_it(tmp_path):
  workdir = str(tmp_path / "digits")
  config = _digits_smoke()
  config.training.num_steps = 6
  config.training.sample_freq = 3
  config.training.log_freq = 2
  result = train.run(config, workdir)
  assert not result.preempted and [s for s, _ in result.history] == list(range(6))
  for name in ("samples_step3.png", "samples_step3.npz", "samples_step6.png", "samples_step6.npz",
               "metrics_step6.json", "config.json"):
    assert os.path.isfile(os.path.join(workdir, name)), name
  with np.load(os.path.join(workdir, "samples_step6.npz")) as data:
    assert data["samples"].shape == (config.sampling.num_samples, 8, 8, 1)
    assert np.all(np.isfinite(data["samples"]))
  with open(result.metrics_path) as f:
    metrics = json.load(f)
  assert metrics["num_params"] > 1000 and metrics["nfe"] > 0 and math.isfinite(metrics["final_loss"])

  scalars = _tensorboard_scalars(os.path.join(workdir, "tensorboard"))
  for tag in ("train/loss", "train/loss_ema", "train/grad_norm", "train/lr", "train/images_per_s"):
    assert [step for step, _ in scalars[tag]] == [2, 4, 6], (tag, scalars.get(tag))
  assert all(math.isfinite(v) and v > 0 for _, v in scalars["train/loss"])
  # lr warms up linearly over config.optim.warmup = 2 steps; the value logged at step 6 is step 5's.
  assert scalars["train/lr"][-1][1] == pytest.approx(config.optim.lr)

  # The EMA export alone is enough to sample (e.g. after copying only ema/ to another machine).
  assert os.listdir(os.path.join(workdir, "ema")) == ["6"]
  import shutil  # pylint: disable=g-import-not-at-top
  shutil.rmtree(os.path.join(workdir, "checkpoints"))
  out = sample_mode.run(config, workdir).folder
  with np.load(os.path.join(out, "samples.npz")) as data:
    assert data["samples"].shape == (config.sampling.num_samples, 8, 8, 1) and int(data["step"]) == 6


def test_skip_nonfinite_skips_updates_instead_of_stopping(tmp_path):
  config = _smoke_config()
  config.optim.lr = 1e30
  config.optim.warmup = 0
  config.optim.grad_clip = -1.0
  config.training.skip_nonfinite = True
  result = train.run(config, str(tmp_path / "skip"))
  assert int(result.state.step) == config.training.num_steps  # ran to the end
  losses = [loss for _, loss in result.history]
  assert not all(math.isfinite(v) for v in losses)  # some steps were non-finite ...
  for leaf in jax.tree.leaves(result.state.params):  # ... and were skipped, not applied
    assert np.all(np.isfinite(np.asarray(leaf)))


def test_image_size_not_divisible_by_the_downsampling_factor(tmp_path):
  config = _digits_smoke()
  config.data.image_size = 10
  config.model.network.ch_mult = (1, 2, 2)
  with pytest.raises(train.ConfigError, match=r"^config\.data\.image_size: 10 is not divisible .* factor 4"):
    train.run(config, str(tmp_path / "bad"))
  assert not os.path.exists(tmp_path / "bad")


def test_sample_mode_picks_a_checkpoint_and_chunking_keeps_the_samples(tmp_path):
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  workdir = str(tmp_path / "run")
  config = _smoke_config()
  config.sampling.pc.corrector = "none"  # the langevin corrector's step uses batch-mean norms
  config.sampling.num_samples = 10
  train.run(config, workdir)  # checkpoints at steps 10 and 20
  config.sampling.checkpoint_step = 10
  out = sample_mode.run(config, workdir).folder
  with np.load(os.path.join(out, "samples.npz")) as data:
    assert int(data["step"]) == 10
  config.sampling.checkpoint_step = 15
  with pytest.raises(FileNotFoundError, match=r"config\.sampling\.checkpoint_step=15: .*\[10, 20\]"):
    sample_mode.run(config, workdir)

  setup = experiment.build(config)
  step, params = params_lib.latest_ema_params(setup, workdir)
  assert step == 20
  key = jax.random.key(7)
  whole, nfe = sampler_lib.make_sampler(setup, 10)(params, key)
  chunked, nfe_chunked = sampler_lib.make_sampler(setup, 10, batch_size=4)(params, key)  # 4 + 4 + 2
  assert chunked.shape == whole.shape == (10, 2) and nfe == nfe_chunked
  np.testing.assert_allclose(chunked, whole, rtol=1e-5, atol=1e-5)


def test_run_once_gives_the_bits_of_an_optimised_jit():
  """``compilation.run_once`` (initialisation, LLVM optimisation off on CPU) changes compile time, and values
  only by float rounding (a multiply-add contracted or not)."""
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  setup = experiment.build(_smoke_config())
  init = lambda key: experiment.init_state(setup, key)
  key = jax.random.key(7)
  want = jax.jit(init).lower(key).compile(compiler_options={"xla_backend_optimization_level": 2})(key)
  got = compilation.run_once(init, key)
  assert jax.tree.structure(got) == jax.tree.structure(want)
  for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=3e-7, atol=1e-7)
  assert float(jnp.std(jax.tree.leaves(got.params)[-1])) > 0  # real draws, not zeros
