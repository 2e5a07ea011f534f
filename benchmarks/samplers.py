"""Sampler benchmark on an analytic target with its exact score.

Prints, per sampler: compile time, run time, steps per second, NFE, sliced W2 against
exact target samples (mean ± std over seeds — it swings between seeds, so it is shown
with its spread) and the mode statistics that are stable between seeds.

    python benchmarks/samplers.py                      # ring8, VE and VP, 4000 samples
    python benchmarks/samplers.py --target=grid25 --num_samples=10000 --seeds=5
"""

import time

from absl import app, flags
import jax
import numpy as np

from score_jax import sampling
from score_jax import sde as sde_lib
from score_jax.data import toy
from score_jax.metrics.samples import mode_statistics, sliced_wasserstein

FLAGS = flags.FLAGS
flags.DEFINE_string("target", "ring8", "Toy target (a Gaussian mixture) from score_jax.data.toy.")
flags.DEFINE_list("sdes", ["ve", "vp"], "SDEs to benchmark.")
flags.DEFINE_integer("num_samples", 4000, "Samples per run.")
flags.DEFINE_integer("seeds", 3, "Repetitions (new keys) per sampler; timing uses the median.")
flags.DEFINE_integer("num_steps", 1000, "Steps of the fixed-grid samplers.")
flags.DEFINE_string("out", None, "Optional path to also write the markdown table to.")


def samplers(num_steps: int):
  """(label, method, options) for every sampler worth comparing."""
  rows = [
      ("PC rev-diff + Langevin", "pc", dict(predictor="reverse_diffusion", corrector="langevin")),
      ("PC Euler-Maruyama", "pc", dict(predictor="euler_maruyama", corrector="none")),
      ("PC ancestral", "pc", dict(predictor="ancestral", corrector="none")),
      ("PC rev-diff + ALD", "pc", dict(predictor="reverse_diffusion", corrector="ald")),
  ]
  rows = [(label, m, dict(o, num_steps=num_steps)) for label, m, o in rows]
  rows += [
      ("ODE Tsit5 1e-5", "ode", dict(solver="tsit5", rtol=1e-5, atol=1e-5)),
      ("ODE Tsit5 1e-3", "ode", dict(solver="tsit5", rtol=1e-3, atol=1e-3)),
      ("ODE Heun 100 steps", "ode", dict(solver="heun", num_steps=100)),
      ("ALD 100x10", "ald", dict(num_steps=100, n_steps_each=10)),
  ]
  return rows


def steps_of(method: str, opts: dict, nfe: int) -> int:
  """Integrator steps taken (the unit of 'steps per second')."""
  if method == "pc" or method == "langevin":
    return opts["num_steps"]
  if method == "ald":
    return opts["num_steps"] * opts["n_steps_each"]
  _, per_step, at_start = sampling.SOLVERS[opts.get("solver", "tsit5")]
  denoise = opts.get("denoise", sampling.METHODS["ode"].defaults["denoise"])
  return (nfe - int(denoise) - at_start) // per_step


def main(_):
  target = toy.get_target(FLAGS.target)
  shape = (FLAGS.num_samples, target.dim)
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}, target {FLAGS.target}, "
        f"{FLAGS.num_samples} samples, {FLAGS.seeds} seeds")
  header = ("| SDE | sampler | NFE | compile s | run s | steps/s | sliced W2 (mean ± sd) | "
            "max share err | max mean err | max std err | outliers |")
  lines = [header, "|" + "---|" * 11]
  print(header)
  for sde_name in FLAGS.sdes:
    sde = sde_lib.get_sde(sde_name)
    score_fn = target.score_fn(sde)
    for label, method, opts in samplers(FLAGS.num_steps):
      t0 = time.perf_counter()
      compiled = sampling.lower(jax.random.PRNGKey(0), sde, score_fn, shape, method, **opts).compile()
      compile_s = time.perf_counter() - t0
      run_s, sw, stats = [], [], []
      for seed in range(FLAGS.seeds):
        key = jax.random.PRNGKey(seed + 1)
        t0 = time.perf_counter()
        x, nfe = jax.block_until_ready(compiled(key))
        run_s.append(time.perf_counter() - t0)
        ref = target.sample(jax.random.fold_in(key, 10**6), FLAGS.num_samples)
        sw.append(sliced_wasserstein(jax.random.fold_in(key, 1), x, ref))
        stats.append(mode_statistics(x, target))
      nfe = int(nfe)
      run = float(np.median(run_s))
      worst = lambda k: max(s[k] for s in stats)  # pylint: disable=cell-var-from-loop
      line = (f"| {sde_name} | {label} | {nfe} | {compile_s:.2f} | {run:.3f} | "
              f"{steps_of(method, opts, nfe) / run:.0f} | {np.mean(sw):.4f} ± {np.std(sw):.4f} | "
              f"{worst('max_share_rel_error'):.3f} | {worst('max_mean_error'):.3f} | "
              f"{worst('max_std_rel_error'):.3f} | {worst('outlier_fraction'):.4f} |")
      lines.append(line)
      print(line, flush=True)
  if FLAGS.out:
    with open(FLAGS.out, "x") as f:  # never overwrite an earlier result
      f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  app.run(main)
