"""Photos for prediction are read as viewers show them: EXIF orientations 1-8
in every decoder path (checked against Pillow's `ImageOps.exif_transpose`),
HEIC, CMYK, palette, greyscale, 16-bit and multi-frame files; predictions of a
turned photo equal the upright image's; scripts/predict.py writes maps of the
displayed size."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

import percdepth_jax
from percdepth_jax.commands import predict
from percdepth_jax.data import decode, photos
from tests.helpers import block_import, nyu_images, save_toy_model

# Pillow's transpose that undoes each orientation: storing orient^-1(U) with
# tag k displays U.
_STORE = {1: None, 2: Image.Transpose.FLIP_LEFT_RIGHT, 3: Image.Transpose.ROTATE_180,
          4: Image.Transpose.FLIP_TOP_BOTTOM, 5: Image.Transpose.TRANSPOSE,
          6: Image.Transpose.ROTATE_90, 7: Image.Transpose.TRANSVERSE,
          8: Image.Transpose.ROTATE_270}


def _upright() -> np.ndarray:
  """A real NYU frame, non-square (64 rows x 96 columns)."""
  return nyu_images(64, 96)[0]


def _stored(upright: np.ndarray, orientation: int, fmt: str, **save) -> bytes:
  """The file a camera writes: pixels turned so that tag `orientation`
  displays `upright`."""
  image = Image.fromarray(upright)
  if _STORE[orientation] is not None:
    image = image.transpose(_STORE[orientation])
  exif = Image.Exif()
  exif[photos.ORIENTATION_TAG] = orientation
  buffer = io.BytesIO()
  image.save(buffer, format=fmt, exif=exif.tobytes(), **save)
  return buffer.getvalue()


def _pillow_displayed(raw: bytes) -> np.ndarray:
  return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(raw))).convert("RGB"))


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orient_is_pillow_exif_transpose(orientation):
  """`orient` turns pixels as Pillow's exif_transpose does, for each tag."""
  stored = np.random.RandomState(orientation).randint(0, 256, (5, 7, 3)).astype(np.uint8)
  exif = Image.Exif()
  exif[photos.ORIENTATION_TAG] = orientation
  buffer = io.BytesIO()
  Image.fromarray(stored).save(buffer, format="PNG", exif=exif.tobytes())
  np.testing.assert_array_equal(photos.orient(stored, orientation),
                                _pillow_displayed(buffer.getvalue()))


@pytest.mark.parametrize("fmt,save,fast", [
    ("PNG", {}, True),                                  # OpenCV
    ("JPEG", {"quality": 92}, True),                    # simplejpeg
    ("WEBP", {"lossless": True}, False),                # Pillow
])
def test_every_orientation_reads_upright_in_every_decoder(fmt, save, fast):
  """For tags 1-8 the photo reads as Pillow displays it, whichever decoder
  takes the file; lossless files give the upright pixels exactly."""
  upright = _upright()
  for orientation in range(1, 9):
    raw = _stored(upright, orientation, fmt, **save)
    assert (decode.fast_rgb(raw) is not None) == fast
    photo = photos.read_photo(raw, f"{fmt}-{orientation}")
    np.testing.assert_array_equal(photo.rgb, _pillow_displayed(raw))
    assert photo.rgb.shape == upright.shape
    if fmt != "JPEG":
      np.testing.assert_array_equal(photo.rgb, upright)
    assert any(f"EXIF orientation {orientation}" in n for n in photo.notes) == (orientation != 1)


@pytest.fixture(scope="module")
def toy_model(tmp_path_factory):
  path = save_toy_model(tmp_path_factory.mktemp("photos") / "toy")
  return path, percdepth_jax.load_model(path)


def test_turned_photo_predicts_as_the_upright_image(toy_model):
  """A phone-style JPEG (pixels stored sideways, tag 6) gives a depth map of
  the displayed size matching the upright image's prediction; so does a
  lossless PNG with each tag, exactly."""
  _, model = toy_model
  upright = _upright()
  expected = percdepth_jax.predict_depth(model, upright[None])[0]
  phone = photos.read_photo(_stored(upright, 6, "JPEG", quality=95), "phone.jpg")
  assert phone.rgb.shape == (64, 96, 3)
  depth = percdepth_jax.predict_depth(model, phone.rgb[None])[0]
  assert depth.shape == expected.shape == (64, 96)
  assert np.median(np.abs(depth - expected) / expected) < 0.01  # JPEG noise only
  for orientation in range(1, 9):
    rgb = photos.read_photo(_stored(upright, orientation, "PNG"), "x.png").rgb
    np.testing.assert_array_equal(percdepth_jax.predict_depth(model, rgb[None])[0], expected)


def test_predict_script_writes_displayed_size(toy_model, tmp_path, capsys):
  """scripts/predict.py on a sideways-stored JPEG writes a map of the shown
  size (64x96, not the stored 96x64) and says it turned the photo."""
  checkpoint, _ = toy_model
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "portrait.jpg").write_bytes(_stored(_upright(), 6, "JPEG", quality=95))
  code = predict.main(["--checkpoint", str(checkpoint), "--input", str(folder),
                       "--output", str(tmp_path / "out")])
  assert code == 0
  assert np.load(tmp_path / "out" / "portrait.npy").shape == (64, 96)
  assert "EXIF orientation 6 (stored 64x96, shown 96x64)" in capsys.readouterr().err


def test_modes_convert_as_displayed():
  """CMYK, palette with transparency, greyscale and 16-bit grey images give
  the RGB values a viewer shows (expected values computed here)."""
  rng = np.random.RandomState(0)
  rgb = rng.randint(0, 256, (16, 24, 3)).astype(np.uint8)

  # CMYK JPEG built from RGB by C = 255 - R etc. (K = 0): back to ~RGB.
  cmyk = np.concatenate([255 - rgb, np.zeros((16, 24, 1), np.uint8)], axis=-1)
  buffer = io.BytesIO()
  Image.fromarray(cmyk, "CMYK").save(buffer, format="JPEG", quality=100)
  photo = photos.read_photo(buffer.getvalue(), "cmyk.jpg")
  assert np.abs(photo.rgb.astype(int) - rgb).mean() < 3 and "CMYK" in photo.notes[0]

  # Palette with a transparent index: colours from the palette, alpha dropped.
  palette = rng.randint(0, 256, (256, 3)).astype(np.uint8)
  index = rng.randint(0, 256, (16, 24)).astype(np.uint8)
  image = Image.fromarray(index, "P")
  image.putpalette(palette.ravel().tolist())
  buffer = io.BytesIO()
  image.save(buffer, format="PNG", transparency=3)
  np.testing.assert_array_equal(photos.read_photo(buffer.getvalue(), "p.png").rgb, palette[index])

  grey = rgb[..., 0]
  buffer = io.BytesIO()
  Image.fromarray(grey, "L").save(buffer, format="PNG")
  np.testing.assert_array_equal(photos.read_photo(buffer.getvalue(), "l.png").rgb,
                                np.repeat(grey[..., None], 3, -1))

  # 16-bit grey: v16 / 257 rounded (Pillow's convert("RGB") would clip at 255).
  grey16 = rng.randint(0, 65536, (16, 24)).astype(np.uint16)
  buffer = io.BytesIO()
  Image.fromarray(grey16).save(buffer, format="PNG")
  photo = photos.read_photo(buffer.getvalue(), "16.png")
  expected = np.floor(grey16 / 257.0 + 0.5).astype(np.uint8)
  np.testing.assert_array_equal(photo.rgb, np.repeat(expected[..., None], 3, -1))


def test_multi_frame_file_says_which_frame():
  """Of an animated GIF the first frame is used, and the notes say so."""
  frames = [Image.fromarray(np.full((8, 12, 3), value, np.uint8)) for value in (10, 128, 250)]
  buffer = io.BytesIO()
  frames[0].save(buffer, format="GIF", save_all=True, append_images=frames[1:])
  photo = photos.read_photo(buffer.getvalue(), "anim.gif")
  np.testing.assert_array_equal(photo.rgb, np.full((8, 12, 3), 10, np.uint8))
  assert "first frame used of 3" in photo.notes


def test_heic_reads_upright():
  """A HEIC written by pillow-heif with tag 6 (which it stores as a HEIF
  rotation) reads as the upright image, up to HEVC's loss."""
  import pillow_heif  # the test extra brings it
  pillow_heif.register_heif_opener()
  upright = _upright()
  photo = photos.read_photo(_stored(upright, 6, "HEIF", quality=95), "phone.heic")
  assert photo.rgb.shape == upright.shape
  assert np.abs(photo.rgb.astype(int) - upright).mean() < 4


def test_heic_without_pillow_heif_names_the_extra(monkeypatch):
  """Without pillow-heif a HEIC gets a UserInputError naming the extra."""
  block_import(monkeypatch, "pillow_heif")
  raw = b"\x00\x00\x00\x18ftypheic" + bytes(100)
  with pytest.raises(percdepth_jax.UserInputError, match=r"phone\.heic.*pillow-heif.*\[photos\]"):
    photos.read_photo(raw, "phone.heic")


def _encoded(array: np.ndarray, fmt: str, **save) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(array).save(buffer, format=fmt, **save)
  return buffer.getvalue()


def _no_decoding(monkeypatch):
  """Makes every decoder fail loudly: a size check that ran after decoding
  would show as an AssertionError instead of the UserInputError."""
  import cv2
  import pillow_heif
  import simplejpeg
  from PIL import ImageFile

  def decoded(*args, **kwargs):
    raise AssertionError("decoded before the size check")

  monkeypatch.setattr(cv2, "imdecode", decoded)
  monkeypatch.setattr(simplejpeg, "decode_jpeg", decoded)
  monkeypatch.setattr(ImageFile.ImageFile, "load", decoded)
  monkeypatch.setattr(pillow_heif.HeifImageFile, "load", decoded)


def test_pixel_cap_is_checked_from_the_header_in_every_decoder(monkeypatch):
  """With the cap set just below 100x100 pixels, a 100x100 image is refused
  with a UserInputError naming the file and its size, before any decoding,
  whichever decoder would take it: OpenCV (PNG), simplejpeg (JPEG), Pillow
  (WebP, a truncated PNG), pillow-heif (HEIC), and the dataset readers'
  RGB and 16-bit depth paths; a 99x100 image is under the cap."""
  import pillow_heif  # the test extra brings it
  pillow_heif.register_heif_opener()
  rgb = np.random.RandomState(0).randint(0, 256, (100, 100, 3)).astype(np.uint8)
  png = _encoded(rgb, "PNG")
  files = {"a.png": png, "b.jpg": _encoded(rgb, "JPEG", quality=90),
           "c.webp": _encoded(rgb, "WEBP", lossless=True), "d.png": png[:len(png) // 2],
           "e.heic": _stored(rgb, 1, "HEIF", quality=90)}
  assert decode.fast_rgb(files["a.png"]) is not None  # the fast path takes these two
  assert decode.fast_rgb(files["b.jpg"]) is not None
  depth = _encoded(np.full((100, 100), 1234, np.uint16), "PNG")
  small = _encoded(rgb[:99], "PNG")
  monkeypatch.setattr(decode, "MAX_PIXELS", 100 * 100 - 1)
  assert photos.read_photo(small, "small.png").rgb.shape == (99, 100, 3)
  _no_decoding(monkeypatch)
  for name, raw in files.items():
    with pytest.raises(percdepth_jax.UserInputError, match=rf"{name}: 100x100 pixels"):
      photos.read_photo(raw, name)
  with pytest.raises(percdepth_jax.UserInputError, match=r"rgb\.png: 100x100 pixels"):
    decode.decode_rgb(png, "rgb.png")
  with pytest.raises(percdepth_jax.UserInputError, match=r"depth\.png: 100x100 pixels"):
    decode.decode_depth_png(depth, "depth.png")


@pytest.fixture(scope="module")
def bomb_png() -> bytes:
  """A 14000x14000 black PNG: 196 MP (Pillow refuses over 179 MP) in 190 KB."""
  return _encoded(np.zeros((14000, 14000), np.uint8), "PNG")


def test_decompression_bomb_gets_a_user_input_error(bomb_png):
  """The whole file (header read by the fast path) and the file cut short
  (Pillow's path, where Pillow itself raises DecompressionBombError): both
  a UserInputError naming the file, never Pillow's exception."""
  with pytest.raises(percdepth_jax.UserInputError,
                     match=r"bomb\.png: 14000x14000 pixels \(196 MP\)"):
    photos.read_photo(bomb_png, "bomb.png")
  with pytest.raises(percdepth_jax.UserInputError, match=r"cut\.png: more than the 60 MP"):
    photos.read_photo(bomb_png[:len(bomb_png) // 2], "cut.png")


def test_predict_skips_an_oversized_photo_and_goes_on(toy_model, bomb_png, tmp_path, capsys):
  """A decompression-bomb PNG in a folder: named and skipped with its size,
  the other photo is predicted, exit code 1, no traceback."""
  checkpoint, _ = toy_model
  folder = tmp_path / "in"
  folder.mkdir()
  (folder / "a_bomb.png").write_bytes(bomb_png)
  Image.fromarray(_upright()).save(folder / "b_room.png")
  code = predict.main(["--checkpoint", str(checkpoint), "--input", str(folder),
                       "--output", str(tmp_path / "out")])
  err = capsys.readouterr().err
  assert code == 1
  assert "skipped: " in err and "a_bomb.png: 14000x14000 pixels (196 MP)" in err
  assert "Traceback" not in err and "DecompressionBomb" not in err
  assert np.load(tmp_path / "out" / "b_room.npy").shape == (64, 96)
  assert not (tmp_path / "out" / "a_bomb.npy").exists()


_PEAK_RSS = ("import resource, subprocess, sys; code = subprocess.run(sys.argv[1:]).returncode; "
             "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024); "
             "sys.exit(code)")


def test_twelve_megapixel_phone_photo_in_bounded_memory(tmp_path):
  """scripts/predict.py, as a user runs it, on a 4032x3024 JPEG stored
  sideways with EXIF orientation 6 and a model trained at 480x640: the
  depth map has the displayed size (4032 rows x 3024 columns), the network
  ran at 640x480, and the process's peak resident memory (getrusage of the
  child) stays under 2 GB."""
  import subprocess
  import sys
  from tests.helpers import REPO, env
  checkpoint = save_toy_model(tmp_path / "model", train_resolution=(480, 640))
  upright = Image.fromarray(nyu_images(480, 640)[0]).resize((3024, 4032), Image.BICUBIC)
  (tmp_path / "IMG_0001.jpg").write_bytes(_stored(np.asarray(upright), 6, "JPEG", quality=90))
  result = subprocess.run(
      [sys.executable, "-c", _PEAK_RSS, sys.executable, "scripts/predict.py",
       "--checkpoint", str(checkpoint), "--input", str(tmp_path / "IMG_0001.jpg"),
       "--output", str(tmp_path / "out")],
      cwd=REPO, env=env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  peak_mb = int(result.stdout.split()[-1])
  assert peak_mb < 2048, peak_mb
  assert "IMG_0001.jpg: 3024x4032, network at 480x640" in result.stderr
  assert np.load(tmp_path / "out" / "IMG_0001.npy").shape == (4032, 3024)
