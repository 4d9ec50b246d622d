"""Training end to end on the tiny config: outputs, device-count invariance,
bfloat16 compute against float32, exact resume, finished re-runs, two
processes, SIGTERM, the non-finite-loss guard, and bad input refused before
anything is written.

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

from tests.helpers import REPO

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
  assert model.train_resolution == (64, 64)  # the tiny config's frames, from config.json
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


def test_heldout_sets_in_the_final_report(tmp_path):
  """config.eval.heldout: the final report gives, per held-out set, the
  metrics that scripts/evaluate.py computes on the final checkpoint for that
  set (eigen and full_frame), the constant baseline beside them, and their
  mean and spread over the sets; the log prints the summary."""
  workdir = tmp_path / "heldout"
  result = _train(workdir, "--config.num_steps=1", "--config.eval.baseline=True",
                  "--config.eval.heldout=synthetic:3:7,synthetic:3:8")
  heldout = json.loads((workdir / "report.json").read_text())["heldout"]
  assert heldout["protocols"] == ["eigen", "full_frame"]
  assert list(heldout["sets"]) == ["synthetic:3:7", "synthetic:3:8"]
  assert "held-out sets: synthetic:3:7, synthetic:3:8" in result.stdout
  assert (workdir / "samples.png").is_file()
  for spec in heldout["sets"]:
    out = tmp_path / f"{spec.replace(':', '_')}.json"
    subprocess.run([sys.executable, str(REPO / "scripts" / "evaluate.py"), "--checkpoint",
                    str(workdir), "--data", spec, "--height", "64", "--width", "64",
                    "--protocol", "all", "--output", str(out)],
                   cwd=REPO, env=_env(), check=True, capture_output=True, timeout=300)
    evaluated = json.loads(out.read_text())["protocols"]
    for protocol in ("eigen", "full_frame"):
      for k in ("d1", "abs_rel", "rmse"):
        assert heldout["sets"][spec]["model"][protocol][k] == pytest.approx(
            evaluated[protocol][k], rel=1e-6), (spec, protocol, k)
    assert set(heldout["sets"][spec]["constant (train mean)"]) == {"eigen", "full_frame"}
  for row in ("model", "constant (train mean)"):
    values = [heldout["sets"][s][row]["full_frame"]["abs_rel"] for s in heldout["sets"]]
    summary = heldout["summary"][row]["full_frame"]["abs_rel"]
    assert summary["mean"] == pytest.approx(np.mean(values))
    assert summary["std"] == pytest.approx(np.std(values))


def test_losses_do_not_depend_on_device_count(one_device_run, tmp_path):
  """The same config on 4 (fake CPU) devices, one image each, gives the
  1-device losses (relative 1e-4): batch sharding, and BatchNorm statistics
  over the global batch rather than each device's single image."""
  workdir = tmp_path / "devices4"
  _train(workdir, "--config.num_steps=3", num_devices=4)
  np.testing.assert_allclose(_losses(workdir), _losses(one_device_run), rtol=1e-4)


def _checkpoint_arrays(workdir, step: int) -> dict:
  """Every array of a saved training checkpoint: parameters, BatchNorm
  statistics, optimizer state and step, as flat {path: array}."""
  import jax
  import orbax.checkpoint as ocp
  with ocp.CheckpointManager(workdir / "checkpoints") as manager:
    restored = manager.restore(step)
  tree = {"model": restored["model"], "train": restored["train"]}
  return {jax.tree_util.keystr(path): np.asarray(leaf)
          for path, leaf in jax.tree_util.tree_leaves_with_path(tree)}


def test_bfloat16_compute_tracks_float32(one_device_run, tmp_path):
  """bfloat16 compute from the same init on the same batches gives the
  float32 run's loss at every step within 1e-2 (measured: up to 8e-4 over 5
  steps), and keeps parameters, BatchNorm statistics and optimizer state in
  float32 (the model's output is float32 whatever the compute dtype, so
  the loss terms are computed in float32: tests/test_parity.py)."""
  workdir = tmp_path / "bfloat16"
  _train(workdir, "--config.num_steps=3", "--config.model.dtype=bfloat16")
  np.testing.assert_allclose(_losses(workdir), _losses(one_device_run), rtol=1e-2)
  assert not np.array_equal(_losses(workdir), _losses(one_device_run))  # it did run in bf16
  arrays = _checkpoint_arrays(workdir, 3)
  floating = {k: a.dtype for k, a in arrays.items() if np.issubdtype(a.dtype, np.floating)}
  assert floating and all(dtype == np.float32 for dtype in floating.values()), floating


def test_resume_equals_uninterrupted(tmp_path):
  """4 steps, stop, the same command resumed to 8 (past an evaluation at
  step 4) == 8 steps uninterrupted: the same loss at every step, bit for bit,
  and identical final parameters, BatchNorm statistics and optimizer state."""
  common = ("--config.eval_every=4", "--config.checkpoint_every=4")
  straight = tmp_path / "straight"
  _train(straight, "--config.num_steps=8", *common)
  resumed = tmp_path / "resumed"
  _train(resumed, "--config.num_steps=4", *common)
  result = _train(resumed, "--config.num_steps=8", *common)
  assert f"resuming {resumed} from step 4" in result.stdout
  assert [r["step"] for r in _train_lines(resumed)] == list(range(1, 9))
  np.testing.assert_array_equal(_losses(resumed), _losses(straight))
  a, b = _checkpoint_arrays(straight, 8), _checkpoint_arrays(resumed, 8)
  assert a.keys() == b.keys() and any("opt_state" in k for k in a)
  assert any("batch_stats" in k for k in a)
  for key in a:
    np.testing.assert_array_equal(a[key], b[key], err_msg=key)


def test_finished_run_says_so(one_device_run):
  """Re-running a finished run writes nothing new, says it is finished and
  exits 0 (no error from the kept best/ checkpoint)."""
  before = (one_device_run / "metrics.jsonl").read_text()
  result = _train(one_device_run, "--config.num_steps=3")
  assert "is finished" in result.stdout and "resuming" not in result.stdout
  assert (one_device_run / "metrics.jsonl").read_text() == before


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


def test_sigterm_saves_exits_75_and_resumes_with_the_due_evaluation(tmp_path):
  """SIGTERM mid-run: the step in progress finishes, a checkpoint is saved and
  the exit code is 75 ("pre-empted: re-run to resume"). With an evaluation
  due at every step, the one due at the stop step did not run; the re-run
  runs it first, then continues."""
  workdir = tmp_path / "sigterm"
  proc = subprocess.Popen(
      _train_cmd(workdir, "--config.num_steps=100000", "--config.checkpoint_every=100000",
                 "--config.keep_checkpoints=1", "--config.eval_every=1"),
      cwd=REPO, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
  deadline = time.time() + 400
  metrics = workdir / "metrics.jsonl"
  while time.time() < deadline and not (metrics.exists() and len(_train_lines(workdir)) >= 2):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGTERM)
  out, err = proc.communicate(timeout=300)
  assert proc.returncode == 75, err[-3000:]
  assert "SIGTERM: saved step" in out
  steps = _checkpoint_steps(workdir)
  assert len(steps) == 1 and steps[0] >= 2
  stop = steps[0]
  evals = lambda: [json.loads(l)["step"] for l in metrics.read_text().splitlines()
                   if "eval/d1" in l]
  assert stop not in evals()
  result = _train(workdir, f"--config.num_steps={stop + 1}")
  assert f"resuming {workdir} from step {stop}" in result.stdout
  assert f"eval @ {stop}:" in result.stdout
  assert evals()[-2:] == [stop, stop + 1]


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
  assert not (tmp_path / "w").exists()  # nothing written on a failed start


def test_pth_weights_path_names_the_convert_command(tmp_path):
  """Training reads converted directories only (the library never imports
  the PyTorch side): a .pth path exits 2 with the convert command, nothing
  written."""
  pth = tmp_path / "resnet50.pth"
  pth.write_bytes(b"not converted")
  result = _train(tmp_path / "w", "--config.perceptual.from_scratch=False",
                  f"--config.perceptual.weights={pth}", expect=2)
  assert f"python -m weights_conversion torchvision --arch resnet50 --input {pth}" in result.stderr
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("overrides,num_devices,message", [
    (["--config.data.eval_batch_size=3"], 2,
     "config.data.eval_batch_size=3 must be a positive multiple of the number of devices (2)"),
    (["--config.data.height=50"], 1,
     "frames are 50x64; the network takes heights and widths that are multiples of 32"),
    (["--config.optimizer.lr=1e-3"], 1,
     "has no field 'optimizer.lr'. Did you mean --config.optimizer.learning_rate?"),
    (["--config.data.train=folder:missing/manifest.csv"], 1, "missing/manifest.csv"),
])
def test_bad_input_exits_2_and_writes_nothing(tmp_path, overrides, num_devices, message):
  """A batch size the devices cannot split, frames that are not multiples of
  32, a mistyped override, missing data: one clear message, exit code 2, and
  no workdir left behind."""
  workdir = tmp_path / "w"
  result = _train(workdir, *overrides, num_devices=num_devices, expect=2)
  assert message in result.stderr
  assert "Traceback" not in result.stderr
  assert not workdir.exists()


def test_crop_and_skip_bad(tmp_path):
  """An RGB-D folder of 70x90 frames with one corrupt image: uncropped, the
  run refuses the size and names the crop to set; without skip_bad it stops
  at the corrupt file, naming it (exit 2); with data.crop=64,64 and
  skip_bad it trains, names the skipped file in the log and counts it in
  report.json."""
  from PIL import Image
  root = tmp_path / "rgbd"
  (root / "rgb").mkdir(parents=True)
  (root / "depth").mkdir()
  rng = np.random.default_rng(0)
  rows = ["rgb,depth"]
  for i in range(5):
    Image.fromarray(rng.integers(0, 255, (70, 90, 3), dtype=np.uint8)).save(root / "rgb" / f"{i}.png")
    Image.fromarray(rng.integers(500, 5000, (70, 90)).astype(np.uint16)).save(root / "depth" / f"{i}.png")
    rows.append(f"rgb/{i}.png,depth/{i}.png")
  (root / "rgb" / "2.png").write_bytes(b"not a png")
  (root / "manifest.csv").write_text("\n".join(rows) + "\n")
  data = (f"--config.data.train=folder:{root / 'manifest.csv'}",
          f"--config.data.eval=folder:{root / 'manifest.csv'}")
  refused = _train(tmp_path / "strict", *data, "--config.data.crop=64,64", expect=2)
  assert "rgb/2.png" in refused.stderr and "Traceback" not in refused.stderr
  uncropped = _train(tmp_path / "uncropped", *data, expect=2)
  assert "--config.data.crop=64,64" in uncropped.stderr
  workdir = tmp_path / "skipping"
  result = _train(workdir, *data, "--config.data.crop=64,64", "--config.data.skip_bad=True")
  assert "rgb/2.png" in result.stderr + result.stdout
  report = json.loads((workdir / "report.json").read_text())
  assert len(report["skipped"]["eval"]) == 1 and "rgb/2.png" in report["skipped"]["eval"][0]
