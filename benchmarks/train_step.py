"""Train-step speed of a config: compile time, step time, images/s, and (given peak FLOP/s) MFU.

    python benchmarks/train_step.py --config=configs/ve/digits.py --batch_size=128
    python benchmarks/train_step.py --config=configs/ve/afhq_512.py --batch_size=8 --image_size=256 \
        --synthetic                        # no dataset needed: random batches of the data's shape
    python benchmarks/train_step.py --config=configs/ve/cifar10_ncsnpp_continuous.py --synthetic \
        --image_size=32 --channels=3 --peak_tflops=989

The step is the real one (``jobs.train_step.make_train_step`` jitted over the mesh with the state
donated); batches are the config's data (``--synthetic``: uniform noise of the same shape,
placed on the devices once, so the figure is the device's alone).  Also timed: the host
pipeline's ``batch_at`` (images/s one process can feed).  FLOPs per step come from XLA's
cost analysis of the compiled step; MFU = FLOPs / step time / peak.
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from score_jax import compilation  # pylint: disable=g-import-not-at-top
from score_jax import experiment  # pylint: disable=g-import-not-at-top
from score_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import train_step as step_lib  # pylint: disable=g-import-not-at-top
from score_jax.jobs import train_loop  # pylint: disable=g-import-not-at-top


def load_config(spec: str):
  import importlib.util  # pylint: disable=g-import-not-at-top
  path, _, variant = spec.partition(":")
  module_spec = importlib.util.spec_from_file_location("bench_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(variant)


def use_synthetic_data(config, image_size=None) -> None:
  """Points ``config.data`` at the embedded shapes at the config's (or ``image_size``) size:
  nothing to read from disk, batches of the real shape.  Modifies ``config`` in place."""
  data = config.data
  data.kind, data.name, data.path = "embedded", "shapes", ""
  data.image_size = image_size or data.image_size
  data.options = {"num_train": 16, "num_test": 16}


def compile_with_flops(jitted, *args):
  """(compiled, compile seconds, FLOPs per call from XLA's cost analysis; NaN if it gives none)."""
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  compile_s = time.perf_counter() - t0
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  flops = float(cost.get("flops", float("nan"))) if cost else float("nan")
  return compiled, compile_s, flops


def compiled_train_step(setup, keys):
  """A fresh replicated state and the real train step (state donated), compiled for one batch.

  Returns:
    (state, compiled step, compile seconds, FLOPs per step, abstract batch).
  """
  repl = sharding_lib.replicated(setup.mesh)
  shapes = experiment.abstract_batch(setup)
  batch_sh = jax.tree.map(lambda _: sharding_lib.data_sharding(setup.mesh), shapes)
  state = compilation.run_once(functools.partial(experiment.init_state, setup), keys["init"], out_shardings=repl)
  step_fn = jax.jit(step_lib.make_train_step(setup, train_key=keys["train"]), in_shardings=(repl, batch_sh),
                    out_shardings=(repl, repl), donate_argnums=0)
  compiled, compile_s, flops = compile_with_flops(step_fn, state, shapes)
  return state, compiled, compile_s, flops, shapes


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="config file, optionally path.py:variant")
  parser.add_argument("--batch_size", type=int, default=None, help="global batch (default: the config's)")
  parser.add_argument("--steps", type=int, default=20, help="timed steps after two warm-up steps")
  parser.add_argument("--synthetic", action="store_true", help="random batches; no dataset needed")
  parser.add_argument("--image_size", type=int, default=None, help="with --synthetic: override the size")
  parser.add_argument("--channels", type=int, default=3, help="with --synthetic: channels")
  parser.add_argument("--peak_tflops", type=float, default=None, help="device peak TFLOP/s (all devices) for MFU")
  args = parser.parse_args()

  config = load_config(args.config)
  if args.batch_size:
    config.training.batch_size = args.batch_size
  if args.synthetic:  # build with embedded shapes of the wanted size: nothing to read
    use_synthetic_data(config, args.image_size)
  setup = experiment.build(config)
  keys = experiment.keys(config.seed)
  feeder = train_loop.BatchFeeder(setup, keys["data"])
  state, compiled, compile_s, flops, shapes = compiled_train_step(setup, keys)

  if args.synthetic:
    rng = np.random.default_rng(0)
    fixed = {"image": sharding_lib.global_batch(rng.random(shapes["image"].shape, np.float32), setup.mesh)}
    if "label" in shapes:
      fixed["label"] = sharding_lib.global_batch(np.zeros(shapes["label"].shape, np.int32), setup.mesh)
    batch_at = lambda step: fixed
  else:
    batch_at = feeder
  for step in range(2):
    state, metrics = compiled(state, batch_at(step))
  jax.block_until_ready(metrics)
  times = []
  for step in range(2, 2 + args.steps):
    t = time.perf_counter()
    state, metrics = compiled(state, batch_at(step))
    jax.block_until_ready(metrics)
    times.append(time.perf_counter() - t)
  feeder.close()
  step_s = float(np.median(times))
  b = setup.batch_size

  pipeline_ips = float("nan")
  if isinstance(setup.data, experiment.ImageData) and not args.synthetic:
    t = time.perf_counter()
    for step in range(10):
      setup.data.train.batch_at(step, global_batch_size=b, seed=0)
    pipeline_ips = 10 * b / (time.perf_counter() - t)

  device = jax.devices()[0]
  print(f"config {args.config}  data {setup.data_shape}  batch {b}  params {experiment.num_params(state.params):,}")
  print(f"devices {jax.device_count()} x {device.device_kind} ({device.platform}), jax {jax.__version__}")
  print(f"compile        {compile_s:8.2f} s")
  print(f"step (median)  {1e3 * step_s:8.2f} ms   (min {1e3 * min(times):.2f}, max {1e3 * max(times):.2f}, "
        f"{args.steps} steps)")
  print(f"images/s       {b / step_s:8.1f}")
  print(f"GFLOP/step     {flops / 1e9:8.2f}   ({flops / step_s / 1e12:.3f} TFLOP/s achieved)")
  if args.peak_tflops:
    print(f"MFU            {100 * flops / step_s / (args.peak_tflops * 1e12):8.2f} %  of {args.peak_tflops} TFLOP/s")
  if np.isfinite(pipeline_ips):
    print(f"host pipeline  {pipeline_ips:8.1f} images/s (batch_at, one process)")


if __name__ == "__main__":
  main()
