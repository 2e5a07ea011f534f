"""NCSN++ (and DDPM++) as one Flax Linen module with typed fields.

Song et al. 2021 (ICLR), App. H: a U-Net whose options — BigGAN or DDPM residual blocks,
FIR resampling, 1/√2 skip rescaling, progressive input / output pyramids, Fourier or
positional noise embeddings — are fields here, never a ConfigDict.  DDPM++ is the
configuration

    NCSNpp(resblock_type="biggan", fir=False, skip_rescale=True, progressive="none",
           progressive_input="none", embedding_type="positional", ...)

(score_sde's cifar10_ddpmpp_continuous: nf 128, ch_mult (1, 2, 2, 2), 4 res blocks,
attention at 16, dropout 0.1, init_scale 0).

The network returns an array of x's shape and knows nothing about SDEs: dividing by σ (VE)
or turning ε into a score (VP / sub-VP) happens in ``score_jax.score_fn``, and so does
centering — inputs are taken as they come (score_sde's ``2x − 1`` for uncentered data
belongs to the data pipeline).
"""

from __future__ import annotations

import functools
import itertools
import re
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_jax.models import layers

Array = Any

RESBLOCK_TYPES = ("ddpm", "biggan")
PROGRESSIVE = ("none", "output_skip", "residual")
PROGRESSIVE_INPUT = ("none", "input_skip", "residual")
EMBEDDING_TYPES = ("fourier", "positional")
# The parameter paths of NCSNpp's GroupNorms: its blocks' and its own (output pyramid, last norm).
GROUP_NORM_PATH = re.compile(r"((ResnetBlockBigGAN|ResnetBlockDDPM|AttnBlock)_\d+/)?GroupNorm_\d+")


def _group_counts(value: Any) -> tuple[tuple[str, int], ...]:
  """``NCSNpp.group_counts`` as a sorted tuple of (path, groups) pairs (hashable, as module fields must be)."""
  if hasattr(value, "items"):
    value = value.items()
  try:
    pairs = tuple((path, groups) for path, groups in value)
  except (TypeError, ValueError):
    raise ValueError(f"NCSNpp.group_counts must be (norm path, groups) pairs or a dict, got {value!r}.") from None
  paths = [path for path, _ in pairs]
  if len(set(paths)) != len(paths):
    raise ValueError(f"NCSNpp.group_counts names a norm twice: {sorted(p for p in paths if paths.count(p) > 1)[0]!r}.")
  return tuple(sorted(pairs))


# NCSN++ / DDPM++ (Song et al. 2021, App. H), one module for both.
class NCSNpp(nn.Module):
  """NCSN++ / DDPM++ U-Net (Song et al. 2021, App. H).  Defaults: score_sde's CIFAR-10 NCSN++ (VE).

  Conditioning input ``cond`` [B] (or a scalar, broadcast):
    * ``embedding_type="fourier"``: the noise standard deviation σ > 0 (VE: σ(t)).  The
      module takes log σ itself and embeds it with ``nf`` random Fourier frequencies of
      std ``fourier_scale`` (score_sde's continuous NCSN++).
    * ``embedding_type="positional"``: used as given, through a sinusoidal embedding of
      width ``nf`` whose frequencies run from 1 to 1e-4 — DDPM's step index, or 999·t for
      continuous VP / sub-VP training (score_sde's DDPM++).
    * ``conditional=False``: ignored (may be None); the blocks get no time embedding.

  Attributes:
    nf: base channel count; level i has nf · ch_mult[i] channels; the embedding is 4 · nf wide.
    ch_mult: channel multiplier per resolution (len(ch_mult) − 1 halvings).
    num_res_blocks: residual blocks per level on the way down (one more on the way up).
    attn_resolutions: resolutions (side lengths) with self-attention after each block.
    dropout: dropout rate inside residual blocks; active only with ``train=True``.
    resblock_type: "ddpm" (separate up/down-sampling layers) or "biggan" (resampling inside
      residual blocks).
    resamp_with_conv: with "ddpm" blocks, up/down-sampling layers carry a 3×3 convolution.
    fir: FIR (StyleGAN2) resampling instead of nearest-neighbour / average pooling.
    fir_kernel: FIR taps.
    skip_rescale: divide residual and pyramid sums by √2.
    progressive: output pyramid — "none", "output_skip" (sum of upsampled per-level image
      outputs) or "residual" (upsampled features added back at every level).
    progressive_input: input pyramid — "none", "input_skip" (downsampled image combined at
      every level) or "residual" (downsampled, convolved image added at every level).
    progressive_combine: how "input_skip" combines — "sum" or "cat".
    embedding_type: "fourier" (of log σ) or "positional"; see above.
    fourier_scale: std of the Fourier frequencies.
    init_scale: init scale of the last layer of every residual branch and of the outputs.
    conditional: use the time / noise-level embedding at all.
    num_classes: 0 for an unconditional network; else a label embedding with ids
      0 … num_classes − 1 plus a null id ``num_classes`` (used when labels is None), added
      to the time embedding — the hook for classifier-free guidance.
    image_size: input height = width; must be divisible by 2^(len(ch_mult) − 1).
    num_channels: input (and output) channels.
    dtype: the dtype the network computes in (None: float32).  With ``jnp.bfloat16`` the
      convolutions, dense layers and attention products run in bfloat16 while parameters
      stay float32 (Flax's ``param_dtype``), the noise embedding and its MLP, GroupNorm
      statistics and the attention softmax are computed in float32, and the output is cast
      back to x's dtype.
    remat: rematerialise every residual block (``nn.remat``): its activations are
      recomputed in the backward pass instead of stored, trading compute for memory.
      Parameters and outputs are the same either way.
    group_counts: GroupNorm group counts that differ from ``layers.num_groups(C)`` = min(C/4, 32),
      as (parameter path of the norm, groups) pairs — ``("AttnBlock_0/GroupNorm_0", 32)``,
      ``("GroupNorm_1", 8)`` for the network's own output norms; a dict is accepted too.  Empty
      (the default): every norm has min(C/4, 32) groups, score_sde's NCSN++.  The diffusers
      converter (``score_jax.pretrained``) fills it in where diffusers' UNet2DModel counts differ.
  """

  nf: int = 128
  ch_mult: Sequence[int] = (1, 2, 2, 2)
  num_res_blocks: int = 4
  attn_resolutions: Sequence[int] = (16,)
  dropout: float = 0.1
  resblock_type: str = "biggan"
  resamp_with_conv: bool = True
  fir: bool = True
  fir_kernel: Sequence[float] = (1, 3, 3, 1)
  skip_rescale: bool = True
  progressive: str = "none"
  progressive_input: str = "residual"
  progressive_combine: str = "sum"
  embedding_type: str = "fourier"
  fourier_scale: float = 16.0
  init_scale: float = 0.0
  conditional: bool = True
  num_classes: int = 0
  image_size: int = 32
  num_channels: int = 3
  dtype: Any = None
  remat: bool = False
  group_counts: Sequence[tuple[str, int]] = ()

  def __post_init__(self):
    for field in ("ch_mult", "attn_resolutions", "fir_kernel"):  # lists from a ConfigDict become tuples
      value = getattr(self, field)
      if isinstance(value, (list, tuple)):
        object.__setattr__(self, field, tuple(value))
    object.__setattr__(self, "group_counts", _group_counts(self.group_counts))
    self._validate()
    super().__post_init__()

  def _validate(self) -> None:
    if not layers.is_int(self.nf) or self.nf < 1:
      raise ValueError(f"NCSNpp.nf must be an integer >= 1, got {self.nf!r}.")
    resolutions = layers.check_image_fields("NCSNpp", image_size=self.image_size, num_channels=self.num_channels,
                                     ch_mult=self.ch_mult)
    if not layers.is_int(self.num_res_blocks) or self.num_res_blocks < 1:
      raise ValueError(f"NCSNpp.num_res_blocks must be an integer >= 1, got {self.num_res_blocks!r}.")
    for res in self.attn_resolutions:
      if res not in resolutions:
        raise ValueError(f"NCSNpp.attn_resolutions has {res!r}, a resolution the network never reaches; "
                         f"with image_size={self.image_size} and {len(self.ch_mult)} levels it visits {resolutions}.")
    if not 0.0 <= self.dropout < 1.0:
      raise ValueError(f"NCSNpp.dropout must be in [0, 1), got {self.dropout!r}.")
    for field, options in (("resblock_type", RESBLOCK_TYPES), ("progressive", PROGRESSIVE),
                           ("progressive_input", PROGRESSIVE_INPUT),
                           ("progressive_combine", layers.COMBINE_METHODS), ("embedding_type", EMBEDDING_TYPES)):
      if getattr(self, field) not in options:
        raise ValueError(f"NCSNpp.{field} must be one of {list(options)}, got {getattr(self, field)!r}.")
    if len(self.fir_kernel) < 2 or sum(self.fir_kernel) == 0:
      raise ValueError(f"NCSNpp.fir_kernel must have >= 2 taps with a non-zero sum, got {self.fir_kernel!r}.")
    if not self.fourier_scale > 0:
      raise ValueError(f"NCSNpp.fourier_scale must be > 0, got {self.fourier_scale!r}.")
    if not self.init_scale >= 0:
      raise ValueError(f"NCSNpp.init_scale must be >= 0, got {self.init_scale!r}.")
    if not layers.is_int(self.num_classes) or self.num_classes < 0:
      raise ValueError(f"NCSNpp.num_classes must be an integer >= 0, got {self.num_classes!r}.")
    for path, groups in self.group_counts:
      if not GROUP_NORM_PATH.fullmatch(path) or not layers.is_int(groups) or groups < 1:
        raise ValueError(f"NCSNpp.group_counts has ({path!r}, {groups!r}); entries are (norm path, groups >= 1) "
                         "with paths like 'AttnBlock_0/GroupNorm_0', 'ResnetBlockBigGAN_3/GroupNorm_1' or 'GroupNorm_1'.")

  def _embedding(self, cond: Array | None, labels: Array | None, batch: int) -> Array | None:
    """The conditioning vector [B, 4·nf] fed to every residual block, or None."""
    temb = None
    if self.conditional:
      if cond is None:
        raise ValueError("NCSNpp with conditional=True needs cond (σ for 'fourier', the timestep for 'positional').")
      cond = jnp.asarray(cond)
      cond = jnp.broadcast_to(cond.astype(jnp.result_type(cond, jnp.float32)), (batch,))  # [B], float32 or wider
      if self.embedding_type == "fourier":
        emb = layers.GaussianFourierProjection(self.nf, self.fourier_scale, name="fourier_proj")(jnp.log(cond))
      else:
        emb = layers.timestep_embedding(cond, self.nf)  # [B, nf]
      temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), name="temb_dense_0")(emb)
      temb = nn.Dense(4 * self.nf, kernel_init=layers.default_init(), name="temb_dense_1")(nn.silu(temb))
    if self.num_classes > 0:
      yemb = layers.LabelEmbedding(self.num_classes, 4 * self.nf, name="label_embed")(labels, batch)
      temb = yemb if temb is None else temb + yemb  # [B, 4·nf]
    elif labels is not None:
      raise ValueError("NCSNpp got labels but num_classes=0; set num_classes for a class-conditional network.")
    return temb

  @nn.compact
  def __call__(self, x: Array, cond: Array | None, labels: Array | None = None, train: bool = False) -> Array:
    """Applies the network.

    Args:
      x: [B, image_size, image_size, num_channels] noisy images.
      cond: [B] or scalar conditioning (σ for "fourier", timestep for "positional"); see
        the class docstring.
      labels: [B] int class ids in [0, num_classes] (num_classes = null label), or None.
      train: enables dropout (needs the 'dropout' RNG stream).

    Returns:
      [B, image_size, image_size, num_channels], the raw network output.
    """
    layers.check_input("NCSNpp", x, self.image_size, self.num_channels)
    temb = self._embedding(cond, labels, x.shape[0])  # float32 (or wider)
    nf, levels, channels = self.nf, len(self.ch_mult), self.num_channels
    dtype, out_dtype = self.dtype, x.dtype
    if dtype is not None:
      x = x.astype(dtype)
    fir = dict(fir=self.fir, fir_kernel=self.fir_kernel)
    if self.resblock_type == "ddpm":
      block, options = layers.ResnetBlockDDPM, {}
    else:
      block, options = layers.ResnetBlockBigGAN, fir
    counts = self.group_counts
    resnet = functools.partial(layers.remat_block(block) if self.remat else block, dropout=self.dropout,
                               skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=dtype,
                               group_counts=counts, **options)
    attn = functools.partial(layers.AttnBlock, skip_rescale=self.skip_rescale, init_scale=self.init_scale, dtype=dtype,
                             group_counts=counts)
    conv3x3 = functools.partial(layers.conv3x3, dtype=dtype)
    own_norms = itertools.count()  # this module's own GroupNorm_<k>, named here so group_counts can address them

    def group_norm(channels: int) -> layers.GroupNorm:
      name = f"GroupNorm_{next(own_norms)}"
      return layers.group_norm(channels, dtype=dtype, groups=dict(counts).get(name), name=name)
    fir = dict(fir, dtype=dtype)

    # Down path: hs collects every skip, the first convolution included.
    input_pyramid = x  # [B, S, S, C], used by progressive_input
    hs = [conv3x3(nf)(x)]  # [B, S, S, nf]
    for i_level, mult in enumerate(self.ch_mult):
      for _ in range(self.num_res_blocks):
        h = resnet(out_ch=nf * mult)(hs[-1], temb, train)
        if h.shape[1] in self.attn_resolutions:
          h = attn()(h)
        hs.append(h)
      if i_level == levels - 1:
        break
      if self.resblock_type == "ddpm":
        h = layers.Downsample(with_conv=self.resamp_with_conv, **fir)(hs[-1])
      else:
        h = resnet(down=True)(hs[-1], temb, train)  # [B, S', S', C_level]
      if self.progressive_input == "input_skip":
        input_pyramid = layers.Downsample(**fir)(input_pyramid)  # [B, S', S', channels]
        h = layers.Combine(self.progressive_combine, dtype=dtype)(input_pyramid, h)
      elif self.progressive_input == "residual":
        input_pyramid = layers.Downsample(h.shape[-1], with_conv=True, **fir)(input_pyramid)
        input_pyramid = layers.residual_sum(input_pyramid, h, self.skip_rescale)
        h = input_pyramid
      hs.append(h)

    h = resnet()(hs[-1], temb, train)
    h = attn()(h)
    h = resnet()(h, temb, train)

    # Up path: num_res_blocks + 1 blocks per level, each consuming one skip.
    pyramid = None
    for i_level in reversed(range(levels)):
      for _ in range(self.num_res_blocks + 1):
        h = resnet(out_ch=nf * self.ch_mult[i_level])(jnp.concatenate([h, hs.pop()], axis=-1), temb, train)
      if h.shape[1] in self.attn_resolutions:
        h = attn()(h)
      if self.progressive == "output_skip":
        out = conv3x3(channels, init_scale=self.init_scale)(nn.silu(group_norm(h.shape[-1])(h)))
        pyramid = out if pyramid is None else layers.Upsample(**fir)(pyramid) + out  # [B, S', S', channels]
      elif self.progressive == "residual":
        if pyramid is None:
          pyramid = conv3x3(h.shape[-1])(nn.silu(group_norm(h.shape[-1])(h)))
        else:
          pyramid = layers.Upsample(h.shape[-1], with_conv=True, **fir)(pyramid)
          pyramid = layers.residual_sum(pyramid, h, self.skip_rescale)
          h = pyramid
      if i_level != 0:
        if self.resblock_type == "ddpm":
          h = layers.Upsample(with_conv=self.resamp_with_conv, **fir)(h)
        else:
          h = resnet(up=True)(h, temb, train)
    assert not hs, "every skip connection is consumed"

    if self.progressive == "output_skip":
      return pyramid.astype(out_dtype)  # [B, S, S, channels]
    h = nn.silu(group_norm(h.shape[-1])(h))
    return conv3x3(channels, init_scale=self.init_scale)(h).astype(out_dtype)  # [B, S, S, channels]
