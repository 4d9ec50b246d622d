"""The README's paths, walked end to end as a user walks them.

Each journey runs the README's own commands as subprocesses in a fresh
working directory (scripts/, configs/ and docs/ as in the repository), with
only sizes, step counts and paths swapped for small stand-ins made here:
random-init torchvision weights saved with torch.save, a Keras model of
DenseDepth's architecture saved as nyu.h5, DenseDepth's nyu_data.zip layout
and RGB-D folders built from the real NYU frames. Every command is first
looked up in README.md (or in the docs/ page the README links for it), so
the pages and these tests cannot drift apart; every Python block of the
README, docs/usage.md and docs/weights.md is run as well. `percdepth` runs
as `python -m percdepth_jax` (tests/test_wheel.py runs the installed one).
"""

from __future__ import annotations

import json
import re
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from tests import helpers
from tests.helpers import REPO

README = (REPO / "README.md").read_text()
# Pages whose commands and Python blocks are run here besides the README's.
DOCS = ("docs/usage.md", "docs/weights.md")


def _normalise(text: str) -> str:
  """Joins backslash-continued lines and collapses white space."""
  return " ".join(text.replace("\\\n", " ").split())


def readme_command(command: str, page: str = "README.md") -> str:
  """`command`, after checking that the page (README.md, or a docs/ page
  it links) shows it verbatim."""
  text = README if page == "README.md" else (REPO / page).read_text()
  assert _normalise(command) in _normalise(text), f"{page} does not show: {command}"
  return command


def _python_blocks(page: str = "README.md") -> list[str]:
  return re.findall(r"```python\n(.*?)```", (REPO / page).read_text(), flags=re.S)


@pytest.fixture(scope="module")
def project(tmp_path_factory):
  """A user's working directory: the repository's scripts, configs and docs."""
  root = tmp_path_factory.mktemp("project")
  helpers.link_repo_dirs(root)
  (root / "docs").symlink_to(REPO / "docs")
  return root


@pytest.fixture(scope="module")
def imagenet_weights(project):
  """README "Convert PyTorch or Keras weights": torchvision state dicts
  (random init here), converted with the README's commands into weights/."""
  for seed, arch in enumerate(("densenet121", "resnet50")):
    helpers.save_torchvision(arch, project / f"{arch}.pth", seed=seed)
    helpers.run(readme_command(
        f"percdepth convert torchvision --arch {arch} --input {arch}.pth "
        f"--output weights/{arch}"), project)
  return project / "weights"


@pytest.fixture(scope="module")
def nyu_zip(project):
  data = project / "data"
  data.mkdir()
  return helpers.make_nyu_zip(data / "nyu_data.zip", 64, 96)


def test_paper_recipe(project, imagenet_weights, nyu_zip):
  """README "Train on NYU Depth v2 on a GPU" -> docs/usage.md's evaluate,
  predict, export: converted ImageNet weights, the packaged nyu_paper config
  on DenseDepth's zip (the perceptual network read from the converted full
  ResNet-50), the same command again on the finished run, evaluate,
  predict, export."""
  train = readme_command(
      "percdepth train --config nyu_paper --workdir workdirs/nyu_paper "
      "--config.data.train=nyu_zip:PATH/nyu_data.zip --config.data.eval=nyu_zip:PATH/nyu_data.zip"
  ).replace("PATH", "data")
  small = (" --config.num_steps=2 --config.batch_size=2 --config.model.decoder_width=0.25"
           " --config.data.eval_batch_size=3 --config.log_every=1")
  result = helpers.run(train + small, project)
  assert "encoder initialised from weights/densenet121" in result.stdout
  workdir = project / "workdirs" / "nyu_paper"
  report = json.loads((workdir / "report.json").read_text())
  assert report["step"] == 2 and 0.0 <= report["model"]["d1"] <= 1.0
  losses = [json.loads(l) for l in (workdir / "metrics.jsonl").read_text().splitlines()]
  assert all(r["perceptual"] > 0 for r in losses if "loss" in r)

  again = helpers.run(train + small, project)
  assert "is finished" in again.stdout and "resuming" not in again.stdout

  helpers.run(readme_command(
      "python scripts/evaluate.py --checkpoint workdirs/nyu_paper:best --data "
      "tfds:nyu_depth_v2:validation --protocol densedepth --output results/nyu_densedepth.json",
      "docs/usage.md").replace("tfds:nyu_depth_v2:validation", "nyu_zip:data/nyu_data.zip"), project)
  evaluated = json.loads((project / "results" / "nyu_densedepth.json").read_text())
  assert evaluated["num_images"] == 3 and evaluated["step"] == 2

  helpers.run(readme_command(
      "python scripts/predict.py --checkpoint workdirs/synthetic:best --input "
      "docs/images/predict/nyu_rgb.jpg --output predictions --ply", "docs/usage.md"
  ).replace("workdirs/synthetic", "workdirs/nyu_paper"), project)
  depth = np.load(project / "predictions" / "nyu_rgb.npy")
  assert depth.ndim == 2 and np.all((depth >= 0.1) & (depth <= 10.0))

  helpers.run(readme_command(
      "python scripts/export.py --checkpoint workdirs/synthetic:best --format stablehlo "
      "--output depth_480x640.stablehlo", "docs/usage.md"
  ).replace("workdirs/synthetic", "workdirs/nyu_paper") + " --height 64 --width 96", project)
  contract = json.loads((project / "depth_480x640.stablehlo.json").read_text())
  assert contract["step"] == 2


def test_paper_recipe_refuses_mismatched_weights(project, imagenet_weights, nyu_zip):
  """The ResNet-50 directory given as the DenseNet encoder: exit 2 naming both
  architectures and the convert command, and no workdir is created."""
  result = helpers.run(
      "python scripts/train.py --config configs/nyu_paper.py --workdir workdirs/wrong "
      "--config.init.encoder_weights=weights/resnet50 "
      "--config.data.train=nyu_zip:data/nyu_data.zip --config.data.eval=nyu_zip:data/nyu_data.zip",
      project, expect=2)
  assert "holds resnet50 (up to layer4), not densenet121" in result.stderr
  assert "python -m weights_conversion torchvision --arch densenet121" in result.stderr
  assert not (project / "workdirs" / "wrong").exists()


def _save_reference_model(path, *, seed: int, encoder: str, **options) -> None:
  """A random-init depth model of the PyTorch reference (DenseDepth's layout,
  unit input normalisation, decoder width 0.25) saved as its state dict."""
  import torch
  from weights_conversion import torch_reference
  torch.manual_seed(seed)
  torch.save(torch_reference.DepthModel(encoder, decoder_width=0.25, input_norm="unit",
                                        **options).state_dict(), path)


@pytest.fixture(scope="module")
def my_depth_model(project):
  """docs/weights.md "Use PyTorch weights": a DenseDepth-layout PyTorch depth
  model converted with its command (decoder width 0.25 to keep it small)."""
  _save_reference_model(project / "model.pth", seed=3, encoder="densenet121")
  helpers.run(readme_command(
      "python -m weights_conversion densedepth --input model.pth --output weights/my_depth_model",
      "docs/weights.md") + " --decoder-width 0.25", project)
  return project / "weights" / "my_depth_model"


def test_bring_a_pytorch_model(project, imagenet_weights, my_depth_model):
  """docs/weights.md "Use PyTorch weights" -> README "Fine-tune on your own
  RGB-D frames":
  DenseDepth-layout checkpoints converted (paper variant; DenseNet-169 with
  --densedepth-compat), both evaluated, the paper one fine-tuned with the
  README's command on an RGB-D folder (frames cropped to multiples of 32
  with data.crop) from its converted directory, and the result used for
  prediction; an override that changes the loaded architecture is refused."""
  _save_reference_model(project / "nyu169.pth", seed=4, encoder="densenet169",
                        densedepth_compat=True)
  helpers.run("python -m weights_conversion densedepth --input nyu169.pth --output "
              "weights/dd169 --encoder densenet169 --decoder-width 0.25 --densedepth-compat",
              project)
  helpers.make_rgbd_folder(project / "my_rgbd" / "train", 72, 100)
  helpers.make_rgbd_folder(project / "my_rgbd" / "val", 64, 96, dataset="redwood")

  for model in ("weights/my_depth_model", "weights/dd169"):
    name = model.split("/")[-1]
    helpers.run(f"python scripts/evaluate.py --checkpoint {model} --data "
                f"folder:my_rgbd/val/manifest.csv --protocol eigen --output results/{name}.json",
                project)
    result = json.loads((project / "results" / f"{name}.json").read_text())
    assert result["num_images"] == 5 and 0.0 <= result["metrics"]["d1"] <= 1.0

  finetune = readme_command(
      "percdepth train --config finetune --workdir workdirs/finetune "
      "--config.init.model=weights/my_depth_model "
      "--config.data.train=folder:my_rgbd/train/manifest.csv "
      "--config.data.eval=folder:my_rgbd/val/manifest.csv")
  small = (" --config.num_steps=2 --config.batch_size=2 --config.data.eval_batch_size=5"
           " --config.data.crop=64,96")
  result = helpers.run(finetune + small, project)
  assert "model initialised from weights/my_depth_model" in result.stdout
  workdir = project / "workdirs" / "finetune"
  model_config = json.loads((workdir / "model.json").read_text())["config"]
  assert model_config["decoder_width"] == 0.25 and model_config["input_norm"] == "unit"
  # A fresh run: its own step count from 0 and a new optimizer.
  assert "resuming" not in result.stdout
  assert json.loads((workdir / "report.json").read_text())["step"] == 2

  helpers.run("python scripts/predict.py --checkpoint workdirs/finetune:best --input "
              "my_rgbd/val/rgb --output predictions_finetune", project)
  assert len(list((project / "predictions_finetune").glob("*.npy"))) == 5

  refused = helpers.run(finetune.replace("workdirs/finetune", "workdirs/finetune_wrong")
                        + small + " --config.model.encoder=densenet169", project, expect=2)
  assert "model.encoder='densenet169' (the model has 'densenet121')" in refused.stderr
  assert not (project / "workdirs" / "finetune_wrong").exists()


MAIN_JOB = readme_command(
    "python scripts/train.py --config configs/synthetic.py --workdir workdirs/synthetic")
MAIN_JOB_SMALL = (" --config.num_steps=3 --config.log_every=1 --config.data.height=64"
                  " --config.data.width=64 --config.eval.max_examples=4"
                  " --config.eval.heldout=synthetic:4:424242,synthetic:4:777")


@pytest.fixture(scope="module")
def main_job(project):
  """README "Two commands": the main job, cut short by Ctrl-C after its first
  step (exit 130 after saving), re-run (resumes and finishes), and re-run
  once more (finished: says so, exit 0). Returns the three outputs."""
  argv = [sys.executable] + (MAIN_JOB + MAIN_JOB_SMALL).split()[1:]
  proc = subprocess.Popen(argv, cwd=project, env=helpers.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True)
  metrics = project / "workdirs" / "synthetic" / "metrics.jsonl"
  deadline = time.time() + 900
  while time.time() < deadline and not (metrics.exists() and metrics.read_text().strip()):
    assert proc.poll() is None, proc.stderr.read()[-3000:]
    time.sleep(0.5)
  proc.send_signal(signal.SIGINT)
  out, err = proc.communicate(timeout=600)
  assert proc.returncode == 130, err[-3000:]
  resumed = helpers.run(MAIN_JOB + MAIN_JOB_SMALL, project)
  finished = helpers.run(MAIN_JOB + MAIN_JOB_SMALL, project)
  return out, resumed.stdout, finished.stdout


def test_main_job_cut_short_and_rerun(project, main_job):
  """Ctrl-C saves and says how to resume; the re-run resumes and writes the
  report; a third run finds the run finished."""
  stopped, resumed, finished = main_job
  assert "SIGINT: saved step" in stopped and "re-run the same command" in stopped
  assert "resuming" in resumed
  workdir = project / "workdirs" / "synthetic"
  assert json.loads((workdir / "report.json").read_text())["step"] == 3
  steps = [json.loads(l)["step"] for l in (workdir / "metrics.jsonl").read_text().splitlines()
           if '"loss"' in l]
  assert steps == [1, 2, 3]
  assert "is finished" in finished


@pytest.fixture(scope="module")
def densedepth_nyu(project):
  """README "Depth for your photos": DenseDepth's nyu.h5 (a stand-in: its
  Keras architecture on DenseNet-121, random weights, built by tf_keras in a
  process of its own) converted with the README's command."""
  np.save(project / "frames.npy", helpers.nyu_images(64, 96))
  variant = "densenet121_full_no_leaky"
  helpers.run(f"python -m weights_conversion.keras_reference --images frames.npy "
              f"--output keras --variant {variant}", project)
  shutil.copy(project / "keras" / f"{variant}.h5", project / "nyu.h5")
  helpers.run(readme_command(
      "percdepth convert densedepth-keras --input nyu.h5 --output weights/densedepth_nyu"),
      project)
  return project / "weights" / "densedepth_nyu"


def test_depth_for_your_photos(project, densedepth_nyu, nyu_zip):
  """README "Depth for your photos" and "Evaluate under a published
  protocol": the converted nyu.h5 predicts depth for a photo and is scored
  under densedepth_official on DenseDepth's zip (the network at the frames'
  own small size here; by default it runs at NYU's 480x640)."""
  Image.fromarray(helpers.nyu_images(96, 128)[0]).save(project / "photo.jpg")
  helpers.run(readme_command(
      "percdepth predict --checkpoint weights/densedepth_nyu --input photo.jpg "
      "--output predictions") + " --resolution native", project)
  depth = np.load(project / "predictions" / "photo.npy")
  assert depth.shape == (96, 128) and np.all((depth >= 0.1) & (depth <= 10.0))

  helpers.run(readme_command(
      "percdepth evaluate --checkpoint weights/densedepth_nyu --data "
      "nyu_zip:PATH/nyu_data.zip:test --protocol densedepth_official "
      "--output results/densedepth_nyu.json").replace("PATH", "data") + " --resolution native",
      project)
  result = json.loads((project / "results" / "densedepth_nyu.json").read_text())
  assert result["protocol"] == "densedepth_official" and result["num_images"] == 3


def test_python_blocks(project, main_job, my_depth_model, imagenet_weights, densedepth_nyu):
  """Every ```python block of the README, docs/usage.md and docs/weights.md
  runs against the stand-ins: the files it names exist (made by the pages'
  own commands where they have them), its placeholder arrays are small
  images, and the depth it computes is finite metres."""
  shutil.copy(REPO / "docs" / "images" / "predict" / "nyu_rgb.jpg", project / "photo.jpg")
  # The export snippets' files, written by the pages' export commands from a
  # toy model (the ONNX conversion of DenseNet-121 alone takes minutes).
  helpers.save_toy_model(project / "toy_model")
  exports = [readme_command("percdepth export --checkpoint weights/densedepth_nyu --format "
                            "stablehlo --output depth_480x640.stablehlo")
             .replace("weights/densedepth_nyu", "toy_model"),
             readme_command("python scripts/export.py --checkpoint workdirs/synthetic:best "
                            "--format onnx --output depth_480x640.onnx", "docs/usage.md")
             .replace("workdirs/synthetic:best", "toy_model")]
  for command in exports:
    helpers.run(command + " --height 64 --width 64", project)
  prelude = (
      "import numpy as np\n"
      "from PIL import Image\n"
      "images_uint8_NxHxWx3 = np.asarray(Image.open('photo.jpg').convert('RGB')"
      ".resize((96, 64)))[None]\n"
      "images_uint8_Nx480x640x3 = np.asarray(Image.open('photo.jpg').convert('RGB')"
      ".resize((64, 64)))[None]\n")
  epilogue = (
      "\nassert np.all(np.isfinite(np.asarray(depth_m))) and np.asarray(depth_m).min() >= 0.1\n"
      "print('ok', np.asarray(depth_m).shape)\n")
  blocks = [b for page in ("README.md", *DOCS) for b in _python_blocks(page)]
  assert len(_python_blocks()) >= 2 and len(blocks) >= 5
  for block in blocks:
    script = project / "readme_block.py"
    script.write_text(prelude + block + epilogue)
    result = helpers.run(f"python {script.name}", project)
    assert "ok" in result.stdout, block


def test_demo_serves_the_converted_model(project, densedepth_nyu):
  """README "Depth for your photos": the demo starts with its command on the
  converted nyu.h5 and serves a page that names where the model came from
  (tests/test_demo.py drives the page in a browser)."""
  import socket
  import urllib.request
  command = readme_command("percdepth demo --checkpoint weights/densedepth_nyu")
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
  argv = [sys.executable, "-m", "percdepth_jax"] + command.split()[1:] + ["--port", str(port)]
  proc = subprocess.Popen(argv, cwd=project, env=helpers.env(), stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, text=True)
  try:
    deadline, page = time.time() + 180, None
    while page is None:
      assert proc.poll() is None and time.time() < deadline, proc.stdout.read()[-3000:]
      try:
        page = urllib.request.urlopen(f"http://127.0.0.1:{port}", timeout=5).read().decode()
      except OSError:
        time.sleep(1)
    assert "Converted from" in page and "nyu.h5" in page
  finally:
    proc.terminate()
    proc.wait(timeout=30)
