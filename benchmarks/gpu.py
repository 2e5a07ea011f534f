"""One prepared GPU session: train-step time, images/s and MFU, and PC-sampling images/s, for
CIFAR-10 NCSN++ (32 px) and AFHQ NCSN++ (512 px) on synthetic data, in float32 and bfloat16.

    python benchmarks/gpu.py --out=runs/gpu.json                  # on the GPU (not yet timed on one)
    python benchmarks/gpu.py --out=runs/gpu_afhq.json --configs=afhq_512 --memory_modes=   # a shorter session
    python benchmarks/gpu.py --out=/tmp/gpu_dry.json --dry_run    # tiny shapes on the CPU: proves the script

Per (config, dtype): the real train step (``jobs.train_step.make_train_step``, state donated) on one
fixed synthetic batch of the config's shape and batch size (``--batch_*`` to change),
compile time, the median of ``--steps`` timed steps after two warm-up steps; FLOPs per step
from XLA's cost analysis of the compiled step; MFU = FLOPs / step time / peak.  Then the
config's PC sampler (reverse diffusion + Langevin) on ``--sample_batch`` images for
``--sample_steps`` steps: ms per PC step and images/s at that step count; the images/s at
the config's own step count (``sampling.pc.num_steps``) is derived from the same timing.

Peaks (dense, no sparsity; NVIDIA's data sheets): H100 SXM and H200 989 TFLOP/s bfloat16,
495 TFLOP/s TF32.  float32 runs are compared with the TF32 peak, since XLA lets cuDNN and
cuBLAS use TF32 for float32 convolutions and matmuls at JAX's default precision.  Other
devices: pass ``--peak_tflops_bf16`` and ``--peak_tflops_fp32`` (or MFU is left empty).
A setting that runs out of device memory is reported as such and the run goes on.
Last, the compiled per-device memory of the AFHQ-512 train step (``benchmarks/memory.py``'s
measurement, on this device's compiler) for ``--memory_modes`` in ``--memory_dtypes``:
XLA:CPU's buffer assignment shows no saving from remat (BENCHMARKS.md), so the GPU
compile is the figure that counts.  Compile only; nothing runs.
The tables are printed as markdown and the rows are written as JSON to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "benchmarks"))

import jax  # pylint: disable=g-import-not-at-top
import numpy as np  # pylint: disable=g-import-not-at-top

from score_jax import experiment  # pylint: disable=g-import-not-at-top
from score_jax import sampling  # pylint: disable=g-import-not-at-top
from score_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
import memory as memory_bench  # pylint: disable=g-import-not-at-top
import train_step as bench  # pylint: disable=g-import-not-at-top

CONFIGS = {"cifar10": "configs/ve/cifar10_ncsnpp_continuous.py", "afhq_512": "configs/ve/afhq_512.py"}
DTYPES = ("float32", "bfloat16")
# Dense peak TFLOP/s by device kind: (bfloat16, TF32 for float32).
PEAKS = {"H100": (989.0, 495.0), "H200": (989.0, 495.0)}


def _peak(args: argparse.Namespace, dtype: str) -> float | None:
  given = args.peak_tflops_bf16 if dtype == "bfloat16" else args.peak_tflops_fp32
  if given:
    return given
  kind = jax.devices()[0].device_kind
  for name, peaks in PEAKS.items():
    if name in kind:
      return peaks[0] if dtype == "bfloat16" else peaks[1]
  return None


def _timed(fn, repeats: int) -> list[float]:
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    jax.block_until_ready(fn())
    times.append(time.perf_counter() - t)
  return times


def _config(name: str, dtype: str, args: argparse.Namespace):
  config = bench.load_config(CONFIGS[name] + (":smoke" if args.dry_run else ""))
  bench.use_synthetic_data(config)
  batch = getattr(args, f"batch_{name}")
  if batch:
    config.training.batch_size = batch
  config.model.dtype = dtype
  return config


def run_train(name: str, dtype: str, args: argparse.Namespace) -> dict:
  """Compile and time the train step of one config in one dtype."""
  config = _config(name, dtype, args)
  setup = experiment.build(config)
  keys = experiment.keys(config.seed)
  state, compiled, compile_s, flops, shapes = bench.compiled_train_step(setup, keys)
  rng = np.random.default_rng(0)
  batch = {"image": sharding_lib.global_batch(rng.random(shapes["image"].shape, np.float32), setup.mesh)}
  if "label" in shapes:
    batch["label"] = sharding_lib.global_batch(np.zeros(shapes["label"].shape, np.int32), setup.mesh)
  holder = [state]

  def one_step():
    holder[0], metrics = compiled(holder[0], batch)
    return metrics

  _timed(one_step, 2)
  times = _timed(one_step, args.steps)
  step_s = float(np.median(times))
  peak = _peak(args, dtype)
  b = setup.batch_size
  return {"kind": "train", "config": CONFIGS[name], "dtype": dtype, "batch": b, "image_size": setup.data_shape[0],
          "params": experiment.num_params(state.params), "compile_s": compile_s, "step_ms": 1e3 * step_s,
          "step_ms_min": 1e3 * min(times), "images_per_s": b / step_s, "gflop_per_step": flops / 1e9,
          "achieved_tflops": flops / step_s / 1e12, "peak_tflops": peak,
          "mfu": flops / step_s / (peak * 1e12) if peak else None, "steps": args.steps,
          "final_loss": float(jax.device_get(one_step()["loss"])), "setup": setup, "state": holder[0]}


def run_sampling(train_row: dict, args: argparse.Namespace) -> dict:
  """Time the config's PC sampler with the trained-for-a-few-steps EMA parameters."""
  setup, params = train_row["setup"], train_row["state"].ema_params
  options = dict(setup.sampling_options, num_steps=args.sample_steps)
  n = args.sample_batch
  shape = (n,) + setup.data_shape
  key = jax.random.key(0)
  t0 = time.perf_counter()
  draw = sampling.lower(key, setup.sde, setup.score_fn(params), shape, "pc", **options).compile()
  compile_s = time.perf_counter() - t0
  times = _timed(lambda: draw(key, None)[0], 1 + args.sample_repeats)[1:]
  run_s = float(np.median(times))
  full_steps = int(setup.sampling_options["num_steps"])
  return {"kind": "sample", "config": train_row["config"], "dtype": train_row["dtype"], "batch": n,
          "image_size": train_row["image_size"], "pc_steps": args.sample_steps, "compile_s": compile_s,
          "ms_per_pc_step": 1e3 * run_s / args.sample_steps, "images_per_s": n / run_s,
          "config_pc_steps": full_steps, "images_per_s_at_config_steps": n / (run_s * full_steps / args.sample_steps)}


def _fmt(value, spec: str) -> str:
  return "" if value is None else format(value, spec)


def _section(rows: list[dict], kind: str, header: str, cells) -> list[str]:
  """Markdown rows of one kind: config, dtype, batch, then ``cells(row)`` (or the error)."""
  width = header.count("|") - 1
  lines = [header, "|" + "---|" * width]
  for r in rows:
    if r["kind"] == kind:
      lead = f"| {os.path.basename(r['config'])} | {r['dtype']} | {r['batch']} | "
      lines.append(lead + (f"{r['error']} |" + " |" * (width - 4) if "error" in r else cells(r)))
  return lines


def table(rows: list[dict], device: str) -> str:
  train = _section(
      rows, "train", "| config | dtype | batch | compile s | step ms | images/s | GFLOP/step | TFLOP/s | MFU % |",
      lambda r: (f"{r['compile_s']:.1f} | {r['step_ms']:.2f} | {r['images_per_s']:.1f} | "
                 f"{r['gflop_per_step']:.1f} | {r['achieved_tflops']:.1f} | "
                 f"{_fmt(None if r['mfu'] is None else 100 * r['mfu'], '.1f')} |"))
  sample = _section(
      rows, "sample", "| config | dtype | samples | PC steps timed | ms / PC step | images/s at those steps | "
      "config's PC steps | images/s at the config's steps |",
      lambda r: (f"{r['pc_steps']} | {r['ms_per_pc_step']:.2f} | {r['images_per_s']:.2f} | "
                 f"{r['config_pc_steps']} | {r['images_per_s_at_config_steps']:.3f} |"))
  return "\n".join([f"Device: {device}; jax {jax.__version__}.", ""] + train + [""] + sample)


def _out_of_memory(e: Exception) -> bool:
  text = str(e)
  return "RESOURCE_EXHAUSTED" in text or "Out of memory" in text or "out of memory" in text


def main(argv=None) -> list[dict]:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--out", required=True, help="JSON file for the rows (must not exist)")
  parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
  parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma list of {list(DTYPES)}")
  parser.add_argument("--batch_cifar10", type=int, default=None, help="train batch (default: the config's, 128)")
  parser.add_argument("--batch_afhq_512", type=int, default=None, help="train batch (default: the config's, 32)")
  parser.add_argument("--steps", type=int, default=20, help="timed train steps after two warm-up steps")
  parser.add_argument("--sample_batch", type=int, default=16, help="images per sampler call")
  parser.add_argument("--sample_steps", type=int, default=50, help="PC steps timed (the config's count is derived)")
  parser.add_argument("--sample_repeats", type=int, default=2, help="timed sampler calls after one warm-up")
  parser.add_argument("--peak_tflops_bf16", type=float, default=None, help="device peak for bfloat16 (H100/H200: 989)")
  parser.add_argument("--peak_tflops_fp32", type=float, default=None, help="device peak for float32 (TF32; H100/H200: 495)")
  parser.add_argument("--memory_modes", default="plain,remat,both",
                      help="AFHQ-512 settings whose compiled memory is reported; empty: none")
  parser.add_argument("--memory_dtypes", default="float32", help="dtypes of the memory rows (comma list)")
  parser.add_argument("--dry_run", action="store_true",
                      help="the configs' smoke variants (16 px, tiny networks), 2 steps, 2 PC steps: proves the script on a CPU")
  args = parser.parse_args(argv)
  if args.dry_run:
    args.steps, args.sample_steps, args.sample_repeats, args.sample_batch = 2, 2, 1, 4
  for name, allowed in (("configs", CONFIGS), ("dtypes", DTYPES)):
    unknown = set(getattr(args, name).split(",")) - set(allowed) - {""}
    if unknown:
      parser.error(f"--{name}: unknown {sorted(unknown)}; choose from {list(allowed)}")
  if os.path.exists(args.out):
    parser.error(f"--out={args.out} exists; choose a new path (results are never overwritten)")
  device = f"{jax.device_count()} x {jax.devices()[0].device_kind} ({jax.default_backend()})"
  rows = []
  t0 = time.perf_counter()
  for name in [c for c in args.configs.split(",") if c]:
    for dtype in args.dtypes.split(","):
      try:
        row = run_train(name, dtype, args)
      except Exception as e:  # pylint: disable=broad-except
        if not _out_of_memory(e):
          raise
        rows.append({"kind": "train", "config": CONFIGS[name], "dtype": dtype, "batch": getattr(args, f"batch_{name}"),
                     "error": "out of memory"})
        continue
      try:
        sample_row = run_sampling(row, args)
      except Exception as e:  # pylint: disable=broad-except
        if not _out_of_memory(e):
          raise
        sample_row = {"kind": "sample", "config": CONFIGS[name], "dtype": dtype, "batch": args.sample_batch,
                      "error": "out of memory"}
      row.pop("setup"), row.pop("state")
      rows += [row, sample_row]
      print(f"{name} {dtype}: done at {time.perf_counter() - t0:.0f} s", flush=True)
  memory_rows = []
  for mode in [m for m in args.memory_modes.split(",") if m]:
    for dtype in args.memory_dtypes.split(","):
      row = memory_bench.measure("afhq_512", mode, dtype, smoke=args.dry_run)
      if row is not None:
        memory_rows.append(row)
        print(f"memory afhq_512 {mode} {dtype}: done at {time.perf_counter() - t0:.0f} s", flush=True)
  print(table(rows, device))
  if memory_rows:
    print("\nCompiled per-device memory of the AFHQ-512 train step on this device (compile only):\n")
    print(memory_bench.table(memory_rows))
  rows += [dict(r, kind="memory") for r in memory_rows]
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out, "x") as f:
    json.dump({"device": device, "jax": jax.__version__, "dry_run": args.dry_run, "rows": rows}, f, indent=2)
  return rows


if __name__ == "__main__":
  main()
