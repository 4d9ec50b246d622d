"""scripts/evaluate.py and evaluation.evaluate_protocols on a toy model at 480x640."""

from __future__ import annotations

import json

import numpy as np
import pytest

import percdepth_jax
from percdepth_jax import evaluation, metrics
from percdepth_jax.commands import evaluate as evaluate_script
from percdepth_jax.data import resolve_spec
from tests import helpers

DATA = "synthetic:3:5"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """A toy DepthNet as a model directory, with varied, in-range depth maps."""
  return helpers.save_toy_model(tmp_path_factory.mktemp("evaluate") / "model")


def test_big_vision_predicts_on_the_crop(checkpoint):
  """Under big_vision the network sees rows 54:480, cols 41:601 of each
  480x640 image: the metrics equal those of predict_depth on the sliced
  images (426x560, resized for the network and back), scored on the gt
  crop; they differ from scoring the full-frame prediction on that crop.
  In the same pass, eigen equals depth_metrics on full-frame predictions."""
  model = percdepth_jax.load_model(checkpoint)
  source = resolve_spec(DATA, split="test", height=480, width=640)
  result, samples = evaluation.evaluate_protocols(
      model, source, ("big_vision", "eigen"), flip=False, batch_size=2, num_samples=1)
  images = np.stack([source[i]["image"] for i in range(len(source))])
  gt = np.stack([source[i]["depth"] for i in range(len(source))])
  pred_crop = percdepth_jax.predict_depth(model, images[:, 54:480, 41:601], flip=False)
  assert pred_crop.shape == (3, 426, 560)
  expected = metrics.depth_metrics(gt[:, 54:480, 41:601], pred_crop, "big_vision",
                                   cropped=True)
  actual = result["protocols"]["big_vision"]
  for k, v in expected.items():
    np.testing.assert_allclose(actual[k], v, rtol=1e-6, err_msg=k)
  pred_full = percdepth_jax.predict_depth(model, images, flip=False)
  assert np.abs(pred_full[:, 54:480, 41:601] - pred_crop).max() > 1e-3
  full_frame = metrics.depth_metrics(gt, pred_full, "big_vision")
  assert not np.isclose(full_frame["abs_rel"], actual["abs_rel"], rtol=1e-6, atol=0)
  eigen = metrics.depth_metrics(gt, pred_full, "eigen")
  for k, v in eigen.items():
    np.testing.assert_allclose(result["protocols"]["eigen"][k], v, rtol=1e-6, err_msg=k)
  assert result["num_images"] == 3 and samples[0]["pred"].shape == (480, 640)


def test_all_protocols_and_edges_in_one_json(checkpoint, tmp_path, capsys):
  """--protocol all --edges writes {"protocols": {name: metrics}} for the
  four protocols (nine metrics each) and "edges" (dbe_acc, dbe_com in
  [0, 10] px), prints one table row per protocol, and each protocol's
  numbers equal a single-protocol run's, which keeps its {"metrics": ...}
  format."""
  out_all = tmp_path / "all.json"
  code = evaluate_script.main(["--checkpoint", str(checkpoint), "--data", DATA,
                               "--protocol", "all", "--edges", "--no-flip",
                               "--batch-size", "2", "--num-samples", "0",
                               "--output", str(out_all)])
  assert code == 0
  printed = capsys.readouterr().out
  report = json.loads(out_all.read_text())
  assert report["protocol"] == "all" and report["num_images"] == 3
  assert sorted(report["protocols"]) == sorted(metrics.PROTOCOLS)
  for name, values in report["protocols"].items():
    assert sorted(values) == sorted(metrics.METRIC_NAMES), name
    assert any(line.startswith(name + " ") for line in printed.splitlines()), name
  assert 0.0 <= report["edges"]["dbe_acc"] <= 10.0
  assert 0.0 <= report["edges"]["dbe_com"] <= 10.0
  assert report["edges"]["num_images"] + report["edges"]["num_images_skipped"] == 3
  assert "dbe_acc" in printed
  dd, official = report["protocols"]["densedepth"], report["protocols"]["densedepth_official"]
  assert dd["abs_rel"] != official["abs_rel"] and dd["rmse"] == official["rmse"]

  out_one = tmp_path / "eigen.json"
  assert evaluate_script.main(["--checkpoint", str(checkpoint), "--data", DATA,
                               "--protocol", "eigen", "--no-flip", "--batch-size", "2",
                               "--num-samples", "0", "--output", str(out_one)]) == 0
  single = json.loads(out_one.read_text())
  assert single["protocol"] == "eigen" and "edges" not in single
  assert single["metrics"] == report["protocols"]["eigen"]


def test_bad_output_is_exit_code_2(checkpoint, tmp_path, capsys):
  """An --output that is not .json is a user error: exit code 2, message
  naming the flag, no traceback."""
  code = evaluate_script.main(["--checkpoint", str(checkpoint), "--data", DATA,
                               "--output", str(tmp_path / "out.txt")])
  assert code == 2
  assert "--output" in capsys.readouterr().err
