"""Noise-conditional classifiers: the networks, --mode=train_noisy_classifier (one training path with
the in-domain classifier), the accuracy-per-σ table against a closed form, save / load, errors."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate
from scipy import stats

from score_jax.jobs import classifiers
from score_jax import compilation
from score_jax import experiment
from score_jax import sde as sde_lib
from score_jax.data import embedded
from score_jax.models import classifier as classifier_lib
from score_jax.modes import train_noisy_classifier as train_noisy_classifier_mode
from score_jax.jobs import noise_bands
from tests.test_configs import load


@pytest.mark.parametrize("cls, fields, shape", [
    (classifier_lib.NoiseConditionalWideResNet, dict(depth=10, width=1, image_size=8, num_channels=1), (3, 8, 8, 1)),
    (classifier_lib.NoiseConditionalCNN, dict(widths=(8, 16), hidden_dim=16, embedding_dim=8, image_size=16,
                                              num_channels=3), (3, 16, 16, 3)),
])
def test_logits_have_the_documented_shape_and_depend_on_sigma(cls, fields, shape):
  model = cls(num_classes=4, **fields)
  x = jnp.linspace(-1.0, 1.0, math.prod(shape)).reshape(shape)
  params = compilation.run_once(model.init, jax.random.key(0), x, jnp.ones(3))
  apply = jax.jit(model.apply)
  low, high = apply(params, x, jnp.full(3, 0.01)), apply(params, x, jnp.full(3, 10.0))
  assert low.shape == (3, 4)
  assert float(jnp.max(jnp.abs(low - high))) > 1e-4  # σ reaches the logits
  with pytest.raises(ValueError, match=r"expects x of shape \[B, "):
    model.apply(params, jnp.zeros((3, 4, 4, shape[-1])), jnp.ones(3))


def test_wide_resnet_28_10_has_score_sde_s_size():
  """WRN-28-10 (Zagoruyko & Komodakis: 36.5 M weights) plus the σ embedding, traced without allocating."""
  model = classifier_lib.NoiseConditionalWideResNet(depth=28, width=10, num_classes=10)
  params = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)), jnp.ones(1))
  assert 36.4e6 < experiment.num_params(params) < 39e6


@pytest.mark.parametrize("fields, message", [
    (dict(depth=12), r"depth must be 6·n \+ 4"),
    (dict(depth=4), "depth"),
    (dict(width=0), "width must be an integer >= 1"),
    (dict(image_size=30), "divisible by 4"),
])
def test_bad_wide_resnet_fields_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    classifier_lib.NoiseConditionalWideResNet(**fields)


def test_accuracy_by_band_matches_the_closed_form():
  """x(0) = ±1 everywhere (label 0 / 1), the classifier reads the sign of the pixel mean: under VE
  it is right with probability Φ(√D / σ(t)), so a band's accuracy is the mean of Φ(√D / σ) over t."""
  sde = sde_lib.get_sde("ve", sigma_min=0.01, sigma_max=50.0)
  d, n = 16, 400
  labels = np.arange(n) % 2
  x0 = np.where(labels == 0, 1.0, -1.0)[:, None, None, None] * np.ones((n, 4, 4, 1), np.float32)
  logit_fn = lambda x, t: jnp.stack([jnp.mean(x, axis=(1, 2, 3)), -jnp.mean(x, axis=(1, 2, 3))], axis=-1)
  records = noise_bands.accuracy_by_band(logit_fn, sde, x0.astype(np.float32), labels, key=jax.random.key(0),
                                         num_bands=4, repeats=5, num_classes=2, batch_size=128)
  edges = np.linspace(sde.eps, 1.0, 5)
  for r, lo, hi in zip(records, edges[:-1], edges[1:]):
    std = lambda t: float(sde.marginal_std(jnp.float32(t)))
    exact = integrate.quad(lambda t: stats.norm.cdf(math.sqrt(d) / std(t)), lo, hi)[0] / (hi - lo)
    sem = math.sqrt(max(exact * (1 - exact), 1e-4) / r["num_examples"])
    assert r["t_lo"] == pytest.approx(lo) and r["t_hi"] == pytest.approx(hi)
    assert r["sigma_hi"] == pytest.approx(std(hi), rel=1e-5)
    assert abs(r["accuracy"] - exact) < 4 * sem + 1e-3, (r["band"], r["accuracy"], exact)
    assert r["confusion"].sum() == r["num_examples"] == 5 * n
    assert r["accuracy"] == pytest.approx(np.trace(r["confusion"]) / r["num_examples"])
  assert records[0]["accuracy"] == 1.0 and records[-1]["accuracy"] < 0.75


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
  """--mode=train_noisy_classifier on digits, CPU-sized: 300 steps of the small CNN."""
  _, config = load("configs/ve/digits.py", "smoke")
  config.noisy_classifier.network.update(dict(widths=(16, 32), hidden_dim=32))
  config.noisy_classifier.update(dict(num_steps=300, batch_size=64, lr=3e-3, num_bands=4, band_repeats=1))
  workdir = str(tmp_path_factory.mktemp("noisy") / "digits")
  info = train_noisy_classifier_mode.run(config, workdir).metrics
  return config, workdir, info


def test_trains_on_perturbed_digits_and_writes_the_table(trained):
  config, workdir, info = trained
  folder = classifiers.resolve_dir(config.noisy_classifier.dir, workdir, "noisy_classifier")
  assert folder == os.path.join(os.path.abspath(workdir), "noisy_classifier")
  with open(os.path.join(folder, "accuracy_by_sigma.json")) as f:
    bands = json.load(f)["bands"]
  assert len(bands) == 4 and os.path.isfile(os.path.join(folder, "accuracy_by_sigma.png"))
  with open(os.path.join(folder, "accuracy_by_sigma.md")) as f:
    assert f.read().count("\n| ") == 5  # header rule + 4 bands
  # Clean-ish digits (σ̃ < 0.05) are classified, the noisiest band (σ̃ up to 5 on [0, 1] digits) near chance (0.1).
  assert bands[0]["accuracy"] >= 0.6, bands  # 300 steps: ~0.75 (the 4000-step run of configs/ve/digits.py: 0.97)
  assert bands[-1]["accuracy"] < bands[0]["accuracy"] - 0.3, bands
  assert info["eval_accuracy_lowest_band"] == bands[0]["accuracy"]


def test_saved_classifier_reproduces_its_table(trained):
  config, workdir, info = trained
  data = experiment.build_data(config)
  loaded = classifiers.load_noisy_classifier(classifiers.resolve_dir(config.noisy_classifier.dir, workdir, "noisy_classifier"), data, experiment.build_sde(config))
  split = data.load_split("test")
  images, labels = split.images_at(np.arange(len(split)))
  x0 = embedded.to_unit_interval(images, levels=split.levels)  # VE digits live in [0, 1]
  records = noise_bands.accuracy_by_band(loaded.logits, loaded.sde, x0, labels,
                                         key=jax.random.fold_in(experiment.keys(config.seed)["eval"], 12),
                                         num_bands=4, repeats=1, num_classes=10, batch_size=config.eval.batch_size)
  with open(os.path.join(classifiers.resolve_dir(config.noisy_classifier.dir, workdir, "noisy_classifier"), "accuracy_by_sigma.json")) as f:
    saved = json.load(f)["bands"]
  assert [r["accuracy"] for r in records] == pytest.approx([r["accuracy"] for r in saved], abs=2 / len(split))


def test_never_overwritten_and_mismatches_are_named(trained, tmp_path):
  config, workdir, _ = trained
  with pytest.raises(FileExistsError, match="already trained there.*noisy_classifier.dir"):
    train_noisy_classifier_mode.run(config, workdir)
  folder = classifiers.resolve_dir(config.noisy_classifier.dir, workdir, "noisy_classifier")
  vp = load("configs/vp/digits.py", "smoke")[1]
  with pytest.raises(experiment.ConfigError, match="config.noisy_classifier.dir: .*trained under the ve SDE"):
    classifiers.load_noisy_classifier(folder, experiment.build_data(vp), experiment.build_sde(vp))
  with pytest.raises(FileNotFoundError, match="config.noisy_classifier.dir: no trained .*--mode=train_noisy_classifier"):
    classifiers.load_noisy_classifier(str(tmp_path))


@pytest.mark.parametrize("field, value, message", [
    ("model", "resnet50", "config.noisy_classifier.model: unknown 'resnet50'"),
    ("num_steps", 0, "config.noisy_classifier.num_steps: must be an integer >= 1"),
    ("network", dict(depth=12, width=1), "config.noisy_classifier.network"),
])
def test_bad_options_are_one_line_naming_the_field(field, value, message, tmp_path):
  _, config = load("configs/ve/digits.py", "smoke")
  if field == "network":
    config.noisy_classifier.model = "wideresnet"
    config.noisy_classifier.network = value
  else:
    config.noisy_classifier[field] = value
  with pytest.raises(experiment.ConfigError, match=message):
    train_noisy_classifier_mode.run(config, str(tmp_path))
  assert not os.listdir(tmp_path)


def test_toy_data_have_no_noisy_classifier(tmp_path):
  _, config = load("configs/toy/gmm2d.py")
  with pytest.raises(experiment.ConfigError, match="config.data.kind: --mode=train_noisy_classifier needs image data"):
    train_noisy_classifier_mode.run(config, str(tmp_path))
