"""Files a prediction is written as: metres .npy, 16-bit mm PNG, colour picture, PLY."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

_BAR_WIDTH = 64  # pixels of the colour bar strip right of the picture


def depth_to_mm_png(depth_m_HxW: np.ndarray, path: str | pathlib.Path) -> None:
  """uint16 millimetres (0 = no depth), the common RGB-D format."""
  mm = np.round(np.nan_to_num(depth_m_HxW, nan=0.0) * 1000.0)
  Image.fromarray(np.clip(mm, 0, 65535).astype(np.uint16)).save(path)


def colorize(depth_m_HxW: np.ndarray, lo: float | None = None,
             hi: float | None = None) -> np.ndarray:
  """uint8 HxWx3 with a colour bar strip: near = warm (turbo, reversed).

  The strip right of the picture runs from `lo` (top, warm) to `hi` (bottom)
  and carries both values in metres, so the picture can be read alone.
  """
  finite = depth_m_HxW[np.isfinite(depth_m_HxW)]
  lo = float(finite.min()) if lo is None and finite.size else (lo or 0.0)
  hi = float(finite.max()) if hi is None and finite.size else (hi or 1.0)
  hi = max(hi, lo + 1e-6)
  cmap = colormaps["turbo_r"]
  normalised = np.clip((depth_m_HxW - lo) / (hi - lo), 0.0, 1.0)
  picture = (cmap(np.nan_to_num(normalised))[..., :3] * 255).astype(np.uint8)
  height = picture.shape[0]
  ramp = np.linspace(0.0, 1.0, height)[:, None].repeat(_BAR_WIDTH // 3, axis=1)
  bar = np.full((height, _BAR_WIDTH, 3), 255, np.uint8)
  bar[:, 4:4 + ramp.shape[1]] = (cmap(ramp)[..., :3] * 255).astype(np.uint8)
  canvas = Image.fromarray(np.concatenate([picture, bar], axis=1))
  draw = ImageDraw.Draw(canvas)
  x = picture.shape[1] + ramp.shape[1] + 6
  draw.text((x, 2), f"{lo:.2f}m", fill=(0, 0, 0))
  draw.text((x, max(height - 12, 14)), f"{hi:.2f}m", fill=(0, 0, 0))
  return np.asarray(canvas)


def point_cloud(depth_m_HxW: np.ndarray, intrinsics: tuple[float, float, float, float]
                ) -> np.ndarray:
  """Camera-frame points (x right, y down, z forward), metres, HxWx3."""
  fx, fy, cx, cy = intrinsics
  height, width = depth_m_HxW.shape
  v, u = np.mgrid[0:height, 0:width].astype(np.float64)
  z = depth_m_HxW.astype(np.float64)
  return np.stack([(u - cx) * z / fx, (v - cy) * z / fy, z], axis=-1)


def write_ply(path: str | pathlib.Path, depth_m_HxW: np.ndarray, rgb_HxWx3: np.ndarray,
              intrinsics: tuple[float, float, float, float]) -> int:
  """Binary little-endian PLY of the coloured points with finite, positive
  depth; returns the number of points."""
  points = point_cloud(depth_m_HxW, intrinsics).reshape(-1, 3)
  colours = rgb_HxWx3.reshape(-1, 3)
  keep = np.isfinite(points).all(axis=1) & (points[:, 2] > 0)
  vertex = np.empty(int(keep.sum()), dtype=[("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
                                            ("red", "u1"), ("green", "u1"), ("blue", "u1")])
  for i, name in enumerate("xyz"):
    vertex[name] = points[keep, i]
  for i, name in enumerate(("red", "green", "blue")):
    vertex[name] = colours[keep, i]
  header = ("ply\nformat binary_little_endian 1.0\n"
            f"element vertex {len(vertex)}\n"
            "property float x\nproperty float y\nproperty float z\n"
            "property uchar red\nproperty uchar green\nproperty uchar blue\n"
            "end_header\n")
  with open(path, "wb") as f:
    f.write(header.encode("ascii"))
    f.write(vertex.tobytes())
  return len(vertex)


def read_ply(path: str | pathlib.Path) -> np.ndarray:
  """Reads back what `write_ply` writes (structured array x, y, z, red, green, blue)."""
  data = pathlib.Path(path).read_bytes()
  end = data.index(b"end_header\n") + len(b"end_header\n")
  dtype = [("x", "<f4"), ("y", "<f4"), ("z", "<f4"),
           ("red", "u1"), ("green", "u1"), ("blue", "u1")]
  return np.frombuffer(data[end:], dtype=dtype)
