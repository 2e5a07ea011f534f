"""Train state and optimizer: everything that changes during training, nothing else.

The state holds arrays only — no RNG, no learning rate, no config.  Learning-rate
schedule, warmup and gradient clipping live in the optax chain; the key of step s is
``fold_in(base_key, s)`` (computed by the train step from ``state.step``).
"""

from __future__ import annotations

from typing import Any, Mapping

import flax.struct
import jax
import jax.numpy as jnp
import optax

Array = Any
Params = Any

OPTIMIZERS = ("adam",)


@flax.struct.dataclass
class TrainState:
  """Parameters, their exponential moving average, the optimizer state and the step.

  Attributes:
    params: network parameters (the ``"params"`` collection of a Flax module).
    ema_params: EMA of ``params``; what sampling and evaluation use.
    opt_state: state of the optax chain from ``create_optimizer``.
    step: [] int32, number of optimizer updates applied so far.
  """

  params: Params
  ema_params: Params
  opt_state: optax.OptState
  step: Array


def create_learning_rate_schedule(optim: Mapping[str, Any]) -> optax.Schedule:
  """Linear warmup from 0 over ``optim.warmup`` steps into the constant ``optim.lr``.

  Args:
    optim: mapping with ``lr`` (> 0) and ``warmup`` (≥ 0 steps).

  Returns:
    An optax schedule step -> learning rate.
  """
  lr, warmup = float(optim["lr"]), int(optim["warmup"])
  if warmup <= 0:
    return optax.constant_schedule(lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, lr, transition_steps=warmup), optax.constant_schedule(lr)],
      boundaries=[warmup],
  )


def create_optimizer(optim: Mapping[str, Any]) -> optax.GradientTransformation:
  """The optax chain clip_by_global_norm(grad_clip) → Adam(b1, b2, eps) at the warmup schedule.

  Args:
    optim: the ``config.optim`` section (any mapping) with ``optimizer`` ("adam"), ``lr``,
      ``warmup``, ``grad_clip`` (≤ 0 disables clipping), ``b1``, ``b2``, ``eps``.

  Returns:
    The gradient transformation.

  Raises:
    ValueError: unknown optimizer.
  """
  name = optim.get("optimizer", "adam")
  if name not in OPTIMIZERS:
    raise ValueError(f"config.optim.optimizer={name!r} is unknown; choose one of {list(OPTIMIZERS)}.")
  grad_clip = optim.get("grad_clip", -1.0)
  clip = optax.clip_by_global_norm(float(grad_clip)) if grad_clip and grad_clip > 0 else optax.identity()
  adam = optax.adam(
      create_learning_rate_schedule(optim),
      b1=float(optim.get("b1", 0.9)),
      b2=float(optim.get("b2", 0.999)),
      eps=float(optim.get("eps", 1e-8)),
  )
  return optax.chain(clip, adam)


def create_train_state(params: Params, tx: optax.GradientTransformation) -> TrainState:
  """A fresh state at step 0 whose EMA starts at ``params``."""
  return TrainState(
      params=params,
      ema_params=jax.tree.map(jnp.copy, params),
      opt_state=tx.init(params),
      step=jnp.zeros((), jnp.int32),
  )


def ema_update(ema_params: Params, params: Params, rate: float) -> Params:
  """Polyak averaging ema ← rate · ema + (1 − rate) · params (score_sde's ``ema_rate``)."""
  return jax.tree.map(lambda e, p: rate * e + (1.0 - rate) * p, ema_params, params)


def apply_gradients(state: TrainState, grads: Params, tx: optax.GradientTransformation, *,
                    ema_rate: float) -> TrainState:
  """One optimizer update plus the EMA update; increments ``step``.

  Args:
    state: current state.
    grads: gradients, same tree as ``state.params``.
    tx: the chain ``state.opt_state`` belongs to.
    ema_rate: EMA decay in [0, 1).

  Returns:
    The next state.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  return state.replace(
      params=params,
      ema_params=ema_update(state.ema_params, params, ema_rate),
      opt_state=opt_state,
      step=state.step + 1,
  )
