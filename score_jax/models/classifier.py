"""A small CNN classifier for the embedded datasets (8×8 grey digits, 32×32 RGB shapes): the
in-domain feature extractor of ``score_jax.evaluate``.

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

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

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


__all__ = ["Classifier"]
