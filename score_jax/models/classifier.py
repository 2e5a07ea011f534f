"""Classifiers: the in-domain feature CNN of --mode=eval (``score_jax.jobs.features``) and the noise-conditional
classifiers p_t(y | x(t)) of classifier guidance.

``Classifier`` is a small CNN for the embedded datasets (8×8 grey digits, 32×32 RGB shapes):
the in-domain feature extractor of ``score_jax.jobs.features``.

It plays the role Inception-v3 plays for natural images: its penultimate layer (after the
ReLU, ``feature_dim`` wide) gives the features of FID / KID / precision-recall, and its
softmax the class predictions of the Inception Score.  Unlike the score networks of
``score_jax.models.MODELS`` it maps an image to class logits, not to an image, so it is not
in that table; build it directly.

Input convention, fixed whatever the score model was trained on: images [B, H, W, C] with
values in [0, 1] (``score_jax.data.embedded.to_unit_interval`` of the stored levels), so one
trained classifier serves VE ([0, 1]) and VP ([−1, 1]) runs of the same dataset.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from score_jax.models import layers

Array = Any


class Classifier(nn.Module):
  """Conv blocks (two 3×3 convs + ReLU each, 2×2 average pool between blocks), a global
  average pool, one hidden dense layer (the features) and a linear head (the logits).

  Attributes:
    widths: channels of each conv block; every block but the last halves the resolution
      (an 8×8 input with 2 blocks ends at 4×4, a 32×32 input with 3 blocks at 8×8).
    num_classes: K, the number of logits.
    feature_dim: D, width of the penultimate layer.
    image_size: input height = width; must be divisible by 2^(len(widths) − 1).
    num_channels: input channels (1 grey, 3 RGB).
  """

  widths: Sequence[int] = (32, 64)
  num_classes: int = 10
  feature_dim: int = 128
  image_size: int = 8
  num_channels: int = 1

  def __post_init__(self):
    if isinstance(self.widths, list):
      object.__setattr__(self, "widths", tuple(self.widths))
    if not self.widths or any(not isinstance(w, int) or isinstance(w, bool) or w < 1 for w in self.widths):
      raise ValueError(f"Classifier.widths must be a non-empty sequence of integers >= 1, got {self.widths!r}.")
    for field in ("num_classes", "feature_dim", "image_size", "num_channels"):
      value = getattr(self, field)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"Classifier.{field} must be an integer >= 1, got {value!r}.")
    factor = 2 ** (len(self.widths) - 1)
    if self.image_size % factor:
      raise ValueError(f"Classifier.image_size={self.image_size} is not divisible by 2^(len(widths) − 1) = {factor}; "
                       f"use fewer widths.")
    super().__post_init__()

  @nn.compact
  def __call__(self, images: Array) -> dict[str, Array]:
    """Features and logits.

    Args:
      images: [B, image_size, image_size, num_channels] in [0, 1].

    Returns:
      {"features": [B, feature_dim] (non-negative), "logits": [B, num_classes]}.
    """
    expected = (self.image_size, self.image_size, self.num_channels)
    if images.ndim != 4 or tuple(images.shape[1:]) != expected:
      raise ValueError(f"Classifier expects images [B, {', '.join(map(str, expected))}] in [0, 1], "
                       f"got shape {tuple(images.shape)}.")
    x = 2.0 * jnp.asarray(images, jnp.float32) - 1.0  # [B, S, S, C] in [−1, 1]
    for i, width in enumerate(self.widths):
      x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}_0")(x))
      x = nn.relu(nn.Conv(width, (3, 3), name=f"conv{i}_1")(x))  # [B, S_i, S_i, width]
      if i != len(self.widths) - 1:
        x = nn.avg_pool(x, (2, 2), strides=(2, 2))  # [B, S_i / 2, S_i / 2, width]
    x = jnp.mean(x, axis=(1, 2))  # [B, widths[-1]]
    features = nn.relu(nn.Dense(self.feature_dim, name="features")(x))  # [B, D]
    logits = nn.Dense(self.num_classes, name="head")(features)  # [B, K]
    return {"features": features, "logits": logits}


# --- noise-conditional classifiers (Song et al. 2021, sec. 5 and App. I.1) ------------------
# Classifier guidance needs ∇x log p_t(y | x(t)) at every noise level, so these networks take
# the noisy image x(t) in the score model's data range and its noise level σ̃(t) (the
# ``sigma`` conditioning of score_fn: the marginal std for VE, s(t)/m(t) otherwise).  Both
# standardize each image (mean 0, std 1: x(t)'s scale changes by orders of magnitude with σ)
# and embed log σ̃ with random Fourier features, as score_sde's CIFAR-10 classifier does.


def _check_int_fields(owner: str, module: nn.Module, fields: Sequence[str], low: int = 1) -> None:
  for field in fields:
    value = getattr(module, field)
    if not layers.is_int(value) or value < low:
      raise ValueError(f"{owner}.{field} must be an integer >= {low}, got {value!r}.")


def _standardize(x: Array) -> Array:
  """Per-image standardization [B, H, W, C], the std floored at 1/√(H·W·C) (as tf.image does)."""
  n = math.prod(x.shape[1:])
  mean = jnp.mean(x, axis=(1, 2, 3), keepdims=True)
  std = jnp.std(x, axis=(1, 2, 3), keepdims=True)
  return (x - mean) / jnp.maximum(std, 1.0 / math.sqrt(n))


class NoiseEmbedding(nn.Module):
  """Fourier features of log σ̃ followed by two dense layers (swish between): [B] -> [B, dim]."""

  dim: int = 128
  fourier_scale: float = 16.0

  @nn.compact
  def __call__(self, sigma: Array, batch: int) -> Array:
    sigma = jnp.broadcast_to(jnp.asarray(sigma, jnp.float32), (batch,))  # [B]
    emb = layers.GaussianFourierFeatures(self.dim // 2, self.fourier_scale, name="fourier")(jnp.log(sigma))
    emb = nn.Dense(4 * self.dim, name="dense0")(emb)
    return nn.Dense(4 * self.dim, name="dense1")(nn.swish(emb))  # [B, 4·dim]


# Kaiming normal with fan_out for the convolutions of a Wide-ResNet (Zagoruyko & Komodakis 2016).
_wrn_conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class _WideBlock(nn.Module):
  """Pre-activation basic block: GN-ReLU, 3×3 conv, + Dense(swish(temb)), GN-ReLU, 3×3 conv, plus
  the shortcut (average-pooled and zero-padded in channels when the shape changes)."""

  channels: int
  stride: int = 1
  activate_shortcut: bool = False

  @nn.compact
  def __call__(self, x: Array, temb: Array) -> Array:
    act = nn.relu(layers.group_norm(x.shape[-1])(x))
    shortcut = act if self.activate_shortcut else x
    h = nn.Conv(self.channels, (3, 3), (self.stride, self.stride), use_bias=False, kernel_init=_wrn_conv_init,
                name="conv1")(act)
    h = h + nn.Dense(self.channels, name="temb")(nn.swish(temb))[:, None, None, :]
    h = nn.relu(layers.group_norm(self.channels)(h))
    h = nn.Conv(self.channels, (3, 3), use_bias=False, kernel_init=_wrn_conv_init, name="conv2")(h)
    if shortcut.shape != h.shape:
      s = shortcut.shape[1] // h.shape[1]
      shortcut = nn.avg_pool(shortcut, (s, s), strides=(s, s))
      shortcut = jnp.pad(shortcut, ((0, 0), (0, 0), (0, 0), (0, h.shape[-1] - shortcut.shape[-1])))
    return h + shortcut


# Wide-ResNet (Zagoruyko & Komodakis 2016) conditioned on σ: score_sde's CIFAR-10 classifier
# for class-conditional sampling (Song et al. 2021, App. I.1: WRN-28-10).
class NoiseConditionalWideResNet(nn.Module):
  """WRN-depth-width with a σ̃ embedding added inside every block: logits of p_t(y | x(t)).

  Three groups of (depth − 4) / 6 blocks with 16·width, 32·width, 64·width channels (the
  last two start with stride 2), a final GroupNorm-ReLU, global average pool and a dense
  head.  WRN-28-10 (depth=28, width=10) is score_sde's CIFAR-10 classifier; depth=10,
  width=2 is a CPU-sized one.

  Attributes:
    depth: 6·n + 4 for n blocks per group (10, 16, 22, 28, …).
    width: the channel multiplier k.
    num_classes: K, the number of logits.
    embedding_dim: width of the Fourier features of log σ̃ (the embedding is 4× that).
    fourier_scale: std of the Fourier frequencies.
    image_size: input height = width; divisible by 4.
    num_channels: input channels.
  """

  depth: int = 28
  width: int = 10
  num_classes: int = 10
  embedding_dim: int = 128
  fourier_scale: float = 16.0
  image_size: int = 32
  num_channels: int = 3

  def __post_init__(self):
    _check_int_fields("NoiseConditionalWideResNet", self,
                      ("depth", "width", "num_classes", "embedding_dim", "image_size", "num_channels"))
    if self.depth < 10 or (self.depth - 4) % 6:
      raise ValueError(f"NoiseConditionalWideResNet.depth must be 6·n + 4 with n >= 1 blocks per group "
                       f"(10, 16, 22, 28, …), got {self.depth!r}.")
    if self.image_size % 4:
      raise ValueError(f"NoiseConditionalWideResNet.image_size must be divisible by 4 (two stride-2 groups), "
                       f"got {self.image_size!r}.")
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, sigma: Array) -> Array:
    """Logits.

    Args:
      x: [B, image_size, image_size, num_channels] noisy images x(t).
      sigma: [B] or scalar noise level σ̃(t) > 0.

    Returns:
      [B, num_classes].
    """
    layers.check_input("NoiseConditionalWideResNet", x, self.image_size, self.num_channels)
    temb = NoiseEmbedding(self.embedding_dim, self.fourier_scale, name="noise_embed")(sigma, x.shape[0])
    h = nn.Conv(16, (3, 3), use_bias=False, kernel_init=_wrn_conv_init, name="init_conv")(_standardize(x))
    blocks = (self.depth - 4) // 6
    for group, (mult, stride) in enumerate(((16, 1), (32, 2), (64, 2))):
      for i in range(blocks):
        h = _WideBlock(mult * self.width, stride if i == 0 else 1, activate_shortcut=(group == 0 and i == 0),
                       name=f"group{group}_block{i}")(h, temb)  # [B, S / stride, S / stride, mult·width]
    h = nn.relu(layers.group_norm(h.shape[-1])(h))
    h = jnp.mean(h, axis=(1, 2))  # [B, 64·width]
    return nn.Dense(self.num_classes, name="head")(h)  # [B, K]


# A CPU-sized noise-conditional classifier for the embedded datasets.
class NoiseConditionalCNN(nn.Module):
  """``Classifier``'s conv blocks with a σ̃ embedding added after each block's first conv (and
  GroupNorm before each ReLU): logits of p_t(y | x(t)) for 8×8 digits or 32×32 shapes.

  Attributes:
    widths: channels of each conv block; every block but the last halves the resolution.
    num_classes: K.
    hidden_dim: width of the dense layer before the head.
    embedding_dim: width of the Fourier features of log σ̃ (the embedding is 4× that).
    fourier_scale: std of the Fourier frequencies.
    image_size: input height = width; divisible by 2^(len(widths) − 1).
    num_channels: input channels.
  """

  widths: Sequence[int] = (32, 64)
  num_classes: int = 10
  hidden_dim: int = 128
  embedding_dim: int = 32
  fourier_scale: float = 16.0
  image_size: int = 8
  num_channels: int = 1

  def __post_init__(self):
    if isinstance(self.widths, list):
      object.__setattr__(self, "widths", tuple(self.widths))
    layers.check_image_fields("NoiseConditionalCNN", image_size=self.image_size, num_channels=self.num_channels,
                              ch_mult=self.widths)
    _check_int_fields("NoiseConditionalCNN", self, ("num_classes", "hidden_dim", "embedding_dim"))
    super().__post_init__()

  @nn.compact
  def __call__(self, x: Array, sigma: Array) -> Array:
    """Logits.

    Args:
      x: [B, image_size, image_size, num_channels] noisy images x(t).
      sigma: [B] or scalar noise level σ̃(t) > 0.

    Returns:
      [B, num_classes].
    """
    layers.check_input("NoiseConditionalCNN", x, self.image_size, self.num_channels)
    temb = NoiseEmbedding(self.embedding_dim, self.fourier_scale, name="noise_embed")(sigma, x.shape[0])
    h = _standardize(x)
    for i, width in enumerate(self.widths):
      h = nn.Conv(width, (3, 3), name=f"conv{i}_0")(h)
      h = h + nn.Dense(width, name=f"temb{i}")(nn.swish(temb))[:, None, None, :]
      h = nn.relu(layers.group_norm(width)(h))
      h = nn.relu(layers.group_norm(width)(nn.Conv(width, (3, 3), name=f"conv{i}_1")(h)))  # [B, S_i, S_i, width]
      if i != len(self.widths) - 1:
        h = nn.avg_pool(h, (2, 2), strides=(2, 2))
    h = jnp.mean(h, axis=(1, 2))  # [B, widths[-1]]
    h = nn.swish(nn.Dense(self.hidden_dim, name="hidden")(h) + nn.Dense(self.hidden_dim, name="temb_out")(temb))
    return nn.Dense(self.num_classes, name="head")(h)  # [B, K]


# Noise-conditional classifiers by name (config.noisy_classifier.model).
NOISY_CLASSIFIERS: dict[str, type[nn.Module]] = {"cnn": NoiseConditionalCNN, "wideresnet": NoiseConditionalWideResNet}


__all__ = ["Classifier", "NOISY_CLASSIFIERS", "NoiseConditionalCNN", "NoiseConditionalWideResNet", "NoiseEmbedding"]
