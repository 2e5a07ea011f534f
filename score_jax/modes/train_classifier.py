"""``--mode=train_classifier``: the in-domain classifier of an embedded dataset, whose features
give offline FID / KID / IS and whose predictions score inpainting (``jobs/classifiers.py``)."""

from __future__ import annotations

import os

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import experiment
from score_jax import outputs
from score_jax.data import embedded
from score_jax.jobs import classifiers
from score_jax.jobs import writers
from score_jax.models import classifier as classifier_lib


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Trains the in-domain classifier on the training split.

  ``fit`` with ``config.eval.classifier``'s options on batches mapped back to [0, 1] (with the
  dataset config's random flips and dequantization).  Held-out accuracy is measured on
  ``config.data.eval_split``.  Writes ``params.npz`` (flat Flax parameters; its digest
  fingerprints cached feature statistics) and ``info.json`` (network fields, data,
  accuracy, time) into ``config.eval.classifier_dir`` (default ``<workdir>/classifier``).

  Returns:
    The folder and the contents of its info.json.

  Raises:
    FileExistsError: a classifier is already saved there (it is never overwritten).
    ConfigError: toy data, or a bad ``config.eval.classifier`` field.
  """
  opts = experiment.classifier_options(config)
  data = experiment.build_image_data(config, "--mode=train_classifier", workdir)
  seed = experiment.seed_of(config)
  out = classifiers.resolve_dir(opts.dir, workdir, "classifier")
  outputs.refuse_overwrite(
      [os.path.join(out, classifiers.CLASSIFIER_PARAMS), os.path.join(out, classifiers.CLASSIFIER_INFO)],
      "A classifier is already trained there; it is used as it is. To train another, delete that folder or set "
      "--config.eval.classifier_dir to a new one (cached fid_stats of the old one must then be moved away too).")
  ident = classifiers.data_identity(data)
  model = classifier_lib.Classifier(widths=opts.widths, num_classes=ident["num_classes"],
                                    feature_dim=opts.feature_dim, image_size=ident["image_size"],
                                    num_channels=ident["channels"])
  lo, hi = data.data_range
  key = jax.random.fold_in(experiment.keys(seed)["eval"], 10)
  params, loss, train_time = classifiers.fit(model, data, opts.fit, key=key, seed=seed,
                                 inputs=lambda k, images: ((images - lo) / (hi - lo),),  # back in [0, 1]
                                 init_inputs=(jnp.zeros((1,) + data.shape, jnp.float32),))

  apply = jax.jit(lambda images: model.apply({"params": params}, images))
  held_out, images, labels = classifiers.held_out(data)
  logits = classifiers.batched_apply(apply, embedded.to_unit_interval(images, levels=held_out.levels),
                                     opts.eval_batch_size)["logits"]
  accuracy = float(np.mean(np.argmax(logits, axis=1) == labels))
  info = {**ident, "widths": list(opts.widths), "feature_dim": opts.feature_dim,
          "num_steps": opts.fit.num_steps, "batch_size": opts.fit.batch_size, "lr": opts.fit.lr,
          "max_shift": opts.fit.max_shift,
          "final_loss": loss, "eval_split": data.eval_split, "eval_accuracy": accuracy,
          "eval_num_examples": int(len(held_out)), "train_time_s": train_time}
  classifiers.save_classifier(out, params, info)
  logging.info("Classifier: held-out accuracy %.2f %% on %d %s images after %d steps (%.1f s); saved to %s.",
               100 * accuracy, len(held_out), data.eval_split, opts.fit.num_steps, train_time, out)
  return writers.Output(folder=out, metrics=info)

