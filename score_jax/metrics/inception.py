"""Inception-v3 as used for FID / KID / Inception Score, as a Flax Linen module (NHWC).

This is the "FID Inception": the network of the 2015-12-05 TensorFlow Inception graph
that Heusel et al. (2017) used for FID, in the layer layout of torchvision's Inception3
(the layout of pytorch-fid's converted weights).  It differs from the ImageNet-trained
torchvision Inception-v3 in:

* the average pools of the Mixed_5b-5d (A), Mixed_6b-6e (C) and Mixed_7b (E) blocks
  exclude the zero padding from the average (count_include_pad=False);
* the pooling branch of the last block, Mixed_7c, is a 3×3 *max* pool (stride 1, pad 1);
* the classifier has 1008 outputs; there is no auxiliary classifier;
* inputs are resized to 299×299 and scaled to [−1, 1] inside the module.

Every convolution is bias-free and followed by BatchNorm (inference mode, running
statistics, eps = 1e-3) and ReLU.

Weights are never downloaded: ``load_inception_params(path)`` reads a local ``.npz``
that ``python -m score_jax.metrics.convert_inception`` makes once from pytorch-fid's
``pt_inception-2015-12-05-6726825d.pth``.

Its outputs, resize and input scaling included, are checked against pytorch-fid's own network
(with deterministic random weights) in ``tests/test_inception_reference.py``; the fixture is
made by ``tools/inception_fixture.py``.
"""

from __future__ import annotations

import functools
import os
from typing import Any, Iterable, Mapping, Optional, Sequence, Union

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

Array = Any
PathLike = Union[str, os.PathLike]

INPUT_SIZE = 299  # height = width the network sees after the internal resize
POOL_FEATURES = 2048  # dimension of the pool_3 features FID uses
NUM_CLASSES = 1008  # the 2015 graph's classifier: 1000 ImageNet classes + 8 unused
BN_EPSILON = 1e-3
PTH_FILENAME = "pt_inception-2015-12-05-6726825d.pth"
SEPARATOR = "/"  # joins the nested variable names into the flat .npz keys


def _pad(kh: int, kw: int) -> tuple[tuple[int, int], tuple[int, int]]:
  """Symmetric 'same' padding of an odd kh × kw kernel at stride 1."""
  return ((kh // 2, kh // 2), (kw // 2, kw // 2))


class BasicConv(nn.Module):
  """Conv (no bias) -> BatchNorm (running statistics, eps 1e-3) -> ReLU.

  Attributes:
    features: output channels.
    kernel_size: (kh, kw).
    strides: (sh, sw).
    padding: "VALID" or explicit ((top, bottom), (left, right)).
    precision: precision of the convolution (see ``InceptionV3.precision``).
  """

  features: int
  kernel_size: tuple[int, int]
  strides: tuple[int, int] = (1, 1)
  padding: Any = "VALID"
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    x = nn.Conv(self.features, self.kernel_size, strides=self.strides, padding=self.padding,
                use_bias=False, precision=self.precision, name="conv")(x)
    x = nn.BatchNorm(use_running_average=True, epsilon=BN_EPSILON, name="bn")(x)
    return nn.relu(x)


def _avg_pool_exclude_pad(x: Array) -> Array:
  """3×3 average pool, stride 1, pad 1, averaging only the non-padded inputs."""
  return nn.avg_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)), count_include_pad=False)


def _max_pool_same(x: Array) -> Array:
  """3×3 max pool, stride 1, pad 1 (padding never wins the max)."""
  return nn.max_pool(x, (3, 3), strides=(1, 1), padding=((1, 1), (1, 1)))


def _max_pool_reduce(x: Array) -> Array:
  """3×3 max pool, stride 2, no padding: [B, H, W, C] -> [B, (H − 3)//2 + 1, …, C]."""
  return nn.max_pool(x, (3, 3), strides=(2, 2), padding="VALID")


# Inception module with factorised 5×5 (Szegedy et al. 2016, Fig. 5; Mixed_5b-5d).
class InceptionA(nn.Module):
  """35×35 block: 1×1 | 1×1-5×5 | 1×1-3×3-3×3 | avgpool(excl. pad)-1×1 -> 224 + pool_features channels."""

  pool_features: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(64, (1, 1), name="branch1x1")(x)
    b5 = conv(48, (1, 1), name="branch5x5_1")(x)
    b5 = conv(64, (5, 5), padding=_pad(5, 5), name="branch5x5_2")(b5)
    b3 = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    b3 = conv(96, (3, 3), padding=_pad(3, 3), name="branch3x3dbl_2")(b3)
    b3 = conv(96, (3, 3), padding=_pad(3, 3), name="branch3x3dbl_3")(b3)
    bp = conv(self.pool_features, (1, 1), name="branch_pool")(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b5, b3, bp], axis=-1)


# Grid-size reduction 35 -> 17 (Szegedy et al. 2016, Fig. 10; Mixed_6a).
class InceptionB(nn.Module):
  """35×35 -> 17×17: 3×3/2 | 1×1-3×3-3×3/2 | maxpool/2 -> 384 + 96 + C_in channels."""

  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(384, (3, 3), strides=(2, 2), name="branch3x3")(x)
    bd = conv(64, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(96, (3, 3), padding=_pad(3, 3), name="branch3x3dbl_2")(bd)
    bd = conv(96, (3, 3), strides=(2, 2), name="branch3x3dbl_3")(bd)
    return jnp.concatenate([b3, bd, _max_pool_reduce(x)], axis=-1)


# Inception module with factorised 7×7 = 1×7, 7×1 (Szegedy et al. 2016, Fig. 6; Mixed_6b-6e).
class InceptionC(nn.Module):
  """17×17 block: 1×1 | 1×1-1×7-7×1 | 1×1-7×1-1×7-7×1-1×7 | avgpool(excl. pad)-1×1 -> 768 channels."""

  channels_7x7: int
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    c7 = self.channels_7x7
    b1 = conv(192, (1, 1), name="branch1x1")(x)
    b7 = conv(c7, (1, 1), name="branch7x7_1")(x)
    b7 = conv(c7, (1, 7), padding=_pad(1, 7), name="branch7x7_2")(b7)
    b7 = conv(192, (7, 1), padding=_pad(7, 1), name="branch7x7_3")(b7)
    bd = conv(c7, (1, 1), name="branch7x7dbl_1")(x)
    bd = conv(c7, (7, 1), padding=_pad(7, 1), name="branch7x7dbl_2")(bd)
    bd = conv(c7, (1, 7), padding=_pad(1, 7), name="branch7x7dbl_3")(bd)
    bd = conv(c7, (7, 1), padding=_pad(7, 1), name="branch7x7dbl_4")(bd)
    bd = conv(192, (1, 7), padding=_pad(1, 7), name="branch7x7dbl_5")(bd)
    bp = conv(192, (1, 1), name="branch_pool")(_avg_pool_exclude_pad(x))
    return jnp.concatenate([b1, b7, bd, bp], axis=-1)


# Grid-size reduction 17 -> 8, a 7×7-factorised variant of Fig. 10 (Szegedy et al. 2016; Mixed_7a).
class InceptionD(nn.Module):
  """17×17 -> 8×8: 1×1-3×3/2 | 1×1-1×7-7×1-3×3/2 | maxpool/2 -> 320 + 192 + C_in channels."""

  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    conv = functools.partial(BasicConv, precision=self.precision)
    b3 = conv(192, (1, 1), name="branch3x3_1")(x)
    b3 = conv(320, (3, 3), strides=(2, 2), name="branch3x3_2")(b3)
    b7 = conv(192, (1, 1), name="branch7x7x3_1")(x)
    b7 = conv(192, (1, 7), padding=_pad(1, 7), name="branch7x7x3_2")(b7)
    b7 = conv(192, (7, 1), padding=_pad(7, 1), name="branch7x7x3_3")(b7)
    b7 = conv(192, (3, 3), strides=(2, 2), name="branch7x7x3_4")(b7)
    return jnp.concatenate([b3, b7, _max_pool_reduce(x)], axis=-1)


# Inception module with expanded filter bank outputs (Szegedy et al. 2016, Fig. 7; Mixed_7b-7c).
class InceptionE(nn.Module):
  """8×8 block: 1×1 | 1×1-(1×3, 3×1) | 1×1-3×3-(1×3, 3×1) | pool-1×1 -> 320 + 768 + 768 + 192 = 2048.

  Attributes:
    pool: "avg" (3×3 average excluding padding; Mixed_7b) or "max" (3×3 max; Mixed_7c),
      the two FID-variant pooling branches.
    precision: convolution precision.
  """

  pool: str = "avg"
  precision: Any = None

  @nn.compact
  def __call__(self, x: Array) -> Array:
    if self.pool not in ("avg", "max"):
      raise ValueError(f"InceptionE.pool must be 'avg' or 'max', got {self.pool!r}.")
    conv = functools.partial(BasicConv, precision=self.precision)
    b1 = conv(320, (1, 1), name="branch1x1")(x)
    b3 = conv(384, (1, 1), name="branch3x3_1")(x)
    b3 = jnp.concatenate([
        conv(384, (1, 3), padding=_pad(1, 3), name="branch3x3_2a")(b3),
        conv(384, (3, 1), padding=_pad(3, 1), name="branch3x3_2b")(b3),
    ], axis=-1)
    bd = conv(448, (1, 1), name="branch3x3dbl_1")(x)
    bd = conv(384, (3, 3), padding=_pad(3, 3), name="branch3x3dbl_2")(bd)
    bd = jnp.concatenate([
        conv(384, (1, 3), padding=_pad(1, 3), name="branch3x3dbl_3a")(bd),
        conv(384, (3, 1), padding=_pad(3, 1), name="branch3x3dbl_3b")(bd),
    ], axis=-1)
    pooled = _avg_pool_exclude_pad(x) if self.pool == "avg" else _max_pool_same(x)
    bp = conv(192, (1, 1), name="branch_pool")(pooled)
    return jnp.concatenate([b1, b3, bd, bp], axis=-1)


def preprocess(images: Array) -> Array:
  """[B, H, W, 3] images in [0, 255] -> [B, 299, 299, 3] float32 in [−1, 1].

  Resizing is bilinear with half-pixel centres and no anti-aliasing, i.e. PyTorch's
  ``F.interpolate(mode="bilinear", align_corners=False)`` as pytorch-fid uses it; the
  scaling x / 127.5 − 1 equals pytorch-fid's 2 · (x / 255) − 1.
  """
  x = jnp.asarray(images, jnp.float32)
  b, h, w, c = x.shape
  if (h, w) != (INPUT_SIZE, INPUT_SIZE):
    x = jax.image.resize(x, (b, INPUT_SIZE, INPUT_SIZE, c), method="bilinear", antialias=False)
  return x / 127.5 - 1.0


# Inception-v3 (Szegedy et al. 2016, Table 1) in the FID variant (Heusel et al. 2017, Sec. 3).
class InceptionV3(nn.Module):
  """FID Inception-v3.

  Input: ``images [B, H, W, 3]`` with values in **[0, 255]** (uint8 or float; any H, W —
  they are resized to 299×299 inside).  For samples in [0, 1] pass ``255 * x``; for
  samples in [−1, 1] pass ``127.5 * (x + 1)``.

  Output: ``{"pool": [B, 2048], "logits": [B, 1008]}``: the global average of Mixed_7c
  (the features of FID / KID / precision-recall) and the classifier logits (Inception Score).

  Attributes:
    precision: precision of every convolution and of the classifier; the default, HIGHEST,
      keeps float32 accuracy on accelerators that would otherwise use TF32 / bf16 passes.
  """

  precision: Any = jax.lax.Precision.HIGHEST

  @nn.compact
  def __call__(self, images: Array) -> dict[str, Array]:
    if images.ndim != 4 or images.shape[-1] != 3:
      raise ValueError(f"InceptionV3 expects images of shape [B, H, W, 3] in [0, 255], got {images.shape}.")
    conv = functools.partial(BasicConv, precision=self.precision)
    x = preprocess(images)  # [B, 299, 299, 3]
    x = conv(32, (3, 3), strides=(2, 2), name="Conv2d_1a_3x3")(x)  # [B, 149, 149, 32]
    x = conv(32, (3, 3), name="Conv2d_2a_3x3")(x)  # [B, 147, 147, 32]
    x = conv(64, (3, 3), padding=_pad(3, 3), name="Conv2d_2b_3x3")(x)  # [B, 147, 147, 64]
    x = _max_pool_reduce(x)  # [B, 73, 73, 64]
    x = conv(80, (1, 1), name="Conv2d_3b_1x1")(x)  # [B, 73, 73, 80]
    x = conv(192, (3, 3), name="Conv2d_4a_3x3")(x)  # [B, 71, 71, 192]
    x = _max_pool_reduce(x)  # [B, 35, 35, 192]
    x = InceptionA(32, precision=self.precision, name="Mixed_5b")(x)  # [B, 35, 35, 256]
    x = InceptionA(64, precision=self.precision, name="Mixed_5c")(x)  # [B, 35, 35, 288]
    x = InceptionA(64, precision=self.precision, name="Mixed_5d")(x)  # [B, 35, 35, 288]
    x = InceptionB(precision=self.precision, name="Mixed_6a")(x)  # [B, 17, 17, 768]
    x = InceptionC(128, precision=self.precision, name="Mixed_6b")(x)  # [B, 17, 17, 768]
    x = InceptionC(160, precision=self.precision, name="Mixed_6c")(x)  # [B, 17, 17, 768]
    x = InceptionC(160, precision=self.precision, name="Mixed_6d")(x)  # [B, 17, 17, 768]
    x = InceptionC(192, precision=self.precision, name="Mixed_6e")(x)  # [B, 17, 17, 768]
    x = InceptionD(precision=self.precision, name="Mixed_7a")(x)  # [B, 8, 8, 1280]
    x = InceptionE("avg", precision=self.precision, name="Mixed_7b")(x)  # [B, 8, 8, 2048]
    x = InceptionE("max", precision=self.precision, name="Mixed_7c")(x)  # [B, 8, 8, 2048]
    pool = jnp.mean(x, axis=(1, 2))  # [B, 2048]
    logits = nn.Dense(NUM_CLASSES, precision=self.precision, name="fc")(pool)  # [B, 1008]
    return {"pool": pool, "logits": logits}


# ---- Variables: expected shapes, flat .npz layout, loading ----


@functools.lru_cache(maxsize=1)
def variable_shapes() -> dict[str, tuple[int, ...]]:
  """Flat key -> shape of every variable of ``InceptionV3`` (traced with eval_shape, nothing allocated).

  Keys are "collection/module/.../name", e.g. "params/Mixed_5b/branch1x1/conv/kernel" or
  "batch_stats/Mixed_5b/branch1x1/bn/mean".
  """
  images = jax.ShapeDtypeStruct((1, INPUT_SIZE, INPUT_SIZE, 3), jnp.float32)
  tree = jax.eval_shape(InceptionV3().init, jax.random.PRNGKey(0), images)
  flat = traverse_util.flatten_dict(jax.tree.map(lambda s: s.shape, dict(tree)), sep=SEPARATOR)
  return {k: tuple(v) for k, v in flat.items()}


def check_flat_variables(arrays: Mapping[str, Any], source: str) -> None:
  """Raises ValueError unless ``arrays`` has exactly the keys and shapes of ``variable_shapes()``.

  Args:
    arrays: flat key -> array (anything with ``.shape``).
    source: what the arrays came from, for the error message.
  """
  expected = variable_shapes()
  missing = sorted(set(expected) - set(arrays))
  unexpected = sorted(set(arrays) - set(expected))
  wrong = [f"{k}: {tuple(np.shape(arrays[k]))} (want {expected[k]})"
           for k in sorted(set(expected) & set(arrays)) if tuple(np.shape(arrays[k])) != expected[k]]
  if missing or unexpected or wrong:
    def head(items: Sequence[str]) -> str:
      return ", ".join(items[:5]) + (f", … ({len(items)} in all)" if len(items) > 5 else "")
    problems = [f"missing {head(missing)}" if missing else "",
                f"unexpected {head(unexpected)}" if unexpected else "",
                f"wrong shape {head(wrong)}" if wrong else ""]
    raise ValueError(f"{source} does not match InceptionV3: " + "; ".join(p for p in problems if p) + ".")


def missing_weights_message(path: Optional[PathLike]) -> str:
  """The one-line explanation raised when the Inception weights file is absent."""
  where = "no path was given" if path is None else f"{os.fspath(path)!r} does not exist"
  target = "inception_fid.npz" if path is None else os.fspath(path)
  return (f"FID Inception weights not found ({where}): set config.eval.inception_path (or pass the path to "
          f"load_inception_params) to an .npz made once, where torch is installed, from pytorch-fid's "
          f"{PTH_FILENAME} with `python -m score_jax.metrics.convert_inception --src {PTH_FILENAME} "
          f"--out {target}`.")


def load_inception_params(path: Optional[PathLike]) -> dict[str, Any]:
  """Reads converted FID Inception weights.

  Args:
    path: the ``.npz`` written by ``score_jax.metrics.convert_inception``.

  Returns:
    The variables of ``InceptionV3`` as ``{"params": ..., "batch_stats": ...}`` (float32
    jax arrays), ready for ``InceptionV3().apply`` and ``inception_features``.

  Raises:
    FileNotFoundError: with a one-line how-to when the file is missing.
    ValueError: when the file's keys or shapes do not match the module.
  """
  if path is None or not os.path.isfile(path):
    raise FileNotFoundError(missing_weights_message(path))
  with np.load(path, allow_pickle=False) as data:
    flat = {k: np.asarray(data[k], np.float32) for k in data.files}
  check_flat_variables(flat, f"Inception weights file {os.fspath(path)!r}")
  tree = traverse_util.unflatten_dict(flat, sep=SEPARATOR)
  return jax.tree.map(jnp.asarray, tree)


# ---- Batched feature extraction ----


@jax.jit
def _forward(variables: Any, images: Array) -> dict[str, Array]:
  return InceptionV3().apply(variables, images)


def inception_features(params: Any, images: Union[Array, Iterable[Array]], *,
                       batch_size: int = 200) -> dict[str, np.ndarray]:
  """Pool features and logits of many images, in fixed-size jitted batches.

  The last, short batch is zero-padded to the batch size so that one compiled program
  serves every batch; the padded rows are dropped from the result.

  Args:
    params: variables from ``load_inception_params`` ({"params", "batch_stats"}).
    images: [N, H, W, 3] in [0, 255] (numpy or jax; uint8 is fine), or an iterable of
      such arrays (e.g. batches of generated samples), processed in order.
    batch_size: images per forward pass.  A chunk smaller than ``batch_size`` runs at its
      own size (one extra compilation per distinct size and image shape).

  Returns:
    {"pool": [N, 2048], "logits": [N, 1008]} as float32 numpy arrays.
  """
  if batch_size < 1:
    raise ValueError(f"inception_features: batch_size must be >= 1, got {batch_size}.")
  chunks = [images] if hasattr(images, "shape") else images
  outputs: dict[str, list[np.ndarray]] = {"pool": [], "logits": []}
  for chunk in chunks:
    if chunk.ndim != 4 or chunk.shape[-1] != 3:
      raise ValueError(f"inception_features expects images [N, H, W, 3] in [0, 255], got {chunk.shape}.")
    n = chunk.shape[0]
    size = min(batch_size, n)
    for start in range(0, n, size):
      batch = jnp.asarray(chunk[start:start + size])  # [b, H, W, 3]
      b = batch.shape[0]
      if b < size:
        batch = jnp.concatenate([batch, jnp.zeros((size - b,) + batch.shape[1:], batch.dtype)])
      out = _forward(params, batch)
      for key in outputs:
        outputs[key].append(np.asarray(out[key][:b]))
  if not outputs["pool"]:
    raise ValueError("inception_features: no images were given.")
  return {key: np.concatenate(vals, axis=0) for key, vals in outputs.items()}
