"""Writes tests/fixtures/inception: pytorch-fid's FID Inception-v3 and FID, and torch-fidelity's
KID, evaluated on deterministic inputs, for tests/test_inception_reference.py.

Run in a scratch environment with ``pip install torch torchvision pytorch-fid torch-fidelity``
(written with torch 2.14, torchvision 0.29, pytorch-fid 0.3.0, torch-fidelity 0.4.0)::

    python tools/inception_fixture.py --out=tests/fixtures/inception

The network is pytorch-fid's own: ``pytorch_fid.inception.fid_inception_v3()`` (torchvision's
Inception3 with pytorch-fid's FIDInceptionA / C / E_1 / E_2 blocks) inside the
``InceptionV3([3])`` wrapper (resize to 299 × 299 inside the network, bilinear with
align_corners=False, then 2x − 1).  Only its weights file is not fetched:
``load_state_dict_from_url`` is patched to return weights drawn by ``drawn_weights`` from
the manifest (every state-dict name and shape, in order) with a fixed PCG64 stream; the
BatchNorm running statistics are then fitted by ``calibrate`` on ``calibration_images``.
The 23.85M drawn weights are not stored — the test draws the very same arrays from
``manifest.json`` with numpy — but the statistics are (``bn_stats.npz``, 34k float32).
The test converts the whole state dict with ``score_jax.metrics.convert_inception``.
The images and the feature sets of the FID / KID cases come from the same kind of stream.

Stored (``reference.npz``), per image batch ``<b>`` of ``IMAGE_BATCHES``: ``<b>_images``
(uint8 [B, H, W, 3], pixel value k stands for k / 255 in pytorch-fid's [0, 1] input),
``<b>_pool`` [B, 2048] and ``<b>_logits`` [B, 1008] (``fc`` on the pool, as the 2015 graph's
classifier) with float32 weights and inputs computed in float64, and ``<b>_pool_f32`` /
``<b>_logits_f32`` from the same network run in float32.  Per feature case ``<c>`` of
``FEATURE_CASES``: ``<c>_fid`` (``pytorch_fid.fid_score.calculate_frechet_distance`` of the
two sets' mean and ``np.cov``), ``<c>_kid_full`` (torch-fidelity's KID with one subset of
the whole set: no randomness left) and ``<c>_kid_mean`` / ``<c>_kid_std`` with
``KID_SUBSETS`` subsets of ``KID_SUBSET_SIZE`` rows drawn by torch-fidelity's own
``np.random.RandomState(KID_SEED)`` (``kid_subset_indices`` draws the same rows).

This module imports only numpy at the top (the test imports it); torch is imported inside
the functions that run pytorch-fid.  Nothing is overwritten: delete the folder to regenerate it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
from typing import Any
from unittest import mock

import numpy as np

SEED = 20151205
# name -> (batch, height, width): upsampled (non-square, and CIFAR's 32 × 32) and downsampled.
IMAGE_BATCHES = {"up37x53": (2, 37, 53), "up32x32": (2, 32, 32), "down331x317": (1, 331, 317)}
# name -> (rows per set, feature dimension): full-rank covariances, and fewer rows than dimensions.
FEATURE_CASES = {"n500_d64": (500, 64), "n100_d256": (100, 256)}
CALIBRATION_IMAGES = 8  # the images that set the BatchNorm statistics (``calibrate``)
KID_SUBSETS = 10
KID_SUBSET_SIZE = 50
KID_SEED = 2020  # torch-fidelity's default rng_seed


def uniform(bits: np.random.PCG64, n: int) -> np.ndarray:
  """n float64 values uniform in [−1, 1) from the raw 64-bit outputs of a PCG64 stream.

  The raw outputs are fixed by the algorithm, so the values are the same on every machine
  and numpy version (unlike Generator methods, whose streams numpy may change).
  """
  return (bits.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-52 - 1.0


def drawn_weights(manifest: list[list[Any]], seed: int = SEED) -> dict[str, np.ndarray]:
  """Float32 arrays for a [[name, shape], ...] manifest of the FID Inception's weights.

  One PCG64 stream, drawn in manifest order: conv weights He-uniform (±√(6 / fan_in),
  variance 2 / fan_in), BN scale 1 ± 0.1 and bias 1 ± 0.1, the classifier weight
  ±√(3 / 2048) and bias ±0.1.  The BN running statistics are not drawn (see ``calibrate``).

  The BN bias of 1 (one standard deviation of the normalised input) keeps ~84 % of the
  ReLUs open: with biases around 0 this random network is chaotic — a relative input
  change of 1e-6 moved the pool features by 1.5e-4, and pytorch-fid's own float32 result
  differed from its float64 one by 9e-5 — too close to a 1e-4 bar to test anything; with
  1 ± 0.1 the same change moves them by 2e-6.
  """
  bits = np.random.PCG64(seed)
  out = {}
  for name, shape in manifest:
    u = uniform(bits, int(np.prod(shape))).reshape(shape)
    if name.endswith("conv.weight"):
      a = u * math.sqrt(6.0 / int(np.prod(shape[1:])))
    elif name == "fc.weight":
      a = u * math.sqrt(3.0 / shape[1])
    elif name.endswith("bn.weight"):
      a = 1.0 + 0.1 * u
    elif name.endswith("bn.bias"):
      a = 1.0 + 0.1 * u
    elif name == "fc.bias":
      a = 0.1 * u
    else:
      raise ValueError(f"drawn_weights: no fill rule for {name!r}.")
    out[name] = a.astype(np.float32)
  return out


def _is_bn_stat(name: str) -> bool:
  return name.endswith(("bn.running_mean", "bn.running_var"))


def images(name: str, seed: int = SEED) -> np.ndarray:
  """uint8 [B, H, W, 3] images of batch ``name`` (``IMAGE_BATCHES``), uniform over 0..255."""
  b, h, w = IMAGE_BATCHES[name]
  bits = np.random.PCG64([seed, list(IMAGE_BATCHES).index(name)])
  u = uniform(bits, b * h * w * 3)  # [−1, 1)
  return np.floor((u + 1.0) * 128.0).astype(np.uint8).reshape(b, h, w, 3)


def calibration_images(seed: int = SEED) -> np.ndarray:
  """uint8 [CALIBRATION_IMAGES, 299, 299, 3]: half smooth (40 × 40 noise, bilinearly enlarged), half noise.

  Both kinds because the test batches are both: small images enlarged to 299, and a large
  noise image reduced to it; BN statistics of one kind only put the other far off scale.
  """
  import torch  # pylint: disable=import-outside-toplevel
  import torch.nn.functional as F  # pylint: disable=import-outside-toplevel

  half = CALIBRATION_IMAGES // 2
  bits = np.random.PCG64([seed, 99])
  small = (uniform(bits, half * 3 * 40 * 40).reshape(half, 3, 40, 40) + 1.0) * 127.5
  smooth = F.interpolate(torch.from_numpy(small), size=(299, 299), mode="bilinear", align_corners=False).numpy()
  noise = (uniform(bits, half * 3 * 299 * 299).reshape(half, 3, 299, 299) + 1.0) * 127.5
  return np.round(np.concatenate([smooth, noise])).astype(np.uint8).transpose(0, 2, 3, 1)


def feature_sets(name: str, seed: int = SEED) -> tuple[np.ndarray, np.ndarray]:
  """Two float64 feature sets [N, D] of case ``name`` (``FEATURE_CASES``) from different distributions.

  Set 1: z A1, set 2: z A2 + m, with z uniform in [−1, 1) and A1, A2, m drawn from the stream
  (A2 = A1 + 0.3 · noise, so the covariances differ but overlap).  Values are rounded to
  float32, as Inception features are.
  """
  n, d = FEATURE_CASES[name]
  bits = np.random.PCG64([seed, 100 + list(FEATURE_CASES).index(name)])
  a1 = uniform(bits, d * d).reshape(d, d) / math.sqrt(d)
  a2 = a1 + 0.3 * uniform(bits, d * d).reshape(d, d) / math.sqrt(d)
  m = 0.2 * uniform(bits, d)
  x1 = uniform(bits, n * d).reshape(n, d) @ a1
  x2 = uniform(bits, n * d).reshape(n, d) @ a2 + m
  return x1.astype(np.float32).astype(np.float64), x2.astype(np.float32).astype(np.float64)


def kid_subset_indices(n1: int, n2: int) -> list[tuple[np.ndarray, np.ndarray]]:
  """The rows torch-fidelity's KID draws: per subset, ``KID_SUBSET_SIZE`` of set 1, then of set 2."""
  rng = np.random.RandomState(KID_SEED)  # the legacy stream torch-fidelity uses (frozen by numpy)
  return [(rng.choice(n1, KID_SUBSET_SIZE, replace=False), rng.choice(n2, KID_SUBSET_SIZE, replace=False))
          for _ in range(KID_SUBSETS)]


def calibrate(net: Any, wrapper: Any, calibration: np.ndarray) -> dict[str, np.ndarray]:
  """Sets every BatchNorm's running statistics to those of its input on ``calibration`` images.

  pytorch-fid's wrapper runs in training mode once (BN normalises with the batch statistics
  and, with momentum None, stores them as running statistics: mean, unbiased variance), as a
  trained network's statistics fit its inputs.  With drawn statistics instead, the
  un-centred ReLU outputs pile up into a large image-independent part: the pool features of
  two noise images differed by ~1 % of their norm, so an error bar relative to that norm
  says little about the part FID compares.

  Args:
    net: the Inception3 whose layers ``wrapper`` runs.
    wrapper: pytorch-fid's ``InceptionV3`` around ``net``.
    calibration: uint8 [B, H, W, 3] images.

  Returns:
    {state-dict name: float32 array} of every ``bn.running_mean`` / ``bn.running_var`` of ``net``.
  """
  import torch  # pylint: disable=import-outside-toplevel

  for m in net.modules():
    if isinstance(m, torch.nn.BatchNorm2d):
      m.reset_running_stats()
      m.momentum = None  # cumulative average: after one batch, that batch's statistics
  x = torch.from_numpy(calibration.transpose(0, 3, 1, 2).astype(np.float32) / 255.0)  # [B, 3, 299, 299]
  wrapper.train()
  with torch.no_grad():
    wrapper(x)
  wrapper.eval()
  return {k: v.numpy().astype(np.float32) for k, v in net.state_dict().items() if _is_bn_stat(k)}


def make(out: str) -> None:
  """Runs pytorch-fid and torch-fidelity and writes the fixture (see the module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel
  from pytorch_fid import fid_score  # pylint: disable=import-outside-toplevel
  from pytorch_fid import inception as pf  # pylint: disable=import-outside-toplevel
  from torch_fidelity import metric_kid  # pylint: disable=import-outside-toplevel

  if os.path.exists(out):
    raise SystemExit(f"{out} exists; delete it to regenerate (nothing was overwritten).")
  torch.set_num_threads(1)

  # The names and shapes: pytorch-fid's network built with state-dict loading switched off.
  with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: {}), \
       mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
    skeleton = pf.fid_inception_v3().state_dict()
  manifest = [[k, list(v.shape)] for k, v in skeleton.items() if not k.endswith("num_batches_tracked")
              and not _is_bn_stat(k)]
  weights = {k: torch.from_numpy(v) for k, v in drawn_weights(manifest).items()}
  weights |= {k: torch.zeros_like(v) if k.endswith("running_mean") else torch.ones_like(v)
              for k, v in skeleton.items() if _is_bn_stat(k)}
  weights |= {k: torch.tensor(0) for k in skeleton if k.endswith("num_batches_tracked")}
  with mock.patch.object(pf, "load_state_dict_from_url", lambda *a, **k: dict(weights)):
    net = pf.fid_inception_v3()  # torchvision's Inception3 with pytorch-fid's FID blocks; its fc gives the logits
  with mock.patch.object(pf, "fid_inception_v3", lambda: net):
    wrapper = pf.InceptionV3([pf.InceptionV3.BLOCK_INDEX_BY_DIM[2048]])  # resize + 2x − 1, then net's layers
  stats = calibrate(net, wrapper, calibration_images())
  print(f"BN statistics of {len(stats) // 2} layers from {CALIBRATION_IMAGES} calibration images")

  ref: dict[str, np.ndarray] = {}
  with torch.no_grad():
    for name in IMAGE_BATCHES:
      img = images(name)
      x = torch.from_numpy(img.transpose(0, 3, 1, 2).astype(np.float64) / 255.0)  # [B, 3, H, W] in [0, 1]
      for suffix, dtype in (("", torch.float64), ("_f32", torch.float32)):
        pool = wrapper.to(dtype)(x.to(dtype))[0].flatten(1)  # [B, 2048]
        logits = net.to(dtype).fc(pool)  # [B, 1008]
        ref[f"{name}_pool{suffix}"] = pool.numpy()
        ref[f"{name}_logits{suffix}"] = logits.numpy()
      ref[f"{name}_images"] = img
      p = ref[f"{name}_pool"]
      rel = {k: np.max(np.linalg.norm(ref[f"{name}_{k}_f32"] - ref[f"{name}_{k}"], axis=1)
                       / np.linalg.norm(ref[f"{name}_{k}"], axis=1)) for k in ("pool", "logits")}
      spread = np.linalg.norm(p - p.mean(axis=0)) / np.linalg.norm(p)
      print(f"{name}: pool mean {p.mean():.4f}, rms {np.sqrt((p ** 2).mean()):.4f}, min {p.min():.4f}, "
            f"spread over the batch {spread:.3f}; logits rms {np.sqrt((ref[f'{name}_logits'] ** 2).mean()):.4f}; "
            f"pytorch-fid float32 vs float64: pool {rel['pool']:.2e}, logits {rel['logits']:.2e}")

  for name in FEATURE_CASES:
    x1, x2 = feature_sets(name)
    moments = [(x.mean(axis=0), np.cov(x, rowvar=False)) for x in (x1, x2)]  # pytorch-fid's statistics
    ref[f"{name}_fid"] = np.float64(fid_score.calculate_frechet_distance(*moments[0], *moments[1]))
    t1, t2 = torch.from_numpy(x1), torch.from_numpy(x2)
    full = metric_kid.kid_features_to_metric(t1, t2, kid_subsets=1, kid_subset_size=len(x1), verbose=False)
    sub = metric_kid.kid_features_to_metric(t1, t2, kid_subsets=KID_SUBSETS, kid_subset_size=KID_SUBSET_SIZE,
                                            rng_seed=KID_SEED, verbose=False)
    ref[f"{name}_kid_full"] = np.float64(full[metric_kid.KEY_METRIC_KID_MEAN])
    ref[f"{name}_kid_mean"] = np.float64(sub[metric_kid.KEY_METRIC_KID_MEAN])
    ref[f"{name}_kid_std"] = np.float64(sub[metric_kid.KEY_METRIC_KID_STD])
    print(f"{name}: FID {float(ref[f'{name}_fid']):.6f}, KID (1 subset of all) {float(ref[f'{name}_kid_full']):.6e}, "
          f"KID ({KID_SUBSETS} x {KID_SUBSET_SIZE}) {float(ref[f'{name}_kid_mean']):.6e} "
          f"± {float(ref[f'{name}_kid_std']):.3e}")

  os.makedirs(out)
  with open(os.path.join(out, "manifest.json"), "w") as f:
    json.dump({"seed": SEED, "arrays": manifest}, f)
  np.savez_compressed(os.path.join(out, "bn_stats.npz"), **stats)
  np.savez_compressed(os.path.join(out, "reference.npz"), **ref)
  print(f"{out}: {sum(int(np.prod(s)) for _, s in manifest):,} weights drawn from {len(manifest)} manifest arrays")


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--out", default="tests/fixtures/inception")
  make(parser.parse_args().out)


if __name__ == "__main__":
  main()
