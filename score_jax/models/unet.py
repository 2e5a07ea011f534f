"""A small U-Net for low-resolution embedded data (8×8 digits, 32×32 shapes), fast on a CPU.

DDPM's layout at toy scale (Ho et al. 2020): two resolution levels of DDPM residual blocks,
one self-attention block at the lowest resolution, stride-2 convolutions down and
nearest + conv up, built from ``layers.py``.  Like every score_jax network it maps
(x, cond) to an output of x's shape and leaves the parametrization to ``score_fn``.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_jax.models import layers

Array = Any


# DDPM U-Net (Ho et al. 2020, App. B) at toy scale.
class UNet(nn.Module):
  """DDPM-style U-Net with a Fourier embedding of ``cond`` and optional class labels.

  ``cond`` [B] (or a scalar) is embedded as given with random Fourier features of std
  ``fourier_scale`` — the SDE time t ∈ [0, 1] that ``score_fn`` passes today (or log σ);
  unlike ``NCSNpp`` no logarithm is taken inside.

  Attributes:
    nf: base channels; level i has nf · ch_mult[i]; the embedding is 4 · nf wide.
    ch_mult: channel multiplier per level (len(ch_mult) − 1 halvings).
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attention: one self-attention block between the two middle residual blocks.
    dropout: dropout rate in residual blocks, active only with ``train=True``.
    fourier_scale: std of the Fourier frequencies of cond.
    skip_rescale: divide residual sums by √2.
    init_scale: init scale of the last layer of residual branches and of the output
      (0 ⇒ the network starts out predicting ≈ 0).
    num_classes: 0 for unconditional; else a label embedding with a null id num_classes.
    image_size: input height = width; must be divisible by 2^(len(ch_mult) − 1).
    num_channels: input (and output) channels.
    dtype: computation dtype (None: float32); as ``NCSNpp.dtype``.
    remat: rematerialise every residual block; as ``NCSNpp.remat``.
  """

  nf: int = 32
  ch_mult: Sequence[int] = (1, 2)
  num_res_blocks: int = 1
  attention: bool = True
  dropout: float = 0.0
  fourier_scale: float = 16.0
  skip_rescale: bool = True
  init_scale: float = 0.0
  num_classes: int = 0
  image_size: int = 8
  num_channels: int = 1
  dtype: Any = None
  remat: bool = False

  def __post_init__(self):
    if isinstance(self.ch_mult, list):
      object.__setattr__(self, "ch_mult", tuple(self.ch_mult))
    for field in ("nf", "num_res_blocks"):
      value = getattr(self, field)
      if not layers.is_int(value) or value < 1:
        raise ValueError(f"UNet.{field} must be an integer >= 1, got {value!r}.")
    layers.check_image_fields("UNet", image_size=self.image_size, num_channels=self.num_channels,
                              ch_mult=self.ch_mult)
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"UNet.dropout must be in [0, 1), got {self.dropout!r}.")
    if not self.fourier_scale > 0:
      raise ValueError(f"UNet.fourier_scale must be > 0, got {self.fourier_scale!r}.")
    if not layers.is_int(self.num_classes) or self.num_classes < 0:
      raise ValueError(f"UNet.num_classes must be an integer >= 0, got {self.num_classes!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, cond: Array, labels: Array | None = None, train: bool = False) -> Array:
    """Applies the network.

    Args:
      x: [B, image_size, image_size, num_channels].
      cond: [B] or scalar conditioning (SDE time t).
      labels: [B] int ids in [0, num_classes] (num_classes = null label), or None.
      train: enables dropout (needs the 'dropout' RNG stream).

    Returns:
      [B, image_size, image_size, num_channels].
    """
    layers.check_input("UNet", x, self.image_size, self.num_channels)
    batch, nf = x.shape[0], self.nf
    cond = jnp.broadcast_to(jnp.asarray(cond, jnp.float32), (batch,))  # [B]
    temb = layers.GaussianFourierProjection(nf, self.fourier_scale, name="fourier_proj")(cond)  # [B, 2·nf]
    temb = nn.Dense(4 * nf, kernel_init=layers.default_init(), name="temb_dense_0")(temb)
    temb = nn.Dense(4 * nf, kernel_init=layers.default_init(), name="temb_dense_1")(nn.silu(temb))
    if self.num_classes > 0:
      temb = temb + layers.LabelEmbedding(self.num_classes, 4 * nf, name="label_embed")(labels, batch)
    elif labels is not None:
      raise ValueError("UNet got labels but num_classes=0; set num_classes for a class-conditional network.")
    dtype, out_dtype = self.dtype, x.dtype
    if dtype is not None:
      x = x.astype(dtype)
    block = layers.remat_block(layers.ResnetBlockDDPM) if self.remat else layers.ResnetBlockDDPM
    resnet = functools.partial(block, dropout=self.dropout, skip_rescale=self.skip_rescale,
                               init_scale=self.init_scale, dtype=dtype)

    hs = [layers.conv3x3(nf, dtype=dtype)(x)]  # [B, S, S, nf]
    for i_level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        hs.append(resnet(out_ch=nf * mult)(hs[-1], temb, train))
      if i_level != len(self.ch_mult) - 1:
        hs.append(layers.Downsample(with_conv=True, dtype=dtype)(hs[-1]))  # [B, S / 2, S / 2, C]

    h = resnet()(hs[-1], temb, train)
    if self.attention:
      h = layers.AttnBlock(skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=dtype)(h)
    h = resnet()(h, temb, train)

    for i_level in reversed(range(len(self.ch_mult))):
      for _ in range(self.num_res_blocks + 1):
        h = resnet(out_ch=nf * self.ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if i_level != 0:
        h = layers.Upsample(with_conv=True, dtype=dtype)(h)  # [B, 2S', 2S', C]
    h = nn.silu(layers.group_norm(h.shape[-1], dtype=dtype)(h))
    out = layers.conv3x3(self.num_channels, init_scale=self.init_scale, dtype=dtype)(h)
    return out.astype(out_dtype)  # [B, S, S, num_channels]
