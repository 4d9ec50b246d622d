"""One writer per training workdir.

A run takes an exclusive OS lock (`fcntl.flock`) on DIR/train.lock before it
writes anything and holds it for its whole life. The OS drops the lock when
the process ends, however it ends (kill -9 included), so a dead run never
blocks the next one. The file also records who holds it (host, pid, start
time, command), so that a refused run names the holder; a record left by a
run that ended without clearing it is replaced, with a log line. Several
processes of one run (jax.distributed): process 0 holds the lock for all.

Where the filesystem has no working flock (some network filesystems say
ENOLCK), the record alone decides: a holder that is alive on this host, or
any holder on another host, refuses the run; a dead one on this host is
taken over.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import pathlib
import shlex
import socket
import sys
import time
from typing import Any, Callable

import jax
import numpy as np
from jax.experimental import multihost_utils

from percdepth_jax import storage
from percdepth_jax.errors import UserInputError

_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


def _this_run() -> dict[str, Any]:
  return {"host": socket.gethostname(), "pid": os.getpid(),
          "started": time.strftime("%Y-%m-%d %H:%M:%S %z"),
          "command": shlex.join([sys.executable, *sys.argv])}


def _read_record(fd: int) -> dict[str, Any] | None:
  """The holder's record in the open lock file; None when empty or torn."""
  os.lseek(fd, 0, os.SEEK_SET)
  text = os.read(fd, 1 << 16).decode(errors="replace").strip()
  try:
    record = json.loads(text) if text else None
  except json.JSONDecodeError:
    return None
  return record if isinstance(record, dict) else None


def _write_record(fd: int, record: dict[str, Any] | None) -> None:
  os.ftruncate(fd, 0)
  if record is not None:
    os.pwrite(fd, (json.dumps(record) + "\n").encode(), 0)
  os.fsync(fd)


def _describe(record: dict[str, Any] | None) -> str:
  if not record:
    return "a run that left no record"
  return (f"pid {record.get('pid')} on host {record.get('host')}, started "
          f"{record.get('started')}, command: {record.get('command')}")


def _alive_here(record: dict[str, Any]) -> bool:
  """Whether the record's process runs on this host (a pid on another host
  cannot be checked: counted as alive)."""
  if record.get("host") != socket.gethostname():
    return True
  try:
    os.kill(int(record.get("pid", 0)), 0)
  except ProcessLookupError:
    return False
  except (PermissionError, ValueError, OverflowError):
    return True
  return True


class WorkdirLock:
  """The lock on one workdir, taken by `acquire` and dropped by `release`
  (or by the process ending)."""

  def __init__(self, workdir: pathlib.Path, log: Callable[[str], None] = print):
    self.path = pathlib.Path(workdir) / storage.LOCK_FILE
    self._log = log
    self._fd: int | None = None
    self.claimed = False  # by this run, on every process (see `claim`)

  @property
  def held(self) -> bool:
    return self._fd is not None

  def acquire(self) -> None:
    """Takes the lock (creating the workdir); raises UserInputError naming
    the holder when another run has it."""
    self.path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
      previous = self._lock(fd)
      if previous:
        self._log(f"{self.path}: the run that held it ({_describe(previous)}) "
                  "ended without releasing it; this run takes it over.")
      _write_record(fd, _this_run())
    except BaseException:
      os.close(fd)  # closing drops a lock taken above
      raise
    self._fd = fd

  def _lock(self, fd: int) -> dict[str, Any] | None:
    """Locks the open file; returns a stale record found in it."""
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
      raise self._busy(_read_record(fd)) from None
    except OSError as e:
      if e.errno not in _NO_FLOCK:
        raise
      record = _read_record(fd)  # no OS lock here: the record decides
      if record and _alive_here(record):
        raise self._busy(record, unlocked=True) from None
      return record
    return _read_record(fd)  # we hold the lock: any record is stale

  def _busy(self, record: dict[str, Any] | None, unlocked: bool = False) -> UserInputError:
    workdir = self.path.parent
    fix = (f" This filesystem has no file locks; if that run is over, delete "
           f"{self.path}." if unlocked else "")
    return UserInputError(
        f"{workdir} is being trained by another run ({_describe(record)}; "
        f"lock: {self.path}). A workdir has one writer: two runs would "
        "overwrite each other's checkpoints and metrics. Wait for that run to "
        f"end or stop it, or pass another --workdir.{fix}")

  def release(self) -> None:
    """Clears the record (a clean end leaves none) and drops the lock. The
    file stays: removing it would let a run that opened it just before lock
    a file no later run sees."""
    if self._fd is None:
      return
    fd, self._fd = self._fd, None
    try:
      _write_record(fd, None)
    finally:
      os.close(fd)

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


def claim(lock: WorkdirLock) -> None:
  """`lock.acquire()` on process 0, its outcome shared with every process
  (all call this at the same point), so that all stop when it is refused.
  Does nothing once the lock is claimed."""
  if lock.claimed:
    return
  error = None
  if jax.process_index() == 0:
    try:
      lock.acquire()
    except UserInputError as e:
      error = e
  refused = error is not None
  if jax.process_count() > 1:
    refused = bool(multihost_utils.broadcast_one_to_all(np.array(refused)))
  if error is not None:
    raise error
  if refused:
    raise UserInputError(f"{lock.path.parent} is being trained by another run "
                         "(process 0's message names it).")
  lock.claimed = True
