"""RGB-D folder datasets: a manifest.csv next to rgb/ and depth/ files.

manifest.csv has the header `rgb,depth` plus optional `depth_scale,fx,fy,cx,cy`
columns; paths are relative to the manifest. Depth is a 16-bit PNG (metres =
value / depth_scale, default 1000) or a float32 `.npy` in metres; 0 or
non-finite means invalid (docs/data.md, 'RGB-D folder').
"""

from __future__ import annotations

import csv
import os
import pathlib
from typing import Any

import cv2
import numpy as np

from percdepth_jax.data import decode
from percdepth_jax.errors import UserInputError

_OPTIONAL = ("depth_scale", "fx", "fy", "cx", "cy")


def _float(value: str, column: str, manifest: pathlib.Path, row: int) -> float:
  try:
    x = float(value)
  except ValueError:
    x = float("nan")
  if not np.isfinite(x) or x <= 0:
    raise UserInputError(
        f"{manifest}, row {row}: column {column!r} is {value!r}, expected a "
        "positive number.")
  return x


class FolderSource(decode.FileSource):
  """Random-access source over the rows of a manifest.csv."""

  def __init__(self, manifest: str | os.PathLike, *, skip_bad: bool = False,
               check_files: bool = True):
    self.manifest = pathlib.Path(manifest)
    self.root = self.manifest.parent
    if not self.manifest.is_file():
      raise UserInputError(
          f"{self.manifest}: manifest not found. Pass the path of a manifest.csv "
          "(header rgb,depth[,depth_scale,fx,fy,cx,cy]).")
    with open(self.manifest, newline="", encoding="utf-8-sig") as f:  # Excel BOMs
      reader = csv.DictReader(f)
      header = [h.strip() for h in (reader.fieldnames or [])]
      rows = [{k.strip(): (v or "").strip() for k, v in r.items() if k}
              for r in reader]
    if "rgb" not in header or "depth" not in header:
      raise UserInputError(
          f"{self.manifest}: header is {header}, it must contain the columns "
          "'rgb' and 'depth' (optional: depth_scale, fx, fy, cx, cy).")
    if not rows:
      raise UserInputError(f"{self.manifest}: no rows; list at least one rgb,depth pair.")
    self.rows: list[dict[str, Any]] = []
    for i, r in enumerate(rows, start=2):  # row 1 is the header
      entry = {"rgb": r["rgb"], "depth": r["depth"], "row": i}
      if not entry["rgb"] or not entry["depth"]:
        raise UserInputError(f"{self.manifest}, row {i}: empty rgb or depth path.")
      entry["depth_scale"] = (_float(r["depth_scale"], "depth_scale", self.manifest, i)
                              if r.get("depth_scale") else 1000.0)
      cam = [r.get(k, "") for k in ("fx", "fy", "cx", "cy")]
      if any(cam):
        entry["intrinsics"] = np.array(
            [_float(v, k, self.manifest, i) for v, k in zip(cam, ("fx", "fy", "cx", "cy"))],
            np.float32)
      self.rows.append(entry)
    if check_files:  # fail at start-up rather than hours into training
      missing = [(e["row"], p) for e in self.rows for p in (e["rgb"], e["depth"])
                 if not (self.root / p).is_file()]
      if missing and not skip_bad:
        shown = "; ".join(f"row {r}: {self.root / p}" for r, p in missing[:5])
        raise UserInputError(
            f"{self.manifest}: {len(missing)} listed file(s) do not exist ({shown}"
            f"{' ...' if len(missing) > 5 else ''}). Fix the paths (relative to "
            "the manifest) or remove those rows.")
    self._skip = decode.SkipCounter(skip_bad)


  def __len__(self) -> int:
    return len(self.rows)

  def load(self, index: int) -> dict[str, Any]:
    """Decodes row `index`; raises UserInputError on bad files."""
    entry = self.rows[index]
    rgb_path, depth_path = self.root / entry["rgb"], self.root / entry["depth"]
    image = decode.decode_rgb(str(rgb_path), str(rgb_path))
    if depth_path.suffix.lower() == ".npy":
      try:
        depth = np.load(depth_path, allow_pickle=False)
      except FileNotFoundError:
        raise UserInputError(f"{depth_path}: file not found.") from None
      except Exception as e:
        raise UserInputError(
            f"{depth_path}: cannot read the .npy depth ({e}); save it with "
            "np.save(path, depth_m.astype(np.float32)).") from None
      if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise UserInputError(
            f"{depth_path}: .npy depth must be a 2-D float array in metres, got "
            f"{depth.dtype} {depth.shape}.")
      depth_m = depth.astype(np.float32)
      valid = None
    else:
      stored = decode.decode_depth_png(str(depth_path), str(depth_path))
      depth_m, valid = decode.scale_stored_depth(stored, 1.0 / entry["depth_scale"])
    example = decode.make_example(image, depth_m, rgb_name=str(rgb_path),
                                  depth_name=str(depth_path), valid=valid)
    if "intrinsics" in entry:
      example["intrinsics"] = entry["intrinsics"].copy()
    example["name"] = pathlib.Path(entry["rgb"]).stem
    return example

  def __repr__(self) -> str:
    return f"FolderSource({str(self.manifest)!r}, {len(self)} examples)"


def _png_bytes(array: np.ndarray, compression: int) -> bytes:
  # Level 0 writes stored (uncompressed) deflate blocks without row filters,
  # the one PNG layout that decodes at about memcpy speed (~4x faster than
  # inflating and unfiltering a level-6 file); Pillow cannot switch the row
  # filters off (its level 0 still needs unfiltering), OpenCV can.
  if compression == 0:
    params = [cv2.IMWRITE_PNG_COMPRESSION, 0,
              cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_NONE]
  else:
    params = [cv2.IMWRITE_PNG_COMPRESSION, compression]
  if array.ndim == 3:  # OpenCV writes BGR
    array = np.ascontiguousarray(array[..., ::-1])
  ok, buf = cv2.imencode(".png", array, params)
  if not ok:
    raise UserInputError(f"cannot encode a {array.dtype} {array.shape} array as PNG.")
  return buf.tobytes()


def write_folder(out_dir: str | os.PathLike, examples, *, depth_scale: float = 1000.0,
                 png_compression: int = 0) -> pathlib.Path:
  """Writes examples as an RGB-D folder (rgb/*.png, depth/*.png uint16).

  Depth is stored as round(depth_m * depth_scale), 0 where invalid; the
  manifest records depth_scale and, when the examples carry them, intrinsics.
  PNGs are uncompressed by default (`png_compression=0`: 1.5 MB per 480x640
  frame, fastest to decode); 1-9 are zlib levels (0.13 MB per synthetic
  480x640 frame at 6, decoding ~4x slower). Returns the manifest path.
  """
  if not 0 <= png_compression <= 9:
    raise UserInputError(
        f"png_compression must be 0 (none) to 9 (smallest), got {png_compression}.")
  out = pathlib.Path(out_dir)
  (out / "rgb").mkdir(parents=True, exist_ok=True)
  (out / "depth").mkdir(parents=True, exist_ok=True)
  lines = []
  with_cam = None
  for i, ex in enumerate(examples):
    name = ex.get("name", f"{i:06d}")
    stored = np.round(np.where(ex["valid"], ex["depth"], 0) * depth_scale)
    if stored.max() > 65535:
      raise UserInputError(
          f"{name}: depth up to {stored.max() / depth_scale:.1f} m does not fit "
          f"a 16-bit PNG at depth_scale {depth_scale}; use a smaller scale.")
    (out / "rgb" / f"{name}.png").write_bytes(
        _png_bytes(np.asarray(ex["image"], np.uint8), png_compression))
    (out / "depth" / f"{name}.png").write_bytes(
        _png_bytes(stored.astype(np.uint16), png_compression))
    if with_cam is None:
      with_cam = "intrinsics" in ex
    row = [f"rgb/{name}.png", f"depth/{name}.png", f"{depth_scale:g}"]
    if with_cam:
      row += [f"{float(x):.6f}" for x in ex["intrinsics"]]
    lines.append(",".join(row))
  header = "rgb,depth,depth_scale" + (",fx,fy,cx,cy" if with_cam else "")
  manifest = out / "manifest.csv"
  manifest.write_text("\n".join([header] + lines) + "\n")
  return manifest
