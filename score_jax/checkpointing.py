"""Orbax checkpoints in ``<workdir>/checkpoints``: save every N steps, keep the last K,
and resume from the latest one automatically; EMA-only exports in ``<workdir>/ema/<step>``, and
exports of named profiles (power-EMA snapshots, post-hoc reconstructions) in
``<workdir>/ema/<profile>/<step>``.

A thin wrapper over ``orbax.checkpoint.CheckpointManager`` so train and sample code
says what it means (``latest_step``, ``restore``, ``save``) and nothing else.  An export
holds only the EMA parameters (a third of a full Adam checkpoint): what sampling and
evaluation need, and what one copies to another machine.

Faults handled here, in one place for train, sample and eval:

* a damaged checkpoint or export (a truncated or deleted array file, a folder without
  Orbax's commit marker ``_CHECKPOINT_METADATA``) is reported in one line, moved aside as
  ``<step>.unreadable`` (never deleted) and the next older one is used
  (``restore_first_readable``);
* one writer per workdir: training holds an exclusive ``fcntl.flock`` on
  ``<workdir>/train.lock`` (``WorkdirLock``), which the kernel drops when the process dies;
* a save that fails for lack of space stops the run with ``DiskFullError`` (free space,
  size needed); Orbax writes into a temporary folder and renames it only when complete,
  so the previous checkpoint is untouched.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import gc
import logging as std_logging
import os
import re
import shutil
import socket
import sys
from typing import Any, Callable, Iterator, NamedTuple, Optional, Sequence

from absl import logging
import jax
import numpy as np
import orbax.checkpoint as ocp

# Orbax writes this file last into a step's temporary folder, then renames the folder to
# its step: a folder without it was not committed (an interrupted write or copy).
COMMIT_MARKER = "_CHECKPOINT_METADATA"
UNREADABLE_SUFFIX = ".unreadable"
LOCK_FILE = "train.lock"


class CheckpointError(RuntimeError):
  """A checkpoint fault the user acts on; the message is one line saying what to do."""


class UnreadableCheckpointError(CheckpointError):
  """No checkpoint that was tried could be read; the message names each and why."""


class CheckpointMismatchError(CheckpointError):
  """A readable checkpoint does not fit the config's model (a different config)."""


class WorkdirLockedError(CheckpointError):
  """Another training run holds the workdir; the message names it (pid, host, start)."""


class DiskFullError(CheckpointError):
  """A save failed for lack of space; the previous checkpoint is intact."""


def checkpoint_dir(workdir: str) -> str:
  """Absolute path of the checkpoint folder of ``workdir``."""
  return os.path.join(os.path.abspath(workdir), "checkpoints")


def export_dir(workdir: str, profile: str = "") -> str:
  """Absolute path of the EMA-export folder of ``workdir``; of a named profile's exports
  (``ema.profile_name``: ``power_0.050``, ``posthoc_0.080``) when ``profile`` is given."""
  root = os.path.join(os.path.abspath(workdir), "ema")
  return os.path.join(root, profile) if profile else root


# --- disk full ----------------------------------------------------------------------------
def _is_disk_full(error: BaseException) -> bool:
  """Whether ``error`` (or what caused it) is ENOSPC / EDQUOT, as an OSError or as the
  TensorStore message Orbax re-raises (``... No space left on device [os_error_code='28']``)."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT):
      return True
    text = str(error)
    if "No space left on device" in text or "Disk quota exceeded" in text:
      return True
    error = error.__cause__ or error.__context__
  return False


def _orbax_disk_full_record(record: std_logging.LogRecord) -> bool:
  """Drops Orbax's own error logs of a disk-full save (a few hundred lines of tracebacks from
  its background threads): ``DiskFullError`` reports that save in one line."""
  if "/orbax/" not in record.pathname or record.levelno < std_logging.ERROR:
    return True
  error = record.exc_info[1] if record.exc_info else None
  return not ((error is not None and _is_disk_full(error)) or "No space left on device" in record.getMessage())


def _size(num_bytes: float) -> str:
  for unit in ("bytes", "KB", "MB", "GB"):
    if num_bytes < 1024 or unit == "GB":
      return f"{num_bytes:.0f} {unit}" if unit == "bytes" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  raise AssertionError("unreachable")


def _tree_bytes(tree: Any) -> int:
  return int(sum(np.prod(x.shape) * np.dtype(x.dtype).itemsize for x in jax.tree.leaves(tree) if hasattr(x, "shape")))


def _disk_full_error(folder: str, what: str, needed: int, kept: str) -> DiskFullError:
  existing = folder
  while not os.path.exists(existing):
    existing = os.path.dirname(existing)
  free = shutil.disk_usage(existing).free
  return DiskFullError(f"Disk full: {what} could not be written to {folder} ({_size(free)} free, about "
                       f"{_size(needed)} needed); {kept}. Free some space and relaunch the same command.")


# --- EMA exports --------------------------------------------------------------------------
def export_params(workdir: str, step: int, params: Any, profile: str = "") -> Optional[str]:
  """Writes ``params`` (the EMA parameters) to ``<workdir>/ema/<step>``, or to
  ``<workdir>/ema/<profile>/<step>`` for a named profile; never overwrites.

  Returns:
    The export's path, or None when that step was already exported (left as it is).

  Raises:
    DiskFullError: no space for the export (the checkpoints are untouched).
  """
  folder = export_dir(workdir, profile)
  path = os.path.join(folder, str(step))
  if os.path.exists(path):
    return None
  os.makedirs(folder, exist_ok=True)
  try:
    with ocp.StandardCheckpointer() as ckptr:
      ckptr.save(path, params)
  except Exception as e:  # pylint: disable=broad-except
    if _is_disk_full(e):
      raise _disk_full_error(folder, f"the EMA export {profile + ' ' if profile else ''}of step {step}", _tree_bytes(params),
                             f"the checkpoints in {checkpoint_dir(workdir)} are intact") from e
    raise
  return path


def exported_steps(workdir: str, profile: str = "") -> list[int]:
  """Steps with a finished EMA export (of ``profile``), ascending (Orbax's temporary folders are skipped)."""
  root = export_dir(workdir, profile)
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root) if n.isdigit())


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps with a full checkpoint in ``workdir``, ascending (empty when there is no folder)."""
  if not os.path.isdir(checkpoint_dir(workdir)):
    return []
  with Checkpointer(workdir, create=False, async_save=False) as ckpt:
    return sorted(ckpt.all_steps())


def committed_steps(workdir: str) -> list[int]:
  """Steps whose checkpoint folder is complete (renamed into place, commit marker inside),
  ascending, read from the folder alone: no Orbax manager, nothing collective (what a process
  may still do when another is lost, and what tests poll)."""
  root = checkpoint_dir(workdir)
  if not os.path.isdir(root):
    return []
  return sorted(int(n) for n in os.listdir(root)
                if n.isdigit() and os.path.exists(os.path.join(root, n, COMMIT_MARKER)))


def saved_steps(workdir: str) -> list[int]:
  """Steps with a full checkpoint or an EMA export in ``workdir``, ascending."""
  return sorted(set(checkpoint_steps(workdir)) | set(exported_steps(workdir)))


def _as_saved(metadata: Any) -> Any:
  """Restore target of a tree as it was saved, on this process's first device."""
  device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
  metadata = getattr(metadata, "item_metadata", metadata)  # a checkpointer's StepMetadata
  metadata = metadata.tree if hasattr(metadata, "tree") else metadata
  return jax.tree.map(lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=device), metadata)


def load_exported_params(workdir: str, step: int, target: Any = None, profile: str = "") -> Any:
  """Restores the EMA export of ``step`` (of ``profile``); ``target`` gives the tree (e.g. from
  eval_shape); None restores it as saved onto this process's first device."""
  path = os.path.join(export_dir(workdir, profile), str(step))
  with ocp.StandardCheckpointer() as ckptr:
    return ckptr.restore(path, _as_saved(ckptr.metadata(path)) if target is None else target)


# --- falling back past damaged checkpoints ------------------------------------------------
class Source(NamedTuple):
  """One thing to try to restore: a checkpoint or export folder of ``step``.

  Attributes:
    step: its training step.
    path: its folder (``<workdir>/checkpoints/<step>`` or ``<workdir>/ema/<step>``).
    restore: reads it into the tree the caller wants.
    restore_as_saved: reads it as it was saved (tells damage from a config mismatch).
  """

  step: int
  path: str
  restore: Callable[[], Any]
  restore_as_saved: Callable[[], Any]


def checkpoint_source(workdir: str, step: int, target: Any, pick: Callable[[Any], Any] = lambda tree: tree) -> Source:
  """The full checkpoint of ``step`` restored as ``target``, then ``pick(tree)``."""

  def read(as_saved: bool) -> Any:
    with Checkpointer(workdir, create=False, async_save=False) as ckpt:
      return ckpt.restore(None if as_saved else target, step=step)

  return Source(step, os.path.join(checkpoint_dir(workdir), str(step)), lambda: pick(read(False)),
                lambda: read(True))


def export_source(workdir: str, step: int, target: Any, profile: str = "") -> Source:
  """The EMA export of ``step`` (of ``profile``) restored as ``target``."""
  return Source(step, os.path.join(export_dir(workdir, profile), str(step)),
                lambda: load_exported_params(workdir, step, target, profile),
                lambda: load_exported_params(workdir, step, profile=profile))


# TensorStore names the array it failed on in 'Error reading "<array>/<chunk>" in OCDBT database …',
# possibly nested in 'Error opening "zarr" driver: …'; the reason is the last ': '-separated part.
_TS_ARRAY_ERROR = re.compile(r'\b([A-Z][A-Z_]+): .*?Error reading "([^"/][^"]*)"')


def short_error(error: BaseException) -> str:
  """A few words of a restore error: the array and TensorStore's status, or one line."""
  while error.__cause__ is not None:
    error = error.__cause__
  full = str(error).strip()
  text = full.split(" [tensorstore_spec")[0]
  match = _TS_ARRAY_ERROR.search(text)
  if match:
    code, name = match.groups()
    return f"array {name.split('/')[0]}: {code}, {text.rsplit(': ', 1)[-1].strip()}"
  lines = [line for line in full.splitlines() if line.strip()]
  if not lines:
    return type(error).__name__
  text = lines[-1] if lines[0].startswith("Traceback") else lines[0]  # a wrapped traceback: its last line
  return text if len(text) <= 200 else text[:197] + "..."


@contextlib.contextmanager
def _quiet_abandoned_io() -> Iterator[Callable[[], None]]:
  """When a read or write fails, the other reads / writes Orbax abandons end as "Exception
  ignored in <coroutine ...>" tracebacks (one per array); they go to the debug log instead.

  Yields ``failed``, which the block calls when it caught a failed read or write: then, or
  when the block raises, the abandoned coroutines are collected before the hook is restored.
  A block that succeeds skips that full ``gc.collect()``, which costs 0.3 s or more in a
  process holding many traced programs.
  """
  previous = sys.unraisablehook
  sys.unraisablehook = lambda info: logging.debug("%s: %s", info.err_msg or "ignored", info.exc_value)
  failures = []
  try:
    yield lambda: failures.append(True)
  except BaseException:
    failures.append(True)
    raise
  finally:
    if failures:
      gc.collect()  # the abandoned reads, while the hook is still quiet
    sys.unraisablehook = previous


def _set_aside(path: str) -> str:
  """Renames ``path`` to ``<path>.unreadable`` (``.unreadable.2``, ... if taken); returns the new path."""
  new, k = path + UNREADABLE_SUFFIX, 1
  while os.path.exists(new):
    k += 1
    new = f"{path}{UNREADABLE_SUFFIX}.{k}"
  os.rename(path, new)
  return new


def restore_first_readable(sources: Sequence[Source], *, workdir: str, writer: bool) -> Optional[tuple[int, Any]]:
  """Restores the first readable of ``sources`` (newest first); damaged ones are moved aside.

  Each source that cannot be read as it was saved — no commit marker, a truncated or missing
  array file, unreadable metadata — is reported in one warning line (step, array, error) and
  renamed to ``<folder>.unreadable``, never deleted.  A read-only caller (``writer=False``:
  sample, eval) renames only while no training run holds the workdir (``WorkdirLock``);
  otherwise it leaves the folder for that run and moves on.  A folder deleted while being
  read (``max_to_keep`` rotation by a running trainer) is skipped silently.

  Args:
    sources: what to try, in order.
    workdir: the run's folder (for the lock and messages).
    writer: the caller holds the workdir's ``WorkdirLock`` (training).

  Returns:
    (step, tree) of the first readable source, or None when every source had vanished.

  Raises:
    UnreadableCheckpointError: none was readable; the message names each one tried.
    CheckpointMismatchError: a source is readable but does not match the wanted tree.
  """
  tried = []
  for i, source in enumerate(sources):
    if not os.path.isdir(source.path):
      continue
    error = None
    if not os.path.exists(os.path.join(source.path, COMMIT_MARKER)):
      reason = f"no commit marker {COMMIT_MARKER} (an interrupted write or copy)"
    else:
      with _quiet_abandoned_io() as failed:
        try:
          return source.step, source.restore()
        except MemoryError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          failed()
          error = e
        if not os.path.isdir(source.path):
          continue  # deleted while read
        try:
          source.restore_as_saved()
          reason = None
        except MemoryError:
          raise
        except Exception as e:  # pylint: disable=broad-except
          reason = short_error(e)
      if reason is None:
        raise CheckpointMismatchError(
            f"{source.path} is readable but does not fit this config's model ({short_error(error)}): use the "
            f"config it was trained with (see {os.path.join(os.path.abspath(workdir), 'config.json')}).") from error
    where = _move_aside(source.path, workdir, writer)
    following = next((s for s in sources[i + 1:] if os.path.isdir(s.path)), None)
    then = f"trying {following.path}" if following else "nothing older to try"
    logging.warning("Step %d: %s is unreadable (%s); %s; %s.", source.step, source.path, reason, where, then)
    tried.append(f"{source.path} ({reason}; {where})")
  if not tried:
    return None
  raise UnreadableCheckpointError(
      f"No readable checkpoint: tried {'; '.join(tried)}. Copy a good checkpoint into "
      f"{checkpoint_dir(workdir)}, or relaunch --mode=train to start again from step 0.")


def _move_aside(path: str, workdir: str, writer: bool) -> str:
  """Sets ``path`` aside when allowed (process 0 only); returns what was done, in words."""
  if jax.process_index() != 0:
    return "set aside by process 0"
  if writer:
    return f"moved to {_set_aside(path)}"
  lock = WorkdirLock(workdir)
  if not lock.try_acquire(record=False):
    return f"left in place ({lock.holder()} holds the workdir)"
  try:
    return f"moved to {_set_aside(path)}"
  finally:
    lock.release()


# --- one writer per workdir ---------------------------------------------------------------
class WorkdirLock:
  """Exclusive lock of a workdir for one training run: ``fcntl.flock`` on ``<workdir>/train.lock``.

  The kernel drops the lock when its process ends, however it ends (``kill -9`` included),
  so nothing stale is left; the file itself stays and says who held it last (pid, host,
  start time).  With several JAX processes only process 0 locks; all processes learn the
  outcome, so a refused job stops everywhere.

  Raises (on entering):
    WorkdirLockedError: another run holds it; the message names the holder.
  """

  def __init__(self, workdir: str):
    self.path = os.path.join(os.path.abspath(workdir), LOCK_FILE)
    self._fd: Optional[int] = None

  def try_acquire(self, *, record: bool = True) -> bool:
    """Takes the lock if it is free and, with ``record``, writes this process into the file
    as its holder (a read-only mode taking it for a moment does not); never blocks."""
    os.makedirs(os.path.dirname(self.path), exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      os.close(fd)
      if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
        return False
      raise
    self._fd = fd
    if not record:
      return True
    start = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC")
    os.ftruncate(fd, 0)
    os.write(fd, f"pid {os.getpid()} on host {socket.gethostname()}, started {start}\n".encode())
    return True

  def holder(self) -> str:
    """Who holds (or last held) the lock, as written in the lock file."""
    try:
      with open(self.path) as f:
        text = f.read().strip()
    except OSError:
      text = ""
    return f"a training run ({text})" if text else "a training run (not yet recorded)"

  def release(self) -> None:
    if self._fd is not None:
      fcntl.flock(self._fd, fcntl.LOCK_UN)
      os.close(self._fd)
      self._fd = None

  def __enter__(self) -> "WorkdirLock":
    locked = self.try_acquire() if jax.process_index() == 0 else True
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=g-import-not-at-top
      locked = bool(multihost_utils.broadcast_one_to_all(np.int32(locked)))
    if not locked:
      holder = self.holder() if jax.process_index() == 0 else "another training run (seen by process 0)"
      raise WorkdirLockedError(
          f"{os.path.dirname(self.path)} is in use by {holder}: one training run per --workdir. Wait for it, "
          f"stop it, or use another --workdir (--mode=sample and --mode=eval may run alongside).")
    return self

  def __exit__(self, *exc) -> None:
    self.release()


# --- the checkpoint manager ---------------------------------------------------------------
class Checkpointer:
  """Saves and restores a pytree train state by step.

  Args:
    workdir: the run's folder; checkpoints go to ``<workdir>/checkpoints/<step>``.
    max_to_keep: number of most recent checkpoints kept on disk.
    create: create the folder if missing, and remove the temporary folders of saves that
      never finished (the writer's mode: training, holding ``WorkdirLock``); False for
      read-only use such as sampling.
    async_save: write in a background thread (call ``wait`` or ``close`` before reading).
  """

  def __init__(self, workdir: str, *, max_to_keep: Optional[int] = None, create: bool = True,
               async_save: bool = True):
    self.workdir = workdir
    self.directory = checkpoint_dir(workdir)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=max_to_keep, create=create, enable_async_checkpointing=async_save,
        cleanup_tmp_directories=create)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_handlers=ocp.StandardCheckpointHandler())
    self._in_flight: Optional[tuple[int, int]] = None  # (step, bytes) of the save not yet known to be on disk
    absl_logger = std_logging.getLogger("absl")
    if _orbax_disk_full_record not in absl_logger.filters:
      absl_logger.addFilter(_orbax_disk_full_record)

  def latest_step(self) -> Optional[int]:
    """The newest saved step, or None when there is no checkpoint."""
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state: Any, *, force: bool = False) -> bool:
    """Saves ``state`` as ``step`` (a no-op if that step is already saved). Returns whether it saved.

    Raises:
      DiskFullError: this save, or the previous asynchronous one, ran out of space.
    """
    self.wait()
    if step in self._manager.all_steps():
      return False
    nbytes = _tree_bytes(state)
    try:
      saved = self._manager.save(step, args=ocp.args.StandardSave(state), force=force)
    except Exception as e:  # pylint: disable=broad-except
      raise self._failed(e, step, nbytes) from e
    if saved:
      self._in_flight = (step, nbytes)
    return saved

  def _failed(self, error: BaseException, step: int, nbytes: int) -> BaseException:
    if not _is_disk_full(error):
      return error
    with _quiet_abandoned_io() as failed:
      failed()
    older = [s for s in self._manager.all_steps() if s < step]
    kept = (f"the checkpoint of step {max(older)} is intact" if older else "no earlier checkpoint exists") + \
        ", and the run stops here"
    return _disk_full_error(self.directory, f"the checkpoint of step {step}", nbytes, kept)

  def poll(self) -> None:
    """Surfaces a finished asynchronous save's failure (e.g. DiskFullError) without waiting.

    Cheap; the training loop calls it every step so that a failed save stops the run at
    once.  With several processes it does nothing (the next ``save`` or ``close`` reports).
    """
    if self._in_flight is not None and jax.process_count() == 1 and not self._manager.is_saving_in_progress():
      self.wait()

  def wait(self) -> None:
    """Blocks until pending asynchronous saves are on disk.

    Raises:
      DiskFullError: the pending save ran out of space.
    """
    in_flight, self._in_flight = self._in_flight, None
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # pylint: disable=broad-except
      if in_flight is None:
        raise
      raise self._failed(e, *in_flight) from e

  def restore(self, target: Any = None, *, step: Optional[int] = None) -> Any:
    """Restores ``step`` (default: the latest), with no fallback (see ``restore_newest_readable``).

    Args:
      target: a pytree of arrays or ``jax.ShapeDtypeStruct`` (e.g. from ``jax.eval_shape``)
        with the saved structure and the shardings wanted (Orbax reshards: a checkpoint
        written on N devices, replicated or FSDP, restores onto any mesh of M); None restores
        the raw tree (dicts) onto this process's first device, whatever topology saved it.
      step: which step; None for the latest.

    Returns:
      The restored pytree.

    Raises:
      FileNotFoundError: no checkpoint in the folder.
    """
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"No checkpoint in {self.directory}.")
    if target is None:
      target = _as_saved(self._manager.item_metadata(step))
    return self._manager.restore(step, args=ocp.args.StandardRestore(target))

  def restore_newest_readable(self, target: Any) -> Optional[tuple[int, Any]]:
    """(step, state) of the newest readable checkpoint, damaged newer ones moved aside
    (``restore_first_readable``); None when there is no checkpoint.  For the writer, which
    holds the workdir's ``WorkdirLock``."""
    sources = [checkpoint_source(self.workdir, step, target) for step in sorted(self.all_steps(), reverse=True)]
    try:
      return restore_first_readable(sources, workdir=self.workdir, writer=True)
    finally:
      self._manager.reload()  # forget the steps moved aside

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  def __enter__(self) -> "Checkpointer":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
