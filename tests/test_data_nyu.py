"""NYU Depth v2: DenseDepth's nyu_data.zip and the TFDS `nyu_depth_v2` source,
on tiny fake files built here (no network), plus the --data spec strings."""

import importlib.resources
import io
import os
import types
import zipfile

import h5py
import numpy as np
import pytest
from PIL import Image

from percdepth_jax.data import nyu_tfds
from percdepth_jax.data.nyu_zip import NyuZipSource
from percdepth_jax.data.specs import resolve_spec
from percdepth_jax.data.synthetic import SyntheticSource
from percdepth_jax.data.folder import FolderSource
from percdepth_jax.errors import UserInputError
from tests.helpers import REAL_RGBD


def _png(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="PNG")
  return buf.getvalue()


def _jpeg(array) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format="JPEG", quality=95)
  return buf.getvalue()


@pytest.fixture
def nyu_zip(tmp_path):
  """DenseDepth's layout: data/nyu2_{train,test}.csv, train JPEG + 8-bit depth,
  test PNG + 16-bit mm depth."""
  rng = np.random.default_rng(0)
  train_depth = [rng.integers(1, 256, (12, 16), dtype=np.uint8) for _ in range(2)]
  train_depth[1][0, :3] = 0
  test_depth = [rng.integers(1, 10000, (12, 16)).astype(np.uint16)]
  test_rgb = [rng.integers(0, 256, (12, 16, 3), dtype=np.uint8)]
  path = tmp_path / "nyu_data.zip"
  with zipfile.ZipFile(path, "w") as zf:
    rows = []
    for i, d in enumerate(train_depth):
      rgb, dep = f"data/nyu2_train/kitchen_0001_out/{i}.jpg", f"data/nyu2_train/kitchen_0001_out/{i}.png"
      zf.writestr(rgb, _jpeg(np.full((12, 16, 3), 60 * i, np.uint8)))
      zf.writestr(dep, _png(d))
      rows.append(f"{rgb},{dep}")
    zf.writestr("data/nyu2_train.csv", "\n".join(rows) + "\n")
    zf.writestr("data/nyu2_test/00000_colors.png", _png(test_rgb[0]))
    zf.writestr("data/nyu2_test/00000_depth.png", _png(test_depth[0]))
    zf.writestr("data/nyu2_test.csv",
                "data/nyu2_test/00000_colors.png,data/nyu2_test/00000_depth.png\n")
  return path, train_depth, test_depth, test_rgb


def test_nyu_zip_decodes_train_and_test_encodings(nyu_zip):
  """Train depth = v / 255 * 10 m (0 invalid); test depth = v / 1000 m."""
  path, train_depth, test_depth, test_rgb = nyu_zip
  train = NyuZipSource(path, "train")
  assert len(train) == 2
  ex = train[1]
  np.testing.assert_allclose(ex["depth"], train_depth[1] / 255.0 * 10.0, rtol=1e-6)
  np.testing.assert_array_equal(ex["valid"], train_depth[1] != 0)
  assert ex["image"].shape == (12, 16, 3) and abs(int(ex["image"].mean()) - 60) <= 2
  test = NyuZipSource(path, "test")
  ex = test[0]
  np.testing.assert_allclose(ex["depth"], test_depth[0] / 1000.0, rtol=1e-6)
  np.testing.assert_array_equal(ex["image"], test_rgb[0])
  assert ex["name"] == "data/nyu2_test/00000_colors.png"


def test_nyu_zip_is_picklable_and_thread_safe(nyu_zip):
  """Grain worker processes pickle the source: a copy reads the same data."""
  import pickle
  path = nyu_zip[0]
  source = NyuZipSource(path, "train")
  source[0]  # opens a handle, which must not be pickled
  clone = pickle.loads(pickle.dumps(source))
  np.testing.assert_array_equal(clone[1]["depth"], source[1]["depth"])


def test_nyu_zip_bad_inputs(tmp_path, nyu_zip):
  """Zip without the CSV, CSV naming a missing member, not a zip, bad split."""
  no_csv = tmp_path / "no_csv.zip"
  with zipfile.ZipFile(no_csv, "w") as zf:
    zf.writestr("data/readme.txt", "hello")
  with pytest.raises(UserInputError, match="no nyu2_train.csv") as err:
    NyuZipSource(no_csv, "train")
  assert "no_csv.zip" in str(err.value)
  incomplete = tmp_path / "incomplete.zip"
  with zipfile.ZipFile(incomplete, "w") as zf:
    zf.writestr("data/nyu2_test.csv", "data/a.png,data/b.png\n")
  with pytest.raises(UserInputError, match="not in the zip .first: data/a.png"):
    NyuZipSource(incomplete, "test")
  not_zip = tmp_path / "fake.zip"
  not_zip.write_bytes(b"definitely not a zip")
  with pytest.raises(UserInputError, match="not a readable zip"):
    NyuZipSource(not_zip)
  with pytest.raises(UserInputError, match="split 'val'"):
    NyuZipSource(nyu_zip[0], "val")


# --- TFDS -------------------------------------------------------------------


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """Prepares `nyu_depth_v2` with TFDS's own builder from tiny fake h5 files
  laid out as the builder expects (nyudepthv2/{train,val}/<scene>/<n>.h5 with
  'rgb' 3x480x640 and 'depth' 480x640; the builder fixes the 480x640 shape).

  TensorFlow is not installed, so three TF-only calls are replaced for this
  preparation only: the download (returns the fake folder), tf.io.gfile.listdir
  (os.listdir) and tfds' PNG encoder (Pillow). Reading afterwards uses tfds'
  own TF-free `tfds.data_source`, exactly as a user's prepared copy would.
  """
  import tensorflow_datasets as tfds
  from tensorflow_datasets.core import dataset_builder
  from tensorflow_datasets.core.features import image_feature
  from tensorflow_datasets.datasets.nyu_depth_v2 import nyu_depth_v2_dataset_builder as nb
  root = tmp_path_factory.mktemp("tfds")
  rng = np.random.default_rng(3)
  arrays = {}
  for split, n in (("train", 2), ("val", 1)):
    scene = root / "raw" / "nyudepthv2" / split / "office_0001"
    scene.mkdir(parents=True)
    for i in range(n):
      rgb = rng.integers(0, 256, (3, 480, 640), dtype=np.uint8)
      depth = rng.uniform(0.5, 9.5, (480, 640)).astype(np.float32)
      depth[:10, :10] = 0.0  # holes, as in the real data
      with h5py.File(scene / f"{i:05d}.h5", "w") as f:
        f["rgb"], f["depth"] = rgb, depth
      arrays[(split, i)] = (rgb, depth)
  mp = pytest.MonkeyPatch()
  try:
    mp.setattr(dataset_builder, "importlib_resources", importlib.resources, raising=False)
    mp.setattr(nb, "tf", types.SimpleNamespace(io=types.SimpleNamespace(
        gfile=types.SimpleNamespace(listdir=os.listdir))))
    mp.setattr(image_feature._ImageEncoder, "_encode_image",
               lambda self, a: self._encode_pil_image(Image.fromarray(a)))
    mp.setattr(tfds.download.DownloadManager, "download_and_extract",
               lambda self, url: str(root / "raw"))
    builder = nb.Builder(data_dir=str(root / "data"), file_format="array_record")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        compute_stats=tfds.download.ComputeStatsMode.SKIP))
  finally:
    mp.undo()
  return root / "data", arrays


def test_tfds_source_reads_prepared_dataset(tfds_dir):
  """image = the h5 'rgb' transposed to HxWx3; depth = float16(h5 'depth');
  0 invalid; NYU intrinsics attached; 'test' is an alias of 'validation'."""
  data_dir, arrays = tfds_dir
  train = nyu_tfds.TfdsNyuSource("train", data_dir=str(data_dir))
  assert len(train) == 2
  got = sorted((train[i] for i in range(2)), key=lambda e: int(e["image"][0, 0, 0]) * 1000
               + int(e["image"][0, 0, 1]))
  want = sorted((arrays[("train", i)] for i in range(2)),
                key=lambda a: int(a[0][0, 0, 0]) * 1000 + int(a[0][1, 0, 0]))
  for ex, (rgb, depth) in zip(got, want):
    np.testing.assert_array_equal(ex["image"], np.transpose(rgb, (1, 2, 0)))
    np.testing.assert_array_equal(ex["depth"], depth.astype(np.float16).astype(np.float32))
    np.testing.assert_array_equal(ex["valid"], depth > 0)
    np.testing.assert_allclose(ex["intrinsics"], [518.8579, 519.46961, 325.58245, 253.73617])
  val = resolve_spec("tfds:nyu_depth_v2:test", data_dir=str(data_dir))
  assert len(val) == 1 and val.split == "validation"
  np.testing.assert_array_equal(val[0]["image"],
                                np.transpose(arrays[("val", 0)][0], (1, 2, 0)))


def test_tfds_missing_dataset_is_a_user_error(tmp_path):
  with pytest.raises(UserInputError, match="no prepared dataset found"):
    nyu_tfds.TfdsNyuSource("train", data_dir=str(tmp_path))
  with pytest.raises(UserInputError, match="split 'dev'"):
    nyu_tfds.TfdsNyuSource("dev", data_dir=str(tmp_path))


# --- spec strings -----------------------------------------------------------


def test_specs_resolve_to_sources(nyu_zip):
  """Each documented --data form (docs/design.md) builds the right source and split."""
  s = resolve_spec("synthetic:7:3", height=32, width=48)
  assert isinstance(s, SyntheticSource) and (len(s), s.seed, s.height) == (7, 3, 32)
  assert resolve_spec("synthetic:5").seed == 0
  assert resolve_spec("synthetic:5", split="test").seed != 0  # held-out scenes
  f = resolve_spec(f"folder:{REAL_RGBD / 'redwood' / 'manifest.csv'}")
  assert isinstance(f, FolderSource) and len(f) == 5
  path = nyu_zip[0]
  assert resolve_spec(f"nyu_zip:{path}").split == "train"
  assert resolve_spec(f"nyu_zip:{path}", split="test").split == "test"
  z = resolve_spec(f"nyu_zip:{path}:test")
  assert z.split == "test" and len(z) == 1


@pytest.mark.parametrize("spec,needle", [
    ("imagenet:foo", "unknown kind 'imagenet'"),
    ("synthetic", "not a data spec"),
    ("synthetic:ten", "size N 'ten' is not an integer"),
    ("synthetic:0", "N must be >= 1"),
    ("synthetic:4:1:2", "too many fields"),
    ("tfds:kitti", "only tfds:nyu_depth_v2"),
    ("folder:/nonexistent/manifest.csv", "manifest not found"),
    ("nyu_zip:/nonexistent/nyu_data.zip", "file not found"),
])
def test_bad_specs_are_user_errors(spec, needle):
  with pytest.raises(UserInputError, match=needle):
    resolve_spec(spec)
