"""Converts pytorch-fid's FID Inception weights to the ``.npz`` that ``load_inception_params`` reads.

Run once, wherever torch is installed (nothing else here needs torch)::

  python -m score_jax.metrics.convert_inception \\
      --src pt_inception-2015-12-05-6726825d.pth --out inception_fid.npz

and point ``config.eval.inception_path`` at the output.  The source file is pytorch-fid's
release asset (a plain PyTorch state dict of torchvision's Inception3 layout with the
FID-variant blocks); this module never downloads anything.

Key mapping, PyTorch state-dict key [shape] -> ``.npz`` key [shape], where ``L`` is a
dotted layer path such as ``Conv2d_1a_3x3`` or ``Mixed_5b.branch5x5_1`` and ``L/`` the
same path with "/" instead of ".":

  L.conv.weight          [O, I, kh, kw] -> params/L/conv/kernel    [kh, kw, I, O]  (OIHW -> HWIO: transpose 2, 3, 1, 0)
  L.bn.weight            [C]            -> params/L/bn/scale       [C]
  L.bn.bias              [C]            -> params/L/bn/bias        [C]
  L.bn.running_mean      [C]            -> batch_stats/L/bn/mean   [C]
  L.bn.running_var       [C]            -> batch_stats/L/bn/var    [C]
  fc.weight              [1008, 2048]   -> params/fc/kernel        [2048, 1008]    (transposed)
  fc.bias                [1008]         -> params/fc/bias          [1008]

``*.num_batches_tracked`` (a training counter) and ``AuxLogits.*`` (the auxiliary
classifier, unused by the FID network) are dropped; any other key is an error, and the
result must match every key and shape of ``InceptionV3`` (``check_flat_variables``).
"""

from __future__ import annotations

import argparse
import os
from typing import Any, Mapping, Optional, Sequence

import numpy as np

from score_jax.metrics import inception

# PyTorch suffix -> (collection, Flax leaf path suffix).
_SUFFIXES = {
    "conv.weight": ("params", "conv/kernel"),
    "bn.weight": ("params", "bn/scale"),
    "bn.bias": ("params", "bn/bias"),
    "bn.running_mean": ("batch_stats", "bn/mean"),
    "bn.running_var": ("batch_stats", "bn/var"),
}
_FC = {"fc.weight": "params/fc/kernel", "fc.bias": "params/fc/bias"}


def _skipped(key: str) -> bool:
  return key.endswith("num_batches_tracked") or key.startswith("AuxLogits.")


def convert_state_dict(state_dict: Mapping[str, Any], *, check: bool = True) -> dict[str, np.ndarray]:
  """Maps a PyTorch FID Inception state dict to flat Flax variables (see the module docstring).

  Args:
    state_dict: key -> array-like (numpy arrays, or anything ``np.asarray`` accepts).
    check: verify that the result has exactly the keys and shapes of ``InceptionV3``.

  Returns:
    Flat "collection/module/.../name" -> float32 numpy array, as stored in the ``.npz``.

  Raises:
    ValueError: on a key that fits no rule, a conv weight that is not 4-D, or (with
      ``check``) a key set / shape that does not match the module.
  """
  out: dict[str, np.ndarray] = {}
  for key, value in state_dict.items():
    if _skipped(key):
      continue
    array = np.asarray(value, dtype=np.float32)
    if key in _FC:
      out[_FC[key]] = array.T if key == "fc.weight" else array
      continue
    for suffix, (collection, leaf) in _SUFFIXES.items():
      if key.endswith("." + suffix):
        layer = key[: -len(suffix) - 1].replace(".", inception.SEPARATOR)
        if suffix == "conv.weight":
          if array.ndim != 4:
            raise ValueError(f"convert_state_dict: {key} must be a 4-D [O, I, kh, kw] weight, got {array.shape}.")
          array = array.transpose(2, 3, 1, 0)  # [O, I, kh, kw] -> [kh, kw, I, O]
        out[f"{collection}/{layer}/{leaf}"] = array
        break
    else:
      raise ValueError(f"convert_state_dict: unrecognised state-dict key {key!r}.")
  if check:
    inception.check_flat_variables(out, "the converted state dict")
  return out


def to_state_dict(arrays: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """Inverse of ``convert_state_dict``: flat Flax variables -> PyTorch-style state dict (numpy)."""
  inverse_fc = {v: k for k, v in _FC.items()}
  inverse = {f"{collection}/{leaf}": suffix for suffix, (collection, leaf) in _SUFFIXES.items()}
  out: dict[str, np.ndarray] = {}
  for key, value in arrays.items():
    array = np.asarray(value)
    if key in inverse_fc:
      out[inverse_fc[key]] = array.T if key.endswith("kernel") else array
      continue
    parts = key.split("/")  # [collection, *layer, "conv" | "bn", name]
    suffix = inverse.get("/".join([parts[0]] + parts[-2:])) if len(parts) >= 4 else None
    layer = "/".join(parts[1:-2])
    if suffix is None:
      raise ValueError(f"to_state_dict: unrecognised variable {key!r}.")
    if suffix == "conv.weight":
      array = array.transpose(3, 2, 0, 1)  # [kh, kw, I, O] -> [O, I, kh, kw]
    out[f"{layer.replace('/', '.')}.{suffix}"] = array
  return out


def save_npz(arrays: Mapping[str, np.ndarray], path: str) -> None:
  """Writes flat variables to a new ``.npz`` (mode "xb": an existing file is never overwritten)."""
  with open(path, "xb") as f:
    np.savez(f, **arrays)


def _load_torch_state_dict(src: str) -> dict[str, np.ndarray]:
  """Reads a .pth state dict with torch (imported only here) as numpy arrays."""
  import torch  # pylint: disable=import-outside-toplevel

  state = torch.load(src, map_location="cpu", weights_only=True)
  if isinstance(state, Mapping) and "state_dict" in state and isinstance(state["state_dict"], Mapping):
    state = state["state_dict"]
  return {k: v.detach().cpu().numpy() for k, v in state.items()}


def main(argv: Optional[Sequence[str]] = None) -> None:
  """CLI: --src pytorch-fid .pth -> --out .npz for ``load_inception_params``."""
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--src", required=True, help=f"pytorch-fid's {inception.PTH_FILENAME} (needs torch)")
  parser.add_argument("--out", required=True, help="output .npz (must not exist); set config.eval.inception_path to it")
  args = parser.parse_args(argv)
  if not os.path.isfile(args.src):
    parser.error(f"--src {args.src!r} does not exist.")
  arrays = convert_state_dict(_load_torch_state_dict(args.src))
  save_npz(arrays, args.out)
  print(f"Wrote {len(arrays)} arrays ({sum(a.size for a in arrays.values()):,} values) to {args.out}")


if __name__ == "__main__":
  main()
