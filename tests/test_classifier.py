"""The in-domain classifier: shapes, training on digits to held-out accuracy, never overwritten."""

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from score_jax.jobs import classifiers
from score_jax.jobs import features
from score_jax import experiment
from score_jax.data import embedded
from score_jax import compilation
from score_jax.models.classifier import Classifier
from score_jax.modes import train_classifier as train_classifier_mode
from tests.test_configs import load


def test_outputs_have_the_documented_shapes():
  model = Classifier(widths=(8, 16), num_classes=4, feature_dim=12, image_size=16, num_channels=3)
  x = jnp.linspace(0.0, 1.0, 2 * 16 * 16 * 3).reshape(2, 16, 16, 3)  # [2, 16, 16, 3]
  params = compilation.run_once(model.init, jax.random.key(0), x)
  out = model.apply(params, x)
  assert out["features"].shape == (2, 12) and out["logits"].shape == (2, 4)
  assert float(jnp.min(out["features"])) >= 0.0  # post-ReLU, like Inception's pool features
  with pytest.raises(ValueError, match=r"expects images \[B, 16, 16, 3\]"):
    model.apply(params, jnp.zeros((2, 8, 8, 3)))


@pytest.mark.parametrize("fields, message", [
    (dict(widths=(8, 16, 32), image_size=6), "not divisible by 2"),
    (dict(widths=()), "widths"),
    (dict(feature_dim=0), "feature_dim"),
])
def test_bad_fields_are_named(fields, message):
  with pytest.raises(ValueError, match=message):
    Classifier(**fields)


@pytest.mark.optimized  # 300 training steps (tests/conftest.py)
def test_trains_on_digits_to_held_out_accuracy_and_is_never_overwritten(tmp_path):
  _, config = load("configs/ve/digits.py")
  config.eval.classifier.num_steps = 400  # the config's 1000 steps reach ~95-96 %
  workdir = str(tmp_path / "run")
  info = train_classifier_mode.run(config, workdir).metrics
  assert info["eval_accuracy"] >= 0.90, info
  assert info["eval_num_examples"] == embedded.DIGITS_NUM_TEST and info["dataset"] == "digits"
  folder = classifiers.resolve_dir(config.eval.classifier_dir, workdir, "classifier")
  assert folder == os.path.join(os.path.abspath(workdir), "classifier")
  with open(os.path.join(folder, "info.json")) as f:
    assert json.load(f)["eval_accuracy"] == pytest.approx(info["eval_accuracy"])

  # The saved parameters give the reported accuracy.
  data = experiment.build_data(config)
  model, params, loaded = classifiers.load_classifier(folder, data)
  test = data.load_split("test")
  images, labels = test.images_at(np.arange(len(test)))
  logits = model.apply({"params": params}, embedded.to_unit_interval(images, levels=test.levels))["logits"]
  assert float(np.mean(np.argmax(np.asarray(logits), axis=1) == labels)) == pytest.approx(info["eval_accuracy"])
  assert len(loaded["fingerprint"]) == 16

  # A second run refuses, before training, and leaves the files as they were.
  before = {name: (tmp_path / "run" / "classifier" / name).read_bytes() for name in ("params.npz", "info.json")}
  with pytest.raises(FileExistsError, match="already trained.*classifier_dir"):
    train_classifier_mode.run(config, workdir)
  assert before == {name: (tmp_path / "run" / "classifier" / name).read_bytes() for name in before}

  # A classifier of other data is refused by name.
  _, shapes = load("configs/ve/shapes_32.py", "smoke")
  with pytest.raises(experiment.ConfigError, match="config.eval.classifier_dir.*trained on"):
    classifiers.load_classifier(folder, experiment.build_data(shapes))


def test_missing_classifier_says_how_to_train_one(tmp_path):
  _, config = load("configs/ve/digits.py", "smoke")
  with pytest.raises(FileNotFoundError, match="No trained classifier.*--mode=train_classifier"):
    features.get_extractor(experiment.eval_options(config), str(tmp_path), experiment.build_data(config))


def test_toy_data_have_no_classifier(tmp_path):
  _, config = load("configs/toy/gmm2d.py", "smoke")
  with pytest.raises(experiment.ConfigError, match="config.data.kind.*toy"):
    train_classifier_mode.run(config, str(tmp_path))
