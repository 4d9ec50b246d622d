"""scripts/predict.py on real frames: output files, shapes, units, point-cloud
geometry, and bad input."""

import numpy as np
import pytest
from PIL import Image

from percdepth_jax import depth_outputs
from percdepth_jax.commands import predict
from tests.helpers import REAL_RGBD

NYU_RGB = REAL_RGBD / "nyu" / "rgb"


@pytest.fixture(scope="module")
def checkpoint(paper_checkpoint):
  return paper_checkpoint


def test_outputs_on_real_frames(checkpoint, tmp_path):
  """Each NYU frame gives .npy metres at 480x640, a 16-bit mm PNG equal to it
  to 0.5 mm, a colour picture, and a PLY whose points project back (pinhole,
  the given intrinsics) onto their pixels with the depth map's z to 1 mm."""
  fx, fy, cx, cy = 518.8579, 519.46961, 325.58245, 253.73617
  out = tmp_path / "pred"
  code = predict.main(["--checkpoint", str(checkpoint), "--input", str(NYU_RGB),
                       "--output", str(out), "--ply", "--intrinsics", f"{fx},{fy},{cx},{cy}"])
  assert code == 0
  stems = sorted(p.stem for p in NYU_RGB.iterdir())
  assert len(stems) == 3
  for stem in stems:
    depth = np.load(out / f"{stem}.npy")
    assert depth.dtype == np.float32 and depth.shape == (480, 640)
    assert np.all((depth >= 0.1) & (depth <= 10.0))
    mm = np.asarray(Image.open(out / f"{stem}_depth.png"))
    assert mm.dtype == np.uint16
    np.testing.assert_allclose(mm / 1000.0, depth, atol=0.0005 + 1e-6)
    colour = np.asarray(Image.open(out / f"{stem}_color.png"))
    assert colour.shape[0] == 480 and colour.shape[1] > 640 and colour.shape[2] == 3
    points = depth_outputs.read_ply(out / f"{stem}.ply")
    assert len(points) == 480 * 640
    z = points["z"].astype(np.float64)
    u = np.round(fx * points["x"] / z + cx).astype(int)
    v = np.round(fy * points["y"] / z + cy).astype(int)
    np.testing.assert_array_equal(u, np.tile(np.arange(640), 480))
    np.testing.assert_array_equal(v, np.repeat(np.arange(480), 640))
    np.testing.assert_allclose(z, depth[v, u], atol=1e-3)
    rgb = np.asarray(Image.open(NYU_RGB / f"{stem}.jpg").convert("RGB"))
    np.testing.assert_array_equal(points["red"], rgb[..., 0].ravel())


def test_corrupt_image_is_skipped_and_named(checkpoint, tmp_path, capsys):
  """A truncated JPEG among good images (of two sizes) is named and skipped,
  the others are written at their own resolution, and the exit code is 1."""
  folder = tmp_path / "in"
  folder.mkdir()
  good = Image.open(NYU_RGB / "rgb_00000.jpg")
  good.save(folder / "a.png")
  good.resize((100, 70)).save(folder / "b.jpg")
  data = (NYU_RGB / "rgb_00050.jpg").read_bytes()
  (folder / "broken.jpg").write_bytes(data[:len(data) // 3])
  out = tmp_path / "out"
  code = predict.main(["--checkpoint", str(checkpoint), "--input", str(folder),
                       "--output", str(out), "--no-flip"])
  assert code == 1
  assert "broken.jpg" in capsys.readouterr().err
  assert np.load(out / "a.npy").shape == (480, 640)
  assert np.load(out / "b.npy").shape == (70, 100)
  assert not (out / "broken.npy").exists()


@pytest.mark.parametrize("argv,message", [
    (["--input", "missing_folder"], "does not exist"),
    (["--input", str(NYU_RGB), "--intrinsics", "1,2,3"], "four numbers"),
    (["--input", str(NYU_RGB), "--batch", "0"], "must be >= 1"),
])
def test_bad_arguments_exit_2(checkpoint, tmp_path, capsys, argv, message):
  """Missing input, malformed intrinsics and a zero batch: exit 2 with a message."""
  code = predict.main(["--checkpoint", str(checkpoint), "--output", str(tmp_path / "o"), *argv])
  assert code == 2 and message in capsys.readouterr().err
