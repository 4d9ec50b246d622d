"""Image decoding and example checks shared by the file-backed sources.

Every failure becomes a UserInputError that names the file, the problem and
the fix; nothing is silently replaced.
"""

from __future__ import annotations

import abc
import io
import logging
from typing import Any, Callable

import numpy as np
from PIL import Image

from percdepth_jax.errors import UserInputError


def open_image(data: bytes | str, name: str) -> Image.Image:
  """Fully decodes an image (so truncation is detected here, not later)."""
  try:
    image = Image.open(io.BytesIO(data) if isinstance(data, bytes) else data)
    image.load()
  except FileNotFoundError:
    raise UserInputError(
        f"{name}: file not found. Check the path (paths in a manifest are "
        "relative to the manifest's folder).") from None
  except Exception as e:  # Pillow raises OSError, SyntaxError, ValueError...
    raise UserInputError(
        f"{name}: cannot decode the image ({type(e).__name__}: {e}). The file "
        "is corrupt or truncated: re-export or re-download it, or remove it "
        "from the dataset.") from None
  return image


def decode_rgb(data: bytes | str, name: str) -> np.ndarray:
  """uint8 HxWx3 from a PNG/JPEG (grey and RGBA are converted)."""
  image = open_image(data, name)
  if image.mode != "RGB":
    image = image.convert("RGB")
  return np.asarray(image)


def decode_depth_png(data: bytes | str, name: str, *, allow_8bit: bool = False
                     ) -> np.ndarray:
  """The stored integer values of a depth PNG (uint16 or, if allowed, uint8)."""
  image = open_image(data, name)
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
  return stored.astype(np.float32) * np.float32(metres_per_unit), stored != 0


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
