"""People's own pictures as their viewers show them, for prediction.

Phones store portrait photos sideways with an EXIF orientation tag, write
HEIC, and tools save CMYK JPEGs, palette and 16-bit PNGs, greyscale images
and animations. `read_photo` turns each into the upright uint8 RGB image a
viewer displays, and says what it did. Training and evaluation data keep
their stored orientation (`decode.decode_rgb`): datasets store depth in the
same pixel grid as the RGB, so turning one and not the other would misalign
them.
"""

from __future__ import annotations

import dataclasses
import io
import os

import numpy as np
from PIL import Image

from percdepth_jax.data import decode
from percdepth_jax.errors import UserInputError

ORIENTATION_TAG = 0x0112  # EXIF "Orientation"
# Files a folder of photos may hold (HEIC/HEIF need the `photos` extra).
PHOTO_SUFFIXES = (".png", ".jpg", ".jpeg", ".heic", ".heif", ".webp", ".tif",
                  ".tiff", ".bmp", ".gif")
HEIF_EXTRA_HINT = ('pip install -e ".[photos]" (or pip install pillow-heif)')
# ISO-BMFF brands of HEIF still images and sequences (the `ftyp` box).
_HEIF_BRANDS = (b"heic", b"heix", b"heim", b"heis", b"hevc", b"hevx", b"mif1",
                b"msf1", b"avif", b"avis")


@dataclasses.dataclass(frozen=True)
class Photo:
  """rgb: uint8 H x W x 3 as displayed; notes: what was done to get it
  (turned by the EXIF orientation, converted from CMYK, frame used...)."""
  rgb: np.ndarray
  notes: tuple[str, ...] = ()


def orient(image_HxWxC: np.ndarray, orientation: int) -> np.ndarray:
  """Applies an EXIF orientation (1-8) to stored pixels: the displayed image,
  as `PIL.ImageOps.exif_transpose` turns it."""
  turns = {
      1: lambda a: a,
      2: lambda a: a[:, ::-1],                   # mirrored
      3: lambda a: a[::-1, ::-1],                # upside down
      4: lambda a: a[::-1],                      # mirrored vertically
      5: lambda a: a.transpose(1, 0, 2),         # mirrored, turned
      6: lambda a: np.rot90(a, -1),              # turned: rotate clockwise
      7: lambda a: np.rot90(a, 2).transpose(1, 0, 2),
      8: lambda a: np.rot90(a, 1),               # rotate anticlockwise
  }
  return np.ascontiguousarray(turns.get(orientation, turns[1])(image_HxWxC))


def _is_heif(raw: bytes) -> bool:
  return raw[4:8] == b"ftyp" and raw[8:12] in _HEIF_BRANDS


def _open_heif(raw: bytes, name: str) -> Image.Image:
  try:
    import pillow_heif
  except ImportError:
    raise UserInputError(
        f"{name}: HEIC/HEIF photos are read with pillow-heif, which is not "
        f"installed: {HEIF_EXTRA_HINT}, or convert the photo to JPEG.") from None
  pillow_heif.register_heif_opener()
  return decode.open_image(raw, name)


def _orientation(image: Image.Image) -> int:
  try:
    value = int(image.getexif().get(ORIENTATION_TAG, 1))
  except Exception:  # a malformed EXIF block: show the pixels as stored
    return 1
  return value if 1 <= value <= 8 else 1


def _to_rgb(image: Image.Image, notes: list[str]) -> np.ndarray:
  """Pillow image of any mode -> uint8 RGB, values as a viewer shows them."""
  if image.mode in ("I;16", "I;16B", "I;16L", "I"):
    # 16-bit grey: scale to 8 bits (Pillow's convert would clip at 255).
    grey = np.asarray(image).astype(np.float64)
    grey8 = np.clip(np.round(grey / 257.0), 0, 255).astype(np.uint8)
    notes.append("16-bit grey values scaled to 8 bits")
    return np.repeat(grey8[..., None], 3, axis=-1)
  if image.mode == "F":
    raise UserInputError(
        "a floating-point image has no display range: save it as an 8- or "
        "16-bit PNG or a JPEG.")
  if image.mode == "CMYK":
    notes.append("converted from CMYK (Pillow's conversion; an embedded ICC "
                 "profile is not applied)")
  if image.mode in ("P", "PA") and "transparency" in image.info:
    image = image.convert("RGBA")  # Pillow's route for palette transparency
  return np.asarray(image.convert("RGB") if image.mode != "RGB" else image)


def read_photo(path: str | os.PathLike | bytes, name: str | None = None) -> Photo:
  """The upright uint8 RGB image of a photo file (or its bytes).

  Turned by its EXIF orientation in every decoder path; HEIC/HEIF through
  pillow-heif (the `photos` extra); CMYK, palette, greyscale and 16-bit
  images converted to 8-bit RGB; alpha dropped; of a multi-frame file (GIF,
  APNG, TIFF, HEIF sequence) the first frame, said in the notes. Errors are UserInputErrors naming `name`.
  """
  name = name or (str(path) if not isinstance(path, bytes) else "image")
  raw = decode.read_bytes(path if isinstance(path, bytes) else os.fspath(path), name)
  notes: list[str] = []
  # The fast decoders take 8-bit still PNGs and JPEGs only; the header read
  # here is for the orientation tag (Pillow opens lazily, no decode).
  rgb = None if _is_heif(raw) else decode.fast_rgb(raw, name)
  if rgb is not None:
    orientation = _orientation(Image.open(io.BytesIO(raw)))
  else:
    image = _open_heif(raw, name) if _is_heif(raw) else decode.open_image(raw, name)
    frames = getattr(image, "n_frames", 1)
    if frames > 1:
      notes.append(f"first frame used of {frames}")
    orientation = _orientation(image)
    try:
      rgb = _to_rgb(image, notes)
    except UserInputError as e:
      raise UserInputError(f"{name}: {e}") from None
  if orientation != 1:
    height, width = rgb.shape[:2]
    rgb = orient(rgb, orientation)
    notes.append(f"turned by its EXIF orientation {orientation} "
                 f"(stored {width}x{height}, shown {rgb.shape[1]}x{rgb.shape[0]})")
  return Photo(rgb, tuple(notes))
