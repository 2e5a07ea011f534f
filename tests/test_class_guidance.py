"""Class-guided --mode=sample from config.guidance: the guided score pinned against its formula,
CFG at w = 0 equal to the conditional sampler, the outputs, and one-line errors before compiling."""

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import ml_collections
import run_main

from score_jax import checkpointing
from score_jax import compilation
from score_jax import experiment
from score_jax.jobs import classifiers
from score_jax.jobs import control as control_lib
from score_jax.modes import inpaint as inpaint_mode
from score_jax.modes import sample as sample_mode
from score_jax.modes import train_noisy_classifier as train_noisy_classifier_mode
from tests.test_configs import load


def _guided(config, setup, workdir, params, index, t):
  """The Control of ``config.guidance`` and its score at positions ``index``, as one jitted x -> score."""
  control = control_lib.from_guidance(experiment.guidance_options(config, setup), setup, workdir,
                                      default=control_lib.network(setup))
  index = jnp.asarray(index)

  def score(x):
    chunk = control_lib.Chunk(params, control.aux, {}, index, control.labels_of(index))
    return control.score_fn(setup, chunk)(x, t)

  return control, jax.jit(score)


def _config(path="configs/ve/digits.py", **guidance):
  _, config = load(path, "smoke")
  config.noisy_classifier.num_steps = 4
  config.guidance.update(guidance)
  return config


@pytest.fixture(scope="module")
def run(tmp_path_factory):
  """A digits smoke workdir: initial parameters as an EMA export and a (4-step) noisy classifier."""
  workdir = str(tmp_path_factory.mktemp("guided") / "digits")
  config = _config()
  setup = experiment.build(config)
  params = compilation.run_once(functools.partial(experiment.init_params, setup), jax.random.key(3))
  checkpointing.export_params(workdir, 0, params)
  train_noisy_classifier_mode.run(config, workdir)
  return workdir, setup, params


def test_guided_score_is_score_plus_lambda_times_classifier_gradient(run):
  """One evaluation pinned: s(x, t) + λ ∇_x log softmax(classifier(x, σ̃(t)))[y], y = index mod 10."""
  workdir, setup, params = run
  config = _config(kind="classifier", strategy="constant", scale=3.0)
  classifier = classifiers.load_noisy_classifier(classifiers.resolve_dir(config.noisy_classifier.dir, workdir, "noisy_classifier"))
  x = jax.random.normal(jax.random.key(0), (4,) + setup.data_shape)  # [4, 8, 8, 1]
  t = jnp.full(4, 0.6)
  _, guided = _guided(config, setup, workdir, params, [0, 1, 12, 3], t)
  labels = jnp.array([0, 1, 2, 3])

  def want(x):
    log_p = lambda x: jnp.sum(jnp.take_along_axis(
        jax.nn.log_softmax(classifier.logits(x, t), axis=-1), labels[:, None], axis=1))
    return setup.score_fn(params)(x, t) + 3.0 * jax.grad(log_p)(x)

  np.testing.assert_allclose(np.asarray(guided(x)), np.asarray(jax.jit(want)(x)), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("w", [0.0, 2.0])
def test_cfg_score_is_the_conditional_score_pushed_away_from_the_null_label(w):
  """(1 + w) s(x, t, y) − w s(x, t, ∅) with y = index mod 10; at w = 0 the conditional score itself."""
  config = _config("configs/ve/digits_cond.py", kind="cfg", w=w)
  setup = experiment.build(config)
  params = compilation.run_once(functools.partial(experiment.init_params, setup), jax.random.key(1))
  # One program: eager, each parameter shape compiled its own random kernel (20-30 s).
  params = jax.jit(lambda ps: jax.tree.map(lambda p: p + 0.05 * jax.random.normal(jax.random.key(4), p.shape, p.dtype), ps))(params)
  x, t = jax.random.normal(jax.random.key(0), (3,) + setup.data_shape), jnp.full(3, 0.4)
  control, guided = _guided(config, setup, "unused", params, [2, 11, 9], t)
  got = guided(x)
  score = jax.jit(lambda x, labels: setup.score_fn(params, labels)(x, t))
  cond, null = score(x, jnp.array([2, 1, 9])), score(x, jnp.full(3, 10))
  np.testing.assert_allclose(np.asarray(got), np.asarray((1 + w) * cond - w * null), rtol=1e-4, atol=1e-4)
  assert float(jnp.max(jnp.abs(cond - null))) > 1e-3  # the labels matter, so the check can fail
  assert control.sample_labels(12).tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]


def test_mode_sample_writes_guided_samples_with_their_labels(run):
  workdir, _, _ = run
  config = _config(kind="classifier", strategy="norm_ratio", ratio=0.5, labels=(3, 7))
  out = sample_mode.run(config, workdir).folder
  with np.load(os.path.join(out, "samples.npz")) as f:
    assert f["labels"].tolist() == [3, 7] * 4 and f["samples"].shape == (8, 8, 8, 1)
    assert np.all(np.isfinite(f["samples"]))
  with open(os.path.join(out, "metrics.json")) as f:
    g = json.load(f)["guidance"]
  assert g == {"kind": "classifier", "strategy": "norm_ratio", "ratio": 0.5, "labels": [3, 7],
               "classifier_dir": classifiers.resolve_dir(config.noisy_classifier.dir, workdir, "noisy_classifier")}
  assert os.path.isfile(os.path.join(out, "samples.png"))


@pytest.mark.parametrize("path, guidance, error, message", [
    ("configs/ve/digits.py", dict(kind="clasifier"), experiment.ConfigError,
     r"^config.guidance.kind: unknown 'clasifier'; choose one of \['none', 'classifier', 'cfg', 'autoguidance'\]"),
    ("configs/ve/digits.py", dict(kind="classifier", labels=(3, 10)), experiment.ConfigError,
     r"^config.guidance.labels: class 10 is outside the 10 classes"),
    ("configs/ve/digits.py", dict(kind="cfg"), experiment.ConfigError,
     r"^config.guidance.kind: 'cfg' needs a class-conditional model"),
    ("configs/ve/digits.py", dict(kind="classifier", strategy="linear", sigma_min=2.0, sigma_max=1.0),
     experiment.ConfigError, r"^config.guidance: guidance sigma_min=2.0 must be smaller than sigma_max=1.0"),
    ("configs/ve/digits.py", dict(kind="classifier", strategy="steep"), experiment.ConfigError,
     r"^config.guidance: guidance strategy='steep' is unknown"),
    ("configs/ve/digits.py", dict(kind="classifier"), FileNotFoundError,
     r"^config.noisy_classifier.dir: no trained noise-conditional classifier in .*--mode=train_noisy_classifier"),
])
def test_bad_guidance_is_one_line_naming_the_field_before_compiling(tmp_path, path, guidance, error, message):
  config = _config(path, **guidance)
  with pytest.raises(error, match=message) as e:
    sample_mode.run(config, str(tmp_path))  # the empty workdir has no checkpoint: guidance is checked first
  assert "\n" not in str(e.value)
  assert not os.listdir(tmp_path)


def test_cfg_needs_a_trained_null_label_and_unknown_fields_are_named(tmp_path):
  config = _config("configs/ve/digits_cond.py", kind="cfg")
  config.training.label_dropout = 0.0
  with pytest.raises(experiment.ConfigError, match="^config.training.label_dropout: is 0, so the null label"):
    sample_mode.run(config, str(tmp_path))
  config = _config()
  config.guidance.lamda = 3.0
  with pytest.raises(experiment.ConfigError, match=r"^config.guidance.lamda: unknown field"):
    sample_mode.run(config, str(tmp_path))


def test_configs_without_the_guidance_sections_get_those_of_common():
  """configs/common.py is the one source of the defaults: a config without (fields of) the
  guidance or noise-conditional classifier sections reads common's values."""
  from configs import common  # pylint: disable=g-import-not-at-top
  config = _config()
  config.guidance = ml_collections.ConfigDict(dict(kind="classifier"))
  config.noisy_classifier = ml_collections.ConfigDict(dict(num_steps=7))
  options = experiment.guidance_options(config, experiment.build(config))
  want = common.guidance_section()
  assert options.strategy.strategy == want.strategy and options.strategy.scale == want.scale
  assert options.labels.tolist() == list(range(10)) and options.classifier_dir == common.noisy_classifier_section().dir
  noisy = experiment.noisy_classifier_options(config)
  assert noisy.fit.num_steps == 7 and noisy.model == common.noisy_classifier_section().model == "wideresnet"
  assert noisy.network == common.noisy_classifier_section().network.to_dict()


def test_class_guidance_and_posterior_inpainting_combine(run):
  """--mode=inpaint with config.guidance: the classifier-guided score, then posterior guidance of
  the known pixels, then replacement; the known pixels come back exactly, metrics.json records both."""
  workdir, _, _ = run
  config = _config(kind="classifier", strategy="constant", scale=3.0, labels=(2, 5, 8))
  config.controllable.update(dict(num_inputs=2, samples_per_input=3, method="posterior", mask="half"))
  config.sampling.pc.update(dict(corrector="none", num_steps=2))  # the smallest program that has every part
  out = inpaint_mode.run(config, workdir)
  assert out.folder == os.path.join(workdir, "inpaint", "0")
  m = out.metrics
  assert m["method"] == "posterior" and m["posterior"] == {"covariance": "isotropic", "guidance_scale": 1.0,
                                                           "data_variance": 1.0}
  assert m["guidance"]["kind"] == "classifier" and m["guidance"]["labels"] == [2, 5, 8]
  assert m["known_max_abs_error"] == 0.0 and m["nonfinite_fraction"] == 0.0
  with np.load(os.path.join(out.folder, "results.npz")) as r:
    guided, known, originals = r["samples"], r["known"], r["originals"]
  assert guided.shape == (2, 3, 8, 8, 1) and known.shape == (2, 8, 8) and 0 < known.mean() < 1
  for i in range(2):  # bit for bit on every kept pixel of every sample
    np.testing.assert_array_equal(guided[i][:, known[i]], np.repeat(originals[i][None], 3, axis=0)[:, known[i]])


# --- autoguidance and the limited interval from config.guidance -------------------------------------
def _autoguide_run(root, name, config, seed=None, steps=(0, 5)):
  """A workdir as training leaves it for sampling: config.json and (with a seed) EMA exports of ``steps``."""
  from score_jax import config_files  # pylint: disable=g-import-not-at-top
  workdir = os.path.join(str(root), name)
  os.makedirs(workdir)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config_files.to_json(config))
  if seed is None:
    return workdir, None, None
  setup = experiment.build(config)
  base = run_main.stand_in_params(setup, seed)
  noise = jax.jit(lambda ps, k: jax.tree.map(lambda p: p + 0.05 * jax.random.normal(k, p.shape, p.dtype), ps))
  out = {}
  for i, step in enumerate(steps):
    out[step] = noise(base, jax.random.key(100 + i))
    checkpointing.export_params(workdir, step, out[step])
  return workdir, setup, out


def test_autoguidance_from_config_pinned_sampled_and_bad_guides_named(tmp_path):
  """An earlier step of the same run (one batched call of both parameter sets) and a smaller
  network (two calls): (1 + w) s_good − w s_bad, with w = 0 outside sigma_interval, on the
  class-conditional model (both models see the requested labels); then --mode=sample with it,
  and guides of another task refused in one line before their parameters are read."""
  path = "configs/ve/digits_cond.py"
  config = _config(path, kind="autoguidance", w=1.5, guide_step=0, sigma_interval=(0.5, 2.0))
  workdir, setup, params = _autoguide_run(tmp_path, "run", config, seed=1)
  small = _config(path)
  small.model.network.nf = 4
  small_dir, small_setup, small_params = _autoguide_run(tmp_path, "small", small, seed=2, steps=(3,))
  sde = setup.sde
  t = sde.time_from_noise_level(jnp.array([1.0, 1.0, 4.0]))  # two inside (0.5, 2], one outside
  x = jax.random.normal(jax.random.key(0), (3,) + setup.data_shape)
  labels = jnp.array([2, 1, 9])
  good = setup.score_fn(params[5], labels)(x, t)
  for guide_dir, guide_setup, guide_params, shared in ((workdir, setup, params[0], True),
                                                       (small_dir, small_setup, small_params[3], False)):
    config.guidance.guide_workdir = "" if guide_dir == workdir else guide_dir
    config.guidance.guide_step = 0 if guide_dir == workdir else None
    control, guided = _guided(config, setup, workdir, params[5], [2, 11, 9], t)
    assert control.record["guidance"]["guide_shares_architecture"] is shared
    bad = guide_setup.score_fn(guide_params, labels)(x, t)
    want = jnp.concatenate([2.5 * good[:2] - 1.5 * bad[:2], good[2:]])
    np.testing.assert_allclose(np.asarray(guided(x)), np.asarray(want), rtol=1e-4, atol=1e-4)
    assert float(jnp.max(jnp.abs(good - bad))) > 1e-3
  # --mode=sample, the smaller guide (two calls) inside (0.1, 3].
  config.guidance.update(dict(w=1.0, sigma_interval=(0.1, 3.0)))
  config.sampling.pc.update(dict(corrector="none", num_steps=2))
  out = sample_mode.run(config, workdir)
  g = out.metrics["guidance"]
  assert g["kind"] == "autoguidance" and g["guide_step"] == 3 and g["sigma_interval"] == [0.1, 3.0]
  assert not g["guide_shares_architecture"] and out.metrics["step"] == 5 and g["labels"] == list(range(10))
  with np.load(os.path.join(out.folder, "samples.npz")) as f:
    assert np.all(np.isfinite(f["samples"])) and f["labels"].tolist() == list(range(8))
  other = _config(path)
  other.sde.ve.sigma_max = 10.0
  shapes = _config("configs/ve/shapes_16.py")
  uncond = _config()
  for name, guide, message in (("other_sde", other, "has SDE"), ("shapes", shapes, r"has data shape \(16, 16, 3\)"),
                               ("uncond", uncond, "has classes 0 but the guided model has 10")):
    config.guidance.update(dict(guide_workdir=_autoguide_run(tmp_path, name, guide)[0], guide_step=None))
    with pytest.raises(experiment.ConfigError, match=rf"^config\.guidance\.guide_workdir: the guiding run .* {message}"):
      sample_mode.run(config, workdir)
  config.guidance.update(dict(guide_workdir="", guide_step=None))
  with pytest.raises(experiment.ConfigError, match=r"^config\.guidance\.guide_step: autoguidance needs a worse model"):
    sample_mode.run(config, workdir)
  config.guidance.update(dict(guide_step=0, sigma_interval=(3.0, 1.0)))
  with pytest.raises(experiment.ConfigError, match=r"^config\.guidance\.sigma_interval: .* 0 <= σ_lo < σ_hi"):
    sample_mode.run(config, workdir)
