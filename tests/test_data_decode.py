"""Image decoding: the fast path (simplejpeg for JPEG, OpenCV for PNG)
equals Pillow bit for bit, and bad files give a UserInputError naming the
file."""

from __future__ import annotations

import io

import cv2
import numpy as np
import pytest
from PIL import Image

from percdepth_jax.data import decode, write_folder
from percdepth_jax.data.synthetic import render_example
from percdepth_jax.errors import UserInputError
from tests.helpers import REAL_RGBD

# An odd size (chroma subsampling and row filters at ragged edges) and an even one.
SIZES = [(61, 83), (48, 64)]


def _scene(height: int, width: int) -> np.ndarray:
  """A rendered room (edges, shading) with sensor-like noise on its lower half."""
  image = render_example(3, 1, height, width)["image"].astype(np.int16)
  noise = np.random.default_rng(height * width).integers(-40, 41, image.shape)
  image[height // 2:] += noise[height // 2:].astype(np.int16)
  return np.clip(image, 0, 255).astype(np.uint8)


def _encode(image: Image.Image, fmt: str, **kwargs) -> bytes:
  buf = io.BytesIO()
  image.save(buf, format=fmt, **kwargs)
  return buf.getvalue()


def _pillow_rgb(raw: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(raw)).convert("RGB"))


def _pillow_values(raw: bytes) -> np.ndarray:
  return np.asarray(Image.open(io.BytesIO(raw)))


def _png_rgb_kinds(rgb: np.ndarray) -> dict[str, bytes]:
  h, w, _ = rgb.shape
  alpha = np.random.default_rng(1).integers(0, 256, (h, w, 1), dtype=np.uint8)
  grey = Image.fromarray(rgb).convert("L")
  palette = Image.fromarray(rgb).quantize(colors=200)
  icc = b"\0" * 128  # any bytes: both decoders must ignore the profile
  return {
      "rgb": _encode(Image.fromarray(rgb), "PNG"),
      "rgb_level0": _encode(Image.fromarray(rgb), "PNG", compress_level=0),
      "rgb_gamma_icc": _encode(Image.fromarray(rgb), "PNG", gamma=0.4, icc_profile=icc),
      "rgba": _encode(Image.fromarray(np.concatenate([rgb, alpha], -1), "RGBA"), "PNG"),
      "grey": _encode(grey, "PNG"),
      "grey_alpha": _encode(Image.merge("LA", [grey, Image.fromarray(alpha[..., 0])]), "PNG"),
      "palette": _encode(palette, "PNG"),
      "palette_transparency": _encode(palette, "PNG", transparency=5),
  }


@pytest.mark.parametrize("size", SIZES)
def test_png_rgb_fast_path_equals_pillow(size):
  """8-bit RGB, RGB with gAMA/iCCP chunks, RGBA, grey, grey+alpha and palette
  PNGs (with and without tRNS) take the OpenCV path and decode to exactly
  Pillow's convert('RGB')."""
  for kind, raw in _png_rgb_kinds(_scene(*size)).items():
    assert decode.fast_rgb(raw) is not None, kind
    out = decode.decode_rgb(raw, kind)
    ref = _pillow_rgb(raw)
    assert out.dtype == np.uint8 and out.shape == ref.shape, kind
    np.testing.assert_array_equal(out, ref, err_msg=kind)


def _jpeg_kinds(rgb: np.ndarray) -> dict[str, bytes]:
  image = Image.fromarray(rgb)
  exif = Image.Exif()
  exif[0x0112] = 6  # orientation "rotate 90": Pillow does not apply it, nor may we
  return {
      "baseline_420": _encode(image, "JPEG", quality=90, subsampling=2),
      "baseline_422": _encode(image, "JPEG", quality=90, subsampling=1),
      "baseline_444": _encode(image, "JPEG", quality=95, subsampling=0),
      "progressive_420": _encode(image, "JPEG", quality=90, progressive=True),
      "progressive_444": _encode(image, "JPEG", quality=90, progressive=True,
                                 subsampling=0),
      "optimized_q50": _encode(image, "JPEG", quality=50, optimize=True),
      "greyscale": _encode(image.convert("L"), "JPEG", quality=90),
      "greyscale_progressive": _encode(image.convert("L"), "JPEG", progressive=True),
      "exif_orientation": _encode(image, "JPEG", quality=90, exif=exif),
  }


@pytest.mark.parametrize("size", SIZES)
def test_jpeg_fast_path_equals_pillow(size):
  """Baseline (4:2:0, 4:2:2, 4:4:4), progressive, optimised-Huffman,
  greyscale and EXIF-rotated JPEGs take the simplejpeg path and decode to
  exactly Pillow's convert('RGB')."""
  for kind, raw in _jpeg_kinds(_scene(*size)).items():
    assert decode.fast_rgb(raw) is not None, kind
    out = decode.decode_rgb(raw, kind)
    ref = _pillow_rgb(raw)
    assert out.dtype == np.uint8 and out.shape == ref.shape, kind
    np.testing.assert_array_equal(out, ref, err_msg=kind)


def test_real_frames_fast_path_equals_pillow():
  """The real NYU/Redwood/TUM frames (JPEG and PNG colour, 16-bit depth PNG)
  take the fast path and decode exactly as with Pillow."""
  files = sorted(p for p in REAL_RGBD.glob("**/*") if p.suffix in (".jpg", ".png"))
  assert files, f"no real frames under {REAL_RGBD}"
  for path in files:
    raw = path.read_bytes()
    if "depth" in path.name or path.parent.name == "depth":
      assert decode._fast_depth(raw, False) is not None, path
      out, ref = decode.decode_depth_png(str(path), str(path)), _pillow_values(raw)
    else:
      assert decode.fast_rgb(raw) is not None, path
      out, ref = decode.decode_rgb(str(path), str(path)), _pillow_rgb(raw)
    assert out.dtype == ref.dtype and out.shape == ref.shape, path
    np.testing.assert_array_equal(out, ref, err_msg=str(path))


@pytest.mark.parametrize("size", SIZES)
def test_depth_png_fast_path_equals_pillow(size):
  """16-bit depth PNGs (full 0..65535 range; Pillow's compressed layout, the
  uncompressed one, one with a tRNS chunk) and 8-bit depth PNGs (allow_8bit)
  take the OpenCV path and give exactly Pillow's stored values and dtype."""
  h, w = size
  rng = np.random.default_rng(2)
  d16 = rng.integers(0, 65536, (h, w)).astype(np.uint16)
  d16[0, :3] = [0, 1, 65535]
  smooth = np.round(render_example(3, 1, h, w)["depth"] * 1000).astype(np.uint16)
  d8 = rng.integers(0, 256, (h, w)).astype(np.uint8)
  cases = {
      "noise16": (_encode(Image.fromarray(d16), "PNG"), False),
      "scene16": (_encode(Image.fromarray(smooth), "PNG"), False),
      "scene16_level0": (_encode(Image.fromarray(smooth), "PNG", compress_level=0), False),
      "scene16_trns": (_encode(Image.fromarray(smooth), "PNG", transparency=7), False),
      "noise8": (_encode(Image.fromarray(d8), "PNG"), True),
  }
  for kind, (raw, allow_8bit) in cases.items():
    assert decode._fast_depth(raw, allow_8bit) is not None, kind
    out = decode.decode_depth_png(raw, kind, allow_8bit=allow_8bit)
    ref = _pillow_values(raw)
    assert out.dtype == ref.dtype and out.shape == ref.shape, kind
    np.testing.assert_array_equal(out, ref, err_msg=kind)


def test_kinds_left_to_pillow_decode_as_pillow():
  """File kinds the fast path does not claim (CMYK JPEG, 16-bit RGB PNG,
  1-bit PNG, 16-bit grey PNG given as RGB) are decoded by Pillow, with
  Pillow's values."""
  rgb = _scene(48, 64)
  rgb16 = rgb.astype(np.uint16) * 257
  rgb_cases = {
      "cmyk_jpeg": _encode(Image.fromarray(rgb).convert("CMYK"), "JPEG"),
      # Pillow cannot write 16-bit RGB PNGs; OpenCV can (BGR order).
      "rgb16_png": cv2.imencode(".png", rgb16[..., ::-1])[1].tobytes(),
      "bilevel_png": _encode(Image.fromarray(rgb).convert("1"), "PNG"),
      "grey16_png": _encode(Image.fromarray(rgb16[..., 0]), "PNG"),
  }
  for kind, raw in rgb_cases.items():
    assert decode.fast_rgb(raw) is None, kind
    np.testing.assert_array_equal(decode.decode_rgb(raw, kind), _pillow_rgb(raw),
                                  err_msg=kind)


def test_make_synthetic_layout_round_trips_exactly(tmp_path):
  """write_folder's uncompressed PNGs (make_synthetic's default) and its
  zlib-compressed ones decode, via Pillow and via the fast path, to the
  written RGB and stored millimetres."""
  ex = render_example(0, 2, 48, 64)
  for level in (0, 6):
    manifest = write_folder(tmp_path / f"level{level}", [ex], png_compression=level)
    rgb_name, depth_name = manifest.read_text().splitlines()[1].split(",")[:2]
    rgb_path, depth_path = manifest.parent / rgb_name, manifest.parent / depth_name
    stored = np.round(np.where(ex["valid"], ex["depth"], 0) * 1000).astype(np.uint16)
    np.testing.assert_array_equal(_pillow_rgb(rgb_path.read_bytes()), ex["image"])
    np.testing.assert_array_equal(_pillow_values(depth_path.read_bytes()), stored)
    assert decode.fast_rgb(rgb_path.read_bytes()) is not None
    np.testing.assert_array_equal(decode.decode_rgb(str(rgb_path), "rgb"), ex["image"])
    np.testing.assert_array_equal(decode.decode_depth_png(str(depth_path), "d"), stored)
  sizes = [sum(f.stat().st_size for f in (tmp_path / f"level{level}").glob("*/*.png"))
           for level in (0, 6)]
  assert sizes[0] > 3 * sizes[1]


def _good_files() -> dict[str, tuple[bytes, str]]:
  rgb = _scene(48, 64)
  depth = np.round(render_example(3, 1, 48, 64)["depth"] * 1000).astype(np.uint16)
  return {
      "png": (_encode(Image.fromarray(rgb), "PNG"), "rgb"),
      "png_level0": (_encode(Image.fromarray(rgb), "PNG", compress_level=0), "rgb"),
      "jpeg": (_encode(Image.fromarray(rgb), "JPEG"), "rgb"),
      "jpeg_progressive": (_encode(Image.fromarray(rgb), "JPEG", progressive=True), "rgb"),
      "depth16": (_encode(Image.fromarray(depth), "PNG"), "depth"),
  }


def _decode(raw: bytes, role: str, name: str) -> np.ndarray:
  if role == "rgb":
    return decode.decode_rgb(raw, name)
  return decode.decode_depth_png(raw, name)


def test_truncated_files_raise_naming_the_file(tmp_path):
  """A file cut in its header or pixel data raises UserInputError naming the
  file, as Pillow fails on it; cut inside the last few bytes, the outcome is
  Pillow's: a JPEG missing its end marker is an error, a PNG whose pixel
  data is complete but whose IEND chunk is cut decodes to Pillow's values."""
  for kind, (raw, role) in _good_files().items():
    for cut in (20, len(raw) // 3, len(raw) // 2, len(raw) - 9, len(raw) - 1):
      path = tmp_path / f"{kind}_cut{cut}.img"
      path.write_bytes(raw[:cut])
      try:
        reference = _pillow_rgb(raw[:cut]) if role == "rgb" else _pillow_values(raw[:cut])
      except Exception:  # Pillow rejects the file: so must we
        assert cut < len(raw) // 2 + 1 or kind.startswith("jpeg"), (kind, cut)
        with pytest.raises(UserInputError) as err:
          _decode(str(path), role, str(path))
        assert str(path) in str(err.value) and "truncated" in str(err.value), kind
      else:
        assert cut > len(raw) - 12 and not kind.startswith("jpeg"), (kind, cut)
        np.testing.assert_array_equal(_decode(str(path), role, str(path)), reference)


def test_corrupt_files_raise_naming_the_file(tmp_path):
  """Garbage, an empty file, a PNG with a damaged header or damaged pixel
  data and a JPEG without its quantisation table raise UserInputError naming the
  file wherever Pillow rejects them; a missing file names the path."""
  png, _ = _good_files()["png"]
  jpeg, _ = _good_files()["jpeg"]
  bad_header = bytearray(png)
  bad_header[20] ^= 0xFF  # IHDR height: the chunk CRC no longer matches
  bad_data = bytearray(png)
  bad_data[len(png) // 2] ^= 0x55  # inside IDAT
  dqt = jpeg.index(b"\xff\xdb")
  no_tables = jpeg[:dqt] + jpeg[dqt + 2 + int.from_bytes(jpeg[dqt + 2:dqt + 4], "big"):]
  cases = {"garbage": b"not an image at all" * 20, "empty": b"",
           "png_header": bytes(bad_header), "png_data": bytes(bad_data),
           "jpeg_no_quantisation_table": no_tables}
  for kind, raw in cases.items():
    with pytest.raises(Exception):  # the independent reference rejects it
      Image.open(io.BytesIO(raw)).load()
    path = tmp_path / f"{kind}.png"
    path.write_bytes(raw)
    for role in ("rgb", "depth"):
      with pytest.raises(UserInputError) as err:
        _decode(str(path), role, str(path))
      assert str(path) in str(err.value), kind
  missing = tmp_path / "missing.png"
  with pytest.raises(UserInputError, match="file not found") as err:
    decode.decode_rgb(str(missing), str(missing))
  assert str(missing) in str(err.value)


def test_rgb_png_as_depth_names_the_mode():
  """An 8-bit RGB PNG given as depth is rejected with its Pillow mode named,
  and an 8-bit grey one unless allow_8bit."""
  rgb = _scene(48, 64)
  with pytest.raises(UserInputError, match="mode 'RGB'.*16-bit"):
    decode.decode_depth_png(_encode(Image.fromarray(rgb), "PNG"), "d.png")
  grey = _encode(Image.fromarray(rgb).convert("L"), "PNG")
  with pytest.raises(UserInputError, match="mode 'L'"):
    decode.decode_depth_png(grey, "d.png")
  np.testing.assert_array_equal(decode.decode_depth_png(grey, "d.png", allow_8bit=True),
                                _pillow_values(grey))
