"""Runs one ``main.py`` command as N JAX processes on this machine (CPU collectives over Gloo).

    python launch/local_multiprocess.py --num_processes=2 -- \
        --config=configs/ve/digits.py:smoke --workdir=runs/digits_2proc --mode=train

The same code path as a multi-host TPU pod or GPU cluster: every process calls
``jax.distributed.initialize`` (``main.py --distributed``), loads its own share of each
global batch, and all processes take part in every Orbax checkpoint.  Each process gets
``--devices_per_process`` simulated CPU devices.  Output of process i goes to
``<workdir>/process_<i>.log``.

The launcher watches every process.  When one ends badly while others run (``kill -9``, a
crash), it says so in one line at once, e.g. ``process 1 of 2 was killed by SIGKILL (pid 4242,
log: W/process_1.log); the others stop within the heartbeat timeout (30 s)``; the others end
themselves in their own line once JAX's heartbeat rules the process lost (``main.py
--heartbeat_timeout``), and any still running after twice that and 10 s more are killed.  Its
exit status is the first bad one (128 + N for a process killed by signal N), else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from score_jax.jobs import peers  # pylint: disable=wrong-import-position  # stdlib only at import


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
    print(f"process {i} of {args.num_processes}: pid {procs[-1].pid}, log {log.name}", flush=True)
  try:
    return watch(procs, [log.name for log in logs], timeout=args.timeout,
                 heartbeat_timeout=heartbeat_timeout(main_args))
  finally:
    for proc in procs:
      if proc.poll() is None:
        proc.kill()
        proc.wait()
    for log in logs:
      log.close()


def heartbeat_timeout(main_args: list[str]) -> int:
  """main.py's --heartbeat_timeout in ``main_args`` (the last one), else its default."""
  given = [a.split("=", 1)[1] for a in main_args if a.startswith("--heartbeat_timeout=")]
  return int(given[-1]) if given and given[-1].isdigit() else peers.DEFAULT_HEARTBEAT_TIMEOUT


def ending(rc: int) -> str:
  if rc < 0:
    try:
      return f"was killed by {signal.Signals(-rc).name}"
    except ValueError:
      return f"was killed by signal {-rc}"
  return f"exited with status {rc}"


def watch(procs: list[subprocess.Popen], logs: list[str], *, timeout: float, heartbeat_timeout: int) -> int:
  """Waits for the processes, reporting each as it ends; returns the launcher's exit status."""
  n = len(procs)
  start, lost_at, status = time.monotonic(), None, 0
  running = set(range(n))
  while running:
    for i in sorted(running):
      rc = procs[i].poll()
      if rc is None:
        continue
      running.discard(i)
      if rc != 0 and lost_at is None and running:
        lost_at = time.monotonic()
        print(f"process {i} of {n} {ending(rc)} (pid {procs[i].pid}, log: {logs[i]}); the others stop within the "
              f"heartbeat timeout ({heartbeat_timeout} s)", flush=True)
      else:
        print(f"process {i} {ending(rc)} (log: {logs[i]})", flush=True)
      status = status or (128 - rc if rc < 0 else rc)
    now = time.monotonic()
    if running and lost_at is not None and now - lost_at > 2 * heartbeat_timeout + 10:
      print(f"killing process(es) {sorted(running)}: still running {now - lost_at:.0f} s after the loss", flush=True)
      return status
    if running and now - start > timeout:
      print(f"timed out after {timeout} s; killing the processes", file=sys.stderr, flush=True)
      return 124
    time.sleep(0.1)
  return status


if __name__ == "__main__":
  sys.exit(main())
