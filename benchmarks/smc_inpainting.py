"""SMC against replacement, RePaint and posterior guidance at equal NFE, on mixtures whose exact
conditional is known and whose known coordinates move the mode weights from 0.5 / 0.5 to about
0.1 / 0.9 (the targets of tests/test_smc.py).

Targets: 2-D inpainting (x_0 = 0.1 known; exact weights 0.098 / 0.902) and 6-D colorization (two
RGB pixels, both luminances known; exact 0.10 / 0.90).  SDEs: VE (σ 0.01 … 20, 100 steps) and VP
(β 0.1 … 20, 200 steps: its ancestral kernel loses 9 % of the stds at 100).  Per input the SMC
sampler with K particles spends K × steps score evaluations (plus the guidance VJPs); each other
method gets the same NFE per input (replacement: K × steps steps; RePaint ×4: K × steps / 4 steps
of 4 repetitions; posterior guidance with the Tweedie covariance plus replacement: K × steps
steps, each also differentiating the score), all with the reverse-diffusion predictor of ``pc``.

Errors against ``GaussianMixture.condition``: the largest absolute share error, the largest mean
error, the largest relative std error of the two modes (SMC: its weighted particles, each input
weighing 1/n; the others: their n samples).

    python benchmarks/smc_inpainting.py --out=DIR

Writes ``<out>/smc_inpainting.md``, ``.json`` and ``.png`` (share error against K); refuses to overwrite.
"""

import math
import os
import sys
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "tests"))
from test_smc import BASIS6, COLOR, INPAINT, LUM, M, SDES, STEPS, weighted_errors  # pylint: disable=g-import-not-at-top

from score_jax import outputs, sampling
from score_jax.metrics.samples import mode_statistics
from score_jax.sampling import constraints

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder (existing result files are never overwritten).")
flags.DEFINE_integer("num_inputs", 2000, "Inputs (SMC) / samples (the other methods).")
flags.DEFINE_list("particles", ["1", "4", "16", "64"], "K values; the other methods get K × steps NFE.")
flags.DEFINE_list("baseline_k", ["1", "16", "64"], "The K whose NFE the other methods are run at.")


def problems(sde, n):
  """name -> (shape, observation, score_fn, exact conditional, to_u) of the two targets."""
  known6 = np.array([1, 0, 0, 1, 0, 0], bool)
  return {
      "2-D inpainting": ((n, 2), constraints.Observation(jnp.zeros((n, 2)).at[:, 0].set(0.1), jnp.array([1.0, 0.0])),
                         INPAINT.score_fn(sde), INPAINT.condition(np.array([True, False]), np.array([0.1, 0.0])),
                         lambda x: np.asarray(x, np.float64).reshape(x.shape[:-1] + (2,))[..., 1:]),
      "6-D colorization": ((n, 2, 3), constraints.Observation(jnp.full((n, 2, 3), LUM / math.sqrt(3.0)),
                                                              jnp.array([1.0, 0.0, 0.0]), M),
                           lambda x, t: COLOR.score(x.reshape(-1, 6), t, sde).reshape(x.shape),
                           COLOR.condition(known6, np.where(known6, LUM, 0.0), basis=BASIS6),
                           lambda x: (np.asarray(x, np.float64) @ M).reshape(x.shape[:-2] + (6,))[..., ~known6]),
  }


def errors_of(samples, cond):
  st = mode_statistics(samples, cond)
  return (float(np.max(np.abs(st["share"] - np.asarray(cond.weights)))), float(st["max_mean_error"]),
          float(st["max_std_rel_error"]))


def main(_):
  if not FLAGS.out:
    raise app.UsageError("--out is required.")
  os.makedirs(FLAGS.out, exist_ok=True)
  paths = [os.path.join(FLAGS.out, f"smc_inpainting.{ext}") for ext in ("md", "json", "png")]
  outputs.refuse_overwrite(paths, "Choose another --out.")
  n, ks, base_ks = FLAGS.num_inputs, [int(k) for k in FLAGS.particles], [int(k) for k in FLAGS.baseline_k]
  rows, t_all = [], time.time()
  for sde_name, sde in SDES.items():
    steps = STEPS[sde_name]
    for target, (shape, obs, score, cond, to_u) in problems(sde, n).items():
      for k in ks:
        t0 = time.time()
        r = sampling.run_smc(jax.random.PRNGKey(k), sde, score, shape, obs, particles=k, num_steps=steps)
        parts = np.asarray(jax.block_until_ready(r.particles))
        errs = weighted_errors(to_u(parts), r.log_weights, cond)[0]
        rows.append(dict(sde=sde_name, target=target, method=f"SMC K={k}", k=k, nfe=k * steps, errors=errs,
                         min_ess=float(np.min(r.ess)), mean_ess=float(np.mean(r.ess)), seconds=time.time() - t0))
        print(rows[-1], flush=True)
      for k in base_ks:
        nfe = k * steps
        for label, constraint, score_fn, reps in (
            ("replacement", constraints.Replacement.of(obs), score, 1),
            ("RePaint x4", constraints.Replacement.of(obs, resample=4), score, 4),
            ("posterior (Tweedie) + replacement", constraints.Posterior.of(obs, covariance="tweedie"), score, 1)):
          t0 = time.time()
          x, used = sampling.sample(jax.random.PRNGKey(k), sde, score_fn, shape, "pc", constraint=constraint,
                                    num_steps=nfe // reps, predictor="reverse_diffusion", corrector="none",
                                    denoise=False)
          x = np.asarray(jax.block_until_ready(x))
          rows.append(dict(sde=sde_name, target=target, method=label, k=k, nfe=int(used), errors=errors_of(to_u(x), cond),
                           seconds=time.time() - t0))
          print(rows[-1], flush=True)
  total = time.time() - t_all

  lines = [f"{n} inputs; cells: share error / mean error / relative std error (largest over the two modes); "
           "NFE per input = K × steps.", ""]
  for sde_name in SDES:
    for target in ("2-D inpainting", "6-D colorization"):
      sel = [r for r in rows if r["sde"] == sde_name and r["target"] == target]
      lines += [f"**{sde_name.upper()}, {target}, {STEPS[sde_name]} steps**", "",
                "| method | " + " | ".join(f"NFE {k * STEPS[sde_name]} (K={k})" for k in ks) + " |",
                "|---|" + "---|" * len(ks)]
      for method in dict.fromkeys(r["method"] if not r["method"].startswith("SMC") else "SMC" for r in sel):
        cells = []
        for k in ks:
          hit = [r for r in sel if r["k"] == k and (r["method"].startswith("SMC") if method == "SMC" else r["method"] == method)]
          cells.append("–" if not hit else "{:.3f} / {:.3f} / {:.3f}".format(*hit[0]["errors"]))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
      ess = [r for r in sel if r["method"].startswith("SMC")]
      lines += ["", "SMC ESS (min / mean over steps and inputs): " + ", ".join(
          f"K={r['k']}: {r['min_ess']:.1f} / {r['mean_ess']:.1f}" for r in ess), ""]
  lines.append(f"Total {total / 60:.1f} min.")
  with open(paths[0], "w") as f:
    f.write("\n".join(lines) + "\n")
  outputs.write_json(paths[1], dict(rows=rows, minutes=total / 60))
  fig, ax = plt.subplots(figsize=(6, 4))
  for sde_name in SDES:
    for target in ("2-D inpainting", "6-D colorization"):
      pts = [(r["k"], r["errors"][0]) for r in rows if r["sde"] == sde_name and r["target"] == target
             and r["method"].startswith("SMC")]
      ax.loglog(*zip(*pts), marker="o", label=f"{sde_name.upper()} {target}")
  ax.axhline(0.03, color="gray", ls=":", label="0.03")
  ax.set(xlabel="particles K", ylabel="share error", title="SMC against the exact conditional")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(paths[2], dpi=120)
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
