"""Data throughput: synthetic rendering and the decode+augment pipeline.

  python scripts/benchmark_data.py [--scenes 40] [--images 400] [--threads 1] [--json FILE]

1. Synthetic rooms rendered per second per core at 240x320 (target >= 20).
2. Images per second per core decoded + augmented (flip, channel
   permutation) + batched through the training pipeline at 480x640
   (target >= 200), for three on-disk formats built in a temporary folder:
   DenseDepth's nyu_data.zip layout (JPEG RGB, 8-bit depth PNG), an RGB-D
   folder with JPEG RGB + 16-bit depth PNG (like the real_rgbd frames), and
   make_synthetic's folder (PNG RGB + 16-bit depth PNG).
"Per core" = items / CPU seconds of this process (all threads), so the number
does not depend on how busy the other cores are.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import zipfile

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1]))

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402


def bench_synthetic(num: int, height: int, width: int) -> dict:
  from percdepth_jax.data.synthetic import render_example
  render_example(0, 10_000, height, width)  # warm-up (imports, caches)
  cpu0, wall0 = time.process_time(), time.perf_counter()
  for i in range(num):
    render_example(0, i, height, width)
  cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
  return {"height": height, "width": width, "scenes": num,
          "scenes_per_s_per_core": num / cpu, "scenes_per_s_wall": num / wall}


def _encode(array, fmt: str, **kw) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt, **kw)
  return buf.getvalue()


def build_datasets(root: pathlib.Path, examples: list[dict], rows: int) -> dict:
  """The three on-disk formats, from the same rendered scenes.

  The index lists `rows` entries cycling over the distinct files: a realistic
  dataset length (Grain's index shuffle is slow on tiny datasets) without
  rendering hundreds of 480x640 scenes.
  """
  from percdepth_jax.data.folder import write_folder
  from percdepth_jax.data.nyu_zip import NyuZipSource
  from percdepth_jax.data.folder import FolderSource
  zpath = root / "nyu_data.zip"
  with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
    names = []
    for i, ex in enumerate(examples):
      rgb, dep = f"data/nyu2_train/scene/{i}.jpg", f"data/nyu2_train/scene/{i}.png"
      zf.writestr(rgb, _encode(ex["image"], "JPEG", quality=95))
      zf.writestr(dep, _encode(np.round(np.clip(ex["depth"], 0, 10) / 10 * 255)
                               .astype(np.uint8), "PNG"))
      names.append(f"{rgb},{dep}")
    zf.writestr("data/nyu2_train.csv",
                "\n".join(names[i % len(names)] for i in range(rows)) + "\n")
  jpg_dir = root / "jpeg_folder"
  (jpg_dir / "rgb").mkdir(parents=True)
  (jpg_dir / "depth").mkdir()
  for i, ex in enumerate(examples):
    (jpg_dir / "rgb" / f"{i}.jpg").write_bytes(_encode(ex["image"], "JPEG", quality=95))
    (jpg_dir / "depth" / f"{i}.png").write_bytes(
        _encode(np.round(ex["depth"] * 1000).astype(np.uint16), "PNG"))
  (jpg_dir / "manifest.csv").write_text("\n".join(
      ["rgb,depth"] + [f"rgb/{i % len(examples)}.jpg,depth/{i % len(examples)}.png"
                       for i in range(rows)]) + "\n")
  png_manifest = write_folder(root / "png_folder", examples)
  lines = png_manifest.read_text().splitlines()
  png_manifest.write_text("\n".join(
      lines[:1] + [lines[1 + i % len(examples)] for i in range(rows)]) + "\n")
  return {"nyu_zip (jpeg + 8-bit png)": NyuZipSource(zpath, "train"),
          "folder (jpeg + 16-bit png)": FolderSource(jpg_dir / "manifest.csv"),
          "folder (png + 16-bit png, make_synthetic)": FolderSource(png_manifest)}


def bench_pipeline(source, num_images: int, threads: int, batch: int) -> dict:
  from percdepth_jax.data.pipeline import make_train_iterator
  it = make_train_iterator(source, batch, seed=0, num_threads=threads,
                           prefetch_buffer_size=2 * batch)
  next(it)  # warm-up: thread start, first decodes, jit-free device_put path
  steps = max(num_images // batch, 1)
  cpu0, wall0 = time.process_time(), time.perf_counter()
  for _ in range(steps):
    b = next(it)
  b["image"].block_until_ready()
  cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
  n = steps * batch
  return {"images": n, "images_per_s_per_core": n / cpu, "images_per_s_wall": n / wall,
          "cpu_s": cpu, "wall_s": wall}


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--scenes", type=int, default=40, help="synthetic scenes to time")
  parser.add_argument("--images", type=int, default=400, help="images through the pipeline")
  parser.add_argument("--threads", type=int, default=1, help="decode threads")
  parser.add_argument("--batch", type=int, default=8)
  parser.add_argument("--distinct", type=int, default=8,
                      help="distinct 480x640 scenes on disk (repeated by the pipeline)")
  parser.add_argument("--rows", type=int, default=4096,
                      help="dataset length (rows cycle over the distinct scenes)")
  parser.add_argument("--json", help="also write the results to this file")
  args = parser.parse_args(argv)
  if min(args.scenes, args.images, args.threads, args.batch, args.distinct,
         args.rows) < 1:
    print("benchmark_data: --scenes/--images/--threads/--batch/--distinct/--rows must be >= 1",
          file=sys.stderr)
    return 2
  results = {"host": platform.node(), "cpu_count": os.cpu_count(),
             "threads": args.threads, "batch": args.batch}
  syn = bench_synthetic(args.scenes, 240, 320)
  results["synthetic_240x320"] = syn
  print(f"synthetic rooms 240x320: {syn['scenes_per_s_per_core']:.1f} scenes/s/core "
        f"({syn['scenes_per_s_wall']:.1f}/s wall, target >= 20)")
  from percdepth_jax.data.synthetic import render_example
  examples = [render_example(1, i, 480, 640) for i in range(args.distinct)]
  results["pipeline_480x640"] = {}
  with tempfile.TemporaryDirectory() as tmp:
    for name, source in build_datasets(pathlib.Path(tmp), examples, args.rows).items():
      r = bench_pipeline(source, args.images, args.threads, args.batch)
      results["pipeline_480x640"][name] = r
      print(f"pipeline 480x640, {name}: {r['images_per_s_per_core']:.0f} images/s/core "
            f"({r['images_per_s_wall']:.0f}/s wall, {args.threads} thread(s), "
            "target >= 200)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
