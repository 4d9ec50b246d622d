"""Predict depth for images: .npy metres, 16-bit mm PNG, colour picture, PLY.

  python scripts/predict.py --checkpoint DIR --input FILE|DIR [--output DIR] [--no-flip] [--ply] [--intrinsics fx,fy,cx,cy] [--resolution train|native|HxW] [--batch B]

Photos are read as viewers show them (EXIF orientation applied; HEIC/HEIF
with the `photos` extra; CMYK, palette, grey and 16-bit images converted;
the first frame of an animation), and what was done is printed per file.
For each image <stem> it writes <stem>.npy (float32 metres, input
resolution), <stem>_depth.png (uint16 mm), <stem>_color.png (near = warm,
range on the colour bar) and with --ply <stem>.ply (coloured points, metres,
camera frame x right, y down, z forward; intrinsics default to NYU's scaled
to the image size).
--resolution: where the network runs. train (default): each photo resized
to about the pixel count of the frames the model was trained at (aspect
kept, sides multiples of 32), the depth resized back; native: at the
photo's own size (slow and memory-hungry for phone photos, and far from
the scale the model learnt); HxW: exactly that size. Photos that run at one
size are batched and compiled once; a line per photo reports progress.
Photos over 60 MP are refused (decode.MAX_PIXELS).
Exit code 0; 1 if an unreadable or too large image was skipped (it is
named); 2 on bad input.
"""

from __future__ import annotations

import collections
import pathlib
import sys
import time

import numpy as np
from absl import flags

from percdepth_jax.cli import run_script, use_compilation_cache
from percdepth_jax.errors import UserInputError

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "workdir[:best] or model directory", flag_values=FLAGS)
flags.DEFINE_string("input", None, "an image or a folder of images", flag_values=FLAGS)
flags.DEFINE_string("output", "predictions", "output folder", flag_values=FLAGS)
flags.DEFINE_bool("no-flip", False, "no flip test-time averaging", flag_values=FLAGS)
flags.DEFINE_bool("ply", False, "also write coloured point clouds", flag_values=FLAGS)
flags.DEFINE_string("intrinsics", None, "fx,fy,cx,cy in pixels", flag_values=FLAGS)
flags.DEFINE_string("resolution", "train",
                    "where the network runs: train (the training scale), native or HxW",
                    flag_values=FLAGS)
flags.DEFINE_integer("batch", 8, "images per forward pass", flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint", "input"], flag_values=FLAGS)


def _inputs(path: pathlib.Path) -> list[pathlib.Path]:
  if path.is_file():
    return [path]
  if path.is_dir():
    from percdepth_jax.data.photos import PHOTO_SUFFIXES
    files = sorted(p for p in path.iterdir() if p.suffix.lower() in PHOTO_SUFFIXES)
    if not files:
      raise UserInputError(f"--input {path} holds no images ({', '.join(PHOTO_SUFFIXES)}).")
    return files
  raise UserInputError(f"--input {path} does not exist.")


class _Batches:
  """Photos waiting for the network, grouped by the size it runs at: a
  group runs when it holds --batch photos, and at the end, so each network
  size compiles once. A photo waits resized to the network's size (with its
  full-size pixels only for --ply), so memory stays bounded whatever the
  folder holds; "native" groups hold whole images of one size."""

  def __init__(self, model, args, out_dir, intrinsics, total: int):
    self.model, self.args, self.out_dir, self.intrinsics = model, args, out_dir, intrinsics
    self.total, self.done = total, 0
    self.groups = collections.defaultdict(list)

  def add(self, path: pathlib.Path, rgb: np.ndarray, resolution) -> None:
    from percdepth_jax import inference
    height, width = rgb.shape[:2]
    if resolution == inference.NATIVE:
      key, x = ("native", height, width), rgb
    else:
      size = inference.run_size(self.model, height, width, resolution)
      key, x = ("resize", *size), inference.resize_image(rgb, size)
    self.groups[key].append((path, x, (height, width), rgb if self.args.ply else None))
    if len(self.groups[key]) >= self.args.batch:
      self.run(key)

  def run(self, key) -> None:
    from percdepth_jax import depth_outputs, inference
    items, flip = self.groups.pop(key), not self.args.no_flip
    x_NxHxWx3 = np.stack([x for _, x, _, _ in items])
    if key[0] == "native":
      depths = inference.predict_depth(self.model, x_NxHxWx3, flip, inference.NATIVE)
      network = inference.network_size(*key[1:])
    else:
      small = inference.network_depth(self.model, x_NxHxWx3, flip)
      depths = [inference.resize_depth(d, hw) for d, (_, _, hw, _) in zip(small, items)]
      network = key[1:]
    for (path, _, (height, width), rgb), depth_m in zip(items, depths):
      # rgb is only read for the point cloud (--ply).
      depth_outputs.write_prediction(self.out_dir / path.stem, depth_m, rgb,
                                     intrinsics=self.intrinsics, ply=self.args.ply)
      self.done += 1
      print(f"{self.done}/{self.total} {path.name}: {width}x{height}, network at "
            f"{network[1]}x{network[0]}", file=sys.stderr, flush=True)

  def finish(self) -> None:
    for key in list(self.groups):
      self.run(key)


def run(args) -> int:
  use_compilation_cache()
  import percdepth_jax
  from percdepth_jax import inference
  from percdepth_jax.data.photos import read_photo
  from percdepth_jax.data.camera import parse_intrinsics

  if args.batch < 1:
    raise UserInputError(f"--batch {args.batch} must be >= 1.")
  try:
    intrinsics = parse_intrinsics(args.intrinsics)
  except UserInputError as e:
    raise UserInputError(f"--{e}") from None
  resolution = inference.parse_resolution(args.resolution)
  files = _inputs(pathlib.Path(args.input))
  model = percdepth_jax.load_model(args.checkpoint)
  resolution = inference.effective_resolution(model, resolution)
  out_dir = pathlib.Path(args.output)
  out_dir.mkdir(parents=True, exist_ok=True)

  # One photo decoded at a time; a bad or oversized file is reported and skipped.
  batches, skipped = _Batches(model, args, out_dir, intrinsics, len(files)), []
  t0 = time.perf_counter()
  for path in files:
    try:
      photo = read_photo(path)
    except UserInputError as e:
      print(f"skipped: {e}", file=sys.stderr)
      skipped.append(path)
      batches.total -= 1
      continue
    for note in photo.notes:
      print(f"{path}: {note}", file=sys.stderr)
    batches.add(path, photo.rgb, resolution)
  batches.finish()
  done, elapsed = batches.done, time.perf_counter() - t0
  print(f"{done} images in {elapsed:.1f}s ({done / max(elapsed, 1e-9):.2f} images/s, "
        f"compilation included) -> {out_dir}", file=sys.stderr)
  if skipped:
    print(f"{len(skipped)} image(s) skipped (unreadable or too large): "
          + ", ".join(str(p) for p in skipped), file=sys.stderr)
    return 1
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
