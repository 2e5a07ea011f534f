"""Inpainting against the exact conditional: replacement, replacement + RePaint resampling and
posterior guidance, against NFE, on targets whose conditional is known in closed form.

1. Correlated Gaussian (``toy.correlated_gaussian``, 8-D, eigenvalues over a ratio 20): half
   of the coordinates known (those of one exact sample), the other half sampled with the
   exact score under VP.  Every method here acts linearly on a Gaussian with the exact
   (affine) score, so its output is Gaussian too; the figure is KL(fit ‖ exact) of the
   Gaussian fitted to the samples against ``Gaussian.condition``.  Exact samples scored the
   same way give the estimation floor.
2. Two 2-D mixtures, one coordinate known, where that coordinate is informative about the
   mode: the sampled share of the heavier conditional mode against the exact one
   (``GaussianMixture.condition``), at the largest NFE.

Methods (all with the reverse-diffusion predictor of ``pc``, no corrector, so NFE = steps ×
repetitions):
* replacement: known coordinates ← m(t) y + s(t) z after every step (Song et al. 2021, App. I.2);
* RePaint ×r: the same with every step repeated r times (jump back by the forward transition);
* posterior guidance (ΠGDM-style isotropic covariance), and with the Tweedie covariance
  (exact for Gaussians) plus replacement: ``guidance.posterior_guidance``.  One NFE here is
  one score evaluation plus its derivative (a VJP; D JVPs for "tweedie").

    python benchmarks/inpainting.py --out=bench_out       # about 10 min on a loaded 2-core CPU

Writes ``<out>/inpainting.md`` (tables), ``<out>/inpainting.png`` (KL against NFE) and
``<out>/inpainting.json``; refuses to overwrite them.
"""

import os
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from score_jax import guidance, outputs, sampling
from score_jax import sde as sde_lib
from score_jax.analysis.kl import gaussian_kl
from score_jax.data import toy
from score_jax.metrics.samples import mode_statistics
from score_jax.sampling import constraints

FLAGS = flags.FLAGS
flags.DEFINE_string("out", None, "Output folder (created; existing result files are never overwritten).")
flags.DEFINE_integer("num_samples", 4000, "Samples per run.")
flags.DEFINE_list("nfe", ["25", "50", "100", "200", "400"], "NFE budgets.")
flags.DEFINE_integer("dim", 8, "Dimension of the correlated Gaussian (half of it known).")

PC = dict(method="pc", predictor="reverse_diffusion", corrector="none", denoise=False)


def methods(sde, score_fn, y, mask):
  """label -> (score_fn, constraint or None, repetitions per step)."""
  return {
      "replacement": (score_fn, constraints.Replacement(y, mask), 1),
      "RePaint x4": (score_fn, constraints.Replacement(y, mask, resample=4), 4),
      "posterior guidance (isotropic)": (guidance.posterior_guidance(score_fn, sde, y, mask), None, 1),
      "posterior guidance (tweedie) + replacement": (
          guidance.posterior_guidance(score_fn, sde, y, mask, covariance="tweedie"), constraints.Replacement(y, mask), 1),
  }


def gaussian_kl_fit(x: np.ndarray, cond: toy.Gaussian) -> float:
  """KL(N(mean, cov of x) ‖ cond), in float64."""
  with jax.enable_x64(True):
    mean, cov = x.mean(axis=0), np.cov(x, rowvar=False)
    return float(gaussian_kl(jnp.asarray(mean), jnp.asarray(cov), jnp.asarray(cond.mean, jnp.float64),
                             jnp.asarray(cond.cov, jnp.float64)))


def run(label, sde, score_fn, constraint, reps, nfe, n, d, key):
  steps = max(nfe // reps, 1)
  t0 = time.time()
  x, used = sampling.sample(key, sde, score_fn, (n, d), constraint=constraint, num_steps=steps, **PC)
  x = np.asarray(jax.block_until_ready(x), np.float64)
  return x, int(used), time.time() - t0


def gaussian_part(n: int, budgets: list[int], dim: int) -> tuple[list[dict], float]:
  sde = sde_lib.VPSDE()
  target = toy.correlated_gaussian(dim=dim, condition=20.0, seed=0)
  known = np.arange(dim) < dim // 2
  y_row = np.asarray(target.sample(jax.random.PRNGKey(123), 1))[0]
  cond = target.condition(known, y_row)
  y = jnp.broadcast_to(jnp.asarray(y_row, jnp.float32), (n, dim))
  mask = jnp.asarray(known, jnp.float32)
  floor = gaussian_kl_fit(np.asarray(cond.sample(jax.random.PRNGKey(9), n), np.float64), cond)
  rows = []
  for label, (score_fn, constraint, reps) in methods(sde, target.score_fn(sde), y, mask).items():
    for nfe in budgets:
      if nfe < reps:
        continue
      x, used, secs = run(label, sde, score_fn, constraint, reps, nfe, n, dim, jax.random.PRNGKey(nfe))
      if constraint is not None:
        assert np.all(x[:, known] == y_row[known].astype(np.float32)), label  # known coordinates kept exactly
      kl = gaussian_kl_fit(x[:, ~known], cond)
      rows.append(dict(method=label, budget=nfe, nfe=used, kl=kl, seconds=secs))
      print(f"gaussian  {label:45s} NFE {used:4d}  KL {kl:.4f}  ({secs:.1f} s)", flush=True)
  return rows, floor


MIXTURES = {
    # (target, known value of x_0): exact weights of the conditional modes in the comments.
    "moderate (exact 0.354 / 0.646)": (toy.GaussianMixture(means=[[-0.3, -2.0], [0.3, 2.0]],
                                                           stds=[[1.0, 0.5], [1.0, 0.4]]), 1.0),
    "strong (exact 0.083 / 0.917)": (toy.GaussianMixture(means=[[-1.0, -2.0], [1.0, 2.0]], stds=[0.5, 0.5]), 0.3),
}


def mixture_part(n: int, nfe: int) -> list[dict]:
  rows = []
  for sde in (sde_lib.VESDE(sigma_max=20.0), sde_lib.VPSDE()):
    for name, (target, a) in MIXTURES.items():
      cond = target.condition(np.array([True, False]), np.array([a, 0.0]))
      y = jnp.zeros((n, 2)).at[:, 0].set(a)
      mask = jnp.array([1.0, 0.0])
      for label, (score_fn, constraint, reps) in methods(sde, target.score_fn(sde), y, mask).items():
        x, used, secs = run(label, sde, score_fn, constraint, reps, nfe, n, 2, jax.random.PRNGKey(0))
        share = float(mode_statistics(x[:, 1:], cond)["share"][1])
        rows.append(dict(sde=sde.name, target=name, method=label, nfe=used, share=share,
                         exact=float(cond.weights[1])))
        print(f"mixture {sde.name} {name:32s} {label:45s} NFE {used}  share {share:.3f} "
              f"(exact {float(cond.weights[1]):.3f})  ({secs:.1f} s)", flush=True)
  return rows


def main(_):
  if not FLAGS.out:
    raise app.UsageError("--out is required.")
  os.makedirs(FLAGS.out, exist_ok=True)
  paths = [os.path.join(FLAGS.out, f"inpainting.{ext}") for ext in ("md", "png", "json")]
  outputs.refuse_overwrite(paths, "Choose another --out.")
  budgets = [int(b) for b in FLAGS.nfe]
  t0 = time.time()
  gauss, floor = gaussian_part(FLAGS.num_samples, budgets, FLAGS.dim)
  mix = mixture_part(FLAGS.num_samples, max(budgets))
  total = time.time() - t0

  labels = list(dict.fromkeys(r["method"] for r in gauss))
  lines = [f"Correlated Gaussian, {FLAGS.dim}-D (half known), VP, {FLAGS.num_samples} samples: "
           f"KL(fit ‖ exact conditional); exact samples: {floor:.4f}.", "",
           "| method | " + " | ".join(f"NFE {b}" for b in budgets) + " |",
           "|---|" + "---|" * len(budgets)]
  for label in labels:
    # RePaint ×4 spends a budget as ⌊budget/4⌋ steps × 4: its NFE is shown where it is lower.
    by_budget = {r["budget"]: r for r in gauss if r["method"] == label}
    lines.append(f"| {label} | " + " | ".join(
        ("–" if b not in by_budget else f"{by_budget[b]['kl']:.4f}" + (
            f" (NFE {by_budget[b]['nfe']})" if by_budget[b]["nfe"] != b else "")) for b in budgets) + " |")
  lines += ["", f"2-D mixtures, x_0 known, NFE {max(budgets)}: share of the heavier conditional mode.", "",
            "| SDE | target | " + " | ".join(labels) + " |", "|---|---|" + "---|" * len(labels)]
  for sde_name in dict.fromkeys(r["sde"] for r in mix):
    for name in MIXTURES:
      cells = [next(f"{r['share']:.3f}" for r in mix if r["sde"] == sde_name and r["target"] == name
                    and r["method"] == label) for label in labels]
      lines.append(f"| {sde_name} | {name} | " + " | ".join(cells) + " |")
  lines += ["", f"Total {total / 60:.1f} min."]
  with open(paths[0], "w") as f:
    f.write("\n".join(lines) + "\n")

  fig, ax = plt.subplots(figsize=(6, 4))
  for label in labels:
    pts = sorted((r["nfe"], r["kl"]) for r in gauss if r["method"] == label)
    ax.loglog(*zip(*pts), marker="o", label=label)
  ax.axhline(floor, color="gray", ls=":", label="exact samples (floor)")
  ax.set(xlabel="NFE", ylabel="KL(fit ‖ exact conditional)", title=f"Inpainting, {FLAGS.dim}-D correlated Gaussian, VP")
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(paths[1], dpi=120)
  outputs.write_json(paths[2], dict(gaussian=gauss, floor=floor, mixtures=mix, minutes=total / 60))
  print("\n".join(lines))


if __name__ == "__main__":
  app.run(main)
