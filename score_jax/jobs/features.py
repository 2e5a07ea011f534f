"""Features of images for FID / KID / IS / precision-recall: the extractors, the cached
statistics of real splits, the quality metrics, and the reference scores of real data and noise.

Features (``config.eval.features``): "classifier", the project's small CNN trained on the
embedded dataset by --mode=train_classifier (in-domain FID, offline), or "inception", the FID
Inception-v3 from a local weights file (``config.eval.inception_path``).  Both see the same
pictures: real images as their stored integer levels, samples quantized to those levels
(``to_levels``).  Real-data statistics are computed once per extractor and split and cached::

    <workdir>/fid_stats/<extractor>_<split>.npz            FeatureStats (mu, sigma) of a real split
    <workdir>/fid_stats/<extractor>_<split>_features.npz   features / logits of (a subset of) it
    <workdir>/eval/reference.json                          real held-out data and uniform noise, scored alike
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import experiment
from score_jax import outputs
from score_jax.data import embedded
from score_jax.jobs import classifiers
from score_jax.jobs.writers import main_process
from score_jax.metrics import fid as fid_lib
from score_jax.metrics import inception as inception_lib

Array = Any
EvalOptions = experiment.EvalOptions


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


def get_extractor(opts: EvalOptions, workdir: str, data: experiment.ImageData) -> Extractor:
  """The extractor of ``config.eval.features`` for ``data``, its weights loaded.

  Raises:
    FileNotFoundError: the classifier or the Inception weights file is missing (one line
      saying how to make it).
    ConfigError: a classifier trained on other data.
  """
  levels = int(data.info.levels)
  if opts.features == "classifier":
    model, params, info = classifiers.load_classifier(classifiers.resolve_dir(opts.classifier.dir, workdir, "classifier"), data)
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
  if main_process():
    os.makedirs(os.path.dirname(stats_path), exist_ok=True)
    if not os.path.exists(feats_path):  # a run stopped between the two files left this one; same content
      outputs.write_npz(feats_path, features=real.features, logits=real.logits,
                        fingerprint=np.asarray(extractor.fingerprint), dataset=np.asarray(data.name))
    real.stats.save(stats_path)  # written last: marks the cache complete
  logging.info("Computed %s features of %d %s images of %s in %.1f s -> %s.", extractor.name,
               real.stats.num_samples, split, data.name, time.perf_counter() - t0, stats_path)
  return real


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


def reference(seed: int, workdir: str, *, data: experiment.ImageData, extractor: Extractor,
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
  rng = np.random.default_rng([int(seed), 3])
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
  if main_process():
    os.makedirs(os.path.dirname(path), exist_ok=True)
    outputs.write_json(path, ref)
  logging.info("Reference (%s features): real %s FID %.3f, KID %.4f; uniform noise FID %.3f, KID %.4f -> %s.",
               extractor.name, data.eval_split, ref["real_heldout"]["fid"], ref["real_heldout"]["kid"],
               ref["noise"]["fid"], ref["noise"]["kid"], path)
  return ref

