"""`python -m weights_conversion densedepth-keras`: parity with Keras itself on
real frames, the converted model through predict/evaluate/export, and
refusals of bad files with exit code 2 and nothing written.

The Keras models (DenseDepth's architecture in tf_keras, random weights) are
built, saved as .h5 and run in a subprocess, so TensorFlow never shares this
process with JAX.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys

import cv2
import h5py
import jax
import numpy as np
import pytest
from flax import nnx
from PIL import Image

import percdepth_jax
from percdepth_jax import metrics
from percdepth_jax.models import ModelConfig
from percdepth_jax.models.densenet import DenseNet
from percdepth_jax.models.layers import BatchNorm2d
from percdepth_jax.training import initial_weights
from tests import helpers
from tests.helpers import REAL_RGBD, REPO, relative_max_error
from weights_conversion import __main__ as cli

HEIGHT, WIDTH = 96, 128  # NYU's 480x640 scaled by 1/5: multiples of 32
# variant of weights_conversion.keras_reference -> ModelConfig fields it implies
VARIANTS = {
    "nyu": dict(encoder="densenet169", decoder_width=0.5, leaky_relu_after_conv_a=True),
    "densenet121_full_no_leaky": dict(encoder="densenet121", decoder_width=1.0,
                                      leaky_relu_after_conv_a=False),
}
SMALL = "densenet121_full_no_leaky"  # the cheaper one, for scripts and bad files


@pytest.fixture(scope="module")
def frames():
  """The three NYU frames at HEIGHT x WIDTH: uint8, 3 x H x W x 3."""
  return helpers.nyu_images(HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def keras_models(frames, tmp_path_factory):
  """{variant: (.h5 path, Keras output on the frames, N x H/2 x W/2 x 1)}."""
  root = tmp_path_factory.mktemp("keras")
  np.save(root / "frames.npy", frames)
  variants = [arg for name in VARIANTS for arg in ("--variant", name)]
  result = subprocess.run(
      [sys.executable, "-m", "weights_conversion.keras_reference", "--images",
       str(root / "frames.npy"), "--output", str(root), *variants],
      cwd=REPO, capture_output=True, text=True, timeout=900,
      env={**os.environ, "CUDA_VISIBLE_DEVICES": ""})
  assert result.returncode == 0, result.stderr[-3000:]
  return {name: (root / f"{name}.h5", np.load(root / f"{name}.npy")) for name in VARIANTS}


@pytest.fixture(scope="module")
def converted(keras_models, tmp_path_factory):
  """{variant: model directory written by the CLI}."""
  root = tmp_path_factory.mktemp("converted")
  dirs = {}
  for name, (h5_path, _) in keras_models.items():
    assert cli.main(["densedepth-keras", "--input", str(h5_path),
                     "--output", str(root / name)]) == 0
    dirs[name] = root / name
  return dirs


def _keras_metres(keras_out_Nxhxwx1: np.ndarray) -> np.ndarray:
  """DenseDepth's predict(): depth = 10 / output, clipped to [0.1, 10] m, then
  at the input size by half-pixel bilinear (OpenCV), N x H x W."""
  depth = np.clip(10.0 / keras_out_Nxhxwx1[..., 0], 0.1, 10.0)
  return np.stack([cv2.resize(d, (WIDTH, HEIGHT), interpolation=cv2.INTER_LINEAR)
                   for d in depth])


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_parity_with_keras(variant, keras_models, converted, frames):
  """The converted model's output on real frames equals the Keras model's to a
  relative max error of 1e-4, and the model options were read from the file
  (encoder, decoder width, LeakyReLU after convA, Keras's BatchNorm epsilon;
  the reference sets half the BatchNorm variances far below it, so 1e-5
  instead of 1.001e-5 would fail: measured 2.7e-4 on `nyu`)."""
  _, expected = keras_models[variant]
  model = percdepth_jax.load_model(converted[variant])
  assert model.config == ModelConfig(
      **VARIANTS[variant], input_norm="unit", target="depth_norm", output_stride=2,
      batchnorm_eps=1.001e-5)
  out = np.asarray(nnx.jit(lambda m, x: m(x))(model, frames.astype(np.float32)))
  assert out.shape == expected.shape == (3, HEIGHT // 2, WIDTH // 2, 1)
  assert expected.std() > 0.5  # varied DepthNorm values, not a constant
  assert relative_max_error(out, expected) <= 1e-4


def test_converted_model_runs_through_the_scripts(keras_models, converted, frames,
                                                  tmp_path):
  """predict.py, evaluate.py and export.py (fresh processes) accept the
  converted model: predict's .npy equals Keras's depth (10 / output,
  upsampled) to 1e-4, evaluate's densedepth metrics on an RGB-D folder of
  the real frames equal the metrics of Keras's depth, export writes a
  StableHLO file for the model's config; and a fine-tuning run of
  configs/finetune.py starts from exactly that model (its config and
  weights, Keras's BatchNorm epsilon included)."""
  model_dir = converted[SMALL]
  expected_NxHxW = _keras_metres(keras_models[SMALL][1])
  data = tmp_path / "data"
  (data / "rgb").mkdir(parents=True)
  (data / "depth").mkdir()
  rows, gt = [], []
  for i, frame in enumerate(frames):
    stem = f"frame{i}"
    Image.fromarray(frame).save(data / "rgb" / f"{stem}.png")
    depth_mm = np.asarray(Image.open(
        sorted((REAL_RGBD / "nyu" / "depth").glob("*.png"))[i]))
    depth_mm = cv2.resize(depth_mm, (WIDTH, HEIGHT), interpolation=cv2.INTER_NEAREST)
    cv2.imwrite(str(data / "depth" / f"{stem}.png"), depth_mm)
    gt.append(depth_mm / 1000.0)
    rows.append(f"rgb/{stem}.png,depth/{stem}.png")
  (data / "manifest.csv").write_text("rgb,depth\n" + "\n".join(rows) + "\n")

  def run(script, *args):
    result = subprocess.run([sys.executable, f"scripts/{script}", "--checkpoint",
                             str(model_dir), *args], cwd=REPO, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]

  # At the frames' own size, as Keras ran (the converted model records NYU's
  # 480x640, where the scripts would run it by default).
  run("predict.py", "--input", str(data / "rgb"), "--output", str(tmp_path / "pred"),
      "--no-flip", "--resolution", "native")
  predicted = np.stack([np.load(tmp_path / "pred" / f"frame{i}.npy") for i in range(3)])
  assert predicted.shape == (3, HEIGHT, WIDTH)
  assert relative_max_error(predicted, expected_NxHxW) <= 1e-4

  run("evaluate.py", "--data", f"folder:{data / 'manifest.csv'}", "--protocol",
      "densedepth", "--no-flip", "--resolution", "native", "--num-samples", "0", "--output",
      str(tmp_path / "eval.json"))
  result = json.loads((tmp_path / "eval.json").read_text())["metrics"]
  reference = metrics.depth_metrics(np.stack(gt), expected_NxHxW, "densedepth")
  for name in ("d1", "abs_rel", "rmse"):
    np.testing.assert_allclose(result[name], reference[name], rtol=1e-4, err_msg=name)

  # That the file computes predict_depth is test_export.py's subject; here:
  # it is written for this model.
  stablehlo = tmp_path / "depth.stablehlo"
  run("export.py", "--format", "stablehlo", "--output", str(stablehlo), "--height",
      str(HEIGHT), "--width", str(WIDTH), "--no-flip", "--platforms", "cpu",
      "--resolution", "native")
  (aval,) = jax.export.deserialize(stablehlo.read_bytes()).in_avals
  assert aval.shape[1:] == (HEIGHT, WIDTH, 3)
  meta = json.loads((tmp_path / "depth.stablehlo.json").read_text())
  assert meta["model_config"] == percdepth_jax.load_model(model_dir).config.to_dict()

  # Fine-tuning (docs/training.md "Fine-tune on your own RGB-D data") starts from it:
  # the model a run of configs/finetune.py builds is the converted one, Keras's
  # BatchNorm epsilon included. (That train.py trains such a model from a
  # converted directory is tests/test_journeys.py's fine-tuning journey.)
  spec = importlib.util.spec_from_file_location("finetune", REPO / "configs" / "finetune.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  config.init.model = str(model_dir)
  model_config = initial_weights.run_model_config(config)
  loaded = percdepth_jax.load_model(model_dir)
  assert model_config == loaded.config and model_config.batchnorm_eps == 1.001e-5
  model = initial_weights.build_model(config, model_config)
  found = {m.eps for _, m in nnx.iter_modules(model) if isinstance(m, BatchNorm2d)}
  assert 1.001e-5 in found
  expected = dict(nnx.to_flat_state(nnx.state(loaded)))
  for path, variable in nnx.to_flat_state(nnx.state(model)):
    np.testing.assert_array_equal(variable.get_value(), expected[path].get_value(),
                                  err_msg=str(path))


def test_batchnorm_epsilon_option():
  """A model.json written before `batchnorm_eps` existed keeps torchvision's
  1e-5; the option sets every encoder BatchNorm's epsilon."""
  old_fields = {k: v for k, v in ModelConfig().to_dict().items() if k != "batchnorm_eps"}
  assert ModelConfig.from_dict(old_fields).batchnorm_eps == 1e-5
  for eps in (1e-5, 1.001e-5):
    encoder = nnx.eval_shape(lambda: DenseNet("densenet121", bn_eps=eps, rngs=nnx.Rngs(0)))
    found = {m.eps for _, m in nnx.iter_modules(encoder) if isinstance(m, BatchNorm2d)}
    assert found == {eps}


def _refused(capsys, h5_path, tmp_path, *fragments):
  """Runs the CLI expecting exit 2, every fragment in the message, no output."""
  out = tmp_path / "out"
  code = cli.main(["densedepth-keras", "--input", str(h5_path), "--output", str(out)])
  err = capsys.readouterr().err
  assert code == 2, err
  assert str(h5_path) in err
  for fragment in fragments:
    assert fragment in err, (fragment, err)
  assert not out.exists()
  assert not list(tmp_path.glob(".out.*"))


def _edited_copy(src, dst, edit):
  """A copy of a Keras .h5 file, `edit(h5py.File)` applied."""
  shutil.copyfile(src, dst)
  with h5py.File(dst, "r+") as h5:
    edit(h5)
  return dst


def _edit_layers(edit):
  """An `_edited_copy` edit of the model_config JSON's layer list."""
  def apply(h5):
    config = json.loads(h5.attrs["model_config"])
    edit({layer["name"]: layer for layer in config["config"]["layers"]})
    h5.attrs["model_config"] = json.dumps(config)
  return apply


def test_not_hdf5_and_truncated_files_are_refused(keras_models, tmp_path, capsys):
  """A text file, an .h5 cut short (an interrupted download), a missing path
  and an HDF5 file that is no Keras model are named, with what to do."""
  text = tmp_path / "notes.h5"
  text.write_text("not a model\n")
  _refused(capsys, text, tmp_path, "is not a readable HDF5 file", "model.save",
           "download it again")
  data = keras_models[SMALL][0].read_bytes()
  cut = tmp_path / "cut.h5"
  cut.write_bytes(data[:len(data) // 2])
  _refused(capsys, cut, tmp_path, "is not a readable HDF5 file", "download it again")
  _refused(capsys, tmp_path / "missing.h5", tmp_path, "does not exist")
  other = tmp_path / "other.h5"
  with h5py.File(other, "w") as h5:
    h5["depth"] = np.zeros((4, 4), np.float32)
  _refused(capsys, other, tmp_path, "not a saved Keras model")


def test_missing_and_misshaped_weights_are_listed(keras_models, tmp_path, capsys):
  """A layer without its weights and a bias of the wrong length are listed by
  Keras name and shape."""
  def edit(h5):
    group = h5["model_weights/conv4_block5_2_conv"]
    for name in group.attrs["weight_names"]:
      del group[name]
    group.attrs["weight_names"] = np.array([], dtype="S1")
    group = h5["model_weights/up1_convB"]
    del group["up1_convB/bias:0"]
    group["up1_convB/bias:0"] = np.zeros(7, np.float32)
  path = _edited_copy(keras_models[SMALL][0], tmp_path / "edited.h5", edit)
  _refused(capsys, path, tmp_path, "missing weights (1)", "conv4_block5_2_conv/kernel",
           "weights with the wrong shape (1)",
           "up1_convB/bias: (7,) in the file, model expects (512,)")


def test_other_architectures_are_refused(keras_models, tmp_path, capsys):
  """Layers DenseDepth's model does not have are listed by name and class; a
  DenseNet without the final ReLU, a LeakyReLU of another slope and nearest
  upsampling are named as differences."""
  def classifier(layers):
    layers["conv3"]["class_name"] = "Dense"
    layers["up2_upsampling2d"]["class_name"] = "UpSampling2D"
  path = _edited_copy(keras_models[SMALL][0], tmp_path / "other.h5",
                      _edit_layers(classifier))
  _refused(capsys, path, tmp_path, "layers the converter does not know (2)",
           "up2_upsampling2d (UpSampling2D)", "conv3 (Dense)", "`densedepth` subcommand")

  def variant(layers):
    layers["conv2"]["inbound_nodes"][0][0][0] = "bn"
    after_up3 = layers["up4_upsampling2d"]["inbound_nodes"][0][0][0]  # a LeakyReLU
    layers[after_up3]["config"]["alpha"] = 0.3
  path = _edited_copy(keras_models[SMALL][0], tmp_path / "variant.h5",
                      _edit_layers(variant))
  _refused(capsys, path, tmp_path, "differences (2)", "conv2 reads `bn` directly",
           "LeakyReLU alpha 0.3")


def test_weights_only_file_is_refused(keras_models, tmp_path, capsys):
  """A `save_weights` file has no architecture to read the options from: the
  message says how to save the whole model."""
  def drop_architecture(h5):
    del h5.attrs["model_config"]
    h5.attrs["layer_names"] = h5["model_weights"].attrs["layer_names"]
  path = _edited_copy(keras_models[SMALL][0], tmp_path / "weights.h5", drop_architecture)
  _refused(capsys, path, tmp_path, "holds weights only", "model.save('model.h5')")
