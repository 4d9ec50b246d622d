"""Camera intrinsics: NYU Depth v2's Kinect, and scaling them to a frame size."""

from __future__ import annotations

import numpy as np

# The Kinect NYU Depth v2 was recorded with, at its 480x640 frames (fx, fy, cx, cy).
NYU_INTRINSICS = (518.8579, 519.46961, 325.58245, 253.73617)
NYU_HEIGHT, NYU_WIDTH = 480, 640


def nyu_intrinsics(height: int = NYU_HEIGHT, width: int = NYU_WIDTH) -> np.ndarray:
  """NYU's Kinect intrinsics scaled to HxW (pixel-centre convention), float32."""
  fx, fy, cx, cy = NYU_INTRINSICS
  sx, sy = width / NYU_WIDTH, height / NYU_HEIGHT
  return np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5,
                   (cy + 0.5) * sy - 0.5], np.float32)
