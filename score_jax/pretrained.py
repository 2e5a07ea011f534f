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
  linear ``[O, I]`` -> ``[I, O]``.

Either way the result is checked against the score_jax network the config describes: the
first array that is missing, left over or of another shape is named in a one-line
``PretrainedMismatch`` (a ValueError).

Both formats hold networks trained with score_sde's conventions (σ(t) = σ_min (σ_max/σ_min)^t
conditioning for VE, inputs mapped to 2x − 1 by the network when the data are not centered),
so they must be sampled with ``config.model.conditioning="score_sde"`` (``score_jax.score_fn``);
the export written here records that and ``score_jax.experiment`` refuses any other setting.

Command line (writes an EMA export, ``<out>/ema/<step>``, plus ``<out>/pretrained.json``)::

    python -m score_jax.pretrained --src=checkpoint_<n> --config=configs/ve/celebahq_256.py --out=pretrained/celebahq
    python main.py --config=configs/ve/celebahq_256.py --workdir=runs/celebahq_pt --mode=sample \\
        --config.model.pretrained=pretrained/celebahq --config.model.conditioning=score_sde
"""

from __future__ import annotations

import collections
import json
import math
import os
import pickle
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


def read_diffusers(folder: str) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  """(config.json, {name: array}) of a diffusers model folder (.safetensors preferred, else .bin)."""
  with open(os.path.join(folder, "config.json")) as f:
    config = json.load(f)
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

SKIP_DOWN = ("SkipDownBlock2D", "AttnSkipDownBlock2D")
SKIP_UP = ("SkipUpBlock2D", "AttnSkipUpBlock2D")


def check_diffusers_config(cfg: dict[str, Any], model: nn.Module) -> None:
  """Raises PretrainedMismatch unless the diffusers config is the NCSN++ that ``model`` is."""
  levels = len(model.ch_mult)
  want = {
      "block_out_channels": [model.nf * m for m in model.ch_mult],
      "layers_per_block": model.num_res_blocks,
      "in_channels": model.num_channels,
      "out_channels": model.num_channels,
      "time_embedding_type": "fourier",
      "down_block_types": [SKIP_DOWN[int(model.image_size // 2**i in model.attn_resolutions)] for i in range(levels)],
      "up_block_types": [SKIP_UP[int(model.image_size // 2**i in model.attn_resolutions)]
                         for i in reversed(range(levels))],
  }
  for key, value in want.items():
    got = cfg.get(key)
    if (list(got) if isinstance(got, (list, tuple)) else got) != value:
      raise PretrainedMismatch(f"config.json {key}={got!r} but the config's network needs {value!r} "
                               "(wrong --config for this model?).")
  fixed = dict(resblock_type="biggan", fir=True, fir_kernel=(1, 3, 3, 1), skip_rescale=True,
               progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
               embedding_type="fourier", conditional=True, num_classes=0)
  for field, value in fixed.items():
    got = getattr(model, field)
    if (tuple(got) if isinstance(got, (list, tuple)) else got) != value:
      raise PretrainedMismatch(f"config.model.network.{field}={got!r}, but a diffusers NCSN++ (skip blocks) has "
                               f"{value!r}.")
  eps = cfg.get("norm_eps", 1e-5)
  if not math.isclose(eps, 1e-6):
    raise PretrainedMismatch(f"config.json norm_eps={eps} but NCSN++ normalizes with 1e-6.")
  mid = cfg.get("mid_block_scale_factor", 1.0)
  if not math.isclose(mid, math.sqrt(2.0), rel_tol=1e-6):
    raise PretrainedMismatch(f"config.json mid_block_scale_factor={mid} but NCSN++ rescales skips by sqrt(2).")


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


def convert(src: str, model: nn.Module, *, params: str = "ema") -> tuple[dict[str, Any], dict[str, Any]]:
  """Reads a score_sde checkpoint or a diffusers folder into ``model``'s parameter tree.

  Args:
    src: a score_sde ``checkpoint_<n>`` file or a diffusers model folder.
    model: the score_jax ``NCSNpp`` the weights are meant for (from the config).
    params: score_sde only: "ema" (``params_ema``) or "raw" (``optimizer.target``).

  Returns:
    (params tree of numpy float32 arrays, meta: format, source, step, params).

  Raises:
    PretrainedMismatch: the file does not fit ``model`` (one line naming the first array).
  """
  fmt = detect_format(src)
  if fmt == "export":
    raise ValueError(f"{src} is already a converted export; pass it as --config.model.pretrained.")
  pairs, shapes = name_map(fmt, model)
  if fmt == "score_sde":
    flat, step = read_score_sde(src, params=params)
    arrays = {"/".join(k): v for k, v in flat.items()}
    tree = _assemble(pairs, arrays, shapes, os.path.basename(src))
  else:
    cfg, arrays = read_diffusers(src)
    check_diffusers_config(cfg, model)
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
          "params": params if fmt == "score_sde" else "ema", "conditioning": CONDITIONING}
  return tree, meta


# ---- exports ------------------------------------------------------------------------------------


def read_meta(path: str) -> dict[str, Any]:
  """The ``pretrained.json`` of an export folder written by ``export``."""
  with open(os.path.join(path, META_FILE)) as f:
    return json.load(f)


def export(src: str, model: nn.Module, out: str, *, params: str = "ema", centered: bool = False,
           config_path: str = "") -> str:
  """Converts ``src`` and writes ``<out>/ema/<step>`` (Orbax) and ``<out>/pretrained.json``; never overwrites.

  Returns:
    The export's path.
  """
  if os.path.exists(os.path.join(out, META_FILE)) or checkpointing.exported_steps(out):
    raise FileExistsError(f"{out} already holds an export; choose another --out (nothing was overwritten).")
  tree, meta = convert(src, model, params=params)
  path = checkpointing.export_params(out, meta["step"], tree)
  meta.update(centered=bool(centered), config=config_path, num_params=int(sum(v.size for v in jax.tree.leaves(tree))))
  with open(os.path.join(out, META_FILE), "w") as f:
    json.dump(meta, f, indent=2)
  return path


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
  """CLI: --src (score_sde checkpoint file or diffusers folder) --config --out DIR [--params ema|raw]."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  from score_jax import experiment  # pylint: disable=import-outside-toplevel

  del argv
  fl = flags.FLAGS
  model, centered = experiment.conversion_target(fl.config)
  path = export(fl.src, model, fl.out, params=fl.params, centered=centered, config_path=fl["config"].config_filename)
  meta = read_meta(fl.out)
  print(f"Wrote {meta['num_params']:,} parameters ({meta['format']}, {meta['params']}, step {meta['step']}) "
        f"to {path}.\n"
        f"Sample with: python main.py --config={fl['config'].config_filename} [the same --config.* overrides] "
        f"--workdir=<new folder> --mode=sample --config.model.pretrained={os.path.abspath(fl.out)} "
        f"--config.model.conditioning={CONDITIONING}")


if __name__ == "__main__":
  from absl import app  # pylint: disable=g-import-not-at-top
  from absl import flags  # pylint: disable=g-import-not-at-top
  from ml_collections import config_flags  # pylint: disable=g-import-not-at-top

  config_flags.DEFINE_config_file("config", None, "The score_jax config the checkpoint belongs to (e.g. "
                                  "configs/ve/celebahq_256.py).", lock_config=False)
  flags.DEFINE_string("src", None, "score_sde checkpoint file (checkpoint_<n>) or diffusers model folder.")
  flags.DEFINE_string("out", None, "New folder for the export (<out>/ema/<step>, <out>/pretrained.json).")
  flags.DEFINE_enum("params", "ema", list(PARAMS), "score_sde: params_ema (ema) or optimizer.target (raw).")
  flags.mark_flags_as_required(["config", "src", "out"])
  app.run(main)
