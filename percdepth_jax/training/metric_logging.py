"""Run logging: metrics.jsonl, TensorBoard event files, a progress line."""

from __future__ import annotations

import contextlib
import json
import pathlib
import sys
import time
import types
from typing import Any

METRICS_FILE = "metrics.jsonl"


class MetricWriter:
  """Appends one JSON object per line to workdir/metrics.jsonl and the same
  scalars to TensorBoard event files in workdir/tensorboard/ (process 0 only).

  On resume, lines from steps after the restored checkpoint (written by the
  interrupted run but not covered by any checkpoint) are dropped, so the file
  describes exactly one history.
  """

  def __init__(self, workdir: str | pathlib.Path, *, enabled: bool = True,
               resume_step: int | None = None):
    self.enabled = enabled
    self.path = pathlib.Path(workdir) / METRICS_FILE
    self._tb = None
    if not enabled:
      return
    if resume_step is not None and self.path.exists():
      kept = [r for r in read_records(self.path) if r.get("step", 0) <= resume_step]
      self.path.write_text("".join(json.dumps(r) + "\n" for r in kept))
    elif resume_step is None and self.path.exists():
      self.path.unlink()
    self._tb_dir = pathlib.Path(workdir) / "tensorboard"
    self._tb = _event_file_writer(self._tb_dir)

  def write(self, step: int, values: dict[str, Any]) -> None:
    if not self.enabled:
      return
    record = {"step": int(step), **{k: _plain(v) for k, v in values.items()}}
    with _naming(self.path), self.path.open("a") as f:
      f.write(json.dumps(record) + "\n")
    from tensorboard.compat.proto import event_pb2, summary_pb2
    scalars = [summary_pb2.Summary.Value(tag=k, simple_value=float(v))
               for k, v in record.items()
               if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)]
    with _naming(self._tb_dir):  # the writer thread's error surfaces here
      self._tb.add_event(event_pb2.Event(wall_time=time.time(), step=int(step),
                                         summary=summary_pb2.Summary(value=scalars)))
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_records(path: pathlib.Path) -> list[dict[str, Any]]:
  """The JSON lines of a metrics file; a line torn by a full disk or a
  killed run (not valid JSON) is left out."""
  records = []
  for line in path.read_text().splitlines():
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return [r for r in records if isinstance(r, dict)]


@contextlib.contextmanager
def _naming(path: pathlib.Path):
  """Adds `path` to an OSError that has no file name (a failed write's
  ENOSPC has none), so that the message says where."""
  try:
    yield
  except OSError as e:
    if e.filename is not None:
      raise
    raise OSError(e.errno, e.strerror, str(path)) from e


def _event_file_writer(logdir: pathlib.Path):
  """TensorBoard's event file writer on its own TensorFlow-free file layer.

  Where TensorFlow is installed, the writer imports it for `tf.io.gfile`
  (two seconds and TensorFlow's start-up log lines in every training run);
  its stub writes the same files to local paths. The marker module
  `tensorboard.compat.notf` is how TensorBoard's no-TensorFlow build selects
  the stub; it is set only if nothing has resolved TensorBoard's `tf` yet.
  """
  sys.modules.setdefault("tensorboard.compat.notf", types.ModuleType("tensorboard.compat.notf"))
  from tensorboard.summary.writer.event_file_writer import EventFileWriter
  return EventFileWriter(str(logdir))


def _plain(value: Any) -> Any:
  try:
    return float(value) if not isinstance(value, (str, bool, int)) else value
  except (TypeError, ValueError):
    return str(value)


class Progress:
  """One-line progress on stderr: step, loss terms, images/s, ETA."""

  def __init__(self, total_steps: int, batch_size: int, start_step: int, *,
               enabled: bool = True):
    self.total = total_steps
    self.batch_size = batch_size
    self.enabled = enabled
    self._t0 = time.perf_counter()
    self._s0 = start_step
    self._tty = sys.stderr.isatty()

  def images_per_second(self, step: int) -> float:
    elapsed = time.perf_counter() - self._t0
    return (step - self._s0) * self.batch_size / max(elapsed, 1e-9)

  def reset_clock(self, step: int) -> None:
    """Start timing from here (after compilation, which would skew images/s)."""
    self._t0, self._s0 = time.perf_counter(), step

  def update(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    ips = self.images_per_second(step)
    left = (self.total - step) * self.batch_size / ips if ips > 0 else float("nan")
    terms = " ".join(f"{k} {v:.4g}" for k, v in metrics.items())
    line = (f"step {step}/{self.total} ({100 * step / self.total:.0f}%) | {terms} | "
            f"{ips:.1f} img/s | ETA {_duration(left)}")
    end = "\r" if self._tty and step < self.total else "\n"
    print(line, end=end, file=sys.stderr, flush=True)


def _duration(seconds: float) -> str:
  if seconds != seconds:  # NaN
    return "?"
  seconds = int(seconds)
  h, rem = divmod(seconds, 3600)
  m, s = divmod(rem, 60)
  return f"{h}h{m:02d}m" if h else f"{m}m{s:02d}s"
