"""``--mode=eval``: evaluation of a training run from its checkpoints (the real-data statistics
come from ``--mode=fid_stats``, the in-domain classifier from ``--mode=train_classifier``).

    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=train_classifier
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=fid_stats
    python main.py --config=configs/ve/digits.py --workdir=runs/digits_ve --mode=eval

``run(config, workdir)`` takes every checkpoint (full Orbax checkpoint or EMA export)
whose step lies in [``config.eval.begin_step``, ``config.eval.end_step``], loads its EMA
parameters and computes, each part switched off by a zero count:

* ``loss``: the training loss (``config.training.loss``) on ``num_loss_batches`` batches of
  the held-out split, with keys that do not depend on the step, so steps compare;
* ``bpd``: bits/dim of the first ``bpd_num_examples`` held-out images through the
  probability-flow ODE (``likelihood.bits_per_dim_dataset``, ``bpd_num_repeats``
  dequantizations; the same keys at every step).  A class-conditional model is evaluated
  with its null label, i.e. the unconditional density;
* ``num_samples`` samples (``jobs.sampler``: sharded over the mesh, sample j from
  fold_in(draw_key(seed, "eval", step), j), ``jobs.keys``) → features → ``fid`` and ``kid``
  against the training split, ``is`` from the class predictions, ``precision`` / ``recall``
  (k-NN manifolds), and a grid of the first 64 samples.

Features, their cached real statistics and the reference scores are ``jobs/features.py``.

For toy targets there is nothing to extract features from: eval reports the loss, the
model's bits/dim against the exact bits/dim of the target on the same exact samples, and
the sample-quality metrics of ``metrics.samples.target_quality`` (sliced W2, mode coverage).

Workdir layout (nothing is ever overwritten)::

    <workdir>/classifier/params.npz, info.json     the in-domain classifier (config.eval.classifier_dir)
    <workdir>/fid_stats/<extractor>_<split>.npz     FeatureStats (mu, sigma) of a real split
    <workdir>/fid_stats/<extractor>_<split>_features.npz   features / logits of (a subset of) it
    <workdir>/eval/results.jsonl                    one line per evaluated checkpoint (and config.sampling.params)
    <workdir>/eval/reference.json                   real held-out data and uniform noise, scored the same way
    <workdir>/eval/samples_step{S}.png              the first 64 samples of step S (_<params> unless "ema")
    <workdir>/eval/tensorboard/                     the scalars of every line, by step

Preemption: a line is appended only when its step is done; a restarted eval skips the
steps already in results.jsonl, so it neither repeats nor duplicates them.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any, Optional

from absl import logging
import numpy as np

from score_jax import checkpointing
from score_jax import compilation
from score_jax import experiment
from score_jax import outputs
from score_jax.jobs import checkpoint_eval
from score_jax.jobs import features
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import params as params_lib
from score_jax.jobs import writers
from score_jax.metrics import samples as sample_metrics

check = experiment.check
GRID_SIZE = 64  # samples in the picture of each evaluated step


@dataclasses.dataclass(frozen=True)
class EvalOutput(writers.Output):
  """``folder`` = <workdir>/eval; ``records``: the lines this call appended to results.jsonl."""

  records: list


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

  def __init__(self, workdir: str, setup: experiment.Setup, opts: experiment.EvalOptions,
               extractor: Optional[features.Extractor], train: Optional[features.RealFeatures]):
    self.workdir, self.setup, self.opts = workdir, setup, opts
    self.extractor, self.train = extractor, train
    self.eval_dir = os.path.join(os.path.abspath(workdir), "eval")
    self.loss = checkpoint_eval.make_loss_eval(setup, opts) if opts.num_loss_batches else None
    self.bpd = checkpoint_eval.make_bpd_eval(setup, opts) if opts.bpd_num_examples != 0 else None
    self.draw = checkpoint_eval.SampleDrawer(setup, opts) if opts.num_samples else None
    self.writer = writers.Scalars(os.path.join(self.eval_dir, "tensorboard"), flush_secs=10)

  def close(self) -> None:
    self.writer.close()

  def __call__(self, step: int) -> Optional[dict[str, Any]]:
    t_start = time.perf_counter()
    try:
      found = params_lib.latest_ema_params(self.setup, self.workdir, step=step)
    except checkpointing.UnreadableCheckpointError as e:
      logging.warning("Step %d skipped: %s", step, e)
      return None
    if found is None:
      logging.warning("The checkpoint of step %d disappeared before it was read (config.training.max_to_keep); "
                      "skipped.", step)
      return None
    _, params = found
    record: dict[str, Any] = {"step": int(step), "params": self.setup.sample_params}
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
    if writers.main_process():
      outputs.append_jsonl(os.path.join(self.eval_dir, "results.jsonl"), record)
      self.writer.scalars("eval", record, step, skip=("step",))
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
      metrics = sample_metrics.target_quality(keys_lib.quality_key(setup.seed, "eval", step), x, setup.data.target)
      out.update({k: v for k, v in metrics.items() if k not in ("num_samples", "target_weights")})
    else:
      which = "" if setup.sample_params == "ema" else f"_{setup.sample_params}"
      png = os.path.join(self.eval_dir, f"samples_step{step}{which}.png")
      if writers.main_process() and not os.path.exists(png):
        writers.save_grid(png, x[:GRID_SIZE], setup.data.data_range,
                          labels=self.draw.control.sample_labels(min(GRID_SIZE, x.shape[0])))
      if finite.sum() > max(opts.pr_k, 1):
        levels = features.to_levels(x[finite], levels=self.extractor.levels, data_range=setup.data.data_range,
                           dequantized=setup.data.train.uniform_dequantization)
        feats = self.extractor(levels)
        quality = features.quality_metrics(feats["features"], feats["logits"], self.train, opts)
        quality.pop("num_images")
        out.update(quality)
    out["metrics_time_s"] = time.perf_counter() - t1
    return out


def run(config: experiment.ConfigDict, workdir: str) -> EvalOutput:
  """``--mode=eval``: evaluates the checkpoints of ``workdir`` in [begin_step, end_step].

  Steps already in ``<workdir>/eval/results.jsonl`` (for the same ``config.sampling.params``) are skipped.  With ``config.eval.wait``
  the call polls every ``poll_seconds`` (logging what it waits for) until the end step is
  evaluated (``end_step``, or ``config.training.num_steps`` when it is 0) or
  ``wait_timeout_seconds`` pass without a new checkpoint; without it, it evaluates what is
  there and returns.

  Returns:
    The folder ``<workdir>/eval`` and the records appended by this call (``records``).

  Raises:
    ConfigError: a bad config value, named in the message (before anything compiles).
    FileNotFoundError: no checkpoint in the range and wait=False; a missing classifier or
      Inception weights file (with the command or path that makes it).
  """
  opts = experiment.eval_options(config)
  setup = experiment.build(config, workdir=workdir)
  end = opts.end_step
  if end is None and opts.wait:
    end = experiment.train_options(config).num_steps

  def in_range() -> list[int]:
    steps = params_lib.available_steps(setup, workdir)  # the converted checkpoint's with config.model.pretrained
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
    extractor = features.get_extractor(opts, workdir, setup.data)  # a missing weights file fails here
    train = features.real_features(workdir, setup.data, setup.data.train.info.split, extractor, opts)
    if opts.reference:
      features.reference(setup.seed, workdir, data=setup.data, extractor=extractor, train=train, opts=opts)

  # Records of other parameters (config.sampling.params) of the same steps are not this call's.
  done = {r["step"] for r in read_results(workdir) if "step" in r and r.get("params", "ema") == setup.sample_params}
  skipped = [s for s in in_range() if s in done]
  if skipped:
    logging.info("Steps %s are already in %s; skipped.", skipped, results_path(workdir))
  evaluator = _Evaluator(workdir, setup, opts, extractor, train)
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
  return EvalOutput(folder=os.path.dirname(results_path(workdir)), metrics={"records": new}, records=new)


