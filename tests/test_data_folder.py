"""RGB-D folders: real frames, make_synthetic round trip, and bad input."""

import csv
import pathlib
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from percdepth_jax.data import synthetic as syn
from percdepth_jax.data.folder import FolderSource
from percdepth_jax.errors import UserInputError
from tests.helpers import REAL_RGBD, REPO


@pytest.mark.parametrize("name,frames", [("nyu", 3), ("redwood", 5), ("tum", 1)])
def test_real_rgbd_folders_load(name, frames):
  """Each real frame: depth = stored PNG value / depth_scale (read here with
  Pillow), valid = stored != 0, intrinsics = the manifest's numbers."""
  manifest = REAL_RGBD / name / "manifest.csv"
  source = FolderSource(manifest)
  assert len(source) == frames
  with open(manifest) as f:
    rows = list(csv.DictReader(f))
  for i, row in enumerate(rows):
    ex = source[i]
    stored = np.asarray(Image.open(manifest.parent / row["depth"])).astype(np.float64)
    rgb = np.asarray(Image.open(manifest.parent / row["rgb"]).convert("RGB"))
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (480, 640, 3)
    np.testing.assert_array_equal(ex["image"], rgb)
    np.testing.assert_allclose(ex["depth"], stored / float(row["depth_scale"]), rtol=1e-6)
    np.testing.assert_array_equal(ex["valid"], stored != 0)
    np.testing.assert_allclose(ex["intrinsics"],
                               [float(row[k]) for k in ("fx", "fy", "cx", "cy")])
    if name == "nyu":  # README: raw Kinect, 25-33% holes, max 6.4-8.3 m
      assert 0.2 < 1 - ex["valid"].mean() < 0.4
      assert 6.0 < ex["depth"].max() < 8.5


def test_make_synthetic_round_trip(tmp_path):
  """The folder written by make_synthetic reads back as the rendered scenes:
  identical RGB, depth to within 0.5 mm, same intrinsics (6 decimals)."""
  out = tmp_path / "syn"
  proc = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "make_synthetic.py"), "--out", str(out),
       "--num", "3", "--seed", "4", "--height", "40", "--width", "56"],
      capture_output=True, text=True, timeout=120)
  assert proc.returncode == 0, proc.stderr
  source = FolderSource(out / "manifest.csv")
  assert len(source) == 3
  for i in range(3):
    expected = syn.render_example(4, i, 40, 56)
    got = source[i]
    np.testing.assert_array_equal(got["image"], expected["image"])
    assert np.abs(got["depth"] - expected["depth"]).max() <= 0.0005 + 1e-6
    np.testing.assert_allclose(got["intrinsics"], expected["intrinsics"], atol=1e-5)
    assert got["valid"].all()


@pytest.mark.parametrize("argv,needle", [
    (["--num", "0"], "--num must be >= 1"),
    (["--num", "2", "--height", "4"], "--height/--width"),
    (["--num", "x"], "flag --num=x: invalid literal for int()"),
])
def test_make_synthetic_bad_input_exits_2(tmp_path, argv, needle):
  """Bad flags: exit code 2, a one-paragraph message, no traceback."""
  proc = subprocess.run(
      [sys.executable, str(REPO / "scripts" / "make_synthetic.py"),
       "--out", str(tmp_path / "o"), *argv], capture_output=True, text=True, timeout=60)
  assert proc.returncode == 2
  assert needle in proc.stderr and "Traceback" not in proc.stderr


def _folder(root: pathlib.Path, pairs, header="rgb,depth") -> pathlib.Path:
  """Writes rgb/depth files from (name, rgb_array|bytes, depth_array|bytes)."""
  (root / "rgb").mkdir(parents=True, exist_ok=True)
  (root / "depth").mkdir(exist_ok=True)
  lines = [header]
  for name, rgb, depth in pairs:
    for sub, data, ext in (("rgb", rgb, "png"), ("depth", depth, "png")):
      path = root / sub / f"{name}.{ext}"
      if isinstance(data, bytes):
        path.write_bytes(data)
      elif data is not None:
        Image.fromarray(data).save(path)
    lines.append(f"rgb/{name}.png,depth/{name}.png")
  (root / "manifest.csv").write_text("\n".join(lines) + "\n")
  return root / "manifest.csv"


RGB = np.full((6, 8, 3), 100, np.uint8)
DEPTH = np.full((6, 8), 1500, np.uint16)


def test_default_scale_and_npy_depth(tmp_path):
  """16-bit PNG without depth_scale = millimetres; .npy float metres with NaN
  and 0 marked invalid."""
  manifest = _folder(tmp_path, [("a", RGB, DEPTH)])
  assert np.allclose(FolderSource(manifest)[0]["depth"], 1.5)
  d = np.full((6, 8), 2.25, np.float32)
  d[0, 0], d[1, 1] = np.nan, 0.0
  np.save(tmp_path / "depth" / "b.npy", d)
  (tmp_path / "m2.csv").write_text("rgb,depth\nrgb/a.png,depth/b.npy\n")
  ex = FolderSource(tmp_path / "m2.csv")[0]
  assert not ex["valid"][0, 0] and not ex["valid"][1, 1] and ex["valid"].sum() == 46
  assert ex["depth"][0, 0] == 0 and np.all(ex["depth"][ex["valid"]] == 2.25)


def _png_bytes(array) -> bytes:
  import io
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


@pytest.mark.parametrize("case,needle", [
    ("missing", "do not exist"),
    ("corrupt", "cannot decode"),
    ("truncated", "cannot decode"),
    ("size", "must have the same size"),
    ("novalid", "no valid depth pixel"),
    ("eightbit", "16-bit"),
])
def test_bad_input_names_file_and_problem(tmp_path, case, needle):
  """Each bad case raises UserInputError naming the offending file."""
  good = ("good", RGB, DEPTH)
  bad_depth = {"missing": None, "corrupt": b"\x89PNG\r\n\x1a\nnot really a png",
               "truncated": _png_bytes(np.arange(48 * 64, dtype=np.uint16).reshape(48, 64)
                                       * 7)[:200],
               "size": np.full((5, 8), 1000, np.uint16),
               "novalid": np.zeros((6, 8), np.uint16),
               "eightbit": np.full((6, 8), 10, np.uint8)}[case]
  rgb = RGB if case != "truncated" else np.zeros((48, 64, 3), np.uint8)
  manifest = _folder(tmp_path, [good, ("bad", rgb, bad_depth)])
  with pytest.raises(UserInputError, match=needle) as err:
    source = FolderSource(manifest)
    source[1]
  assert "bad.png" in str(err.value)
  # skip_bad: a counted None instead of an error.
  source = FolderSource(manifest, skip_bad=True)
  assert source[0] is not None and source[1] is None
  assert len(source.skipped) == 1 and "bad.png" in source.skipped[0]


def test_bad_manifest_header_and_values(tmp_path):
  """Header without rgb/depth, a non-numeric depth_scale, a missing manifest."""
  (tmp_path / "m.csv").write_text("image,label\na.png,b.png\n")
  with pytest.raises(UserInputError, match="'rgb' and 'depth'"):
    FolderSource(tmp_path / "m.csv")
  (tmp_path / "m2.csv").write_text("rgb,depth,depth_scale\na.png,b.png,abc\n")
  with pytest.raises(UserInputError, match="depth_scale"):
    FolderSource(tmp_path / "m2.csv")
  with pytest.raises(UserInputError, match="manifest not found"):
    FolderSource(tmp_path / "nope.csv")
