"""Randomness and time grids shared by the sampler drivers.

Sample i of a batch draws all of its noise from ``fold_in(key, i)`` (EDM's
StackedRandomGenerator idea), so a sample is the same whatever the batch size or the
number of devices the batch is split over.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

Array = Any


def per_sample_keys(key: jax.Array, n: int) -> jax.Array:
  """Keys [n]: key_i = fold_in(key, i); or ``key`` itself when it already holds n keys.

  Passing keys [n] lets a caller draw a large set in chunks and still give sample j the key
  it would have had in one batch (``fold_in(key, j)`` with j counted over the whole set).
  """
  key = jnp.asarray(key) if not isinstance(key, jax.Array) else key
  typed = jnp.issubdtype(key.dtype, jax.dtypes.prng_key)  # new-style keys; raw ones are uint32 [2]
  if key.ndim == (1 if typed else 2):
    if key.shape[0] != n:
      raise ValueError(f"key: got {key.shape[0]} per-sample keys for a batch of {n}.")
    return key
  return jax.vmap(lambda i: jax.random.fold_in(key, i))(jnp.arange(n, dtype=jnp.uint32))


def normal(keys: jax.Array, shape: tuple[int, ...], step: Array, dtype=jnp.float32) -> Array:
  """Standard normal noise of ``shape`` [B, ...] whose row i comes from fold_in(keys[i], step)."""
  return jax.vmap(lambda k: jax.random.normal(jax.random.fold_in(k, step), shape[1:], dtype))(keys)


def time_grid(T: float, eps: float, num_steps: int, shift: float = 1.0) -> Array:
  """num_steps + 1 times from T down to eps: equally spaced, or with ``shift`` s ≠ 1 the
  fraction r = (t − eps)/(T − eps) of an equal spacing mapped to s r/(1 + (s − 1) r), the
  timestep shift of Esser et al. 2024 (SD3, "Scaling Rectified Flow Transformers"): s > 1
  spends more steps at high noise.  Both ends stay where they are."""
  r = jnp.linspace(1.0, 0.0, num_steps + 1)
  if shift != 1.0:
    r = shift * r / (1.0 + (shift - 1.0) * r)
  return eps + (T - eps) * r


def full_t(t: Array, n: int) -> Array:
  """A scalar time broadcast to the batch: [n] (float32, or float64 under jax.enable_x64)."""
  return jnp.full((n,), t, dtype=float)
