"""Writes the golden fixtures of tests/test_pretrained.py: tiny networks of the two published
formats, run by the reference code itself, with their outputs on a fixed input.

score_sde (Song et al. 2021, the Flax release) — run with score_jax's environment and a
checkout of https://github.com/yang-song/score_sde (any commit since 2021; its model code runs
on today's Flax once two unused imports are stubbed: ``flax.optim`` in the ``State``
annotation and TensorFlow in ``utils.py``; this script stubs them, the checkout is not edited)::

    python tools/pretrained_fixtures.py score_sde --score_sde=/path/to/score_sde --out=tests/fixtures/pretrained

For each tiny config in ``SCORE_SDE_CASES`` it initialises score_sde's ``NCSNpp`` (random
weights, re-drawn so that no layer is near zero), writes ``<case>/checkpoint_7`` — the msgpack of
score_sde's training state (``params_ema``, ``optimizer.target`` with other weights, step,
lr, ema_rate, rng; the Adam moments are left out to keep the file small) — and
``<case>/reference.npz``: the input, the conditioning, the network's outputs with both
parameter sets, and score_sde's ``get_score_fn`` (continuous) at fixed times.

diffusers — run in a scratch environment with ``pip install torch diffusers safetensors``::

    python tools/pretrained_fixtures.py diffusers --out=tests/fixtures/pretrained

builds a ``UNet2DModel`` with the block types of ``google/ncsnpp-celebahq-256`` (skip blocks,
attention at one level, Fourier time embedding, FIR resampling) at 8×8 with 128 channels —
the smallest width at which diffusers' fixed 32-group attention norms agree with NCSN++'s
min(C/4, 32) groups.  Its 4.97M weights would not fit a small fixture, so they are not stored:
``deterministic_weights`` draws them from the manifest (names and shapes) with a fixed PCG64
stream, the test draws the very same arrays and writes the .safetensors file itself.  Stored:
``diffusers/config.json``, ``diffusers/manifest.json``, ``diffusers/reference.npz``.  It also
writes ``torch_bin/state.bin`` (torch.save of a few tensors with float16, a transposed view
and an offset view) with ``torch_bin/expected.npz`` for the restricted .bin reader.

Full-size name maps (``shapes`` subcommands): the parameter names and shapes of every
published network whose config has a counterpart in configs/ — score_sde's, from its own
config files through ``jax.eval_shape`` (no weights), and diffusers' for the NCSN++ configs
it converted (CelebA-HQ 256, Church 256, FFHQ 1024), built on torch's meta device — go to
``score_sde_shapes.json.gz`` / ``diffusers_shapes.json.gz``; the test maps them onto
score_jax's networks without allocating a weight::

    python tools/pretrained_fixtures.py score_sde_shapes --score_sde=/path/to/score_sde
    python tools/pretrained_fixtures.py diffusers_shapes      # in the torch environment

Nothing is overwritten: delete the fixture folder (or file) to regenerate it.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import os
import sys
import types
from typing import Any

import numpy as np

SEED = 20210513

# Tiny score_sde configs: (name, sde, model fields, data.centered).  Sizes: nf 4, two levels,
# 8×8 images, attention at 4×4; options cover every name the converter maps.
_TINY = dict(nf=4, ch_mult=(1, 2), num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, fir_kernel=[1, 3, 3, 1],
             init_scale=0.0, conditional=True, fourier_scale=16.0, resamp_with_conv=True)
SCORE_SDE_CASES = {
    # configs/ve/cifar10_ncsnpp_continuous.py
    "ve_ncsnpp": ("ve", dict(_TINY, resblock_type="biggan", fir=True, skip_rescale=True, progressive="none",
                             progressive_input="residual", progressive_combine="sum", embedding_type="fourier",
                             scale_by_sigma=True), False),
    # configs/ve/celebahq_256_ncsnpp_continuous.py (and FFHQ, Church)
    "ve_ncsnpp_skip": ("ve", dict(_TINY, resblock_type="biggan", fir=True, skip_rescale=True,
                                  progressive="output_skip", progressive_input="input_skip", progressive_combine="sum",
                                  embedding_type="fourier", scale_by_sigma=True), False),
    # configs/vp/cifar10_ddpmpp_continuous.py (sub-VP: the same network)
    "vp_ddpmpp": ("vp", dict(_TINY, resblock_type="biggan", fir=False, skip_rescale=True, progressive="none",
                             progressive_input="none", progressive_combine="sum", embedding_type="positional",
                             scale_by_sigma=False), True),
    # DDPM blocks with FIR resampling convolutions, residual output pyramid, concatenating input pyramid.
    "ddpm_blocks": ("ve", dict(_TINY, resblock_type="ddpm", fir=True, skip_rescale=False, progressive="residual",
                               progressive_input="input_skip", progressive_combine="cat", embedding_type="fourier",
                               scale_by_sigma=True), False),
}
SCORE_JAX_FIELDS = ("nf", "ch_mult", "num_res_blocks", "attn_resolutions", "dropout", "resblock_type",
                    "resamp_with_conv", "fir", "fir_kernel", "skip_rescale", "progressive", "progressive_input",
                    "progressive_combine", "embedding_type", "fourier_scale", "init_scale", "conditional")
SDE_PARAMS = {"ve": dict(sigma_min=0.01, sigma_max=50.0), "vp": dict(beta_min=0.1, beta_max=20.0)}
IMAGE_SIZE = 8
TIMES = (0.3, 0.9)

# The diffusers network: google/ncsnpp-celebahq-256's block types on two levels.
DIFFUSERS_CONFIG = dict(
    sample_size=8, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="fourier",
    block_out_channels=[128, 128], layers_per_block=1, down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D"],
    up_block_types=["AttnSkipUpBlock2D", "SkipUpBlock2D"], mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6,
    norm_num_groups=None, attention_head_dim=None, act_fn="silu")
DIFFUSERS_SIGMAS = (0.05, 3.0)

# The config.json fields one at a time (tests/test_pretrained.py, "no silent path"): a small base
# folder (8×8, widths 32 and 64, attention at 4×4) and perturbations of it.  "match" cases are
# converted and compared with diffusers' outputs; "same" cases change no computation (diffusers'
# output is checked here to equal the base's) and must convert to the base's network; "refuse"
# cases are checked here to change diffusers' output (or to fail to build in diffusers).
FIELDS_BASE = dict(
    sample_size=8, in_channels=3, out_channels=3, center_input_sample=False, time_embedding_type="fourier",
    block_out_channels=[32, 64], layers_per_block=1, down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D"],
    up_block_types=["AttnSkipUpBlock2D", "SkipUpBlock2D"], mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6,
    norm_num_groups=None, attention_head_dim=None, act_fn="silu")
FIELDS_MATCH = {
    "base": {},
    # The issue's 4-level narrow folder with diffusers' default norm_num_groups=32.
    "narrow4": dict(block_out_channels=[32, 64, 64, 128], norm_num_groups=32,
                    down_block_types=["SkipDownBlock2D", "AttnSkipDownBlock2D", "SkipDownBlock2D", "SkipDownBlock2D"],
                    up_block_types=["SkipUpBlock2D", "SkipUpBlock2D", "AttnSkipUpBlock2D", "SkipUpBlock2D"]),
    "center_input": dict(center_input_sample=True),
    "norm_groups": dict(norm_num_groups=8, attn_norm_num_groups=4),
    "layers2_attn_everywhere": dict(layers_per_block=2, down_block_types=["AttnSkipDownBlock2D"] * 2,
                                    up_block_types=["AttnSkipUpBlock2D"] * 2),
}
FIELDS_SAME = {
    "flip_sin_to_cos": False, "freq_shift": 1, "downsample_padding": 0, "downsample_type": "resnet",
    "upsample_type": "resnet", "num_train_timesteps": 1000, "dropout": 0.1, "act_fn": "swish",
    "time_embedding_dim": 128, "attention_head_dim": 64, "mid_block_type": "UNetMidBlock2D", "add_attention": True,
    "resnet_time_scale_shift": "default", "class_embed_type": None,
}
FIELDS_REFUSE = {
    "time_embedding_type": "positional", "time_embedding_dim": 64, "mid_block_scale_factor": 1.0, "norm_eps": 1e-5,
    "resnet_time_scale_shift": "scale_shift", "add_attention": False, "attention_head_dim": 8, "act_fn": "gelu",
    "class_embed_type": "timestep", "num_class_embeds": 10, "in_channels": 1, "out_channels": 1,
    "mid_block_type": None, "block_out_channels": [32, 48],
    "down_block_types": ["DownBlock2D", "AttnSkipDownBlock2D"],
    "up_block_types": ["SkipUpBlock2D", "SkipUpBlock2D"],
}
FIELDS_TIMES = (0.3, 0.9)
FIELDS_VE = dict(sigma_min=0.01, sigma_max=50.0)


# score_sde's published continuous-time NCSN++ / DDPM++ configs -> score_jax's config (with overrides).
PUBLISHED = {
    "ve/cifar10_ncsnpp_continuous": ("configs/ve/cifar10_ncsnpp_continuous.py", {}),
    "ve/cifar10_ncsnpp_deep_continuous": ("configs/ve/cifar10_ncsnpp_continuous.py", {"num_res_blocks": 8}),
    "vp/cifar10_ddpmpp_continuous": ("configs/vp/cifar10_ddpmpp_continuous.py", {}),
    "vp/cifar10_ddpmpp_deep_continuous": ("configs/vp/cifar10_ddpmpp_continuous.py", {"num_res_blocks": 8}),
    "subvp/cifar10_ddpmpp_continuous": ("configs/subvp/cifar10_ddpmpp_continuous.py", {}),
    "subvp/cifar10_ddpmpp_deep_continuous": ("configs/subvp/cifar10_ddpmpp_continuous.py", {"num_res_blocks": 8}),
    "ve/celebahq_256_ncsnpp_continuous": ("configs/ve/celebahq_256.py", {}),
    "ve/church_ncsnpp_continuous": ("configs/ve/church_256.py", {}),
    "ve/ffhq_ncsnpp_continuous": ("configs/ve/ffhq_1024.py", {}),
}
DIFFUSERS_PUBLISHED = {"google/ncsnpp-celebahq-256": "configs/ve/celebahq_256.py",
                       "google/ncsnpp-church-256": "configs/ve/church_256.py",
                       "google/ncsnpp-ffhq-1024": "configs/ve/ffhq_1024.py"}


def score_jax_network(config_path: str, overrides: dict[str, Any]) -> dict[str, Any]:
  """The NCSNpp fields of a score_jax config file (plus overrides), image size and channels filled in."""
  import importlib.util  # pylint: disable=import-outside-toplevel

  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  sys.path.insert(0, root)
  spec = importlib.util.spec_from_file_location("cfg", os.path.join(root, config_path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  fields = config.model.network.to_dict() | overrides
  return fields | {"image_size": config.data.image_size, "num_channels": 3}


def diffusers_config(net: dict[str, Any]) -> dict[str, Any]:
  """The UNet2DModel config of a score_jax NCSN++ with skip pyramids (what diffusers' conversion used)."""
  levels = len(net["ch_mult"])
  attn = [net["image_size"] // 2**i in net["attn_resolutions"] for i in range(levels)]
  return dict(sample_size=net["image_size"], in_channels=3, out_channels=3, time_embedding_type="fourier",
              block_out_channels=[net["nf"] * m for m in net["ch_mult"]], layers_per_block=net["num_res_blocks"],
              down_block_types=["AttnSkipDownBlock2D" if a else "SkipDownBlock2D" for a in attn],
              up_block_types=["AttnSkipUpBlock2D" if a else "SkipUpBlock2D" for a in reversed(attn)],
              mid_block_scale_factor=math.sqrt(2.0), norm_eps=1e-6, norm_num_groups=None, attention_head_dim=None)


def _write_gz(path: str, obj: Any) -> None:
  if os.path.exists(path):
    raise SystemExit(f"{path} exists; delete it to regenerate (nothing was overwritten).")
  with gzip.open(path, "wt") as f:
    json.dump(obj, f)


def make_score_sde_shapes(checkout: str, out: str) -> None:
  """{published score_sde config: {param path: shape}} by jax.eval_shape of score_sde's NCSNpp."""
  import importlib.util  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel

  mutils = _import_score_sde(checkout)
  package = types.ModuleType("configs")  # score_sde's config files import `configs.default_*`
  package.__path__ = [os.path.join(os.path.abspath(checkout), "configs")]
  sys.modules["configs"] = package
  # ffhq_ncsnpp_continuous.py sets config.device with torch (unused by the model): a stand-in.
  sys.modules.setdefault("torch", types.SimpleNamespace(cuda=types.SimpleNamespace(is_available=lambda: False),
                                                        device=str))
  result = {}
  for name, (config_path, overrides) in PUBLISHED.items():
    spec = importlib.util.spec_from_file_location("sde_cfg", os.path.join(checkout, "configs", name + ".py"))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    model = mutils.get_model("ncsnpp")(config=config)
    size = config.data.image_size
    init = lambda k, m=model, s=size: m.init({"params": k, "dropout": k}, jnp.zeros((1, s, s, 3)),  # noqa: E731
                                             jnp.ones((1,)), train=False)["params"]
    tree = jax.eval_shape(init, jax.random.PRNGKey(0))
    shapes = {"/".join(str(getattr(p, "key", p)) for p in path): list(leaf.shape)
              for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]}
    result[name] = {"score_jax_config": config_path, "overrides": overrides, "centered": bool(config.data.centered),
                    "shapes": shapes}
    print(f"{name}: {sum(int(np.prod(s)) for s in shapes.values()):,} parameters")
  _write_gz(os.path.join(out, "score_sde_shapes.json.gz"), result)


def make_diffusers_shapes(out: str) -> None:
  """{published diffusers NCSN++: {state-dict name: shape}}, built on torch's meta device."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel

  result = {}
  for name, config_path in DIFFUSERS_PUBLISHED.items():
    cfg = diffusers_config(score_jax_network(config_path, {}))
    with torch.device("meta"):
      model = UNet2DModel(**cfg)
    shapes = {k: list(v.shape) for k, v in model.state_dict().items()}
    result[name] = {"score_jax_config": config_path, "config": cfg, "shapes": shapes}
    print(f"{name}: {sum(int(np.prod(s)) for s in shapes.values()):,} parameters")
  _write_gz(os.path.join(out, "diffusers_shapes.json.gz"), result)


def deterministic_weights(manifest: list[list[Any]], seed: int = SEED) -> dict[str, np.ndarray]:
  """Float32 arrays for a {name, shape} manifest (torch layouts) from one PCG64 stream.

  The raw 64-bit outputs of ``np.random.PCG64(seed)`` are fixed by the algorithm, so the
  arrays are the same on every machine and numpy version.  Scales keep activations O(1):
  weights of rank >= 2 are uniform in ±√(3 / fan_in), norm scales 1 ± 0.1, biases ±0.1,
  the Fourier frequencies (``time_proj``) ±16.

  Args:
    manifest: [[name, shape], ...].
    seed: the stream's seed.

  Returns:
    {name: array}, drawn in the order of ``manifest``.
  """
  bits = np.random.PCG64(seed)
  out = {}
  for name, shape in manifest:
    n = int(np.prod(shape)) if shape else 1
    u = (bits.random_raw(n) >> np.uint64(11)).astype(np.float64) * 2.0**-53 * 2.0 - 1.0  # uniform in [−1, 1)
    if name.startswith("time_proj"):
      a = 16.0 * u
    elif len(shape) >= 2:
      a = u * math.sqrt(3.0 / int(np.prod(shape[1:])))
    elif "norm" in name and name.endswith("weight"):
      a = 1.0 + 0.1 * u
    else:
      a = 0.1 * u
    out[name] = a.reshape(shape).astype(np.float32)
  return out


def _new_dir(path: str) -> None:
  if os.path.exists(path):
    raise SystemExit(f"{path} exists; delete it to regenerate (nothing was overwritten).")
  os.makedirs(path)


def _redraw(tree: Any, key: Any) -> Any:
  """Every leaf of a score_sde parameter tree re-drawn (float32) at an O(1)-activation scale."""
  import jax  # pylint: disable=import-outside-toplevel

  leaves, treedef = jax.tree_util.tree_flatten_with_path(tree)
  new = []
  for i, (path, leaf) in enumerate(leaves):
    names = [str(getattr(p, "key", p)) for p in path]
    k = jax.random.fold_in(key, i)
    if names[-1] == "W" and names[-2].startswith("GaussianFourier"):
      new.append(leaf.astype(np.float32))  # the Fourier frequencies, N(0, 16²) already
    elif leaf.ndim >= 2:
      fan_in = int(np.prod(leaf.shape[:-1]))
      new.append(jax.random.uniform(k, leaf.shape, np.float32, -1, 1) * np.float32(math.sqrt(3.0 / fan_in)))
    elif names[-1] == "scale":
      new.append(1.0 + 0.1 * jax.random.uniform(k, leaf.shape, np.float32, -1, 1))
    else:
      new.append(0.1 * jax.random.uniform(k, leaf.shape, np.float32, -1, 1))
  return jax.tree_util.tree_unflatten(treedef, new)


def _import_score_sde(checkout: str) -> Any:
  """score_sde's models.utils (NCSNpp registered), importable on today's Flax."""
  import flax  # pylint: disable=import-outside-toplevel
  import flax.training.checkpoints  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import

  # Two stubs for imports the model code never uses (the checkout is not modified).
  flax.optim = types.SimpleNamespace(Optimizer=Any)
  sys.modules.setdefault("tensorflow", types.ModuleType("tensorflow"))
  sys.path.insert(0, os.path.abspath(checkout))
  from models import ncsnpp  # noqa: F401  pylint: disable=import-outside-toplevel,unused-import  (registers it)
  from models import utils as mutils  # pylint: disable=import-outside-toplevel
  return mutils


def make_score_sde(checkout: str, out: str) -> None:
  """The score_sde fixtures (see the module docstring)."""
  import flax  # pylint: disable=import-outside-toplevel
  import flax.serialization  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel

  mutils = _import_score_sde(checkout)
  import sde_lib  # pylint: disable=import-outside-toplevel

  # Weights and inputs are float32 values (what the checkpoint stores); the reference outputs
  # are computed from them in float64, so the test's bar is not float32 rounding noise.
  jax.config.update("jax_enable_x64", True)
  f64 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), tree)  # noqa: E731
  key = jax.random.PRNGKey(SEED)
  for case, (sde_name, fields, centered) in SCORE_SDE_CASES.items():
    folder = os.path.join(out, case)
    _new_dir(folder)
    config = ml_collections.ConfigDict()
    config.model = ml_collections.ConfigDict(dict(fields, name="ncsnpp", nonlinearity="swish", num_scales=1000,
                                                  ema_rate=0.999, sigma_min=0.01, sigma_max=50.0,
                                                  beta_min=0.1, beta_max=20.0))
    config.data = ml_collections.ConfigDict(dict(image_size=IMAGE_SIZE, num_channels=3, centered=centered))
    config.training = ml_collections.ConfigDict(dict(continuous=True))
    k_init, k_ema, k_raw, k_x, key = jax.random.split(key, 5)
    model = mutils.get_model("ncsnpp")(config=config)  # score_sde's init_model, minus its FrozenDict pop
    fake = jnp.zeros((1, IMAGE_SIZE, IMAGE_SIZE, 3))
    init = model.init({"params": k_init, "dropout": k_init}, fake, jnp.ones((1,)), train=False)["params"]
    params_ema, params_raw = _redraw(init, k_ema), _redraw(init, k_raw)
    x = jax.random.uniform(k_x, (2, IMAGE_SIZE, IMAGE_SIZE, 3), np.float32)  # [2, 8, 8, 3] in [0, 1]
    if centered:  # else score_sde's NCSN++ maps the [0, 1] input to [−1, 1] itself
      x = 2.0 * x - 1.0
    x = x.astype(np.float64)
    t = jnp.asarray(TIMES)
    if sde_name == "ve":
      sdes = {"ve": sde_lib.VESDE(sigma_min=0.01, sigma_max=50.0, N=1000)}
      cond = sdes["ve"].marginal_prob(jnp.zeros_like(x), t)[1]  # σ(t) = σ_min (σ_max/σ_min)^t
    else:
      sdes = {"vp": sde_lib.VPSDE(beta_min=0.1, beta_max=20.0, N=1000),
              "subvp": sde_lib.subVPSDE(beta_min=0.1, beta_max=20.0, N=1000)}
      cond = 999.0 * t
    ref = {"x": x, "t": t, "cond": cond,
           "out_ema": model.apply({"params": f64(params_ema)}, x, cond, train=False),
           "out_raw": model.apply({"params": f64(params_raw)}, x, cond, train=False)}
    for name, sde in sdes.items():
      ref[f"score_{name}"] = mutils.get_score_fn(sde, model, f64(params_ema), {}, train=False, continuous=True)(x, t)
    state = {"step": 7, "optimizer": {"target": params_raw, "state": {"step": 7, "param_states": {}}},
             "lr": 2e-4, "model_state": {}, "ema_rate": 0.999, "params_ema": params_ema,
             "rng": np.asarray(jax.random.PRNGKey(1))}
    with open(os.path.join(folder, "checkpoint_7"), "wb") as f:
      f.write(flax.serialization.msgpack_serialize(jax.tree.map(np.asarray, flax.serialization.to_state_dict(state))))
    np.savez(os.path.join(folder, "reference.npz"), **{k: np.asarray(v) for k, v in ref.items()})
    meta = {"sde": sde_name, "sde_params": SDE_PARAMS[sde_name], "centered": centered,
            "network": {k: fields[k] for k in SCORE_JAX_FIELDS} | {"image_size": IMAGE_SIZE, "num_channels": 3},
            "score_sde_model_config": {k: v for k, v in config.model.items()}}
    with open(os.path.join(folder, "meta.json"), "w") as f:
      json.dump(meta, f, indent=1, default=list)
    print(f"{folder}: {sum(np.asarray(v).size for v in jax.tree.leaves(params_ema)):,} parameters")


def make_diffusers(out: str) -> None:
  """The diffusers fixture and the torch .bin reader fixture (see the module docstring)."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel

  folder = os.path.join(out, "diffusers")
  _new_dir(folder)
  model = UNet2DModel(**DIFFUSERS_CONFIG).eval()
  state = model.state_dict()
  manifest = [[name, list(t.shape)] for name, t in state.items()]
  weights = deterministic_weights(manifest)
  model.load_state_dict({k: torch.from_numpy(v) for k, v in weights.items()})
  rng = np.random.default_rng(SEED)
  x = rng.uniform(0.0, 1.0, (2, 3, 8, 8)).astype(np.float32)  # [B, C, H, W]
  sigma = np.asarray(DIFFUSERS_SIGMAS, np.float32)
  with torch.no_grad():  # float32 weights and inputs, evaluated in float64 (see make_score_sde)
    y = model.double()(torch.from_numpy(x).double(), torch.from_numpy(sigma).double()).sample.numpy()
  model.save_config(folder)  # config.json, as save_pretrained writes it
  with open(os.path.join(folder, "manifest.json"), "w") as f:
    json.dump({"seed": SEED, "arrays": manifest}, f)
  np.savez(os.path.join(folder, "reference.npz"), x=x.transpose(0, 2, 3, 1), sigma=sigma, out=y.transpose(0, 2, 3, 1))
  print(f"{folder}: {sum(int(np.prod(s)) for _, s in manifest):,} parameters, {len(manifest)} arrays")

  folder = os.path.join(out, "torch_bin")
  _new_dir(folder)
  g = torch.Generator().manual_seed(SEED)
  base = torch.randn(6, 5, generator=g)
  tensors = {"plain.weight": torch.randn(4, 3, 3, 3, generator=g), "half.bias": torch.randn(7, generator=g).half(),
             "transposed.weight": base.t(), "offset.weight": base[2:, 1:4], "scalar": torch.tensor(2.5),
             "param.weight": torch.nn.Parameter(torch.randn(2, 2, generator=g)), "ints": torch.arange(5)}
  torch.save(tensors, os.path.join(folder, "state.bin"))
  np.savez(os.path.join(folder, "expected.npz"), **{k: v.detach().numpy() for k, v in tensors.items()})
  print(f"{folder}: {len(tensors)} tensors")


def make_diffusers_fields(out: str) -> None:
  """``diffusers_fields.json.gz``: the FIELDS_* cases run by diffusers (see their comment)."""
  import torch  # pylint: disable=import-outside-toplevel
  from diffusers import UNet2DModel  # pylint: disable=import-outside-toplevel

  rng = np.random.default_rng(SEED)
  x = rng.uniform(0.0, 1.0, (2, 3, 8, 8)).astype(np.float32)  # [B, C, H, W] in [0, 1]
  t = np.asarray(FIELDS_TIMES)
  sigma = FIELDS_VE["sigma_min"] * (FIELDS_VE["sigma_max"] / FIELDS_VE["sigma_min"]) ** t  # score_sde's σ(t)

  def run(config: dict[str, Any]) -> tuple[list, np.ndarray]:
    model = UNet2DModel(**config).eval()
    manifest = [[name, list(v.shape)] for name, v in model.state_dict().items()]
    model.load_state_dict({k: torch.from_numpy(v) for k, v in deterministic_weights(manifest).items()})
    with torch.no_grad():  # float32 weights and inputs, evaluated in float64; out = the score (÷ σ inside)
      y = model.double()(torch.from_numpy(x).double(), torch.from_numpy(sigma)).sample.numpy()
    return manifest, y.transpose(0, 2, 3, 1)  # [B, H, W, C]

  result = {"seed": SEED, "base": FIELDS_BASE, "x": x.transpose(0, 2, 3, 1).tolist(), "t": t.tolist(),
            "sde": FIELDS_VE, "match": {}, "same": FIELDS_SAME, "refuse": FIELDS_REFUSE, "refuse_effect": {}}
  base = None
  for name, overrides in FIELDS_MATCH.items():
    manifest, y = run(FIELDS_BASE | overrides)
    base = y if name == "base" else base
    result["match"][name] = {"config": FIELDS_BASE | overrides, "manifest": manifest, "score": y.tolist()}
    print(f"{name}: {sum(int(np.prod(s)) for _, s in manifest):,} parameters")
  for field, value in FIELDS_SAME.items():
    _, y = run(FIELDS_BASE | {field: value})
    err = float(np.max(np.abs(y - base)) / np.max(np.abs(base)))
    assert err < 1e-12, (field, value, err)  # the field changes nothing diffusers computes
  for field, value in FIELDS_REFUSE.items():
    try:
      _, y = run(FIELDS_BASE | {field: value})
      effect = float(np.max(np.abs(y - base)) / np.max(np.abs(base))) if y.shape == base.shape else "shape"
    except Exception as e:  # pylint: disable=broad-except  (diffusers cannot build or run it)
      effect = f"diffusers fails: {type(e).__name__}"
    result["refuse_effect"][field] = effect
    print(f"refuse {field}={value!r}: {effect}")
  _write_gz(os.path.join(out, "diffusers_fields.json.gz"), result)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("kind", choices=("score_sde", "diffusers", "score_sde_shapes", "diffusers_shapes",
                                      "diffusers_fields"))
  parser.add_argument("--out", default="tests/fixtures/pretrained")
  parser.add_argument("--score_sde", help="a checkout of github.com/yang-song/score_sde (kind score_sde)")
  args = parser.parse_args()
  if args.kind.startswith("score_sde") and not args.score_sde:
    parser.error(f"{args.kind} needs --score_sde=<checkout>.")
  os.makedirs(args.out, exist_ok=True)
  if args.kind == "score_sde":
    make_score_sde(args.score_sde, args.out)
  elif args.kind == "score_sde_shapes":
    make_score_sde_shapes(args.score_sde, args.out)
  elif args.kind == "diffusers":
    make_diffusers(args.out)
  elif args.kind == "diffusers_fields":
    make_diffusers_fields(args.out)
  else:
    make_diffusers_shapes(args.out)


if __name__ == "__main__":
  main()
