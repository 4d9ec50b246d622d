"""A full disk during training: one clear message instead of a traceback.

A write into the workdir (a checkpoint, metrics.jsonl, TensorBoard events)
that fails with ENOSPC stops the run. Orbax only renames a checkpoint into
place once all of it is written, so the ones before stay complete, and the
same command resumes from the newest once there is space again.
"""

from __future__ import annotations

import errno
import pathlib
import re
import shutil


class DiskFullError(RuntimeError):
  """A write into the workdir failed for lack of space; the run stopped."""


# TensorStore (Orbax's array writer) reports ENOSPC as a ValueError:
# 'RESOURCE_EXHAUSTED: Error writing local file "PATH": ... No space left on
# device [os_error_code='28']'.
_TENSORSTORE_NO_SPACE = re.compile(r"os_error_code='28'|No space left on device")
_TENSORSTORE_PATH = re.compile(r'writing local file "([^"]+)"')


def no_space_error(error: BaseException) -> OSError | None:
  """The ENOSPC behind `error` (itself or in its chain) as an OSError, or
  None."""
  seen = set()
  while error is not None and id(error) not in seen:
    seen.add(id(error))
    if isinstance(error, OSError) and error.errno == errno.ENOSPC:
      return error
    if not isinstance(error, OSError) and _TENSORSTORE_NO_SPACE.search(str(error)):
      path = _TENSORSTORE_PATH.search(str(error))
      return OSError(errno.ENOSPC, "No space left on device", path and path.group(1))
    error = error.__cause__ or error.__context__
  return None


def _size(num_bytes: int) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if num_bytes < 1024 or unit == "GiB":
      return f"{num_bytes:.0f} {unit}" if unit == "B" else f"{num_bytes:.1f} {unit}"
    num_bytes /= 1024
  raise AssertionError("unreachable")


def free_space(path: pathlib.Path) -> str:
  """'F free of T' on the filesystem holding `path` (or its nearest parent)."""
  while not path.exists() and path != path.parent:
    path = path.parent
  usage = shutil.disk_usage(path)
  return f"{_size(usage.free)} free of {_size(usage.total)}"


def stopped(error: OSError, workdir: pathlib.Path, latest_step: int | None) -> DiskFullError:
  """The error that stops the run, naming what was being written, the free
  space and how to go on."""
  path = pathlib.Path(error.filename) if error.filename else workdir
  kept = (f"the checkpoints up to step {latest_step} are intact"
          if latest_step is not None else "no checkpoint was complete yet")
  return DiskFullError(
      f"no space left on the device writing {path} ({free_space(path)}). The "
      f"run stopped; {kept}. Free some space (or move {workdir} to a larger "
      "disk) and re-run the same command to resume.")
