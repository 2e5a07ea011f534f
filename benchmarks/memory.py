"""Compiled per-device memory of the train step at 512 and 1024 px: plain, remat, grad_accum, both.

    python benchmarks/memory.py                      # the whole table (AFHQ-512 b32, FFHQ-1024 b8; 1 and 8 devices)
    python benchmarks/memory.py --configs=afhq_512 --devices=1 --modes=plain,remat --dtypes=float32
    python benchmarks/memory.py --json=runs/memory.json

Nothing is allocated: the TrainState and the batch are ``jax.ShapeDtypeStruct``s
(``experiment.abstract_state``), the real step (``jobs.train_step.make_train_step``, state donated) is
lowered and compiled, and XLA's buffer assignment reports its sizes
(``compiled.memory_analysis()``).  The per-device total is arguments + outputs − aliased
(donated) + temporaries.  Devices are simulated on the CPU
(``--xla_force_host_platform_device_count``, one subprocess per device count), so the
figures are XLA:CPU's buffer sizes, an estimate of what a GPU or TPU compile of the same
step needs: their fusion and scheduling differ (a TPU compile pads layouts, a GPU compile
adds cuDNN workspaces), and a real device also holds the runtime's own reserve.  "fits"
compares the estimate with 80 GB (an A100 / H100 80 GB) and 16 GB (a TPU v4 or v5e core's
HBM as one device sees it), leaving no headroom.

Settings: ``remat`` rematerialises every residual block; ``accum`` sets
``config.training.grad_accum`` to the per-device batch (micro-batches of one example per
device); ``both`` does both.  With one example per device already (FFHQ-1024, batch 8 on 8
devices) there is nothing to accumulate and those rows are skipped.

``--residuals`` prints a second, compiler-independent table instead: the bytes the traced
training loss keeps for its backward pass (the residuals of ``jax.vjp``, weights the backward
reads included) for one device's micro-batch, traced only (seconds per row, nothing
compiled).  That is the activation memory rematerialisation removes at the program level;
XLA fuses some of those values away, so it bounds the compiled activations from above.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {"afhq_512": ("configs/ve/afhq_512.py", 32), "ffhq_1024": ("configs/ve/ffhq_1024.py", 8)}
MODES = ("plain", "remat", "accum", "both")
DTYPES = ("float32", "bfloat16")
GPU_BYTES, TPU_CORE_BYTES = 80e9, 16e9


def _row_config(config_name: str, mode: str, dtype: str, devices: int, *, smoke: bool = False):
  """The config of one row (synthetic data, batch, remat, grad_accum, dtype set), or None when
  ``mode`` accumulates and there is one example per device."""
  sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
  import train_step as bench  # pylint: disable=g-import-not-at-top
  path, batch = CONFIGS[config_name]
  batch = 8 if smoke else batch
  accum = batch // devices if mode in ("accum", "both") else 1
  if mode in ("accum", "both") and accum == 1:
    return None
  config = bench.load_config(path + (":smoke" if smoke else ""))
  bench.use_synthetic_data(config)
  config.training.batch_size = batch
  config.training.remat = mode in ("remat", "both")
  config.training.grad_accum = accum
  config.model.dtype = dtype
  return config


def measure(config_name: str, mode: str, dtype: str, *, smoke: bool = False) -> dict | None:
  """One row, in a process whose device count is already set (also called by ``gpu.py`` on a GPU).

  Args:
    config_name: a key of CONFIGS.
    mode: one of MODES.
    dtype: one of DTYPES.
    smoke: the config's smoke variant (16 px, tiny network) at batch 8, for dry runs.

  Returns:
    The row, or None when ``mode`` accumulates and there is one example per device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  from score_jax import experiment  # pylint: disable=g-import-not-at-top
  from score_jax import sharding as sharding_lib  # pylint: disable=g-import-not-at-top
  from score_jax.jobs import train_step  # pylint: disable=g-import-not-at-top

  devices = jax.device_count()
  config = _row_config(config_name, mode, dtype, devices, smoke=smoke)
  if config is None:
    return None
  path, batch, accum = CONFIGS[config_name][0], config.training.batch_size, config.training.grad_accum
  t0 = time.perf_counter()
  setup = experiment.build(config)
  keys = experiment.keys(config.seed)
  repl = sharding_lib.replicated(setup.mesh)
  state = experiment.abstract_state(setup, repl)
  data = sharding_lib.data_sharding(setup.mesh)
  shapes = {name: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=data)
            for name, s in experiment.abstract_batch(setup).items()}
  step = jax.jit(train_step.make_train_step(setup, train_key=keys["train"]), in_shardings=(repl, jax.tree.map(lambda _: data, shapes)),
                 out_shardings=(repl, repl), donate_argnums=0)
  compiled = step.lower(state, shapes).compile()
  stats = compiled.memory_analysis()
  total = (stats.argument_size_in_bytes + stats.output_size_in_bytes - stats.alias_size_in_bytes
           + stats.temp_size_in_bytes)
  return {"config": path, "batch": batch, "devices": devices, "mode": mode, "remat": mode in ("remat", "both"),
          "grad_accum": accum, "dtype": dtype, "params": experiment.num_params(state.params),
          "argument_bytes": stats.argument_size_in_bytes, "output_bytes": stats.output_size_in_bytes,
          "alias_bytes": stats.alias_size_in_bytes, "temp_bytes": stats.temp_size_in_bytes,
          "total_bytes": total, "compile_s": time.perf_counter() - t0}


def saved_for_backward(config_name: str, mode: str, dtype: str, devices: int) -> dict | None:
  """Bytes that one device's backward pass needs from its forward pass (``jax.vjp`` residuals).

  The loss is the train step's (``setup.loss_fn`` on the score network in training mode) on
  one micro-batch of ``batch / devices / grad_accum`` examples; only shapes are traced.
  Returns None when ``mode`` accumulates and there is one example per device.
  """
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from score_jax import experiment  # pylint: disable=g-import-not-at-top

  config = _row_config(config_name, mode, dtype, devices)
  if config is None:
    return None
  path, batch, accum = CONFIGS[config_name][0], config.training.batch_size, config.training.grad_accum
  config.training.grad_accum = 1  # the loss of one micro-batch, built as a plain step
  setup = experiment.build(config)
  params = jax.eval_shape(lambda key: experiment.init_params(setup, key), jax.random.key(0))
  n = batch // devices // accum
  x = jax.ShapeDtypeStruct((n,) + tuple(setup.data_shape), jnp.float32)
  labels = jnp.zeros((n,), jnp.int32) if setup.num_classes else None

  def residuals(params, x):
    def loss(p):
      key = jax.random.key(1)
      return setup.loss_fn(key, setup.sde, setup.score_fn(p, labels, train=True, dropout_key=key), x)
    return jax.vjp(loss, params)[1]  # a pytree whose leaves are the residuals

  nbytes = lambda tree: sum(math.prod(a.shape) * a.dtype.itemsize for a in jax.tree.leaves(tree))
  return {"config": path, "batch": batch, "devices": devices, "mode": mode, "grad_accum": accum, "dtype": dtype,
          "examples_per_pass": n, "residual_bytes": nbytes(jax.eval_shape(residuals, params, x)),
          "param_bytes": nbytes(params)}


def _worker(args: argparse.Namespace) -> None:
  for config_name in args.configs.split(","):
    for mode in args.modes.split(","):
      for dtype in args.dtypes.split(","):
        row = measure(config_name, mode, dtype)
        if row is not None:
          print("ROW " + json.dumps(row), flush=True)


_gb = lambda b: f"{b / 1e9:.2f}"  # noqa: E731
_ROW_KEYS = [("config", lambda r: os.path.basename(r["config"])), ("batch", lambda r: r["batch"]),
             ("devices", lambda r: r["devices"]), ("setting", lambda r: r["mode"]),
             ("grad_accum", lambda r: r["grad_accum"]), ("dtype", lambda r: r["dtype"])]


def _markdown(rows: list[dict], columns: list) -> str:
  """A markdown table: the row keys, then ``columns`` as (header, row -> cell)."""
  columns = _ROW_KEYS + columns
  lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
  lines += ["| " + " | ".join(str(cell(r)) for _, cell in columns) + " |" for r in rows]
  return "\n".join(lines)


def table(rows: list[dict]) -> str:
  fits = lambda limit: lambda r: "yes" if r["total_bytes"] <= limit else "no"
  return _markdown(rows, [("state + batch GB", lambda r: _gb(r["argument_bytes"])),
                          ("temporaries GB", lambda r: _gb(r["temp_bytes"])),
                          ("per-device total GB", lambda r: _gb(r["total_bytes"])),
                          ("fits 80 GB GPU", fits(GPU_BYTES)), ("fits 16 GB TPU core", fits(TPU_CORE_BYTES)),
                          ("build + compile s", lambda r: f"{r['compile_s']:.0f}")])


def residual_table(rows: list[dict]) -> str:
  return _markdown(rows, [("examples per pass", lambda r: r["examples_per_pass"]),
                          ("parameters GB", lambda r: _gb(r["param_bytes"])),
                          ("saved for backward GB", lambda r: _gb(r["residual_bytes"]))])


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--configs", default=",".join(CONFIGS), help=f"comma list of {list(CONFIGS)}")
  parser.add_argument("--devices", default="1,8", help="comma list of simulated device counts")
  parser.add_argument("--modes", default=",".join(MODES), help=f"comma list of {list(MODES)}")
  parser.add_argument("--dtypes", default=",".join(DTYPES), help=f"comma list of {list(DTYPES)}")
  parser.add_argument("--json", default="", help="also write the rows here (must not exist)")
  parser.add_argument("--residuals", action="store_true",
                      help="print what the forward pass keeps for the backward pass (traced, not compiled)")
  parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  args = parser.parse_args()
  for name, allowed in (("configs", CONFIGS), ("modes", MODES), ("dtypes", DTYPES)):
    unknown = set(getattr(args, name).split(",")) - set(allowed)
    if unknown:
      parser.error(f"--{name}: unknown {sorted(unknown)}; choose from {list(allowed)}")
  if args.json and os.path.exists(args.json):
    parser.error(f"--json={args.json} exists; choose a new path")
  if args.worker:
    _worker(args)
    return
  if args.residuals:
    t0 = time.perf_counter()
    rows = [row for devices in [int(d) for d in args.devices.split(",")] for config_name in args.configs.split(",")
            for mode in args.modes.split(",") for dtype in args.dtypes.split(",")
            if (row := saved_for_backward(config_name, mode, dtype, devices)) is not None]
    print(f"Residuals of jax.vjp of the training loss per device, traced ({time.perf_counter() - t0:.0f} s; "
          "GB = 1e9 bytes; weights the backward pass reads are counted).\n")
    print(residual_table(rows))
    return

  rows, t0 = [], time.perf_counter()
  for devices in [int(d) for d in args.devices.split(",")]:
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               XLA_FLAGS=f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count={devices}".strip(),
               JAX_PLATFORMS="cpu")
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", f"--configs={args.configs}",
           f"--modes={args.modes}", f"--dtypes={args.dtypes}"]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, check=False)
    got = [json.loads(line[4:]) for line in proc.stdout.splitlines() if line.startswith("ROW ")]
    if proc.returncode:
      sys.stderr.write(proc.stderr[-4000:])
      raise SystemExit(f"the {devices}-device worker failed (exit {proc.returncode})")
    rows += got
  print(f"XLA:CPU buffer assignment of the train step (jax {__import__('jax').__version__}); "
        f"{time.perf_counter() - t0:.0f} s in all; GB = 1e9 bytes.\n")
  print(table(rows))
  if args.json:
    os.makedirs(os.path.dirname(os.path.abspath(args.json)), exist_ok=True)
    with open(args.json, "x") as f:
      json.dump(rows, f, indent=2)


if __name__ == "__main__":
  main()
