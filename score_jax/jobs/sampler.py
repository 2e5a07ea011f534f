"""The one sampler builder of the jobs: ``make_sampler(setup, n, control) -> draw``.

Samples are drawn by one jitted call of ``score_jax.sampling.sample`` per chunk, split over
the device mesh; sample j's noise comes from ``fold_in(key, j)`` (the key from
``jobs.keys.draw_key``), so a picture depends neither on the chunk size nor on the device
count.  What the sampler follows is the ``Control``'s (``jobs.control``): its score, its
constraint, its traced auxiliaries and per-sample arrays.
"""

from __future__ import annotations

from typing import Any, Callable, Optional

import jax
import jax.numpy as jnp
from jax.experimental import multihost_utils
import numpy as np

from score_jax import experiment
from score_jax import sampling
from score_jax import sharding as sharding_lib
from score_jax.jobs import control as control_lib

Array = Any


def _rows(a: np.ndarray, start: int, size: int) -> np.ndarray:
  """Rows start .. start + size − 1 of ``a``, the last row repeated past its end (a full chunk)."""
  part = np.asarray(a)[start:start + size]
  if part.shape[0] < size:
    part = np.concatenate([part, np.repeat(part[-1:], size - part.shape[0], axis=0)])
  return part


def check_control(setup: experiment.Setup, num_samples: int, control: control_lib.Control) -> None:
  """Raises ValueError before compiling when the config's sampler cannot impose the control's
  constraint (e.g. an adaptive ODE solver) or a per-sample array has not N rows."""
  for name, a in control.per_sample.items():
    if np.shape(a)[0] != num_samples:
      raise ValueError(f"per-sample array {name!r} has {np.shape(a)[0]} rows for {num_samples} samples.")
  if control.constraint is None:
    return
  chunk = control_lib.Chunk(None, control.aux, dict(control.per_sample), np.arange(num_samples), None)
  sampling.check_constraint(setup.sde, (num_samples,) + setup.data_shape, setup.sampling_method,
                            setup.sampling_options, control.constraint_of(chunk))


def make_sampler(setup: experiment.Setup, num_samples: int, control: Optional[control_lib.Control] = None, *,
                 batch_size: Optional[int] = None) -> Callable[[Any, jax.Array], tuple[np.ndarray, int]]:
  """A compiled-once sampler ``draw(params, key) -> (samples [N, ...] numpy, nfe)``.

  Samples are drawn ``batch_size`` at a time (default: all N in one call); sample j gets the
  key ``fold_in(key, j)`` whatever the chunking, so N samples are the same for any batch size
  (up to the batch-averaged step size of the ``langevin`` corrector).  Each chunk is split
  over the mesh when its size is divisible by the device count (else replicated).

  Args:
    setup: the components.
    num_samples: N.
    control: what the sampler follows (default ``control.network(setup)``: the network as it
      is, a class-conditional one with labels 0 … K−1 cycled over the samples).
    batch_size: samples per compiled call (None: all N at once).
  """
  control = control_lib.network(setup) if control is None else control
  mesh = setup.mesh
  chunk = min(num_samples, batch_size or num_samples)
  shape = (chunk,) + setup.data_shape
  out = sharding_lib.data_sharding(mesh) if chunk % mesh.size == 0 else sharding_lib.replicated(mesh)

  @jax.jit
  def _draw(params, aux, key, start, arrays):
    index = start + jnp.arange(chunk, dtype=jnp.uint32)  # [b] positions in the whole set
    keys = jax.vmap(lambda i: jax.random.fold_in(key, i))(index)
    part = control_lib.Chunk(params, aux, arrays, index, control.labels_of(index))
    constraint = control.constraint_of(part)
    extra = {} if constraint is None else {"constraint": constraint}
    x, nfe = sampling.sample(keys, setup.sde, control.score_fn(setup, part), shape, setup.sampling_method,
                             **setup.sampling_options, **extra)
    return jax.lax.with_sharding_constraint(x, out), jnp.max(nfe)

  def draw(params: Any, key: jax.Array) -> tuple[np.ndarray, int]:
    parts, nfe = [], 0
    for start in range(0, num_samples, chunk):
      arrays = {name: _rows(a, start, chunk) for name, a in control.per_sample.items()}
      x, n = _draw(params, dict(control.aux), key, start, arrays)
      if jax.process_count() > 1:
        x = multihost_utils.process_allgather(x, tiled=True)
      parts.append(np.asarray(x)[:num_samples - start])
      nfe = max(nfe, int(n))
    return np.concatenate(parts), nfe

  return draw
