"""Camera intrinsics: NYU Depth v2's Kinect, and scaling them to a frame size."""

from __future__ import annotations

import numpy as np

from percdepth_jax.errors import UserInputError

# The Kinect NYU Depth v2 was recorded with, at its 480x640 frames (fx, fy, cx, cy).
NYU_INTRINSICS = (518.8579, 519.46961, 325.58245, 253.73617)
NYU_HEIGHT, NYU_WIDTH = 480, 640


def nyu_intrinsics(height: int = NYU_HEIGHT, width: int = NYU_WIDTH) -> np.ndarray:
  """NYU's Kinect intrinsics scaled to HxW (pixel-centre convention), float32."""
  fx, fy, cx, cy = NYU_INTRINSICS
  sx, sy = width / NYU_WIDTH, height / NYU_HEIGHT
  return np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5,
                   (cy + 0.5) * sy - 0.5], np.float32)


def parse_intrinsics(text: str | None) -> tuple[float, float, float, float] | None:
  """"fx,fy,cx,cy" in pixels -> a tuple (None for None or an empty text)."""
  if text is None or not text.strip():
    return None
  try:
    values = tuple(float(v) for v in text.split(","))
  except ValueError:
    values = ()
  if len(values) != 4 or values[0] <= 0 or values[1] <= 0:
    raise UserInputError(f"intrinsics {text!r}: expected four numbers fx,fy,cx,cy "
                         "with fx, fy > 0 (pixels), e.g. 518.86,519.47,325.58,253.74.")
  return values
