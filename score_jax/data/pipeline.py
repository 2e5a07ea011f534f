"""Image input pipeline for training: one random-access interface over four kinds of source.

``get_dataset(kind, name, ...)`` returns a dataset whose ``batch_at(step, ...)`` is the batch
of a training step and whose ``images_at(indices)`` reads stored examples as uint8:

``embedded``   digits / shapes of ``score_jax.data.embedded`` (nothing to download).
``folder``     local image files, ImageFolder style: ``<path>/train/<class>/*.jpg`` (AFHQ) or a
               flat folder (FFHQ, CelebA-HQ); decoded lazily with Pillow.
``tfds``       a TFDS dataset (cifar10, celeb_a, lsun/church_outdoor, ...) prepared in the
               array_record format in a local data_dir; read with ``tfds.data_source``, never
               downloaded (needs the optional ``tensorflow-datasets`` package, not TensorFlow).
``tfrecords``  ProGAN-format TFRecord files (``celebahq-r08.tfrecords``), as score_sde reads
               CelebA-HQ and FFHQ; parsed here in pure Python, without TensorFlow.

Why index-based random access (the design of grain) rather than a tf.data stream: the batch
of step s is a function of (seed, s) alone, computed from ``embedded.batch_positions`` by
arithmetic, so a resumed run needs no saved iterator state, only the step it restores, and
each host reads its own contiguous share of the global batch without coordination.  The
same global batch comes out for any process count.  tf.data reaches determinism only with
care (no parallel interleave races, iterator checkpoints sized by its buffers), and its
shuffle is a window, not a permutation.  Files and TFRecords are read with numpy and Pillow,
so the folder and tfrecords kinds need no TensorFlow runtime (about 1.4 GB of wheels that
would also claim the accelerators next to JAX); tensorflow-datasets is kept optional,
because even without TensorFlow it pulls pyarrow, array-record and a dozen other packages.
The price is per-example work in Python: a thread pool decodes a batch's images.

Every kind shares ``embedded.IndexedDataset``: gather the examples of the step's stream
positions, then ``embedded.preprocess_batch`` (flip, dequantize, map to ``data_range``),
with the flip bit and noise of an example drawn from ``default_rng([seed, 1, epoch, index])``.

Photos are made square as score_sde does: a centred square of the shorter side (or of
``crop_size``, e.g. 140 for CelebA), resized to image_size with Pillow's antialiased filter;
stored pixels are uint8, 256 levels.  Errors raised for bad settings are one line that
starts with the option's name (``path: ...``), so the training code can prefix it with
``config.data.``.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import glob
import hashlib
import json
import logging
import math
import os
import re
import struct
import threading
from typing import Any, Iterator, Mapping, Optional, Sequence

import numpy as np
from PIL import Image

from score_jax.data import embedded
from score_jax.data.embedded import DatasetInfo, IndexedDataset

KINDS = ("embedded", "folder", "tfds", "tfrecords")
# What a folder dataset does with a file it cannot decode (``on_unreadable``) and with an image
# whose shorter side is below the crop (``small_images``); see ``FolderDataset``.
ON_UNREADABLE = ("error", "skip")
SMALL_IMAGES = ("upscale", "error")
SKIPPED_FILE = "data_skipped.txt"  # <index_dir>/data_skipped.txt: the files a "skip" run leaves out
INDEX_DIR = "data_index"  # <index_dir>/data_index/<root hash>.json: the cached header scan
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
LEVELS = 256  # every file-backed kind stores uint8 pixels

# Options of each file-backed kind, with their defaults (the embedded kind's are those of
# ``embedded.get_dataset``).
FOLDER_OPTIONS: Mapping[str, Any] = {"resize_method": "bilinear", "crop_size": None, "channels": 3,
                                     "class_folders": None, "num_threads": 8, "cache_size": 0}
TFDS_OPTIONS: Mapping[str, Any] = {"resize_method": "bilinear", "crop_size": None, "image_key": "image",
                                   "label_key": None}
TFRECORDS_OPTIONS: Mapping[str, Any] = {}

# Folder split -> sub-folders tried in order (AFHQ calls its test split "val").
FOLDER_SPLIT_DIRS = {"train": ("train",), "test": ("test", "val", "validation")}

_FOLDER_HINTS = {
    "afhq": ('download AFHQ (github.com/clovaai/stargan-v2, "bash download.sh afhq-dataset") and set '
             "--config.data.path to the folder holding train/ and val/"),
    "ffhq": ('download FFHQ (github.com/NVlabs/ffhq-dataset, "python download_ffhq.py --images") and set '
             "--config.data.path to its images folder, with class_folders=False for its numbered sub-folders"),
    "celebahq": ("download CelebAMask-HQ (github.com/switchablenorms/CelebAMask-HQ) and set --config.data.path "
                 "to its CelebA-HQ-img folder, or use kind 'tfrecords' with ProGAN's files"),
}
_FOLDER_HINT_DEFAULT = ("put the images in <path>/train/<class>/ (or directly in <path>/train/ or <path>) "
                        "and set --config.data.path to <path>")


def _folder_hint(name: str) -> str:
  key = re.sub(r"[^a-z0-9]", "", name.lower())  # "AFHQ-v2" -> "afhqv2", "celeba_hq" -> "celebahq"
  return next((hint for prefix, hint in _FOLDER_HINTS.items() if key.startswith(prefix)), _FOLDER_HINT_DEFAULT)


def _check_option(valid: bool, field: str, message: str) -> None:
  if not valid:
    raise ValueError(f"{field}: {message}")


def _check_optional_int(value: Any, field: str, low: int) -> Optional[int]:
  return None if value is None else embedded._check_int(value, field, low)  # pylint: disable=protected-access


# --- decoding photos ----------------------------------------------------------------------
def center_crop_resize(image: Image.Image, size: int, *, crop_size: Optional[int] = None,
                       method: str = "bilinear") -> Image.Image:
  """score_sde's ``central_crop`` then ``resize``: a centred square, scaled to size × size.

  Args:
    image: a Pillow image of any size.
    size: the output height and width.
    crop_size: side of the centred square; None for the image's shorter side.
    method: a key of ``embedded.RESIZE_METHODS``; Pillow widens the filter when shrinking,
      so down-sampling is antialiased (like ``tf.image.resize(..., antialias=True)``).

  Returns:
    A size × size Pillow image of the same mode.

  Raises:
    ValueError: ``crop_size`` exceeds the image's shorter side.
  """
  w, h = image.size
  side = min(w, h) if crop_size is None else crop_size
  if side > min(w, h):
    raise ValueError(f"crop_size: {crop_size} exceeds the shorter side of a {w}×{h} image; "
                     "use a smaller crop_size or None.")
  left, top = (w - side) // 2, (h - side) // 2  # integer offsets, as tf.image.crop_to_bounding_box
  square = image.crop((left, top, left + side, top + side))
  if side == size:
    return square
  # Crop first: resize(box=...) would let the filter reach pixels outside the square.
  return square.resize((size, size), resample=embedded.RESIZE_METHODS[method])


def convert_mode(image: Image.Image, channels: int) -> Image.Image:
  """A Pillow image of any mode as mode "L" (``channels`` = 1) or "RGB" (3).

  The rules, one per kind of file a photo folder holds:

  * 16-bit samples (grey PNGs open as mode "I;16" or "I") keep their high byte, v >> 8, as
    Pillow itself reduces 16-bit RGB PNGs (its own "I" → "L" conversion would clip at 255);
  * alpha (RGBA, LA, PA, a palette's transparency) is dropped and the stored colours kept, as
    torchvision's image loader and ``tf.io.decode_png(channels=3)`` do;
  * palette images take their palette's colours; bilevel images become 0 / 255;
  * CMYK (print JPEGs) uses Pillow's rule R = (255 − C)(255 − K) / 255, likewise G and B, with no
    ICC profile applied;
  * grey becomes RGB by repeating it; RGB becomes grey by ITU-R 601-2 luma,
    L = 0.299 R + 0.587 G + 0.114 B (Pillow's "L").
  """
  if image.mode.startswith("I;16") or image.mode == "I":
    high = np.clip(np.asarray(image).astype(np.int64), 0, 65535) >> 8
    image = Image.fromarray(high.astype(np.uint8), "L")
  mode = "L" if channels == 1 else "RGB"
  return image if image.mode == mode else image.convert(mode)


def to_uint8_array(image: Image.Image, channels: int) -> np.ndarray:
  """A Pillow image of any mode as uint8 [H, W, C], C = ``channels`` (``convert_mode``'s rules)."""
  array = np.asarray(convert_mode(image, channels), np.uint8)
  return array[..., None] if channels == 1 else array  # [H, W, C]


class UnreadableImageError(ValueError):
  """A file cannot be decoded as an image; the message is one line naming it (``file``, ``reason``)."""

  def __init__(self, message: str, file: str = "", reason: str = ""):
    super().__init__(message)
    self.file, self.reason = file, reason


def _reason(error: BaseException, file: str = "") -> str:
  """One short line saying why Pillow could not read ``file`` (its name, which Pillow repeats, left out)."""
  text = str(error).replace(f" {file!r}", "").replace(f" '{file}'", "") if file else str(error)
  text = " ".join(text.split()) or type(error).__name__
  return text if len(text) <= 120 else text[:117] + "..."


def load_image(file: str, *, size: int, channels: int = 3, crop_size: Optional[int] = None,
               method: str = "bilinear") -> np.ndarray:
  """Decodes an image file, converts it (``to_uint8_array``'s rules), centre-crops and resizes it.

  Args:
    file: path of a PNG, JPEG, BMP or WebP file.
    size: output height and width.
    channels: 1 (grey) or 3 (RGB).
    crop_size: side of the centred square cut before resizing; None for the shorter side.  An
      image whose shorter side is below it gives its shorter side's square (then upscaled).
    method: Pillow resampling, a key of ``embedded.RESIZE_METHODS``.

  Returns:
    uint8 [size, size, channels].

  Raises:
    UnreadableImageError: the file is not an image Pillow can decode (empty, truncated, not an
      image); the message names the file and the reason.
  """
  try:
    with Image.open(file) as image:
      image.load()
      image = convert_mode(image, channels)
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError, struct.error, ... pylint: disable=broad-except
    raise UnreadableImageError(f"{file}: {_reason(e, file)}", file, _reason(e, file)) from e
  side = None if crop_size is None else min(crop_size, *image.size)
  return to_uint8_array(center_crop_resize(image, size, crop_size=side, method=method), channels)


# --- checking a folder's files ------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class FolderScan:
  """What ``scan_files`` found.

  Attributes:
    sizes: {file: (width, height)} of every file whose header decodes.
    unreadable: ((file, reason), ...) of the files whose header does not, in listing order.
    scanned: headers read by this scan.
    reused: files taken from the cached index (same size and modification time as when scanned).
  """

  sizes: Mapping[str, tuple[int, int]]
  unreadable: tuple[tuple[str, str], ...]
  scanned: int
  reused: int


def index_path(index_dir: str, root: str) -> str:
  """Where the header scan of the folder ``root`` is cached: <index_dir>/data_index/<hash of root>.json."""
  key = hashlib.sha1(os.path.abspath(root).encode()).hexdigest()[:16]
  return os.path.join(index_dir, INDEX_DIR, f"{key}.json")


def _read_index(path: str, root: str) -> dict[str, list]:
  try:
    with open(path) as f:
      stored = json.load(f)
    if stored.get("version") == 1 and stored.get("root") == os.path.abspath(root):
      return dict(stored["files"])
  except (OSError, ValueError, KeyError, TypeError, AttributeError):
    pass  # missing or damaged: rebuilt by this scan
  return {}


def _write_atomic(path: str, text: str) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  tmp = f"{path}.tmp{os.getpid()}"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def scan_files(files: Sequence[str], root: str, *, num_threads: int = 8, index_dir: Optional[str] = None,
               write_index: bool = True) -> FolderScan:
  """Reads the header of every file, in ``num_threads`` threads (Pillow decodes no pixels).

  Args:
    files: paths under ``root``.
    root: the folder they were listed from (the index stores paths relative to it).
    num_threads: header-reading threads.
    index_dir: where the index is cached (a run's workdir); a file whose size and modification
      time match its entry is not opened again.  None: no cache.
    write_index: write the updated index (one process of a multi-process run does).

  Returns:
    A ``FolderScan``.
  """
  path = index_path(index_dir, root) if index_dir else None
  cached = _read_index(path, root) if path else {}
  entries: dict[str, list] = {}
  todo: list[tuple[str, str, list[int]]] = []
  for file in files:
    rel = os.path.relpath(file, root)
    try:
      st = os.stat(file)
    except OSError as e:  # e.g. a dangling symbolic link
      entries[rel] = [0, 0, None, _reason(e)]
      continue
    key = [st.st_size, st.st_mtime_ns]
    if rel in cached and list(cached[rel][:2]) == key:
      entries[rel] = cached[rel]
    else:
      todo.append((rel, file, key))

  def probe(item: tuple[str, str, list[int]]) -> tuple[str, list]:
    rel, file, key = item
    try:
      with Image.open(file) as image:
        return rel, key + [list(image.size), None]
    except Exception as e:  # pylint: disable=broad-except
      return rel, key + [None, _reason(e, file)]

  if todo:
    with concurrent.futures.ThreadPoolExecutor(max(1, min(num_threads, len(todo)))) as pool:
      entries.update(pool.map(probe, todo))
  if path and write_index and (todo or set(cached) != set(entries)):
    try:
      _write_atomic(path, json.dumps({"version": 1, "root": os.path.abspath(root), "files": entries}))
    except OSError as e:  # a read-only workdir: the scan still holds, it is just not cached
      logging.warning("Could not cache the image index in %s: %s", path, e)
  sizes, unreadable = {}, []
  for file in files:
    _, _, size, reason = entries[os.path.relpath(file, root)]
    if size is None:
      unreadable.append((file, reason))
    else:
      sizes[file] = tuple(size)
  return FolderScan(sizes=sizes, unreadable=tuple(unreadable), scanned=len(todo), reused=len(files) - len(todo))


def _some_files(items: Sequence[tuple[str, str]], root: str, at_most: int = 3) -> str:
  shown = "; ".join(f"{os.path.relpath(f, root)} ({why})" for f, why in items[:at_most])
  return shown + (f"; and {len(items) - at_most} more" if len(items) > at_most else "")


# --- folder -------------------------------------------------------------------------------
def _is_image(name: str) -> bool:
  return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def _walk_images(root: str) -> list[str]:
  """Image files under ``root`` (recursively, hidden entries skipped), in sorted path order."""
  found = []
  for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
    dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
    found.extend(os.path.join(dirpath, f) for f in sorted(filenames) if _is_image(f))
  return found


def list_image_folder(root: str, class_folders: Optional[bool] = None
                      ) -> tuple[list[str], np.ndarray, tuple[str, ...]]:
  """Lists an image folder once, in a fixed order.

  Args:
    root: the split's folder.
    class_folders: True: each sub-folder is a class (its images found recursively) and the
      labels follow the sorted folder names; False: every image under ``root`` is one class
      "all"; None: class folders when ``root`` holds sub-folders with images and no images
      of its own.

  Returns:
    (files [N] sorted by class then path, labels int32 [N], class names).

  Raises:
    FileNotFoundError: no images.  ValueError: images beside class folders with class_folders=True.
  """
  entries = sorted(os.scandir(root), key=lambda e: e.name)
  loose = [e.name for e in entries if e.is_file() and _is_image(e.name)]
  subdirs = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
  per_class = {d: _walk_images(os.path.join(root, d)) for d in subdirs} if class_folders is not False else {}
  per_class = {d: files for d, files in per_class.items() if files}
  if class_folders is None:
    class_folders = bool(per_class) and not loose
  if class_folders:
    if loose:
      raise ValueError(f"class_folders: {root} holds images ({loose[0]}, ...) beside its class folders; "
                       "move them into a class folder, or set class_folders=False for one class.")
    names = tuple(per_class)
    files = [f for d in names for f in per_class[d]]
    labels = np.concatenate([np.full(len(per_class[d]), k, np.int32) for k, d in enumerate(names)]
                            ) if names else np.zeros(0, np.int32)
  else:
    names = ("all",)
    files = _walk_images(root)
    labels = np.zeros(len(files), np.int32)
  return files, labels, names


class _FileDataset(IndexedDataset):
  """What the file-backed kinds share: metadata from their attributes (name, split,
  image_size, channels, levels, class_names), uint8 pixels of 256 levels."""

  class_names: tuple[str, ...] = ("all",)

  @property
  def info(self) -> DatasetInfo:
    return DatasetInfo(name=self.name, split=self.split, num_examples=len(self), image_size=self.image_size,
                       channels=self.channels, levels=self.levels, num_classes=len(self.class_names),
                       class_names=self.class_names)


class FolderDataset(_FileDataset):
  """Images in a local folder, listed and checked once, decoded per batch (see ``get_dataset``).

  Before anything is read for training, every file's header is decoded (``scan_files``; cached
  in ``index_dir`` so a resumed run does not re-scan an unchanged folder).  A file that fails
  is refused in one line (``on_unreadable="error"``) or left out (``"skip"``: the dataset is
  the readable files, listed with their reasons in ``<index_dir>/data_skipped.txt``).  A file
  whose header decodes but whose pixels do not (a truncated JPEG) surfaces at its first read:
  "error" raises ``UnreadableImageError``; "skip" reads the next readable file of the listing
  in its place — the same one in every run, so batches stay a function of (seed, step) — and
  adds it to the list.  An image whose shorter side is below the crop (``crop_size``, else
  ``image_size``) is upscaled from its largest centred square (``small_images="upscale"``) or
  refused (``"error"``).
  """

  def __init__(self, name: str, split: str, path: str, *, image_size: int, random_flip: bool,
               uniform_dequantization: bool, data_range: tuple[float, float], resize_method: str = "bilinear",
               crop_size: Optional[int] = None, channels: int = 3, class_folders: Optional[bool] = None,
               num_threads: int = 8, cache_size: int = 0, on_unreadable: str = "error",
               small_images: str = "upscale", index_dir: Optional[str] = None, write_index: bool = True):
    self.name, self.split, self.path = name, split, path
    self.image_size, self.resize_method, self.crop_size, self.channels = image_size, resize_method, crop_size, channels
    self.random_flip, self.uniform_dequantization, self.data_range = random_flip, uniform_dequantization, data_range
    self.levels = LEVELS
    self.num_threads, self.cache_size = num_threads, cache_size
    self.on_unreadable, self.small_images = on_unreadable, small_images
    self.root = self._split_root(name, split, path)
    listed, labels, self.class_names = list_image_folder(self.root, class_folders)
    if not listed:
      raise FileNotFoundError(f"path: no images in {self.root} (looked for <class>/*.{{png,jpg,jpeg}} and "
                              f"*.{{png,jpg,jpeg}}); {_folder_hint(name)}.")
    self.scan = scan_files(listed, self.root, num_threads=num_threads, index_dir=index_dir, write_index=write_index)
    bad = self.scan.unreadable
    if bad and on_unreadable == "error":
      raise UnreadableImageError(
          f"on_unreadable: {len(bad)} of {len(listed)} files in {self.root} cannot be read as images: "
          f"{_some_files(bad, self.root)}. Repair or remove them, or set on_unreadable='skip' to leave them "
          "out (they are then listed in <workdir>/data_skipped.txt).")
    need = crop_size or image_size
    small = [(f, "{}×{}".format(*wh)) for f, wh in self.scan.sizes.items() if min(wh) < need]
    if small and small_images == "error":
      raise ValueError(f"small_images: {len(small)} images in {self.root} are smaller than the {need}-pixel "
                       f"{'crop' if crop_size else 'image size'}: {_some_files(small, self.root)}. Remove them, or "
                       "set small_images='upscale' to enlarge their largest centred square.")
    keep = [i for i, f in enumerate(listed) if f in self.scan.sizes]
    if not keep:
      raise FileNotFoundError(f"path: none of the {len(listed)} image files in {self.root} can be read "
                              f"({_some_files(bad, self.root)}).")
    self.files, self.labels = [listed[i] for i in keep], labels[keep]
    self.labels.flags.writeable = False
    logging.info("%s: %d images in %s (%d headers read, %d from the index of an earlier scan)%s.", name,
                 len(self.files), self.root, self.scan.scanned, self.scan.reused,
                 f"; {len(small)} smaller than {need} px, upscaled" if small else "")
    self._skipped = list(bad)  # (file, reason): left out at the scan, then those found at a read
    self._bad: set[int] = set()
    self.skipped_path = None
    if index_dir and write_index:
      self.skipped_path = os.path.join(index_dir, SKIPPED_FILE if split == "train" else f"data_skipped_{split}.txt")
    if bad:
      logging.warning("%s: %d of %d files in %s cannot be read as images and are left out (on_unreadable='skip')%s: %s",
                      name, len(bad), len(listed), self.root,
                      f", listed in {self.skipped_path}" if self.skipped_path else "", _some_files(bad, self.root))
    if self.skipped_path and (bad or os.path.exists(self.skipped_path)):
      self._write_skipped()
    self._cache: collections.OrderedDict[int, np.ndarray] = collections.OrderedDict()
    self._lock = threading.Lock()

  def _write_skipped(self) -> None:
    _write_atomic(self.skipped_path, "".join(f"{f}\t{why}\n" for f, why in self._skipped))

  @staticmethod
  def _split_root(name: str, split: str, path: str) -> str:
    """The folder of ``split``: <path>/train; <path>/test, val or validation; for "train", <path> itself
    when it has no train/ sub-folder."""
    if not os.path.isdir(path):
      raise FileNotFoundError(f"path: no image folder at {path}; {_folder_hint(name)}.")
    for sub in FOLDER_SPLIT_DIRS[split]:
      if os.path.isdir(os.path.join(path, sub)):
        return os.path.join(path, sub)
    if split == "train":
      return path
    tried = ", ".join(f"{d}/" for d in FOLDER_SPLIT_DIRS[split])
    raise FileNotFoundError(f"path: no {split} split in {path} (looked for {tried}); {_folder_hint(name)}.")

  def __len__(self) -> int:
    return len(self.files)

  def __repr__(self) -> str:
    return (f"FolderDataset(name={self.name!r}, split={self.split!r}, root={self.root!r}, n={len(self)}, "
            f"image_size={self.image_size}, classes={len(self.class_names)})")

  def _load(self, index: int) -> np.ndarray:
    if self.cache_size:
      with self._lock:
        if index in self._cache:
          self._cache.move_to_end(index)
          return self._cache[index]
    image = load_image(self.files[index], size=self.image_size, channels=self.channels, crop_size=self.crop_size,
                       method=self.resize_method)  # [S, S, C] uint8
    if self.cache_size:
      with self._lock:
        self._cache[index] = image
        while len(self._cache) > self.cache_size:
          self._cache.popitem(last=False)
    return image

  def _read(self, index: int) -> tuple[int, np.ndarray]:
    """(the index read, its image): ``index``, or under "skip" the next readable one after it."""
    n = len(self.files)
    for k in range(n):
      i = (index + k) % n
      if i in self._bad:
        continue
      try:
        return i, self._load(i)
      except UnreadableImageError as e:
        if self.on_unreadable == "error":
          raise UnreadableImageError(
              f"on_unreadable: {e.file} passed the header check but its pixels cannot be decoded ({e.reason}). "
              "Repair or remove it, or set on_unreadable='skip' to read the next file in its place.", e.file,
              e.reason) from None
        with self._lock:
          if i not in self._bad:
            self._bad.add(i)
            self._skipped.append((e.file, e.reason))
            logging.warning("%s: %s cannot be decoded (%s); the next readable file is read in its place "
                            "(on_unreadable='skip').", self.name, e.file, e.reason)
            if self.skipped_path:
              self._write_skipped()
    raise UnreadableImageError(f"on_unreadable: none of the {n} files in {self.root} can be decoded.")

  def images_at(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Decodes the images ``indices`` (in a thread pool): (uint8 [n, S, S, C], int32 [n] labels)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    order = indices.tolist()
    if self.num_threads > 1 and len(order) > 1:
      with concurrent.futures.ThreadPoolExecutor(min(self.num_threads, len(order))) as pool:
        read = list(pool.map(self._read, order))
    else:
      read = [self._read(i) for i in order]
    out = np.stack([image for _, image in read]) if read else np.zeros((0, *self.info.shape), np.uint8)
    return out, self.labels[np.asarray([i for i, _ in read], np.int64)]


# --- TFRecords without TensorFlow ---------------------------------------------------------
def _crc32c_table() -> tuple[int, ...]:
  table = []
  for n in range(256):
    c = n
    for _ in range(8):
      c = (c >> 1) ^ (0x82F63B78 if c & 1 else 0)  # Castagnoli polynomial, reflected
    table.append(c)
  return tuple(table)


_CRC32C = _crc32c_table()


def crc32c(data: bytes) -> int:
  """CRC-32C (Castagnoli) of ``data``, in pure Python (about 10 MB/s: for headers and tests)."""
  crc = 0xFFFFFFFF
  for byte in data:
    crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
  return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
  """The TFRecord checksum: CRC-32C rotated right by 15 bits plus 0xA282EAD8 (mod 2³²)."""
  crc = crc32c(data)
  return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


@functools.lru_cache(maxsize=8)
def _tfrecord_index(file: str, size: int, mtime_ns: int) -> tuple[np.ndarray, np.ndarray]:
  """(payload offsets int64 [N], lengths int64 [N]) of a TFRecord file, scanned once."""
  del mtime_ns  # part of the cache key only
  offsets, lengths = [], []
  with open(file, "rb") as f:
    pos = 0
    while pos < size:
      head = f.read(12)  # uint64 length, uint32 masked crc32c of those 8 bytes
      if len(head) < 12:
        raise ValueError(f"path: {file} is truncated at byte {pos} (an incomplete TFRecord header).")
      length, crc = struct.unpack("<QI", head)
      if masked_crc32c(head[:8]) != crc:
        raise ValueError(f"path: {file} is not an uncompressed TFRecord file (bad length checksum at byte {pos}).")
      offsets.append(pos + 12)
      lengths.append(length)
      pos += 12 + length + 4  # payload, then uint32 masked crc32c of the payload (not verified)
      if pos > size:
        raise ValueError(f"path: {file} is truncated (its last record ends past byte {size}).")
      f.seek(pos)
  return np.array(offsets, np.int64), np.array(lengths, np.int64)


def tfrecord_index(file: str) -> tuple[np.ndarray, np.ndarray]:
  """Scans a TFRecord file's framing once (cached): (payload offsets int64 [N], lengths int64 [N]).

  Each record is uint64 length, uint32 masked CRC-32C of the length, the payload, uint32
  masked CRC-32C of the payload.  The length checksums are verified; the payload ones are
  not (pure-Python CRC would cost more than decoding).
  """
  stat = os.stat(file)
  return _tfrecord_index(os.path.abspath(file), stat.st_size, stat.st_mtime_ns)


def _varint(buf: bytes, pos: int) -> tuple[int, int]:
  value, shift = 0, 0
  while True:
    byte = buf[pos]
    pos += 1
    value |= (byte & 0x7F) << shift
    if byte < 0x80:
      return value, pos
    shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, Any]]:
  """(field number, wire type, value) of a protobuf message: int for varints, bytes otherwise."""
  pos, end = 0, len(buf)
  while pos < end:
    key, pos = _varint(buf, pos)
    number, wire = key >> 3, key & 7
    if wire == 0:
      value, pos = _varint(buf, pos)
    elif wire == 2:
      length, pos = _varint(buf, pos)
      value, pos = buf[pos:pos + length], pos + length
    elif wire == 5:
      value, pos = buf[pos:pos + 4], pos + 4
    elif wire == 1:
      value, pos = buf[pos:pos + 8], pos + 8
    else:
      raise ValueError(f"path: a record is not a tf.train.Example (protobuf wire type {wire}).")
    yield number, wire, value


def _int64(value: int) -> int:
  return value - (1 << 64) if value >= 1 << 63 else value


def _parse_feature(buf: bytes) -> list[Any]:
  """A tf.train.Feature: oneof bytes_list = 1, float_list = 2, int64_list = 3 (each ``repeated value = 1``)."""
  out: list[Any] = []
  for kind, _, body in _fields(buf):
    out = []
    for number, wire, value in _fields(body):
      if number != 1:
        continue
      if kind == 1:
        out.append(bytes(value))
      elif kind == 2:
        out.extend(np.frombuffer(value, "<f4").tolist())  # packed (wire 2) or one fixed32 (wire 5)
      elif kind == 3 and wire == 0:
        out.append(_int64(value))
      elif kind == 3:  # packed varints
        pos = 0
        while pos < len(value):
          v, pos = _varint(value, pos)
          out.append(_int64(v))
  return out


def parse_example(serialized: bytes) -> dict[str, list[Any]]:
  """Decodes a serialized tf.train.Example into {feature name: list of bytes / floats / ints}.

  Example {Features features = 1}; Features {map<string, Feature> feature = 1}, each map entry
  a message {string key = 1; Feature value = 2}.
  """
  features: dict[str, list[Any]] = {}
  for number, _, body in _fields(serialized):
    if number != 1:
      continue
    for entry_number, _, entry in _fields(body):
      if entry_number != 1:
        continue
      key, value = "", b""
      for n, _, v in _fields(entry):
        if n == 1:
          key = bytes(v).decode("utf-8")
        elif n == 2:
          value = v
      features[key] = _parse_feature(value)
  return features


def _tfrecords_hint(name: str) -> str:
  return ("create them with ProGAN's dataset_tool.py (github.com/tkarras/progressive_growing_of_gans: "
          f"create_celebahq, or create_from_images for a folder such as FFHQ; NVlabs/ffhq-dataset ships "
          "ffhq-r*.tfrecords) and set --config.data.path to their folder, "
          f"or to one {name or '<name>'}-rNN.tfrecords file")


def find_tfrecords(path: str, name: str, image_size: Optional[int]) -> tuple[str, int]:
  """The ProGAN file of resolution ``image_size`` in ``path``: (file, image_size).

  ``path`` may be the file itself.  In a folder, ``<name>-rNN.tfrecords`` (NN = log2 of the
  resolution, two digits) is preferred, else the only ``*-rNN.tfrecords``; image_size None
  takes the resolution when the folder holds one only.
  """
  if os.path.isfile(path):
    match = re.search(r"-r(\d\d)\.tfrecords$", path)
    found = 2 ** int(match.group(1)) if match else None
    if image_size is not None and found is not None and found != image_size:
      raise ValueError(f"image_size: {image_size} differs from the resolution {found} of {path}.")
    if image_size is None and found is None:
      raise ValueError(f"image_size: needed for {path}, whose name does not say its resolution (no -rNN).")
    return path, image_size or found
  if not os.path.isdir(path):
    raise FileNotFoundError(f"path: no tfrecords folder or file at {path}; {_tfrecords_hint(name)}.")
  files = sorted(glob.glob(os.path.join(glob.escape(path), "*-r[0-9][0-9].tfrecords")))
  if image_size is None:
    sizes = sorted({2 ** int(f[-12:-10]) for f in files})
    if len(sizes) != 1:
      raise (ValueError(f"image_size: {path} holds the resolutions {sizes}; choose one.") if sizes else
             FileNotFoundError(f"path: no *-rNN.tfrecords in {path}; {_tfrecords_hint(name)}."))
    image_size = sizes[0]
  log2 = int(round(math.log2(image_size)))
  if 2 ** log2 != image_size:
    raise ValueError(f"image_size: ProGAN tfrecords hold powers of 2, got {image_size}.")
  tag = f"-r{log2:02d}.tfrecords"
  candidates = [f for f in files if f.endswith(tag)]
  named = [f for f in candidates if os.path.basename(f) == f"{name}{tag}"]
  if named or len(candidates) == 1:
    return (named or candidates)[0], image_size
  if not candidates:
    raise FileNotFoundError(f"path: no *{tag} (resolution {image_size}) in {path}; {_tfrecords_hint(name)}.")
  raise ValueError(f"path: {path} holds several *{tag} files "
                   f"({', '.join(os.path.basename(f) for f in candidates)}); name one of them.")


class TFRecordsDataset(_FileDataset):
  """ProGAN-format TFRecords: each record a tf.train.Example with ``shape`` [C, H, W] and raw ``data``."""

  def __init__(self, name: str, split: str, path: str, *, image_size: Optional[int], random_flip: bool,
               uniform_dequantization: bool, data_range: tuple[float, float]):
    if split != "train":
      raise ValueError(f"split: ProGAN tfrecords have one split, 'train' (score_sde evaluates on it too), "
                       f"got {split!r}.")
    self.name, self.split, self.path = name, split, path
    self.file, self.image_size = find_tfrecords(path, name, image_size)
    self.random_flip, self.uniform_dequantization, self.data_range = random_flip, uniform_dequantization, data_range
    self.levels = LEVELS
    self._index = tfrecord_index(self.file)  # one pass over the record headers
    if not len(self._index[0]):
      raise FileNotFoundError(f"path: {self.file} holds no records; {_tfrecords_hint(name)}.")

  @functools.cached_property
  def channels(self) -> int:
    """C, read from the first record."""
    return self.images_at([0])[0].shape[-1]

  def __len__(self) -> int:
    return len(self._index[0])

  def __repr__(self) -> str:
    return f"TFRecordsDataset(name={self.name!r}, file={self.file!r}, n={len(self)}, image_size={self.image_size})"

  def _decode(self, record: bytes) -> np.ndarray:
    example = parse_example(record)
    shape, data = example.get("shape"), example.get("data")
    if not shape or len(shape) != 3 or not data:
      raise ValueError(f"path: a record of {self.file} is not a ProGAN example (features 'shape' [C, H, W] and "
                       f"'data'), it has {sorted(example)}.")
    c, h, w = shape
    if (h, w) != (self.image_size, self.image_size) or len(data[0]) != c * h * w:
      raise ValueError(f"path: a record of {self.file} holds a {c}×{h}×{w} image, not "
                       f"{self.image_size}×{self.image_size} ({len(data[0])} bytes).")
    return np.frombuffer(data[0], np.uint8).reshape(c, h, w).transpose(1, 2, 0)  # [H, W, C]

  def images_at(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Reads and decodes the records ``indices``: (uint8 [n, H, W, C], int32 [n] zeros)."""
    indices = np.asarray(indices, np.int64).reshape(-1)
    offsets, lengths = self._index
    if len(indices) and (indices.min() < 0 or indices.max() >= len(offsets)):
      raise IndexError(f"indices: must lie in [0, {len(offsets)}).")
    images = []
    with open(self.file, "rb") as f:
      for i in indices.tolist():
        f.seek(int(offsets[i]))
        images.append(self._decode(f.read(int(lengths[i]))))
    out = np.stack(images) if images else np.zeros((0, *self.info.shape), np.uint8)
    return out, np.zeros(len(indices), np.int32)


# --- TFDS (optional dependency) -----------------------------------------------------------
def _tfds_build_hint(name: str, path: str) -> str:
  return (f"on a machine with network run `tfds build {name} --data_dir={path} --file_format=array_record` "
          "(that one needs TensorFlow) and copy the folder here")


def _import_tfds() -> Any:
  try:
    import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  except ImportError:
    raise ImportError("kind: 'tfds' needs the tensorflow-datasets package (not TensorFlow): "
                      "pip install 'score_jax[tfds]' (tensorflow-datasets and array-record).") from None
  return tfds


class TfdsDataset(_FileDataset):
  """A TFDS dataset prepared as array_record in a local data_dir, read by ``tfds.data_source``."""

  def __init__(self, name: str, split: str, path: str, *, image_size: Optional[int], random_flip: bool,
               uniform_dequantization: bool, data_range: tuple[float, float], resize_method: str = "bilinear",
               crop_size: Optional[int] = None, image_key: str = "image", label_key: Optional[str] = None):
    if not os.path.isdir(path):
      raise FileNotFoundError(f"path: no TFDS data_dir at {path}; {_tfds_build_hint(name, path)}.")
    tfds = _import_tfds()
    try:
      builder = tfds.builder(name, data_dir=path)
    except Exception as e:  # pylint: disable=broad-except
      if type(e).__name__ != "DatasetNotFoundError":
        raise
      raise ValueError(f"name: {name!r} is neither a TFDS catalog dataset nor prepared in {path}; "
                       "see the TFDS catalog for names such as cifar10, celeb_a, lsun/church_outdoor.") from None
    if not builder.is_prepared():
      raise FileNotFoundError(f"path: {name} is not prepared in {path} (looked for {builder.data_dir}/"
                              f"dataset_info.json); {_tfds_build_hint(name, path)}.")
    file_format = str(getattr(builder.info, "file_format", "") or "").lower()
    if "tfrecord" in file_format:
      raise ValueError(f"path: {name} in {builder.data_dir} is in the tfrecord format, which has no random access; "
                       f"rebuild it: {_tfds_build_hint(name, path)}.")
    splits = list(builder.info.splits.keys())
    base = split.split("[")[0]  # TFDS slicing such as "train[:90%]" passes through
    if base == "test" and "test" not in splits and "validation" in splits:
      split, base = "validation" + split[len(base):], "validation"
    if base not in splits:
      raise ValueError(f"split: {name} has no split {base!r}; it has {splits}.")
    features = builder.info.features
    if image_key not in features:
      raise ValueError(f"image_key: {name} has no feature {image_key!r}; its features are {sorted(features.keys())}.")
    if label_key is None and "label" in features:
      label_key = "label"
    if label_key is not None and label_key not in features:
      raise ValueError(f"label_key: {name} has no feature {label_key!r}; its features are {sorted(features.keys())}.")
    shape = tuple(features[image_key].shape)  # (H, W, C), H and W None when they vary
    if image_size is None:
      if shape[0] is None or shape[0] != shape[1]:
        raise ValueError(f"image_size: {name}'s images are {shape[0]}×{shape[1]}; set the size to train at.")
      image_size = int(shape[0])
    self.name, self.split, self.path = name, split, path
    self.image_size, self.resize_method, self.crop_size = image_size, resize_method, crop_size
    self.channels = int(shape[2] or 3)
    self.image_key, self.label_key = image_key, label_key
    self.class_names = tuple(features[label_key].names) if label_key is not None else ("all",)
    self.random_flip, self.uniform_dequantization, self.data_range = random_flip, uniform_dequantization, data_range
    self.levels = LEVELS
    self._source = builder.as_data_source(split=split)

  def __len__(self) -> int:
    return len(self._source)

  def __repr__(self) -> str:
    return f"TfdsDataset(name={self.name!r}, split={self.split!r}, path={self.path!r}, n={len(self)})"

  def _square(self, image: np.ndarray) -> np.ndarray:
    h, w = image.shape[:2]
    if (h, w) == (self.image_size, self.image_size) and self.crop_size is None:
      return image
    pil = Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)
    return to_uint8_array(center_crop_resize(pil, self.image_size, crop_size=self.crop_size,
                                             method=self.resize_method), self.channels)

  def images_at(self, indices: Any) -> tuple[np.ndarray, np.ndarray]:
    """Reads the examples ``indices``: (uint8 [n, S, S, C] centre-cropped and resized, int32 [n])."""
    indices = np.asarray(indices, np.int64).reshape(-1).tolist()
    getitems = getattr(self._source, "__getitems__", None)
    records = getitems(indices) if getitems else [self._source[i] for i in indices]
    images = [self._square(np.asarray(r[self.image_key], np.uint8)) for r in records]
    labels = [int(r[self.label_key]) if self.label_key is not None else 0 for r in records]
    out = np.stack(images) if images else np.zeros((0, *self.info.shape), np.uint8)
    return out, np.asarray(labels, np.int32)


# --- dispatcher ---------------------------------------------------------------------------
def _check_options(kind: str, options: Mapping[str, Any], known: Mapping[str, Any]) -> dict[str, Any]:
  unknown = sorted(set(options) - set(known))
  if unknown:
    raise ValueError(f"{unknown[0]}: not an option of kind {kind!r}; its options are {sorted(known) or 'none'}.")
  opts = {**known, **options}
  if "resize_method" in opts:
    _check_option(opts["resize_method"] in embedded.RESIZE_METHODS, "resize_method",
                  f"unknown {opts['resize_method']!r}; choose one of {sorted(embedded.RESIZE_METHODS)}.")
  if "crop_size" in opts:
    opts["crop_size"] = _check_optional_int(opts["crop_size"], "crop_size", 1)
  if "channels" in opts:
    _check_option(opts["channels"] in (1, 3) and not isinstance(opts["channels"], bool), "channels",
                  f"must be 1 (grey) or 3 (RGB), got {opts['channels']!r}.")
  if "class_folders" in opts:
    _check_option(opts["class_folders"] in (None, True, False), "class_folders",
                  f"must be None (auto), True or False, got {opts['class_folders']!r}.")
  if "num_threads" in opts:
    embedded._check_int(opts["num_threads"], "num_threads", 1)  # pylint: disable=protected-access
  if "cache_size" in opts:
    embedded._check_int(opts["cache_size"], "cache_size", 0)  # pylint: disable=protected-access
  for key in ("image_key", "label_key"):
    if key in opts:
      _check_option(isinstance(opts[key], str) or (key == "label_key" and opts[key] is None), key,
                    f"must be a feature name, got {opts[key]!r}.")
  return opts


def get_dataset(kind: str, name: str, *, split: str = "train", path: Optional[str] = None,
                image_size: Optional[int] = None, random_flip: Optional[bool] = None,
                uniform_dequantization: bool = False, data_range: Sequence[float] = (0.0, 1.0),
                on_unreadable: str = "error", small_images: str = "upscale", index_dir: Optional[str] = None,
                write_index: bool = True, **options: Any) -> IndexedDataset:
  """A training dataset of one of ``KINDS``, validated, with the ``IndexedDataset`` interface.

  Every result has ``.info`` (``DatasetInfo``), ``.levels``, ``.data_range``, ``len()``,
  ``.batch_at(step, *, global_batch_size, seed, process_index=0, process_count=1)``,
  ``.iterate(start_step, ...)`` and ``.images_at(indices) -> (uint8 [n, H, W, C], int32 [n])``.

  Args:
    kind: "embedded", "folder", "tfds" or "tfrecords".
    name: embedded: "digits" or "shapes"; folder: a free name (afhq, ffhq, celebahq get
      download hints in errors); tfds: a catalog name such as "cifar10" or "lsun/church_outdoor";
      tfrecords: the file prefix, e.g. "celebahq" for celebahq-r08.tfrecords.
    split: "train" or "test".  folder: <path>/train, or <path> itself without a train/ folder;
      "test" is <path>/test, else val/ (AFHQ), else validation/.  tfds: any split of the
      dataset (slices such as "train[:1000]" too); "test" falls back to "validation" when the
      dataset has no test split (celeb_a has both, lsun only validation).  tfrecords: "train".
    path: folder: the dataset folder; tfds: the data_dir; tfrecords: their folder or one file;
      embedded: None.
    image_size: H = W.  None: embedded, the dataset's default; tfds, the stored size when
      fixed and square; tfrecords, the one resolution in the folder; folder: required.
    random_flip: mirror each example with probability ½; None for the default (embedded: per
      dataset; every other kind: on, as in score_sde).
    uniform_dequantization: (k + u) / levels instead of k / (levels − 1).
    data_range: (lo, hi) that [0, 1] is mapped onto; (−1, 1) is score_sde's "centered".
    on_unreadable: folder: "error" (a file that cannot be decoded stops the run in one line
      naming it) or "skip" (left out and listed in <index_dir>/data_skipped.txt); see
      ``FolderDataset``.  Other kinds: "error" only.
    small_images: folder: "upscale" (an image smaller than the crop is enlarged) or "error".
      Other kinds: "upscale" only.
    index_dir: folder: where the header scan is cached and data_skipped.txt written (the run's
      workdir); None: no cache, no list.
    write_index: folder: write those files (False on all but one process of a run).
    **options: per kind.  embedded: resize_method and the dataset's own (``embedded.get_dataset``).
      folder: resize_method ("bilinear"), crop_size (None: the shorter side; CelebA in
      score_sde: 140), channels (3, or 1 for grey), class_folders (None: auto; False for
      FFHQ's numbered sub-folders), num_threads (8, decoding threads), cache_size (0, decoded
      images kept in memory, least recently used dropped).  tfds: resize_method, crop_size,
      image_key ("image"), label_key (None: "label" when the dataset has one, else all 0).
      tfrecords: none.

  Returns:
    An ``IndexedDataset`` (``embedded.EmbeddedDataset``, ``FolderDataset``, ``TfdsDataset`` or
    ``TFRecordsDataset``).

  Raises:
    ValueError, FileNotFoundError: a bad setting or missing data; one line starting with
      the option's name, saying what was looked for and how to get the data.
    ImportError: kind "tfds" without the tensorflow-datasets package (starts with "kind:").
  """
  if kind not in KINDS:
    raise ValueError(f"kind: unknown {kind!r}; choose one of {list(KINDS)}.")
  _check_option(isinstance(name, str) and bool(name), "name", f"must be a non-empty string, got {name!r}.")
  _check_option(isinstance(split, str) and bool(split), "split", f"must be a non-empty string, got {split!r}.")
  _check_option(on_unreadable in ON_UNREADABLE, "on_unreadable",
                f"unknown {on_unreadable!r}; choose one of {list(ON_UNREADABLE)}.")
  _check_option(small_images in SMALL_IMAGES, "small_images",
                f"unknown {small_images!r}; choose one of {list(SMALL_IMAGES)}.")
  if kind != "folder":
    _check_option(on_unreadable == "error", "on_unreadable",
                  f"{on_unreadable!r} applies to kind 'folder', whose files are decoded here; kind {kind!r} takes 'error'.")
    _check_option(small_images == "upscale", "small_images",
                  f"{small_images!r} applies to kind 'folder'; kind {kind!r} takes 'upscale'.")
  if kind == "embedded":
    _check_option(not path, "path", f"kind 'embedded' reads no files; leave it unset, got {path!r}.")
    return embedded.get_dataset(name, split=split, image_size=image_size, random_flip=random_flip,
                                uniform_dequantization=uniform_dequantization, data_range=data_range, **options)
  if not (isinstance(path, (str, os.PathLike)) and str(path)):
    how = {"folder": lambda: _folder_hint(name), "tfrecords": lambda: _tfrecords_hint(name),
           "tfds": lambda: _tfds_build_hint(name, "<path>")}[kind]()
    raise ValueError(f"path: not set; kind {kind!r} reads local files and never downloads: {how}.")
  path = os.path.expanduser(os.fspath(path))
  image_size = _check_optional_int(image_size, "image_size", 1)
  common = dict(random_flip=True if random_flip is None else bool(random_flip),
                uniform_dequantization=bool(uniform_dequantization),
                data_range=embedded._check_data_range(data_range))  # pylint: disable=protected-access
  if kind == "folder":
    opts = _check_options(kind, options, FOLDER_OPTIONS)
    _check_option(split in FOLDER_SPLIT_DIRS, "split", f"kind 'folder' has 'train' and 'test', got {split!r}.")
    _check_option(image_size is not None, "image_size",
                  "kind 'folder' needs it: each image is centre-cropped and resized to image_size × image_size.")
    return FolderDataset(name, split, path, image_size=image_size, on_unreadable=on_unreadable,
                         small_images=small_images, index_dir=index_dir, write_index=write_index, **common, **opts)
  if kind == "tfds":
    opts = _check_options(kind, options, TFDS_OPTIONS)
    return TfdsDataset(name, split, path, image_size=image_size, **common, **opts)
  _check_options(kind, options, TFRECORDS_OPTIONS)
  return TFRecordsDataset(name, split, path, image_size=image_size, **common)
