"""A trained run as a library object: ``run = score_jax.load_run(workdir)``.

    import jax, score_jax
    from score_jax import sampling

    run = score_jax.load_run("runs/gmm")                # latest checkpoint or EMA export
    x, nfe = sampling.sample(jax.random.key(0), run.sde, run.score_fn, (1000,) + run.data_shape,
                             run.sampling_method, **run.sampling_options)

``load_run`` needs only the workdir: the resolved config a training run wrote there
(``config.json``, or ``config_step{S}.json`` when a resumed run changed it) is read back, so it
works from any directory and without the config file.  The parameters are the EMA parameters of
the chosen step (a full checkpoint or an EMA export, whichever exists).
"""

from __future__ import annotations

import dataclasses
import functools
import glob
import os
import re
from typing import Any, Callable, Optional

import jax

from score_jax import checkpointing
from score_jax import config_files
from score_jax import experiment
from score_jax import sde as sde_lib
from score_jax.jobs import keys as keys_lib
from score_jax.jobs import params as params_lib

Array = Any


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run, ready to sample from.

  Attributes:
    workdir: the run's folder.
    step: the training step of the loaded parameters.
    config: the resolved config the run trained with (read from the workdir).
    setup: the components built from it (``experiment.Setup``: network, SDE, data, sampler).
    params: the parameters of ``step`` (the EMA unless ``load_run(..., params=...)`` chose others).
  """

  workdir: str
  step: int
  config: experiment.ConfigDict
  setup: experiment.Setup
  params: Any

  @property
  def sde(self) -> sde_lib.SDE:
    return self.setup.sde

  @property
  def data_shape(self) -> tuple[int, ...]:
    """The shape of one sample, e.g. (2,) for a 2-D target or (H, W, C) for images."""
    return self.setup.data_shape

  @property
  def num_classes(self) -> int:
    return self.setup.num_classes

  @functools.cached_property
  def score_fn(self) -> Callable[[Array, Array], Array]:
    """``score_fn(x [B, ...], t [] or [B])`` of the EMA network (a class-conditional network
    gets its null label: the unconditional score).  One object per run, so the samplers'
    compilation cache is reused across calls."""
    return self.setup.score_fn(self.params)

  def conditional_score_fn(self, labels: Array) -> Callable[[Array, Array], Array]:
    """The score of a class-conditional network given ``labels`` (int [B])."""
    if not self.num_classes:
      raise ValueError(f"the run in {self.workdir} is not class-conditional (config.data has no classes).")
    return self.setup.score_fn(self.params, labels)

  @property
  def sampling_method(self) -> str:
    """The run's sampler (``config.sampling.method``)."""
    return self.setup.sampling_method

  @property
  def sampling_options(self) -> dict[str, Any]:
    """The run's sampler options (``config.sampling[method]``), as ``sampling.sample`` takes them."""
    return dict(self.setup.sampling_options)

  def draw_key(self, draw: int) -> jax.Array:
    """The key ``--mode=sample`` uses for its ``draw``-th folder ``samples/<draw>``; sample j of
    that draw uses ``fold_in(key, j)``."""
    return keys_lib.draw_key(self.setup.seed, "sample", self.step, draw)


def config_path(workdir: str, step: Optional[int] = None) -> str:
  """The resolved config that trained ``step`` (default: the newest): ``config.json``, or the
  ``config_step{S}.json`` of the latest resumption at or before that step.

  Raises:
    FileNotFoundError: the workdir has no config.json (it was not written by a training run).
  """
  base = os.path.join(workdir, "config.json")
  if not os.path.isfile(base):
    raise FileNotFoundError(f"{base} does not exist: load_run needs the folder of a training run "
                            f"(python main.py --mode=train --workdir=...).")
  resumed = {}
  for path in glob.glob(os.path.join(workdir, "config_step*.json")):
    match = re.fullmatch(r"config_step(\d+)\.json", os.path.basename(path))
    if match:
      resumed[int(match.group(1))] = path
  eligible = [s for s in resumed if step is None or s <= step]
  return resumed[max(eligible)] if eligible else base


def load_config(workdir: str, step: Optional[int] = None) -> experiment.ConfigDict:
  """The resolved config of a training run (see ``config_path``), as a ConfigDict."""
  return config_files.from_json(config_path(workdir, step))


def load_run(workdir: str, step: Optional[int] = None, *, params: str = "ema",
             overrides: Optional[dict[str, Any]] = None) -> Run:
  """Loads a trained run's config and EMA parameters.

  Args:
    workdir: a folder ``python main.py --mode=train`` wrote (any working directory).
    step: the checkpoint or EMA export to load (default: the newest).
    params: which parameters (``config.sampling.params``): "ema", "raw" (a full checkpoint's
      trained parameters), "power_<σ_rel>" (a power-EMA snapshot) or "posthoc_<σ_rel>" (a
      ``--mode=posthoc_ema`` reconstruction, e.g. "posthoc_0.080").
    overrides: config fields to change before building, as dotted names, e.g.
      ``{"sampling.method": "ode"}`` (the network fields must stay those of the checkpoint).

  Returns:
    A ``Run``: ``run.sde``, ``run.score_fn``, ``run.config``, ``run.params``, ``run.step``.

  Raises:
    FileNotFoundError: no config.json, or no checkpoint / EMA export (of ``step``) in ``workdir``.
    ConfigError (a ValueError): an override is not valid.
  """
  config = load_config(workdir, step)
  experiment.apply_overrides(config, overrides or {})
  config.sampling.params = params  # a run saved before the field existed lacks it
  setup = experiment.build(config)
  if setup.sample_params != "ema":
    found = params_lib.load_ema_params(setup, workdir, step)  # its errors name the export and how to make it
  else:
    found = params_lib.latest_ema_params(setup, workdir, step=step)
  if found is None:
    have = checkpointing.saved_steps(workdir)
    wanted = "" if step is None else f" of step {step}"
    raise FileNotFoundError(f"no checkpoint or EMA export{wanted} in {workdir} (saved steps: {have or 'none'}).")
  found_step, params = found
  return Run(workdir=os.path.abspath(workdir), step=found_step, config=config, setup=setup, params=params)
