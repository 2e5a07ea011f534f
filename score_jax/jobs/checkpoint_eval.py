"""The scores of one checkpoint, each built once per evaluation and called per step: the
held-out loss, bits/dim, and the samples of --mode=eval.  Every part draws from its own
stream of the run's eval key (``jobs.keys.eval_key``), the same at every step, so the numbers
of two checkpoints compare.
"""

from __future__ import annotations

import math
from typing import Any, Callable

from absl import logging
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import compilation
from score_jax import experiment
from score_jax import likelihood
from score_jax.jobs import control as control_lib
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import sampler as sampler_lib

Array = Any
EvalOptions = experiment.EvalOptions


def make_loss_eval(setup: experiment.Setup, opts: EvalOptions) -> Callable[[Any], float]:
  """``loss(params)``: the mean training loss over ``opts.num_loss_batches`` held-out batches.

  Batch b and its loss noise are the same at every step (batch ``batch_at(b)`` of the
  held-out split; key fold_in(loss_key, b)), so the numbers of two checkpoints compare.
  """
  key = keys_lib.eval_key(setup.seed, "loss")
  data = setup.data
  conditional = bool(setup.num_classes)

  @jax.jit
  def batch_loss(params, k, x, labels):
    score_fn = setup.score_fn(params, labels if conditional else None)
    return setup.loss_fn(k, setup.sde, score_fn, x)

  if isinstance(data, experiment.ToyData):
    draw = jax.jit(lambda k: data.sample(k, opts.batch_size)["image"])
    data_key = keys_lib.eval_key(setup.seed, "toy_loss_data")
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
  key = keys_lib.eval_key(setup.seed, "bpd")
  options = dict(rtol=opts.bpd_rtol, atol=opts.bpd_atol, divergence=opts.bpd_divergence)
  data = setup.data
  null_label = jnp.full((1,), setup.num_classes, jnp.int32) if setup.num_classes else None

  def score_fn(params: Any, x: Array, t: Array) -> Array:
    # One object for the whole run, the parameters an argument of the compiled solve
    # (likelihood's ``params``): every checkpoint reuses the solve compiled for the first.
    return setup.score_fn(params, null_label)(x, t)

  if isinstance(data, experiment.ToyData):
    n = opts.bpd_num_examples or 1000
    x_all = np.asarray(data.target.sample(keys_lib.eval_key(setup.seed, "toy_bpd_data"), n))  # [n, D]
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

  Sample j of step s draws from fold_in(draw_key(seed, "eval", s), j) (``jobs.keys``,
  ``jobs.sampler``), whatever the batch size or device count; compiled once for all steps.
  """

  def __init__(self, setup: experiment.Setup, opts: EvalOptions):
    self.setup, self.opts = setup, opts
    self.control = control_lib.network(setup)
    self._draw = compilation.timed_first_call(  # compiles on first use; logs "Compile: sampler ..."
        sampler_lib.make_sampler(setup, opts.num_samples, self.control, batch_size=opts.sample_batch_size), "sampler")

  def __call__(self, params: Any, step: int) -> tuple[np.ndarray, int]:
    """(samples [num_samples, ...] in the data range, NFE per sample)."""
    return self._draw(params, keys_lib.draw_key(self.setup.seed, "eval", step))

