"""Image decoding and example checks shared by the file-backed sources.

Every failure becomes a UserInputError that names the file, the problem and
the fix; nothing is silently replaced.
"""

from __future__ import annotations

import abc
import io
import logging
import warnings
from typing import Any, Callable

import cv2
import numpy as np
import simplejpeg
from PIL import Image

from percdepth_jax.errors import UserInputError


# Fast path: simplejpeg (TurboJPEG API of libjpeg-turbo) decodes JPEG 1.6-2x
# and OpenCV (libpng) PNG 1.1-1.5x faster than Pillow, straight into the
# output array. It is taken only for the file kinds whose decoded values are
# bit-identical to Pillow's (tests/test_data_decode.py: the libjpeg-turbo of
# Pillow's wheels, same IDCT and fancy upsampling; palette/grey expanded,
# alpha dropped, gAMA/iCCP ignored by both), told apart by reading the header here (Pillow's lazy
# open costs up to a tenth of a decode). Everything else, every file
# without its end marker (truncated), and every file the fast decoder
# rejects or only decodes with warnings goes through Pillow, whose errors
# are the ones reported.
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_END = b"IEND\xaeB`\x82"  # the IEND chunk with its CRC
_JPEG_END = b"\xff\xd9"
# RGB order; EXIF orientation is not applied here (nor by Pillow): dataset
# files stay as stored, photos for prediction are turned by data/photos.py.
_RGB_FLAGS = cv2.IMREAD_COLOR_RGB | cv2.IMREAD_IGNORE_ORIENTATION
# JPEG start-of-frame markers taken by the fast path: baseline, extended
# and progressive Huffman-coded (lossless and arithmetic-coded go to Pillow).
_JPEG_SOF = (0xC0, 0xC1, 0xC2)
# The largest image any decoder here takes, checked from the file's header
# before decoding: 48 and 50 MP phone photos pass (8160x6144 is 50.1 MP); a
# 196 MP black PNG of 570 KB (a decompression bomb) does not. A 60 MP image
# decodes to 180 MB of uint8 RGB; prediction's outputs at that size are
# about 1 GB in all.
MAX_PIXELS = 60_000_000


def read_bytes(data: bytes | str, name: str) -> bytes:
  if isinstance(data, bytes):
    return data
  try:
    with open(data, "rb") as f:
      return f.read()
  except FileNotFoundError:
    raise UserInputError(
        f"{name}: file not found. Check the path (paths in a manifest are "
        "relative to the manifest's folder).") from None
  except OSError as e:
    raise UserInputError(
        f"{name}: cannot read the file ({type(e).__name__}: {e}). Check that "
        "it is a readable image file.") from None


def check_pixels(height: int, width: int, name: str) -> None:
  """UserInputError for an image over MAX_PIXELS (from its header)."""
  if height * width > MAX_PIXELS:
    raise UserInputError(
        f"{name}: {width}x{height} pixels ({height * width / 1e6:.0f} MP) is more "
        f"than the {MAX_PIXELS / 1e6:.0f} MP this reads (the limit keeps a "
        "small file from filling the memory when decoded); downscale the image "
        "first, for example to 4000 pixels on the long side.")


def _pil_open(raw: bytes, name: str) -> Image.Image:
  """Pillow's lazy open (the header only), size checked before any decoding."""
  try:
    with warnings.catch_warnings():  # Pillow's warning (89 MP) is above MAX_PIXELS
      warnings.simplefilter("ignore", Image.DecompressionBombWarning)
      image = Image.open(io.BytesIO(raw))
  except Image.DecompressionBombError as e:  # over twice Pillow's own limit
    raise UserInputError(f"{name}: more than the {MAX_PIXELS / 1e6:.0f} MP this "
                         f"reads (Pillow: {e}); downscale the image first.") from None
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise UserInputError(
        f"{name}: cannot decode the image ({type(e).__name__}: {e}). The file "
        "is corrupt or truncated: re-export or re-download it, or remove it "
        "from the dataset.") from None
  check_pixels(image.height, image.width, name)
  return image


def _pil_decode(raw: bytes, name: str) -> Image.Image:
  """Fully decodes with Pillow (so truncation is detected here, not later)."""
  image = _pil_open(raw, name)
  try:
    image.load()
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise UserInputError(
        f"{name}: cannot decode the image ({type(e).__name__}: {e}). The file "
        "is corrupt or truncated: re-export or re-download it, or remove it "
        "from the dataset.") from None
  return image


def open_image(data: bytes | str, name: str) -> Image.Image:
  """Fully decodes an image with Pillow (truncation is detected here)."""
  return _pil_decode(read_bytes(data, name), name)


def _png_header(raw: bytes) -> tuple[int, int, int, int] | None:
  """(height, width, bit depth, colour type) of a complete still PNG, else None."""
  if not (raw.startswith(_PNG_SIGNATURE) and raw.endswith(_PNG_END)
          and raw[12:16] == b"IHDR"):
    return None
  width, height = int.from_bytes(raw[16:20], "big"), int.from_bytes(raw[20:24], "big")
  pos = 33  # chunks before the image data: an APNG (acTL) goes to Pillow
  while pos + 8 <= len(raw):
    kind = raw[pos + 4:pos + 8]
    if kind == b"IDAT":
      return height, width, raw[24], raw[25]
    if kind == b"acTL":
      return None
    pos += 12 + int.from_bytes(raw[pos:pos + 4], "big")
  return None


def _jpeg_header(raw: bytes) -> tuple[int, int, int] | None:
  """(height, width, components) of a complete 8-bit Huffman JPEG without an
  Adobe marker (CMYK/YCCK/RGB-transform files go to Pillow), else None."""
  if not (raw.startswith(b"\xff\xd8") and raw.endswith(_JPEG_END)):
    return None
  pos, frame = 2, None
  while pos + 4 <= len(raw) and raw[pos] == 0xFF:
    marker = raw[pos + 1]
    if marker == 0xFF:  # fill byte
      pos += 1
      continue
    length = int.from_bytes(raw[pos + 2:pos + 4], "big")
    if length < 2 or marker == 0x01 or 0xD0 <= marker <= 0xD9:
      return None  # not a well-formed header: let Pillow judge the file
    if marker == 0xDA:  # start of scan: the header is complete
      return frame
    if marker == 0xEE and raw[pos + 4:pos + 9] == b"Adobe":
      return None
    if 0xC0 <= marker <= 0xCF and marker not in (0xC4, 0xC8, 0xCC):
      if marker not in _JPEG_SOF or raw[pos + 4] != 8:
        return None
      frame = (int.from_bytes(raw[pos + 5:pos + 7], "big"),
               int.from_bytes(raw[pos + 7:pos + 9], "big"), raw[pos + 9])
    pos += 2 + length
  return None


def fast_rgb(raw: bytes, name: str = "image") -> np.ndarray | None:
  """The fast RGB decode where it equals Pillow's convert('RGB'), else None;
  a UserInputError for an image over MAX_PIXELS."""
  png = _png_header(raw)
  if png is not None:
    # 8-bit grey/RGB/palette, with or without alpha: OpenCV expands palette
    # and grey and drops alpha as Pillow does; neither applies gAMA/iCCP.
    height, width, bit_depth, colour = png
    check_pixels(height, width, name)
    if bit_depth != 8 or colour not in (0, 2, 3, 4, 6):
      return None
    out = cv2.imdecode(np.frombuffer(raw, np.uint8), _RGB_FLAGS)
  else:
    jpeg = _jpeg_header(raw)
    if jpeg is None or jpeg[2] not in (1, 3):
      return None
    height, width, _ = jpeg
    check_pixels(height, width, name)
    try:  # accurate IDCT and fancy upsampling, as Pillow decodes
      out = simplejpeg.decode_jpeg(raw, "RGB", fastdct=False, fastupsample=False,
                                   strict=True)
    except ValueError:  # corrupt, or recoverable only with warnings
      return None
  if out is None or out.shape != (height, width, 3):
    return None
  return out


def decode_rgb(data: bytes | str, name: str) -> np.ndarray:
  """uint8 HxWx3 from a PNG/JPEG (grey, palette and RGBA are converted)."""
  raw = read_bytes(data, name)
  out = fast_rgb(raw, name)
  if out is not None:
    return out
  image = _pil_decode(raw, name)
  if image.mode != "RGB":
    image = image.convert("RGB")
  return np.asarray(image)


def _fast_depth(raw: bytes, allow_8bit: bool, name: str = "image") -> np.ndarray | None:
  """OpenCV's decode of a 16-bit (or, if allowed, 8-bit) grey PNG, else None."""
  png = _png_header(raw)
  if png is None:
    return None
  check_pixels(png[0], png[1], name)
  if png[3] != 0 or png[2] not in ((8, 16) if allow_8bit else (16,)):
    return None
  out = cv2.imdecode(np.frombuffer(raw, np.uint8), cv2.IMREAD_UNCHANGED)
  # Anything but HxW (e.g. an unexpected alpha channel) is left to Pillow.
  if out is None or out.shape != png[:2]:
    return None
  return out


def decode_depth_png(data: bytes | str, name: str, *, allow_8bit: bool = False
                     ) -> np.ndarray:
  """The stored integer values of a depth PNG (uint16 or, if allowed, uint8)."""
  raw = read_bytes(data, name)
  out = _fast_depth(raw, allow_8bit, name)
  if out is not None:
    return out
  image = _pil_decode(raw, name)
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    return np.asarray(image).astype(np.uint16, copy=False)
  if image.mode == "L" and allow_8bit:
    return np.asarray(image)
  raise UserInputError(
      f"{name}: depth PNG has mode {image.mode!r}, expected a single-channel "
      "16-bit PNG (values = metres * depth_scale). Save depth as uint16, "
      "e.g. PIL.Image.fromarray(depth_mm.astype(np.uint16)).save(path).")


def make_example(image: np.ndarray, depth_m: np.ndarray, *, rgb_name: str,
                 depth_name: str, valid: np.ndarray | None = None
                 ) -> dict[str, Any]:
  """Checks an RGB/depth pair and builds the example dict (0 = invalid).

  `valid` may be passed when it is known cheaply (integer-coded depth:
  stored != 0, in which case depth_m is already 0 there).
  """
  if image.shape[:2] != depth_m.shape:
    raise UserInputError(
        f"{rgb_name} is {image.shape[0]}x{image.shape[1]} but {depth_name} is "
        f"{depth_m.shape[0]}x{depth_m.shape[1]}: RGB and depth must have the "
        "same size (register and resize the depth to the RGB image).")
  if valid is None:
    valid = np.isfinite(depth_m) & (depth_m > 0)
    depth_m = np.where(valid, depth_m, 0)
  if not valid.any():
    raise UserInputError(
        f"{depth_name}: no valid depth pixel (all zero or non-finite). Check "
        "the depth encoding/scale, or remove this frame.")
  return {"image": image, "depth": depth_m.astype(np.float32, copy=False),
          "valid": valid}


def scale_stored_depth(stored: np.ndarray, metres_per_unit: float
                       ) -> tuple[np.ndarray, np.ndarray]:
  """Integer-coded depth -> (float32 metres, valid); stored 0 = no measurement."""
  # One pass (no float32 temporary): a third of the time of astype + multiply.
  depth_m = np.multiply(stored, np.float32(metres_per_unit), dtype=np.float32)
  return depth_m, stored != 0


class SkipCounter:
  """Opt-in 'skip bad examples': returns None instead of raising, counted.

  The count is per process (with Grain worker processes each worker counts
  its own and logs each skip as a warning).
  """

  def __init__(self, skip: bool):
    self.skip = skip
    self.skipped: list[str] = []

  def __call__(self, load: Callable[[], dict[str, Any]]) -> dict[str, Any] | None:
    if not self.skip:
      return load()
    try:
      return load()
    except UserInputError as e:
      self.skipped.append(str(e))
      logging.warning("skipping bad example (%d so far): %s", len(self.skipped), e)
      return None


class FileSource(abc.ABC):
  """Base of the file-backed sources: `source[i]` is `load(i)`, or None for a
  bad example when the source was built with skip_bad (counted in `skipped`).

  Subclasses set `self._skip = SkipCounter(skip_bad)` and define `load` and
  `__len__`.
  """

  _skip: SkipCounter

  @abc.abstractmethod
  def load(self, index: int) -> dict[str, Any]:
    """Decodes example `index`; raises UserInputError on bad files."""

  @property
  def skipped(self) -> list[str]:
    """Messages of the examples skipped so far in this process (skip_bad)."""
    return self._skip.skipped

  def __getitem__(self, index: int) -> dict[str, Any] | None:
    return self._skip(lambda: self.load(index))
