"""Centre crop of a source's examples, e.g. to sizes the network takes
(multiples of 32) for datasets whose frames are not."""

from __future__ import annotations

from typing import Any

import numpy as np

from percdepth_jax.errors import UserInputError


def parse_size(text: str, what: str) -> tuple[int, int] | None:
  """"H,W" (or "HxW") -> (H, W); "" -> None."""
  if not text:
    return None
  parts = text.replace("x", ",").split(",")
  try:
    height, width = (int(p) for p in parts)
  except ValueError:
    raise UserInputError(f"{what}={text!r} is not a size; write it as H,W "
                         "(for example 448,608).") from None
  if height < 1 or width < 1:
    raise UserInputError(f"{what}={text!r}: both sizes must be positive.")
  return height, width


class CenterCropSource:
  """`source[i]` cropped to height x width about its centre.

  Image, depth and validity are cropped together and intrinsics, when an
  example has them (fx, fy, cx, cy in pixels), have the principal point
  moved with the crop. A frame smaller than the crop is an error naming it.
  """

  def __init__(self, source, height: int, width: int):
    self.source, self.height, self.width = source, height, width

  def __len__(self) -> int:
    return len(self.source)

  def __repr__(self) -> str:
    return f"{self.source!r} cropped to {self.height}x{self.width}"

  @property
  def skipped(self) -> list[str]:
    return getattr(self.source, "skipped", [])

  def __getitem__(self, index: int) -> dict[str, Any] | None:
    example = self.source[index]
    if example is None:  # skipped as bad by the source
      return None
    h, w = example["depth"].shape
    if h < self.height or w < self.width:
      raise UserInputError(
          f"{example.get('name', f'example {index}')} is {h}x{w}, smaller than "
          f"the crop {self.height}x{self.width}; lower config.data.crop.")
    top, left = (h - self.height) // 2, (w - self.width) // 2
    rows, cols = slice(top, top + self.height), slice(left, left + self.width)
    out = dict(example)
    for key in ("image", "depth", "valid"):
      out[key] = np.ascontiguousarray(example[key][rows, cols])
    if "intrinsics" in example:
      fx, fy, cx, cy = example["intrinsics"]
      out["intrinsics"] = np.array([fx, fy, cx - left, cy - top],
                                   example["intrinsics"].dtype)
    return out
