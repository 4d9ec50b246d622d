"""Training end to end on the tiny config: outputs, device-count invariance,
exact resume, two processes, SIGTERM, and the non-finite-loss guard.

Runs go through scripts/train.py in subprocesses (as users run it), so that
the device count and the multi-process setup can differ between runs.
"""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

from tests.conftest import REPO

TRAIN = str(REPO / "scripts" / "train.py")
TINY = str(REPO / "configs" / "tiny.py")


def _env(num_devices: int = 1) -> dict:
  env = dict(os.environ)
  env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={num_devices}"
  env["JAX_PLATFORMS"] = "cpu"
  return env


def _train_cmd(workdir, *overrides) -> list[str]:
  return [sys.executable, TRAIN, f"--config={TINY}", f"--workdir={workdir}", *overrides]


def _train(workdir, *overrides, num_devices: int = 1, expect: int = 0):
  result = subprocess.run(_train_cmd(workdir, *overrides), cwd=REPO, env=_env(num_devices),
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == expect, result.stderr[-3000:]
  return result


def _train_lines(workdir) -> list[dict]:
  lines = (workdir / "metrics.jsonl").read_text().splitlines()
  return [json.loads(line) for line in lines if "loss" in json.loads(line)]


def _losses(workdir) -> np.ndarray:
  return np.array([r["loss"] for r in _train_lines(workdir)])


def _checkpoint_steps(workdir) -> list[int]:
  return sorted(int(p.name) for p in (workdir / "checkpoints").iterdir() if p.name.isdigit())


@pytest.fixture(scope="module")
def one_device_run(tmp_path_factory):
  """3 steps on 1 device: the reference the other runs are compared with."""
  workdir = tmp_path_factory.mktemp("train") / "one_device"
  _train(workdir, "--config.num_steps=3")
  return workdir


def test_end_to_end_outputs(one_device_run, tmp_path):
  """A tiny run writes metrics.jsonl (one JSON object per line with step and
  loss), checkpoints, the report and plots; load_model and evaluate.py read
  the workdir."""
  workdir = one_device_run
  lines = _train_lines(workdir)
  assert [r["step"] for r in lines] == [1, 2, 3]
  for r in lines:
    assert {"loss", "l1", "gradient", "ssim", "perceptual"} <= set(r)
    total = 0.1 * r["l1"] + r["gradient"] + r["ssim"] + 0.5 * r["perceptual"]
    assert r["loss"] == pytest.approx(total, rel=1e-5)  # the paper's weights
  evals = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if "eval/d1" in l]
  assert evals and evals[-1]["step"] == 3
  assert _checkpoint_steps(workdir) == [2, 3]  # keep_checkpoints = 2
  for name in ("model.json", "config.json", "report.json", "training_curves.png",
               "samples.png"):
    assert (workdir / name).is_file(), name
  assert list((workdir / "tensorboard").glob("events.out.tfevents.*"))

  import percdepth_jax
  from percdepth_jax.model_io import load_model_with_step
  model, step = load_model_with_step(workdir)
  assert step == 3 and model.config.encoder == "densenet_tiny"
  depth = percdepth_jax.predict_depth(model, np.zeros((1, 64, 64, 3), np.uint8))
  assert depth.shape == (1, 64, 64)

  out = tmp_path / "eval.json"
  result = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "evaluate.py"), "--checkpoint",
       f"{workdir}:best", "--data", "synthetic:3:9", "--height", "64", "--width", "64",
       "--protocol", "eigen", "--output", str(out)],
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads(out.read_text())
  assert report["protocol"] == "eigen" and report["flip"] is True
  assert report["step"] == 3 and report["num_images"] == 3
  assert 0.0 <= report["metrics"]["d1"] <= 1.0
  assert out.with_suffix(".png").is_file()


@pytest.mark.parametrize("num_devices", [2, 4])
def test_losses_do_not_depend_on_device_count(one_device_run, tmp_path, num_devices):
  """The same config on 2 and 4 (fake CPU) devices gives the 1-device losses
  (relative 1e-4): batch sharding and BatchNorm over the global batch."""
  workdir = tmp_path / f"devices{num_devices}"
  _train(workdir, "--config.num_steps=3", num_devices=num_devices)
  np.testing.assert_allclose(_losses(workdir), _losses(one_device_run), rtol=1e-4)


def test_resume_equals_uninterrupted(one_device_run, tmp_path):
  """3 steps = 2 steps, then the same command with num_steps=3 resuming:
  identical losses (model, optimizer and data iterator restored)."""
  workdir = tmp_path / "resumed"
  _train(workdir, "--config.num_steps=2")
  result = _train(workdir, "--config.num_steps=3")
  assert "resuming" in result.stdout
  np.testing.assert_allclose(_losses(workdir), _losses(one_device_run), rtol=1e-6)


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_processes_match_one(one_device_run, tmp_path):
  """Two CPU processes on loopback (jax.distributed, one device each) train
  on per-process data shards and get the single-process losses."""
  workdir = tmp_path / "two_processes"
  port = _free_port()
  procs = [subprocess.Popen(
      _train_cmd(workdir, "--config.num_steps=3", "--config.distributed.enabled=True",
                 f"--config.distributed.coordinator_address=localhost:{port}",
                 "--config.distributed.num_processes=2",
                 f"--config.distributed.process_id={i}"),
      cwd=REPO, env=_env(1), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for i in range(2)]
  outputs = [p.communicate(timeout=600) for p in procs]
  for p, (_, err) in zip(procs, outputs):
    assert p.returncode == 0, err[-3000:]
  np.testing.assert_allclose(_losses(workdir), _losses(one_device_run), rtol=1e-4)


def test_sigterm_saves_and_resumes(tmp_path):
  """SIGTERM mid-run: the step in progress finishes, a checkpoint is saved,
  the exit is clean (0), and re-running continues from there."""
  workdir = tmp_path / "sigterm"
  proc = subprocess.Popen(
      _train_cmd(workdir, "--config.num_steps=100000", "--config.checkpoint_every=100000",
                 "--config.keep_checkpoints=1"),
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 400
  metrics = workdir / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and len(_train_lines(workdir)) >= 2):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 0, err[-3000:]
  assert "SIGTERM: saved step" in out
  steps = _checkpoint_steps(workdir)
  assert len(steps) == 1 and steps[0] >= 2
  result = _train(workdir, f"--config.num_steps={steps[0] + 1}")
  assert f"resuming {workdir} from step {steps[0]}" in result.stdout


def test_non_finite_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  """A NaN learning rate makes the first update non-finite: the run stops
  with exit code 1 and a clear message, saves nothing, and a checkpoint of
  an earlier good run in the same workdir stays loadable."""
  workdir = tmp_path / "nan"
  _train(workdir, "--config.num_steps=1")
  assert _checkpoint_steps(workdir) == [1]
  result = _train(workdir, "--config.num_steps=3", "--config.optimizer.learning_rate=nan",
                  expect=1)
  assert "non-finite at step 2" in result.stderr
  assert _checkpoint_steps(workdir) == [1]
  from percdepth_jax.model_io import load_model_with_step
  model, step = load_model_with_step(workdir)
  assert step == 1
  params = [np.asarray(x) for x in __import__("jax").tree.leaves(
      __import__("flax").nnx.state(model))]
  assert all(np.all(np.isfinite(p)) for p in params)


def test_missing_imagenet_weights_is_a_clear_error(tmp_path):
  """Encoder weights that do not exist: exit 2, the message says how to make them."""
  result = _train(tmp_path / "w", "--config.init.from_scratch=False",
                  "--config.model.encoder=densenet121",
                  f"--config.init.encoder_weights={tmp_path / 'absent'}", expect=2)
  assert "python -m weights_conversion torchvision --arch densenet121" in result.stderr
  assert "from_scratch=True" in result.stderr
