"""Runs one ``main.py`` command as N JAX processes on this machine (CPU collectives over Gloo).

    python launch/local_multiprocess.py --num_processes=2 -- \
        --config=configs/ve/digits.py:smoke --workdir=runs/digits_2proc --mode=train

The same code path as a multi-host TPU pod or GPU cluster: every process calls
``jax.distributed.initialize`` (``main.py --distributed``), loads its own share of each
global batch, and all processes take part in every Orbax checkpoint.  Each process gets
``--devices_per_process`` simulated CPU devices.  Output of process i goes to
``<workdir>/process_<i>.log``; the launcher exits with the first non-zero exit status.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--num_processes", type=int, default=2)
  parser.add_argument("--devices_per_process", type=int, default=1)
  parser.add_argument("--port", type=int, default=0, help="coordinator port on localhost (0: a free one)")
  parser.add_argument("--timeout", type=float, default=1800.0, help="seconds before the processes are killed")
  parser.add_argument("main_args", nargs=argparse.REMAINDER, help="arguments of main.py, after --")
  args = parser.parse_args(argv)
  main_args = [a for a in args.main_args if a != "--"]
  workdir = next((a.split("=", 1)[1] for a in main_args if a.startswith("--workdir=")), None)
  if workdir is None:
    parser.error("pass main.py's --workdir=... after --")
  os.makedirs(workdir, exist_ok=True)
  address = f"localhost:{args.port or free_port()}"
  kept = [f for f in os.environ.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device_count")]
  env = dict(os.environ, JAX_PLATFORMS="cpu",  # the caller's XLA flags, with this launcher's device count
             XLA_FLAGS=" ".join(kept + [f"--xla_force_host_platform_device_count={args.devices_per_process}"]))
  procs, logs = [], []
  for i in range(args.num_processes):
    cmd = [sys.executable, os.path.join(ROOT, "main.py"), *main_args, "--distributed",
           f"--coordinator_address={address}", f"--num_processes={args.num_processes}", f"--process_id={i}"]
    log = open(os.path.join(workdir, f"process_{i}.log"), "a")  # pylint: disable=consider-using-with
    logs.append(log)
    procs.append(subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT))
  status = 0
  try:
    for i, proc in enumerate(procs):
      rc = proc.wait(timeout=args.timeout)
      print(f"process {i}: exit status {rc} (log: {logs[i].name})")
      status = status or rc
  except subprocess.TimeoutExpired:
    status = 124
    print(f"timed out after {args.timeout} s; killing the processes", file=sys.stderr)
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
    for log in logs:
      log.close()
  return status


if __name__ == "__main__":
  sys.exit(main())
