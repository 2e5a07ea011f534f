"""Mixed precision (config.model.dtype), rematerialisation (config.training.remat) and gradient
accumulation (config.training.grad_accum) on a tiny NCSN++ over the embedded 8×8 digits.

The train step under test is ``jobs.train_step.make_train_step``; its optimizer is the config's chain
preceded by a pass-through transformation that stores the gradient in the optimizer state,
so each step's exact gradient can be read back and compared.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from configs.ve import digits
from score_jax import experiment
from score_jax import sampling
from score_jax.jobs import train_step
from score_jax.models import NCSNpp

# XLA:CPU options that cut compile time; the checks are about values, not speed.
FAST_COMPILE = {"xla_backend_optimization_level": 0, "xla_cpu_use_fusion_emitters": False}
TINY = dict(nf=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, init_scale=1.0,
            progressive="output_skip", progressive_input="input_skip")
BATCH = 8

# The float32 run of 50 steps (and the initial state) are cached in-process and shared by the
# remat / grad_accum and bfloat16 tests: keep them on one xdist worker.
pytestmark = pytest.mark.xdist_group("precision")


def _config(**overrides) -> ml_collections.ConfigDict:
  """digits:smoke with a tiny NCSN++ (FIR resampling, attention, both pyramids); ``section__field=value``."""
  config = digits.get_config("smoke")
  config.model.name, config.model.conditioning = "ncsnpp", "sigma"
  config.model.network = ml_collections.ConfigDict(TINY)
  config.training.batch_size = BATCH
  config.optim.warmup = 0  # a first step that moves the parameters
  for name, value in overrides.items():
    section, field = name.split("__")
    config[section][field] = value
  return config


def _capture_grads() -> optax.GradientTransformation:
  """Passes the gradient on unchanged and keeps it as its state."""
  return optax.GradientTransformation(lambda params: jax.tree.map(jnp.zeros_like, params),
                                      lambda grads, state, params=None: (grads, grads))


def _setup(overrides: tuple) -> experiment.Setup:
  setup = experiment.build(_config(**dict(overrides)))
  return dataclasses.replace(setup, tx=optax.chain(_capture_grads(), setup.tx))


@functools.lru_cache(maxsize=None)
def _initial_state():
  """One fresh state for every variant: the parameter tree is the same with remat, grad_accum and bfloat16."""
  setup = _setup(())
  init = jax.jit(functools.partial(experiment.init_state, setup))
  return init.lower(experiment.keys(setup.seed)["init"]).compile(FAST_COMPILE)(experiment.keys(setup.seed)["init"])


@functools.lru_cache(maxsize=None)
def _run(overrides: tuple, num_steps: int):
  """(setup, states after each step, metrics of each step) for ``num_steps`` steps on fixed digit batches."""
  setup = _setup(overrides)
  keys = experiment.keys(setup.seed)
  state = _initial_state()
  batches = [setup.data.train.batch_at(s, global_batch_size=BATCH, seed=setup.seed) for s in range(num_steps)]
  batches = [{"image": jnp.asarray(b["image"]), "label": jnp.asarray(b["label"])} for b in batches]
  step = jax.jit(train_step.make_train_step(setup, train_key=keys["train"])).lower(state, batches[0])
  step = step.compile(FAST_COMPILE)
  states, metrics = [], []
  for batch in batches:
    state, m = step(state, batch)
    states.append(state)
    metrics.append({k: float(v) for k, v in m.items()})
  return setup, states, metrics


def _grads(state):
  return state.opt_state[0]


def test_remat_and_grad_accum_step_gives_the_plain_full_batch_update():
  """One step with remat and 4 micro-batches of 2 against the plain step (one compile for both).

  In float64 the two gradients agree to 2e-15 of the largest entry (measured); in float32 the
  micro-batch sums run in another order, ≈ 2e-5 of it, hence rtol 1e-4 — while a micro-batch
  dropped or weighted wrongly is off by ≥ 10 %.
  """
  rtol = 1e-4
  _, plain_states, plain_metrics = _run((), 50)
  plain, m_plain = plain_states[0], plain_metrics[0]
  _, (other,), (m_other,) = _run((("training__remat", True), ("training__grad_accum", 4)), 1)
  scale = max(float(np.max(np.abs(g))) for g in jax.tree.leaves(_grads(plain)))
  assert scale > 1e-2  # a real gradient, not one of zeros
  diffs = jax.tree.leaves(jax.tree.map(lambda a, b: float(np.max(np.abs(np.asarray(a) - np.asarray(b)))),
                                     _grads(other), _grads(plain)))
  assert max(diffs) <= rtol * scale, (max(diffs), scale)
  assert m_other["loss"] == pytest.approx(m_plain["loss"], rel=rtol)
  assert m_other["grad_norm"] == pytest.approx(m_plain["grad_norm"], rel=rtol)
  # The resulting state: same step, parameters and EMA.  Adam's first step (warmup 0) moves
  # each entry by lr·g/(|g| + ε), ±lr = ±2e-3 for most.  Where |g| is within a few hundred ε
  # that map amplifies float32 rounding of g into a visible share of lr, so those entries are
  # left out; the rest must agree to 5 % of lr.
  lr = _config().optim.lr
  assert int(other.step) == int(plain.step) == 1
  moved = max(float(np.max(np.abs(np.asarray(a) - np.asarray(b))))
              for a, b in zip(jax.tree.leaves(plain.params), jax.tree.leaves(_initial_state().params)))
  assert moved == pytest.approx(lr, rel=1e-3)
  eps = _config().optim.eps
  grads = jax.tree.leaves(_grads(plain))
  compared = 0
  for a, b, g in zip(jax.tree.leaves((other.params, other.ema_params)),
                     jax.tree.leaves((plain.params, plain.ema_params)), grads + grads):
    live = np.abs(np.asarray(g)) > 1e3 * eps
    compared += int(live.sum())
    np.testing.assert_allclose(np.asarray(a)[live], np.asarray(b)[live], rtol=0, atol=0.05 * lr)
  assert compared > 0.9 * 2 * sum(g.size for g in grads)  # nearly every entry is compared


def _saved_for_backward(overrides: tuple) -> int:
  """Bytes of the jax.vjp residuals of the training loss on one batch (traced, nothing compiled)."""
  setup = _setup(overrides)
  params = jax.eval_shape(lambda key: experiment.init_params(setup, key), jax.random.key(0))
  x = jax.ShapeDtypeStruct((BATCH,) + tuple(setup.data_shape), jnp.float32)

  def residuals(params, x):
    key = jax.random.key(1)
    loss = lambda p: setup.loss_fn(key, setup.sde, setup.score_fn(p, None, train=True, dropout_key=key), x)
    return jax.vjp(loss, params)[1]

  return sum(a.size * a.dtype.itemsize for a in jax.tree.leaves(jax.eval_shape(residuals, params, x)))


def test_remat_keeps_less_for_the_backward_pass():
  """What benchmarks/memory.py --residuals measures at 512 px, on the tiny NCSN++: rematerialised
  blocks keep only their inputs for the backward pass (XLA:CPU's buffer assignment does not
  show this saving; see BENCHMARKS.md)."""
  plain, remat = _saved_for_backward(()), _saved_for_backward((("training__remat", True),))
  assert remat < 0.6 * plain, (remat, plain)


def test_microbatch_rows_partition_every_devices_share():
  rows = np.arange(12)
  parts = [np.asarray(train_step.microbatch_rows(jnp.asarray(rows), index=i, count=3, groups=2)) for i in range(3)]
  # Device 0 holds rows 0-5, device 1 rows 6-11; micro-batch i takes the i-th pair of each.
  np.testing.assert_array_equal(parts[1], [2, 3, 8, 9])
  np.testing.assert_array_equal(np.sort(np.concatenate(parts)), rows)


def test_bfloat16_keeps_parameters_optimizer_state_and_ema_float32():
  _, states, _ = _run((("model__dtype", "bfloat16"),), 50)
  state = states[-1]
  for name, tree in (("params", state.params), ("opt_state", state.opt_state), ("ema_params", state.ema_params)):
    dtypes = {leaf.dtype for leaf in jax.tree.leaves(tree)}
    assert dtypes <= {jnp.dtype(jnp.float32), jnp.dtype(jnp.int32)}, (name, dtypes)
  assert {leaf.dtype for leaf in jax.tree.leaves(state.params)} == {jnp.dtype(jnp.float32)}


def test_bfloat16_tracks_the_float32_loss_over_50_steps():
  # Both runs see the same batches, times and noise, so their losses compare step by step.
  # bfloat16 keeps 8 significant bits (relative rounding 2^-9 ≈ 0.2 % per operation).
  # Measured on this network: 0.27 % at worst over the 50 steps (median 0.09 %), 0.03 % on
  # the mean of the last 10.  The bounds, 2 % per step and 0.5 % on that mean, leave room for
  # other CPUs and XLA versions; a network left in float32 would pass, which the jaxpr test
  # below rules out, and one computing in float16-like precision or with a float16 softmax fails.
  _, _, f32 = _run((), 50)
  _, _, bf16 = _run((("model__dtype", "bfloat16"),), 50)
  a = np.array([m["loss"] for m in f32])
  b = np.array([m["loss"] for m in bf16])
  assert np.all(np.isfinite(b))
  assert a[-10:].mean() < 0.7 * a[:5].mean()  # training moved the loss: the comparison is not of two flat lines
  assert np.max(np.abs(b - a) / a) < 0.02, np.abs(b - a) / a
  assert abs(b[-10:].mean() / a[-10:].mean() - 1) < 0.005


def test_bfloat16_network_computes_in_bfloat16_with_float32_softmax_and_output():
  model = NCSNpp(**TINY, image_size=8, num_channels=1, dtype=jnp.bfloat16)
  x, sigma = jnp.ones((2, 8, 8, 1)), jnp.ones((2,))
  params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, sigma))["params"]
  jaxpr = str(jax.make_jaxpr(lambda p: model.apply({"params": p}, x, sigma))(params))
  convs = [line for line in jaxpr.splitlines() if "= conv_general_dilated[" in line]
  assert convs and all(":bf16[" in line for line in convs), convs
  exps = [line for line in jaxpr.splitlines() if "= exp " in line]  # the softmax's (SiLU uses logistic)
  assert exps and all(":f32[" in line for line in exps), exps
  assert jax.eval_shape(lambda p: model.apply({"params": p}, x, sigma), params).dtype == jnp.float32


def test_sampling_a_bfloat16_model_gives_float32_samples():
  setup, states, _ = _run((("model__dtype", "bfloat16"),), 50)
  score_fn = setup.score_fn(states[-1].ema_params)
  assert jax.eval_shape(score_fn, jnp.ones((2, 8, 8, 1)), jnp.full((2,), 0.5)).dtype == jnp.float32
  key = jax.random.key(3)
  draw = sampling.lower(key, setup.sde, score_fn, (4, 8, 8, 1), setup.sampling_method, **setup.sampling_options)
  x, nfe = draw.compile(FAST_COMPILE)(key, None)
  assert x.dtype == jnp.float32 and x.shape == (4, 8, 8, 1) and bool(jnp.all(jnp.isfinite(x))) and int(nfe) > 0


@pytest.mark.parametrize("overrides, field", [
    (dict(model__dtype="float16"), "config.model.dtype"),
    (dict(training__grad_accum=3), "config.training.grad_accum"),  # 8 rows are not 3 micro-batches
    (dict(training__grad_accum=0), "config.training.grad_accum"),
])
def test_bad_precision_and_memory_fields_name_the_field(overrides, field):
  with pytest.raises(experiment.ConfigError, match=field.replace(".", r"\.")):
    experiment.build(_config(**overrides))


def test_bfloat16_on_a_network_without_a_dtype_is_refused():
  from configs.toy import gmm2d  # pylint: disable=g-import-not-at-top
  config = gmm2d.get_config("smoke")
  config.model.dtype = "bfloat16"
  with pytest.raises(experiment.ConfigError, match=r"config\.model\.dtype.*'mlp'"):
    experiment.build(config)
