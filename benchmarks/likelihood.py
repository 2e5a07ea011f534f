"""Bits/dim on the device (one compiled diffrax solve per batch) against score_sde's way (scipy
``solve_ivp`` RK45 on the host, one jitted device call and a copy back to numpy per ODE
function evaluation), with the same score network, divergence estimator and tolerances.

The model is ``score_jax.models.MLPScore`` on the 8×8 digits (17 levels, centred data
range (−1, 1), VP SDE), trained for ``--train_steps`` steps of denoising score matching
first (0 = untrained: fine for timing, but the bits/dim mean nothing then).  Both methods
use one Rademacher probe per example drawn from fold_in(key, i) and the same rtol/atol;
the host solve controls the RMS error of the whole flattened batch (score_sde), the device
solve each example's own (see ``score_jax.likelihood``), so their NFE can differ.

    python benchmarks/likelihood.py --quick            # < 1 min on 2 CPU cores
    python benchmarks/likelihood.py --batch_sizes=1,16,64 --train_steps=2000 --repeats=3

Prints one table row per (method, batch): seconds per example (median over repeats, after
a warm-up call that compiles), NFE, mean bits/dim, and the host/device time ratio.
"""

import argparse
import math
import os
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
from scipy import integrate

from score_jax import likelihood, losses
from score_jax import sde as sde_lib
from score_jax.data import embedded
from score_jax.models import MLPScore
from score_jax.score_fn import get_score_fn

LEVELS_RANGE = (-1.0, 1.0)


def parse_args() -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--batch_sizes", default="1,16,64", help="Comma-separated batch sizes.")
  p.add_argument("--hidden", type=int, default=256, help="MLPScore width.")
  p.add_argument("--num_layers", type=int, default=3, help="MLPScore residual blocks.")
  p.add_argument("--train_steps", type=int, default=1000, help="DSM training steps first (0: untrained).")
  p.add_argument("--rtol", type=float, default=1e-5)
  p.add_argument("--atol", type=float, default=1e-5)
  p.add_argument("--solver", default="dopri5", choices=likelihood.SOLVERS,
                 help="Device solver (dopri5 is RK45's tableau).")
  p.add_argument("--repeats", type=int, default=3, help="Timed runs per row; the median is shown.")
  p.add_argument("--quick", action="store_true", help="Small sizes: hidden 128, 300 steps, batches 1,8, 1 repeat.")
  args = p.parse_args()
  if args.quick:
    args.batch_sizes, args.hidden, args.num_layers, args.train_steps, args.repeats = "1,8", 128, 2, 300, 1
  args.batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
  return args


def train(sde: sde_lib.SDE, model: MLPScore, steps: int, key: jax.Array):
  """Parameters after ``steps`` Adam steps of DSM on dequantized training digits."""
  data = embedded.get_dataset("digits", split="train", uniform_dequantization=True, data_range=LEVELS_RANGE)
  params = model.init(key, jnp.zeros((1, 8, 8, 1)), jnp.zeros((1,)))
  opt = optax.adam(2e-3)
  opt_state = opt.init(params)

  @jax.jit
  def step(params, opt_state, x, k):
    loss_fn = lambda p: losses.dsm_loss(k, sde, get_score_fn(sde, model.apply, p), x)
    loss, grads = jax.value_and_grad(loss_fn)(params)
    updates, opt_state = opt.update(grads, opt_state)
    return optax.apply_updates(params, updates), opt_state, loss

  loss = float("nan")
  for i in range(steps):
    x = jnp.asarray(data.batch_at(i, global_batch_size=128, seed=0)["image"])
    params, opt_state, loss = step(params, opt_state, x, jax.random.fold_in(key, i))
  return params, float(loss)


def host_bits_per_dim_fn(key: jax.Array, sde: sde_lib.SDE, score_fn, shape: tuple[int, ...], *, rtol: float,
                         atol: float, levels: int):
  """score_sde's loop as ``fn(x) -> (bpd [B], nfe)``: scipy RK45 on the flattened batch, one
  jitted drift-and-divergence call (compiled once, here) per ODE function evaluation."""
  b = shape[0]
  keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(b, dtype=jnp.uint32))
  probes = jax.vmap(lambda k: jax.random.rademacher(k, (1,) + shape[1:], jnp.float32)[0])(keys)  # [B, ...]
  drift = sde.probability_flow(score_fn)

  @jax.jit
  def drift_and_div(y, t):
    dx, jv = jax.jvp(lambda u: drift(u, jnp.full((b,), t)), (y,), (probes,))  # batch-diagonal Jacobian
    return dx, jnp.sum((jv * probes).reshape(b, -1), axis=1)

  def ode_func(t, state):
    dx, div = drift_and_div(jnp.asarray(state[:-b].reshape(shape), jnp.float32), t)
    return np.concatenate([np.asarray(dx, np.float64).ravel(), np.asarray(div, np.float64)])

  d = math.prod(shape[1:])
  offset = likelihood.bpd_offset(levels, LEVELS_RANGE)

  def run(x):
    init = np.concatenate([np.asarray(x, np.float64).ravel(), np.zeros(b)])
    sol = integrate.solve_ivp(ode_func, (sde.eps, sde.T), init, rtol=rtol, atol=atol, method="RK45")
    z = sol.y[:-b, -1].reshape(b, d)
    prior_logp = -0.5 * d * math.log(2 * math.pi * sde.prior_std**2) - 0.5 * np.sum(z**2, axis=1) / sde.prior_std**2
    logp = prior_logp + sol.y[-b:, -1]
    return -logp / (d * math.log(2)) + offset, sol.nfev

  return run


def timed(fn, repeats: int):
  """(median seconds over ``repeats`` calls after one warm-up call, the last result)."""
  out = fn()
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = fn()
    times.append(time.perf_counter() - t0)
  return float(np.median(times)), out


def main():
  args = parse_args()
  sde = sde_lib.VPSDE()
  model = MLPScore(hidden=args.hidden, num_layers=args.num_layers)
  key = jax.random.PRNGKey(0)
  t0 = time.perf_counter()
  params, loss = train(sde, model, args.train_steps, key)
  score_fn = get_score_fn(sde, model.apply, params)
  test = embedded.get_dataset("digits", split="test")
  print(f"device: {jax.devices()[0].device_kind} ({jax.default_backend()}), {os.cpu_count()} CPU cores, "
        f"load {os.getloadavg()[0]:.1f}; MLPScore hidden={args.hidden} layers={args.num_layers}, "
        f"{args.train_steps} DSM steps (last loss {loss:.3f}, {time.perf_counter() - t0:.0f} s); VP SDE, "
        f"digits 8x8 (D=64, 17 levels, range {LEVELS_RANGE}); rtol={args.rtol} atol={args.atol}; Hutchinson, "
        f"1 Rademacher probe; device solver {args.solver}, host RK45")
  header = "| method | batch | s / example | NFE | mean bits/dim | host / device |"
  print(header + "\n" + "|---" * 6 + "|", flush=True)
  for b in args.batch_sizes:
    images = test.images[:b]
    x = likelihood.dequantize(jax.random.PRNGKey(1), images, levels=test.levels, data_range=LEVELS_RANGE)
    k_probe = jax.random.PRNGKey(2)

    def on_device():
      bpd, nfe = likelihood.bits_per_dim(k_probe, sde, score_fn, x, levels=test.levels, data_range=LEVELS_RANGE,
                                         solver=args.solver, rtol=args.rtol, atol=args.atol)
      return jax.block_until_ready(bpd), int(nfe)

    host_fn = host_bits_per_dim_fn(k_probe, sde, score_fn, x.shape, rtol=args.rtol, atol=args.atol,
                                   levels=test.levels)
    on_host = lambda: host_fn(x)  # pylint: disable=cell-var-from-loop

    dev_s, (dev_bpd, dev_nfe) = timed(on_device, args.repeats)
    host_s, (host_bpd, host_nfe) = timed(on_host, args.repeats)
    ratio = host_s / dev_s
    print(f"| device diffrax ({args.solver}, jit) | {b} | {dev_s / b:.4f} | {dev_nfe} | "
          f"{float(np.mean(dev_bpd)):.4f} | {ratio:.1f}x |")
    print(f"| host scipy RK45 loop | {b} | {host_s / b:.4f} | {host_nfe} | {float(np.mean(host_bpd)):.4f} | 1.0x |",
          flush=True)


if __name__ == "__main__":
  main()
