"""Published score_sde checkpoints -> score_jax NCSN++ / DDPM++ parameters.

Two source formats, read without TensorFlow and without torch:

* **score_sde** (Song et al. 2021, the Flax code release): a ``checkpoint_<n>`` file, the
  msgpack of ``flax.serialization`` holding score_sde's training state — ``params_ema``
  (the EMA weights, used by default), ``optimizer.target`` (the raw weights, with
  ``--params=raw``), ``step`` and the optimizer moments (ignored).  Its NCSN++ is a Flax
  Linen module whose sub-modules are auto-named in creation order, as score_jax's are;
  the name map below renames class prefixes (``ResnetBlockBigGANpp_3`` -> ``ResnetBlockBigGAN_3``),
  score_sde's ``NIN`` dense layers (``W [C_in, C_out]``, ``b``) to 1×1 convolutions, and its
  separately counted ``Upsample_k`` / ``Downsample_k`` to score_jax's single ``Resample_j``
  counter (which ones go up is read off the network, see ``_resample_kinds``).
* **diffusers** (the ``google/ncsnpp-*`` models converted from score_sde): a folder with
  ``config.json`` and ``diffusion_pytorch_model.safetensors`` (read with the ``safetensors``
  package's numpy API) or ``diffusion_pytorch_model.bin`` (a torch zip pickle, read by a
  small restricted unpickler that only rebuilds tensors).  Its ``UNet2DModel`` with
  ``SkipDownBlock2D`` / ``AttnSkipDownBlock2D`` / ``SkipUpBlock2D`` / ``AttnSkipUpBlock2D``
  blocks is NCSN++ with BigGAN blocks, FIR resampling, an output-skip and an input-skip
  (sum) pyramid and Fourier features; ``_diffusers_names`` walks that structure level by
  level.  Torch layouts are transposed: conv ``[O, I, kh, kw]`` -> ``[kh, kw, I, O]``,
  linear ``[O, I]`` -> ``[I, O]``.  Every field of its ``config.json`` is read
  (``diffusers_fields``; README, "Published checkpoints", has the table): the network is derived
  from it, GroupNorm group counts included where diffusers' differ from NCSN++'s
  (``diffusers_group_counts`` -> ``NCSNpp.group_counts``), or the field is refused in one line
  naming it, its value and what score_jax would compute instead.  No ``--config`` is needed:
  ``export`` then writes ``<out>/config.py`` for ``main.py --config=``.

EDM's network pickles (NVlabs/edm) are read, not yet converted: ``read_edm_pickle`` rebuilds a
snapshot as ``EDMObject`` data without running the code it carries (see its section below).

Either way the result is checked against the score_jax network: the first array that is
missing, left over or of another shape is named in a one-line ``PretrainedMismatch`` (a
ValueError).

Both formats hold networks trained with score_sde's conventions (σ(t) = σ_min (σ_max/σ_min)^t
conditioning for VE, inputs mapped to 2x − 1 by the network when the data are not centered),
so they must be sampled with ``config.model.conditioning="score_sde"`` (``score_jax.score_fn``);
the export written here records that and ``score_jax.experiment`` refuses any other setting.

Command line (writes an EMA export, ``<out>/ema/<step>``, plus ``<out>/pretrained.json``; every
refusal is one line on stderr, exit status 2)::

    python -m score_jax.pretrained --src=checkpoint_<n> --config=configs/ve/celebahq_256.py --out=pretrained/celebahq
    python main.py --config=configs/ve/celebahq_256.py --workdir=runs/celebahq_pt --mode=sample \\
        --config.model.pretrained=pretrained/celebahq --config.model.conditioning=score_sde
    python -m score_jax.pretrained --src=ncsnpp-celebahq-256 --out=pretrained/celebahq_hf    # a diffusers folder
    python main.py --config=pretrained/celebahq_hf/config.py --workdir=runs/celebahq_hf --mode=sample
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import io
import json
import math
import os
import pickle
import pprint
import textwrap
import zipfile
from typing import Any, Iterator

import flax.linen as nn
import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

from score_jax import checkpointing
from score_jax.models import layers

Array = Any
FORMATS = ("score_sde", "diffusers")
PARAMS = ("ema", "raw")
META_FILE = "pretrained.json"
CONDITIONING = "score_sde"  # what every converted network needs (score_jax.score_fn)


class PretrainedMismatch(ValueError):
  """The source file does not fit the network of the config; the message names the first array."""


# ---- reading the files ----------------------------------------------------------------------


def detect_format(src: str) -> str:
  """"export" (a folder this module wrote), "diffusers" (a folder with config.json) or "score_sde" (a file)."""
  if os.path.isdir(src):
    if os.path.exists(os.path.join(src, META_FILE)):
      return "export"
    if os.path.exists(os.path.join(src, "config.json")):
      return "diffusers"
    raise FileNotFoundError(f"{src} is a folder without {META_FILE} (a converted export) or config.json "
                            "(a diffusers model folder).")
  if os.path.isfile(src):
    return "score_sde"
  raise FileNotFoundError(f"{src} does not exist.")


def _flatten(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
  """{path tuple: leaf} of a nested mapping."""
  out = {}
  for k, v in tree.items():
    if hasattr(v, "items"):
      out.update(_flatten(v, prefix + (str(k),)))
    else:
      out[prefix + (str(k),)] = v
  return out


def read_score_sde(path: str, *, params: str = "ema") -> tuple[dict[tuple[str, ...], np.ndarray], int]:
  """Reads a score_sde ``checkpoint_<n>`` (flax msgpack of its training state).

  Args:
    path: the checkpoint file.
    params: "ema" for ``params_ema``, "raw" for ``optimizer.target``.

  Returns:
    ({module path tuple: array}, the checkpoint's step).
  """
  if params not in PARAMS:
    raise ValueError(f"params must be one of {list(PARAMS)}, got {params!r}.")
  with open(path, "rb") as f:
    try:
      state = flax.serialization.msgpack_restore(f.read())
    except Exception as e:  # msgpack raises its own exception types
      raise PretrainedMismatch(f"{path} is not a flax msgpack checkpoint ({type(e).__name__}: {e}).") from None
  if not isinstance(state, dict) or "params_ema" not in state or "optimizer" not in state:
    found = sorted(state) if isinstance(state, dict) else type(state).__name__
    raise PretrainedMismatch(f"{path} is not a score_sde training state (needs params_ema and optimizer; has {found}).")
  tree = state["params_ema"] if params == "ema" else state["optimizer"].get("target")
  if not isinstance(tree, dict):
    where = "params_ema" if params == "ema" else "optimizer.target"
    raise PretrainedMismatch(f"{path}: no parameter tree under {where}.")
  step = state.get("step", 0)
  return {k: np.asarray(v) for k, v in _flatten(tree).items()}, int(np.asarray(step)) if step is not None else 0


# torch's storage classes -> numpy dtypes (what a state dict of a diffusers model can hold).
_TORCH_STORAGES = {"FloatStorage": np.float32, "HalfStorage": np.float16, "DoubleStorage": np.float64,
                   "BFloat16Storage": "bfloat16", "LongStorage": np.int64, "IntStorage": np.int32,
                   "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple, *_: Any) -> np.ndarray:
  """torch._utils._rebuild_tensor_v2 on a flat numpy storage: a (strided) view, copied."""
  if not size:
    return storage[offset].copy()
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=tuple(size), strides=tuple(s * item for s in stride))
  return np.ascontiguousarray(view)


class _TorchUnpickler(pickle.Unpickler):
  """Unpickles a torch ``state_dict`` (zip format) into numpy arrays; any other class is refused."""

  def __init__(self, file: Any, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix, self._cache = archive, prefix, {}

  def find_class(self, module: str, name: str) -> Any:
    if (module, name) == ("collections", "OrderedDict"):
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch._utils" and name == "_rebuild_parameter":
      return lambda data, requires_grad, hooks, *rest: data
    if module == "torch" and name in _TORCH_STORAGES:
      return name
    raise pickle.UnpicklingError(f"refusing {module}.{name}: a state dict holds only tensors")

  def persistent_load(self, pid: Any) -> np.ndarray:
    kind, storage_type, key, _location, numel = pid[:5]
    if kind != "storage":
      raise pickle.UnpicklingError(f"unknown persistent id {kind!r}")
    if key not in self._cache:
      raw = self._archive.read(f"{self._prefix}data/{key}")
      dtype = _TORCH_STORAGES[storage_type] if isinstance(storage_type, str) else None
      if dtype is None:
        raise pickle.UnpicklingError(f"unknown storage type {storage_type!r}")
      if dtype == "bfloat16":
        import ml_dtypes  # pylint: disable=g-import-not-at-top  (jax's dependency)
        dtype = ml_dtypes.bfloat16
      self._cache[key] = np.frombuffer(raw, dtype=np.dtype(dtype).newbyteorder("<"), count=numel)
    return self._cache[key]


def read_torch_bin(path: str) -> dict[str, np.ndarray]:
  """A torch ``state_dict`` saved by ``torch.save`` (zip format, torch >= 1.6) as numpy arrays."""
  if not zipfile.is_zipfile(path):
    raise PretrainedMismatch(f"{path} is not a torch zip archive (the legacy pre-1.6 format is not supported; "
                             "re-save it with a recent torch or use the .safetensors file).")
  with zipfile.ZipFile(path) as archive:
    pkl = [n for n in archive.namelist() if n.endswith("/data.pkl") or n == "data.pkl"]
    if not pkl:
      raise PretrainedMismatch(f"{path}: no data.pkl in the archive.")
    prefix = pkl[0][: -len("data.pkl")]
    byteorder = f"{prefix}byteorder"
    if byteorder in archive.namelist() and archive.read(byteorder).strip() != b"little":
      raise PretrainedMismatch(f"{path}: big-endian tensors are not supported.")
    with archive.open(pkl[0]) as f:
      state = _TorchUnpickler(f, archive, prefix).load()
  return {str(k): np.asarray(v) for k, v in state.items()}


# ---- EDM's network pickles (NVlabs/edm), read without executing them -----------------------------
#
# An EDM snapshot (``network-snapshot-*.pkl``, ``edm-*.pkl``) is a plain pickle of
# dict(ema=<network>, loss_fn=..., augment_pipe=..., dataset_kwargs=...).  Every network class
# there is "persistent" (EDM's torch_utils/persistence.py): it pickles as
# ``torch_utils.persistence._reconstruct_persistent_obj(meta)`` with meta = {type, version,
# module_src (the class's source code), class_name, state (the module's __dict__)}, which EDM's
# own loader executes.  This reader never does: a persistent object becomes an ``EDMObject``
# holding its class name, constructor arguments and the arrays of its state; tensors arrive as
# ``torch.storage._load_from_bytes`` of a legacy ``torch.save`` blob, parsed here.  Any class
# outside ``_EDM_GLOBALS`` is refused in one line and nothing is imported.

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C


@dataclasses.dataclass
class EDMObject:
  """One persistent object of an EDM pickle, rebuilt as data.

  Attributes:
    class_name: EDM's class (e.g. "EDMPrecond", "SongUNet", "UNetBlock").
    init_kwargs: its constructor's keyword arguments.
    parameters, buffers: name -> numpy array.
    modules: name -> EDMObject or ``EDMContainer`` (the sub-modules).
  """

  class_name: str
  init_kwargs: dict[str, Any]
  parameters: dict[str, np.ndarray]
  buffers: dict[str, np.ndarray]
  modules: dict[str, Any]


class EDMContainer:
  """A ``torch.nn.ModuleDict`` / ``ModuleList`` of an EDM pickle: only its sub-modules are kept."""

  def __init__(self, *_: Any) -> None:
    self.modules: dict[str, Any] = {}

  def __setstate__(self, state: dict[str, Any]) -> None:
    self.modules = dict(state.get("_modules", {}))


def _edm_object(meta: dict[str, Any]) -> EDMObject:
  """``_reconstruct_persistent_obj`` without running ``meta["module_src"]``."""
  if meta.get("type") != "class" or not isinstance(meta.get("class_name"), str):
    raise pickle.UnpicklingError(f"unknown persistent object {meta.get('type')!r}")
  state = meta.get("state") or {}
  return EDMObject(class_name=meta["class_name"], init_kwargs=dict(state.get("_init_kwargs") or {}),
                   parameters={k: v for k, v in (state.get("_parameters") or {}).items() if v is not None},
                   buffers={k: v for k, v in (state.get("_buffers") or {}).items() if v is not None},
                   modules=dict(state.get("_modules") or {}))


def _legacy_storage(blob: bytes) -> np.ndarray:
  """``torch.storage._load_from_bytes``: one storage in torch's legacy (non-zip) save format."""
  f = io.BytesIO(blob)
  storages: dict[str, tuple[Any, int]] = {}

  class Header(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
      raise pickle.UnpicklingError(f"refusing {module}.{name} in a storage header")

  class Body(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
      if module == "torch" and name in _TORCH_STORAGES:
        return name
      raise pickle.UnpicklingError(f"refusing {module}.{name}: a storage holds only numbers")

    def persistent_load(self, pid: Any) -> str:
      kind, storage_type, key = pid[:3]
      if kind != "storage" or storage_type not in _TORCH_STORAGES:
        raise pickle.UnpicklingError(f"unknown persistent id {pid[:2]!r}")
      storages[key] = (storage_type, int(pid[4]))
      return key

  if Header(f).load() != _LEGACY_MAGIC:
    raise pickle.UnpicklingError("a tensor storage that is not in torch's save format")
  Header(f).load()  # protocol version
  info = Header(f).load()
  if not info.get("little_endian", True):
    raise pickle.UnpicklingError("big-endian tensors are not supported")
  key = Body(f).load()
  for k in Header(f).load():
    storage_type, numel = storages[k]
    dtype = _TORCH_STORAGES[storage_type]
    if dtype == "bfloat16":
      import ml_dtypes  # pylint: disable=g-import-not-at-top  (jax's dependency)
      dtype = ml_dtypes.bfloat16
    dtype = np.dtype(dtype).newbyteorder("<")
    count = int.from_bytes(f.read(8), "little")
    if count != numel:
      raise pickle.UnpicklingError(f"storage {k}: {count} elements, the header says {numel}")
    storages[k] = np.frombuffer(f.read(count * dtype.itemsize), dtype=dtype, count=count)
  return storages[key]


def _easy_dict(*args: Any) -> dict:
  return dict(*args)


def _np_scalar(dtype: np.dtype, data: bytes = b"") -> Any:
  """numpy's pickled scalars (``numpy.core.multiarray.scalar``): a value of ``dtype`` from its bytes."""
  if dtype.hasobject:
    raise pickle.UnpicklingError("refusing a numpy object scalar")
  return np.frombuffer(data, dtype=dtype, count=1)[0]


_EDM_GLOBALS = {
    ("torch_utils.persistence", "_reconstruct_persistent_obj"): _edm_object,
    ("torch.nn.modules.container", "ModuleDict"): EDMContainer,
    ("torch.nn.modules.container", "ModuleList"): EDMContainer,
    ("torch.storage", "_load_from_bytes"): _legacy_storage,
    ("torch._utils", "_rebuild_tensor_v2"): _rebuild_tensor,
    ("torch._utils", "_rebuild_parameter"): lambda data, requires_grad, hooks, *rest: data,
    ("collections", "OrderedDict"): collections.OrderedDict,
    ("dnnlib.util", "EasyDict"): _easy_dict,
    ("numpy", "dtype"): np.dtype,
    ("numpy.core.multiarray", "scalar"): _np_scalar,
    ("numpy._core.multiarray", "scalar"): _np_scalar,
}


class _EDMUnpickler(pickle.Unpickler):
  def find_class(self, module: str, name: str) -> Any:
    try:
      return _EDM_GLOBALS[(module, name)]
    except KeyError:
      raise PretrainedMismatch(
          f"the pickle names {module}.{name}, which the EDM reader does not rebuild (it runs no code from the "
          f"file; it knows {', '.join(sorted(f'{m}.{n}' for m, n in _EDM_GLOBALS))}).") from None


def read_edm_pickle(path: str) -> dict[str, Any]:
  """An EDM snapshot's top-level dict, its networks as ``EDMObject`` trees; nothing is executed.

  Raises:
    PretrainedMismatch: the pickle names a class outside the reader's list (one line).
  """
  with open(path, "rb") as f:
    try:
      data = _EDMUnpickler(f).load()
    except pickle.UnpicklingError as e:
      raise PretrainedMismatch(f"{path}: not an EDM network pickle ({e}).") from None
  if not isinstance(data, dict) or not isinstance(data.get("ema"), EDMObject):
    raise PretrainedMismatch(f"{path}: no 'ema' network (EDM's snapshots hold dict(ema=<network>, ...)).")
  return data


def edm_state_dict(obj: Any, prefix: str = "") -> dict[str, np.ndarray]:
  """The arrays of an ``EDMObject`` tree under torch's ``state_dict`` names ("model.enc.8x8_conv.weight")."""
  out: dict[str, np.ndarray] = {}
  if isinstance(obj, EDMObject):
    for name, value in (*obj.parameters.items(), *obj.buffers.items()):
      out[prefix + name] = np.asarray(value)
  for name, child in obj.modules.items():
    if child is not None:
      out.update(edm_state_dict(child, f"{prefix}{name}."))
  return out


def read_diffusers_config(folder: str) -> dict[str, Any]:
  """The config.json of a diffusers model folder (a JSON object)."""
  path = os.path.join(folder, "config.json")
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise PretrainedMismatch(f"{path} is not JSON ({e}).") from None
  if not isinstance(config, dict):
    raise PretrainedMismatch(f"{path} holds a {type(config).__name__}, not a UNet2DModel config (a JSON object).")
  return config


def read_diffusers(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, {name: array}) of a diffusers model folder (.safetensors preferred, else .bin)."""
  config = read_diffusers_config(folder)
  st = os.path.join(folder, "diffusion_pytorch_model.safetensors")
  if os.path.exists(st):
    try:
      from safetensors.numpy import load_file  # pylint: disable=g-import-not-at-top
    except ImportError:
      raise ImportError("reading .safetensors needs the safetensors package: pip install 'score_jax[pretrained]' "
                        "(or pip install safetensors).") from None
    return config, dict(load_file(st))
  bin_path = os.path.join(folder, "diffusion_pytorch_model.bin")
  if os.path.exists(bin_path):
    return config, read_torch_bin(bin_path)
  raise FileNotFoundError(f"{folder} has neither diffusion_pytorch_model.safetensors nor diffusion_pytorch_model.bin.")


# ---- the score_jax side -----------------------------------------------------------------------


def _example_inputs(model: nn.Module) -> tuple[Array, Array]:
  x = jnp.zeros((1, model.image_size, model.image_size, model.num_channels), jnp.float32)  # [1, S, S, C]
  return x, jnp.ones((1,), jnp.float32)


def shapes_of(tree: Any) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{param path: shape} of a parameter tree (arrays or ShapeDtypeStructs)."""
  return {path: tuple(leaf.shape) for path, leaf in _flatten(tree).items()}


def target_shapes(model: nn.Module) -> dict[tuple[str, ...], tuple[int, ...]]:
  """{param path: shape} of ``model`` (an NCSNpp), nothing allocated."""
  return _trace(model)[0]


@functools.lru_cache(maxsize=8)  # modules are hashable: a conversion traces its network once
def _trace(model: nn.Module) -> tuple[dict[tuple[str, ...], tuple[int, ...]], dict[str, str]]:
  """One abstract init of ``model``: its {param path: shape} and, for its top-level resampling
  layers, {"Resample_j": "Upsample" | "Downsample"} (read off the modules as they are called)."""
  kinds: dict[str, str] = {}

  def interceptor(next_fun, args, kwargs, context):
    mod = context.module
    if isinstance(mod, layers.Resample) and context.method_name == "__call__" and len(mod.scope.path) == 1:
      kinds[mod.scope.path[0]] = "Upsample" if mod.up else "Downsample"
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(interceptor):
    tree = jax.eval_shape(lambda k: model.init(k, *_example_inputs(model))["params"], jax.random.key(0))
  return shapes_of(tree), kinds


def _index(name: str) -> int:
  return int(name.rsplit("_", 1)[1])


# ---- name maps --------------------------------------------------------------------------------
# A map yields (score_jax path, source name, layout) triples; layout says how the source array
# becomes the score_jax one: "same", "nin" (score_sde NIN W [I, O] -> 1×1 kernel [1, 1, I, O]),
# "conv" (torch [O, I, kh, kw] -> [kh, kw, I, O]), "linear" (torch [O, I] -> [I, O]),
# "linear1x1" (torch linear [O, I] -> 1×1 kernel [1, 1, I, O]).

_SCORE_SDE_TOP = {"ResnetBlockBigGAN": "ResnetBlockBigGANpp", "ResnetBlockDDPM": "ResnetBlockDDPMpp",
                  "AttnBlock": "AttnBlockpp"}


def _score_sde_names(shapes: dict[tuple[str, ...], tuple[int, ...]],
                     resample: dict[str, str]) -> Iterator[tuple[tuple[str, ...], str, str]]:
  """score_jax NCSNpp path -> score_sde NCSNpp path ('/'-joined), for every parameter."""
  ups = sorted((n for n, k in resample.items() if k == "Upsample"), key=_index)
  downs = sorted((n for n, k in resample.items() if k == "Downsample"), key=_index)
  renamed = {n: f"Upsample_{i}" for i, n in enumerate(ups)} | {n: f"Downsample_{i}" for i, n in enumerate(downs)}
  for path in shapes:
    top, *rest = path
    layout = "same"
    if top == "fourier_proj":
      src = ["GaussianFourierProjection_0", *rest]
    elif top.startswith("temb_dense_"):
      src = [f"Dense_{_index(top)}", *rest]
    elif top in renamed:
      src = [renamed[top], *rest]
      if rest[0].startswith("FIRConv2d_"):  # up_or_down_sampling.Conv2d: 'weight', 'bias'
        src = [renamed[top], "Conv2d_0", "weight" if rest[1] == "kernel" else rest[1]]
    elif top.rsplit("_", 1)[0] in _SCORE_SDE_TOP:
      kind = top.rsplit("_", 1)[0]
      src = [f"{_SCORE_SDE_TOP[kind]}_{_index(top)}", *rest]
      if rest[0] == "temb_proj":
        src[1] = "Dense_0"
      nin = (kind == "AttnBlock" and rest[0].startswith("Conv_")) or (
          kind == "ResnetBlockDDPM" and rest[0] == "Conv_2" and shapes[(top, "Conv_2", "kernel")][:2] == (1, 1))
      if nin:  # score_sde's NIN: W [C_in, C_out], b
        src = [src[0], "NIN_" + str(_index(rest[0]) if kind == "AttnBlock" else 0),
               "W" if rest[1] == "kernel" else "b"]
        layout = "nin" if rest[1] == "kernel" else "same"
    else:  # Conv_i, GroupNorm_i, Combine_i: the same names
      src = [top, *rest]
    yield path, "/".join(src), layout


def _resnet(jax_name: str, torch_name: str) -> dict[str, tuple[str, str]]:
  parts = {"GroupNorm_0": "norm1", "Conv_0": "conv1", "temb_proj": "time_emb_proj", "GroupNorm_1": "norm2",
           "Conv_1": "conv2", "Conv_2": "conv_shortcut"}
  return {f"{jax_name}/{j}": (f"{torch_name}.{t}", "conv" if j.startswith("Conv") else
                              "linear" if j == "temb_proj" else "same") for j, t in parts.items()}


def _attn(jax_name: str, torch_name: str) -> dict[str, tuple[str, str]]:
  parts = {"GroupNorm_0": ("group_norm", "same"), "Conv_0": ("to_q", "linear1x1"), "Conv_1": ("to_k", "linear1x1"),
           "Conv_2": ("to_v", "linear1x1"), "Conv_3": ("to_out.0", "linear1x1")}
  return {f"{jax_name}/{j}": (f"{torch_name}.{t}", lay) for j, (t, lay) in parts.items()}


# Older diffusers files name the attention projections query / key / value / proj_attn.
_DIFFUSERS_LEGACY = {".query.": ".to_q.", ".key.": ".to_k.", ".value.": ".to_v.", ".proj_attn.": ".to_out.0."}

# ---- diffusers' config.json -> the score_jax network ---------------------------------------------
# What a UNet2DModel computes is fixed by its config.json; every field is read here (facts from
# diffusers 0.42's UNet2DModel and its skip blocks).  A field left out of a config.json has
# UNet2DModel's default, so the defaults are part of the reading.
DIFFUSERS_DEFAULTS: dict[str, Any] = {
    "sample_size": None, "in_channels": 3, "out_channels": 3, "center_input_sample": False,
    "time_embedding_type": "positional", "time_embedding_dim": None, "freq_shift": 0, "flip_sin_to_cos": True,
    "down_block_types": ["DownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D", "AttnDownBlock2D"],
    "mid_block_type": "UNetMidBlock2D",
    "up_block_types": ["AttnUpBlock2D", "AttnUpBlock2D", "AttnUpBlock2D", "UpBlock2D"],
    "block_out_channels": [224, 448, 672, 896], "layers_per_block": 2, "mid_block_scale_factor": 1.0,
    "downsample_padding": 1, "downsample_type": "conv", "upsample_type": "conv", "dropout": 0.0, "act_fn": "silu",
    "attention_head_dim": 8, "norm_num_groups": 32, "attn_norm_num_groups": None, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "default", "add_attention": True, "class_embed_type": None, "num_class_embeds": None,
    "num_train_timesteps": None,
}
# Fields that do not change what a skip-block UNet2DModel with Fourier features computes:
# flip_sin_to_cos, freq_shift (read only by the "positional" time embedding; the Fourier
# projection is built without them), downsample_padding, downsample_type, upsample_type (the skip
# blocks resample with fixed FIR filters and never receive them), num_train_timesteps (only the
# "learned" embedding reads it).  dropout changes training only: it is carried over.  Keys that
# start with "_" (_class_name is checked, _diffusers_version, _name_or_path) are bookkeeping.
DIFFUSERS_UNUSED = ("flip_sin_to_cos", "freq_shift", "downsample_padding", "downsample_type", "upsample_type",
                    "num_train_timesteps")
SKIP_DOWN = ("SkipDownBlock2D", "AttnSkipDownBlock2D")
SKIP_UP = ("SkipUpBlock2D", "AttnSkipUpBlock2D")
DIFFUSERS_FIXED = dict(resblock_type="biggan", fir=True, fir_kernel=(1, 3, 3, 1),
                       skip_rescale=True, progressive="output_skip", progressive_input="input_skip",
                       progressive_combine="sum", embedding_type="fourier", fourier_scale=16.0, conditional=True,
                       num_classes=0)


def _refuse(field: str, value: Any, why: str) -> PretrainedMismatch:
  return PretrainedMismatch(f"config.json {field}={json.dumps(value)}: {why}")


def diffusers_fields(cfg: dict[str, Any], image_size: int | None = None) -> tuple[dict[str, Any], bool]:
  """(NCSNpp fields without ``group_counts``, data.centered) of a diffusers config.json.

  ``image_size``: a config's image side, used where ``sample_size`` is null (diffusers then runs
  at any size); None: ``sample_size`` must say it.

  Raises:
    PretrainedMismatch: one line naming the first field whose network score_jax's NCSN++ cannot
      compute: the field, the folder's value, what score_jax would compute instead.
  """
  unknown = sorted(k for k in cfg if not k.startswith("_") and k not in DIFFUSERS_DEFAULTS)
  if unknown:
    raise _refuse(unknown[0], cfg[unknown[0]], "not a UNet2DModel field of diffusers 0.42; score_jax cannot tell "
                  "what it changes and reads none it does not know (remove it if your diffusers ignores it).")
  c = DIFFUSERS_DEFAULTS | {k: v for k, v in cfg.items() if not k.startswith("_")}
  if cfg.get("_class_name", "UNet2DModel") != "UNet2DModel":
    raise _refuse("_class_name", cfg["_class_name"], "score_jax converts diffusers' UNet2DModel (NCSN++ with skip "
                  "blocks) only.")
  down, up, widths = list(c["down_block_types"]), list(c["up_block_types"]), list(c["block_out_channels"])
  levels = len(widths)
  for field, types, allowed in (("down_block_types", down, SKIP_DOWN), ("up_block_types", up, SKIP_UP)):
    bad = [t for t in types if t not in allowed]
    if bad or len(types) != levels:
      raise _refuse(field, types, f"score_jax's NCSN++ is the skip-block U-Net: {levels} entries (one per "
                    f"block_out_channels), each {' or '.join(allowed)}.")
  attn = [t == "AttnSkipDownBlock2D" for t in down]
  if [t == "AttnSkipUpBlock2D" for t in reversed(up)] != attn:
    raise _refuse("up_block_types", up, f"attention at other levels than down_block_types; score_jax's "
                  f"attn_resolutions put it at the same levels on both paths ({list(reversed([SKIP_UP[a] for a in attn]))}).")
  nf = widths[0]
  if not all(isinstance(w, int) and w > 0 and w % nf == 0 for w in widths):
    raise _refuse("block_out_channels", widths, f"score_jax's levels have nf · ch_mult[i] channels: every width must "
                  f"be a multiple of the first ({nf}).")
  if c["time_embedding_type"] != "fourier":
    raise _refuse("time_embedding_type", c["time_embedding_type"], "score_jax's skip-block NCSN++ embeds log σ with "
                  "Fourier features ('fourier') and divides its output by σ.")
  if c["time_embedding_dim"] not in (None, 4 * nf):
    raise _refuse("time_embedding_dim", c["time_embedding_dim"], f"score_jax's embedding is 4 · nf = {4 * nf} wide.")
  for field in ("in_channels", "out_channels"):
    if c[field] != 3:
      raise _refuse(field, c[field], "diffusers' skip blocks have 3-channel skip convolutions, so only RGB "
                    "networks run; score_jax would build a 3-channel network.")
  if c["mid_block_type"] != "UNetMidBlock2D":
    raise _refuse("mid_block_type", c["mid_block_type"], "score_jax's NCSN++ has a middle block of resnet, "
                  "attention, resnet ('UNetMidBlock2D').")
  if c["add_attention"] is not True:
    raise _refuse("add_attention", c["add_attention"], "the middle block would have no attention; score_jax's "
                  "NCSN++ always has it.")
  if not math.isclose(c["mid_block_scale_factor"], math.sqrt(2.0), rel_tol=1e-6):
    raise _refuse("mid_block_scale_factor", c["mid_block_scale_factor"], "the middle block's residual sums would be "
                  "divided by it; score_jax divides every residual sum by √2 (skip_rescale, as the skip blocks do).")
  if not math.isclose(c["norm_eps"], 1e-6, rel_tol=1e-6):
    raise _refuse("norm_eps", c["norm_eps"], "score_jax's GroupNorms add ε = 1e-6.")
  if c["resnet_time_scale_shift"] != "default":
    raise _refuse("resnet_time_scale_shift", c["resnet_time_scale_shift"], "score_jax's blocks add the embedding "
                  "as a bias ('default'); no score_jax network scales and shifts by it.")
  if str(c["act_fn"]).lower() not in ("silu", "swish"):
    raise _refuse("act_fn", c["act_fn"], "score_jax's NCSN++ uses SiLU ('silu') in every block.")
  head = c["attention_head_dim"]
  for width in [w for w, a in zip(widths, attn) if a] + [widths[-1]]:  # the middle block has attention too
    if head is not None and head != width:
      raise _refuse("attention_head_dim", head, f"{width // head if head else 0} heads of {head} channels at "
                    f"{width} channels; score_jax's NCSN++ attention has one head (null, or the width).")
  if c["class_embed_type"] is not None or c["num_class_embeds"] is not None:
    field = "class_embed_type" if c["class_embed_type"] is not None else "num_class_embeds"
    raise _refuse(field, c[field], "a class embedding; score_jax converts unconditional diffusers networks only.")
  size = c["sample_size"] if c["sample_size"] is not None else image_size
  if isinstance(size, (list, tuple)):
    if len(size) != 2 or size[0] != size[1]:
      raise _refuse("sample_size", size, "score_jax's networks are square.")
    size = size[0]
  if not (isinstance(size, int) and size > 0 and size % 2 ** (levels - 1) == 0):
    raise _refuse("sample_size", size, f"score_jax needs the image side, a multiple of 2^{levels - 1} "
                  f"({levels} levels).")
  dropout = c["dropout"]
  if not (isinstance(dropout, (int, float)) and 0.0 <= dropout < 1.0):
    raise _refuse("dropout", dropout, "must lie in [0, 1).")
  if not (layers.is_int(c["layers_per_block"]) and c["layers_per_block"] >= 1):
    raise _refuse("layers_per_block", c["layers_per_block"], "score_jax needs an integer >= 1 (blocks per level).")
  fields = dict(DIFFUSERS_FIXED, nf=nf, ch_mult=tuple(w // nf for w in widths), num_res_blocks=int(c["layers_per_block"]),
                attn_resolutions=tuple(size // 2**i for i in range(levels) if attn[i]), dropout=float(dropout),
                image_size=size, num_channels=3, resamp_with_conv=True, init_scale=0.0)
  # center_input_sample=True: diffusers maps x to 2x − 1 first, as score_sde's conditioning does
  # for uncentered data; False: x is taken as given, as for centered data.
  return fields, not bool(c["center_input_sample"])


def _diffusers_group_count(cfg: dict[str, Any], name: str, channels: int) -> int:
  """The groups diffusers' UNet2DModel gives the GroupNorm ``name`` (of ``channels`` channels)."""
  c = DIFFUSERS_DEFAULTS | cfg
  default = min(channels // 4, 32)
  norm_groups = c["norm_num_groups"]
  parts = name.split(".")
  if name == "conv_norm_out" or parts[0] == "mid_block" and parts[1] == "resnets":
    return norm_groups if norm_groups is not None else default
  if parts[0] == "mid_block":  # the middle attention
    attn_groups = c["attn_norm_num_groups"]
    return attn_groups if attn_groups is not None else (norm_groups if norm_groups is not None else default)
  if parts[2] == "attentions":  # the skip blocks' attention norms
    return 32
  if parts[0] == "up_blocks" and parts[2] == "resnets" and parts[4] == "norm1" and \
      c["up_block_types"][int(parts[1])] == "AttnSkipUpBlock2D":
    # AttnSkipUpBlock2D computes its resnets' first groups as min(resnet_in + skip // 4, 32).
    i, j, n = int(parts[1]), int(parts[3]), int(c["layers_per_block"]) + 1
    rev = list(reversed(c["block_out_channels"]))
    out, prev, below = rev[i], rev[max(i - 1, 0)], rev[min(i + 1, len(rev) - 1)]
    return min((prev if j == 0 else out) + (below if j == n - 1 else out) // 4, 32)
  return default


def diffusers_group_counts(cfg: dict[str, Any], model: nn.Module) -> dict[str, int]:
  """{score_jax norm path: groups} where diffusers' UNet2DModel of ``cfg`` has other GroupNorm groups
  than NCSN++'s min(C/4, 32), for ``model`` (an NCSNpp with the folder's other fields).

  Raises:
    PretrainedMismatch: a count that does not divide its norm's channels (diffusers could not
      build the folder's network either).
  """
  shapes = target_shapes(model)
  counts = {}
  for path, name, _ in _diffusers_names(model, shapes):
    if path[-1] != "scale" or not path[-2].startswith("GroupNorm"):
      continue
    channels, norm = shapes[path][0], name.rsplit(".", 1)[0]
    groups = _diffusers_group_count(cfg, norm, channels)
    if groups < 1 or channels % groups:
      field = "norm_num_groups" if "mid_block" in name or "conv_norm_out" in name else "block_out_channels"
      raise _refuse(field, cfg.get(field, DIFFUSERS_DEFAULTS[field]), f"diffusers' {norm} would have {groups} "
                    f"groups for {channels} channels, which do not divide them (torch refuses it too).")
    if groups != layers.num_groups(channels):
      counts["/".join(path[:-1])] = groups
  return counts


def diffusers_network(cfg: dict[str, Any]) -> tuple[nn.Module, bool]:
  """(the score_jax NCSNpp that computes what the folder's UNet2DModel computes, data.centered).

  The group counts diffusers uses where they differ from NCSN++'s min(C/4, 32) — the skip blocks'
  attention norms (always 32), ``AttnSkipUpBlock2D``'s first resnet norms, and the middle block
  and output norm (``norm_num_groups``, ``attn_norm_num_groups``) — become ``group_counts``.

  Raises:
    PretrainedMismatch: a field score_jax cannot compute (``diffusers_fields``, ``diffusers_group_counts``).
  """
  from score_jax import models  # pylint: disable=import-outside-toplevel  (models import layers only)

  fields, centered = diffusers_fields(cfg)
  model = models.get_model("ncsnpp", **fields)
  counts = diffusers_group_counts(cfg, model)
  return (model.clone(group_counts=counts) if counts else model), centered


# The NCSNpp fields a diffusers folder sets, compared with a --config's network.
_COMPARED = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "image_size", "num_channels", *DIFFUSERS_FIXED,
             "group_counts")
# Which config.json field sets which score_jax field (for messages).
_SOURCE = {"nf": "block_out_channels", "ch_mult": "block_out_channels", "num_res_blocks": "layers_per_block",
           "attn_resolutions": "down_block_types", "image_size": "sample_size", "num_channels": "in_channels",
           "group_counts": "norm_num_groups"}


def check_diffusers_config(cfg: dict[str, Any], model: nn.Module, centered: bool | None = None) -> None:
  """Raises PretrainedMismatch unless ``model`` (and ``centered``, when given) is what the folder computes."""
  fields, want_centered = diffusers_fields(cfg, image_size=model.image_size)
  for field in _COMPARED:  # group_counts last: they are read off the network the other fields make
    got = getattr(model, field)
    need = (tuple(sorted(diffusers_group_counts(cfg, model.clone(group_counts=())).items()))
            if field == "group_counts" else fields[field])
    if got != need:
      source = _SOURCE.get(field, "down_block_types")
      shown = cfg.get(source, DIFFUSERS_DEFAULTS.get(source))
      raise _refuse(source, shown, f"the folder's network has {field}={need!r} but the config's has {got!r}; set "
                    f"config.model.network.{field}, or convert without --config and the converter writes the config.")
  if centered is not None and centered != want_centered:
    value = cfg.get("center_input_sample", False)
    raise _refuse("center_input_sample", value, f"the network takes {'2x − 1' if value else 'x as given'}, which is "
                  f"score_jax's data.centered={want_centered}; the config has centered={centered} (set "
                  f"--config.data.centered={want_centered}).")


def _diffusers_names(model: nn.Module,
                     shapes: dict[tuple[str, ...], tuple[int, ...]]) -> Iterator[tuple[tuple[str, ...], str, str]]:
  """score_jax NCSNpp path -> diffusers UNet2DModel name, walking the skip-block U-Net level by level."""
  table: dict[str, tuple[str, str]] = {
      "fourier_proj/W": ("time_proj.weight", "same"),
      "temb_dense_0": ("time_embedding.linear_1", "linear"),
      "temb_dense_1": ("time_embedding.linear_2", "linear"),
      "Conv_0": ("conv_in", "conv"),
  }
  counts = collections.Counter()

  def nxt(kind: str) -> str:
    name = f"{kind}_{counts[kind]}"
    counts[kind] += 1
    return name

  counts["Conv"] = 1
  levels = len(model.ch_mult)
  attn_at = lambda level: model.image_size // 2**level in model.attn_resolutions  # noqa: E731
  for level in range(levels):
    block = f"down_blocks.{level}"
    for j in range(model.num_res_blocks):
      table.update(_resnet(nxt("ResnetBlockBigGAN"), f"{block}.resnets.{j}"))
      if attn_at(level):
        table.update(_attn(nxt("AttnBlock"), f"{block}.attentions.{j}"))
    if level != levels - 1:
      table.update(_resnet(nxt("ResnetBlockBigGAN"), f"{block}.resnet_down"))
      table[f"{nxt('Combine')}/Conv_0"] = (f"{block}.skip_conv", "conv")
  table.update(_resnet(nxt("ResnetBlockBigGAN"), "mid_block.resnets.0"))
  table.update(_attn(nxt("AttnBlock"), "mid_block.attentions.0"))
  table.update(_resnet(nxt("ResnetBlockBigGAN"), "mid_block.resnets.1"))
  for i, level in enumerate(reversed(range(levels))):
    block = f"up_blocks.{i}"
    for j in range(model.num_res_blocks + 1):
      table.update(_resnet(nxt("ResnetBlockBigGAN"), f"{block}.resnets.{j}"))
    if attn_at(level):
      table.update(_attn(nxt("AttnBlock"), f"{block}.attentions.0"))
    norm, conv = (f"{block}.skip_norm", f"{block}.skip_conv") if level else ("conv_norm_out", "conv_out")
    table[nxt("GroupNorm")] = (norm, "same")
    table[nxt("Conv")] = (conv, "conv")
    if level:
      table.update(_resnet(nxt("ResnetBlockBigGAN"), f"{block}.resnet_up"))
  # (The FIR resampling of both pyramids has no parameters, so no Resample_j appears.)
  leaf_names = {"kernel": "weight", "scale": "weight", "bias": "bias"}
  for path in shapes:
    full, module = "/".join(path), "/".join(path[:-1])
    if full in table:
      yield path, *table[full]
    elif module in table and path[-1] in leaf_names:
      name, layout = table[module]
      yield path, f"{name}.{leaf_names[path[-1]]}", layout
    else:
      yield path, f"<no diffusers counterpart of {full}>", "same"


def _converted_shape(shape: tuple[int, ...], layout: str) -> tuple[int, ...]:
  """The score_jax shape of a source array of ``shape`` under ``layout``."""
  if layout == "nin":
    return (1, 1, *shape)
  if layout == "conv" and len(shape) == 4:
    return (shape[2], shape[3], shape[1], shape[0])
  if layout == "linear" and len(shape) == 2:
    return shape[::-1]
  if layout == "linear1x1" and len(shape) == 2:
    return (1, 1, *shape[::-1])
  return shape


def _convert_leaf(src: np.ndarray, layout: str) -> np.ndarray:
  if layout == "nin":
    return src[None, None]
  if layout == "conv":
    return src.transpose(2, 3, 1, 0) if src.ndim == 4 else src
  if layout == "linear":
    return src.T if src.ndim == 2 else src
  if layout == "linear1x1":
    return src.T[None, None] if src.ndim == 2 else src
  return src


def plan(pairs: Iterator[tuple[tuple[str, ...], str, str]], source: dict[str, tuple[int, ...]],
         shapes: dict[tuple[str, ...], tuple[int, ...]], what: str) -> list[tuple[tuple[str, ...], str, str]]:
  """Checks a name map against the source's {name: shape}, before any array is read.

  Args:
    pairs: (score_jax path, source name, layout) for every score_jax parameter.
    source: the file's arrays' shapes.
    shapes: the score_jax network's {path: shape}.
    what: the file, for messages.

  Returns:
    The pairs, as a list.

  Raises:
    PretrainedMismatch: one line naming the first missing, mis-shaped or left-over array.
  """
  pairs = list(pairs)
  for path, name, layout in pairs:
    jax_name = "/".join(path)
    if name not in source:
      raise PretrainedMismatch(f"{what}: array {name!r} (for score_jax {jax_name}, shape {shapes[path]}) is missing "
                               "— wrong --config for this file?")
    if _converted_shape(tuple(source[name]), layout) != shapes[path]:
      raise PretrainedMismatch(f"{what}: array {name!r} has shape {tuple(source[name])} but score_jax "
                               f"{jax_name} needs {shapes[path]} — wrong --config for this file?")
  extra = sorted(set(source) - {name for _, name, _ in pairs})
  if extra:
    raise PretrainedMismatch(f"{what}: array {extra[0]!r} (and {len(extra) - 1} more) has no place in the config's "
                             "network — wrong --config for this file?")
  return pairs


def _assemble(pairs: Iterator[tuple[tuple[str, ...], str, str]], arrays: dict[str, np.ndarray],
              shapes: dict[tuple[str, ...], tuple[int, ...]], what: str) -> dict[str, Any]:
  """Builds the score_jax tree from ``arrays`` along the name map (checked first by ``plan``)."""
  tree: dict[str, Any] = {}
  for path, name, layout in plan(pairs, {k: np.shape(v) for k, v in arrays.items()}, shapes, what):
    node = tree
    for part in path[:-1]:
      node = node.setdefault(part, {})
    node[path[-1]] = np.asarray(_convert_leaf(np.asarray(arrays[name]), layout), np.float32)
  return tree


def name_map(fmt: str, model: nn.Module) -> tuple[Iterator[tuple[tuple[str, ...], str, str]],
                                                   dict[tuple[str, ...], tuple[int, ...]]]:
  """(the (score_jax path, source name, layout) map of ``fmt``, the network's {path: shape})."""
  shapes, resample = _trace(model)
  if fmt == "score_sde":
    return _score_sde_names(shapes, resample), shapes
  if fmt == "diffusers":
    return _diffusers_names(model, shapes), shapes
  raise ValueError(f"format must be one of {list(FORMATS)}, got {fmt!r}.")


def convert(src: str, model: nn.Module | None = None, *, params: str = "ema",
            centered: bool | None = None) -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a score_sde checkpoint or a diffusers folder into a score_jax NCSN++ parameter tree.

  Args:
    src: a score_sde ``checkpoint_<n>`` file or a diffusers model folder.
    model: the score_jax ``NCSNpp`` the weights are meant for (from a config); None for a
      diffusers folder: the network its config.json describes (``diffusers_network``).
    params: score_sde only: "ema" (``params_ema``) or "raw" (``optimizer.target``).
    centered: the config's ``data.centered``, checked against a diffusers folder's
      ``center_input_sample`` (None: not checked; with ``model=None`` it is derived).

  Returns:
    (params tree of numpy float32 arrays, meta: format, source, step, params, conditioning,
    network (the NCSNpp's fields), and for diffusers folders centered).

  Raises:
    PretrainedMismatch: the file does not fit ``model`` (one line naming the first array), or a
      diffusers config.json field that score_jax cannot compute (one line naming the field).
  """
  fmt = detect_format(src)
  if fmt == "export":
    raise ValueError(f"{src} is already a converted export; pass it as --config.model.pretrained.")
  extra: dict[str, Any] = {}
  if fmt == "score_sde":
    if model is None:
      raise ValueError(f"{src} is a score_sde checkpoint, whose file does not say its network: pass --config "
                       "(README, Published checkpoints, lists the config of each release).")
    pairs, shapes = name_map(fmt, model)
    flat, step = read_score_sde(src, params=params)
    arrays = {"/".join(k): v for k, v in flat.items()}
    tree = _assemble(pairs, arrays, shapes, os.path.basename(src))
  else:
    cfg = read_diffusers_config(src)  # every field is checked before an array is read
    if model is None:
      model, centered = diffusers_network(cfg)
    else:
      check_diffusers_config(cfg, model, centered)
    extra["centered"] = bool(centered) if centered is not None else not cfg.get("center_input_sample", False)
    pairs, shapes = name_map(fmt, model)
    _, arrays = read_diffusers(src)
    for old, new in _DIFFUSERS_LEGACY.items():
      arrays = {k.replace(old, new): v for k, v in arrays.items()}
    if "time_proj.W" in arrays:  # old files keep the Fourier frequencies twice
      w = arrays.pop("time_proj.W")
      if "time_proj.weight" in arrays and not np.array_equal(w, arrays["time_proj.weight"]):
        raise PretrainedMismatch(f"{src}: time_proj.W and time_proj.weight differ.")
      arrays.setdefault("time_proj.weight", w)
    step = 0
    tree = _assemble(pairs, arrays, shapes, os.path.basename(os.path.normpath(src)))
  meta = {"format": fmt, "source": os.path.abspath(src), "step": step,
          "params": params if fmt == "score_sde" else "ema", "conditioning": CONDITIONING,
          "network": network_record(model), **extra}
  return tree, meta


# NCSNpp fields that are how it runs, not what it computes: never recorded.
_NOT_RECORDED = ("dtype", "remat", "parent", "name")


def network_record(model: nn.Module) -> dict[str, Any]:
  """The fields of an NCSNpp as JSON values (tuples become lists), for pretrained.json and config files."""
  import dataclasses  # pylint: disable=import-outside-toplevel

  record = {}
  for f in dataclasses.fields(model):
    if f.name in _NOT_RECORDED:
      continue
    value = getattr(model, f.name)
    record[f.name] = json.loads(json.dumps(value))  # tuples -> lists
  return record


# ---- exports ------------------------------------------------------------------------------------


def read_meta(path: str) -> dict[str, Any]:
  """The ``pretrained.json`` of an export folder written by ``export``."""
  with open(os.path.join(path, META_FILE)) as f:
    return json.load(f)


CONFIG_FILE = "config.py"  # what `export` writes beside a diffusers export converted without a config


def export(src: str, model: nn.Module | None, out: str, *, params: str = "ema", centered: bool | None = None,
           config_path: str = "") -> str:
  """Converts ``src`` and writes ``<out>/ema/<step>`` (Orbax) and ``<out>/pretrained.json``; never overwrites.

  With ``model=None`` (a diffusers folder converted without a config) the network comes from
  its config.json and ``<out>/config.py`` is written: a config that ``main.py --config=`` loads
  and that samples the export (``derived_config_text``).

  Returns:
    The export's path.
  """
  written = [os.path.join(out, META_FILE)] + ([os.path.join(out, CONFIG_FILE)] if model is None else [])
  if any(os.path.exists(p) for p in written) or checkpointing.exported_steps(out):
    raise FileExistsError(f"{out} already holds an export; choose another --out (nothing was overwritten).")
  tree, meta = convert(src, model, params=params, centered=centered)
  text = derived_config_text(src, out, meta) if model is None else None
  path = checkpointing.export_params(out, meta["step"], tree)
  meta.update(centered=bool(meta.get("centered", centered)), config=config_path or (
      os.path.join(os.path.abspath(out), CONFIG_FILE) if text else ""),
      num_params=int(sum(v.size for v in jax.tree.leaves(tree))))
  with open(os.path.join(out, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  if text is not None:
    with open(os.path.join(out, CONFIG_FILE), "x") as f:
      f.write(text)
  return path


def read_scheduler(src: str) -> dict[str, Any]:
  """A diffusers ``ScoreSdeVeScheduler`` config beside the model folder (``scheduler_config.json`` in
  it, or ``../scheduler/scheduler_config.json`` of a pipeline), or {} when there is none."""
  folder = os.path.normpath(src)
  for path in (os.path.join(folder, "scheduler_config.json"),
               os.path.join(os.path.dirname(folder), "scheduler", "scheduler_config.json")):
    if os.path.exists(path):
      with open(path) as f:
        cfg = json.load(f)
      if cfg.get("_class_name") == "ScoreSdeVeScheduler":
        return cfg
  return {}


def derived_config_text(src: str, out: str, meta: dict[str, Any]) -> str:
  """The text of ``<out>/config.py``: configs/default_ve.py with the folder's network, image size,
  centring, score_sde's conditioning and ``model.pretrained`` set; σ_min, σ_max, the sampler's
  steps and snr from a ScoreSdeVeScheduler config beside the folder when there is one."""
  net = meta["network"]
  sched = read_scheduler(src)
  sde = {"sigma_min": float(sched.get("sigma_min", 0.01)), "sigma_max": float(sched.get("sigma_max", 50.0))}
  pc = {"num_steps": int(sched.get("num_train_timesteps", 1000)), "snr": float(sched.get("snr", 0.16))}
  where = ("from its ScoreSdeVeScheduler config" if sched else
           "configs/default_ve.py's: no ScoreSdeVeScheduler config was found beside the folder; set "
           "config.sde.ve.sigma_max to the largest distance between training images")
  about = textwrap.fill(f"The network is the folder's UNet2DModel; σ_min / σ_max and the sampler's steps and snr are "
                        f"{where}.  --mode=sample reads no data; --mode=eval compares with the training images: "
                        "set --config.data.path to their folder.", 100)
  name = os.path.basename(os.path.normpath(src)) or "diffusers"
  network = {k: tuple(tuple(p) for p in v) if k == "group_counts" else tuple(v) if isinstance(v, list) else v
             for k, v in net.items() if k not in ("image_size", "num_channels", "num_classes")}
  return f'''"""score_jax config of the diffusers folder {meta["source"]},
derived from its config.json by `python -m score_jax.pretrained` (score_jax/pretrained.py reads
every architecture field of it).

    python main.py --config={os.path.join(os.path.abspath(out), CONFIG_FILE)} --workdir=<new folder> --mode=sample

{about}
"""

import ml_collections

from configs import default_ve

NETWORK = {pprint.pformat(network, width=110, sort_dicts=False)}


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"{{__file__}}: the converted network has one size; no variant {{variant!r}}.")
  config = default_ve.get_config()
  config.sde.ve.update({sde!r})
  data = config.data
  data.kind, data.name, data.path = "folder", {name!r}, ""
  data.image_size = {net["image_size"]!r}
  data.centered = {bool(meta["centered"])!r}  # config.json center_input_sample={not meta["centered"]}
  data.options.channels = {net["num_channels"]!r}
  config.model.network = ml_collections.ConfigDict(NETWORK)
  config.model.pretrained = {os.path.abspath(out)!r}
  config.model.conditioning = {CONDITIONING!r}
  config.sampling.pc.update({pc!r})
  return config
'''


def check_export(path: str, target: dict[tuple[str, ...], tuple[int, ...]]) -> dict[str, Any]:
  """Meta of the export at ``path`` after checking its arrays against ``target`` shapes (one-line errors)."""
  meta = read_meta(path)
  step = meta.get("step", 0)
  if step not in checkpointing.exported_steps(path):
    raise PretrainedMismatch(f"{path}: {META_FILE} names step {step} but there is no ema/{step} export.")
  import orbax.checkpoint as ocp  # pylint: disable=g-import-not-at-top
  with ocp.StandardCheckpointer() as ckptr:
    saved = ckptr.metadata(os.path.join(checkpointing.export_dir(path), str(step)))
  saved = getattr(saved, "item_metadata", saved)
  saved = getattr(saved, "tree", saved)
  found = {tuple(str(getattr(p, "key", p)) for p in kp): tuple(leaf.shape)
           for kp, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]}
  for name, shape in target.items():
    if name not in found:
      raise PretrainedMismatch(f"{path}: array {'/'.join(name)} (shape {shape}) is missing — exported for another "
                               f"network (config {meta.get('config')!r})?")
    if found[name] != shape:
      raise PretrainedMismatch(f"{path}: array {'/'.join(name)} has shape {found[name]} but the config's network "
                               f"needs {shape} — exported for another network (config {meta.get('config')!r})?")
  extra = sorted(set(found) - set(target))
  if extra:
    raise PretrainedMismatch(f"{path}: array {'/'.join(extra[0])} has no place in the config's network — exported "
                             f"for another network (config {meta.get('config')!r})?")
  return meta


def load_export(path: str, target: Any) -> Any:
  """The parameters of the export at ``path``, restored onto ``target`` (ShapeDtypeStructs)."""
  return checkpointing.load_exported_params(path, read_meta(path).get("step", 0), target)


# ---- command line -----------------------------------------------------------------------------


def main(argv: Any) -> None:
  """CLI: --src (score_sde checkpoint file or diffusers folder) [--config] --out DIR [--params ema|raw].

  Every refusal — a config.json field, an array, a file — is one line on stderr, exit status 2.
  """
  import sys  # pylint: disable=import-outside-toplevel

  from absl import flags  # pylint: disable=import-outside-toplevel

  from score_jax import experiment  # pylint: disable=import-outside-toplevel

  del argv
  fl = flags.FLAGS
  config_path = fl["config"].config_filename if fl.config is not None else ""
  try:
    model, centered = experiment.conversion_target(fl.config) if fl.config is not None else (None, None)
    path = export(fl.src, model, fl.out, params=fl.params, centered=centered, config_path=config_path)
  except (ValueError, OSError, pickle.UnpicklingError) as e:  # PretrainedMismatch and ConfigError are ValueErrors
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    sys.exit(2)
  meta = read_meta(fl.out)
  print(f"Wrote {meta['num_params']:,} parameters ({meta['format']}, {meta['params']}, step {meta['step']}) "
        f"to {path}.")
  if config_path:
    print(f"Sample with: python main.py --config={config_path} [the same --config.* overrides] "
          f"--workdir=<new folder> --mode=sample --config.model.pretrained={os.path.abspath(fl.out)} "
          f"--config.model.conditioning={CONDITIONING}")
  else:
    print(f"Wrote its config to {meta['config']}.\n"
          f"Sample with: python main.py --config={meta['config']} --workdir=<new folder> --mode=sample")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "The score_jax config the checkpoint belongs to (e.g. "
                                  "configs/ve/celebahq_256.py); a diffusers folder needs none: its config.json "
                                  "sets the network and <out>/config.py is written.", lock_config=False)
  flags.DEFINE_string("src", None, "score_sde checkpoint file (checkpoint_<n>) or diffusers model folder.")
  flags.DEFINE_string("out", None, "New folder for the export (<out>/ema/<step>, <out>/pretrained.json).")
  flags.DEFINE_enum("params", "ema", list(PARAMS), "score_sde: params_ema (ema) or optimizer.target (raw).")
  flags.mark_flags_as_required(["src", "out"])
  app.run(main)
