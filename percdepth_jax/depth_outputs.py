"""Files a prediction is written as: metres .npy, 16-bit mm PNG, colour picture,
PLY point cloud, glTF surface (the demo's 3D view)."""

from __future__ import annotations

import pathlib

import matplotlib

matplotlib.use("Agg")
import numpy as np  # noqa: E402
from matplotlib import colormaps  # noqa: E402
from PIL import Image, ImageDraw  # noqa: E402

from percdepth_jax.data.camera import nyu_intrinsics  # noqa: E402

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
  # Colour table indices as matplotlib computes them from floats, looked up
  # as bytes: the same colours as cmap(normalised) * 255 without its
  # float64 RGBA copy (400 MB for a 12 MP photo).
  np.nan_to_num(normalised, copy=False)
  normalised *= cmap.N
  normalised[normalised == cmap.N] = cmap.N - 1
  picture = cmap(normalised.astype(np.int16), bytes=True)[..., :3]
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


def _srgb_to_linear(rgb_uint8: np.ndarray) -> np.ndarray:
  """glTF vertex colours are linear; photos are sRGB."""
  c = rgb_uint8.astype(np.float64) / 255.0
  return np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4).astype(np.float32)


def depth_mesh(depth_m_HxW: np.ndarray, rgb_HxWx3: np.ndarray,
               intrinsics: tuple[float, float, float, float], *,
               max_vertices: int = 120_000, max_jump: float = 0.1
               ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """The depth map as a coloured surface for 3D viewers.

  Returns (positions Nx3 float32 in glTF axes: x right, y up, z towards the
  viewer, i.e. camera (x, -y, -z); colours Nx3 float32, linear; triangles
  Mx3 uint32). Vertices are pixels on a regular grid (every `step`-th pixel,
  so that there are at most `max_vertices`); a grid cell is not filled where
  its corners' depths differ by more than `max_jump` of the nearest (an
  object boundary, not a surface).
  """
  height, width = depth_m_HxW.shape
  step = max(1, int(np.ceil(np.sqrt(height * width / max_vertices))))
  rows, cols = np.arange(0, height, step), np.arange(0, width, step)
  points = point_cloud(depth_m_HxW, intrinsics)[np.ix_(rows, cols)]
  positions = np.nan_to_num(points * np.array([1.0, -1.0, -1.0])).reshape(-1, 3).astype(np.float32)
  colours = _srgb_to_linear(rgb_HxWx3[np.ix_(rows, cols)].reshape(-1, 3))
  z = points[..., 2]
  index = np.arange(z.size, dtype=np.uint32).reshape(z.shape)
  corners = [index[:-1, :-1], index[:-1, 1:], index[1:, :-1], index[1:, 1:]]
  zc = np.stack([z[:-1, :-1], z[:-1, 1:], z[1:, :-1], z[1:, 1:]])
  with np.errstate(invalid="ignore", divide="ignore"):
    smooth = (np.all(np.isfinite(zc) & (zc > 0), axis=0)
              & (zc.max(axis=0) <= (1.0 + max_jump) * zc.min(axis=0)))
  a, b, c, d = (corner[smooth] for corner in corners)
  # Counter-clockwise seen from the camera (glTF front faces).
  triangles = np.concatenate([np.stack([a, c, b], 1), np.stack([b, c, d], 1)])
  return positions, colours, triangles.astype(np.uint32)


def write_glb(path: str | pathlib.Path, depth_m_HxW: np.ndarray, rgb_HxWx3: np.ndarray,
              intrinsics: tuple[float, float, float, float], **mesh_options) -> int:
  """Binary glTF 2.0 of `depth_mesh` (unlit vertex colours), what browser 3D
  viewers load; returns the number of triangles."""
  import json
  import struct
  positions, colours, triangles = depth_mesh(depth_m_HxW, rgb_HxWx3, intrinsics,
                                             **mesh_options)
  blobs = [positions.tobytes(), colours.tobytes(), triangles.tobytes()]
  offsets = np.cumsum([0] + [len(b) for b in blobs[:-1]]).tolist()
  finite = positions[np.isfinite(positions).all(axis=1)]
  lo = finite.min(axis=0).tolist() if len(finite) else [0.0] * 3
  hi = finite.max(axis=0).tolist() if len(finite) else [0.0] * 3
  gltf = {
      "asset": {"version": "2.0", "generator": "percdepth_jax"},
      "extensionsUsed": ["KHR_materials_unlit"],
      "scene": 0, "scenes": [{"nodes": [0]}], "nodes": [{"mesh": 0}],
      "meshes": [{"primitives": [{"attributes": {"POSITION": 0, "COLOR_0": 1},
                                  "indices": 2, "material": 0, "mode": 4}]}],
      "materials": [{"pbrMetallicRoughness": {"metallicFactor": 0.0, "roughnessFactor": 1.0},
                     "doubleSided": True, "extensions": {"KHR_materials_unlit": {}}}],
      "buffers": [{"byteLength": sum(len(b) for b in blobs)}],
      "bufferViews": [{"buffer": 0, "byteOffset": offsets[0], "byteLength": len(blobs[0]),
                       "target": 34962},
                      {"buffer": 0, "byteOffset": offsets[1], "byteLength": len(blobs[1]),
                       "target": 34962},
                      {"buffer": 0, "byteOffset": offsets[2], "byteLength": len(blobs[2]),
                       "target": 34963}],
      "accessors": [{"bufferView": 0, "componentType": 5126, "count": len(positions),
                     "type": "VEC3", "min": lo, "max": hi},
                    {"bufferView": 1, "componentType": 5126, "count": len(colours),
                     "type": "VEC3"},
                    {"bufferView": 2, "componentType": 5125, "count": triangles.size,
                     "type": "SCALAR"}],
  }
  text = json.dumps(gltf, separators=(",", ":")).encode()
  text += b" " * (-len(text) % 4)
  binary = b"".join(blobs)
  binary += b"\0" * (-len(binary) % 4)
  with open(path, "wb") as f:
    f.write(struct.pack("<4sII", b"glTF", 2, 12 + 8 + len(text) + 8 + len(binary)))
    f.write(struct.pack("<I4s", len(text), b"JSON") + text)
    f.write(struct.pack("<I4s", len(binary), b"BIN\0") + binary)
  return len(triangles)


def write_prediction(stem: str | pathlib.Path, depth_m_HxW: np.ndarray, rgb_HxWx3: np.ndarray,
                     *, intrinsics: tuple[float, float, float, float] | None = None,
                     ply: bool = False, glb: bool = False) -> dict[str, pathlib.Path]:
  """The files of one prediction, `<stem>.npy` (float32 metres),
  `<stem>_depth.png` (uint16 mm), `<stem>_color.png`, and on request
  `<stem>.ply` and `<stem>.glb` (intrinsics default to NYU's scaled to the
  image). Returns {"npy", "depth_png", "color_png", "ply", "glb": path}."""
  stem = pathlib.Path(stem)
  paths = {"npy": stem.with_name(stem.name + ".npy"),
           "depth_png": stem.with_name(stem.name + "_depth.png"),
           "color_png": stem.with_name(stem.name + "_color.png")}
  np.save(paths["npy"], depth_m_HxW.astype(np.float32))
  depth_to_mm_png(depth_m_HxW, paths["depth_png"])
  Image.fromarray(colorize(depth_m_HxW)).save(paths["color_png"])
  k = intrinsics or tuple(float(v) for v in nyu_intrinsics(*depth_m_HxW.shape))
  if ply:
    paths["ply"] = stem.with_name(stem.name + ".ply")
    write_ply(paths["ply"], depth_m_HxW, rgb_HxWx3, k)
  if glb:
    paths["glb"] = stem.with_name(stem.name + ".glb")
    write_glb(paths["glb"], depth_m_HxW, rgb_HxWx3, k)
  return paths
