"""The processes of a multi-process run: joining the job (``connect``), stopping in one line
when one of them is lost (``LossWatch``), and leaving in order (``LossWatch.leave``).

What JAX 0.10 does by itself when a process dies (measured with CPU processes over Gloo): the
coordination service on process 0 rules a process that sent no heartbeat for
``heartbeat_timeout_seconds`` failed and sends that error to every other process, whose
distributed runtime client then aborts it (``LOG(FATAL)``: SIGABRT, dozens of lines of
coordination-service errors and a stack trace).  A survivor in a collective learns sooner on one
machine (Gloo's socket to the dead peer is reset: ``JaxRuntimeError: Gloo all-reduce failed ...
Connection reset by peer``), but then waits in ``jax.distributed.shutdown``'s barrier until the
heartbeat verdict aborts it all the same.  The client's ``missed_heartbeat_callback`` cannot be
set from Python in 0.10 (the callback's ``absl::Status`` argument fails to convert:
``std::bad_cast``, ``std::terminate``).

So ``connect`` turns on ``jax_enable_recoverability`` (the service no longer sends a dead
process's error to the others) and each process runs a ``LossWatch``: a thread asking the
service which processes are alive (``get_live_nodes``, which answers once every live process
has asked, or once the heartbeat timeout has ruled one dead).  When one is missing it prints one
line naming it and the newest complete checkpoint, and ends the process with exit status
``LOST_STATUS``, within about ``heartbeat_timeout`` + 1 s of the loss.  Recoverability also
makes JAX's shutdown stop waiting for the others, so ``leave`` restores an orderly end.

Process 0 hosts the service: when it dies, the others cannot reach it and JAX aborts them at once
with its own message (``Failed to send RPC to coordination service. Either the leader task was
preempted/died ...``); that cannot be turned into one line from here.
"""

from __future__ import annotations

import os
import sys
import threading
import time
from typing import Optional

from absl import logging

DEFAULT_HEARTBEAT_TIMEOUT = 30  # seconds; JAX's own default is 100
LOST_STATUS = 1


def lost_message(lost: list[int], num_processes: int, heartbeat_timeout: int, workdir: Optional[str]) -> str:
  """The one line a survivor prints."""
  who = (f"process {lost[0]} of {num_processes} was" if len(lost) == 1 else
         f"processes {', '.join(map(str, lost))} of {num_processes} were")
  from score_jax import checkpointing  # pylint: disable=import-outside-toplevel
  steps = checkpointing.committed_steps(workdir) if workdir else []
  if steps:
    folder = os.path.join(checkpointing.checkpoint_dir(workdir), str(steps[-1]))
    resume = f"the newest complete checkpoint is step {steps[-1]} ({folder})"
  else:
    resume = "no checkpoint is complete yet (a relaunch starts from step 0)"
  return (f"error: {who} lost (killed, crashed or its machine failed; heartbeat timeout {heartbeat_timeout} s); "
          f"{resume}: relaunch all {num_processes} processes to resume.")


class LossWatch:
  """A daemon thread that ends this process in one line once the coordination service rules
  another process dead, and the way out of a run that did not lose one (``leave``).

  With recoverability on, JAX's shutdown no longer waits for every process, so ``leave`` does
  what it did: after a finished run every process waits for the others at a barrier (one that
  leaves first would be taken for lost), and process 0, which hosts the service, goes last (a
  process that disconnects after the service is gone is aborted by JAX).
  """

  END_BARRIER = "score_jax_end"

  def __init__(self, client, process_id: int, num_processes: int, heartbeat_timeout: int, workdir: Optional[str]):
    self._client, self._id, self._num = client, process_id, num_processes
    self._timeout, self._workdir = heartbeat_timeout, workdir
    self._stopped, self._finishing = threading.Event(), threading.Event()
    self._interval = min(1.0, heartbeat_timeout / 4)
    self._thread = threading.Thread(target=self._watch, name="loss-watch", daemon=True)

  def start(self) -> "LossWatch":
    self._thread.start()
    return self

  def leave(self, *, finished: bool, barrier_timeout: float = 3600.0) -> None:
    """The end of this process's part.  ``finished``: the run ended well here, so wait for the
    others to end too (a loss meanwhile still ends this process in its line); otherwise (an
    error) just leave, in order."""
    if finished:
      self._finishing.set()
      try:
        self._client.wait_at_barrier(self.END_BARRIER, int(barrier_timeout * 1000))
      except Exception as e:  # pylint: disable=broad-except  # alive but never came: this process's work is done
        logging.warning("Not every process reached the end of the run within %.0f s: %s", barrier_timeout,
                        str(e).splitlines()[0] if str(e) else type(e).__name__)
    self._stopped.set()
    if self._id != 0:
      import jax  # pylint: disable=import-outside-toplevel
      try:
        jax.distributed.shutdown()  # while process 0 still serves
      except Exception as e:  # pylint: disable=broad-except
        logging.warning("Leaving the distributed service failed: %s", str(e).splitlines()[0] if str(e) else e)
    else:
      self._wait_for_the_others_to_leave(timeout=30.0 if finished else self._timeout + 5.0)

  def _wait_for_the_others_to_leave(self, timeout: float) -> None:
    others = set(range(self._num)) - {self._id}
    gone = threading.Event()

    def wait() -> None:
      try:  # each call returns once every process still connected has asked, or has left
        while others & set(self._client.get_live_nodes(list(range(self._num)))):
          time.sleep(0.05)
      except Exception:  # pylint: disable=broad-except
        pass
      gone.set()

    threading.Thread(target=wait, name="wait-for-others", daemon=True).start()
    gone.wait(timeout)

  def _watch(self) -> None:
    everyone = list(range(self._num))
    while not self._stopped.is_set():
      try:
        live = set(self._client.get_live_nodes(everyone))  # a dict {process: incarnation} in 0.10, else a list
      except Exception:  # pylint: disable=broad-except
        return  # the client is shutting down, or the service is gone (JAX then aborts this process)
      lost = sorted(set(everyone) - live)
      # While this process waits at the end, a process that passed the barrier and left is no loss.
      if lost and not (self._finishing.is_set() and self._stopped.wait(2 * self._interval + 1)):
        if not self._stopped.is_set():
          self._end(lost)
      self._stopped.wait(self._interval)

  def _end(self, lost: list[int]) -> None:
    try:
      message = lost_message(lost, self._num, self._timeout, self._workdir)
    except Exception:  # pylint: disable=broad-except  # the line must come out whatever the folder holds
      message = lost_message(lost, self._num, self._timeout, None)
    sys.stdout.flush()
    print(message, file=sys.stderr, flush=True)
    os._exit(LOST_STATUS)  # the main thread may be blocked in a collective that never returns

  def await_verdict(self, error: BaseException) -> None:
    """Called by the main thread with the error that ended the run: when it is a JAX runtime
    error (a collective whose peer is gone fails so), gives the watch the heartbeat timeout and
    a margin to end the process in its line; returns if it does not, for the caller to raise
    the error."""
    import jax  # pylint: disable=import-outside-toplevel
    if not isinstance(error, getattr(jax.errors, "JaxRuntimeError", RuntimeError)):
      return
    deadline = time.monotonic() + self._timeout + 5 * self._interval + 5
    while self._thread.is_alive() and time.monotonic() < deadline:
      time.sleep(0.1)


def connect(*, coordinator_address: Optional[str], num_processes: Optional[int], process_id: Optional[int],
            heartbeat_timeout: int = DEFAULT_HEARTBEAT_TIMEOUT, workdir: Optional[str] = None) -> Optional[LossWatch]:
  """``jax.distributed.initialize`` with ``heartbeat_timeout`` (seconds), CPU collectives over
  Gloo, and a started ``LossWatch`` (None for one process, or where this JAX lacks what the watch
  uses: then recoverability stays off and JAX's own abort is the report)."""
  import jax  # pylint: disable=import-outside-toplevel
  jax.config.update("jax_cpu_collectives_implementation", "gloo")  # CPU processes; GPUs / TPUs unaffected
  watched = _watch_supported()
  if watched:
    jax.config.update("jax_enable_recoverability", True)
  jax.distributed.initialize(coordinator_address=coordinator_address, num_processes=num_processes,
                             process_id=process_id, heartbeat_timeout_seconds=heartbeat_timeout)
  if not watched or jax.process_count() == 1:
    return None
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  return LossWatch(distributed.global_state.client, jax.process_index(), jax.process_count(), heartbeat_timeout,
                   workdir).start()


def _watch_supported() -> bool:
  """Whether this JAX has the recoverability option and the client calls the watch makes."""
  import jax  # pylint: disable=import-outside-toplevel
  try:
    from jax._src import distributed  # pylint: disable=import-outside-toplevel
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel
    return ("jax_enable_recoverability" in jax.config.values and hasattr(distributed, "global_state")
            and all(hasattr(_jax.DistributedRuntimeClient, name) for name in ("get_live_nodes", "wait_at_barrier")))
  except (ImportError, AttributeError, TypeError):
    return False
