"""2× up- and down-sampling of NHWC images with a FIR filter, and the naive fallbacks.

Everything here is a pure function of arrays (jnp / lax, no parameters): the Flax modules
that own convolution weights live in ``layers.py``.  Conventions:

* images are NHWC, ``x [B, H, W, C]``; the resampling factor applies to H and W;
* a FIR kernel is given as 1-D taps (``(1, 3, 3, 1)``, made separable by an outer product)
  or as a square 2-D array, and is normalized to sum 1 before the gain is applied;
* ``upfirdn2d`` applies a true convolution (the kernel is flipped), as StyleGAN2 does, so
  asymmetric kernels behave as signal-processing filters.

With the default kernel ``(1, 3, 3, 1)`` the pair is pixel-centre aligned: upsampling
interpolates at quarter-pixel offsets and downsampling averages four taps around each
output centre, so linear ramps are reproduced exactly away from the border.
"""

from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np
from jax import lax

Array = Any
KernelLike = Sequence[float] | np.ndarray

DEFAULT_FIR_KERNEL: tuple[int, ...] = (1, 3, 3, 1)
_DIMS = ("NHWC", "HWIO", "NHWC")


def setup_kernel(k: KernelLike) -> np.ndarray:
  """Normalized 2-D FIR kernel.

  Args:
    k: 1-D taps (made separable as the outer product k kᵀ) or a square 2-D kernel.

  Returns:
    [K, K] float64 array summing to 1.

  Raises:
    ValueError: empty, non-square, more than 2-D, or zero-sum kernel.
  """
  k = np.asarray(k, dtype=np.float64)
  if k.ndim == 1:
    k = np.outer(k, k)
  if k.ndim != 2 or k.shape[0] != k.shape[1] or k.size == 0:
    raise ValueError(f"FIR kernel must be 1-D taps or a square 2-D array, got shape {k.shape}.")
  total = k.sum()
  if total == 0:
    raise ValueError("FIR kernel taps sum to 0; they cannot be normalized.")
  return k / total


# Upsample, FIR-filter, downsample (StyleGAN2's upfirdn2d; Karras et al. 2020, App. B).
def upfirdn2d(x: Array, k: np.ndarray, *, up: int = 1, down: int = 1, pad: tuple[int, int] = (0, 0),
              separable: bool = True) -> Array:
  """Zero-insertion upsampling by ``up``, padding, FIR convolution, decimation by ``down``.

  Args:
    x: [B, H, W, C] images.
    k: [K, K] filter (used as given: no normalization here); convolved, i.e. flipped.
    up: upsampling factor (``up − 1`` zeros inserted after every sample).
    down: decimation factor (stride of the filter).
    pad: (before, after) padding of both spatial axes after upsampling; negative crops.
    separable: when k is an outer product a bᵀ (every kernel ``setup_kernel`` makes from 1-D
      taps) and up or down is 1, filter H with a and W with b as shifted slices (see
      ``_upfirdn1d``); False forces one depthwise 2-D convolution (the reference form).

  Returns:
    [B, H', W', C] with H' = (H·up + pad[0] + pad[1] − K) // down + 1 (same for W).
  """
  batch, height, width, channels = x.shape
  k = np.asarray(k)
  taps = _separable_taps(k) if separable and (up == 1 or down == 1) else None
  if taps is not None:
    # k = a bᵀ: one 1-D pass along H with a, one along W with b (2K instead of K² products).
    x = _upfirdn1d(x, taps[0], axis=1, up=up, down=down, pad=pad)
    return _upfirdn1d(x, taps[1], axis=2, up=up, down=down, pad=pad)
  if up > 1:
    x = x.reshape(batch, height, 1, width, 1, channels)
    x = jnp.pad(x, ((0, 0), (0, 0), (0, up - 1), (0, 0), (0, up - 1), (0, 0)))
    x = x.reshape(batch, height * up, width * up, channels)  # [B, H·up, W·up, C]
  p0, p1 = pad
  x = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (p0, p1, 0), (p0, p1, 0), (0, 0, 0)))
  # Depthwise (one filter per channel) cross-correlation with the flipped kernel.
  flipped = jnp.asarray(k[::-1, ::-1], x.dtype)
  w = jnp.broadcast_to(flipped[:, :, None, None], (*flipped.shape, 1, channels))  # [K, K, 1, C]
  return lax.conv_general_dilated(x, w, window_strides=(down, down), padding="VALID",
                                  dimension_numbers=_DIMS, feature_group_count=channels)


def _separable_taps(k: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
  """(a, b) with k = a bᵀ (to float64 round-off), or None when k is not separable."""
  if k.ndim != 2 or not np.all(np.isfinite(k)):
    return None
  u, s, vt = np.linalg.svd(np.asarray(k, np.float64))
  if s[0] == 0 or (s.size > 1 and s[1] > 1e-12 * s[0]):
    return None
  a, b = u[:, 0] * np.sqrt(s[0]), vt[0] * np.sqrt(s[0])
  if a.sum() < 0:  # SVD's sign is arbitrary: flip both (same product) so a, b are positive for positive taps
    a, b = -a, -b
  if not np.allclose(np.outer(a, b), k, rtol=0.0, atol=1e-14 * np.abs(k).max()):
    return None
  return a, b


def _upfirdn1d(x: Array, k: np.ndarray, *, axis: int, up: int, down: int, pad: tuple[int, int]) -> Array:
  """``upfirdn2d`` along one axis with 1-D taps k, as a weighted sum of shifted slices.

  Output n is Σ_t k[K−1−t] · z[n·down + t − pad[0]], z the zero-inserted input.  With up = 1
  these are K strided slices of the padded input.  With up > 1 (down = 1) it is polyphase:
  output phase r = n mod up reads only the taps t ≡ pad[0] − r (mod up), so each phase is a
  short filter on the input itself, and the phases are interleaved (no zeros are multiplied).
  XLA fuses the slices and weighted sums into elementwise loops: no convolution, no zero-stuffed copy.
  """
  length, size = x.shape[axis], k.shape[0]
  flipped = k[::-1]
  p0, p1 = pad
  n_out = (length * up + p0 + p1 - size) // down + 1

  def shifted(arr: Array, start: int, count: int, stride: int) -> Array:
    return lax.slice_in_dim(arr, start, start + (count - 1) * stride + 1, stride, axis)

  def weighted_sum(terms: list[tuple[float, Array]]) -> Array:
    out = None
    for weight, term in terms:
      term = term * jnp.asarray(weight, x.dtype)
      out = term if out is None else out + term
    return out

  if up == 1:
    xp = lax.pad(x, jnp.zeros((), x.dtype), [(p0, p1, 0) if d == axis else (0, 0, 0) for d in range(x.ndim)])
    return weighted_sum([(flipped[t], shifted(xp, t, n_out, down)) for t in range(size) if flipped[t] != 0])
  per_phase = -(-n_out // up)  # the last phase may run one past n_out: cropped below
  # Input offset of tap t in phase r: (r + t − p0) / up, for the taps of that phase.
  phases = [[(t, (r + t - p0) // up) for t in range(size) if (r + t - p0) % up == 0] for r in range(up)]
  offsets = [o for taps in phases for _, o in taps]
  lo = max(0, -min(offsets))
  hi = max(0, max(offsets) + per_phase - length)
  xp = lax.pad(x, jnp.zeros((), x.dtype), [(lo, hi, 0) if d == axis else (0, 0, 0) for d in range(x.ndim)])
  outs = []
  for taps in phases:
    terms = [(flipped[t], shifted(xp, o + lo, per_phase, 1)) for t, o in taps if flipped[t] != 0]
    outs.append(weighted_sum(terms) if terms else jnp.zeros_like(shifted(xp, lo, per_phase, 1)))
  y = jnp.stack(outs, axis=axis + 1)  # [..., ⌈n_out / up⌉, up, ...]
  y = y.reshape(*x.shape[:axis], per_phase * up, *x.shape[axis + 1:])
  return y if per_phase * up == n_out else lax.slice_in_dim(y, 0, n_out, axis=axis)


def _up_pad(kernel_size: int, factor: int) -> tuple[int, int]:
  p = kernel_size - factor
  return (p + 1) // 2 + factor - 1, p // 2


def _down_pad(kernel_size: int, factor: int) -> tuple[int, int]:
  p = kernel_size - factor
  return (p + 1) // 2, p // 2


def upsample_2d(x: Array, k: KernelLike = DEFAULT_FIR_KERNEL, *, factor: int = 2, gain: float = 1.0) -> Array:
  """FIR upsampling: insert zeros, then filter with ``k`` scaled by gain · factor².

  Args:
    x: [B, H, W, C].
    k: FIR taps (see ``setup_kernel``).
    factor: integer upsampling factor.
    gain: overall signal gain.

  Returns:
    [B, H·factor, W·factor, C].
  """
  kk = setup_kernel(k) * (gain * factor**2)
  return upfirdn2d(x, kk, up=factor, pad=_up_pad(kk.shape[0], factor))


def downsample_2d(x: Array, k: KernelLike = DEFAULT_FIR_KERNEL, *, factor: int = 2, gain: float = 1.0) -> Array:
  """FIR downsampling: filter with ``k`` scaled by ``gain``, keep every ``factor``-th sample.

  Args:
    x: [B, H, W, C] with H and W divisible by ``factor``.
    k: FIR taps (see ``setup_kernel``).
    factor: integer downsampling factor.
    gain: overall signal gain.

  Returns:
    [B, H // factor, W // factor, C].
  """
  kk = setup_kernel(k) * gain
  return upfirdn2d(x, kk, down=factor, pad=_down_pad(kk.shape[0], factor))


def naive_upsample_2d(x: Array, *, factor: int = 2) -> Array:
  """Nearest-neighbour upsampling.  Args: x [B, H, W, C].  Returns [B, H·f, W·f, C]."""
  batch, height, width, channels = x.shape
  x = jnp.broadcast_to(x[:, :, None, :, None, :], (batch, height, factor, width, factor, channels))
  return x.reshape(batch, height * factor, width * factor, channels)


def naive_downsample_2d(x: Array, *, factor: int = 2) -> Array:
  """Average pooling over factor × factor blocks.  Args: x [B, H, W, C].  Returns [B, H/f, W/f, C]."""
  batch, height, width, channels = x.shape
  x = x.reshape(batch, height // factor, factor, width // factor, factor, channels)
  return x.mean(axis=(2, 4))


def _same_pad(kernel_size: int) -> tuple[int, int]:
  lo = (kernel_size - 1) // 2
  return lo, kernel_size - 1 - lo


def conv2d_same(x: Array, w: Array) -> Array:
  """'SAME' cross-correlation, as flax ``nn.Conv``.

  Args:
    x: [B, H, W, C_in].
    w: [K, K, C_in, C_out].

  Returns:
    [B, H, W, C_out].
  """
  pad = _same_pad(w.shape[0])
  return lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), (pad, pad), dimension_numbers=_DIMS)


def _check_conv_weight(w: Array, x: Array) -> None:
  if w.ndim != 4 or w.shape[0] != w.shape[1] or w.shape[2] != x.shape[-1]:
    raise ValueError(f"Convolution weight must be [K, K, C_in={x.shape[-1]}, C_out], got {tuple(w.shape)}.")


# Fused transposed convolution + FIR filter (StyleGAN2's upsample_conv_2d; Karras et al. 2020).
def upsample_conv_2d(x: Array, w: Array, k: KernelLike = DEFAULT_FIR_KERNEL, *, factor: int = 2,
                     gain: float = 1.0, fused: bool = True) -> Array:
  """Convolution at the upsampled resolution: ``conv_same(upsample_2d(x, k), w)``.

  ``fused=True`` computes it as a stride-``factor`` transposed convolution followed by the
  FIR filter (no full-resolution input is materialized before the convolution);
  ``fused=False`` runs the two steps literally.  The two agree except on the outermost
  (K_w − 1) / 2 output pixels, where the literal version sees zero padding of the
  upsampled image.

  Args:
    x: [B, H, W, C_in].
    w: [K_w, K_w, C_in, C_out] convolution weight (cross-correlation, as flax ``nn.Conv``).
    k: FIR taps.
    factor: upsampling factor.
    gain: signal gain of the FIR upsampling.
    fused: fused or sequential evaluation.

  Returns:
    [B, H·factor, W·factor, C_out].
  """
  _check_conv_weight(w, x)
  if not fused:
    return conv2d_same(upsample_2d(x, k, factor=factor, gain=gain), w)
  kk = setup_kernel(k) * (gain * factor**2)
  taps, width = kk.shape[0], w.shape[0]
  # Output index n of the filter reads transposed-conv sample n + a − P0 (P0: the FIR up pad).
  lo = _up_pad(taps, factor)[0] + _same_pad(width)[0]
  hi = taps + factor + width - 3 - lo
  v = lax.conv_general_dilated(x, w.astype(x.dtype), (1, 1), ((lo, hi), (lo, hi)),
                               lhs_dilation=(factor, factor), dimension_numbers=_DIMS)  # [B, H·f + K − 1, ..]
  return upfirdn2d(v, kk)


# Fused FIR filter + strided convolution (StyleGAN2's conv_downsample_2d; Karras et al. 2020).
def conv_downsample_2d(x: Array, w: Array, k: KernelLike = DEFAULT_FIR_KERNEL, *, factor: int = 2,
                       gain: float = 1.0, fused: bool = True) -> Array:
  """Convolution at the input resolution, then FIR downsampling: ``downsample_2d(conv_same(x, w), k)``.

  ``fused=True`` filters first and evaluates the convolution only at the kept positions
  (a stride-``factor`` convolution, factor² fewer products); ``fused=False`` runs the two
  steps literally.  They agree except on the outermost output pixel ring.

  Args:
    x: [B, H, W, C_in] with H and W divisible by ``factor``.
    w: [K_w, K_w, C_in, C_out] convolution weight.
    k: FIR taps.
    factor: downsampling factor.
    gain: signal gain of the FIR filter.
    fused: fused or sequential evaluation.

  Returns:
    [B, H // factor, W // factor, C_out].
  """
  _check_conv_weight(w, x)
  if not fused:
    return downsample_2d(conv2d_same(x, w), k, factor=factor, gain=gain)
  kk = setup_kernel(k) * gain
  taps, width = kk.shape[0], w.shape[0]
  lo = _down_pad(taps, factor)[0] + _same_pad(width)[0]
  hi = width + taps - 1 - factor - lo
  g = upfirdn2d(x, kk, pad=(lo, hi))  # [B, H + K_w − 2, W + K_w − 2, C_in]
  return lax.conv_general_dilated(g, w.astype(x.dtype), (factor, factor), "VALID", dimension_numbers=_DIMS)
