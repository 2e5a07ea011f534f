"""Building blocks of NCSN++ / DDPM++ and the small U-Net, as Flax Linen modules (NHWC).

All blocks use the swish (SiLU) nonlinearity and GroupNorm with min(C / 4, 32) groups, as
score_sde does; every convolution and dense layer is initialized with ``default_init``
(DDPM's variance scaling), the last layer of a residual branch with ``init_scale``
(0 ⇒ 1e-10, so that every block starts close to the identity), and the 1×1 layers that
score_sde builds as ``NIN`` (attention's q, k, v projections and the DDPM block's 1×1
shortcut) with ``NIN_INIT_SCALE`` = 0.1, NIN's default there.  The BigGAN block's shortcut
and ``Combine`` are 1×1 convolutions in score_sde too (``conv1x1``, scale 1), and the
attention output is a NIN with ``init_scale``; they keep those scales.

Blocks that take a conditioning embedding ``temb [B, E]`` add a per-channel bias
Dense(SiLU(temb)) after their first convolution; ``temb=None`` skips it (an
unconditional network).

Mixed precision follows Flax's convention: a block's ``dtype`` is the dtype it computes in
(None: that of its inputs and parameters, float32), its parameters stay float32 (Flax's
``param_dtype`` default).  With ``dtype=jnp.bfloat16`` convolutions, dense layers and the
attention products run in bfloat16, while GroupNorm's statistics and normalisation (Flax
reduces in float32) and the attention softmax are computed in float32.  ``remat_block``
wraps a residual block class in ``nn.remat`` (activations recomputed in the backward pass).
"""

from __future__ import annotations

import functools
import math
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from score_jax.models import up_or_down_sampling as uds

Array = Any

COMBINE_METHODS = ("sum", "cat")

# ---- Field and input validation shared by the image networks ----


def is_int(value: Any) -> bool:
  """True for Python ints, False for bools (which are ints too)."""
  return isinstance(value, int) and not isinstance(value, bool)


def check_image_fields(owner: str, *, image_size: Any, num_channels: Any, ch_mult: Any) -> list[int]:
  """Validates the fields every image U-Net shares and returns the resolutions it visits.

  Args:
    owner: class name used in error messages ("NCSNpp.image_size ...").
    image_size: input height = width.
    num_channels: input channels.
    ch_mult: channel multiplier per resolution level.

  Returns:
    [image_size, image_size / 2, …], one entry per level.

  Raises:
    ValueError: naming the offending field.
  """
  if not ch_mult or not all(is_int(m) and m >= 1 for m in ch_mult):
    raise ValueError(f"{owner}.ch_mult must be a non-empty sequence of integers >= 1, got {ch_mult!r}.")
  if not is_int(image_size) or image_size < 1:
    raise ValueError(f"{owner}.image_size must be an integer >= 1, got {image_size!r}.")
  factor = 2 ** (len(ch_mult) - 1)
  if image_size % factor:
    raise ValueError(f"{owner}.image_size={image_size} is not divisible by the down-sampling factor "
                     f"2^(len(ch_mult) - 1) = {factor}; use a multiple of {factor} or fewer ch_mult levels.")
  if not is_int(num_channels) or num_channels < 1:
    raise ValueError(f"{owner}.num_channels must be an integer >= 1, got {num_channels!r}.")
  return [image_size // 2**i for i in range(len(ch_mult))]


def check_input(owner: str, x: Array, image_size: int, num_channels: int) -> None:
  """Raises ValueError (at trace time, before compilation) unless x is [B, S, S, C] as configured."""
  if x.ndim != 4 or tuple(x.shape[1:]) != (image_size, image_size, num_channels):
    raise ValueError(f"{owner} expects x of shape [B, {image_size}, {image_size}, {num_channels}] "
                     f"(image_size, image_size, num_channels), got {tuple(x.shape)}.")


# ---- Initialization, normalization, convolutions ----


# Variance scaling, fan_avg, uniform (Ho et al. 2020, DDPM code; Song et al. 2021, App. H).
def default_init(scale: float = 1.0) -> nn.initializers.Initializer:
  """DDPM's weight initializer: variance scaling with fan_avg and a uniform distribution.

  Args:
    scale: variance scale; 0 is replaced by 1e-10 (near-zero but not exactly zero).

  Returns:
    A Flax initializer.
  """
  return nn.initializers.variance_scaling(1e-10 if scale == 0 else scale, "fan_avg", "uniform")


def num_groups(channels: int) -> int:
  """GroupNorm groups for ``channels``: min(C // 4, 32), lowered to a divisor of C if needed."""
  groups = max(1, min(channels // 4, 32))
  while channels % groups:
    groups -= 1
  return groups


# Group normalization (Wu & He 2018), in the form XLA fuses into one pass over x.
class GroupNorm(nn.Module):
  """GroupNorm over NHWC with per-channel scale and bias; the parameters of ``flax.linen.GroupNorm``.

  Per (example, group) statistics over H, W and the group's channels, as float32 sums of x
  and x² reduced over H·W first (a [B, C] result) and then over each group's channels; the
  normalisation is folded into one per-(example, channel) multiply-add, x·a + b with
  a = scale / √(var + ε), b = bias − mean·a, which XLA fuses with what follows (SiLU).  The
  variance is E[x²] − E[x]² (flax's "fast variance"), clipped at 0.

  Attributes:
    num_groups: groups; must divide the channel count.
    epsilon: added to the variance.
    dtype: the output's dtype (mixed precision: the compute dtype); None keeps x's.  The
      statistics and the multiply-add are float32 (or x's dtype if wider) either way.
  """

  num_groups: int
  epsilon: float = 1e-6
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x [B, ..., C].  Returns the normalised x, same shape, in ``dtype`` (default x's)."""
    channels = x.shape[-1]
    if channels % self.num_groups:
      raise ValueError(f"GroupNorm: {self.num_groups} groups do not divide {channels} channels.")
    scale = self.param("scale", nn.initializers.ones, (channels,))
    bias = self.param("bias", nn.initializers.zeros, (channels,))
    batch, size = x.shape[0], x.size // (x.shape[0] * channels)
    stat_dtype = jnp.promote_types(x.dtype, jnp.float32)
    xf = x.reshape(batch, size, channels).astype(stat_dtype)  # [B, H·W, C]
    sums = jnp.stack([jnp.sum(xf, axis=1), jnp.sum(jnp.square(xf), axis=1)], axis=1)  # [B, 2, C]
    sums = sums.reshape(batch, 2, self.num_groups, channels // self.num_groups).sum(-1)  # [B, 2, G]
    count = size * (channels // self.num_groups)
    mean, mean_sq = sums[:, 0] / count, sums[:, 1] / count  # [B, G]
    inv = lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    inv = jnp.repeat(inv, channels // self.num_groups, axis=-1)  # [B, C]
    mean = jnp.repeat(mean, channels // self.num_groups, axis=-1)
    a = inv * scale.astype(stat_dtype)
    b = bias.astype(stat_dtype) - mean * a
    shape = (batch,) + (1,) * (x.ndim - 2) + (channels,)
    out_dtype = self.dtype or x.dtype
    return (x.astype(stat_dtype) * a.reshape(shape) + b.reshape(shape)).astype(out_dtype)


def group_norm(channels: int, *, dtype: Any = None, groups: int | None = None, name: str | None = None) -> GroupNorm:
  """GroupNorm with ``groups`` (default ``num_groups(channels)``) groups and ε = 1e-6 (statistics in float32,
  output in ``dtype``)."""
  return GroupNorm(num_groups=num_groups(channels) if groups is None else groups, epsilon=1e-6, dtype=dtype, name=name)


def block_groups(group_counts: Sequence[tuple[str, int]], block: str | None) -> dict[str, int]:
  """The entries of a network's ``group_counts`` (``NCSNpp.group_counts``: (``"<block>/GroupNorm_<i>"``,
  groups) pairs) that belong to the sub-module named ``block``, keyed by the norm's own name."""
  if not group_counts or block is None:  # none set, or a block used on its own (no enclosing network)
    return {}
  prefix = block + "/"
  return {path[len(prefix):]: groups for path, groups in group_counts if path.startswith(prefix)}


def conv3x3(features: int, *, init_scale: float = 1.0, stride: int = 1, use_bias: bool = True,
            dtype: Any = None) -> nn.Conv:
  """3×3 'SAME' convolution with DDPM initialization (bias zero), computing in ``dtype``."""
  return nn.Conv(features, (3, 3), strides=(stride, stride), padding="SAME", use_bias=use_bias,
                 kernel_init=default_init(init_scale), dtype=dtype)


# Scale of score_sde's NIN (its default_init(0.1)): a 1×1 layer written as a dense map.
NIN_INIT_SCALE = 0.1


def conv1x1(features: int, *, init_scale: float = 1.0, use_bias: bool = True, dtype: Any = None) -> nn.Conv:
  """1×1 convolution (a per-pixel dense layer, DDPM's NIN) with DDPM initialization, computing in ``dtype``."""
  return nn.Conv(features, (1, 1), use_bias=use_bias, kernel_init=default_init(init_scale), dtype=dtype)


def remat_block(cls: type[nn.Module]) -> type[nn.Module]:
  """``nn.remat`` of a residual block class whose call is ``(x, temb, train)``.

  ``train`` (argument 3, counting the module itself) is static.  The wrapped class keeps
  ``cls``'s name, so automatic submodule names — and so parameter trees and checkpoints —
  are the same with and without rematerialisation.
  """
  if cls not in _REMAT_BLOCKS:
    wrapped = nn.remat(cls, static_argnums=(3,))
    wrapped.__name__ = wrapped.__qualname__ = cls.__name__
    _REMAT_BLOCKS[cls] = wrapped
  return _REMAT_BLOCKS[cls]


_REMAT_BLOCKS: dict[type, type] = {}


# Sinusoidal timestep embedding (Vaswani et al. 2017, as used by Ho et al. 2020).
def timestep_embedding(timesteps: Array, dim: int, *, max_positions: float = 10_000.0) -> Array:
  """Sinusoidal embedding of (possibly non-integer) timesteps.

  Frequencies are geometric from 1 down to 1 / max_positions; the first half of the output
  holds sines, the second cosines (one zero column is appended when ``dim`` is odd).

  Args:
    timesteps: [B] values, e.g. DDPM's integer step or 999·t.
    dim: embedding width.
    max_positions: the longest wavelength / 2π.

  Returns:
    [B, dim].
  """
  half = dim // 2
  scale = math.log(max_positions) / max(half - 1, 1)
  timesteps = jnp.asarray(timesteps)
  dtype = jnp.result_type(timesteps, jnp.float32)  # float32, or float64 for float64 timesteps
  freqs = jnp.exp(-scale * jnp.arange(half, dtype=dtype))  # [dim/2]
  args = timesteps.astype(dtype)[:, None] * freqs[None, :]  # [B, dim/2]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


# Random Fourier features of the noise level (Tancik et al. 2020; Song et al. 2021, App. H).
class GaussianFourierFeatures(nn.Module):
  """Random Fourier features of a scalar (Tancik et al. 2020; Song et al. 2021, App. C).

  Frequencies W ~ N(0, scale²) are drawn once at initialization and never trained (the
  parameter is behind ``stop_gradient``, as in score_sde, so a checkpoint carries them).

  Attributes:
    num_features: number of frequencies; the output has 2 × num_features channels.
    scale: standard deviation of the frequencies.
  """

  num_features: int = 64
  scale: float = 16.0

  @nn.compact
  def __call__(self, t: Array) -> Array:
    """Args: t [B].  Returns [B, 2 * num_features] = [sin 2πWt, cos 2πWt]."""
    w = self.param("W", nn.initializers.normal(stddev=self.scale), (self.num_features,))
    w = jax.lax.stop_gradient(w)
    proj = 2.0 * math.pi * t[:, None] * w[None, :]  # [B, F]
    return jnp.concatenate([jnp.sin(proj), jnp.cos(proj)], axis=-1)


GaussianFourierProjection = GaussianFourierFeatures


# Class embedding with a null label for classifier-free guidance (Ho & Salimans 2022).
class LabelEmbedding(nn.Module):
  """Class-label embedding with an extra "null" label for classifier-free guidance.

  Ids 0 … num_classes − 1 are classes; id ``num_classes`` is the null (unconditional)
  label (Ho & Salimans 2022), used when ``labels`` is None.

  Attributes:
    num_classes: number of real classes (> 0).
    features: embedding width.
  """

  num_classes: int
  features: int
  dtype: Any = None

  @nn.compact
  def __call__(self, labels: Array | None, batch: int) -> Array:
    """Args: labels [B] int ids in [0, num_classes] or None; batch: B.  Returns [B, features]."""
    if labels is None:
      labels = jnp.full((batch,), self.num_classes, jnp.int32)
    labels = jnp.broadcast_to(jnp.asarray(labels, jnp.int32), (batch,))
    return nn.Embed(self.num_classes + 1, self.features, dtype=self.dtype, name="embed")(labels)


# Convolution fused with FIR resampling (Karras et al. 2020, StyleGAN2).
class FIRConv2d(nn.Module):
  """Convolution with optional FIR 2× up- or down-sampling (StyleGAN2's resampling convolution).

  Attributes:
    features: output channels.
    kernel_size: odd spatial size of the convolution.
    up: upsample 2× (transposed convolution + FIR filter).
    down: downsample 2× (FIR filter + strided convolution).
    fir_kernel: FIR taps.
    use_bias: add a bias (initialized to zero).
    init_scale: scale of ``default_init`` for the weight.
    fused: evaluate the resampling convolution fused (default) or step by step.
    dtype: computation dtype (None: x's).
  """

  features: int
  kernel_size: int = 3
  up: bool = False
  down: bool = False
  fir_kernel: Sequence[float] = uds.DEFAULT_FIR_KERNEL
  use_bias: bool = True
  init_scale: float = 1.0
  fused: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x [B, H, W, C_in].  Returns [B, H', W', features] (H' = 2H, H / 2 or H)."""
    if self.up and self.down:
      raise ValueError("FIRConv2d cannot both up- and down-sample.")
    shape = (self.kernel_size, self.kernel_size, x.shape[-1], self.features)
    w = self.param("kernel", default_init(self.init_scale), shape)  # [K, K, C_in, C_out]
    if self.dtype is not None:
      x = x.astype(self.dtype)  # the uds helpers cast w to x's dtype
    if self.up:
      h = uds.upsample_conv_2d(x, w, self.fir_kernel, fused=self.fused)
    elif self.down:
      h = uds.conv_downsample_2d(x, w, self.fir_kernel, fused=self.fused)
    else:
      h = uds.conv2d_same(x, w)
    if self.use_bias:
      h = h + self.param("bias", nn.initializers.zeros, (self.features,)).astype(h.dtype)
    return h


# Resampling layers of DDPM (Ho et al. 2020) with score_sde's FIR variants (Song et al. 2021, App. H).
class Resample(nn.Module):
  """2× up- or down-sampling, with or without a 3×3 convolution.

  Without FIR: nearest-neighbour upsampling (then a conv) / average pooling (or a stride-2
  conv).  With FIR: ``upsample_2d`` / ``downsample_2d``, or the fused resampling convolution.

  Attributes:
    features: output channels (only with ``with_conv``; default: input channels).
    with_conv: use / fuse a 3×3 convolution.
    fir: FIR filtering instead of nearest-neighbour / average pooling.
    fir_kernel: FIR taps.
    up: upsample (True) or downsample (False).
    dtype: computation dtype of the convolution (None: x's).
  """

  features: int | None = None
  with_conv: bool = False
  fir: bool = False
  fir_kernel: Sequence[float] = uds.DEFAULT_FIR_KERNEL
  up: bool = True
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x [B, H, W, C] (H, W even to downsample).  Returns [B, H', W', features or C], H' = 2H or H / 2."""
    out_ch = self.features or x.shape[-1]
    if not self.with_conv and out_ch != x.shape[-1]:
      raise ValueError("Resampling without a convolution cannot change the channel count.")
    if self.fir and self.with_conv:
      return FIRConv2d(out_ch, 3, up=self.up, down=not self.up, fir_kernel=self.fir_kernel, dtype=self.dtype)(x)
    if self.fir:
      return uds.upsample_2d(x, self.fir_kernel) if self.up else uds.downsample_2d(x, self.fir_kernel)
    if self.up:
      h = uds.naive_upsample_2d(x)
      return conv3x3(out_ch, dtype=self.dtype)(h) if self.with_conv else h
    return conv3x3(out_ch, stride=2, dtype=self.dtype)(x) if self.with_conv else uds.naive_downsample_2d(x)


Upsample = functools.partial(Resample, up=True)
Downsample = functools.partial(Resample, up=False)


def _add_temb(h: Array, temb: Array | None, dtype: Any = None) -> Array:
  """Adds a per-channel bias Dense(SiLU(temb)) [B, 1, 1, C] to h [B, H, W, C]; called inside compact."""
  if temb is None:
    return h
  bias = nn.Dense(h.shape[-1], kernel_init=default_init(), dtype=dtype, name="temb_proj")(nn.silu(temb))  # [B, C]
  return h + bias[:, None, None, :]


def residual_sum(x: Array, h: Array, skip_rescale: bool) -> Array:
  """x + h, divided by √2 when ``skip_rescale`` (keeps the variance of the sum ≈ 1)."""
  return (x + h) / math.sqrt(2.0) if skip_rescale else x + h


# Residual block of DDPM (Ho et al. 2020, App. B), with score_sde's skip rescaling.
class ResnetBlockDDPM(nn.Module):
  """GN → SiLU → conv3x3 → +temb → GN → SiLU → dropout → conv3x3, plus a (projected) skip.

  Attributes:
    out_ch: output channels (default: input channels).
    conv_shortcut: project a channel-changing skip with a 3×3 conv instead of a 1×1.
    dropout: dropout rate (active only when called with ``train=True``).
    skip_rescale: divide the residual sum by √2.
    init_scale: init scale of the last convolution.
    dtype: computation dtype (None: float32, from the inputs and parameters).
    group_counts: the enclosing network's GroupNorm group-count overrides (``NCSNpp.group_counts``);
      those naming this block (``"<its name>/GroupNorm_<i>"``) set its norms' groups, the others
      have ``num_groups(C)``.
  """

  out_ch: int | None = None
  conv_shortcut: bool = False
  dropout: float = 0.1
  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Any = None
  group_counts: Sequence[tuple[str, int]] = ()

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
    """Args: x [B, H, W, C], temb [B, E] or None, train.  Returns [B, H, W, out_ch]."""
    out_ch, dtype = self.out_ch or x.shape[-1], self.dtype
    groups = block_groups(self.group_counts, self.name)
    norm = lambda c, i: group_norm(c, dtype=dtype, groups=groups.get(f"GroupNorm_{i}"), name=f"GroupNorm_{i}")  # noqa: E731
    h = conv3x3(out_ch, dtype=dtype)(nn.silu(norm(x.shape[-1], 0)(x)))
    h = _add_temb(h, temb, dtype)
    h = nn.silu(norm(out_ch, 1)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_ch, init_scale=self.init_scale, dtype=dtype)(h)  # [B, H, W, out_ch]
    if x.shape[-1] != out_ch:
      x = (conv3x3(out_ch, dtype=dtype)(x) if self.conv_shortcut
           else conv1x1(out_ch, init_scale=NIN_INIT_SCALE, dtype=dtype)(x))
    return residual_sum(x, h, self.skip_rescale)


# BigGAN residual block with up/down-sampling inside (Brock et al. 2019; Song et al. 2021, App. H).
class ResnetBlockBigGAN(nn.Module):
  """Residual block that optionally resamples both branches 2× (FIR or naive) after the first norm.

  Attributes:
    out_ch: output channels (default: input channels).
    up: upsample 2×.
    down: downsample 2×.
    dropout: dropout rate (active only when called with ``train=True``).
    fir: FIR resampling (else nearest / average pooling).
    fir_kernel: FIR taps.
    skip_rescale: divide the residual sum by √2.
    init_scale: init scale of the last convolution.
    dtype: computation dtype (None: float32, from the inputs and parameters).
    group_counts: the enclosing network's GroupNorm group-count overrides (``NCSNpp.group_counts``);
      those naming this block (``"<its name>/GroupNorm_<i>"``) set its norms' groups, the others
      have ``num_groups(C)``.
  """

  out_ch: int | None = None
  up: bool = False
  down: bool = False
  dropout: float = 0.1
  fir: bool = False
  fir_kernel: Sequence[float] = uds.DEFAULT_FIR_KERNEL
  skip_rescale: bool = True
  init_scale: float = 0.0
  dtype: Any = None
  group_counts: Sequence[tuple[str, int]] = ()

  def _resample(self, x: Array) -> Array:
    if self.up:
      return uds.upsample_2d(x, self.fir_kernel) if self.fir else uds.naive_upsample_2d(x)
    if self.down:
      return uds.downsample_2d(x, self.fir_kernel) if self.fir else uds.naive_downsample_2d(x)
    return x

  @nn.compact
  def __call__(self, x: Array, temb: Array | None = None, train: bool = False) -> Array:
    """Args: x [B, H, W, C], temb [B, E] or None, train.  Returns [B, H', W', out_ch]."""
    if self.up and self.down:
      raise ValueError("ResnetBlockBigGAN cannot both up- and down-sample.")
    out_ch, dtype = self.out_ch or x.shape[-1], self.dtype
    if dtype is not None:
      x = x.astype(dtype)  # the resampling filters run in x's dtype
    groups = block_groups(self.group_counts, self.name)
    norm = lambda c, i: group_norm(c, dtype=dtype, groups=groups.get(f"GroupNorm_{i}"), name=f"GroupNorm_{i}")  # noqa: E731
    h = nn.silu(norm(x.shape[-1], 0)(x))
    h = self._resample(h)  # [B, H', W', C]
    x = self._resample(x)
    h = conv3x3(out_ch, dtype=dtype)(h)
    h = _add_temb(h, temb, dtype)
    h = nn.silu(norm(out_ch, 1)(h))
    h = nn.Dropout(self.dropout)(h, deterministic=not train)
    h = conv3x3(out_ch, init_scale=self.init_scale, dtype=dtype)(h)  # [B, H', W', out_ch]
    if x.shape[-1] != out_ch or self.up or self.down:
      x = conv1x1(out_ch, dtype=dtype)(x)
    return residual_sum(x, h, self.skip_rescale)


# Spatial self-attention over the H×W positions (Vaswani et al. 2017; Ho et al. 2020).
class AttnBlock(nn.Module):
  """Single-head self-attention between all H·W pixels, residual.

  Attributes:
    skip_rescale: divide the residual sum by √2.
    init_scale: init scale of the output projection.
    dtype: computation dtype of the projections and products (None: float32); the
      softmax is always taken in float32 (or wider).
    group_counts: as in ``ResnetBlockBigGAN``: an entry ``"<its name>/GroupNorm_0"`` sets its norm's groups.
  """

  skip_rescale: bool = False
  init_scale: float = 0.0
  dtype: Any = None
  group_counts: Sequence[tuple[str, int]] = ()

  @nn.compact
  def __call__(self, x: Array) -> Array:
    """Args: x [B, H, W, C].  Returns [B, H, W, C]."""
    batch, height, width, channels = x.shape
    dtype = self.dtype
    groups = block_groups(self.group_counts, self.name).get("GroupNorm_0")
    h = group_norm(channels, dtype=dtype, groups=groups, name="GroupNorm_0")(x)
    q = conv1x1(channels, init_scale=NIN_INIT_SCALE, dtype=dtype)(h).reshape(batch, height * width, channels)  # [B, N, C]
    k = conv1x1(channels, init_scale=NIN_INIT_SCALE, dtype=dtype)(h).reshape(batch, height * width, channels)
    v = conv1x1(channels, init_scale=NIN_INIT_SCALE, dtype=dtype)(h).reshape(batch, height * width, channels)
    logits = jnp.einsum("bnc,bmc->bnm", q, k) / math.sqrt(channels)  # [B, N, N]
    probs = nn.softmax(logits.astype(jnp.promote_types(logits.dtype, jnp.float32)), axis=-1).astype(v.dtype)
    h = jnp.einsum("bnm,bmc->bnc", probs, v).reshape(x.shape)
    h = conv1x1(channels, init_scale=self.init_scale, dtype=dtype)(h)
    return residual_sum(x, h, self.skip_rescale)


# Progressive-growing skip combination (Karras et al. 2018/2020; Song et al. 2021, App. H).
class Combine(nn.Module):
  """Projects x to y's channels with a 1×1 conv, then sums or concatenates with y.

  Attributes:
    method: "sum" ([B, H, W, C_y]) or "cat" ([B, H, W, 2·C_y]).
    dtype: computation dtype of the projection (None: float32).
  """

  method: str = "cat"
  dtype: Any = None

  @nn.compact
  def __call__(self, x: Array, y: Array) -> Array:
    """Args: x [B, H, W, C_x], y [B, H, W, C_y].  Returns the combination."""
    if self.method not in COMBINE_METHODS:
      raise ValueError(f"Combine.method must be one of {list(COMBINE_METHODS)}, got {self.method!r}.")
    h = conv1x1(y.shape[-1], dtype=self.dtype)(x)
    return h + y if self.method == "sum" else jnp.concatenate([h, y], axis=-1)
