"""``--mode=train_noisy_classifier``: the noise-conditional classifier p_t(y | x(t)) of
classifier guidance (``config.noisy_classifier``; Song et al. 2021, sec. 5 and App. I.1; the
report's "Classifier Training and Architecture", §5.3).

It is trained on perturbed pairs (x(t), y) with x(t) ~ p_0t(· | x(0)) = N(m(t) x(0), s(t)² I)
and t drawn as the score model's training draws it (``losses.sample_times`` with the config's
``time_sampling``), in the score model's data range, conditioned on σ̃(t); its held-out
accuracy per σ band is written beside it (``jobs/noise_bands.py``).
"""

from __future__ import annotations

import os
from typing import Any

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from score_jax import experiment
from score_jax import losses
from score_jax import outputs
from score_jax.data import embedded
from score_jax.jobs import classifiers
from score_jax.jobs import noise_bands
from score_jax.jobs import writers

Array = Any
TABLE = noise_bands.ACCURACY_TABLE


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Trains the noise-conditional classifier p_t(y | x(t)).

  ``fit`` with ``config.noisy_classifier``'s options on (x(t), σ̃(t)) of training batches,
  t ~ ``losses.sample_times`` with ``config.training.loss_options.time_sampling``.  Then
  measures the held-out accuracy per σ band (``jobs.noise_bands``) and writes, into
  ``config.noisy_classifier.dir`` (default ``<workdir>/noisy_classifier``): the parameters
  (Orbax), info.json, and the table as accuracy_by_sigma.json / .md / .png.

  Returns:
    The folder and the contents of its info.json.

  Raises:
    FileExistsError: a classifier is already saved there (it is never overwritten).
    ConfigError: toy data, or a bad ``config.noisy_classifier`` / ``config.sde`` field.
  """
  opts = experiment.noisy_classifier_options(config)
  data = experiment.build_image_data(config, "--mode=train_noisy_classifier", workdir)
  sde = experiment.build_sde(config)
  seed = experiment.seed_of(config)
  out = classifiers.resolve_dir(opts.dir, workdir, "noisy_classifier")
  outputs.refuse_overwrite(
      [os.path.join(out, name) for name in (classifiers.NOISY_PARAMS, classifiers.CLASSIFIER_INFO, TABLE + ".json")],
      "A noise-conditional classifier is already trained there; guidance uses it as it is. To train another, "
      "delete that folder or set --config.noisy_classifier.dir to a new one.")
  ident = classifiers.data_identity(data)
  model = classifiers.noisy_model(opts.model, opts.network, ident, "config.noisy_classifier.network")
  time_sampling = opts.time_sampling
  key = jax.random.fold_in(experiment.keys(seed)["eval"], 11)

  def inputs(k: jax.Array, x0: Array) -> tuple[Array, Array]:
    kt, kz = jax.random.split(k)
    with experiment.config_field("config.training.loss_options.time_sampling"):
      t = losses.sample_times(kt, sde, x0.shape[0], time_sampling=time_sampling)  # [B]
    return sde.perturb(x0, t, jax.random.normal(kz, x0.shape, x0.dtype)), sde.noise_level(t)

  params, loss, train_time = classifiers.fit(model, data, opts.fit, key=key, seed=seed, inputs=inputs,
                                 init_inputs=(jnp.zeros((1,) + data.shape, jnp.float32), jnp.ones((1,), jnp.float32)))

  held_out, images, labels = classifiers.held_out(data)
  lo, hi = data.data_range
  x0 = (lo + (hi - lo) * embedded.to_unit_interval(images, levels=held_out.levels)).astype(np.float32)
  records = noise_bands.accuracy_by_band(lambda x, t: model.apply({"params": params}, x, sde.noise_level(t)), sde, x0, labels,
                             key=jax.random.fold_in(experiment.keys(seed)["eval"], 12), num_bands=opts.num_bands,
                             repeats=opts.band_repeats, num_classes=ident["num_classes"],
                             batch_size=opts.eval_batch_size)
  total = sum(r["num_examples"] for r in records)
  accuracy = sum(r["accuracy"] * r["num_examples"] for r in records) / total
  info = {**ident, "model": opts.model, "network": opts.network, "sde": opts.sde_name,
          "sde_options": opts.sde_options, "time_sampling": time_sampling,
          "num_steps": opts.fit.num_steps, "batch_size": opts.fit.batch_size, "lr": opts.fit.lr,
          "max_shift": opts.fit.max_shift, "final_loss": loss, "eval_split": data.eval_split,
          "eval_accuracy_all_bands": accuracy, "eval_accuracy_lowest_band": records[0]["accuracy"],
          "eval_num_examples": int(len(held_out)), "train_time_s": train_time,
          "num_params": experiment.num_params(params)}
  if jax.process_index() == 0:
    os.makedirs(out, exist_ok=True)
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(os.path.join(out, classifiers.NOISY_PARAMS), params)
    title = f"{ident['dataset']}: noise-conditional {opts.model}, {opts.sde_name.upper()} SDE"
    outputs.write_json(os.path.join(out, TABLE + ".json"), {"bands": records, "title": title})
    with open(os.path.join(out, TABLE + ".md"), "x") as f:
      f.write(f"{title}; held-out {data.eval_split} split, {opts.band_repeats} draws per image and band\n\n")
      f.write(noise_bands.accuracy_markdown(records))
    noise_bands.plot_accuracy_by_band(os.path.join(out, TABLE + ".png"), records, title=title)
    outputs.write_json(os.path.join(out, classifiers.CLASSIFIER_INFO), info)  # written last: marks the classifier complete
  logging.info("Noise-conditional classifier: held-out accuracy %.1f %% over all σ bands (%.1f %% in the lowest) "
               "after %d steps (%.1f s); saved to %s.\n%s", 100 * accuracy, 100 * records[0]["accuracy"],
               opts.fit.num_steps, train_time, out, noise_bands.accuracy_markdown(records))
  return writers.Output(folder=out, metrics=info)

