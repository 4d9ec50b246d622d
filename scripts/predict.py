"""Predict depth for images: .npy metres, 16-bit mm PNG, colour picture, PLY.

  python scripts/predict.py --checkpoint DIR --input FILE|DIR [--output DIR] [--no-flip] [--ply] [--intrinsics fx,fy,cx,cy] [--batch B]

Photos are read as viewers show them (EXIF orientation applied; HEIC/HEIF
with the `photos` extra; CMYK, palette, grey and 16-bit images converted;
the first frame of an animation), and what was done is printed per file.
For each image <stem> it writes <stem>.npy (float32 metres, input
resolution), <stem>_depth.png (uint16 mm), <stem>_color.png (near = warm,
range on the colour bar) and with --ply <stem>.ply (coloured points, metres,
camera frame x right, y down, z forward; intrinsics default to NYU's scaled
to the image size). Images of one size are batched and compiled once.
Exit code 0; 1 if an unreadable image was skipped (it is named); 2 on bad input.
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


def run(args) -> int:
  use_compilation_cache()
  import percdepth_jax
  from percdepth_jax import depth_outputs
  from percdepth_jax.data.photos import read_photo
  from percdepth_jax.data.camera import parse_intrinsics

  if args.batch < 1:
    raise UserInputError(f"--batch {args.batch} must be >= 1.")
  try:
    intrinsics = parse_intrinsics(args.intrinsics)
  except UserInputError as e:
    raise UserInputError(f"--{e}") from None
  files = _inputs(pathlib.Path(args.input))
  model = percdepth_jax.load_model(args.checkpoint)
  out_dir = pathlib.Path(args.output)
  out_dir.mkdir(parents=True, exist_ok=True)

  # Decode everything first: a corrupt file is reported and skipped, and
  # images are grouped by size so each size compiles once.
  groups, skipped = collections.defaultdict(list), []
  for path in files:
    try:
      photo = read_photo(path)
    except UserInputError as e:
      print(f"skipped: {e}", file=sys.stderr)
      skipped.append(path)
      continue
    for note in photo.notes:
      print(f"{path}: {note}", file=sys.stderr)
    groups[photo.rgb.shape].append((path, photo.rgb))

  done, t0 = 0, time.perf_counter()
  total = sum(len(g) for g in groups.values())
  for items in groups.values():
    for start in range(0, len(items), args.batch):
      chunk = items[start:start + args.batch]
      images = np.stack([image for _, image in chunk])
      depth = percdepth_jax.predict_depth(model, images, flip=not args.no_flip)
      for (path, image), depth_m in zip(chunk, depth):
        depth_outputs.write_prediction(out_dir / path.stem, depth_m, image,
                                       intrinsics=intrinsics, ply=args.ply)
      done += len(chunk)
      print(f"\r{done}/{total} images", end="", file=sys.stderr, flush=True)
  elapsed = time.perf_counter() - t0
  print(f"\n{done} images in {elapsed:.1f}s ({done / max(elapsed, 1e-9):.2f} images/s, "
        f"compilation included) -> {out_dir}", file=sys.stderr)
  if skipped:
    print(f"{len(skipped)} unreadable image(s) skipped: "
          + ", ".join(str(p) for p in skipped), file=sys.stderr)
    return 1
  return 0


def main(argv: list[str] | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__)


if __name__ == "__main__":
  sys.exit(main())
