"""``--mode=sample``: draws ``config.sampling.num_samples`` samples from the EMA parameters of
the latest (or ``config.sampling.checkpoint_step``'s) checkpoint or EMA export into a new folder
``<workdir>/samples/<k>``: ``samples.png`` (a grid, or for toy targets a scatter over the
density), ``samples.npz`` (samples in the data range, the requested labels) and
``metrics.json`` (sampler, NFE, time; toy targets: quality against the exact target).

With ``config.guidance`` the samples are class-guided (``jobs.control.from_guidance``):
classifier guidance by the noise-conditional classifier, or classifier-free guidance.
"""

from __future__ import annotations

import os
import time

from score_jax import experiment
from score_jax.jobs import control as control_lib
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import params as params_lib
from score_jax.jobs import sampler as sampler_lib
from score_jax.jobs import writers


def run(config: experiment.ConfigDict, workdir: str) -> writers.Output:
  """Samples the run in ``workdir``; returns the new folder and its metrics.

  Raises:
    FileNotFoundError: no checkpoint in ``workdir``, or classifier guidance without a trained
      noise-conditional classifier.
    ConfigError (a ValueError): a bad config value (before anything compiles).
  """
  setup = experiment.build(config, workdir=workdir, read_data=False)  # sampling reads no data
  opts = experiment.sample_options(config)
  guidance = experiment.guidance_options(config, setup)
  control = control_lib.from_guidance(guidance, setup, workdir, default=control_lib.network(setup))
  step, params = params_lib.load_ema_params(setup, workdir, opts.checkpoint_step)
  k, out = writers.numbered_folder(workdir, "samples")
  t0 = time.perf_counter()
  draw = sampler_lib.make_sampler(setup, opts.num_samples, control, batch_size=opts.batch_size)
  x, nfe = draw(params, keys_lib.draw_key(setup.seed, "sample", step, k))
  extra = {"step": step, "draw": k, "workdir": os.path.abspath(workdir), "params": setup.sample_params, "nfe": nfe,
           "sample_time_s": time.perf_counter() - t0, "num_samples": int(x.shape[0]),
           "sampling": {"method": setup.sampling_method, **setup.sampling_options}, **control.record}
  metrics = writers.write_samples(
      setup, x, png=os.path.join(out, "samples.png"), npz=os.path.join(out, "samples.npz"),
      metrics_json=os.path.join(out, "metrics.json"), title=f"{setup.data.name}, {_params_title(setup.sample_params)} at step {step}, draw {k}",
      quality_key=keys_lib.quality_key(setup.seed, "sample", step, k), extra=extra,
      labels=control.sample_labels(x.shape[0]))
  return writers.Output(folder=out, metrics=metrics)


def _params_title(which: str) -> str:
  return {"ema": "EMA model", "raw": "raw parameters"}.get(which, which.replace("_", " σ_rel "))
