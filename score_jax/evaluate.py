"""Evaluation of a training run from its checkpoints: ``--mode=eval`` and ``--mode=fid_stats``
(the in-domain classifier they may need comes from ``--mode=train_classifier``,
``score_jax.classifiers``).

    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=fid_stats
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=eval

``evaluate(config, workdir)`` takes every checkpoint (full Orbax checkpoint or EMA export)
whose step lies in [``config.eval.begin_step``, ``config.eval.end_step``], loads its EMA
parameters and computes, each part switched off by a zero count:

* ``loss``: the training loss (``config.training.loss``) on ``num_loss_batches`` batches of
  the held-out split, with keys that do not depend on the step, so steps compare;
* ``bpd``: bits/dim of the first ``bpd_num_examples`` held-out images through the
  probability-flow ODE (``likelihood.bits_per_dim_dataset``, ``bpd_num_repeats``
  dequantizations; the same keys at every step).  A class-conditional model is evaluated
  with its null label, i.e. the unconditional density;
* ``num_samples`` samples (``sample.make_sampler``: sharded over the mesh, sample j from
  fold_in(fold_in(fold_in(eval_key, 2), step), j)) → features → ``fid`` and ``kid``
  against the training split, ``is`` from the class predictions, ``precision`` / ``recall``
  (k-NN manifolds), and a grid of the first 64 samples.

Features (``config.eval.features``): "classifier", the project's small CNN trained on the
embedded dataset by ``classifiers.train_classifier`` (in-domain FID, offline), or "inception", the FID
Inception-v3 from a local weights file (``config.eval.inception_path``).  Both see the same
pictures: real images as their stored integer levels, samples quantized to those levels.
Real-data statistics are computed once per extractor and split and cached (``fid_stats``).

For toy targets there is nothing to extract features from: eval reports the loss, the
model's bits/dim against the exact bits/dim of the target on the same exact samples, and
the sample-quality metrics of ``sample.evaluate_toy_samples`` (sliced W2, mode coverage).

Workdir layout (nothing is ever overwritten)::

    <workdir>/classifier/params.npz, info.json     the in-domain classifier (config.eval.classifier_dir)
    <workdir>/fid_stats/<extractor>_<split>.npz     FeatureStats (mu, sigma) of a real split
    <workdir>/fid_stats/<extractor>_<split>_features.npz   features / logits of (a subset of) it
    <workdir>/eval/results.jsonl                    one line per evaluated checkpoint
    <workdir>/eval/reference.json                   real held-out data and uniform noise, scored the same way
    <workdir>/eval/samples_step{S}.png              the first 64 samples of step S
    <workdir>/eval/tensorboard/                     the scalars of every line, by step

Preemption: a line is appended only when its step is done; a restarted eval skips the
steps already in results.jsonl, so it neither repeats nor duplicates them.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from score_jax import checkpointing
from score_jax import classifiers
from score_jax import compilation
from score_jax import experiment
from score_jax import likelihood
from score_jax import outputs
from score_jax import sample as sample_lib
from score_jax.data import embedded
from score_jax.metrics import fid as fid_lib
from score_jax.metrics import inception as inception_lib

Array = Any
ConfigDict = ml_collections.ConfigDict
ConfigError = experiment.ConfigError
check = experiment.check

EXTRACTORS = ("classifier", "inception")
GRID_SIZE = 64  # samples in the picture of each evaluated step

# What ``config.eval`` holds; configs/common.py sets the same fields (configs without an
# eval section, such as the toy ones, get these).
DEFAULTS: dict[str, Any] = dict(
    begin_step=0,  # first step to evaluate; 0 (or None): the first checkpoint
    end_step=0,  # last step; 0 (or None): the latest (with wait=True: config.training.num_steps)
    wait=False,  # poll for checkpoints that have not appeared yet, until end_step
    poll_seconds=60.0,
    wait_timeout_seconds=None,  # stop waiting after this long without a new checkpoint; None: never
    batch_size=128,  # examples per loss batch, per likelihood solve and per feature pass
    num_loss_batches=8,  # held-out loss batches; 0 skips the loss
    bpd_num_examples=None,  # held-out examples for bits/dim; None: the whole split; 0 skips bits/dim
    bpd_num_repeats=1,  # dequantization passes
    bpd_rtol=1e-5,
    bpd_atol=1e-5,
    bpd_divergence="hutchinson",
    num_samples=50_000,  # samples for FID / KID / IS / precision-recall; 0 skips them
    sample_batch_size=500,  # samples per compiled sampler call
    features="inception",  # "classifier" (embedded data) or "inception"
    inception_path="",  # the .npz of score_jax.metrics.convert_inception
    classifier_dir="",  # default <workdir>/classifier
    classifier=classifiers.CLASSIFIER_DEFAULTS,  # the in-domain CNN and its training
    kid_subsets=100,
    kid_subset_size=1000,
    is_splits=10,
    pr_k=3,
    real_features_max=10_000,  # real rows kept for KID / precision-recall (mu, sigma use all)
    reference=True,  # score real held-out data and noise once into eval/reference.json
)


# --- options ------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class EvalOptions:
  """``config.eval``, validated (``DEFAULTS`` documents each field)."""

  begin_step: int
  end_step: Optional[int]
  wait: bool
  poll_seconds: float
  wait_timeout_seconds: Optional[float]
  batch_size: int
  num_loss_batches: int
  bpd_num_examples: Optional[int]
  bpd_num_repeats: int
  bpd_rtol: float
  bpd_atol: float
  bpd_divergence: str
  num_samples: int
  sample_batch_size: int
  features: str
  inception_path: str
  classifier_dir: str
  classifier: classifiers.ClassifierOptions
  kid_subsets: int
  kid_subset_size: int
  is_splits: int
  pr_k: int
  real_features_max: int
  reference: bool










def eval_options(config: ConfigDict) -> EvalOptions:
  """``config.eval`` (``DEFAULTS`` where a field or the section is missing), validated.

  Raises:
    ConfigError: a bad or unknown field, named in the message.
  """
  e = experiment.merge_defaults(DEFAULTS, experiment.as_dict(config.get("eval")), "config.eval")
  check(e["features"] in EXTRACTORS, "config.eval.features",
        f"unknown extractor {e['features']!r}; choose one of {list(EXTRACTORS)}.")
  steps = {}
  for name in ("begin_step", "end_step"):
    value = e[name]
    check(value is None or (experiment.is_int(value) and value >= 0), f"config.eval.{name}",
          f"must be None or an integer >= 0, got {value!r}.")
    steps[name] = int(value) if value else None
  begin, end = steps["begin_step"] or 0, steps["end_step"]
  check(end is None or begin <= end, "config.eval.begin_step",
        f"{begin} is after config.eval.end_step={end}; swap them, or set end_step=0 for the latest.")
  check(isinstance(e["wait"], bool), "config.eval.wait", f"must be True or False, got {e['wait']!r}.")
  timeout = e["wait_timeout_seconds"]
  check(timeout is None or (experiment.is_number(timeout) and timeout > 0), "config.eval.wait_timeout_seconds",
        f"must be None (wait until end_step) or a number > 0, got {timeout!r}.")
  bpd_n = e["bpd_num_examples"]
  check(bpd_n is None or (experiment.is_int(bpd_n) and bpd_n >= 0), "config.eval.bpd_num_examples",
        f"must be None (the whole split), 0 (skip) or an integer >= 1, got {bpd_n!r}.")
  check(e["bpd_divergence"] in likelihood.DIVERGENCES, "config.eval.bpd_divergence",
        f"unknown {e['bpd_divergence']!r}; choose one of {list(likelihood.DIVERGENCES)}.")
  for name in ("inception_path", "classifier_dir"):
    check(isinstance(e[name], str), f"config.eval.{name}", f"must be a path string, got {e[name]!r}.")
  check(isinstance(e["reference"], bool), "config.eval.reference", f"must be True or False, got {e['reference']!r}.")
  integer = functools.partial(experiment.int_field, e, prefix="config.eval")
  positive = functools.partial(experiment.positive_field, e, prefix="config.eval")
  return EvalOptions(
      begin_step=begin, end_step=end, wait=e["wait"], poll_seconds=positive("poll_seconds"),
      wait_timeout_seconds=None if timeout is None else float(timeout), batch_size=integer("batch_size", 1),
      num_loss_batches=integer("num_loss_batches", 0), bpd_num_examples=None if bpd_n is None else int(bpd_n),
      bpd_num_repeats=integer("bpd_num_repeats", 1), bpd_rtol=positive("bpd_rtol"), bpd_atol=positive("bpd_atol"),
      bpd_divergence=e["bpd_divergence"], num_samples=integer("num_samples", 0),
      sample_batch_size=integer("sample_batch_size", 1), features=e["features"], inception_path=e["inception_path"],
      classifier_dir=e["classifier_dir"], classifier=classifiers.classifier_options(e["classifier"]),
      kid_subsets=integer("kid_subsets", 1), kid_subset_size=integer("kid_subset_size", 2),
      is_splits=integer("is_splits", 1), pr_k=integer("pr_k", 1), real_features_max=integer("real_features_max", 2),
      reference=e["reference"])


def _main_process() -> bool:
  return jax.process_index() == 0






# --- feature extractors ---------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class Extractor:
  """Features and class logits of integer-level images.

  Attributes:
    name: "classifier" or "inception".
    fingerprint: digest of the weights file (cached real statistics are checked against it).
    levels: quantization levels of the images it is given.
    apply: images float32 [B, H, W, C] in [0, 1] -> {"features": [B, D], "logits": [B, K]}.
    batch_size: images per forward pass.
    info: the classifier's info.json (empty for Inception).
  """

  name: str
  fingerprint: str
  levels: int
  apply: Callable[[Array], dict[str, Array]]
  batch_size: int
  info: dict = dataclasses.field(default_factory=dict)

  def __call__(self, images: np.ndarray) -> dict[str, np.ndarray]:
    """Features of uint8 levels [N, H, W, C] in 0..levels−1: {"features": [N, D], "logits": [N, K]}."""
    x = embedded.to_unit_interval(np.asarray(images), levels=self.levels)  # [N, H, W, C] in [0, 1]
    return classifiers.batched_apply(self.apply, x, self.batch_size)


def get_extractor(config: ConfigDict, workdir: str, data: experiment.ImageData,
                  opts: Optional[EvalOptions] = None) -> Extractor:
  """The extractor of ``config.eval.features`` for ``data``, its weights loaded.

  Raises:
    FileNotFoundError: the classifier or the Inception weights file is missing (one line
      saying how to make it).
    ConfigError: a classifier trained on other data.
  """
  opts = eval_options(config) if opts is None else opts
  levels = int(data.info.levels)
  if opts.features == "classifier":
    model, params, info = classifiers.load_classifier(classifiers.classifier_dir(config, workdir), data)
    apply = jax.jit(lambda images: model.apply({"params": params}, images))
    return Extractor("classifier", info["fingerprint"], levels, apply, opts.batch_size, info)
  variables = inception_lib.load_inception_params(opts.inception_path or None)
  forward = jax.jit(lambda images: inception_lib.InceptionV3().apply(variables, images))

  def apply(images: Array) -> dict[str, Array]:
    x = 255.0 * images  # [B, H, W, C] in [0, 255]
    if x.shape[-1] == 1:
      x = jnp.repeat(x, 3, axis=-1)  # grey -> RGB
    out = forward(x)
    return {"features": out["pool"], "logits": out["logits"]}

  return Extractor("inception", outputs.file_digest(opts.inception_path), levels, apply, opts.batch_size)


def to_levels(x: np.ndarray, *, levels: int, data_range: tuple[float, float], dequantized: bool) -> np.ndarray:
  """Model samples in ``data_range`` -> uint8 levels 0..levels−1, the inverse of the data pipeline.

  Args:
    x: [N, H, W, C] finite samples.
    levels: quantization levels L of the dataset.
    data_range: (lo, hi) the model's data live in.
    dequantized: the model was trained on (k + u)/L (then k = ⌊L·u⌋); else on k/(L − 1)
      (then k = round((L − 1)·u)).
  """
  u = embedded.from_data_range(x, data_range)  # [N, H, W, C] in [0, 1]
  k = np.floor(u * levels) if dequantized else np.rint(u * (levels - 1))
  return np.clip(k, 0, levels - 1).astype(np.uint8)


# --- real-data statistics -------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class RealFeatures:
  """Cached features of a real split.

  Attributes:
    stats: FID moments over the whole split.
    features: [M, D] features of up to ``real_features_max`` of its examples (KID, precision-recall).
    logits: [M, K] their class logits.
  """

  stats: fid_lib.FeatureStats
  features: np.ndarray
  logits: np.ndarray


def stats_paths(workdir: str, extractor: str, split: str) -> tuple[str, str]:
  """(FeatureStats npz, features npz) of ``split`` under ``<workdir>/fid_stats``."""
  root = os.path.join(os.path.abspath(workdir), "fid_stats")
  return os.path.join(root, f"{extractor}_{split}.npz"), os.path.join(root, f"{extractor}_{split}_features.npz")


def _compute_real_features(dataset: Any, extractor: Extractor, max_rows: int,
                           chunk: int = 1000) -> RealFeatures:
  """Streams the split through ``extractor``: float64 moments of all rows, a fixed subset kept."""
  n = len(dataset)
  keep = np.sort(np.random.default_rng(0).permutation(n)[:max_rows]) if n > max_rows else np.arange(n)
  kept_mask = np.zeros(n, bool)
  kept_mask[keep] = True
  s1 = s2 = None
  feats, logits = [], []
  for start in range(0, n, chunk):
    index = np.arange(start, min(start + chunk, n))
    images, _ = dataset.images_at(index)
    out = extractor(images)
    f = out["features"].astype(np.float64)  # [b, D]
    bad = ~np.all(np.isfinite(f), axis=1)
    if bad.any():
      raise ValueError(f"{extractor.name} features of {int(bad.sum())} real images (split {dataset.info.split!r}) "
                       "are not finite; check the extractor's weights.")
    s1 = f.sum(axis=0) if s1 is None else s1 + f.sum(axis=0)
    s2 = f.T @ f if s2 is None else s2 + f.T @ f
    sel = kept_mask[index]
    feats.append(out["features"][sel])
    logits.append(out["logits"][sel])
  mu = s1 / n  # [D]
  sigma = (s2 - n * np.outer(mu, mu)) / max(n - 1, 1)  # [D, D]
  stats = fid_lib.FeatureStats(mu=mu, sigma=(sigma + sigma.T) / 2, num_samples=n)
  return RealFeatures(stats=stats, features=np.concatenate(feats), logits=np.concatenate(logits))


def real_features(workdir: str, data: experiment.ImageData, split: str, extractor: Extractor,
                  opts: EvalOptions) -> RealFeatures:
  """The cached features of ``split``, computed and saved on first use.

  Raises:
    FileExistsError: the cache was made by other extractor weights (it is never overwritten).
  """
  stats_path, feats_path = stats_paths(workdir, extractor.name, split)
  if os.path.isfile(stats_path) and os.path.isfile(feats_path):
    with np.load(feats_path, allow_pickle=False) as arrays:
      fingerprint = str(arrays["fingerprint"])
      if fingerprint != extractor.fingerprint:
        raise FileExistsError(
            f"{feats_path} was computed with other {extractor.name} weights ({fingerprint}, now "
            f"{extractor.fingerprint}); move {os.path.dirname(stats_path)} away to recompute the statistics.")
      features, logits = np.asarray(arrays["features"]), np.asarray(arrays["logits"])
    logging.info("Reusing the real-data statistics %s.", stats_path)
    return RealFeatures(stats=fid_lib.FeatureStats.load(stats_path), features=features, logits=logits)
  t0 = time.perf_counter()
  dataset = data.train if split == data.train.info.split else data.load_split(split)
  real = _compute_real_features(dataset, extractor, opts.real_features_max)
  if _main_process():
    os.makedirs(os.path.dirname(stats_path), exist_ok=True)
    if not os.path.exists(feats_path):  # a run stopped between the two files left this one; same content
      outputs.write_npz(feats_path, features=real.features, logits=real.logits,
                        fingerprint=np.asarray(extractor.fingerprint), dataset=np.asarray(data.name))
    real.stats.save(stats_path)  # written last: marks the cache complete
  logging.info("Computed %s features of %d %s images of %s in %.1f s -> %s.", extractor.name,
               real.stats.num_samples, split, data.name, time.perf_counter() - t0, stats_path)
  return real


def fid_stats(config: ConfigDict, workdir: str) -> dict[str, str]:
  """``--mode=fid_stats``: real-data feature statistics of the training and held-out splits.

  Computed once per extractor and split; later calls (and ``evaluate``) reuse the files.

  Returns:
    {split: path of its FeatureStats npz}.
  """
  opts = eval_options(config)
  data = experiment.build_image_data(config, "--mode=fid_stats")
  extractor = get_extractor(config, workdir, data, opts)
  paths = {}
  for split in dict.fromkeys((data.train.info.split, data.eval_split)):
    real = real_features(workdir, data, split, extractor, opts)
    paths[split] = stats_paths(workdir, extractor.name, split)[0]
    logging.info("%s: %d images, %d-d %s features.", paths[split], real.stats.num_samples,
                 real.stats.mu.shape[0], extractor.name)
  return paths


# --- sample-quality metrics -----------------------------------------------------------------
def quality_metrics(features: np.ndarray, logits: np.ndarray, real: RealFeatures, opts: EvalOptions) -> dict[str, Any]:
  """FID / KID / IS / precision-recall of generated (or any) features against real ones.

  Args:
    features: [N, D] features of the images scored.
    logits: [N, K] their class logits.
    real: the training split's cached features.
    opts: the KID / IS / precision-recall options.

  Returns:
    {"fid", "kid", "kid_std", "is", "is_std", "precision", "recall", "num_images"}.
  """
  n = features.shape[0]
  fake = fid_lib.FeatureStats.from_features(features)
  out = {"num_images": int(n),
         "fid": fid_lib.frechet_distance(real.stats.mu, real.stats.sigma, fake.mu, fake.sigma)}
  subset = min(opts.kid_subset_size, n, real.features.shape[0])
  out["kid"], out["kid_std"] = fid_lib.kid(real.features, features, num_subsets=opts.kid_subsets, subset_size=subset)
  out["is"], out["is_std"] = fid_lib.inception_score(logits, num_splits=min(opts.is_splits, n), from_logits=True)
  m = min(n, real.features.shape[0])
  rows = np.sort(np.random.default_rng(1).permutation(real.features.shape[0])[:m])
  if m > opts.pr_k and n > opts.pr_k:
    out["precision"], out["recall"] = fid_lib.precision_recall(real.features[rows], features, k=opts.pr_k)
  return out


def reference(config: ConfigDict, workdir: str, *, data: experiment.ImageData, extractor: Extractor,
              train: RealFeatures, opts: EvalOptions) -> dict[str, Any]:
  """Real held-out images and uniform noise scored like samples: ``<workdir>/eval/reference.json``.

  Made once per workdir (an existing file is read back, not rewritten).  "real_heldout" is
  the whole held-out split; "real_train_subset" as many training images as samples (drawn
  from the cached features), the floor a model that reproduced its training data would
  reach at that sample size; "noise" as many images of independent uniform levels.
  """
  path = os.path.join(os.path.abspath(workdir), "eval", "reference.json")
  if os.path.isfile(path):
    with open(path) as f:
      return json.load(f)
  held_out = real_features(workdir, data, data.eval_split, extractor, opts)
  rng = np.random.default_rng([int(config.seed), 3])
  n_fake = max(opts.num_samples, 2 * opts.pr_k + 2)
  noise = rng.integers(0, extractor.levels, size=(n_fake,) + data.shape).astype(np.uint8)
  noise_out = extractor(noise)
  real = quality_metrics(held_out.features, held_out.logits, train, opts)
  # The held-out FID from the moments of the whole split (the features kept may be a subset).
  real["fid"] = fid_lib.frechet_distance(train.stats.mu, train.stats.sigma, held_out.stats.mu, held_out.stats.sigma)
  real["num_images"] = held_out.stats.num_samples
  # Training images themselves, as many as samples: what a model that memorised its data scores.
  rows = np.sort(rng.permutation(train.features.shape[0])[:min(n_fake, train.features.shape[0])])
  ref = {"features": extractor.name, "fingerprint": extractor.fingerprint, "dataset": data.name,
         "train_split": data.train.info.split, "train_num_images": train.stats.num_samples,
         "heldout_split": data.eval_split, "real_heldout": real,
         "real_train_subset": quality_metrics(train.features[rows], train.logits[rows], train, opts),
         "noise": quality_metrics(noise_out["features"], noise_out["logits"], train, opts)}
  if _main_process():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    outputs.write_json(path, ref)
  logging.info("Reference (%s features): real %s FID %.3f, KID %.4f; uniform noise FID %.3f, KID %.4f -> %s.",
               extractor.name, data.eval_split, ref["real_heldout"]["fid"], ref["real_heldout"]["kid"],
               ref["noise"]["fid"], ref["noise"]["kid"], path)
  return ref


# --- the parts of one checkpoint's evaluation -----------------------------------------------
# Sub-streams of the run's "eval" key (3 is reserved for the reference noise's numpy seed).
EVAL_STREAMS = {"loss": 0, "bpd": 1, "samples": 2, "toy_loss_data": 4, "toy_bpd_data": 5, "toy_quality": 6}


def _eval_key(setup: experiment.Setup, part: str) -> jax.Array:
  return jax.random.fold_in(experiment.keys(setup.seed)["eval"], EVAL_STREAMS[part])


def make_loss_eval(setup: experiment.Setup, opts: EvalOptions) -> Callable[[Any], float]:
  """``loss(params)``: the mean training loss over ``opts.num_loss_batches`` held-out batches.

  Batch b and its loss noise are the same at every step (batch ``batch_at(b)`` of the
  held-out split; key fold_in(loss_key, b)), so the numbers of two checkpoints compare.
  """
  key = _eval_key(setup, "loss")
  data = setup.data
  conditional = bool(setup.num_classes)

  @jax.jit
  def batch_loss(params, k, x, labels):
    score_fn = setup.score_fn(params, labels if conditional else None)
    return setup.loss_fn(k, setup.sde, score_fn, x)

  if isinstance(data, experiment.ToyData):
    draw = jax.jit(lambda k: data.sample(k, opts.batch_size)["image"])
    data_key = _eval_key(setup, "toy_loss_data")
    batches = [(draw(jax.random.fold_in(data_key, b)), None) for b in range(opts.num_loss_batches)]
  else:
    held_out = data.load_split(data.eval_split)
    batches = []
    for b in range(opts.num_loss_batches):
      batch = held_out.batch_at(b, global_batch_size=opts.batch_size, seed=setup.seed)
      batches.append((batch["image"], batch["label"]))

  def loss(params: Any) -> float:
    values = [batch_loss(params, jax.random.fold_in(key, b), x, y) for b, (x, y) in enumerate(batches)]
    return float(np.mean(jax.device_get(values)))

  return loss


def make_bpd_eval(setup: experiment.Setup, opts: EvalOptions) -> Callable[[Any], dict[str, Any]]:
  """``bpd(params) -> metrics``: bits/dim of the held-out data (toy: of exact target samples;
  ``bpd_num_examples`` None means 1000 of them); ``bpd.num_examples`` says how many.

  Images: the first ``bpd_num_examples`` held-out images, ``bpd_num_repeats`` dequantizations
  (``likelihood.bits_per_dim_dataset``), with keys that do not depend on the step.
  """
  key = _eval_key(setup, "bpd")
  options = dict(rtol=opts.bpd_rtol, atol=opts.bpd_atol, divergence=opts.bpd_divergence)
  data = setup.data
  null_label = jnp.full((1,), setup.num_classes, jnp.int32) if setup.num_classes else None

  def score_fn(params: Any, x: Array, t: Array) -> Array:
    # One object for the whole run, the parameters an argument of the compiled solve
    # (likelihood's ``params``): every checkpoint reuses the solve compiled for the first.
    return setup.score_fn(params, null_label)(x, t)

  if isinstance(data, experiment.ToyData):
    n = opts.bpd_num_examples or 1000
    x_all = np.asarray(data.target.sample(_eval_key(setup, "toy_bpd_data"), n))  # [n, D]
    d = x_all.shape[1]
    target_bpd = -np.asarray(data.target.log_prob(jnp.asarray(x_all))) / (d * math.log(2.0))  # [n]

    def bpd(params: Any) -> dict[str, Any]:
      values, nfes = [], []
      for start in range(0, n, opts.batch_size):
        x = x_all[start:start + opts.batch_size]
        pad = opts.batch_size - x.shape[0]
        xp = np.concatenate([x, np.repeat(x[-1:], pad, axis=0)]) if pad else x
        b, nfe = likelihood.bits_per_dim(key, setup.sde, score_fn, jnp.asarray(xp), first_index=start, params=params,
                                         **options)
        values.append(np.asarray(b)[:x.shape[0]])
        nfes.append(int(nfe))
      values = np.concatenate(values)
      return {"bpd": float(values.mean()), "bpd_sem": float(values.std() / math.sqrt(n)),
              "bpd_target": float(target_bpd.mean()), "bpd_nfe": float(np.mean(nfes)), "bpd_num_examples": int(n)}

    bpd.num_examples = n
    return bpd

  held_out = data.load_split(data.eval_split)
  n = len(held_out) if opts.bpd_num_examples is None else min(opts.bpd_num_examples, len(held_out))
  images, _ = held_out.images_at(np.arange(n))  # uint8 [n, H, W, C]
  levels = int(held_out.levels)
  if setup.num_classes and setup.label_dropout == 0:
    logging.warning("bits/dim of a class-conditional model uses its null label, which config.training.label_dropout=0 "
                    "never trained; the number is not meaningful.")

  def bpd(params: Any) -> dict[str, Any]:
    values, nfe = likelihood.bits_per_dim_dataset(
        key, setup.sde, score_fn, images, levels=levels, data_range=data.data_range, batch_size=min(opts.batch_size, n),
        num_repeats=opts.bpd_num_repeats, params=params, **options)  # [R, n], [R, batches]
    per_example = values.mean(axis=0)  # [n]
    return {"bpd": float(values.mean()), "bpd_sem": float(per_example.std() / math.sqrt(n)),
            "bpd_nfe": float(nfe.mean()), "bpd_num_examples": int(n), "bpd_num_repeats": opts.bpd_num_repeats}

  bpd.num_examples = n
  return bpd


class SampleDrawer:
  """``num_samples`` samples of a checkpoint, drawn ``sample_batch_size`` at a time.

  Sample j of step s draws from fold_in(fold_in(sample_key, s), j) (``sample.make_sampler``),
  whatever the batch size or device count; compiled once for all steps.
  """

  def __init__(self, setup: experiment.Setup, opts: EvalOptions):
    self.setup, self.opts = setup, opts
    self.key = _eval_key(setup, "samples")
    self._draw = compilation.timed_first_call(  # compiles on first use; logs "Compile: sampler ..."
        sample_lib.make_sampler(setup, opts.num_samples, batch_size=opts.sample_batch_size), "sampler")

  def __call__(self, params: Any, step: int) -> tuple[np.ndarray, int]:
    """(samples [num_samples, ...] in the data range, NFE per sample)."""
    return self._draw(params, jax.random.fold_in(self.key, step))


# --- the driver ---------------------------------------------------------------------------
def results_path(workdir: str) -> str:
  return os.path.join(os.path.abspath(workdir), "eval", "results.jsonl")


def read_results(workdir: str) -> list[dict[str, Any]]:
  """The records of ``<workdir>/eval/results.jsonl`` (a torn last line, from a kill, is skipped)."""
  path = results_path(workdir)
  if not os.path.isfile(path):
    return []
  records = []
  with open(path) as f:
    for line in f:
      try:
        records.append(json.loads(line))
      except json.JSONDecodeError:
        logging.warning("Skipping an unreadable line of %s: %r", path, line[:80])
  return records


def _summary(record: dict[str, Any]) -> str:
  parts = [f"step {record['step']}"]
  for name, fmt in (("loss", "loss {:.4g}"), ("bpd", "bpd {:.4f}"), ("bpd_target", "(target {:.4f})"),
                    ("fid", "FID {:.3f}"), ("kid", "KID {:.4f}"), ("is", "IS {:.3f}"),
                    ("precision", "precision {:.3f}"), ("recall", "recall {:.3f}"), ("sliced_w2", "SW2 {:.4f}"),
                    ("coverage", "coverage {:.2f}"), ("nfe", "NFE {}"), ("time_s", "{:.1f} s")):
    value = record.get(name)
    if isinstance(value, (int, float)) and not isinstance(value, bool):
      parts.append(fmt.format(value))
  return ", ".join(parts)


class _Evaluator:
  """Everything built once per ``evaluate`` call; ``__call__(step)`` evaluates one checkpoint."""

  def __init__(self, config: ConfigDict, workdir: str, setup: experiment.Setup, opts: EvalOptions,
               extractor: Optional[Extractor], train: Optional[RealFeatures]):
    self.config, self.workdir, self.setup, self.opts = config, workdir, setup, opts
    self.extractor, self.train = extractor, train
    self.eval_dir = os.path.join(os.path.abspath(workdir), "eval")
    self.loss = make_loss_eval(setup, opts) if opts.num_loss_batches else None
    self.bpd = make_bpd_eval(setup, opts) if opts.bpd_num_examples != 0 else None
    self.draw = SampleDrawer(setup, opts) if opts.num_samples else None
    self.writer = None
    if _main_process():
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self.writer = SummaryWriter(os.path.join(self.eval_dir, "tensorboard"), flush_secs=10)

  def close(self) -> None:
    if self.writer is not None:
      self.writer.close()

  def __call__(self, step: int) -> Optional[dict[str, Any]]:
    t_start = time.perf_counter()
    try:
      found = sample_lib.latest_ema_params(self.setup, self.workdir, step=step)
    except checkpointing.UnreadableCheckpointError as e:
      logging.warning("Step %d skipped: %s", step, e)
      return None
    if found is None:
      logging.warning("The checkpoint of step %d disappeared before it was read (config.training.max_to_keep); "
                      "skipped.", step)
      return None
    _, params = found
    record: dict[str, Any] = {"step": int(step)}
    if self.loss is not None:
      t0 = time.perf_counter()
      record["loss"] = self.loss(params)
      record["loss_time_s"] = time.perf_counter() - t0
    if self.bpd is not None:
      logging.info("Step %d: bits/dim of %d examples (rtol %g, atol %g).", step, self.bpd.num_examples,
                   self.opts.bpd_rtol, self.opts.bpd_atol)
      t0 = time.perf_counter()
      with compilation.compile_events() as compiled:
        record.update(self.bpd(params))
      record["bpd_time_s"] = time.perf_counter() - t0
      record["bpd_compiles"] = compiled.compiles  # the first checkpoint's; 0 after (parameters are an argument)
      if compiled.compiles:
        logging.info("%s", compilation.describe("bits/dim solve", compiled))
    if self.draw is not None:
      logging.info("Step %d: drawing %d samples (%s).", step, self.opts.num_samples, self.setup.sampling_method)
      record.update(self._sample_metrics(params, step))
    record["time_s"] = time.perf_counter() - t_start
    record["features"] = self.extractor.name if self.extractor is not None else None
    if _main_process():
      outputs.append_jsonl(os.path.join(self.eval_dir, "results.jsonl"), record)
      for name, value in record.items():
        if name != "step" and isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
          self.writer.add_scalar(f"eval/{name}", value, step)
      self.writer.flush()
    logging.info("eval %s", _summary(record))
    return record

  def _sample_metrics(self, params: Any, step: int) -> dict[str, Any]:
    setup, opts = self.setup, self.opts
    t0 = time.perf_counter()
    x, nfe = self.draw(params, step)
    out: dict[str, Any] = {"nfe": nfe, "num_samples": int(x.shape[0]), "sample_time_s": time.perf_counter() - t0}
    t1 = time.perf_counter()
    finite = np.all(np.isfinite(x.reshape(x.shape[0], -1)), axis=1)  # [N]
    out["nonfinite_samples"] = int((~finite).sum())
    if not finite.all():
      logging.warning("Step %d: %d of %d samples are not finite; the sample metrics use the %d finite ones.", step,
                      out["nonfinite_samples"], x.shape[0], int(finite.sum()))
    if isinstance(setup.data, experiment.ToyData):
      metrics = sample_lib.evaluate_toy_samples(jax.random.fold_in(_eval_key(setup, "toy_quality"), step), x,
                                                setup.data.target)
      out.update({k: v for k, v in metrics.items() if k not in ("num_samples", "target_weights")})
    else:
      png = os.path.join(self.eval_dir, f"samples_step{step}.png")
      if _main_process() and not os.path.exists(png):
        ncol = setup.num_classes if setup.num_classes and setup.num_classes <= 16 else None
        outputs.save_image_grid(png, x[:GRID_SIZE], data_range=setup.data.data_range, ncol=ncol,
                                scale=max(1, 64 // x.shape[1]))
      if finite.sum() > max(opts.pr_k, 1):
        levels = to_levels(x[finite], levels=self.extractor.levels, data_range=setup.data.data_range,
                           dequantized=setup.data.train.uniform_dequantization)
        feats = self.extractor(levels)
        quality = quality_metrics(feats["features"], feats["logits"], self.train, opts)
        quality.pop("num_images")
        out.update(quality)
    out["metrics_time_s"] = time.perf_counter() - t1
    return out


def evaluate(config: ConfigDict, workdir: str) -> list[dict[str, Any]]:
  """``--mode=eval``: evaluates the checkpoints of ``workdir`` in [begin_step, end_step].

  Steps already in ``<workdir>/eval/results.jsonl`` are skipped.  With ``config.eval.wait``
  the call polls every ``poll_seconds`` (logging what it waits for) until the end step is
  evaluated (``end_step``, or ``config.training.num_steps`` when it is 0) or
  ``wait_timeout_seconds`` pass without a new checkpoint; without it, it evaluates what is
  there and returns.

  Returns:
    The records appended by this call.

  Raises:
    ConfigError: a bad config value, named in the message (before anything compiles).
    FileNotFoundError: no checkpoint in the range and wait=False; a missing classifier or
      Inception weights file (with the command or path that makes it).
  """
  opts = eval_options(config)
  setup = experiment.build(config)
  end = opts.end_step
  if end is None and opts.wait:
    end = int(config.training.num_steps)

  def in_range() -> list[int]:
    steps = sample_lib.available_steps(setup, workdir)  # the converted checkpoint's with config.model.pretrained
    return [s for s in steps if opts.begin_step <= s and (end is None or s <= end)]

  if not opts.wait and not in_range():
    where = f"{checkpointing.checkpoint_dir(workdir)} (or EMA export in {checkpointing.export_dir(workdir)})"
    span = f" between steps {opts.begin_step} and {end}" if (opts.begin_step or end is not None) else ""
    raise FileNotFoundError(f"No checkpoint in {where}{span}: run --mode=train with --workdir={workdir} first, or "
                            f"set --config.eval.wait=True to wait for one.")
  extractor = train = None
  if isinstance(setup.data, experiment.ImageData) and opts.num_samples:
    check(opts.num_samples > opts.pr_k + 1, "config.eval.num_samples",
          f"must be 0 (no sample metrics) or > config.eval.pr_k + 1 = {opts.pr_k + 1}, got {opts.num_samples}.")
    extractor = get_extractor(config, workdir, setup.data, opts)  # a missing weights file fails here
    train = real_features(workdir, setup.data, setup.data.train.info.split, extractor, opts)
    if opts.reference:
      reference(config, workdir, data=setup.data, extractor=extractor, train=train, opts=opts)

  done = {r["step"] for r in read_results(workdir) if "step" in r}
  skipped = [s for s in in_range() if s in done]
  if skipped:
    logging.info("Steps %s are already in %s; skipped.", skipped, results_path(workdir))
  evaluator = _Evaluator(config, workdir, setup, opts, extractor, train)
  new: list[dict[str, Any]] = []
  last_new = time.monotonic()
  try:
    while True:
      steps = in_range()
      for step in (s for s in steps if s not in done):
        record = evaluator(step)
        done.add(step)
        if record is not None:
          new.append(record)
        last_new = time.monotonic()
      if not opts.wait or any(s >= end for s in done | set(steps)):
        break
      waited = time.monotonic() - last_new
      if opts.wait_timeout_seconds is not None and waited >= opts.wait_timeout_seconds:
        logging.warning("No new checkpoint in %s for %.1f s (config.eval.wait_timeout_seconds); stopped waiting.",
                        checkpointing.checkpoint_dir(workdir), waited)
        break
      logging.info("Waiting for checkpoints in %s: evaluated steps %s, waiting up to step %d; next look in %g s.",
                   checkpointing.checkpoint_dir(workdir), sorted(done) or "none", end, opts.poll_seconds)
      pause = opts.poll_seconds
      if opts.wait_timeout_seconds is not None:
        pause = min(pause, opts.wait_timeout_seconds - waited)
      time.sleep(max(pause, 0.0))
  finally:
    evaluator.close()
  if not new:
    logging.info("Nothing new to evaluate in %s.", workdir)
  return new


__all__ = ["DEFAULTS", "EXTRACTORS", "EvalOptions", "Extractor", "RealFeatures", "eval_options",
           "evaluate", "fid_stats", "get_extractor", "quality_metrics", "read_results",
           "real_features", "reference", "results_path", "stats_paths", "to_levels"]
