"""Training and sampling entry points: ``train_and_evaluate(config, workdir)`` and
``sample(config, workdir)``, what ``main.py`` dispatches to and what tests call.

The config is read here, and only here; every component gets plain arguments:

    config.sde       sde_lib.get_sde(name, **config.sde[name])          the forward SDE
    config.data      toy.get_target(name, **config.data[name])          the target's exact samples
    config.model     models.get_model(name, **config.model.network)     the network, plus its
                     parametrization and ema_rate
    config.optim     train_state.create_optimizer(config.optim)         clip -> Adam with warmup
    config.training  losses.<loss>(**loss_options), batch size, steps, checkpoints
    config.sampling  sampling.sample(method, **config.sampling[method])

Sections keyed by the chosen name (``config.sde.ve``, ``config.sampling.ode``, ...) keep the
options of the alternatives, so ``--config.sde.name=ve`` or ``--config.sampling.method=ode``
switch components from the command line.

Randomness: five streams are folded from ``jax.random.key(config.seed)`` (init, train,
data, sample, eval).  The train step of step s uses ``fold_in(train_key, s)`` and draws its
batch of exact target samples from ``fold_in(data_key, s)`` inside the compiled step, so
a resumed run sees the same data and noise as an uninterrupted one.

Workdir layout::

    <workdir>/config.json                 resolved config of the first run
    <workdir>/config_step{S}.json         ... of a run resumed at step S with a changed config
    <workdir>/checkpoints/<step>/         Orbax checkpoints of the TrainState
    <workdir>/samples_step{S}.png         samples of the EMA model over the target density
    <workdir>/metrics_step{S}.json        sliced W2, mode coverage, NLL, nfe, times
    <workdir>/samples/<k>/                one --mode=sample draw: samples.png, metrics.json,
                                          samples.npz

No file is ever overwritten: outputs are named by step (or by a fresh folder), and a run
that would overwrite one stops before compiling with a message saying what to do.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import math
import os
import time
from typing import Any, Callable, Iterator, Mapping, Optional

from absl import logging
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import tqdm

from score_jax import checkpointing
from score_jax import losses
from score_jax import models
from score_jax import sampling
from score_jax import score_fn as score_fn_lib
from score_jax import sde as sde_lib
from score_jax import train_state as ts_lib
from score_jax.data import toy
from score_jax.metrics import samples as sample_metrics

Array = Any
ConfigDict = ml_collections.ConfigDict

LOSSES: dict[str, Callable[..., Array]] = {
    "dsm": losses.dsm_loss,
    "smld": losses.smld_loss,
    "ddpm": losses.ddpm_loss,
}
DATA_KINDS = ("toy",)


class ConfigError(ValueError):
  """A bad config value, found before anything compiles; the message starts with the field."""


class NonFiniteLossError(FloatingPointError):
  """The training loss became NaN or infinite; the message names the step."""


# --- config -> components -----------------------------------------------------------------
@contextlib.contextmanager
def _config_field(field: str) -> Iterator[None]:
  """Re-raises a ValueError/TypeError from building a component with the config field named."""
  try:
    yield
  except ConfigError:
    raise
  except (ValueError, TypeError) as e:
    raise ConfigError(f"{field}: {e}") from e


def _check(cond: bool, field: str, message: str) -> None:
  if not cond:
    raise ConfigError(f"{field}: {message}")


def _is_int(value: Any) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _as_dict(section: Any) -> dict[str, Any]:
  """A ConfigDict (or mapping, or None) as a plain dict, recursively."""
  if section is None:
    return {}
  if isinstance(section, ConfigDict):
    return section.to_dict()
  return dict(section)


@dataclasses.dataclass(frozen=True)
class Setup:
  """Everything built from a config, before anything is compiled.

  Attributes:
    sde: the forward SDE.
    target: the data distribution (a ``score_jax.data.toy`` target).
    model: the (unbound) Flax network.
    tx: the optax chain.
    loss_fn: ``loss_fn(key, sde, score_fn, x) -> scalar`` with the config's options bound.
    parametrization: how the network output becomes a score (``score_fn.get_score_fn``).
    conditioning: what the network is conditioned on (t, σ̃(t) or 999·t; ``score_fn.CONDITIONINGS``).
    ema_rate: EMA decay of the parameters.
    data_shape: shape of one example, e.g. (2,).
    sampling_method: the sampler's name.
    sampling_options: its options, defaults filled in.
  """

  sde: sde_lib.SDE
  target: Any
  model: Any
  tx: Any
  loss_fn: Callable[..., Array]
  parametrization: str
  conditioning: str
  ema_rate: float
  data_shape: tuple[int, ...]
  sampling_method: str
  sampling_options: dict[str, Any]

  def apply(self, params: Any, x: Array, t: Array) -> Array:
    """The network on its ``"params"`` collection: x [B, ...], t [B] -> [B, ...]."""
    return self.model.apply({"params": params}, x, t)

  def score_fn(self, params: Any) -> Callable[[Array, Array], Array]:
    return score_fn_lib.get_score_fn(self.sde, self.apply, params, parametrization=self.parametrization,
                                     conditioning=self.conditioning)


def _validate_training(config: ConfigDict) -> None:
  tr = config.training
  _check(_is_int(tr.num_steps) and tr.num_steps >= 1, "config.training.num_steps",
         f"must be an integer >= 1, got {tr.num_steps!r}.")
  _check(_is_int(tr.batch_size) and tr.batch_size >= 1, "config.training.batch_size",
         f"must be an integer >= 1, got {tr.batch_size!r}.")
  _check(_is_int(tr.snapshot_freq) and tr.snapshot_freq >= 1, "config.training.snapshot_freq",
         f"must be an integer >= 1 (steps between checkpoints), got {tr.snapshot_freq!r}.")
  _check(_is_int(tr.max_to_keep) and tr.max_to_keep >= 1, "config.training.max_to_keep",
         f"must be an integer >= 1, got {tr.max_to_keep!r}.")
  _check(_is_int(tr.log_freq) and tr.log_freq >= 1, "config.training.log_freq",
         f"must be an integer >= 1, got {tr.log_freq!r}.")
  _check(tr.loss in LOSSES, "config.training.loss", f"unknown loss {tr.loss!r}; choose one of {sorted(LOSSES)}.")
  op = config.optim
  _check(isinstance(op.lr, (int, float)) and op.lr > 0, "config.optim.lr", f"must be > 0, got {op.lr!r}.")
  _check(_is_int(op.warmup) and op.warmup >= 0, "config.optim.warmup", f"must be an integer >= 0, got {op.warmup!r}.")
  _check(0.0 <= op.b1 < 1.0, "config.optim.b1", f"must lie in [0, 1), got {op.b1!r}.")
  _check(0.0 <= op.b2 < 1.0, "config.optim.b2", f"must lie in [0, 1), got {op.b2!r}.")
  _check(op.eps > 0, "config.optim.eps", f"must be > 0, got {op.eps!r}.")
  rate = config.model.ema_rate
  _check(isinstance(rate, (int, float)) and 0.0 <= rate < 1.0, "config.model.ema_rate",
         f"must lie in [0, 1), got {rate!r}.")
  _check(config.data.kind in DATA_KINDS, "config.data.kind",
         f"unknown data kind {config.data.kind!r}; choose one of {list(DATA_KINDS)}.")
  n = config.sampling.num_samples
  _check(_is_int(n) and n >= 1, "config.sampling.num_samples", f"must be an integer >= 1, got {n!r}.")
  _check(_is_int(config.seed), "config.seed", f"must be an integer, got {config.seed!r}.")


def build(config: ConfigDict) -> Setup:
  """Validates ``config`` and builds the SDE, target, network, optimizer, loss and sampler
  options.  Nothing is compiled; the train step and the sampler are traced abstractly
  (``jax.eval_shape``) so that any bad value surfaces here.

  Args:
    config: the full config (sections sde, data, model, optim, training, sampling, seed).

  Returns:
    The components.

  Raises:
    ConfigError (a ValueError): a bad config value; the message starts with the config field.
  """
  _validate_training(config)
  with _config_field("config.sde"):
    sde = sde_lib.get_sde(config.sde.name, **_as_dict(config.sde.get(config.sde.name)))
  with _config_field("config.data"):
    target = toy.get_target(config.data.name, **_as_dict(config.data.get(config.data.name)))
  with _config_field("config.model"):
    model = models.get_model(config.model.name, **_as_dict(config.model.network))
  parametrization = config.model.parametrization
  _check(parametrization in score_fn_lib.PARAMETRIZATIONS, "config.model.parametrization",
         f"unknown {parametrization!r}; choose one of {list(score_fn_lib.PARAMETRIZATIONS)}.")
  conditioning = config.model.conditioning
  _check(conditioning in score_fn_lib.CONDITIONINGS, "config.model.conditioning",
         f"unknown {conditioning!r}; choose one of {list(score_fn_lib.CONDITIONINGS)}.")
  with _config_field("config.optim"):
    tx = ts_lib.create_optimizer(_as_dict(config.optim))
  loss_options = _as_dict(config.training.get("loss_options"))
  loss_fn = functools.partial(LOSSES[config.training.loss], **loss_options)
  method = config.sampling.method
  with _config_field(f"config.sampling.{method}" if method in sampling.METHODS else "config.sampling.method"):
    options = sampling.resolve_options(sde, method, _as_dict(config.sampling.get(method)))
  setup = Setup(sde=sde, target=target, model=model, tx=tx, loss_fn=loss_fn,
                parametrization=parametrization, conditioning=conditioning, ema_rate=float(config.model.ema_rate),
                data_shape=(target.dim,), sampling_method=method, sampling_options=options)
  # Trace (never compile) the loss with an exact-shape stand-in score, then the whole train
  # step: a wrong loss option or a network that does not return x's shape fails here.
  keys = _keys(config.seed)
  x = jax.ShapeDtypeStruct((config.training.batch_size,) + setup.data_shape, jnp.float32)
  with _config_field("config.training.loss_options"):
    jax.eval_shape(lambda key, x: loss_fn(key, sde, lambda y, t: -y, x), keys["train"], x)
  with _config_field("config.model"):
    jax.eval_shape(make_train_step(setup, batch_size=config.training.batch_size, train_key=keys["train"],
                                   data_key=keys["data"]), abstract_state(setup, keys["init"]))
  return setup


def _keys(seed: int) -> dict[str, jax.Array]:
  base = jax.random.key(seed)
  return {name: jax.random.fold_in(base, i) for i, name in enumerate(("init", "train", "data", "sample", "eval"))}


# --- state and step -----------------------------------------------------------------------
def init_state(setup: Setup, key: jax.Array) -> ts_lib.TrainState:
  """A fresh TrainState: network parameters from ``key`` and the optimizer's initial state."""
  x = jnp.zeros((1,) + setup.data_shape, jnp.float32)  # [1, ...]
  t = jnp.ones((1,), jnp.float32)  # [1]
  params = setup.model.init(key, x, t)["params"]
  return ts_lib.create_train_state(params, setup.tx)


def abstract_state(setup: Setup, key: jax.Array) -> ts_lib.TrainState:
  """Shapes and dtypes of ``init_state`` (nothing allocated), the restore target."""
  return jax.eval_shape(functools.partial(init_state, setup), key)


def make_train_step(setup: Setup, *, batch_size: int, train_key: jax.Array,
                    data_key: jax.Array) -> Callable[[ts_lib.TrainState], tuple[ts_lib.TrainState, dict]]:
  """The (unjitted) train step ``state -> (state, metrics)``.

  At step s the batch is ``batch_size`` exact target samples from fold_in(data_key, s)
  and the loss draws its times and noise from fold_in(train_key, s).

  Args:
    setup: components from ``build``.
    batch_size: examples per step.
    train_key: base key of the loss's randomness.
    data_key: base key of the data stream.

  Returns:
    The step function; metrics are {"loss": [], "grad_norm": []}.
  """

  def step_fn(state: ts_lib.TrainState) -> tuple[ts_lib.TrainState, dict]:
    x = setup.target.sample(jax.random.fold_in(data_key, state.step), batch_size)  # [B, D]
    key = jax.random.fold_in(train_key, state.step)

    def loss_of(params):
      return setup.loss_fn(key, setup.sde, setup.score_fn(params), x)

    loss, grads = jax.value_and_grad(loss_of)(state.params)
    new_state = ts_lib.apply_gradients(state, grads, setup.tx, ema_rate=setup.ema_rate)
    return new_state, {"loss": loss, "grad_norm": _global_norm(grads)}

  return step_fn


def _global_norm(tree: Any) -> Array:
  return jnp.sqrt(sum(jnp.sum(jnp.square(g)) for g in jax.tree.leaves(tree)))


# --- outputs ------------------------------------------------------------------------------
def _refuse_overwrite(paths: list[str], hint: str) -> None:
  existing = [p for p in paths if os.path.exists(p)]
  if existing:
    raise FileExistsError(f"Refusing to overwrite {', '.join(existing)}. {hint}")


def _json_ready(value: Any) -> Any:
  """numpy/jax values -> JSON types; NaN and ±inf become None (strict JSON)."""
  if isinstance(value, dict):
    return {k: _json_ready(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_json_ready(v) for v in value]
  if isinstance(value, (np.ndarray, jax.Array)):
    return _json_ready(np.asarray(value).tolist())
  if isinstance(value, (np.floating, float)):
    return float(value) if math.isfinite(value) else None
  if isinstance(value, np.integer):
    return int(value)
  if isinstance(value, np.bool_):
    return bool(value)
  return value


def _write_json(path: str, payload: Mapping[str, Any]) -> None:
  with open(path, "x") as f:  # "x": never overwrite
    json.dump(_json_ready(payload), f, indent=2, sort_keys=True, allow_nan=False)
    f.write("\n")


def _write_config(config: ConfigDict, workdir: str, start_step: int) -> str:
  """Writes the resolved config as ``config.json``, or, when a run resumes with a
  different config, as ``config_step{start_step}.json``.  Returns the path (None-free)."""
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


def plot_samples(path: str, x: Array, target: Any, *, title: str = "") -> None:
  """Scatter of samples over the target density exp(log p) on a grid (PNG, Agg backend).

  Args:
    path: output file; must not exist.
    x: [N, D] samples.
    target: a target with ``log_prob``, ``sample`` and ``dim`` (the density is drawn for D = 2).
    title: figure title.
  """
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  x = np.asarray(x)[:, :2]  # beyond 2-D: the first two coordinates, without the density
  ref = np.asarray(target.sample(jax.random.key(0), 4096))[:, :2]  # [4096, 2] frames the view
  lo, hi = ref.min(axis=0), ref.max(axis=0)
  centre, half = 0.5 * (lo + hi), 0.5 * float(np.max(hi - lo)) * 1.2 + 0.5

  fig, ax = plt.subplots(figsize=(6, 6), dpi=100)
  if target.dim == 2:
    g = np.linspace(-half, half, 200)
    gx, gy = np.meshgrid(centre[0] + g, centre[1] + g)
    grid = np.stack([gx.ravel(), gy.ravel()], axis=1).astype(np.float32)  # [G², 2]
    density = np.exp(np.asarray(jax.jit(target.log_prob)(jnp.asarray(grid)))).reshape(gx.shape)
    ax.contourf(gx, gy, density, levels=20, cmap="Blues")
  ax.scatter(x[:, 0], x[:, 1], s=2, c="tab:orange", alpha=0.4, linewidths=0, label=f"{len(x)} samples")
  if target.dim == 2:
    # Density contours over the samples at 1%, 10% and 50% of the peak keep both visible.
    ax.contour(gx, gy, density, levels=density.max() * np.array([0.01, 0.1, 0.5]), colors="navy",
               linewidths=0.6)
  ax.set_xlim(centre[0] - half, centre[0] + half)
  ax.set_ylim(centre[1] - half, centre[1] + half)
  ax.set_aspect("equal")
  ax.legend(loc="upper right", fontsize=8)
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  with open(path, "xb") as f:
    fig.savefig(f, format="png")
  plt.close(fig)


def evaluate_samples(key: jax.Array, x: Array, target: Any) -> dict[str, Any]:
  """Sample-quality metrics against the target.

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


def _draw(setup: Setup, params: Any, key: jax.Array, num_samples: int) -> tuple[np.ndarray, int]:
  """Samples [num_samples, ...] of the model with ``params`` and the sampler's NFE."""

  @jax.jit
  def draw(params, key):
    return sampling.sample(key, setup.sde, setup.score_fn(params), (num_samples,) + setup.data_shape,
                           setup.sampling_method, **setup.sampling_options)

  x, nfe = draw(params, key)
  return np.asarray(x), int(np.max(np.asarray(nfe)))


def _sample_and_report(setup: Setup, params: Any, *, key: jax.Array, eval_key: jax.Array, num_samples: int,
                       png: str, metrics_json: str, title: str, extra: Mapping[str, Any]) -> tuple[np.ndarray, dict]:
  t0 = time.perf_counter()
  x, nfe = _draw(setup, params, key, num_samples)
  sample_time = time.perf_counter() - t0
  metrics = {**extra, **evaluate_samples(eval_key, x, setup.target), "nfe": nfe, "sample_time_s": sample_time,
             "sampling": {"method": setup.sampling_method, **setup.sampling_options}}
  summary = f"SW2 {metrics['sliced_w2']:.3f}"
  if "coverage" in metrics:
    summary += f", coverage {metrics['coverage']:.2f}"
  plot_samples(png, x, setup.target, title=f"{title}\n{summary}, nfe {nfe}")
  _write_json(metrics_json, metrics)
  logging.info("Wrote %s and %s (%s).", png, metrics_json, summary)
  return x, metrics


# --- entry points -------------------------------------------------------------------------
@dataclasses.dataclass
class TrainResult:
  """What ``train_and_evaluate`` returns.

  Attributes:
    state: the final TrainState.
    start_step: the step training started from (0, or the restored checkpoint's step).
    metrics: the metrics written to ``metrics_path``.
    metrics_path: ``<workdir>/metrics_step{S}.json``.
    samples_path: ``<workdir>/samples_step{S}.png``.
  """

  state: ts_lib.TrainState
  start_step: int
  metrics: dict
  metrics_path: str
  samples_path: str


def train_and_evaluate(config: ConfigDict, workdir: str) -> TrainResult:
  """Trains a score model on ``config.data`` and evaluates samples of its EMA parameters.

  Resumes from the latest checkpoint in ``<workdir>/checkpoints`` when there is one.

  Args:
    config: the full config (see ``configs/toy/gmm2d.py``).
    workdir: the run's folder (created if missing).

  Returns:
    A ``TrainResult``.

  Raises:
    ConfigError (a ValueError): a bad config value (before anything compiles).
    FileExistsError: the run's outputs for ``config.training.num_steps`` already exist.
    NonFiniteLossError: the loss became NaN or infinite; the message names the step.
  """
  setup = build(config)
  tr = config.training
  num_steps = tr.num_steps
  os.makedirs(workdir, exist_ok=True)
  png = os.path.join(workdir, f"samples_step{num_steps}.png")
  metrics_json = os.path.join(workdir, f"metrics_step{num_steps}.json")
  _refuse_overwrite([png, metrics_json], (
      f"The run in {workdir} has already reached step {num_steps}: raise --config.training.num_steps to "
      f"train on, run --mode=sample to draw new samples, or use another --workdir."))

  keys = _keys(config.seed)
  ckpt = checkpointing.Checkpointer(workdir, max_to_keep=tr.max_to_keep)
  try:
    latest = ckpt.latest_step()
    if latest is not None:
      state = ckpt.restore(abstract_state(setup, keys["init"]))
      logging.info("Resuming from the checkpoint of step %d in %s.", latest, ckpt.directory)
    else:
      state = jax.jit(functools.partial(init_state, setup))(keys["init"])
    start_step = int(state.step)
    if start_step > num_steps:
      raise ConfigError(f"config.training.num_steps: {num_steps} is below the step of the latest checkpoint "
                       f"({start_step}) in {ckpt.directory}; raise it or use another --workdir.")
    _write_config(config, workdir, start_step)

    step_fn = jax.jit(make_train_step(setup, batch_size=tr.batch_size, train_key=keys["train"],
                                      data_key=keys["data"]), donate_argnums=0)
    t0 = time.perf_counter()
    state, last_loss = _train_loop(step_fn, state, ckpt, start_step=start_step, num_steps=num_steps,
                                   snapshot_freq=tr.snapshot_freq, log_freq=tr.log_freq)
    ckpt.save(num_steps, state)
    train_time = time.perf_counter() - t0
  finally:
    ckpt.close()

  params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(state.params))
  extra = {"step": num_steps, "start_step": start_step, "train_time_s": train_time,
           "steps_per_s": (num_steps - start_step) / train_time if num_steps > start_step else None,
           "final_loss": last_loss, "num_params": params}
  _, metrics = _sample_and_report(
      setup, state.ema_params, key=jax.random.fold_in(keys["sample"], num_steps),
      eval_key=jax.random.fold_in(keys["eval"], num_steps), num_samples=config.sampling.num_samples,
      png=png, metrics_json=metrics_json, title=f"{config.data.name}, EMA model at step {num_steps}", extra=extra)
  return TrainResult(state=state, start_step=start_step, metrics=metrics, metrics_path=metrics_json,
                     samples_path=png)


def _train_loop(step_fn: Callable, state: ts_lib.TrainState, ckpt: checkpointing.Checkpointer, *,
                start_step: int, num_steps: int, snapshot_freq: int,
                log_freq: int) -> tuple[ts_lib.TrainState, Optional[float]]:
  """Runs steps start_step..num_steps−1 with a progress bar and periodic checkpoints.

  The loss of step s is read back after step s + 1 has been dispatched, so the host never
  stalls the device; a non-finite loss stops the loop before its state is checkpointed.
  """
  pending: Optional[tuple[int, Array]] = None
  window: list[float] = []
  last_loss = None

  def check(item: tuple[int, Array]) -> float:
    step, loss = item
    value = float(loss)
    if not math.isfinite(value):
      raise NonFiniteLossError(
          f"Non-finite loss ({value}) at step {step}; stopping. Lower config.optim.lr, enable "
          f"config.optim.grad_clip, or check the data and config.model.")
    return value

  with tqdm.tqdm(total=num_steps, initial=start_step, desc="train", unit="step", dynamic_ncols=True,
                 smoothing=0.1) as bar:
    for step in range(start_step, num_steps):
      state, metrics = step_fn(state)
      if pending is not None:
        window.append(check(pending))
      pending = (step, metrics["loss"])
      done = step + 1
      if done % snapshot_freq == 0 and done < num_steps:
        window.append(check(pending))
        pending = None
        ckpt.save(done, state)
      if done % log_freq == 0 and window:
        last_loss = float(np.mean(window))
        bar.set_postfix(loss=f"{last_loss:.4f}", refresh=False)
        window = []
      bar.update(1)
    if pending is not None:
      window.append(check(pending))
    if window:
      last_loss = float(np.mean(window))
      bar.set_postfix(loss=f"{last_loss:.4f}")
  return state, last_loss


def _next_sample_dir(workdir: str) -> tuple[int, str]:
  """Creates and returns ``<workdir>/samples/<k>`` for the next free k."""
  root = os.path.join(workdir, "samples")
  os.makedirs(root, exist_ok=True)
  while True:
    taken = [int(n) for n in os.listdir(root) if n.isdigit()]
    k = max(taken) + 1 if taken else 0
    path = os.path.join(root, str(k))
    try:
      os.mkdir(path)
      return k, path
    except FileExistsError:  # another process took k; try the next one
      continue


def sample(config: ConfigDict, workdir: str) -> str:
  """Draws ``config.sampling.num_samples`` samples from the EMA parameters of the latest
  checkpoint in ``workdir`` and writes samples.png, metrics.json and samples.npz into a new
  folder ``<workdir>/samples/<k>``.

  Args:
    config: the full config; its model must match the checkpoint's.
    workdir: a folder that ``train_and_evaluate`` has written checkpoints to.

  Returns:
    The new folder's path.

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``.
    ConfigError (a ValueError): a bad config value.
  """
  setup = build(config)
  directory = checkpointing.checkpoint_dir(workdir)
  latest = None
  if os.path.isdir(directory):
    with checkpointing.Checkpointer(workdir, create=False, async_save=False) as ckpt:
      latest = ckpt.latest_step()
      if latest is not None:
        keys = _keys(config.seed)
        state = ckpt.restore(abstract_state(setup, keys["init"]), step=latest)
  if latest is None:
    raise FileNotFoundError(f"No checkpoint found in {directory}: run --mode=train with "
                            f"--workdir={workdir} first.")
  k, out = _next_sample_dir(workdir)
  keys = _keys(config.seed)
  key = jax.random.fold_in(jax.random.fold_in(keys["sample"], latest), k + 1)
  x, _ = _sample_and_report(
      setup, state.ema_params, key=key, eval_key=jax.random.fold_in(keys["eval"], k + 1),
      num_samples=config.sampling.num_samples, png=os.path.join(out, "samples.png"),
      metrics_json=os.path.join(out, "metrics.json"),
      title=f"{config.data.name}, EMA model at step {latest}, draw {k}",
      extra={"step": latest, "draw": k, "workdir": os.path.abspath(workdir)})
  with open(os.path.join(out, "samples.npz"), "xb") as f:
    np.savez(f, samples=x, step=latest)
  return out
