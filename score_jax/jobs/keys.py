"""The one derivation of sample keys: which key a job's samples are drawn from.

Every job draws sample j of a set from ``fold_in(draw_key(...), j)`` (``jobs.sampler``), so a
picture depends neither on the batch size nor on the device count.  The set's key comes from
the run's ``sample`` or ``eval`` stream (``experiment.keys(seed)``), the step of the
parameters, and what the set is for:

    purpose     key                                                          drawn by
    "train"     fold_in(sample, step)                                        --mode=train's grids and final samples
    "sample"    fold_in(fold_in(sample, step), index + 1)                    --mode=sample, folder samples/<index>
    "inpaint"   fold_in(fold_in(fold_in(sample, step), 1), index)            --mode=inpaint, folder inpaint/<index>
    "colorize"  fold_in(fold_in(fold_in(sample, step), 2), index)            --mode=colorize, folder colorize/<index>
    "eval"      fold_in(fold_in(eval, EVAL_STREAMS["samples"]), step)        --mode=eval's FID samples

So two draws of one step never share noise, a new ``samples/<k>`` folder is a new draw, and
eval's samples are the same for every evaluation of a step.  ``eval_key`` names the other
streams of --mode=eval (held-out loss, bits/dim, the toy data) and ``quality_key`` the key of
a toy target's fresh reference samples when a job scores its samples against the target.
"""

from __future__ import annotations

import jax

from score_jax import experiment

PURPOSES = ("train", "sample", "inpaint", "colorize", "eval")
_SALT = {"inpaint": 1, "colorize": 2}  # the controllable modes draw apart from each other and from sample
# Sub-streams of the run's "eval" key (3 is reserved for the reference noise's numpy seed).
EVAL_STREAMS = {"loss": 0, "bpd": 1, "samples": 2, "toy_loss_data": 4, "toy_bpd_data": 5, "toy_quality": 6}


def streams(seed: int) -> dict[str, jax.Array]:
  """The run's base keys (``experiment.keys``)."""
  return experiment.keys(seed)


def draw_key(seed: int, purpose: str, step: int, index: int = 0) -> jax.Array:
  """The key of a set of samples (see the module docstring); sample j uses ``fold_in(key, j)``.

  Args:
    seed: ``config.seed``.
    purpose: one of ``PURPOSES``.
    step: the training step of the parameters.
    index: the output folder's number (sample, inpaint, colorize); unused otherwise.
  """
  if purpose not in PURPOSES:
    raise ValueError(f"purpose={purpose!r}; choose one of {list(PURPOSES)}.")
  if purpose == "eval":
    return jax.random.fold_in(eval_key(seed, "samples"), step)
  key = jax.random.fold_in(streams(seed)["sample"], step)
  if purpose == "sample":
    return jax.random.fold_in(key, index + 1)
  if purpose in _SALT:
    return jax.random.fold_in(jax.random.fold_in(key, _SALT[purpose]), index)
  return key


def eval_key(seed: int, part: str) -> jax.Array:
  """The key of one part of --mode=eval (``EVAL_STREAMS``), the same at every step."""
  return jax.random.fold_in(streams(seed)["eval"], EVAL_STREAMS[part])


def quality_key(seed: int, purpose: str, step: int, index: int = 0) -> jax.Array:
  """The key of a toy target's fresh reference samples and projections, when a job scores its
  samples against the exact target: ``fold_in(eval, step)`` for training's final samples,
  ``fold_in(eval, index + 1)`` for folder ``samples/<index>``, and
  ``fold_in(eval_key("toy_quality"), step)`` for --mode=eval."""
  base = streams(seed)["eval"]
  if purpose == "train":
    return jax.random.fold_in(base, step)
  if purpose == "sample":
    return jax.random.fold_in(base, index + 1)
  if purpose == "eval":
    return jax.random.fold_in(eval_key(seed, "toy_quality"), step)
  raise ValueError(f"purpose={purpose!r} scores no samples against a target; choose train, sample or eval.")
