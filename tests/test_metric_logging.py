"""Run logging in process: metrics.jsonl holds one JSON object per write, the
TensorBoard event file holds the same scalars (read back with TensorBoard's
own reader), a resume drops lines after the restored step, a fresh run
starts a new file, and the progress line reports step, terms and ETA."""

import json

import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from percdepth_jax.training.metric_logging import METRICS_FILE, MetricWriter, Progress


def _steps(workdir) -> list[int]:
  return [json.loads(line)["step"] for line in (workdir / METRICS_FILE).read_text().splitlines()]


def test_jsonl_tensorboard_and_resume(tmp_path):
  writer = MetricWriter(tmp_path)
  for step in range(1, 6):
    writer.write(step, {"loss": 1.0 / step, "note": "text"})
  writer.close()
  lines = [json.loads(line) for line in (tmp_path / METRICS_FILE).read_text().splitlines()]
  assert [r["step"] for r in lines] == [1, 2, 3, 4, 5]
  assert lines[1] == {"step": 2, "loss": 0.5, "note": "text"}

  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert events.Tags()["scalars"] == ["loss"]  # strings are not scalars
  assert [(e.step, e.value) for e in events.Scalars("loss")] == [
      (s, pytest.approx(1.0 / s)) for s in range(1, 6)]

  # Resume from the checkpoint of step 3: steps 4 and 5 were never saved.
  writer = MetricWriter(tmp_path, resume_step=3)
  writer.write(4, {"loss": 9.0})
  writer.close()
  assert _steps(tmp_path) == [1, 2, 3, 4]
  # A fresh run in the same workdir starts the file afresh.
  MetricWriter(tmp_path).close()
  assert not (tmp_path / METRICS_FILE).exists()


def test_disabled_writer_writes_nothing(tmp_path):
  writer = MetricWriter(tmp_path, enabled=False)
  writer.write(1, {"loss": 1.0})
  writer.close()
  assert list(tmp_path.iterdir()) == []


def test_progress_line(capsys):
  progress = Progress(total_steps=10, batch_size=4, start_step=0)
  progress.update(5, {"loss": 0.25})
  line = capsys.readouterr().err
  assert line.startswith("step 5/10 (50%) | loss 0.25 | ") and "img/s | ETA " in line
