"""scripts/export.py: StableHLO and ONNX files that reproduce predict_depth on
real frames without the model code, their JSON sidecars, and bad input."""

import json

import jax
import numpy as np
import pytest

import percdepth_jax
from percdepth_jax import export
from percdepth_jax.commands import export as export_script
from tests import helpers
from tests.helpers import relative_max_error

HEIGHT, WIDTH = 64, 96


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
  """The paper variant (full-resolution output)."""
  return helpers.save_toy_model(tmp_path_factory.mktemp("export") / "model")


@pytest.fixture(scope="module")
def frames():
  """The three NYU frames, resized to the export size: uint8 3 x H x W x 3."""
  return helpers.nyu_images(HEIGHT, WIDTH)


@pytest.fixture(scope="module")
def reference(checkpoint, frames):
  """predict_depth on the frames, with and without flip averaging."""
  model = percdepth_jax.load_model(checkpoint)
  depth = {flip: percdepth_jax.predict_depth(model, frames, flip=flip)
           for flip in (True, False)}
  assert np.ptp(depth[True]) > 0.5 and depth[True].max() < 10.0
  return depth


def _export(checkpoint, output, fmt, *extra):
  return export_script.main(["--checkpoint", str(checkpoint), "--format", fmt,
                             "--output", str(output), "--height", str(HEIGHT),
                             "--width", str(WIDTH), *extra])


@pytest.mark.parametrize("flip", [True, False])
def test_stablehlo_matches_predict_depth(checkpoint, frames, reference, tmp_path, flip):
  """The deserialized file (no model code involved) gives predict_depth's
  metres to 1e-5 for batches of 3 and 1 (one file: the batch is symbolic),
  and its sidecar states the contract."""
  output = tmp_path / "depth.stablehlo"
  assert _export(checkpoint, output, "stablehlo", *([] if flip else ["--no-flip"])) == 0
  exported = jax.export.deserialize(output.read_bytes())
  assert exported.platforms == ("cpu", "cuda")
  (aval,) = exported.in_avals
  assert aval.dtype == np.uint8 and aval.shape[1:] == (HEIGHT, WIDTH, 3)
  assert not isinstance(aval.shape[0], int)  # symbolic batch
  expected = reference[flip]
  depth = np.asarray(exported.call(frames))
  assert depth.shape == (3, HEIGHT, WIDTH) and depth.dtype == np.float32
  assert relative_max_error(depth, expected) <= 1e-5
  single = np.asarray(exported.call(frames[1:2]))
  assert relative_max_error(single, expected[1:2]) <= 1e-5

  meta = json.loads((tmp_path / "depth.stablehlo.json").read_text())
  assert meta["format"] == "stablehlo" and meta["file"] == "depth.stablehlo"
  assert meta["flip"] is flip and meta["step"] is None
  assert meta["checkpoint"] == str(checkpoint)
  assert meta["inputs"] == [{"name": "image", "shape": ["N", HEIGHT, WIDTH, 3],
                             "dtype": "uint8", "layout": "NHWC",
                             "description": "RGB pixels 0-255; N is free"}]
  assert meta["outputs"] == [{"name": "depth", "shape": ["N", HEIGHT, WIDTH],
                              "dtype": "float32", "units": "metres",
                              "range": [0.1, 10.0]}]
  assert meta["model_config"]["encoder"] == "densenet_tiny"
  assert meta["exported_with"]["jax"] == jax.__version__


def test_onnx_matches_predict_depth(checkpoint, frames, reference, tmp_path):
  """onnxruntime runs the ONNX file (flip averaging included) to 1e-4 of
  predict_depth for batches of 3 and 1; the batch is a named dynamic dim."""
  import onnx
  output = tmp_path / "depth.onnx"
  assert _export(checkpoint, output, "onnx") == 0
  proto = onnx.load(str(output))
  dims = proto.graph.input[0].type.tensor_type.shape.dim
  assert [d.dim_param or d.dim_value for d in dims] == ["N", HEIGHT, WIDTH, 3]
  session = export.onnx_session(str(output))
  for rows in (slice(0, 3), slice(2, 3)):
    (depth,) = session.run(["depth"], {"image": frames[rows]})
    expected = reference[True][rows]
    assert depth.dtype == np.float32 and depth.shape == expected.shape
    assert relative_max_error(depth, expected) <= 1e-4
  meta = json.loads((tmp_path / "depth.onnx.json").read_text())
  assert meta["format"] == "onnx" and meta["flip"] is True
  assert meta["onnx_check_relative_max_error"] <= 1e-4


def test_half_resolution_output(frames, tmp_path):
  """A DenseDepth-compat model (output at H/2 x W/2) is upsampled in both
  formats as predict_depth upsamples it (no flip: one pass is enough here)."""
  checkpoint = helpers.save_toy_model(tmp_path / "compat", output_stride=2,
                               input_norm="unit", leaky_relu_after_conv_a=False)
  expected = percdepth_jax.predict_depth(percdepth_jax.load_model(checkpoint),
                                         frames, flip=False)
  assert _export(checkpoint, tmp_path / "m.stablehlo", "stablehlo", "--no-flip") == 0
  exported = jax.export.deserialize((tmp_path / "m.stablehlo").read_bytes())
  assert relative_max_error(np.asarray(exported.call(frames)), expected) <= 1e-5
  assert _export(checkpoint, tmp_path / "m.onnx", "onnx", "--no-flip") == 0
  (depth,) = export.onnx_session(str(tmp_path / "m.onnx")).run(
      ["depth"], {"image": frames})
  assert relative_max_error(depth, expected) <= 1e-4


def test_onnx_without_the_extra_names_the_install(checkpoint, tmp_path, capsys,
                                                  monkeypatch):
  """No jax2onnx: exit 2 with the pip command, before loading anything."""
  find_spec = export.importlib.util.find_spec
  monkeypatch.setattr(export.importlib.util, "find_spec",
                      lambda name, *a: None if name == "jax2onnx" else find_spec(name, *a))
  assert _export(checkpoint, tmp_path / "m.onnx", "onnx") == 2
  assert 'pip install -e ".[onnx]"' in capsys.readouterr().err
  assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("argv,message", [
    (["--checkpoint", "{tmp}/no_such_model"], "no_such_model does not exist"),
    (["--checkpoint", "{tmp}"], "model.json is missing"),
    (["--height", "100"], "multiples of 32"),
    (["--width", "0"], "multiples of 32"),
    (["--platforms", "cpu,gpu"], "expected one or more of cpu,cuda,rocm,tpu"),
])
def test_bad_input_exits_2(checkpoint, tmp_path, capsys, argv, message):
  """A missing path, a directory that is not a model, a size that is not a
  multiple of 32, or an unknown platform: exit 2, the problem named, no file."""
  argv = [a.replace("{tmp}", str(tmp_path)) for a in argv]
  args = {"--checkpoint": str(checkpoint), "--format": "stablehlo",
          "--output": str(tmp_path / "m.stablehlo")}
  args.update(zip(argv[::2], argv[1::2]))
  assert export_script.main([x for kv in args.items() for x in kv]) == 2
  assert message in capsys.readouterr().err
  assert not (tmp_path / "m.stablehlo").exists()


def test_unknown_format_is_refused(checkpoint, tmp_path, capsys):
  """--format is checked when the flags are parsed (usage error, exit code 2)."""
  assert _export(checkpoint, tmp_path / "m.tflite", "tflite") == 2
  assert "--format=tflite: value should be one of <stablehlo|onnx>" in capsys.readouterr().err
  assert not (tmp_path / "m.tflite").exists()


def test_stablehlo_runs_the_network_at_the_training_scale(tmp_path):
  """--resolution train (the default) with a model trained at 64x96,
  exported for 128x192 images: the file resizes inside to 64x96 and back,
  giving `depth_metres` run at 64x96 (jax.image.resize) to 1e-5, and
  predict_depth's default (Pillow resizes) to uint8 rounding; the sidecar
  names the network size."""
  from percdepth_jax import inference
  checkpoint = helpers.save_toy_model(tmp_path / "model", train_resolution=(64, 96))
  frames = helpers.nyu_images(128, 192)
  assert export_script.main(["--checkpoint", str(checkpoint), "--format", "stablehlo",
                             "--output", str(tmp_path / "m.stablehlo"),
                             "--height", "128", "--width", "192"]) == 0
  meta = json.loads((tmp_path / "m.stablehlo.json").read_text())
  assert meta["network_size"] == [64, 96] and meta["resolution"] == "train"
  exported = jax.export.deserialize((tmp_path / "m.stablehlo").read_bytes())
  depth = np.asarray(exported.call(frames))
  model = percdepth_jax.load_model(checkpoint)
  in_jit = np.asarray(inference.compiled_depth_metres(model, frames, flip=True, size=(64, 96)))
  assert relative_max_error(depth, in_jit) <= 1e-5
  default = percdepth_jax.predict_depth(model, frames)
  assert np.mean(np.abs(depth - default) / default) < 5e-4
