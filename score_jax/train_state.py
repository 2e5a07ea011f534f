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

from score_jax import ema as ema_lib

Array = Any
Params = Any

OPTIMIZERS = ("adam",)


@flax.struct.dataclass
class TrainState:
  """Parameters, their moving averages, the optimizer state and the step.

  Attributes:
    params: network parameters (the ``"params"`` collection of a Flax module).
    ema_params: the average that sampling and evaluation use: the classic EMA of ``params``,
      or with the power EMA (``ema.EMA(kind="power")``) the profile of the first tracked σ_rel.
    opt_state: state of the optax chain from ``create_optimizer``.
    step: [] int32, number of optimizer updates applied so far.
  """

  params: Params
  ema_params: Params
  opt_state: optax.OptState
  step: Array

  @property
  def averages(self) -> tuple[Params, ...]:
    """Every tracked average, ``ema_params`` first (one per σ_rel under the power EMA)."""
    return (self.ema_params,)

  def with_averages(self, averages: tuple[Params, ...]) -> "TrainState":
    return self.replace(ema_params=averages[0])


@flax.struct.dataclass
class MultiEMATrainState(TrainState):
  """A TrainState tracking several averages (the power EMA at more than one σ_rel).

  A subclass, so the checkpoints of a one-average state keep exactly the tree they always had.

  Attributes:
    extra_ema: the profiles of the second, third, ... σ_rel, in order.
  """

  extra_ema: tuple[Params, ...] = ()

  @property
  def averages(self) -> tuple[Params, ...]:
    return (self.ema_params,) + tuple(self.extra_ema)

  def with_averages(self, averages: tuple[Params, ...]) -> "MultiEMATrainState":
    return self.replace(ema_params=averages[0], extra_ema=tuple(averages[1:]))


@flax.struct.dataclass
class DistillState(MultiEMATrainState):
  """The state of consistency distillation (``--mode=distill``): a train state plus the target
  network θ⁻ (Song et al. 2023, Algorithm 2), moved towards ``params`` by ``update_target``.

  Attributes:
    target_params: θ⁻, the network whose outputs are the loss's (stop-gradiented) targets.
  """

  target_params: Params = None


def update_target(state: DistillState, rate: Array) -> DistillState:
  """θ⁻ ← μ θ⁻ + (1 − μ) θ with μ = ``rate`` (μ = 0: θ⁻ = θ)."""
  target = jax.tree.map(lambda old, new: rate * old + (1.0 - rate) * new, state.target_params, state.params)
  return state.replace(target_params=target)


def create_distill_state(params: Params, tx: optax.GradientTransformation, ema: ema_lib.EMA) -> DistillState:
  """A fresh distillation state at step 0: averages and target start at ``params``."""
  copy = lambda: jax.tree.map(jnp.copy, params)
  return DistillState(params=params, ema_params=copy(), opt_state=tx.init(params), step=jnp.zeros((), jnp.int32),
                      extra_ema=tuple(copy() for _ in range(ema.num_averages - 1)), target_params=copy())


LR_DECAYS = ("constant", "cosine", "inverse_sqrt")


def create_learning_rate_schedule(optim: Mapping[str, Any]) -> optax.Schedule:
  """Linear warmup from 0 over ``optim.warmup`` steps, then ``optim.decay`` of the peak ``optim.lr``.

  * ``"constant"`` (score_sde, and the default): ``lr`` from the end of the warmup on;
  * ``"cosine"``: a half cosine from ``lr`` at the end of the warmup to 0 at step
    ``warmup + decay_steps``, 0 after it (``optax.warmup_cosine_decay_schedule``);
  * ``"inverse_sqrt"``: EDM2's schedule (Karras et al., "Analyzing and Improving the Training
    Dynamics of Diffusion Models", CVPR 2024, sec. 3 / eq. 16 of its appendix):
    lr · min(t / warmup, 1) / √max(t / decay_steps, 1) — the warmup multiplies, and the rate
    falls as 1/√t once t passes ``decay_steps`` (EDM2's t_ref).

  Args:
    optim: mapping with ``lr`` (> 0), ``warmup`` (≥ 0 steps) and optionally ``decay`` (default
      "constant") with ``decay_steps`` (≥ 1) for the other two.

  Returns:
    An optax schedule step -> learning rate.

  Raises:
    ValueError: an unknown ``decay`` or a ``decay_steps`` below 1 where it is read.
  """
  lr, warmup = float(optim["lr"]), int(optim["warmup"])
  decay = optim.get("decay", "constant")
  if decay not in LR_DECAYS:
    raise ValueError(f"config.optim.decay={decay!r} is unknown; choose one of {list(LR_DECAYS)}.")
  if decay == "constant":
    if warmup <= 0:
      return optax.constant_schedule(lr)
    return optax.join_schedules(
        [optax.linear_schedule(0.0, lr, transition_steps=warmup), optax.constant_schedule(lr)],
        boundaries=[warmup],
    )
  decay_steps = optim.get("decay_steps", 0)
  if not isinstance(decay_steps, int) or decay_steps < 1:
    raise ValueError(f"config.optim.decay_steps={decay_steps!r}: decay={decay!r} needs an integer >= 1 "
                     "(the cosine's length after the warmup, or inverse_sqrt's reference step t_ref).")
  if decay == "cosine":
    return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps=warmup, decay_steps=warmup + decay_steps,
                                              end_value=0.0)

  def inverse_sqrt(step):
    t = jnp.asarray(step, jnp.float32)
    ramp = jnp.minimum(t / warmup, 1.0) if warmup > 0 else 1.0
    return lr * ramp / jnp.sqrt(jnp.maximum(t / decay_steps, 1.0))

  return inverse_sqrt


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


def create_train_state(params: Params, tx: optax.GradientTransformation,
                       ema: ema_lib.EMA = ema_lib.EMA()) -> TrainState:
  """A fresh state at step 0 whose averages (``ema.num_averages`` of them) start at ``params``."""
  state = TrainState(params=params, ema_params=jax.tree.map(jnp.copy, params), opt_state=tx.init(params),
                     step=jnp.zeros((), jnp.int32))
  if ema.num_averages == 1:
    return state
  return MultiEMATrainState(params=state.params, ema_params=state.ema_params, opt_state=state.opt_state,
                            step=state.step,
                            extra_ema=tuple(jax.tree.map(jnp.copy, params) for _ in range(ema.num_averages - 1)))


def apply_gradients(state: TrainState, grads: Params, tx: optax.GradientTransformation, *,
                    ema: ema_lib.EMA) -> TrainState:
  """One optimizer update plus the update of every tracked average; increments ``step``.

  Args:
    state: current state.
    grads: gradients, same tree as ``state.params``.
    tx: the chain ``state.opt_state`` belongs to.
    ema: the averages ``state`` tracks (``ema.EMA``: classic, ramped up, or power-function);
      the update is number ``state.step + 1``.

  Returns:
    The next state.
  """
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  if len(state.averages) != ema.num_averages:
    raise ValueError(f"the state tracks {len(state.averages)} average(s) but the EMA {ema} needs {ema.num_averages}.")
  dtype = jnp.result_type(*jax.tree.leaves(params)[:1]) if jax.tree.leaves(params) else jnp.float32
  averages = tuple(ema_lib.update(avg, params, beta, one_minus)
                   for avg, (beta, one_minus) in zip(state.averages, ema.betas(state.step + 1, dtype)))
  return state.replace(params=params, opt_state=opt_state, step=state.step + 1).with_averages(averages)
