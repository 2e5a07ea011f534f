"""Tests of score_jax.data.pipeline: folder, tfrecords and tfds sources, determinism, errors."""

import os
import struct
import sys

import numpy as np
import pytest
from PIL import Image

from score_jax import data as score_data
from score_jax.data import embedded, pipeline

CLASSES = ("cat", "dog", "wild")


def gradient_image(w, h, seed):
  """An RGB uint8 [h, w, 3] image that is not mirror symmetric (a horizontal ramp plus noise)."""
  rng = np.random.default_rng(seed)
  ramp = np.linspace(0, 200, w)[None, :, None]
  return np.clip(ramp + rng.integers(0, 50, (h, w, 3)), 0, 255).astype(np.uint8)


def save(array, file):
  os.makedirs(os.path.dirname(file), exist_ok=True)
  Image.fromarray(array).save(file)


@pytest.fixture(scope="module")
def afhq_like(tmp_path_factory):
  """<root>/train/{cat,dog,wild}/ with 4, 5, 3 PNG/JPEG images of assorted sizes; <root>/val/ with 2 per class."""
  root = str(tmp_path_factory.mktemp("afhq"))
  counts = {"cat": 4, "dog": 5, "wild": 3}
  for split, scale in (("train", 1), ("val", 0)):
    for k, name in enumerate(CLASSES):
      for i in range(counts[name] if scale else 2):
        ext = "jpg" if i == 1 else "png"
        save(gradient_image(24 + 4 * i, 16 + 2 * k, seed=100 * k + i), f"{root}/{split}/{name}/img{i:02d}.{ext}")
  open(f"{root}/train/cat/notes.txt", "w").close()  # not an image: ignored
  return root


@pytest.fixture(scope="module")
def flat(tmp_path_factory):
  """A flat folder of 10 PNG images, 20×12 each (FFHQ / CelebA-HQ style)."""
  root = str(tmp_path_factory.mktemp("flat"))
  for i in range(10):
    save(gradient_image(20, 12, seed=i), f"{root}/{i:05d}.png")
  return root


def folder(path, **kw):
  kw.setdefault("image_size", 8)
  return pipeline.get_dataset("folder", "afhq", path=path, **kw)


def truncate_jpeg(file):
  """Cuts a JPEG halfway through its entropy-coded data: the header (up to the start-of-scan marker) still decodes."""
  with open(file, "rb") as f:
    data = f.read()
  scan = data.index(b"\xff\xda")
  with open(file, "wb") as f:
    f.write(data[:scan + (len(data) - scan) // 2])


# --- folder source ------------------------------------------------------------------------
def test_folder_labels_follow_sorted_class_folders(afhq_like):
  ds = folder(afhq_like)
  info = ds.info
  assert info.class_names == CLASSES and info.num_classes == 3
  assert (info.num_examples, info.image_size, info.channels, info.levels) == (12, 8, 3, 256)
  np.testing.assert_array_equal(ds.labels, [0] * 4 + [1] * 5 + [2] * 3)
  assert [os.path.basename(f) for f in ds.files[:4]] == ["img00.png", "img01.jpg", "img02.png", "img03.png"]
  images, labels = ds.images_at(np.arange(len(ds)))
  assert images.shape == (12, 8, 8, 3) and images.dtype == np.uint8
  np.testing.assert_array_equal(labels, ds.labels)
  test = folder(afhq_like, split="test")  # no test/: AFHQ's val/ is the test split
  assert test.root.endswith("val") and len(test) == 6 and test.info.split == "test"
  assert score_data.get_dataset is pipeline.get_dataset  # re-exported


def test_flat_folder_is_one_class_and_grey_conversion(flat):
  ds = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=6)
  assert ds.root == flat and len(ds) == 10 and ds.class_names == ("all",)
  assert ds.labels.tolist() == [0] * 10
  grey = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=6, channels=1)
  g, _ = grey.images_at([3])
  rgb, _ = ds.images_at([3])
  assert g.shape == (1, 6, 6, 1) and grey.info.channels == 1
  luma = rgb.astype(np.float64) @ [0.299, 0.587, 0.114]
  assert np.abs(g[..., 0] - luma).max() <= 1.5  # ITU-R 601 luma (converted before resizing, so two roundings)


def test_class_folders_false_gathers_nested_images(tmp_path):
  for sub in ("00000", "01000"):  # FFHQ's numbered sub-folders are not classes
    for i in range(3):
      save(gradient_image(8, 8, i), f"{tmp_path}/{sub}/{sub}_{i}.png")
  auto = pipeline.get_dataset("folder", "ffhq", path=str(tmp_path), image_size=8)
  assert auto.class_names == ("00000", "01000")
  one = pipeline.get_dataset("folder", "ffhq", path=str(tmp_path), image_size=8, class_folders=False)
  assert one.class_names == ("all",) and len(one) == 6
  assert [os.path.basename(f) for f in one.files] == [f"{s}_{i}.png" for s in ("00000", "01000") for i in range(3)]
  save(gradient_image(8, 8, 9), f"{tmp_path}/loose.png")
  with pytest.raises(ValueError, match=r"^class_folders: .* holds images \(loose.png, ...\) beside"):
    pipeline.get_dataset("folder", "ffhq", path=str(tmp_path), image_size=8, class_folders=True)


def test_center_crop_then_antialiased_resize(tmp_path):
  """A 40×20 image: red 10-pixel bands left and right of a 20×20 centre, which is all that is kept."""
  centre = gradient_image(20, 20, seed=7)
  image = np.zeros((20, 40, 3), np.uint8)
  image[:, :, 0] = 255
  image[:, 10:30] = centre
  save(image, f"{tmp_path}/train/x.png")
  full = folder(str(tmp_path), image_size=20).images_at([0])[0][0]
  np.testing.assert_array_equal(full, centre)  # the central square, not resampled
  small = folder(str(tmp_path), image_size=5).images_at([0])[0][0]
  expect = np.asarray(Image.fromarray(centre).resize((5, 5), Image.Resampling.BILINEAR))
  np.testing.assert_array_equal(small, expect)
  # Antialiased: each output pixel is close to the mean of its 4×4 block (a 1-pixel sample would not be).
  block_mean = centre.reshape(5, 4, 5, 4, 3).mean(axis=(1, 3))
  assert np.abs(small - block_mean).mean() < 6
  cropped = folder(str(tmp_path), image_size=10, crop_size=10).images_at([0])[0][0]
  np.testing.assert_array_equal(cropped, centre[5:15, 5:15])  # crop_size: a smaller centred square
  with pytest.raises(ValueError, match="^small_images: 1 images .* smaller than the 30-pixel crop: x.png \\(40×20\\)"):
    folder(str(tmp_path), image_size=10, crop_size=30, small_images="error")
  # "upscale" (the default): the largest centred square, the 20×20 centre
  np.testing.assert_array_equal(folder(str(tmp_path), image_size=20, crop_size=30).images_at([0])[0][0], centre)
  with pytest.raises(ValueError, match="^crop_size: 30 exceeds the shorter side of a 40×20 image"):
    pipeline.center_crop_resize(Image.fromarray(image), 10, crop_size=30)


def test_threads_and_cache_give_the_same_images(afhq_like):
  serial = folder(afhq_like, num_threads=1).images_at(np.arange(12))[0]
  cached = folder(afhq_like, num_threads=4, cache_size=5)
  for _ in range(2):  # the second pass partly hits the cache
    np.testing.assert_array_equal(cached.images_at(np.arange(12)[::-1])[0], serial[::-1])
  assert len(cached._cache) == 5


# --- determinism and preprocessing ---------------------------------------------------------
def test_batch_at_is_a_pure_function_of_seed_and_step(afhq_like):
  ds = folder(afhq_like, uniform_dequantization=True)
  a = ds.batch_at(3, global_batch_size=8, seed=11)
  b = folder(afhq_like, uniform_dequantization=True, num_threads=1).batch_at(3, global_batch_size=8, seed=11)
  assert a["image"].shape == (8, 8, 8, 3) and a["image"].dtype == np.float32 and a["label"].dtype == np.int32
  np.testing.assert_array_equal(a["image"], b["image"])
  np.testing.assert_array_equal(a["label"], b["label"])
  assert not np.array_equal(ds.batch_at(4, global_batch_size=8, seed=11)["image"], a["image"])
  assert not np.array_equal(ds.batch_at(3, global_batch_size=8, seed=12)["image"], a["image"])
  # The examples are those of embedded.batch_positions, in its order.
  _, idx = embedded.batch_positions(3, num_examples=12, global_batch_size=8, seed=11)
  np.testing.assert_array_equal(a["label"], ds.labels[idx])


def test_process_shares_concatenate_to_the_global_batch(afhq_like):
  ds = folder(afhq_like, uniform_dequantization=True, data_range=(-1, 1))
  for step in (0, 1):  # step 1 (positions 8..15) straddles the epoch boundary at 12
    whole = ds.batch_at(step, global_batch_size=8, seed=5)
    parts = [ds.batch_at(step, global_batch_size=8, seed=5, process_index=p, process_count=4) for p in range(4)]
    assert parts[0]["image"].shape == (2, 8, 8, 3)
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([p[key] for p in parts]), whole[key])


def test_resumed_iterate_equals_the_continuous_stream(flat):
  ds = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=4, uniform_dequantization=True)
  stream = list(ds.iterate(0, global_batch_size=4, seed=2, num_steps=6))
  resumed = list(ds.iterate(4, global_batch_size=4, seed=2, num_steps=2))
  for a, b in zip(stream[4:], resumed):
    np.testing.assert_array_equal(a["image"], b["image"])
  with pytest.raises(ValueError, match="^global_batch_size"):
    ds.iterate(0, global_batch_size=0, seed=0)


def test_data_range_and_dequantization_bins(flat):
  plain = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=6, random_flip=False)
  raw = plain.images_at(embedded.batch_positions(0, num_examples=10, global_batch_size=10, seed=1)[1])[0]
  x = plain.batch_at(0, global_batch_size=10, seed=1)["image"]
  np.testing.assert_array_equal(x, raw / np.float32(255))
  deq = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=6, random_flip=False,
                             uniform_dequantization=True)
  y = deq.batch_at(0, global_batch_size=10, seed=1)["image"].astype(np.float64)
  assert np.all(y >= raw / 256) and np.all(y <= (raw + 1) / 256) and 0.45 < np.mean(y * 256 - raw) < 0.55
  centred = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=6, random_flip=False,
                                 uniform_dequantization=True, data_range=(-1, 1))
  yc = centred.batch_at(0, global_batch_size=10, seed=1)["image"]
  np.testing.assert_allclose(yc, 2 * y - 1, atol=1e-6)
  assert yc.min() >= -1 and yc.max() <= 1 and centred.data_range == (-1.0, 1.0)


def test_flips_are_the_per_example_bits(flat):
  ds = pipeline.get_dataset("folder", "ffhq", path=flat, image_size=6)  # random_flip defaults to on
  assert ds.random_flip
  mirrored = []
  for step in range(20):  # 200 positions = 20 epochs of 10 images
    epochs, idx = embedded.batch_positions(step, num_examples=10, global_batch_size=10, seed=8)
    raw = ds.images_at(idx)[0] / np.float32(255)
    got = ds.batch_at(step, global_batch_size=10, seed=8)["image"]
    flip, _ = embedded.example_randomness(epochs, idx, seed=8, shape=raw.shape[1:], dequantize=False)
    np.testing.assert_array_equal(got, np.where(flip[:, None, None, None], raw[:, :, ::-1], raw))
    mirrored.extend(flip)
  assert 70 < sum(mirrored) < 130  # Binomial(200, ½): mean 100, sd 7


def test_embedded_kind_is_the_embedded_dataset():
  ds = pipeline.get_dataset("embedded", "digits", uniform_dequantization=True)
  ref = embedded.get_dataset("digits", uniform_dequantization=True)
  assert ds == ref
  np.testing.assert_array_equal(ds.images_at([0, 5])[0], ref.images[[0, 5]])
  shapes = pipeline.get_dataset("embedded", "shapes", num_train=40, image_size=16)
  assert shapes.info.shape == (16, 16, 3) and len(shapes) == 40


# --- tfrecords ----------------------------------------------------------------------------
def example_class():
  """tf.train.Example built at run time with protobuf, to cross-check the hand-written decoder."""
  pb = pytest.importorskip("google.protobuf")
  del pb
  from google.protobuf import descriptor_pb2, descriptor_pool, message_factory  # pylint: disable=g-import-not-at-top
  f = descriptor_pb2.FieldDescriptorProto
  proto = descriptor_pb2.FileDescriptorProto(name="score_jax_test_example.proto", package="sjtest", syntax="proto3")
  for name, kind in (("BytesList", f.TYPE_BYTES), ("FloatList", f.TYPE_FLOAT), ("Int64List", f.TYPE_INT64)):
    proto.message_type.add(name=name).field.add(name="value", number=1, label=f.LABEL_REPEATED, type=kind)
  feature = proto.message_type.add(name="Feature")
  feature.oneof_decl.add(name="kind")
  for number, (field, kind) in enumerate((("bytes_list", "BytesList"), ("float_list", "FloatList"),
                                          ("int64_list", "Int64List")), start=1):
    feature.field.add(name=field, number=number, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE,
                      type_name=f".sjtest.{kind}", oneof_index=0)
  features = proto.message_type.add(name="Features")
  entry = features.nested_type.add(name="FeatureEntry")
  entry.options.map_entry = True
  entry.field.add(name="key", number=1, label=f.LABEL_OPTIONAL, type=f.TYPE_STRING)
  entry.field.add(name="value", number=2, label=f.LABEL_OPTIONAL, type=f.TYPE_MESSAGE, type_name=".sjtest.Feature")
  features.field.add(name="feature", number=1, label=f.LABEL_REPEATED, type=f.TYPE_MESSAGE,
                     type_name=".sjtest.Features.FeatureEntry")
  proto.message_type.add(name="Example").field.add(name="features", number=1, label=f.LABEL_OPTIONAL,
                                                   type=f.TYPE_MESSAGE, type_name=".sjtest.Features")
  pool = descriptor_pool.DescriptorPool()
  pool.Add(proto)
  return message_factory.GetMessageClass(pool.FindMessageTypeByName("sjtest.Example"))


def progan_record(example_cls, image_hwc):
  ex = example_cls()
  ex.features.feature["shape"].int64_list.value.extend(image_hwc.transpose(2, 0, 1).shape)
  ex.features.feature["data"].bytes_list.value.append(image_hwc.transpose(2, 0, 1).tobytes())
  return ex.SerializeToString()


def write_tfrecords(file, payloads):
  """TFRecord framing: uint64 length, masked crc32c(length), payload, masked crc32c(payload)."""
  with open(file, "wb") as out:
    for p in payloads:
      head = struct.pack("<Q", len(p))
      crcs = [struct.pack("<I", pipeline.masked_crc32c(b)) for b in (head, p)]
      out.write(head + crcs[0] + p + crcs[1])


def test_crc32c_and_example_decoding():
  assert pipeline.crc32c(b"123456789") == 0xE3069283  # the standard CRC-32C check value
  assert pipeline.crc32c(b"") == 0
  ex = example_class()()
  ex.features.feature["ints"].int64_list.value.extend([3, -5, 1 << 40])
  ex.features.feature["floats"].float_list.value.extend([0.5, -2.0])
  ex.features.feature["bytes"].bytes_list.value.extend([b"ab", b""])
  ex.features.feature["empty"].int64_list.SetInParent()
  got = pipeline.parse_example(ex.SerializeToString())
  assert got == {"ints": [3, -5, 1 << 40], "floats": [0.5, -2.0], "bytes": [b"ab", b""], "empty": []}


def test_tfrecords_round_trip(tmp_path):
  cls = example_class()
  images = np.stack([gradient_image(8, 8, seed=i) for i in range(7)])  # [7, 8, 8, 3]
  write_tfrecords(f"{tmp_path}/celebahq-r03.tfrecords", [progan_record(cls, im) for im in images])
  write_tfrecords(f"{tmp_path}/celebahq-r02.tfrecords", [progan_record(cls, im[::2, ::2]) for im in images])
  ds = pipeline.get_dataset("tfrecords", "celebahq", path=str(tmp_path), image_size=8, uniform_dequantization=True)
  info = ds.info
  assert (info.num_examples, info.image_size, info.channels, info.levels, info.class_names) == (7, 8, 3, 256, ("all",))
  got, labels = ds.images_at([6, 0, 3, 3])
  np.testing.assert_array_equal(got, images[[6, 0, 3, 3]])
  assert labels.tolist() == [0, 0, 0, 0]
  whole = ds.batch_at(2, global_batch_size=4, seed=0)
  halves = [ds.batch_at(2, global_batch_size=4, seed=0, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
  assert whole["image"].shape == (4, 8, 8, 3) and 0 <= whole["image"].min() and whole["image"].max() <= 1
  # The file itself as path; image_size read from its name.
  one = pipeline.get_dataset("tfrecords", "x", path=f"{tmp_path}/celebahq-r02.tfrecords")
  assert one.image_size == 4 and len(one) == 7
  np.testing.assert_array_equal(one.images_at([1])[0][0], images[1, ::2, ::2])
  with pytest.raises(ValueError, match=r"^image_size: .* holds the resolutions \[4, 8\]; choose one"):
    pipeline.get_dataset("tfrecords", "celebahq", path=str(tmp_path))
  with pytest.raises(FileNotFoundError, match=r"^path: no \*-r05.tfrecords \(resolution 32\) in .*dataset_tool.py"):
    pipeline.get_dataset("tfrecords", "celebahq", path=str(tmp_path), image_size=32)
  with pytest.raises(ValueError, match="^split: ProGAN tfrecords have one split"):
    pipeline.get_dataset("tfrecords", "celebahq", path=str(tmp_path), image_size=8, split="test")


def test_tfrecords_rejects_other_files(tmp_path):
  with open(f"{tmp_path}/bad-r03.tfrecords", "wb") as out:
    out.write(b"this is not a tfrecord file at all")
  with pytest.raises(ValueError, match="^path: .* is not an uncompressed TFRecord file"):
    pipeline.get_dataset("tfrecords", "bad", path=str(tmp_path))
  write_tfrecords(f"{tmp_path}/cut-r03.tfrecords", [b"x" * 100])
  with open(f"{tmp_path}/cut-r03.tfrecords", "r+b") as out:
    out.truncate(50)
  with pytest.raises(ValueError, match="^path: .* is truncated"):
    pipeline.get_dataset("tfrecords", "cut", path=f"{tmp_path}/cut-r03.tfrecords")


# --- errors -------------------------------------------------------------------------------
def one_line(excinfo, prefix):
  message = str(excinfo.value)
  assert "\n" not in message and message.startswith(prefix), message
  return message


def test_missing_data_errors_are_one_line_starting_with_path(tmp_path, afhq_like):
  missing = f"{tmp_path}/nowhere/afhq"
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("folder", "afhq", path=missing, image_size=8)
  assert "stargan-v2" in one_line(e, f"path: no image folder at {missing}")
  os.makedirs(f"{tmp_path}/empty/train")
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("folder", "mine", path=f"{tmp_path}/empty", image_size=8)
  one_line(e, f"path: no images in {tmp_path}/empty/train (looked for <class>/*.{{png,jpg,jpeg}}")
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("folder", "mine", path=f"{tmp_path}/empty", image_size=8, split="test")
  one_line(e, f"path: no test split in {tmp_path}/empty (looked for test/, val/, validation/)")
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("tfrecords", "celebahq", path=missing)
  assert "create_celebahq" in one_line(e, "path: no tfrecords folder or file at")
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("tfrecords", "celebahq", path=afhq_like, image_size=256)
  one_line(e, f"path: no *-r08.tfrecords (resolution 256) in {afhq_like}")
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("tfds", "cifar10", path=missing)
  assert "tfds build cifar10 --data_dir=" in one_line(e, f"path: no TFDS data_dir at {missing}")
  for kind, how in (("folder", "set --config.data.path to <path>"), ("tfds", "tfds build x --data_dir=<path>"),
                    ("tfrecords", "ProGAN's dataset_tool.py")):
    with pytest.raises(ValueError) as e:
      pipeline.get_dataset(kind, "x", image_size=8)
    assert how in one_line(e, f"path: not set; kind {kind!r} reads local files and never downloads: ")


@pytest.mark.parametrize("kind, kwargs, prefix", [
    ("mnist", {}, "kind: unknown 'mnist'; choose one of ['embedded', 'folder', 'tfds', 'tfrecords']"),
    ("folder", dict(shuffle=True), "shuffle: not an option of kind 'folder'; its options are"),
    ("tfrecords", dict(crop_size=4), "crop_size: not an option of kind 'tfrecords'; its options are none"),
    ("tfds", dict(channels=1), "channels: not an option of kind 'tfds'"),
    ("folder", dict(resize_method="area"), "resize_method: unknown 'area'"),
    ("folder", dict(channels=4), "channels: must be 1 (grey) or 3 (RGB)"),
    ("folder", dict(num_threads=0), "num_threads: must be an integer >= 1"),
    ("folder", dict(crop_size=0), "crop_size: must be an integer >= 1"),
    ("folder", dict(image_size=None), "image_size: kind 'folder' needs it"),
    ("folder", dict(split="valid"), "split: kind 'folder' has 'train' and 'test'"),
    ("folder", dict(data_range=(1, 0)), "data_range: needs finite lo < hi"),
    ("embedded", dict(path="/data"), "path: kind 'embedded' reads no files"),
    ("embedded", dict(shuffle=True), "shuffle: not an option of dataset 'digits'"),
])
def test_bad_settings_name_the_option(kind, kwargs, prefix, flat):
  kwargs = {"image_size": 8, "path": None if kind == "embedded" else flat, **kwargs}
  with pytest.raises(ValueError) as e:
    pipeline.get_dataset(kind, "digits", **kwargs)
  one_line(e, prefix)


# --- tfds ---------------------------------------------------------------------------------
def test_tfds_without_the_package_says_how_to_install(tmp_path, monkeypatch):
  monkeypatch.setitem(sys.modules, "tensorflow_datasets", None)  # import fails
  with pytest.raises(ImportError) as e:
    pipeline.get_dataset("tfds", "cifar10", path=str(tmp_path))
  assert "pip install 'score_jax[tfds]'" in one_line(e, "kind: 'tfds' needs the tensorflow-datasets package")


def test_tfds_array_record_round_trip(tmp_path):
  """A tiny dataset prepared as array_record by tensorflow-datasets itself (no TensorFlow needed)."""
  tfds = pytest.importorskip("tensorflow_datasets")
  pytest.importorskip("array_record")
  import io  # pylint: disable=g-import-not-at-top

  def png(array):
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="png")
    return buf.getvalue()

  pictures = [gradient_image(10, 6, seed=i) for i in range(6)]

  # Not registered: the reader below finds it from the files alone, as a dataset built elsewhere.
  class ScoreJaxTinyImages(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    VERSION = tfds.core.Version("1.0.0")

    def _info(self):
      return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
          "image": tfds.features.Image(shape=(None, None, 3)),
          "label": tfds.features.ClassLabel(names=["even", "odd"])}))

    def _split_generators(self, dl_manager):
      del dl_manager
      return {"train": self._generate_examples(range(4)), "validation": self._generate_examples(range(4, 6))}

    def _generate_examples(self, ids):
      for i in ids:
        yield i, {"image": png(pictures[i]), "label": i % 2}

  ScoreJaxTinyImages(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
  ds = pipeline.get_dataset("tfds", "score_jax_tiny_images", path=str(tmp_path), image_size=6)
  assert ds.info.class_names == ("even", "odd") and len(ds) == 4 and ds.random_flip
  images, labels = ds.images_at(np.arange(4))
  # TFDS stores examples in a hashed order; match them back by content.
  for image, label in zip(images, labels):
    i = next(i for i in range(4) if np.array_equal(image, pictures[i][:, 2:8]))  # centre 6×6 of 10×6
    assert label == i % 2
  whole = ds.batch_at(1, global_batch_size=4, seed=3)
  halves = [ds.batch_at(1, global_batch_size=4, seed=3, process_index=p, process_count=2) for p in range(2)]
  np.testing.assert_array_equal(np.concatenate([h["image"] for h in halves]), whole["image"])
  test = pipeline.get_dataset("tfds", "score_jax_tiny_images", path=str(tmp_path), image_size=6, split="test")
  assert test.split == "validation" and len(test) == 2  # no test split: validation
  with pytest.raises(ValueError, match=r"^split: score_jax_tiny_images has no split 'dev'"):
    pipeline.get_dataset("tfds", "score_jax_tiny_images", path=str(tmp_path), image_size=6, split="dev")
  with pytest.raises(ValueError, match="^image_size: score_jax_tiny_images's images are None×None"):
    pipeline.get_dataset("tfds", "score_jax_tiny_images", path=str(tmp_path))
  with pytest.raises(FileNotFoundError) as e:
    pipeline.get_dataset("tfds", "cifar10", path=str(tmp_path))
  assert "--file_format=array_record" in one_line(e, f"path: cifar10 is not prepared in {tmp_path}")


# --- a user's own folder: broken files, image modes, small images -------------------------
def _broken_folder(root, n_good=6):
  """n_good PNGs, a zero-byte .jpg, a text file named .png and a JPEG cut after its header (in that listing order)."""
  for i in range(n_good):
    save(gradient_image(20, 20, seed=i), f"{root}/img{i:02d}.png")
  open(f"{root}/img90_empty.jpg", "wb").close()
  with open(f"{root}/img91_text.png", "w") as f:
    f.write("not an image\n")
  Image.fromarray(gradient_image(20, 20, seed=99)).save(f"{root}/img92_truncated.jpg", quality=95)
  truncate_jpeg(f"{root}/img92_truncated.jpg")
  return str(root)


def test_unreadable_files_are_one_line_naming_them(tmp_path):
  root = _broken_folder(tmp_path / "own")
  with pytest.raises(pipeline.UnreadableImageError) as e:
    folder(root)
  message = str(e.value)
  assert "\n" not in message and message.startswith("on_unreadable: 2 of 9 files")
  assert "img90_empty.jpg" in message and "img91_text.png" in message and "on_unreadable='skip'" in message
  assert "img92_truncated.jpg" not in message  # its header decodes: found at its first read


def test_skip_leaves_them_out_lists_them_and_a_resume_reuses_the_scan(tmp_path):
  root = _broken_folder(tmp_path / "own")
  workdir = str(tmp_path / "run")
  ds = folder(root, on_unreadable="skip", index_dir=workdir)
  assert len(ds) == 7 and (ds.scan.scanned, ds.scan.reused) == (9, 0)
  with open(os.path.join(workdir, pipeline.SKIPPED_FILE)) as f:
    listed = [line.split("\t")[0] for line in f.read().splitlines()]
  assert [os.path.basename(p) for p in listed] == ["img90_empty.jpg", "img91_text.png"]
  again = folder(root, on_unreadable="skip", index_dir=workdir)  # a resumed run: nothing re-read
  assert (again.scan.scanned, again.scan.reused) == (0, 9) and again.files == ds.files
  save(gradient_image(20, 20, seed=7), f"{root}/img03.png")  # one file changed: only it is read
  os.utime(f"{root}/img03.png", ns=(1, 1))
  assert folder(root, on_unreadable="skip", index_dir=workdir).scan.scanned == 1
  assert folder(root, on_unreadable="skip").scan.scanned == 9  # no index_dir, no cache


def test_a_file_that_fails_at_its_first_read_follows_the_policy(tmp_path):
  root = _broken_folder(tmp_path / "own")
  os.remove(f"{root}/img90_empty.jpg")
  os.remove(f"{root}/img91_text.png")
  strict = folder(root)
  assert len(strict) == 7
  strict.images_at([0, 1])  # readable files read as usual
  with pytest.raises(pipeline.UnreadableImageError) as e:
    strict.images_at([5, 6])
  assert "\n" not in str(e.value) and str(e.value).startswith("on_unreadable: ") and "img92_truncated.jpg" in str(e.value)
  workdir = str(tmp_path / "run")
  lenient = folder(root, on_unreadable="skip", index_dir=workdir, num_threads=4)
  images, labels = lenient.images_at([6, 5, 6])
  first, _ = folder(root).images_at([0])  # the file after the last wraps to the first
  np.testing.assert_array_equal(images[0], first[0])
  np.testing.assert_array_equal(images[2], first[0])
  np.testing.assert_array_equal(images[1], folder(root).images_at([5])[0][0])
  with open(os.path.join(workdir, pipeline.SKIPPED_FILE)) as f:
    assert [os.path.basename(line.split("\t")[0]) for line in f.read().splitlines()] == ["img92_truncated.jpg"]
  # the batches of a step are the same in a fresh process (a resumed run) as in this one
  again = folder(root, on_unreadable="skip", index_dir=workdir)
  for step in range(3):
    a = lenient.batch_at(step, global_batch_size=4, seed=1)
    b = again.batch_at(step, global_batch_size=4, seed=1)
    np.testing.assert_array_equal(a["image"], b["image"])


def _png16(array):
  """A 16-bit PNG written by hand (Pillow writes 16-bit grey only): array uint16 [H, W] or [H, W, 3]."""
  import zlib  # pylint: disable=g-import-not-at-top
  h, w = array.shape[:2]
  color = 2 if array.ndim == 3 else 0
  raw = b"".join(b"\x00" + array[y].astype(">u2").tobytes() for y in range(h))

  def chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, color, 0, 0, 0)) +
          chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _palette():
  image = Image.new("P", (8, 8), 1)
  image.putpalette([0, 0, 0, 200, 100, 50] + [0] * 762)
  image.info["transparency"] = 1
  return image


# (name, how the file is written, channels, the pixel every loaded value must equal)
MODES = [
    ("grey", lambda f: Image.new("L", (8, 8), 77).save(f + ".png"), 3, (77, 77, 77)),
    ("bilevel", lambda f: Image.new("1", (8, 8), 1).save(f + ".png"), 3, (255, 255, 255)),
    ("palette_with_transparency", lambda f: _palette().save(f + ".png"), 3, (200, 100, 50)),
    ("rgba_alpha_dropped", lambda f: Image.new("RGBA", (8, 8), (10, 20, 30, 0)).save(f + ".png"), 3, (10, 20, 30)),
    ("grey_alpha", lambda f: Image.new("LA", (8, 8), (90, 5)).save(f + ".png"), 3, (90, 90, 90)),
    ("grey_16_bit", lambda f: Image.fromarray(np.full((8, 8), 0x8AFF, np.uint16)).save(f + ".png"), 3, (0x8A,) * 3),
    ("rgb_16_bit", lambda f: open(f + ".png", "wb").write(_png16(np.full((8, 8, 3), [65535, 0x80FF, 256], np.uint16))),
     3, (255, 0x80, 1)),
    ("cmyk_jpeg", lambda f: Image.new("CMYK", (8, 8), (10, 20, 30, 40)).save(f + ".jpg", quality=100), 3,
     (round(245 * 215 / 255), round(235 * 215 / 255), round(225 * 215 / 255))),
    ("rgb_into_grey", lambda f: Image.new("RGB", (8, 8), (100, 150, 200)).save(f + ".png"), 1,
     (round(0.299 * 100 + 0.587 * 150 + 0.114 * 200),)),
    ("grey_16_bit_into_grey", lambda f: Image.fromarray(np.full((8, 8), 0x1234, np.uint16)).save(f + ".png"), 1,
     (0x12,)),
]


@pytest.mark.parametrize("name,write,channels,pixel", MODES, ids=[m[0] for m in MODES])
def test_each_image_mode_loads_by_its_rule(tmp_path, name, write, channels, pixel):
  os.makedirs(tmp_path / "f")
  write(str(tmp_path / "f" / name))
  images, _ = folder(str(tmp_path / "f"), image_size=4, channels=channels).images_at([0])
  assert images.shape == (1, 4, 4, channels) and images.dtype == np.uint8
  # JPEG's chroma rounding moves a flat colour by at most one level
  tol = 1 if name.endswith("jpeg") else 0
  np.testing.assert_allclose(images.reshape(-1, channels).astype(int), np.broadcast_to(pixel, (16, channels)), atol=tol)


def test_small_images_are_upscaled_or_refused_in_one_line(tmp_path):
  save(gradient_image(30, 40, seed=0), f"{tmp_path}/f/big.png")
  save(gradient_image(10, 6, seed=1), f"{tmp_path}/f/small.png")
  with pytest.raises(ValueError) as e:
    folder(f"{tmp_path}/f", image_size=8, small_images="error")
  assert "\n" not in str(e.value) and str(e.value).startswith("small_images: 1 images") and "small.png (10×6)" in str(e.value)
  with pytest.raises(ValueError, match=r"^small_images: 2 images .* 32-pixel crop"):
    folder(f"{tmp_path}/f", image_size=8, crop_size=32, small_images="error")
  images, _ = folder(f"{tmp_path}/f", image_size=8, crop_size=32).images_at([0, 1])  # upscaled: the largest centred square
  expected = pipeline.to_uint8_array(pipeline.center_crop_resize(Image.open(f"{tmp_path}/f/small.png"), 8), 3)
  np.testing.assert_array_equal(images[1], expected)
  with pytest.raises(ValueError, match=r"^on_unreadable: 'skip' applies to kind 'folder'"):
    pipeline.get_dataset("embedded", "digits", on_unreadable="skip")


def test_first_run_on_ones_own_folder_with_broken_files_stops_in_one_line_or_skips_them(tmp_path):
  """README's first run on one's own images, through ``--mode=train`` with ``:tiny`` (which keeps the
  folder the user names): "error" stops before anything compiles; "skip" trains and lists the
  files; a JPEG that breaks after a checkpoint stops the resumed run in one line (checkpoint intact)
  or is read around; the finished run writes its 16-sample grid.  Smaller than the README command:
  2 + 2 steps, 3 sampler steps, 16 px and a 2-level 8-channel network (the variant's own 32-px
  network took this test from 18 s to 58 s; tests/test_configs.py checks its shapes)."""
  from run_main import saved_state  # pylint: disable=g-import-not-at-top
  from score_jax import config_files  # pylint: disable=g-import-not-at-top
  from score_jax.modes import train  # pylint: disable=g-import-not-at-top
  root = str(tmp_path / "own")
  for i in range(7):  # 24 × 20 JPEGs and one larger greyscale PNG in a sub-folder
    save(gradient_image(24, 20, seed=i), f"{root}/img{i:02d}.jpg")
  save(gradient_image(50, 41, seed=9)[..., 0], f"{root}/sub/img80_grey.png")
  open(f"{root}/img90_empty.jpg", "wb").close()
  with open(f"{root}/img91_text.png", "w") as f:
    f.write("not an image\n")
  tiny = config_files.load("configs/ve/afhq_512.py:tiny")
  assert (tiny.data.kind, tiny.data.image_size, tiny.training.num_steps, tiny.sampling.pc.num_steps) == (
      "folder", 32, 400, 100)

  def config(num_steps, on_unreadable):
    c = config_files.load("configs/ve/afhq_512.py:tiny")
    c.data.path, c.data.on_unreadable, c.data.image_size = root, on_unreadable, 16
    c.model.network.update(dict(nf=8, ch_mult=(1, 2), attn_resolutions=(8,)))
    c.training.num_steps, c.training.snapshot_freq, c.sampling.pc.num_steps = num_steps, 2, 3
    return c

  workdir = str(tmp_path / "run")
  with pytest.raises(train.ConfigError) as e:
    train.run(config(2, "error"), workdir)
  assert str(e.value).startswith("config.data.on_unreadable: 2 of 10 files") and "\n" not in str(e.value)
  assert not os.path.exists(os.path.join(workdir, "checkpoints"))  # stopped before anything ran
  train.run(config(2, "skip"), workdir)
  with open(os.path.join(workdir, pipeline.SKIPPED_FILE)) as f:
    assert len(f.read().splitlines()) == 2
  before = saved_state(workdir, 2)
  truncate_jpeg(f"{root}/img03.jpg")  # breaks after the checkpoint; its header still decodes
  os.remove(f"{root}/img90_empty.jpg")  # the user removes the two that the scan named
  os.remove(f"{root}/img91_text.png")
  with pytest.raises(train.ConfigError) as e:
    train.run(config(4, "error"), workdir)
  assert str(e.value).startswith("config.data.on_unreadable: ") and "img03.jpg passed the header check" in str(e.value)
  assert "\n" not in str(e.value)
  import jax  # pylint: disable=g-import-not-at-top
  jax.tree.map(np.testing.assert_array_equal, saved_state(workdir, 2), before)  # the checkpoint is intact
  os.remove(os.path.join(workdir, "config_step2.json"))  # the stopped run's config; the relaunch changes a field
  result = train.run(config(4, "skip"), workdir)
  assert result.start_step == 2 and int(result.state.step) == 4
  with open(os.path.join(workdir, pipeline.SKIPPED_FILE)) as f:
    assert [os.path.basename(line.split("\t")[0]) for line in f.read().splitlines()] == ["img03.jpg"]
  with np.load(os.path.join(workdir, "samples_step4.npz")) as f:
    samples = f[list(f.keys())[0]]
  assert samples.shape == (16, 16, 16, 3) and np.isfinite(samples).all()
