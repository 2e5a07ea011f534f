"""The train step of every training run: ``make_train_step(setup, train_key, objective)``, pure
and jitted by the caller over the device mesh, with gradient accumulation (``microbatch_rows``)
and the TrainState's shardings (replicated, or FSDP with ``config.training.fsdp``).

What the step minimises is an ``Objective``: score matching with the setup's loss
(``SCORE_MATCHING``, --mode=train) or consistency distillation (``jobs.distill``, --mode=distill),
which also reads traced auxiliaries (the teacher's parameters) and updates the target network.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
import optax

from score_jax import experiment
from score_jax import sharding as sharding_lib
from score_jax import train_state as ts_lib

Array = Any


# --- what a step minimises ------------------------------------------------------------------
LossOf = Callable[..., Array]


def _score_matching_loss(setup: experiment.Setup, params: Any, *, state: ts_lib.TrainState, aux: Any,
                         key: jax.Array, x: Array, labels: Optional[Array], dropout_key: jax.Array,
                         rows: Optional[Callable[[Array], Array]]) -> Array:
  del state, aux
  score_fn = setup.score_fn(params, labels, train=True, dropout_key=dropout_key)
  if rows is None:
    return setup.loss_fn(key, setup.sde, score_fn, x)
  return setup.loss_fn(key, setup.sde, score_fn, x, rows=rows)


@dataclasses.dataclass(frozen=True)
class Objective:
  """What a train step minimises, and what it updates beside the optimizer and the averages.

  Attributes:
    loss: ``loss(setup, params, *, state, aux, key, x, labels, dropout_key, rows) -> scalar``: the
      loss of the network ``params`` (differentiated) on data x [B, ...] (labels [B] or None), with
      the state before the update and the step's auxiliaries ``aux``; ``rows`` as in ``losses``.
    after_update: ``(new_state, old_state, aux) -> state``, e.g. the target network's EMA; None: nothing.
    name: what the metrics and logs call it.
  """

  loss: LossOf = _score_matching_loss
  after_update: Optional[Callable[[Any, Any, Any], Any]] = None
  name: str = "score matching"


SCORE_MATCHING = Objective()


# --- the step -----------------------------------------------------------------------------
def make_train_step(setup: experiment.Setup, *, train_key: jax.Array,
                    objective: Objective = SCORE_MATCHING) -> Callable[..., tuple[ts_lib.TrainState, dict]]:
  """The (unjitted) train step ``(state, batch, aux=None) -> (state, metrics)``.

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
    objective: what is minimised (default: the setup's score-matching loss); ``aux``, the step's
      third argument, is handed to it (traced: e.g. a teacher's parameters).

  Returns:
    The step function; batch is {"image": [B, ...], "label": [B] (images only)}; metrics
    are scalars {"loss", "grad_norm", "lr", "skipped"}.
  """

  def step_fn(state: ts_lib.TrainState, batch: dict, aux: Any = None) -> tuple[ts_lib.TrainState, dict]:
    key = jax.random.fold_in(train_key, state.step)
    dropout_key, label_key = jax.random.fold_in(key, 1), jax.random.fold_in(key, 2)
    x = batch["image"]
    labels = batch.get("label") if setup.num_classes else None
    if labels is not None and setup.label_dropout > 0:
      # Classifier-free guidance (Ho & Salimans 2022): train with the null label a fraction of the time.
      drop = jax.random.bernoulli(label_key, setup.label_dropout, labels.shape)
      labels = jnp.where(drop, setup.num_classes, labels)

    def loss_of(params):
      return objective.loss(setup, params, state=state, aux=aux, key=key, x=x, labels=labels,
                            dropout_key=dropout_key, rows=None)

    def micro_step(total, i):
      rows = functools.partial(microbatch_rows, index=i, count=setup.grad_accum, groups=setup.mesh.size)

      def micro_loss(params):
        return objective.loss(setup, params, state=state, aux=aux, key=key, x=x,
                              labels=None if labels is None else rows(labels),
                              dropout_key=jax.random.fold_in(dropout_key, i), rows=rows)

      return jax.tree.map(jnp.add, total, jax.value_and_grad(micro_loss)(state.params)), None

    if setup.grad_accum == 1:
      loss, grads = jax.value_and_grad(loss_of)(state.params)
    else:
      # Gradient accumulation: k micro-batches in one scan, their losses and gradients summed.
      zeros = (jnp.zeros((), jnp.result_type(x, jnp.float32)), jax.tree.map(jnp.zeros_like, state.params))
      (loss, grads), _ = jax.lax.scan(micro_step, zeros, jnp.arange(setup.grad_accum))
    grad_norm = optax.global_norm(grads)
    new_state = ts_lib.apply_gradients(state, grads, setup.tx, ema=setup.ema)
    if objective.after_update is not None:
      new_state = objective.after_update(new_state, state, aux)
    skipped = jnp.zeros((), jnp.bool_)
    if setup.skip_nonfinite:
      skipped = ~(jnp.isfinite(loss) & jnp.isfinite(grad_norm))
      kept = jax.tree.map(lambda new, old: jnp.where(skipped, old, new), new_state, state)
      new_state = kept.replace(step=state.step + 1)
    metrics = {"loss": loss, "grad_norm": grad_norm, "lr": setup.lr_schedule(state.step), "skipped": skipped}
    return new_state, metrics

  return step_fn


def state_shardings(opts: experiment.TrainOptions, setup: experiment.Setup, state: Any) -> Any:
  """The shardings of the TrainState ``state`` (arrays or ShapeDtypeStructs) on ``setup.mesh``.

  Replicated by default; with ``config.training.fsdp`` parameters, EMA and optimizer state are
  split over the "data" axis by ``sharding.fsdp_shardings`` (arrays under
  ``config.training.fsdp_min_size`` elements stay replicated).  A checkpoint restored with
  these as its target is resharded by Orbax, whatever device count wrote it.
  """
  if not opts.fsdp:
    return jax.tree.map(lambda _: sharding_lib.replicated(setup.mesh), state)
  return sharding_lib.fsdp_shardings(state, setup.mesh, min_size=opts.fsdp_min_size)


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

