"""MLP score network for vector data (toy targets, embedded low-dimensional data).

The network is time-conditional only: it maps (x [B, D], t [B]) to an output of x's
shape.  What that output means (noise ε, score, ...) is decided outside, in
``score_jax.score_fn``; nothing here knows about SDEs.
"""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from score_jax.models.layers import GaussianFourierFeatures

Array = Any


class ResidualBlock(nn.Module):
  """Pre-activation residual MLP block with an additive time embedding (SiLU).

  Attributes:
    hidden: width of the block.
  """

  hidden: int

  @nn.compact
  def __call__(self, h: Array, temb: Array) -> Array:
    """Args: h [B, hidden], temb [B, E].  Returns [B, hidden]."""
    z = nn.Dense(self.hidden, name="dense_0")(nn.silu(h))
    z = z + nn.Dense(self.hidden, name="time_proj")(temb)  # per-block projection of the time embedding
    z = nn.Dense(self.hidden, name="dense_1")(nn.silu(z))
    return h + z


class MLPScore(nn.Module):
  """Residual MLP on [x, Fourier(t)] -> output of x's shape.

  Attributes:
    hidden: width of the residual stream.
    num_layers: number of residual blocks.
    embed_dim: width of the time embedding (Fourier features -> Dense -> SiLU -> Dense).
    fourier_scale: std of the random Fourier frequencies of t.
    num_fourier_features: number of Fourier frequencies (features = 2 × this).
    zero_init_output: start with a zero output layer (the network predicts 0 at init).
  """

  hidden: int = 128
  num_layers: int = 3
  embed_dim: int = 128
  fourier_scale: float = 16.0
  num_fourier_features: int = 64
  zero_init_output: bool = False

  def __post_init__(self):
    for field in ("hidden", "embed_dim", "num_fourier_features"):
      value = getattr(self, field)
      if not isinstance(value, int) or value < 1:
        raise ValueError(f"MLPScore.{field} must be an integer >= 1, got {value!r}.")
    if not isinstance(self.num_layers, int) or self.num_layers < 0:
      raise ValueError(f"MLPScore.num_layers must be an integer >= 0, got {self.num_layers!r}.")
    if not self.fourier_scale > 0:
      raise ValueError(f"MLPScore.fourier_scale must be > 0, got {self.fourier_scale!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, t: Array, labels: Array | None = None, train: bool = False) -> Array:
    """Args:
      x: [B, ...] inputs (flattened internally).
      t: [B] (or scalar) times, as the SDE defines them.
      labels: must be None (the MLP is unconditional); the argument keeps the signature of
        every score_jax network, ``(x, cond, labels=None, train=False)``.
      train: unused (no dropout); same reason.

    Returns:
      [B, ...], the shape of x.
    """
    del train
    if labels is not None:
      raise ValueError("MLPScore is unconditional: it takes no labels (use model 'unet' or 'ncsnpp' with num_classes).")
    batch = x.shape[0]
    t = jnp.broadcast_to(jnp.asarray(t, x.dtype), (batch,))  # [B]
    temb = GaussianFourierFeatures(self.num_fourier_features, self.fourier_scale, name="time_fourier")(t)  # [B, 2F]
    temb = nn.Dense(self.embed_dim, name="time_dense_0")(temb)
    temb = nn.Dense(self.embed_dim, name="time_dense_1")(nn.silu(temb))  # [B, E]

    flat = x.reshape(batch, -1)  # [B, D]
    h = nn.Dense(self.hidden, name="input")(flat)  # [B, H]
    for i in range(self.num_layers):
      h = ResidualBlock(self.hidden, name=f"block_{i}")(h, temb)
    kernel_init = nn.initializers.zeros if self.zero_init_output else nn.initializers.lecun_normal()
    out = nn.Dense(flat.shape[-1], kernel_init=kernel_init, name="output")(nn.silu(h))  # [B, D]
    return out.reshape(x.shape)
