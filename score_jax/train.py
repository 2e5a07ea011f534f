"""Training: ``train_and_evaluate(config, workdir)``, what ``main.py --mode=train`` runs and
what tests call.  The config becomes components in ``score_jax.experiment``.

The train step is one ``jax.jit`` over a Mesh of every device (``score_jax.sharding``): the
global batch is split over the "data" axis, the TrainState is replicated and donated, or
with ``config.training.fsdp`` sharded over the same axis (``state_shardings``).  The same
code runs on 1 CPU, 8 TPU cores or a pod (``main.py`` calls ``jax.distributed.initialize()``
on multi-process launches).  The first calls of the train step and of the sampler log their
compile time (``score_jax.compilation``).

Data: a toy target's batch of step s is drawn on the device from ``fold_in(data_key, s)``;
an image dataset's is ``dataset.batch_at(s, ...)`` (a pure function of (seed, s)), this
process's share assembled into a global array while the previous step runs.  The loss of
step s draws its times and noise from ``fold_in(train_key, s)``.  So a resumed run — after
a crash, ``kill -9`` or preemption — sees exactly the data and noise of an uninterrupted one.

Workdir layout::

    <workdir>/config.json                 resolved config of the first run
    <workdir>/train.lock                  flock'ed by the training run that writes here (pid, host, start)
    <workdir>/config_step{S}.json         ... of a run resumed at step S with a changed config
    <workdir>/checkpoints/<step>/         Orbax checkpoints of the TrainState (async)
    <workdir>/ema/<step>/                 EMA parameters only, exported at the end of training
    <workdir>/tensorboard/                scalars: loss, loss_ema, grad_norm, lr, images_per_s, ...
    <workdir>/samples_step{S}.png         samples of the EMA model (image grid or toy scatter)
    <workdir>/samples_step{S}.npz         ... as arrays (images)
    <workdir>/metrics_step{S}.json        end of training: times, loss, sampler, NFE (toy: quality)
    <workdir>/samples/<k>/                one --mode=sample draw

No file is ever overwritten: outputs are named by step (or by a fresh folder), and a run
that would overwrite one stops before compiling with a message saying what to do.

Preemption: SIGTERM makes the loop save a checkpoint at the current step and return
(``TrainResult.preempted``); ``main.py`` then exits 0 and the relaunched command resumes.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import math
import os
import signal
import threading
import time
from typing import Any, Callable, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import tqdm

from score_jax import checkpointing
from score_jax import compilation
from score_jax import experiment
from score_jax import outputs
from score_jax import sample as sample_lib
from score_jax import sharding as sharding_lib
from score_jax import train_state as ts_lib

Array = Any
ConfigDict = ml_collections.ConfigDict
ConfigError = experiment.ConfigError
CheckpointError = checkpointing.CheckpointError  # damaged checkpoints, a locked workdir, a full disk
build = experiment.build


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the message names the step."""


# --- the step -----------------------------------------------------------------------------
def make_train_step(setup: experiment.Setup, *,
                    train_key: jax.Array) -> Callable[[ts_lib.TrainState, dict], tuple[ts_lib.TrainState, dict]]:
  """The (unjitted) train step ``(state, batch) -> (state, metrics)``.

  At step s the loss draws from ``fold_in(train_key, s)``; dropout and label dropout from
  keys folded from it.  With ``setup.skip_nonfinite`` an update whose loss or gradient
  norm is not finite is skipped (parameters, EMA and optimizer state kept; the step
  still advances, so the data stream moves on).

  With ``setup.grad_accum`` = k > 1 the gradient is accumulated over k micro-batches in a
  ``jax.lax.scan`` inside the step: the loss draws its times and noise (and the label
  dropout its mask) for the whole batch exactly as the plain step does, and micro-batch i
  takes rows i of every device's share (``microbatch_rows``), so the sum of the k losses
  and gradients is the full batch's: the same update, to float rounding.  Only network
  dropout differs: micro-batch i draws it from ``fold_in(dropout_key, i)``.

  Args:
    setup: components from ``experiment.build``.
    train_key: base key of the loss's randomness.

  Returns:
    The step function; batch is {"image": [B, ...], "label": [B] (images only)}; metrics
    are scalars {"loss", "grad_norm", "lr", "skipped"}.
  """

  def step_fn(state: ts_lib.TrainState, batch: dict) -> tuple[ts_lib.TrainState, dict]:
    key = jax.random.fold_in(train_key, state.step)
    dropout_key, label_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    x = batch["image"]
    labels = batch.get("label") if setup.num_classes else None
    if labels is not None and setup.label_dropout > 0:
      # Classifier-free guidance (Ho & Salimans 2022): train with the null label a fraction of the time.
      drop = jax.random.bernoulli(label_key, setup.label_dropout, labels.shape)
      labels = jnp.where(drop, setup.num_classes, labels)

    def loss_of(params):
      score_fn = setup.score_fn(params, labels, train=True, dropout_key=dropout_key)
      return setup.loss_fn(key, setup.sde, score_fn, x)

    def micro_step(total, i):
      rows = functools.partial(microbatch_rows, index=i, count=setup.grad_accum, groups=setup.mesh.size)

      def micro_loss(params):
        score_fn = setup.score_fn(params, None if labels is None else rows(labels), train=True,
                                  dropout_key=jax.random.fold_in(dropout_key, i))
        return setup.loss_fn(key, setup.sde, score_fn, x, rows=rows)

      return jax.tree.map(jnp.add, total, jax.value_and_grad(micro_loss)(state.params)), None

    if setup.grad_accum == 1:
      loss, grads = jax.value_and_grad(loss_of)(state.params)
    else:
      # Gradient accumulation: k micro-batches in one scan, their losses and gradients summed.
      zeros = (jnp.zeros((), jnp.result_type(x, jnp.float32)), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(micro_step, zeros, jnp.arange(setup.grad_accum))
    grad_norm = optax.global_norm(grads)
    new_state = ts_lib.apply_gradients(state, grads, setup.tx, ema_rate=setup.ema_rate)
    skipped = jnp.zeros((), jnp.bool_)
    if setup.skip_nonfinite:
      skipped = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
      kept = jax.tree.map(lambda new, old: jnp.where(skipped, old, new), new_state, state)
      new_state = kept.replace(step=state.step + 1)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": setup.lr_schedule(state.step), "skipped": skipped}
    return new_state, metrics

  return step_fn


def state_shardings(config: ConfigDict, setup: experiment.Setup, state: Any) -> Any:
  """The shardings of the TrainState ``state`` (arrays or ShapeDtypeStructs) on ``setup.mesh``.

  Replicated by default; with ``config.training.fsdp`` parameters, EMA and optimizer state are
  split over the "data" axis by ``sharding.fsdp_shardings`` (arrays under
  ``config.training.fsdp_min_size`` elements stay replicated).  A checkpoint restored with
  these as its target is resharded by Orbax, whatever device count wrote it.
  """
  tr = config.training
  if not tr.get("fsdp", False):
    return jax.tree.map(lambda _: sharding_lib.replicated(setup.mesh), state)
  return sharding_lib.fsdp_shardings(state, setup.mesh,
                                     min_size=tr.get("fsdp_min_size", sharding_lib.FSDP_MIN_SIZE))


def microbatch_rows(a: Array, *, index: Array, count: int, groups: int) -> Array:
  """Rows of micro-batch ``index`` of ``count``: [B, ...] -> [B / count, ...].

  The batch is seen as ``groups`` contiguous blocks (one per device of the data axis); the
  micro-batch takes slice ``index`` of each block, so every device keeps its own rows and
  the k micro-batches partition the batch.

  Args:
    a: [B, ...] with B divisible by count × groups.
    index: the micro-batch, 0 ≤ index < count (may be traced).
    count: number of micro-batches k.
    groups: number of devices on the data axis.

  Returns:
    [B / count, ...].
  """
  per = a.shape[0] // (groups * count)
  blocks = a.reshape((groups, count, per) + a.shape[1:])  # [D, k, B/(D·k), ...]
  return jax.lax.dynamic_index_in_dim(blocks, index, axis=1, keepdims=False).reshape((groups * per,) + a.shape[1:])


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
    local = self._setup.data.train.batch_at(step, global_batch_size=self._setup.batch_size, seed=self._setup.seed,
                                            process_index=jax.process_index(), process_count=jax.process_count())
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
    self._writer = None
    if self._main:
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      self._writer = SummaryWriter(os.path.join(workdir, "tensorboard"), flush_secs=30)

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
    if self._writer is not None:
      for name, value in scalars.items():
        self._writer.add_scalar(f"train/{name}", value, done)

  def add_image(self, tag: str, grid: np.ndarray, step: int) -> None:
    if self._writer is not None:
      self._writer.add_image(tag, grid, step, dataformats="HWC")

  def close(self) -> None:
    self._bar.close()
    if self._writer is not None:
      try:
        self._writer.close()
      except OSError as e:  # e.g. a full disk: reported, not raised over the error that stopped the run
        logging.warning("TensorBoard scalars in %s not flushed: %s", self._writer.logdir, e)


# --- entry point --------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
  """What ``train_and_evaluate`` returns.

  Attributes:
    state: the final TrainState (at the preemption step when preempted).
    start_step: the step training started from (0, or the restored checkpoint's step).
    preempted: SIGTERM stopped the run; a checkpoint of ``state.step`` was saved.
    history: (step, loss) of every step run in this call.
    metrics: the metrics written to ``metrics_path`` (empty when preempted).
    metrics_path: ``<workdir>/metrics_step{S}.json`` (None when preempted).
    samples_path: ``<workdir>/samples_step{S}.png`` (None when preempted).
  """

  state: ts_lib.TrainState
  start_step: int
  preempted: bool
  history: list[tuple[int, float]]
  metrics: dict
  metrics_path: Optional[str]
  samples_path: Optional[str]


def _write_config(config: ConfigDict, workdir: str, start_step: int) -> str:
  """Writes the resolved config as ``config.json``, or, when a run resumes with a
  different config, as ``config_step{start_step}.json``.  Returns the path."""
  text = config.to_json(indent=2, sort_keys=True) + "\n"
  path = os.path.join(workdir, "config.json")
  if os.path.exists(path):
    with open(path) as f:
      if f.read() == text:
        return path
    path = os.path.join(workdir, f"config_step{start_step}.json")
    if os.path.exists(path):
      with open(path) as f:
        if f.read() == text:
          return path
      raise FileExistsError(
          f"Refusing to overwrite {path}: it holds a different config for a run resumed at step "
          f"{start_step}. Move it away or use another --workdir.")
  with open(path, "x") as f:
    f.write(text)
  return path


def _output_paths(workdir: str, step: int, setup: experiment.Setup) -> dict[str, Optional[str]]:
  images = isinstance(setup.data, experiment.ImageData)
  return {"png": os.path.join(workdir, f"samples_step{step}.png"),
          "npz": os.path.join(workdir, f"samples_step{step}.npz") if images else None,
          "metrics_json": os.path.join(workdir, f"metrics_step{step}.json")}


def train_and_evaluate(config: ConfigDict, workdir: str, *, mesh: Optional[jax.sharding.Mesh] = None) -> TrainResult:
  """Trains a score model on ``config.data``; at the end samples its EMA parameters.

  Resumes from the newest readable checkpoint in ``<workdir>/checkpoints`` when there is one
  (damaged newer ones are moved aside as ``<step>.unreadable``).  Holds the workdir's
  ``checkpointing.WorkdirLock`` from before the restore to the end.

  Args:
    config: the full config (see ``configs/default_ve.py`` or ``configs/toy/gmm2d.py``).
    workdir: the run's folder (created if missing).
    mesh: the devices to train on; default ``sharding.make_mesh()`` over every device (pass e.g.
      ``sharding.make_mesh(devices=jax.devices()[:1])`` to train on one).

  Returns:
    A ``TrainResult``.

  Raises:
    ConfigError (a ValueError): a bad config value (before anything compiles).
    FileExistsError: the run's outputs for ``config.training.num_steps`` already exist.
    NonFiniteLossError: the loss became NaN or infinite; the message names the step.
    checkpointing.WorkdirLockedError: another training run uses ``workdir``.
    checkpointing.UnreadableCheckpointError: checkpoints exist but none is readable.
    checkpointing.DiskFullError: a save ran out of space (the previous checkpoint is intact).
  """
  setup = experiment.build(config, mesh=mesh)
  experiment.check(not setup.pretrained, "config.model.pretrained",
                   f"is {setup.pretrained!r}, but training starts from fresh weights; it is read by --mode=sample "
                   "and --mode=eval only (leave it empty to train).")
  tr = config.training
  num_steps = tr.num_steps
  final = _output_paths(workdir, num_steps, setup)
  outputs.refuse_overwrite([p for p in final.values() if p], (
      f"The run in {workdir} has already reached step {num_steps}: raise --config.training.num_steps to "
      f"train on, run --mode=sample to draw new samples, or use another --workdir."))
  os.makedirs(workdir, exist_ok=True)
  with checkpointing.WorkdirLock(workdir):  # a second trainer on this workdir stops here
    return _train_and_evaluate(config, workdir, setup, final)


def _train_and_evaluate(config: ConfigDict, workdir: str, setup: experiment.Setup,
                        final: dict[str, Optional[str]]) -> TrainResult:
  tr = config.training
  num_steps = tr.num_steps
  keys = experiment.keys(config.seed)
  repl = sharding_lib.replicated(setup.mesh)
  batch_shardings = jax.tree.map(lambda _: sharding_lib.data_sharding(setup.mesh), experiment.abstract_batch(setup))
  state_sh = state_shardings(config, setup, experiment.abstract_state(setup, keys["init"]))

  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=tr.max_to_keep)
  try:
    found = ckpt.restore_newest_readable(experiment.abstract_state(setup, keys["init"], state_sh))
    if found is not None:
      state = found[1]
      logging.info("Resuming from the checkpoint of step %d in %s.", int(state.step), ckpt.directory)
    else:
      state = compilation.run_once(functools.partial(experiment.init_state, setup), keys["init"],
                                  out_shardings=state_sh)
    start_step = int(state.step)
    if start_step > num_steps:
      raise ConfigError(f"config.training.num_steps: {num_steps} is below the step of the latest checkpoint "
                        f"({start_step}) in {ckpt.directory}; raise it or use another --workdir.")
    if jax.process_index() == 0:
      _write_config(config, workdir, start_step)
    logging.info("%d parameters; %d device(s) in %d process(es); global batch %d; state %s.",
                 experiment.num_params(state.params), setup.mesh.size, jax.process_count(), setup.batch_size,
                 "sharded (FSDP)" if tr.get("fsdp", False) else "replicated")

    compiled: dict[str, compilation.CompileStats] = {}
    step_fn = compilation.timed_first_call(
        jax.jit(make_train_step(setup, train_key=keys["train"]), in_shardings=(state_sh, batch_shardings),
                out_shardings=(state_sh, repl), donate_argnums=0), "train step", compiled)
    sampler = compilation.timed_first_call(  # compiles on first use
        sample_lib.make_sampler(setup, config.sampling.num_samples, batch_size=config.sampling.get("batch_size")),
        "sampler", compiled)
    t0 = time.perf_counter()
    feeder = BatchFeeder(setup, keys["data"])
    log = ScalarLog(workdir, start_step=start_step, num_steps=num_steps, batch_size=setup.batch_size,
                    log_freq=tr.log_freq)
    try:
      with Preemption() as preemption:
        state, preempted = _train_loop(
            step_fn, state, feeder, ckpt, log, preemption, start_step=start_step, num_steps=num_steps,
            snapshot_freq=tr.snapshot_freq, sample_freq=tr.get("sample_freq", 0),
            grid=lambda state, step: _sample_grid(setup, sampler, state, step, workdir, keys, log))
    finally:
      feeder.close()
      log.close()
    if preempted:
      logging.warning("SIGTERM: saved the checkpoint of step %d; relaunch the same command to resume.",
                      int(state.step))
      return TrainResult(state=state, start_step=start_step, preempted=True, history=log.history, metrics={},
                         metrics_path=None, samples_path=None)
    ckpt.save(num_steps, state)
    train_time = time.perf_counter() - t0
  finally:
    ckpt.close()

  checkpointing.export_params(workdir, num_steps, state.ema_params)  # every process takes part in an Orbax save
  extra = {"step": num_steps, "start_step": start_step, "train_time_s": train_time,
           "steps_per_s": (num_steps - start_step) / train_time if num_steps > start_step else None,
           "final_loss": log.last_loss, "num_params": experiment.num_params(state.params),
           "num_devices": setup.mesh.size, "batch_size": setup.batch_size}
  t1 = time.perf_counter()
  x, nfe = sampler(state.ema_params, jax.random.fold_in(keys["sample"], num_steps))
  extra.update({"nfe": nfe, "sample_time_s": time.perf_counter() - t1, "num_samples": int(x.shape[0]),
                "sampling": {"method": setup.sampling_method, **setup.sampling_options},
                "compile": {what: stats.as_dict() for what, stats in compiled.items()}})
  metrics = sample_lib.write_samples(setup, x, **final, title=f"{setup.data.name}, EMA model at step {num_steps}",
                                     eval_key=jax.random.fold_in(keys["eval"], num_steps), extra=extra)
  return TrainResult(state=state, start_step=start_step, preempted=False, history=log.history, metrics=metrics,
                     metrics_path=final["metrics_json"], samples_path=final["png"])


def _sample_grid(setup: experiment.Setup, sampler: Callable[[Any, jax.Array], tuple[np.ndarray, int]], state: ts_lib.TrainState, step: int, workdir: str,
                 keys: dict[str, jax.Array], log: ScalarLog) -> None:
  """The periodic sample picture of step ``step`` (kept, not rewritten, if a resumed run made it)."""
  paths = _output_paths(workdir, step, setup)
  if os.path.exists(paths["png"]):
    logging.info("%s exists (an earlier run of this workdir drew it); kept.", paths["png"])
    return
  x, _ = sampler(state.ema_params, jax.random.fold_in(keys["sample"], step))
  sample_lib.write_samples(setup, x, png=paths["png"], npz=paths["npz"], title=f"EMA model at step {step}",
                           extra={"step": step})
  if isinstance(setup.data, experiment.ImageData) and jax.process_index() == 0:
    grid = outputs.image_grid(x[:64], data_range=setup.data.data_range)
    log.add_image("samples", grid if grid.shape[-1] == 3 else np.repeat(grid, 3, axis=-1), step)


def _train_loop(step_fn: Callable, state: ts_lib.TrainState, feeder: BatchFeeder, ckpt: checkpointing.Checkpointer,
                log: ScalarLog, preemption: Preemption, *, start_step: int, num_steps: int, snapshot_freq: int,
                sample_freq: int, grid: Callable[[ts_lib.TrainState, int], None]) -> tuple[ts_lib.TrainState, bool]:
  """Runs steps start_step..num_steps−1; returns (state, preempted).

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
    if sample_freq and done % sample_freq == 0 and done < num_steps:
      settle()
      grid(state, done)
    log.advance()
  settle()
  log.flush(num_steps)  # the steps after the last multiple of log_freq, if any
  return state, False
