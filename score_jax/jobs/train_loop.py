"""The training loop and what runs beside it: batches built ahead (``BatchFeeder``), SIGTERM
(``Preemption``), the progress bar and TensorBoard scalars (``ScalarLog``), and ``train_loop``.

Data: a toy target's batch of step s is drawn on the device from ``fold_in(data_key, s)``;
an image dataset's is ``dataset.batch_at(s, ...)`` (a pure function of (seed, s)), this
process's share assembled into a global array while the previous step runs.  So a resumed
run — after a crash, ``kill -9`` or preemption — sees exactly the data of an uninterrupted one.
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import numpy as np
import tqdm

from score_jax import checkpointing
from score_jax import ema as ema_lib
from score_jax import experiment
from score_jax import sharding as sharding_lib
from score_jax import train_state as ts_lib
from score_jax.data import pipeline
from score_jax.jobs import writers

Array = Any


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the message names the step."""


# --- data feeding -------------------------------------------------------------------------
class BatchFeeder:
  """Global batches by step, this process's share built ahead on a background thread.

  Toy targets are sampled on the device; image batches come from ``dataset.batch_at``
  and are assembled with ``sharding.global_batch`` into arrays split over the mesh.
  """

  def __init__(self, setup: experiment.Setup, data_key: jax.Array):
    self._setup = setup
    mesh = setup.mesh
    data = setup.data
    if isinstance(data, experiment.ToyData):
      out = {"image": sharding_lib.data_sharding(mesh)}
      draw = jax.jit(lambda step: data.sample(jax.random.fold_in(data_key, step), setup.batch_size),
                     out_shardings=out)
      self._make = draw
    else:
      self._make = self._host_batch
    self._pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="batches")
    self._ahead: dict[int, concurrent.futures.Future] = {}

  def _host_batch(self, step: int) -> dict[str, jax.Array]:
    try:
      local = self._setup.data.train.batch_at(step, global_batch_size=self._setup.batch_size, seed=self._setup.seed,
                                              process_index=jax.process_index(), process_count=jax.process_count())
    except pipeline.UnreadableImageError as e:  # a file that passed the header scan (config.data.on_unreadable)
      raise experiment.ConfigError(f"config.data.{e} (batch of step {step})") from None
    return {name: sharding_lib.global_batch(local[name], self._setup.mesh) for name in ("image", "label")}

  def __call__(self, step: int) -> dict[str, jax.Array]:
    """The global batch of ``step``; starts building ``step + 1``'s."""
    future = self._ahead.pop(step, None)
    batch = future.result() if future is not None else self._make(step)
    self._ahead[step + 1] = self._pool.submit(self._make, step + 1)
    return batch

  def close(self) -> None:
    for future in self._ahead.values():
      future.cancel()
    self._pool.shutdown(wait=True)


# --- preemption ---------------------------------------------------------------------------
class Preemption:
  """Whether to stop and save, polled by the training loop once per step.

  One process: a SIGTERM handler (installed from the main thread) sets a flag.  Several
  processes: JAX's preemption sync point, fed by the distributed runtime's own SIGTERM
  notifier, which makes every process agree on the same step to save (a save is collective:
  one process saving alone would hang); no Python handler is installed there.
  """

  def __init__(self):
    self._event = threading.Event()
    self._previous = None
    self._multiprocess = jax.process_count() > 1

  def __enter__(self) -> "Preemption":
    if not self._multiprocess and threading.current_thread() is threading.main_thread():
      self._previous = signal.signal(signal.SIGTERM, lambda signum, frame: self._event.set())
    return self

  def __exit__(self, *exc) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)

  def requested(self, step: int) -> bool:
    if not self._multiprocess:
      return self._event.is_set()
    from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
    try:
      return multihost_utils.reached_preemption_sync_point(step)
    except RuntimeError:  # the distributed runtime was started without its preemption service
      return False


# --- logging ------------------------------------------------------------------------------
class ScalarLog:
  """Progress bar (rate, ETA, loss) and TensorBoard scalars, written by process 0 only.

  Scalars every ``log_freq`` steps: loss (mean over the window), loss_ema (exponential
  moving average of the per-step loss, decay 0.98), grad_norm, lr, skipped (updates skipped
  as non-finite in the window), steps_per_s and images_per_s (wall clock over the window).
  """

  def __init__(self, workdir: str, *, start_step: int, num_steps: int, batch_size: int, log_freq: int):
    self._main = jax.process_index() == 0
    self._batch_size, self._log_freq = batch_size, log_freq
    self._window: list[dict[str, float]] = []
    self._loss_ema: Optional[float] = None
    self._t0, self._step0 = time.perf_counter(), start_step
    self.last_loss: Optional[float] = None
    self.history: list[tuple[int, float]] = []
    self._bar = tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                          smoothing=0.1, disable=not self._main)
    self._writer = writers.Scalars(os.path.join(workdir, "tensorboard"), flush_secs=30)

  def record(self, step: int, metrics: dict[str, float]) -> None:
    """Records the metrics of ``step`` (0-based; the state after it has step + 1); writes the
    window's scalars, labelled step + 1, when step + 1 is a multiple of ``log_freq``."""
    loss = metrics["loss"]
    self.history.append((step, loss))
    if math.isfinite(loss):
      self._loss_ema = loss if self._loss_ema is None else 0.98 * self._loss_ema + 0.02 * loss
    self._window.append(metrics)
    if (step + 1) % self._log_freq == 0:
      self.flush(step + 1)

  def advance(self) -> None:
    """One more step dispatched."""
    self._bar.update(1)

  def flush(self, done: int) -> None:
    if not self._window:
      return
    now = time.perf_counter()
    steps = max(done - self._step0, 1)
    finite = [m["loss"] for m in self._window if math.isfinite(m["loss"])]
    scalars = {
        "loss": float(np.mean(finite)) if finite else float("nan"),
        "loss_ema": self._loss_ema if self._loss_ema is not None else float("nan"),
        "grad_norm": float(np.mean([m["grad_norm"] for m in self._window])),
        "lr": self._window[-1]["lr"],
        "skipped": float(sum(m["skipped"] for m in self._window)),
        "steps_per_s": steps / (now - self._t0),
        "images_per_s": steps * self._batch_size / (now - self._t0),
    }
    self.last_loss = scalars["loss"]
    self._window, self._t0, self._step0 = [], now, done
    self._bar.set_postfix(loss=f"{scalars['loss']:.4f}", refresh=False)
    self._writer.scalars("train", scalars, done, finite_only=False)

  def add_image(self, tag: str, grid: np.ndarray, step: int) -> None:
    self._writer.image(tag, grid, step)

  def close(self) -> None:
    self._bar.close()
    self._writer.close()


def write_ema_snapshots(workdir: str, ema: ema_lib.EMA, state: ts_lib.TrainState, step: int) -> None:
  """The power EMA's profiles at ``step``, each as an export ``<workdir>/ema/power_<σ_rel>/<step>``
  (what ``--mode=posthoc_ema`` combines); one that exists (a resumed run wrote it) is kept."""
  if ema.kind != "power":
    return
  for sigma_rel, average in zip(ema.sigma_rels, state.averages):
    checkpointing.export_params(workdir, step, average, profile=ema_lib.profile_name("power", sigma_rel))


def train_loop(step_fn: Callable, state: ts_lib.TrainState, feeder: BatchFeeder, ckpt: checkpointing.Checkpointer,
                log: ScalarLog, preemption: Preemption, *, start_step: int, num_steps: int, snapshot_freq: int,
                sample_freq: int, grid: Callable[[ts_lib.TrainState, int], None], ema_snapshot_freq: int = 0,
                ema_snapshot: Optional[Callable[[ts_lib.TrainState, int], None]] = None) -> tuple[ts_lib.TrainState, bool]:
  """Runs steps start_step..num_steps−1; returns (state, preempted).

  Every ``snapshot_freq`` steps a checkpoint, every ``sample_freq`` a sample grid (``grid``),
  every ``ema_snapshot_freq`` the power-EMA snapshots (``ema_snapshot``), each before the last
  step (the caller saves and writes those of the final step).

  The metrics of step s are read back after step s + 1 has been dispatched, so the host
  never stalls the device; a non-finite loss stops the loop before its state is checkpointed.
  """
  pending: Optional[tuple[int, dict]] = None

  def settle() -> None:
    nonlocal pending
    if pending is None:
      return
    step, metrics = pending
    pending = None
    values = {name: float(value) for name, value in jax.device_get(metrics).items()}
    if not values["skipped"] and not (math.isfinite(values["loss"]) and math.isfinite(values["grad_norm"])):
      raise NonFiniteLossError(
          f"Non-finite loss ({values['loss']}, gradient norm {values['grad_norm']}) at step {step}; stopping. "
          f"Lower config.optim.lr, enable config.optim.grad_clip, set config.training.skip_nonfinite=True, "
          f"or check the data and config.model.")
    if values["skipped"]:
      logging.warning("Step %d: non-finite loss or gradient; update skipped (config.training.skip_nonfinite).", step)
    log.record(step, values)

  for step in range(start_step, num_steps):
    state, metrics = step_fn(state, feeder(step))
    ckpt.poll()  # a failed asynchronous save (disk full) stops the run now
    settle()
    pending = (step, metrics)
    done = step + 1
    if preemption.requested(done):
      settle()
      ckpt.save(done, state, force=True)
      log.flush(done)
      return state, True
    if done % snapshot_freq == 0 and done < num_steps:
      settle()
      ckpt.save(done, state)
    if ema_snapshot is not None and ema_snapshot_freq and done % ema_snapshot_freq == 0 and done < num_steps:
      settle()
      ema_snapshot(state, done)
    if sample_freq and done % sample_freq == 0 and done < num_steps:
      settle()
      grid(state, done)
    log.advance()
  settle()
  log.flush(num_steps)  # the steps after the last multiple of log_freq, if any
  return state, False

