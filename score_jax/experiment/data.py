"""``config.sde`` and ``config.data`` become an SDE and a data source.

    config.sde       sde_lib.get_sde(name, **config.sde[name])              the forward SDE
    config.data      toy.get_target(name, **config.data[name])   (kind "toy": exact samples)
                     pipeline.get_dataset(kind, name, ...)       (images: embedded, folder,
                                                                  tfds, tfrecords)
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Optional, Union

import jax

from score_jax import sde as sde_lib
from score_jax.data import pipeline
from score_jax.data import toy
from score_jax.experiment.checks import ConfigDict, as_dict, check, config_field, is_int

Array = Any
IMAGE_KINDS = tuple(pipeline.KINDS)
DATA_KINDS = ("toy",) + IMAGE_KINDS


# --- data ---------------------------------------------------------------------------------
@dataclasses.dataclass(frozen=True)
class ToyData:
  """An analytic target; batches are exact samples drawn on the device.

  Attributes:
    name: the target's name.
    target: a ``score_jax.data.toy`` target (``sample``, ``log_prob``, exact scores).
  """

  name: str
  target: Any

  @property
  def shape(self) -> tuple[int, ...]:
    return (self.target.dim,)

  @property
  def num_classes(self) -> int:
    return 0

  def sample(self, key: jax.Array, batch_size: int) -> dict[str, Array]:
    """{"image": [batch_size, D]} exact samples (traceable)."""
    return {"image": self.target.sample(key, batch_size)}


@dataclasses.dataclass(frozen=True)
class ImageLayout:
  """What a network needs of image data, known without opening them.

  Attributes:
    image_size: H = W.
    channels: C.
    num_classes: labels (0: none).
    data_range: (lo, hi) of the pixel values.
  """

  image_size: int
  channels: int
  num_classes: int
  data_range: tuple[float, float]


@dataclasses.dataclass(frozen=True)
class ImageData:
  """An image dataset fed from the host.

  Attributes:
    name: the dataset's name.
    open_train: ``() -> dataset``, the training split (``pipeline`` dataset: ``batch_at``,
      ``info``, ``data_range``), opened once; ``train`` is its result.
    eval_split: name of the held-out split, built on demand by ``load_split``.
    build_split: ``split -> dataset`` with the same options as ``train`` (cached).
    layout: set when the data were not opened (``build_data(layout=...)``): the shape, labels
      and range then come from it, and ``train`` opens the data on first use.
  """

  name: str
  open_train: Callable[[], Any]
  eval_split: str
  build_split: Callable[[str], Any]
  layout: Optional[ImageLayout] = None

  @property
  def train(self) -> Any:
    return self.open_train()

  @property
  def info(self) -> Any:
    return self.train.info

  @property
  def shape(self) -> tuple[int, int, int]:
    if self.layout is not None:
      return (self.layout.image_size, self.layout.image_size, self.layout.channels)
    info = self.train.info
    return (info.image_size, info.image_size, info.channels)

  @property
  def num_classes(self) -> int:
    return self.layout.num_classes if self.layout is not None else int(self.train.info.num_classes)

  @property
  def data_range(self) -> tuple[float, float]:
    return self.layout.data_range if self.layout is not None else tuple(self.train.data_range)

  def load_split(self, split: str) -> Any:
    return self.build_split(split)


Data = Union[ToyData, ImageData]


def data_range(centered: Any) -> tuple[float, float]:
  """``config.data.centered`` as the data's (lo, hi)."""
  return (-1.0, 1.0) if centered else (0.0, 1.0)


def build_data(config: ConfigDict, workdir: Optional[str] = None, *, layout: Optional[ImageLayout] = None) -> Data:
  """The data of ``config.data``: files are listed and their headers checked, no pixel is decoded.

  ``workdir``: the run's folder, where a folder dataset caches its header scan and lists the
  files it leaves out (``config.data.on_unreadable="skip"``); None caches nothing.
  ``layout``: the image size, channels, labels and range, known without the data (a converted
  export's network, ``components.build(read_data=False)``): the data are then not opened here,
  only if a mode reads them.
  """
  d = config.data
  check(d.kind in DATA_KINDS, "config.data.kind", f"unknown data kind {d.kind!r}; choose one of {list(DATA_KINDS)}.")
  if d.kind == "toy":
    with config_field("config.data"):
      return ToyData(name=d.name, target=toy.get_target(d.name, **as_dict(d.get(d.name))))
  for field in ("image_size", "random_flip", "uniform_dequantization", "centered", "split", "eval_split", "path"):
    check(field in d, f"config.data.{field}", f"missing; image data (kind {d.kind!r}) need it "
          "(see configs/default_ve.py for every field).")
  image_size = d.image_size
  check(image_size is None or (is_int(image_size) and image_size >= 1), "config.data.image_size",
        f"must be an integer >= 1 (or None for the dataset's own size), got {image_size!r}.")

  def build_split(split: str) -> Any:
    with config_field("config.data.", sep=""):
      return pipeline.get_dataset(d.kind, d.name, split=split, path=d.path or None, image_size=image_size,
                                  random_flip=d.random_flip, uniform_dequantization=d.uniform_dequantization,
                                  data_range=data_range(d.centered), on_unreadable=d.get("on_unreadable", "error"),
                                  small_images=d.get("small_images", "upscale"), index_dir=workdir,
                                  write_index=jax.process_index() == 0, **as_dict(d.get("options")))

  data = ImageData(name=d.name, open_train=functools.lru_cache(maxsize=1)(lambda: build_split(d.split)),
                   eval_split=d.eval_split, build_split=functools.lru_cache(maxsize=2)(build_split), layout=layout)
  if layout is None:
    data.train  # pylint: disable=pointless-statement  (opened now: a missing file fails before anything compiles)
  return data


def build_sde(config: ConfigDict) -> sde_lib.SDE:
  """The SDE of ``config.sde`` (its name and the options of that name's subsection)."""
  with config_field("config.sde"):
    return sde_lib.get_sde(config.sde.name, **as_dict(config.sde.get(config.sde.name)))


def build_image_data(config: ConfigDict, what: str, workdir: Optional[str] = None) -> ImageData:
  """``build_data`` for a mode that needs images (``what`` names it in the error on toy data)."""
  data = build_data(config, workdir)
  check(isinstance(data, ImageData), "config.data.kind",
        f"{what} needs image data; toy targets (kind 'toy') have no images.")
  return data

