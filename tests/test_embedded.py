"""Tests of score_jax.data.embedded: digits, generated shapes, preprocessing, batching."""

import numpy as np
import pytest

from score_jax.data import embedded

LUMA = np.array([0.299, 0.587, 0.114])


def small_shapes(**kw):
  return embedded.get_dataset("shapes", num_train=300, num_test=60, **kw)


# --- digits -------------------------------------------------------------------------------
def test_digits_splits_shapes_classes_and_levels():
  train = embedded.get_dataset("digits")
  test = embedded.get_dataset("digits", split="test")
  assert (len(train), len(test)) == (1500, 297)
  assert train.images.shape == (1500, 8, 8, 1) and train.images.dtype == np.uint8
  assert test.images.shape == (297, 8, 8, 1)
  info = train.info
  assert (info.num_classes, info.channels, info.image_size, info.levels) == (10, 1, 8, 17)
  assert info.class_names == tuple("0123456789")
  for ds in (train, test):
    assert ds.images.min() == 0 and ds.images.max() == 16
    counts = np.bincount(ds.labels, minlength=10)
    assert counts.min() >= 27 and counts.sum() == len(ds)
  x = train.as_float()
  assert x.dtype == np.float32 and x.min() == 0.0 and x.max() == 1.0
  assert len(np.unique(x)) == 17
  assert not train.images.flags.writeable  # the cached arrays cannot be changed by accident


def test_digits_resize():
  base = embedded.get_dataset("digits").images
  nearest = embedded.get_dataset("digits", image_size=16, resize_method="nearest")
  assert nearest.levels == 17 and nearest.images.shape == (1500, 16, 16, 1)
  np.testing.assert_array_equal(nearest.images[:, ::2, ::2], base)  # each pixel became a 2×2 block
  bilinear = embedded.get_dataset("digits", image_size=32)
  assert bilinear.info.levels == 256 and bilinear.images.shape == (1500, 32, 32, 1)
  # Interpolation keeps the mean intensity.
  assert abs(bilinear.as_float().mean() - base.mean() / 16) < 0.01


# --- shapes -------------------------------------------------------------------------------
def test_shapes_are_deterministic_prefix_stable_and_balanced():
  a, la, _ = embedded.generate_shapes(120, image_size=32, seed=5)
  b, lb, _ = embedded.generate_shapes(120, image_size=32, seed=5)
  np.testing.assert_array_equal(a, b)
  np.testing.assert_array_equal(la, lb)
  assert a.shape == (120, 32, 32, 3) and a.dtype == np.uint8
  assert np.bincount(la).tolist() == [30, 30, 30, 30]
  prefix, _, _ = embedded.generate_shapes(50, image_size=32, seed=5)
  np.testing.assert_array_equal(prefix, a[:50])  # the first examples do not depend on N
  other, _, _ = embedded.generate_shapes(120, image_size=32, seed=6)
  test, _, _ = embedded.generate_shapes(120, image_size=32, seed=5, split="test")
  assert np.mean(other != a) > 0.5 and np.mean(test != a) > 0.5


def shape_descriptors(images):
  """Rotation-invariant features of the foreground mask, from the pixels alone.

  fill = area / (π R²) for R the mask's largest distance from its centroid (disc 1, square
  and cross 2/π, triangle 3√3/(4π)); core = covered fraction of the disc of radius 0.8 R
  (square ≈ 0.97, cross ≈ 0.78).
  """
  x = images.astype(np.float64)
  s = x.shape[1]
  bg = x[:, 0, 0]  # a corner is always background
  dist = np.linalg.norm(x - bg[:, None, None], axis=-1)  # [n, S, S]
  masks = dist > 0.5 * dist.max(axis=(1, 2), keepdims=True)
  yy, xx = np.mgrid[:s, :s] + 0.5
  feats = []
  for m in masks:
    r = np.hypot(yy - yy[m].mean(), xx - xx[m].mean())
    rmax = r[m].max() + 0.5
    feats.append((m.sum() / (np.pi * rmax**2), m[r < 0.8 * rmax].mean()))
  return np.array(feats)


def test_shapes_labels_match_the_drawn_shape():
  images, labels, _ = embedded.generate_shapes(200, image_size=64, seed=1)
  fill, core = shape_descriptors(images).T
  guess = np.where(fill > 0.8, 0, np.where(fill < 0.52, 2, np.where(core > 0.84, 1, 3)))
  assert embedded.SHAPE_NAMES == ("circle", "square", "triangle", "cross")
  np.testing.assert_array_equal(guess, labels)
  np.testing.assert_allclose(np.median(fill[labels == 0]), 1.0, atol=0.08)
  np.testing.assert_allclose(np.median(fill[labels == 2]), 3 * np.sqrt(3) / (4 * np.pi), atol=0.03)


def test_shapes_foreground_background_contrast():
  images, labels, params = embedded.generate_shapes(400, image_size=32, seed=2, min_contrast=0.3)
  fg_luma, bg_luma = params["foreground"] @ LUMA, params["background"] @ LUMA
  assert np.all(np.abs(fg_luma - bg_luma) >= 0.3)
  # The rendered corner is the background, the pixel at the centre the foreground.
  n = np.arange(len(labels))
  cx, cy = (params["centre"] * 32).astype(int).T
  corner, centre = images[:, 0, 0] / 255.0, images[n, cy, cx] / 255.0
  np.testing.assert_allclose(corner, params["background"], atol=1 / 255)
  np.testing.assert_allclose(centre, params["foreground"], atol=1 / 255)
  assert np.all(np.abs(centre @ LUMA - corner @ LUMA) >= 0.3 - 1 / 255)


def test_shapes_dataset_metadata():
  ds = small_shapes()
  info = ds.info
  assert (info.num_examples, info.image_size, info.channels, info.levels, info.num_classes) == (300, 32, 3, 256, 4)
  assert info.shape == (32, 32, 3) and ds.random_flip  # mirror-symmetric classes: flips on by default
  assert len(small_shapes(split="test")) == 60
  assert embedded.get_dataset("shapes", num_train=10, image_size=16).images.shape == (10, 16, 16, 3)


# --- preprocessing ------------------------------------------------------------------------
def test_ranges_and_dequantization_stay_within_a_level():
  k = np.arange(17, dtype=np.uint8).reshape(1, 17, 1, 1)
  x = embedded.to_unit_interval(k, levels=17)
  assert x.min() == 0.0 and x.max() == 1.0
  centred = embedded.to_data_range(x, (-1.0, 1.0))
  assert centred.min() == -1.0 and centred.max() == 1.0
  np.testing.assert_allclose(embedded.from_data_range(centred, (-1.0, 1.0)), x, atol=1e-6)

  ds = embedded.get_dataset("digits", uniform_dequantization=True)
  _, idx = embedded.batch_positions(4, num_examples=len(ds), global_batch_size=64, seed=9)
  raw = ds.images[idx].astype(np.float64)  # [64, 8, 8, 1]
  y = ds.batch_at(4, global_batch_size=64, seed=9)["image"].astype(np.float64)
  assert np.all(y >= raw / 17) and np.all(y <= (raw + 1) / 17)  # inside the level's bin
  assert 0.4 < np.mean(y * 17 - raw) < 0.6  # uniform noise, mean ½
  ds_c = embedded.get_dataset("digits", uniform_dequantization=True, data_range=(-1, 1))
  yc = ds_c.batch_at(4, global_batch_size=64, seed=9)["image"]
  np.testing.assert_allclose(yc, 2 * y - 1, atol=1e-6)  # the same noise, mapped to [−1, 1]
  assert yc.min() >= -1.0 and yc.max() <= 1.0


def test_random_flip_mirrors_about_half_of_the_examples():
  ds = small_shapes(random_flip=True)
  _, idx = embedded.batch_positions(0, num_examples=len(ds), global_batch_size=200, seed=3)
  raw = ds.images[idx] / np.float32(255)
  got = ds.batch_at(0, global_batch_size=200, seed=3)["image"]
  same = np.all(got == raw, axis=(1, 2, 3))
  mirrored = np.all(got == raw[:, :, ::-1], axis=(1, 2, 3))
  assert np.all(same | mirrored) and 60 < mirrored.sum() < 140
  assert not embedded.get_dataset("digits").random_flip  # digits are not mirror symmetric


# --- batching -----------------------------------------------------------------------------
def test_batch_at_is_deterministic_and_differs_between_steps_and_seeds():
  ds = small_shapes(uniform_dequantization=True)
  a = ds.batch_at(7, global_batch_size=32, seed=0)
  b = ds.batch_at(7, global_batch_size=32, seed=0)
  assert a["image"].shape == (32, 32, 32, 3) and a["image"].dtype == np.float32
  assert a["label"].shape == (32,) and a["label"].dtype == np.int32
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(ds.batch_at(8, global_batch_size=32, seed=0)["image"], a["image"])
  assert not np.array_equal(ds.batch_at(7, global_batch_size=32, seed=1)["image"], a["image"])


def test_each_epoch_visits_every_example_once():
  n, batch = 300, 64  # 64 does not divide 300: batches straddle epoch boundaries
  epochs, indices = zip(*(embedded.batch_positions(s, num_examples=n, global_batch_size=batch, seed=2)
                          for s in range(19)))  # 19·64 = 1216 positions > 4 epochs
  epochs, indices = np.concatenate(epochs), np.concatenate(indices)
  np.testing.assert_array_equal(epochs, np.arange(19 * batch) // n)
  for e in range(4):
    np.testing.assert_array_equal(np.sort(indices[epochs == e]), np.arange(n))
  assert not np.array_equal(indices[epochs == 0], indices[epochs == 1])  # a fresh order per epoch
  ds = small_shapes()
  labels = np.concatenate([ds.batch_at(s, global_batch_size=batch, seed=2)["label"] for s in range(19)])
  np.testing.assert_array_equal(labels, ds.labels[indices])


def test_process_shards_concatenate_to_the_global_batch():
  ds = small_shapes(uniform_dequantization=True, random_flip=True, data_range=(-1, 1))
  for step in (0, 9):  # step 9 straddles the epoch boundary at position 300
    whole = ds.batch_at(step, global_batch_size=32, seed=4)
    shards = [ds.batch_at(step, global_batch_size=32, seed=4, process_index=p, process_count=4) for p in range(4)]
    assert shards[0]["image"].shape == (8, 32, 32, 3)
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([s[key] for s in shards]), whole[key])


def test_iterate_resumes_at_any_step():
  ds = embedded.get_dataset("digits", uniform_dequantization=True)
  stream = list(ds.iterate(0, global_batch_size=16, seed=1, num_steps=5))
  resumed = list(ds.iterate(3, global_batch_size=16, seed=1, num_steps=2))
  assert len(stream) == 5
  for a, b in zip(stream[3:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])


# --- bad input ----------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, field", [
    (dict(name="cifar10"), "name: unknown embedded dataset 'cifar10'; choose one of \\['digits', 'shapes'\\]"),
    (dict(name="digits", split="valid"), "split"),
    (dict(name="digits", num_train=5), "num_train: not an option of dataset 'digits'"),
    (dict(name="shapes", num_train=0), "num_train"),
    (dict(name="shapes", min_contrast=0.9), "min_contrast"),
    (dict(name="digits", data_range=(1, -1)), "data_range"),
    (dict(name="digits", resize_method="area"), "resize_method"),
    (dict(name="digits", image_size=0), "image_size"),
])
def test_get_dataset_rejects_bad_arguments(kwargs, field):
  with pytest.raises(ValueError, match=field):
    embedded.get_dataset(**kwargs)


def test_batch_at_rejects_bad_arguments():
  ds = embedded.get_dataset("digits")
  with pytest.raises(ValueError, match="global_batch_size: 30 is not divisible by process_count=4"):
    ds.batch_at(0, global_batch_size=30, seed=0, process_index=0, process_count=4)
  with pytest.raises(ValueError, match="process_index"):
    ds.batch_at(0, global_batch_size=32, seed=0, process_index=4, process_count=4)
  with pytest.raises(ValueError, match="step"):
    ds.batch_at(-1, global_batch_size=32, seed=0)
  with pytest.raises(ValueError, match="global_batch_size"):
    ds.iterate(0, global_batch_size=0, seed=0)  # raised at the call, not at the first next()
