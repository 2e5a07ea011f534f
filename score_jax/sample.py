"""Drawing samples from a model and writing them out: the sample grids of a training run and
``--mode=sample`` (``sample(config, workdir)``).

Samples are drawn by one jitted call of ``score_jax.sampling.sample`` split over the
device mesh; sample i's noise comes from ``fold_in(key, i)``, so a picture does not depend
on the device count.  A class-conditional model draws labels 0, 1, …, K−1, 0, 1, … so each
row of a K-column grid is one class.

What is written, by data kind:

* images: ``<name>.png`` (a grid), ``<name>.npz`` (samples in the data range, labels);
* toy targets: ``<name>.png`` (scatter over the density) and sample-quality metrics
  against the exact target (sliced W2, mode coverage, NLL) in the metrics JSON.
"""

from __future__ import annotations

import os
import time
from typing import Any, Callable, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import ml_collections
import numpy as np

from score_jax import checkpointing
from score_jax import class_guidance
from score_jax import experiment
from score_jax import outputs
from score_jax import pretrained
from score_jax import sampling
from score_jax import sharding as sharding_lib
from score_jax.data import toy
from score_jax.metrics import samples as sample_metrics

Array = Any


def sample_labels(setup: experiment.Setup, num_samples: int) -> Optional[np.ndarray]:
  """Labels 0..K−1 repeated (int32 [N]) for a class-conditional model, else None."""
  if not setup.num_classes:
    return None
  return (np.arange(num_samples) % setup.num_classes).astype(np.int32)


def _rows(a: np.ndarray, start: int, size: int) -> np.ndarray:
  """Rows start .. start + size − 1 of ``a``, the last row repeated past its end (a full chunk)."""
  part = np.asarray(a)[start:start + size]
  if part.shape[0] < size:
    part = np.concatenate([part, np.repeat(part[-1:], size - part.shape[0], axis=0)])
  return part


def make_sampler(setup: experiment.Setup, num_samples: int, *, batch_size: Optional[int] = None,
                 constraint_fn: Optional[Callable[..., Any]] = None,
                 null_labels: bool = False,
                 guide: Optional[Callable[[Any, Array], Callable[[Array, Array], Array]]] = None
                 ) -> Callable[..., tuple[np.ndarray, int]]:
  """A compiled-once sampler ``draw(params, key, **arrays) -> (samples [N, ...] numpy, nfe)``.

  Samples are drawn ``batch_size`` at a time (default: all N in one call); sample j gets the
  key ``fold_in(key, j)`` whatever the chunking, so N samples are the same for any batch size
  (up to the batch-averaged step size of the ``langevin`` corrector).  Each chunk is split
  over the mesh when its size is divisible by the device count (else replicated).

  Args:
    setup: the components.
    num_samples: N.
    batch_size: samples per compiled call (None: all N at once).
    constraint_fn: for inpainting and colorization, ``constraint_fn(**arrays)`` builds the
      sampler's ``constraint`` (a ``sampling.constraints.Replacement``) from the per-sample
      arrays given to ``draw`` ([N, ...] each, cut into chunks like the samples).
    null_labels: a class-conditional model is sampled with its null label (its unconditional
      score) instead of the labels 0, 1, …, K−1, 0, … .
    guide: ``guide(params, index [b]) -> score_fn`` replaces the model's score for the samples
      at positions ``index`` (class guidance: ``class_guidance.Guide``, whose ``sampler_params``
      says what ``draw`` then takes as ``params``).
  """
  mesh = setup.mesh
  chunk = min(num_samples, batch_size or num_samples)
  shape = (chunk,) + setup.data_shape
  out = sharding_lib.data_sharding(mesh) if chunk % mesh.size == 0 else sharding_lib.replicated(mesh)
  num_classes = 0 if null_labels else setup.num_classes

  @jax.jit
  def _draw(params, key, start, arrays):
    index = start + jnp.arange(chunk, dtype=jnp.uint32)  # [b] positions in the whole set
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    labels = (index % num_classes).astype(jnp.int32) if num_classes else None
    extra = {} if constraint_fn is None else {"constraint": constraint_fn(**arrays)}
    score_fn = setup.score_fn(params, labels) if guide is None else guide(params, index)
    x, nfe = sampling.sample(keys, setup.sde, score_fn, shape, setup.sampling_method, **setup.sampling_options,
                             **extra)
    return jax.lax.with_sharding_constraint(x, out), jnp.max(nfe)

  def draw(params: Any, key: jax.Array, **arrays: np.ndarray) -> tuple[np.ndarray, int]:
    parts, nfe = [], 0
    for start in range(0, num_samples, chunk):
      x, n = _draw(params, key, start, {name: _rows(a, start, chunk) for name, a in arrays.items()})
      if jax.process_count() > 1:
        x = multihost_utils.process_allgather(x, tiled=True)
      parts.append(np.asarray(x)[:num_samples - start])
      nfe = max(nfe, int(n))
    return np.concatenate(parts), nfe

  return draw


def evaluate_toy_samples(key: jax.Array, x: Array, target: Any) -> dict[str, Any]:
  """Sample-quality metrics against an analytic target.

  Args:
    key: PRNG key for fresh target samples and projection directions.
    x: [N, D] model samples.
    target: the ``score_jax.data.toy`` target.

  Returns:
    {"sliced_w2", "nll", "nonfinite_fraction"} plus, for a Gaussian mixture, mode coverage,
    per-mode shares and the worst share / mean / std errors and outlier fraction.
  """
  x = np.asarray(x, np.float32)
  finite = np.all(np.isfinite(x), axis=1)
  k_ref, k_proj = jax.random.split(key)
  ref = target.sample(k_ref, x.shape[0])  # [N, D] fresh exact samples
  out: dict[str, Any] = {
      "num_samples": int(x.shape[0]),
      "nonfinite_fraction": float(1.0 - finite.mean()),
      "sliced_w2": sample_metrics.sliced_wasserstein(k_proj, x[finite], ref) if finite.any() else float("nan"),
      "sliced_w2_target_vs_target": sample_metrics.sliced_wasserstein(
          k_proj, np.asarray(target.sample(jax.random.fold_in(k_ref, 1), x.shape[0])), ref),
      "nll": sample_metrics.nll(x[finite], target) if finite.any() else float("nan"),
  }
  if isinstance(target, toy.GaussianMixture):
    stats = sample_metrics.mode_statistics(x, target)
    out.update({name: stats[name] for name in (
        "coverage", "share", "outlier_fraction", "max_share_rel_error", "max_mean_error", "max_std_rel_error")})
    out["target_weights"] = np.asarray(target.weights)
  return out


def _grid_scale(image_size: int) -> int:
  """Up-scaling that makes a tile at least ~64 pixels wide (8×8 digits: ×8)."""
  return max(1, 64 // image_size)


def write_samples(setup: experiment.Setup, x: np.ndarray, *, png: str, npz: Optional[str] = None,
                  metrics_json: Optional[str] = None, title: str = "", eval_key: Optional[jax.Array] = None,
                  extra: Mapping[str, Any] = (), labels: Optional[np.ndarray] = None) -> dict[str, Any]:
  """Writes samples ``x`` as a picture (grid or scatter), optionally an npz and a metrics JSON.

  ``labels`` (int [N]; default ``sample_labels``) are the classes the samples were drawn for:
  saved in the npz; a grid has one column per class when there are 2 … 16 of them.
  Only process 0 writes.  Returns the metrics (toy targets: sample quality; images: ``extra``).
  """
  metrics = dict(extra)
  data = setup.data
  if isinstance(data, experiment.ToyData) and eval_key is not None:
    metrics.update(evaluate_toy_samples(eval_key, x, data.target))
  if jax.process_index() != 0:
    return metrics
  labels = sample_labels(setup, x.shape[0]) if labels is None else np.asarray(labels)
  if isinstance(data, experiment.ToyData):
    summary = f"SW2 {metrics['sliced_w2']:.3f}" if "sliced_w2" in metrics else ""
    if "coverage" in metrics:
      summary += f", coverage {metrics['coverage']:.2f}"
    outputs.plot_samples(png, x, data.target, title=f"{title}\n{summary}".strip())
  else:
    classes = 0 if labels is None else len(np.unique(labels))
    ncol = classes if 2 <= classes <= 16 else None
    outputs.save_image_grid(png, x, data_range=data.data_range, ncol=ncol, scale=_grid_scale(x.shape[1]))
  if npz is not None:
    arrays = {"samples": x}
    if labels is not None:
      arrays["labels"] = labels
    if "step" in metrics:
      arrays["step"] = np.asarray(metrics["step"])
    outputs.write_npz(npz, **arrays)
  if metrics_json is not None:
    outputs.write_json(metrics_json, metrics)
  logging.info("Wrote %s.", ", ".join(p for p in (png, npz, metrics_json) if p))
  return metrics


def available_steps(setup: experiment.Setup, workdir: str) -> list[int]:
  """Steps sample / eval can read: the converted checkpoint's (``config.model.pretrained``), else the workdir's."""
  if setup.pretrained:
    return [int(pretrained.read_meta(setup.pretrained).get("step", 0))]
  return checkpointing.saved_steps(workdir)


def latest_ema_params(setup: experiment.Setup, workdir: str, step: Optional[int] = None) -> Optional[tuple[int, Any]]:
  """(step, EMA parameters) of the newest readable full checkpoint or EMA export in ``workdir``,
  or of the converted published checkpoint ``setup.pretrained`` when there is one.

  Damaged ones are reported and moved aside, and the next older one is used
  (``checkpointing.restore_first_readable``); of one step, the export is tried first (a
  third of the checkpoint's size), then the checkpoint.

  Args:
    setup: the components (their network must match the checkpoint's).
    workdir: the run's folder.
    step: a particular step instead of the newest (no fallback to other steps).

  Returns:
    (step, params) replicated over the mesh, or None when there is nothing to load.

  Raises:
    checkpointing.UnreadableCheckpointError: none of them could be read.
    checkpointing.CheckpointMismatchError: the config's model differs from the saved one.
  """
  repl = sharding_lib.replicated(setup.mesh)
  init_key = experiment.keys(setup.seed)["init"]
  if setup.pretrained:  # a converted published checkpoint replaces the workdir's own
    if step is not None and step not in available_steps(setup, workdir):
      return None
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                          jax.eval_shape(lambda k: experiment.init_params(setup, k), init_key))
    return available_steps(setup, workdir)[0], pretrained.load_export(setup.pretrained, target)
  candidates = checkpointing.saved_steps(workdir)
  if not candidates or (step is not None and step not in candidates):
    return None
  params = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=repl),
                        jax.eval_shape(lambda k: experiment.init_params(setup, k), init_key))
  state = experiment.abstract_state(setup, init_key, repl)
  sources = []
  for s in sorted(candidates, reverse=True) if step is None else [step]:
    sources += [checkpointing.export_source(workdir, s, params),
                checkpointing.checkpoint_source(workdir, s, state, pick=lambda restored: restored.ema_params)]
  return checkpointing.restore_first_readable(sources, workdir=workdir, writer=False)


def draw_key(setup: experiment.Setup, step: int, draw: int) -> jax.Array:
  """The key of ``--mode=sample``'s folder ``samples/<draw>`` for parameters of ``step``; sample
  j of it draws from ``fold_in(key, j)``."""
  return jax.random.fold_in(jax.random.fold_in(experiment.keys(setup.seed)["sample"], step), draw + 1)


def load_ema_params(config: ml_collections.ConfigDict, setup: experiment.Setup, workdir: str) -> tuple[int, Any]:
  """(step, EMA parameters) of ``config.sampling.checkpoint_step`` (None: the latest) in ``workdir``.

  Raises:
    FileNotFoundError: no such checkpoint or EMA export; the message says which exist or how to make one.
  """
  wanted = config.sampling.get("checkpoint_step")
  found = latest_ema_params(setup, workdir, step=wanted)
  if found is None and wanted is not None:
    have = available_steps(setup, workdir)
    raise FileNotFoundError(f"config.sampling.checkpoint_step={wanted}: no checkpoint or EMA export of that step in "
                            f"{workdir} (there are {have or 'none'}); pick one of them or leave it unset for the latest.")
  if found is None:
    raise FileNotFoundError(f"No checkpoint found in {checkpointing.checkpoint_dir(workdir)}: run --mode=train "
                            f"with --workdir={workdir} first.")
  return found


def sample(config: ml_collections.ConfigDict, workdir: str) -> str:
  """``--mode=sample``: draws ``config.sampling.num_samples`` samples from the EMA parameters of
  the latest checkpoint (or EMA export) in ``workdir`` into a new folder ``<workdir>/samples/<k>``.

  Writes samples.png, samples.npz and metrics.json (sampler, NFE, time; toy targets: quality).
  With ``config.guidance`` (``class_guidance``) the samples are class-guided: classifier
  guidance by the noise-conditional classifier, or classifier-free guidance; the npz holds
  the requested labels.

  Args:
    config: the full config; its model must match the checkpoint's.
    workdir: a folder that ``train.train_and_evaluate`` has written checkpoints to.

  Returns:
    The new folder's path.

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``, or classifier guidance without a
      trained noise-conditional classifier.
    ConfigError (a ValueError): a bad config value.
  """
  setup = experiment.build(config)
  guide = class_guidance.build_guide(config, setup, workdir)  # before compiling: a bad guidance field stops here
  keys = experiment.keys(config.seed)
  step, params = load_ema_params(config, setup, workdir)
  k, out = outputs.next_numbered_dir(os.path.join(workdir, "samples"))
  key = draw_key(setup, step, k)
  num = config.sampling.num_samples
  t0 = time.perf_counter()
  draw = make_sampler(setup, num, batch_size=config.sampling.get("batch_size"), guide=guide)
  x, nfe = draw(params if guide is None else guide.sampler_params(params), key)
  extra = {"step": step, "draw": k, "workdir": os.path.abspath(workdir), "nfe": nfe,
           "sample_time_s": time.perf_counter() - t0, "num_samples": int(x.shape[0]),
           "sampling": {"method": setup.sampling_method, **setup.sampling_options}}
  if guide is not None:
    extra["guidance"] = guide.options
  write_samples(setup, x, png=os.path.join(out, "samples.png"), npz=os.path.join(out, "samples.npz"),
                metrics_json=os.path.join(out, "metrics.json"),
                title=f"{setup.data.name}, EMA model at step {step}, draw {k}",
                eval_key=jax.random.fold_in(keys["eval"], k + 1), extra=extra,
                labels=None if guide is None else guide.sample_labels(num))
  return out
