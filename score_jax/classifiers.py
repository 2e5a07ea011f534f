"""Training and loading the two classifiers of score_jax through one training path:
``--mode=train_classifier`` and ``--mode=train_noisy_classifier``.

    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_noisy_classifier

* The in-domain classifier (``models.classifier.Classifier``, options ``config.eval.classifier``)
  sees clean images in [0, 1]; its features and class predictions are the in-domain FID /
  KID / IS of ``score_jax.evaluate``.
* The noise-conditional classifier (``models.classifier.NOISY_CLASSIFIERS``, options
  ``config.noisy_classifier``) models p_t(y | x(t)) for classifier guidance (Song et al.
  2021, sec. 5 and App. I.1; the report's "Classifier Training and Architecture", §5.3): it
  is trained on perturbed pairs (x(t), y) with x(t) ~ p_0t(· | x(0)) = N(m(t) x(0), s(t)² I)
  and t drawn as the score model's training draws it (``losses.sample_times`` with the
  config's ``time_sampling``), in the score model's data range, conditioned on σ̃(t).

Both are Adam with cosine decay and cross-entropy on the training pipeline's batches
(``batch_at``), optional random translations; ``fit`` is that loop, the two modes differ
only in the network and in how a batch becomes the network's input.

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
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import traverse_util
import orbax.checkpoint as ocp

from score_jax import compilation
from score_jax import experiment
from score_jax import losses
from score_jax import outputs
from score_jax import sde as sde_lib
from score_jax.data import embedded
from score_jax.models import classifier as classifier_lib

Array = Any
ConfigDict = ml_collections.ConfigDict
check = experiment.check

CLASSIFIER_PARAMS = "params.npz"
CLASSIFIER_INFO = "info.json"
NOISY_PARAMS = "params"
ACCURACY_TABLE = "accuracy_by_sigma"

# ``config.eval.classifier``: the in-domain CNN (``max_shift``: random translations of up to
# that many pixels, edges repeated).
CLASSIFIER_DEFAULTS: dict[str, Any] = dict(widths=(32, 64), feature_dim=128, num_steps=2000, batch_size=128,
                                           lr=1e-3, max_shift=1)
# ``config.noisy_classifier``; configs/common.py sets the same fields.
NOISY_DEFAULTS: dict[str, Any] = dict(
    model="cnn",  # a key of models.classifier.NOISY_CLASSIFIERS: "cnn" (embedded data) or "wideresnet"
    network=dict(widths=(32, 64), hidden_dim=128, embedding_dim=32),  # the module's fields
    num_steps=4000,
    batch_size=128,
    lr=2e-3,
    max_shift=1,
    dir="",  # default <workdir>/noisy_classifier
    num_bands=10,  # σ bands of the accuracy table (equal widths in t, i.e. in log σ for VE)
    band_repeats=4,  # noise draws per held-out image and band
)


# --- options ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FitOptions:
  """How ``fit`` trains: ``num_steps`` Adam steps of ``batch_size`` examples, peak ``lr`` with
  cosine decay to 0, random translations of up to ``max_shift`` pixels."""

  num_steps: int
  batch_size: int
  lr: float
  max_shift: int


@dataclasses.dataclass(frozen=True)
class ClassifierOptions:
  """``config.eval.classifier``, validated: the in-domain CNN's widths, feature_dim and training."""

  widths: tuple[int, ...]
  feature_dim: int
  fit: FitOptions


@dataclasses.dataclass(frozen=True)
class NoisyClassifierOptions:
  """``config.noisy_classifier``, validated (``NOISY_DEFAULTS`` documents each field)."""

  model: str
  network: dict
  fit: FitOptions
  dir: str
  num_bands: int
  band_repeats: int


def _fit_options(section: dict, prefix: str) -> FitOptions:
  return FitOptions(num_steps=experiment.int_field(section, "num_steps", 1, prefix),
                    batch_size=experiment.int_field(section, "batch_size", 1, prefix),
                    lr=experiment.positive_field(section, "lr", prefix),
                    max_shift=experiment.int_field(section, "max_shift", 0, prefix))


def classifier_options(section: Any) -> ClassifierOptions:
  """``config.eval.classifier`` (``CLASSIFIER_DEFAULTS`` where missing), validated.

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  prefix = "config.eval.classifier"
  c = experiment.merge_defaults(CLASSIFIER_DEFAULTS, experiment.as_dict(section), prefix)
  widths = c["widths"]
  check(isinstance(widths, (tuple, list)) and len(widths) >= 1 and all(experiment.is_int(w) and w >= 1 for w in widths),
        f"{prefix}.widths", f"must be a non-empty tuple of integers >= 1, got {widths!r}.")
  return ClassifierOptions(widths=tuple(int(w) for w in widths),
                           feature_dim=experiment.int_field(c, "feature_dim", 1, prefix), fit=_fit_options(c, prefix))


def noisy_classifier_options(config: ConfigDict) -> NoisyClassifierOptions:
  """``config.noisy_classifier`` (``NOISY_DEFAULTS`` where missing), validated.

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  prefix = "config.noisy_classifier"
  c = experiment.merge_defaults(NOISY_DEFAULTS, experiment.as_dict(config.get("noisy_classifier")), prefix)
  check(c["model"] in classifier_lib.NOISY_CLASSIFIERS, f"{prefix}.model",
        f"unknown {c['model']!r}; choose one of {sorted(classifier_lib.NOISY_CLASSIFIERS)}.")
  check(isinstance(c["network"], dict), f"{prefix}.network", f"must be a section of module fields, got {c['network']!r}.")
  check(isinstance(c["dir"], str), f"{prefix}.dir", f"must be a path string, got {c['dir']!r}.")
  return NoisyClassifierOptions(model=c["model"], network=dict(c["network"]), fit=_fit_options(c, prefix), dir=c["dir"],
                                num_bands=experiment.int_field(c, "num_bands", 1, prefix),
                                band_repeats=experiment.int_field(c, "band_repeats", 1, prefix))


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


def _eval_batch_size(config: ConfigDict) -> int:
  return int(experiment.as_dict(config.get("eval")).get("batch_size", 128))


# One training loop for every classifier: cross-entropy, Adam, cosine decay.
def fit(model: Any, data: experiment.ImageData, opts: FitOptions, *, key: jax.Array, seed: int,
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


def _held_out(data: experiment.ImageData) -> tuple[Any, np.ndarray, np.ndarray]:
  """(split, uint8 levels [N, H, W, C], labels [N]) of ``data.eval_split``."""
  split = data.load_split(data.eval_split)
  images, labels = split.images_at(np.arange(len(split)))
  return split, images, np.asarray(labels)


# --- the in-domain classifier -------------------------------------------------------------
def classifier_dir(config: ConfigDict, workdir: str) -> str:
  """``config.eval.classifier_dir``, or ``<workdir>/classifier`` when it is empty."""
  path = experiment.as_dict(config.get("eval")).get("classifier_dir") or os.path.join(workdir, "classifier")
  return os.path.abspath(path)


def train_classifier(config: ConfigDict, workdir: str) -> dict[str, Any]:
  """``--mode=train_classifier``: trains the in-domain classifier on the training split.

  ``fit`` with ``config.eval.classifier``'s options on batches mapped back to [0, 1] (with the
  dataset config's random flips and dequantization).  Held-out accuracy is measured on
  ``config.data.eval_split``.  Writes ``params.npz`` (flat Flax parameters; its digest
  fingerprints cached feature statistics) and ``info.json`` (network fields, data,
  accuracy, time) into ``classifier_dir(config, workdir)``.

  Returns:
    The contents of info.json.

  Raises:
    FileExistsError: a classifier is already saved there (it is never overwritten).
    ConfigError: toy data, or a bad ``config.eval.classifier`` field.
  """
  opts = classifier_options(experiment.as_dict(config.get("eval")).get("classifier"))
  data = experiment.build_image_data(config, "--mode=train_classifier")
  out = classifier_dir(config, workdir)
  outputs.refuse_overwrite(
      [os.path.join(out, CLASSIFIER_PARAMS), os.path.join(out, CLASSIFIER_INFO)],
      "A classifier is already trained there; it is used as it is. To train another, delete that folder or set "
      "--config.eval.classifier_dir to a new one (cached fid_stats of the old one must then be moved away too).")
  ident = data_identity(data)
  model = classifier_lib.Classifier(widths=opts.widths, num_classes=ident["num_classes"],
                                    feature_dim=opts.feature_dim, image_size=ident["image_size"],
                                    num_channels=ident["channels"])
  lo, hi = data.data_range
  seed = int(config.seed)
  key = jax.random.fold_in(experiment.keys(seed)["eval"], 10)
  params, loss, train_time = fit(model, data, opts.fit, key=key, seed=seed,
                                 inputs=lambda k, images: ((images - lo) / (hi - lo),),  # back in [0, 1]
                                 init_inputs=(jnp.zeros((1,) + data.shape, jnp.float32),))

  apply = jax.jit(lambda images: model.apply({"params": params}, images))
  held_out, images, labels = _held_out(data)
  logits = batched_apply(apply, embedded.to_unit_interval(images, levels=held_out.levels),
                         _eval_batch_size(config))["logits"]
  accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
  info = {**ident, "widths": list(opts.widths), "feature_dim": opts.feature_dim,
          "num_steps": opts.fit.num_steps, "batch_size": opts.fit.batch_size, "lr": opts.fit.lr,
          "max_shift": opts.fit.max_shift,
          "final_loss": loss, "eval_split": data.eval_split, "eval_accuracy": accuracy,
          "eval_num_examples": int(len(held_out)), "train_time_s": train_time}
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    flat = traverse_util.flatten_dict(jax.device_get(params), sep="/")
    outputs.write_npz(os.path.join(out, CLASSIFIER_PARAMS), **flat)
    outputs.write_json(os.path.join(out, CLASSIFIER_INFO), info)  # written last: marks the classifier complete
  logging.info("Classifier: held-out accuracy %.2f %% on %d %s images after %d steps (%.1f s); saved to %s.",
               100 * accuracy, len(held_out), data.eval_split, opts.fit.num_steps, train_time, out)
  return info


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


# --- the noise-conditional classifier -----------------------------------------------------
def noisy_classifier_dir(config: ConfigDict, workdir: str) -> str:
  """``config.noisy_classifier.dir``, or ``<workdir>/noisy_classifier`` when it is empty."""
  path = experiment.as_dict(config.get("noisy_classifier")).get("dir") or os.path.join(workdir, "noisy_classifier")
  return os.path.abspath(path)


def _noisy_model(name: str, network: dict, ident: dict[str, Any], field: str) -> Any:
  with experiment.config_field(field):
    cls = classifier_lib.NOISY_CLASSIFIERS[name]
    return cls(**network, num_classes=ident["num_classes"], image_size=ident["image_size"],
               num_channels=ident["channels"])


def band_times(sde: sde_lib.SDE, num_bands: int) -> np.ndarray:
  """Edges [num_bands + 1] of equal-width t bands over [eps, T] (for VE: equal widths in log σ)."""
  return np.linspace(float(sde.eps), float(sde.T), num_bands + 1)


def accuracy_by_band(logit_fn: Callable[[Array, Array], Array], sde: sde_lib.SDE, x0: np.ndarray, labels: np.ndarray,
                     *, key: jax.Array, num_bands: int, repeats: int, num_classes: int, batch_size: int
                     ) -> list[dict[str, Any]]:
  """Accuracy and confusion of a noise-conditional classifier in each σ band.

  Every held-out image is perturbed ``repeats`` times per band, at t uniform in the band.

  Args:
    logit_fn: ``(x(t) [B, ...], t [B]) -> logits [B, K]``.
    sde: the SDE of the perturbations.
    x0: [N, H, W, C] clean images in the model's data range.
    labels: [N] int classes.
    key: randomness of the times and the noise.
    num_bands: number of equal-width t bands.
    repeats: draws per image and band.
    num_classes: K.
    batch_size: images per call of ``logit_fn``.

  Returns:
    One record per band: t and σ̃ at its edges, accuracy, examples, confusion [K, K] (rows:
    true class, columns: predicted; counts).
  """
  edges = band_times(sde, num_bands)

  @jax.jit
  def predict(k, x, lo, hi):
    kt, kz = jax.random.split(k)
    t = jax.random.uniform(kt, (x.shape[0],), x.dtype, lo, hi)  # [B]
    return jnp.argmax(logit_fn(sde.perturb(x, t, jax.random.normal(kz, x.shape, x.dtype)), t), axis=-1)  # [B]

  records = []
  for b in range(num_bands):
    lo, hi = float(edges[b]), float(edges[b + 1])
    preds = []
    for r in range(repeats):
      for start in range(0, x0.shape[0], batch_size):
        k = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(key, b), r), start)
        x = jnp.asarray(x0[start:start + batch_size])
        preds.append(np.asarray(predict(k, x, lo, hi)))
    pred = np.concatenate(preds)  # [repeats · N], repeat-major
    truth = np.tile(labels, repeats)
    confusion = np.zeros((num_classes, num_classes), np.int64)
    np.add.at(confusion, (truth, pred), 1)
    records.append({"band": b, "t_lo": lo, "t_hi": hi,
                    "sigma_lo": float(sde.noise_level(jnp.float32(lo))), "sigma_hi": float(sde.noise_level(jnp.float32(hi))),
                    "accuracy": float(np.mean(pred == truth)), "num_examples": int(pred.size),
                    "confusion": confusion})
  return records


def accuracy_markdown(records: list[dict[str, Any]]) -> str:
  """The per-band records as a markdown table (band, t, σ̃ range, accuracy)."""
  lines = ["| band | t | σ̃(t) | accuracy |", "|---:|---|---|---:|"]
  for r in records:
    lines.append(f"| {r['band']} | {r['t_lo']:.3f} – {r['t_hi']:.3f} | {r['sigma_lo']:.3g} – {r['sigma_hi']:.3g} "
                 f"| {100 * r['accuracy']:.1f} % |")
  return "\n".join(lines) + "\n"


def plot_accuracy_by_band(path: str, records: list[dict[str, Any]], *, title: str = "", num_matrices: int = 4) -> None:
  """Accuracy against σ̃ and the confusion matrices of ``num_matrices`` bands, lowest to highest
  noise (the report's fig. 5.10, "Confusion matrix across noise levels"), as a new PNG."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  picks = sorted({int(round(i)) for i in np.linspace(0, len(records) - 1, min(num_matrices, len(records)))})
  fig, axes = plt.subplots(1, 1 + len(picks), figsize=(3.2 * (1 + len(picks)), 3.4), dpi=100)
  mid = [np.sqrt(r["sigma_lo"] * r["sigma_hi"]) for r in records]
  ax = axes[0]
  ax.plot(mid, [100 * r["accuracy"] for r in records], "o-")
  ax.set_xscale("log")
  ax.set_ylim(0, 100)
  ax.set_xlabel("σ̃(t) (band centre)")
  ax.set_ylabel("held-out accuracy (%)")
  ax.grid(alpha=0.3)
  for ax, i in zip(axes[1:], picks):
    r = records[i]
    conf = np.asarray(r["confusion"], np.float64)
    ax.imshow(conf / np.maximum(conf.sum(axis=1, keepdims=True), 1), cmap="Blues", vmin=0, vmax=1)
    ax.set_title(f"σ̃ {r['sigma_lo']:.2g}–{r['sigma_hi']:.2g}: {100 * r['accuracy']:.0f} %", fontsize=9)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_xticks(range(conf.shape[0]))
    ax.set_yticks(range(conf.shape[0]))
    ax.tick_params(labelsize=6)
  fig.suptitle(title, fontsize=10)
  fig.tight_layout()
  with open(path, "xb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)


def train_noisy_classifier(config: ConfigDict, workdir: str) -> dict[str, Any]:
  """``--mode=train_noisy_classifier``: trains the noise-conditional classifier p_t(y | x(t)).

  ``fit`` with ``config.noisy_classifier``'s options on (x(t), σ̃(t)) of training batches,
  t ~ ``losses.sample_times`` with ``config.training.loss_options.time_sampling``.  Then
  measures the held-out accuracy per σ band (``accuracy_by_band``) and writes, into
  ``noisy_classifier_dir``: the parameters (Orbax), info.json, and the table as
  accuracy_by_sigma.json / .md / .png.

  Returns:
    The contents of info.json.

  Raises:
    FileExistsError: a classifier is already saved there (it is never overwritten).
    ConfigError: toy data, or a bad ``config.noisy_classifier`` / ``config.sde`` field.
  """
  opts = noisy_classifier_options(config)
  data = experiment.build_image_data(config, "--mode=train_noisy_classifier")
  sde = experiment.build_sde(config)
  out = noisy_classifier_dir(config, workdir)
  outputs.refuse_overwrite(
      [os.path.join(out, name) for name in (NOISY_PARAMS, CLASSIFIER_INFO, ACCURACY_TABLE + ".json")],
      "A noise-conditional classifier is already trained there; guidance uses it as it is. To train another, "
      "delete that folder or set --config.noisy_classifier.dir to a new one.")
  ident = data_identity(data)
  model = _noisy_model(opts.model, opts.network, ident, "config.noisy_classifier.network")
  time_sampling = experiment.as_dict(config.training.get("loss_options")).get("time_sampling", "uniform")
  seed = int(config.seed)
  key = jax.random.fold_in(experiment.keys(seed)["eval"], 11)

  def inputs(k: jax.Array, x0: Array) -> tuple[Array, Array]:
    kt, kz = jax.random.split(k)
    with experiment.config_field("config.training.loss_options.time_sampling"):
      t = losses.sample_times(kt, sde, x0.shape[0], time_sampling=time_sampling)  # [B]
    return sde.perturb(x0, t, jax.random.normal(kz, x0.shape, x0.dtype)), sde.noise_level(t)

  params, loss, train_time = fit(model, data, opts.fit, key=key, seed=seed, inputs=inputs,
                                 init_inputs=(jnp.zeros((1,) + data.shape, jnp.float32), jnp.ones((1,), jnp.float32)))

  held_out, images, labels = _held_out(data)
  lo, hi = data.data_range
  x0 = (lo + (hi - lo) * embedded.to_unit_interval(images, levels=held_out.levels)).astype(np.float32)
  records = accuracy_by_band(lambda x, t: model.apply({"params": params}, x, sde.noise_level(t)), sde, x0, labels,
                             key=jax.random.fold_in(experiment.keys(seed)["eval"], 12), num_bands=opts.num_bands,
                             repeats=opts.band_repeats, num_classes=ident["num_classes"],
                             batch_size=_eval_batch_size(config))
  total = sum(r["num_examples"] for r in records)
  accuracy = sum(r["accuracy"] * r["num_examples"] for r in records) / total
  info = {**ident, "model": opts.model, "network": opts.network, "sde": config.sde.name,
          "sde_options": experiment.as_dict(config.sde.get(config.sde.name)), "time_sampling": time_sampling,
          "num_steps": opts.fit.num_steps, "batch_size": opts.fit.batch_size, "lr": opts.fit.lr,
          "max_shift": opts.fit.max_shift, "final_loss": loss, "eval_split": data.eval_split,
          "eval_accuracy_all_bands": accuracy, "eval_accuracy_lowest_band": records[0]["accuracy"],
          "eval_num_examples": int(len(held_out)), "train_time_s": train_time,
          "num_params": experiment.num_params(params)}
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(out, NOISY_PARAMS), params)
    title = f"{ident['dataset']}: noise-conditional {opts.model}, {config.sde.name.upper()} SDE"
    outputs.write_json(os.path.join(out, ACCURACY_TABLE + ".json"), {"bands": records, "title": title})
    with open(os.path.join(out, ACCURACY_TABLE + ".md"), "x") as f:
      f.write(f"{title}; held-out {data.eval_split} split, {opts.band_repeats} draws per image and band\n\n")
      f.write(accuracy_markdown(records))
    plot_accuracy_by_band(os.path.join(out, ACCURACY_TABLE + ".png"), records, title=title)
    outputs.write_json(os.path.join(out, CLASSIFIER_INFO), info)  # written last: marks the classifier complete
  logging.info("Noise-conditional classifier: held-out accuracy %.1f %% over all σ bands (%.1f %% in the lowest) "
               "after %d steps (%.1f s); saved to %s.\n%s", 100 * accuracy, 100 * records[0]["accuracy"],
               opts.fit.num_steps, train_time, out, accuracy_markdown(records))
  return info


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
                          config: Optional[ConfigDict] = None) -> NoisyClassifier:
  """The classifier ``train_noisy_classifier`` saved in folder ``path``.

  Args:
    path: the folder.
    data: when given, the data the classifier must have been trained on.
    config: when given, its SDE must be the classifier's (name and options).

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
  if config is not None:
    want = (config.sde.name, experiment.as_dict(config.sde.get(config.sde.name)))
    got = (info["sde"], info["sde_options"])
    check(got == want, "config.noisy_classifier.dir",
          f"the classifier in {path} was trained under the {got[0]} SDE {got[1]}, but config.sde gives {want[0]} "
          f"{want[1]}; train one under this SDE (--mode=train_noisy_classifier with another "
          f"config.noisy_classifier.dir).")
  sde = sde_lib.get_sde(info["sde"], **info["sde_options"])
  ident = {k: info[k] for k in ("num_classes", "image_size", "channels")}
  model = _noisy_model(info["model"], info["network"], ident, "config.noisy_classifier.network")
  shape = (1, info["image_size"], info["image_size"], info["channels"])
  target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros(shape), jnp.ones((1,)))["params"])
  with ocp.StandardCheckpointer() as ckptr:
    params = ckptr.restore(os.path.join(path, NOISY_PARAMS), target)
  return NoisyClassifier(model=model, params=params, sde=sde, info=info)


__all__ = ["ACCURACY_TABLE", "CLASSIFIER_DEFAULTS", "ClassifierOptions", "FitOptions", "NOISY_DEFAULTS",
           "NoisyClassifier", "NoisyClassifierOptions", "accuracy_by_band", "accuracy_markdown", "band_times",
           "batched_apply", "classifier_dir", "classifier_options", "data_identity", "fit",
           "load_classifier", "load_noisy_classifier", "noisy_classifier_dir", "noisy_classifier_options",
           "plot_accuracy_by_band", "train_classifier", "train_noisy_classifier"]
