"""The two classifiers of score_jax as a library: one training loop (``fit``), saving and
loading, and ``resolve_dir``.  The modes that train them are ``modes/train_classifier.py`` and
``modes/train_noisy_classifier.py``; their σ-band table is ``jobs/noise_bands.py``.

* The in-domain classifier (``models.classifier.Classifier``, options ``config.eval.classifier``)
  sees clean images in [0, 1]; its features and class predictions are the in-domain FID /
  KID / IS of --mode=eval (``jobs.features``).
* The noise-conditional classifier (``models.classifier.NOISY_CLASSIFIERS``, options
  ``config.noisy_classifier``) models p_t(y | x(t)) for classifier guidance (Song et al.
  2021, sec. 5 and App. I.1; the report's "Classifier Training and Architecture", §5.3).

Both are Adam with cosine decay and cross-entropy on the training pipeline's batches
(``batch_at``), optional random translations.

Workdir layout (nothing is ever overwritten)::

    <workdir>/classifier/params.npz, info.json         in-domain (config.eval.classifier_dir)
    <workdir>/noisy_classifier/params/                 Orbax checkpoint of the parameters
    <workdir>/noisy_classifier/info.json               network, training, held-out accuracy
    <workdir>/noisy_classifier/accuracy_by_sigma.json, .md, .png   accuracy and confusion per σ band
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from flax import traverse_util
import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp

from score_jax import compilation
from score_jax import experiment
from score_jax import outputs
from score_jax import sde as sde_lib
from score_jax.models import classifier as classifier_lib

Array = Any
check = experiment.check

CLASSIFIER_PARAMS = "params.npz"
CLASSIFIER_INFO = "info.json"
NOISY_PARAMS = "params"


def resolve_dir(given: str, workdir: str, default_name: str) -> str:
  """The absolute folder ``given`` (a config field), or ``<workdir>/<default_name>`` when it is empty."""
  return os.path.abspath(given or os.path.join(workdir, default_name))


# --- shared helpers -----------------------------------------------------------------------
def batched_apply(fn: Callable[[Array], dict[str, Array]], images: np.ndarray, batch_size: int) -> dict[str, np.ndarray]:
  """``fn`` over fixed-size batches of ``images`` (the last one padded), outputs concatenated."""
  parts: dict[str, list[np.ndarray]] = {}
  for start in range(0, images.shape[0], batch_size):
    batch = images[start:start + batch_size]
    b = batch.shape[0]
    if b < batch_size:
      batch = np.concatenate([batch, np.zeros((batch_size - b,) + batch.shape[1:], batch.dtype)])
    for name, value in fn(jnp.asarray(batch)).items():
      parts.setdefault(name, []).append(np.asarray(value[:b]))
  return {name: np.concatenate(values) for name, values in parts.items()}


def data_identity(data: experiment.ImageData) -> dict[str, Any]:
  """What a classifier was trained on: dataset, image size, channels, levels, classes."""
  info = data.info
  return {"dataset": info.name, "image_size": int(info.image_size), "channels": int(info.channels),
          "levels": int(info.levels), "num_classes": int(info.num_classes)}


def _check_matches(info: dict[str, Any], data: experiment.ImageData, path: str, field: str, mode: str) -> None:
  want = data_identity(data)
  got = {k: info.get(k) for k in want}
  check(got == want, field, f"the classifier in {path} was trained on {got}, but config.data gives {want}; train one "
        f"for these data (--mode={mode} with another {field}).")


# One training loop for every classifier: cross-entropy, Adam, cosine decay.
def fit(model: Any, data: experiment.ImageData, opts: experiment.FitOptions, *, key: jax.Array, seed: int,
        inputs: Callable[[jax.Array, Array], tuple[Array, ...]], init_inputs: tuple[Array, ...]
        ) -> tuple[Any, float, float]:
  """Trains ``model`` to predict the labels of the training split.

  Each step takes ``data.train.batch_at(step, seed=seed)`` (images in the model's data
  range), translates each image by up to ``opts.max_shift`` pixels (edges repeated), and
  feeds ``model.apply(params, *inputs(k, images))`` to the cross-entropy, k = fold_in(key, step).

  Args:
    model: a Flax module returning logits [B, K] or a dict with "logits".
    data: the image data.
    opts: steps, batch size, learning rate, shifts.
    key: the key of initialization and of every step's randomness.
    seed: the batching seed.
    inputs: ``(key, images [B, H, W, C]) -> the module's positional inputs``.
    init_inputs: example inputs for ``model.init``.

  Returns:
    (params, final loss, training seconds).
  """
  params = compilation.run_once(lambda k: model.init(k, *init_inputs)["params"], key)
  tx = optax.adam(optax.cosine_decay_schedule(opts.lr, opts.num_steps))
  opt_state = tx.init(params)
  shift = opts.max_shift

  def translate(k: jax.Array, image: Array) -> Array:
    """A random shift by up to ``shift`` pixels each way; the edge pixels fill in."""
    padded = jnp.pad(image, ((shift, shift), (shift, shift), (0, 0)), mode="edge")
    dy, dx = jax.random.randint(k, (2,), 0, 2 * shift + 1)
    return jax.lax.dynamic_slice(padded, (dy, dx, 0), image.shape)

  def logits_of(p, args):
    out = model.apply({"params": p}, *args)
    return out["logits"] if isinstance(out, dict) else out  # [B, K]

  @jax.jit
  def step_fn(params, opt_state, images, labels, k):
    if shift:
      images = jax.vmap(translate)(jax.random.split(k, images.shape[0]), images)  # [B, H, W, C]
    args = inputs(jax.random.fold_in(k, 1), images)

    def loss_of(p):
      return optax.softmax_cross_entropy_with_integer_labels(logits_of(p, args), labels).mean()

    loss, grads = jax.value_and_grad(loss_of)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  t0 = time.perf_counter()
  loss = float("nan")
  for step in range(opts.num_steps):
    batch = data.train.batch_at(step, global_batch_size=opts.batch_size, seed=seed)
    params, opt_state, loss = step_fn(params, opt_state, batch["image"], batch["label"], jax.random.fold_in(key, step))
    if (step + 1) % 500 == 0:
      logging.info("classifier step %d/%d: loss %.4f", step + 1, opts.num_steps, float(loss))
  return params, float(loss), time.perf_counter() - t0


def held_out(data: experiment.ImageData) -> tuple[Any, np.ndarray, np.ndarray]:
  """(split, uint8 levels [N, H, W, C], labels [N]) of ``data.eval_split``."""
  split = data.load_split(data.eval_split)
  images, labels = split.images_at(np.arange(len(split)))
  return split, images, np.asarray(labels)



def load_classifier(path: str, data: Optional[experiment.ImageData] = None
                    ) -> tuple[classifier_lib.Classifier, Any, dict]:
  """(module, params, info) of a classifier saved by ``train_classifier`` in folder ``path``.

  Raises:
    FileNotFoundError: nothing (complete) saved there; the message says how to train one.
    ConfigError: it was trained on other data than ``data``.
  """
  info_path, params_path = os.path.join(path, CLASSIFIER_INFO), os.path.join(path, CLASSIFIER_PARAMS)
  if not (os.path.isfile(info_path) and os.path.isfile(params_path)):
    raise FileNotFoundError(
        f"No trained classifier in {path} (config.eval.features='classifier' needs one): run --mode=train_classifier "
        f"with the same --config and --workdir first, or point config.eval.classifier_dir at one.")
  with open(info_path) as f:
    info = json.load(f)
  if data is not None:
    _check_matches(info, data, path, "config.eval.classifier_dir", "train_classifier")
  with np.load(params_path, allow_pickle=False) as arrays:
    flat = {k: jnp.asarray(arrays[k]) for k in arrays.files}
  params = traverse_util.unflatten_dict(flat, sep="/")
  model = classifier_lib.Classifier(widths=tuple(info["widths"]), num_classes=info["num_classes"],
                                    feature_dim=info["feature_dim"], image_size=info["image_size"],
                                    num_channels=info["channels"])
  info = dict(info, fingerprint=outputs.file_digest(params_path))
  return model, params, info



def save_classifier(path: str, params: Any, info: dict[str, Any]) -> None:
  """Writes ``params.npz`` (flat Flax parameters; its digest fingerprints cached feature
  statistics) and ``info.json`` (written last: it marks the classifier complete) into ``path``."""
  if jax.process_index() != 0:
    return
  os.makedirs(path, exist_ok=True)
  flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
  outputs.write_npz(os.path.join(path, CLASSIFIER_PARAMS), **flat)
  outputs.write_json(os.path.join(path, CLASSIFIER_INFO), info)


def noisy_model(name: str, network: dict, ident: dict[str, Any], field: str) -> Any:
  with experiment.config_field(field):
    cls = classifier_lib.NOISY_CLASSIFIERS[name]
    return cls(**network, num_classes=ident["num_classes"], image_size=ident["image_size"],
               num_channels=ident["channels"])



@dataclasses.dataclass(frozen=True)
class NoisyClassifier:
  """A trained noise-conditional classifier, ready for guidance.

  Attributes:
    model: the Flax module, ``model.apply({"params": params}, x, sigma) -> logits``.
    params: its parameters.
    sde: the SDE it was trained under (σ̃(t) = ``sde.noise_level(t)``).
    info: its info.json.
  """

  model: Any
  params: Any
  sde: sde_lib.SDE
  info: dict

  def logits(self, x: Array, t: Array) -> Array:
    """Logits of p_t(y | x) [B, K] for x [B, ...] at times t (scalar or [B])."""
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), x.shape[:1])  # [B]
    return self.model.apply({"params": self.params}, x, self.sde.noise_level(t))


def load_noisy_classifier(path: str, data: Optional[experiment.ImageData] = None,
                          sde: Optional[sde_lib.SDE] = None) -> NoisyClassifier:
  """The classifier ``train_noisy_classifier`` saved in folder ``path``.

  Args:
    path: the folder.
    data: when given, the data the classifier must have been trained on.
    sde: when given, the SDE the classifier must have been trained under.

  Raises:
    FileNotFoundError: nothing (complete) saved there; the message says how to train one.
    ConfigError: trained on other data or under another SDE.
  """
  info_path = os.path.join(path, CLASSIFIER_INFO)
  if not (os.path.isfile(info_path) and os.path.isdir(os.path.join(path, NOISY_PARAMS))):
    raise FileNotFoundError(
        f"config.noisy_classifier.dir: no trained noise-conditional classifier in {path} (classifier guidance needs "
        f"one): run --mode=train_noisy_classifier with the same --config and --workdir first, or point "
        f"config.noisy_classifier.dir at one.")
  with open(info_path) as f:
    info = json.load(f)
  if data is not None:
    _check_matches(info, data, path, "config.noisy_classifier.dir", "train_noisy_classifier")
  trained_under = sde_lib.get_sde(info["sde"], **info["sde_options"])
  check(sde is None or trained_under == sde, "config.noisy_classifier.dir",
        f"the classifier in {path} was trained under the {info['sde']} SDE {info['sde_options']}, but config.sde gives "
        f"{sde}; train one under this SDE (--mode=train_noisy_classifier with another config.noisy_classifier.dir).")
  ident = {k: info[k] for k in ("num_classes", "image_size", "channels")}
  model = noisy_model(info["model"], info["network"], ident, "config.noisy_classifier.network")
  shape = (1, info["image_size"], info["image_size"], info["channels"])
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.ones((1,)))["params"])
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(path, NOISY_PARAMS), target)
  return NoisyClassifier(model=model, params=params, sde=trained_under, info=info)

