"""The network runs at the scale the model was trained at: sizes (closed
form), the recorded training resolution of every kind of model directory,
predict_depth's default against its native size on upscaled images, the
resize path against `jax.image.resize`, and one compilation per network
size for a folder of mixed photo sizes."""

import json
import logging

import numpy as np
import pytest
from PIL import Image

import percdepth_jax
from percdepth_jax import inference, storage
from percdepth_jax.commands import predict
from percdepth_jax.errors import UserInputError
from percdepth_jax.models import DepthNet
from tests.helpers import nyu_images, save_toy_model

TRAIN_HW = (64, 96)  # the main job's training size


@pytest.fixture(scope="module")
def model(tmp_path_factory):
  """A toy model recorded as trained at 64x96."""
  path = save_toy_model(tmp_path_factory.mktemp("resolution") / "toy",
                        train_resolution=TRAIN_HW)
  return percdepth_jax.load_model(path)


@pytest.mark.parametrize("height,width,train_hw,expected", [
    (3024, 4032, (480, 640), (480, 640)),   # a 12 MP phone photo, NYU model
    (4032, 3024, (480, 640), (640, 480)),   # the same photo upright (EXIF 6)
    (6000, 8000, (480, 640), (480, 640)),   # 48 MP
    (384, 576, (64, 96), (64, 96)),         # 6x the main job's size
    (4032, 3024, (64, 96), (96, 64)),       # 90.5x67.9, rounded to 32s
    (100, 3000, (480, 640), (96, 3040)),    # a panorama: 101.2x3035.8
])
def test_train_scale_size_closed_form(height, width, train_hw, expected):
  """About the training pixel count, aspect kept, sides multiples of 32:
  scale s = sqrt(h_t w_t / (h w)), each side round(s * side / 32) * 32
  (the expected sizes computed by hand)."""
  assert inference.train_scale_size(height, width, train_hw) == expected


def test_parse_resolution():
  """The flag's three forms; a size must be multiples of 32."""
  assert inference.parse_resolution("train") == "train"
  assert inference.parse_resolution("NATIVE") == "native"
  assert inference.parse_resolution("480x640") == (480, 640)
  for bad in ("480", "480x650", "big", "0x0"):
    with pytest.raises(UserInputError, match="resolution"):
      inference.parse_resolution(bad)


def _upscale(image_HxWx3: np.ndarray, k: int) -> np.ndarray:
  height, width = image_HxWx3.shape[:2]
  return np.asarray(Image.fromarray(image_HxWx3).resize((width * k, height * k), Image.BICUBIC))


def test_default_runs_upscaled_images_at_the_training_scale(model):
  """A real frame at the training size (64x96) and the same frame upscaled
  4x and 6x: with the default, the upscaled images' depth maps, shrunk back
  to 64x96, are the original's to within resampling (a closed-form
  consequence: the network sees nearly the same 64x96 pixels); at the native
  size they are not (the network sees 4x and 6x larger objects). Fails if
  the default goes back to the native size."""
  frame = nyu_images(*TRAIN_HW)[:1]
  reference = percdepth_jax.predict_depth(model, frame)[0]
  for k in (4, 6):
    big = _upscale(frame[0], k)[None]
    default = percdepth_jax.predict_depth(model, big)[0]
    native = percdepth_jax.predict_depth(model, big, resolution="native")[0]
    assert default.shape == native.shape == (64 * k, 96 * k)
    shrink = lambda d: inference.resize_depth(d, TRAIN_HW)
    error_default = np.mean(np.abs(shrink(default) - reference) / reference)
    error_native = np.mean(np.abs(shrink(native) - reference) / reference)
    assert error_default < 0.01, (k, error_default)
    assert error_native > 5 * error_default, (k, error_native, error_default)


def test_resize_path_matches_jax_image_resize(model):
  """predict_depth at the training scale (Pillow resizes the uint8 image and
  the float depth) equals the same computation with `jax.image.resize`
  inside the jit (`depth_metres` with the network size), to the uint8
  rounding of the resized image; (H, W) runs exactly there."""
  images = nyu_images(200, 310)
  size = inference.run_size(model, 200, 310)
  assert size == (64, 96)
  for resolution, net in (("train", size), ((96, 160), (96, 160))):
    ours = percdepth_jax.predict_depth(model, images, resolution=resolution)
    jax_resized = np.asarray(inference.compiled_depth_metres(model, images, flip=True, size=net))
    relative = np.abs(ours - jax_resized) / jax_resized
    assert ours.shape == (3, 200, 310)
    assert relative.max() < 5e-3 and relative.mean() < 5e-4, resolution


def test_resize_depth_is_jax_linear():
  """Pillow's bilinear on float32 depth = `jax.image.resize` "linear", up
  and down, to 1e-4 (float32 accumulation order)."""
  import jax
  depth = np.random.RandomState(0).uniform(0.5, 8.0, (48, 64)).astype(np.float32)
  for size in ((96, 128), (301, 401), (20, 30)):
    np.testing.assert_allclose(inference.resize_depth(depth, size),
                               np.asarray(jax.image.resize(depth, size, "linear")),
                               rtol=1e-4)


def test_recorded_training_resolution(model, tmp_path, paper_checkpoint):
  """Where the training resolution comes from: model.json of a converted
  DenseDepth model (NYU's 480x640) and of save_model; a training workdir's
  config.json (train_resolution, or for an older synthetic run its
  data.height/width); an older converted directory without it is assumed
  NYU's with a log line; a directory with nothing runs at native size with
  a log line."""
  assert model.train_resolution == TRAIN_HW
  meta = json.loads((paper_checkpoint / storage.MODEL_JSON).read_text())
  assert meta["train_resolution"] == [480, 640]
  assert percdepth_jax.load_model(paper_checkpoint).train_resolution == (480, 640)

  workdir = tmp_path / "run"
  workdir.mkdir()
  base = {"format": storage.FORMAT, "version": 1, "kind": "depth_net", "config": {},
          "source": {"format": "training"}}
  config = {"data": {"train": "synthetic:2000:0", "height": 64, "width": 96}}
  (workdir / storage.CONFIG_JSON).write_text(json.dumps(config))
  assert storage.read_train_resolution(workdir, base)[0] == (64, 96)
  config["train_resolution"] = [416, 544]
  (workdir / storage.CONFIG_JSON).write_text(json.dumps(config))
  assert storage.read_train_resolution(workdir, base) == ((416, 544), "recorded")

  old = {**base, "source": {"format": "densedepth", "file": "nyu.pth"}}
  assert storage.read_train_resolution(tmp_path, old)[0] == (480, 640)
  assert storage.read_train_resolution(tmp_path, {**base, "source": {}}) == (None, "not recorded")


def test_model_without_record_runs_native_with_a_log_line(tmp_path, caplog):
  """No recorded resolution: the default runs at the image's own size
  (equal to resolution="native") and says so once."""
  unrecorded = percdepth_jax.load_model(save_toy_model(tmp_path / "old"))
  assert unrecorded.train_resolution is None
  image = nyu_images(64, 64)[:1]
  with caplog.at_level(logging.WARNING):
    default = percdepth_jax.predict_depth(unrecorded, image)
  assert "records no training resolution" in caplog.text
  np.testing.assert_array_equal(default, percdepth_jax.predict_depth(unrecorded, image,
                                                                     resolution="native"))


def _save_photo(path, rgb):
  Image.fromarray(rgb).save(path, quality=95)


def test_folder_of_mixed_sizes_compiles_once_per_network_size(model, tmp_path, monkeypatch,
                                                             capsys):
  """predict.py (--batch 2) on five photos of five sizes in two aspect
  ratios: the network is traced at two sizes only (64x96 and 96x64, the
  training scale of each aspect), never at a photo's own size: for the
  three landscape photos one full batch and the last one alone, for the
  two portrait ones one batch (each traced once, the images and their
  mirrors in one batch). Each
  photo gets a progress line and a depth map of its own size."""
  traces = []
  original = DepthNet.__call__
  monkeypatch.setattr(DepthNet, "__call__",
                      lambda self, x: (traces.append(x.shape[:3]), original(self, x))[1])
  folder = tmp_path / "in"
  folder.mkdir()
  frame = nyu_images(240, 360)[0]
  sizes = {"a": (128, 192), "b": (200, 300), "c": (240, 360), "d": (360, 240), "e": (150, 100)}
  for name, (height, width) in sizes.items():
    rgb = frame if (height, width) == (240, 360) else np.asarray(
        Image.fromarray(frame).resize((width, height)))
    _save_photo(folder / f"{name}.jpg", rgb)
  checkpoint = tmp_path / "model"
  save_toy_model(checkpoint, train_resolution=(72, 108))  # a shape no other test compiles
  code = predict.main(["--checkpoint", str(checkpoint), "--input", str(folder),
                       "--output", str(tmp_path / "out"), "--batch", "2"])
  assert code == 0
  assert sorted(traces) == [(2, 64, 96), (4, 64, 96), (4, 96, 64)]
  err = capsys.readouterr().err
  for name, (height, width) in sizes.items():
    assert np.load(tmp_path / "out" / f"{name}.npy").shape == (height, width)
    assert f"{name}.jpg: {width}x{height}, network at" in err
  assert "5/5 " in err


def test_evaluate_script_resolution(tmp_path):
  """evaluate.py on synthetic rooms rendered at 128x192 with a model
  trained at 64x96: under each --resolution the JSON names it and its
  metrics are those of predict_depth with that resolution on the same rooms
  (computed here with metrics.depth_metrics; the default's Pillow resizes
  against evaluate's jax.image.resize: to 1e-4, where the other resolution
  is 8e-4 or more away), and the two predictions differ."""
  from percdepth_jax import metrics
  from percdepth_jax.commands import evaluate
  from percdepth_jax.data import resolve_spec
  checkpoint = save_toy_model(tmp_path / "model", train_resolution=TRAIN_HW)
  model = percdepth_jax.load_model(checkpoint)
  source = resolve_spec("synthetic:2:5", split="test", height=128, width=192)
  images = np.stack([source[i]["image"] for i in range(2)])
  gt = np.stack([source[i]["depth"] for i in range(2)])
  preds = {}
  for resolution in ("train", "native"):
    out = tmp_path / f"{resolution}.json"
    assert evaluate.main(["--checkpoint", str(checkpoint), "--data", "synthetic:2:5",
                          "--height", "128", "--width", "192", "--protocol", "full_frame",
                          "--num-samples", "0", "--resolution", resolution,
                          "--output", str(out)]) == 0
    result = json.loads(out.read_text())
    assert result["resolution"] == resolution
    preds[resolution] = percdepth_jax.predict_depth(model, images, resolution=resolution)
    expected = metrics.depth_metrics(gt, preds[resolution], "full_frame")
    for name in ("abs_rel", "rmse", "silog"):
      assert result["metrics"][name] == pytest.approx(expected[name], rel=1e-4), name
  # The other resolution's metrics are 8e-4 (abs_rel) to 2e-3 (silog) away.
  assert np.mean(np.abs(preds["train"] - preds["native"]) / preds["native"]) > 1e-3
