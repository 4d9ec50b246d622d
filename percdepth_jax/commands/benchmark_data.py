"""Data throughput: synthetic rendering and the decode+augment pipeline.

  python scripts/benchmark_data.py [--scenes 40] [--images 400] [--threads 1] [--json FILE]

1. Synthetic rooms rendered per second per core at 240x320 (target >= 20).
2. Images per second per core decoded + augmented (flip, channel
   permutation) + batched through the training pipeline at 480x640
   (target >= 200), for three on-disk formats built in a temporary folder:
   DenseDepth's nyu_data.zip layout (JPEG RGB, 8-bit depth PNG), an RGB-D
   folder with JPEG RGB + 16-bit depth PNG (like the real_rgbd frames), and
   make_synthetic's folder (PNG RGB + 16-bit depth PNG), with the CPU time
   per image split into decoding (source[i]), augmentation and the rest
   (batching, device transfer, Grain).
3. Per-image decode time of each file kind, Pillow vs percdepth_jax's
   decoder (simplejpeg/OpenCV fast path), timed in alternation in one
   process so that machine load affects both alike.
"Per core" = items / CPU seconds of this process (all threads), so the number
does not depend on how busy the other cores are.
"""

from __future__ import annotations

import io
import json
import os
import pathlib
import platform
import sys
import tempfile
import time
import zipfile


import numpy as np
from absl import flags
from PIL import Image

from percdepth_jax.cli import run_script

FLAGS = flags.FlagValues()
flags.DEFINE_integer("scenes", 40, "synthetic scenes to time", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("images", 400, "images through the pipeline", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("threads", 1, "decode threads", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("batch", 8, "images per batch", lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("distinct", 8, "distinct 480x640 scenes on disk (repeated by the pipeline)",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("rows", 4096, "dataset length (rows cycle over the distinct scenes)",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_integer("decode-rounds", 20, "alternating Pillow/fast rounds of the decode timing",
                     lower_bound=1, flag_values=FLAGS)
flags.DEFINE_string("json", None, "also write the results to this file", flag_values=FLAGS)


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


def bench_stages(source, num_images: int) -> dict:
  """CPU ms per image of decoding (source[i]) and of augmentation."""
  from percdepth_jax.data.augment import AugmentConfig, augment
  n = min(num_images, len(source))
  decode_s = augment_s = 0.0
  for i in range(n):  # one example alive at a time, as in the pipeline
    cpu0 = time.process_time()
    example = source[i]
    cpu1 = time.process_time()
    augment(example, np.random.default_rng((0, i)), AugmentConfig())
    decode_s, augment_s = decode_s + cpu1 - cpu0, augment_s + time.process_time() - cpu1
  return {"decode_ms": decode_s / n * 1e3, "augment_ms": augment_s / n * 1e3}


def _pillow_rgb(raw: bytes) -> np.ndarray:
  """Reference decoder: Pillow for every file."""
  image = Image.open(io.BytesIO(raw))
  image.load()
  return np.asarray(image if image.mode == "RGB" else image.convert("RGB"))


def _pillow_depth(raw: bytes) -> np.ndarray:
  """Reference decoder of depth PNGs: Pillow."""
  image = Image.open(io.BytesIO(raw))
  image.load()
  return np.asarray(image).astype(np.uint16 if image.mode != "L" else np.uint8,
                                  copy=False)


def bench_decode(examples: list[dict], rounds: int) -> dict:
  """Median CPU ms per image, Pillow vs decode.py, alternating per round."""
  from percdepth_jax.data import decode
  from percdepth_jax.data.folder import _png_bytes
  mm = [np.round(ex["depth"] * 1000).astype(np.uint16) for ex in examples]
  kinds = {
      "JPEG q95 (nyu_zip, jpeg folder)":
          ([_encode(ex["image"], "JPEG", quality=95) for ex in examples], "rgb"),
      "8-bit depth PNG (nyu_zip)":
          ([_encode(np.round(np.clip(ex["depth"], 0, 10) / 10 * 255).astype(np.uint8),
                    "PNG") for ex in examples], "depth"),
      "16-bit depth PNG, Pillow zlib level 6 (jpeg folder, make_synthetic before)":
          ([_encode(d, "PNG") for d in mm], "depth"),
      "RGB PNG, Pillow zlib level 6 (make_synthetic before)":
          ([_encode(ex["image"], "PNG") for ex in examples], "rgb"),
      "RGB PNG, uncompressed (make_synthetic)":
          ([_png_bytes(ex["image"], 0) for ex in examples], "rgb"),
      "16-bit depth PNG, uncompressed (make_synthetic)":
          ([_png_bytes(d, 0) for d in mm], "depth"),
  }
  fast = {"rgb": lambda raw: decode.decode_rgb(raw, "x"),
          "depth": lambda raw: decode.decode_depth_png(raw, "x", allow_8bit=True)}
  pillow = {"rgb": _pillow_rgb, "depth": _pillow_depth}
  times = {(k, impl): [] for k in kinds for impl in ("pillow", "fast")}
  for _ in range(rounds):
    for kind, (files, role) in kinds.items():
      for impl, fn in (("pillow", pillow[role]), ("fast", fast[role])):
        cpu0 = time.process_time()
        for raw in files:
          fn(raw)
        times[kind, impl].append((time.process_time() - cpu0) / len(files) * 1e3)
  return {kind: {"pillow_ms": float(np.median(times[kind, "pillow"])),
                 "fast_ms": float(np.median(times[kind, "fast"])),
                 "kb": sum(len(f) for f in files) / len(files) / 1000}
          for kind, (files, _) in kinds.items()}


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
  # The prefetch thread finishes the examples already queued: let it, so
  # that their CPU time does not count towards the next measurement.
  time.sleep(1.0)
  n = steps * batch
  return {"images": n, "images_per_s_per_core": n / cpu, "images_per_s_wall": n / wall,
          "cpu_s": cpu, "wall_s": wall}


def run(args) -> int:
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
      stages = bench_stages(source, min(args.images, 80))
      r = bench_pipeline(source, args.images, args.threads, args.batch)
      r.update(stages)
      r["rest_ms"] = 1e3 / r["images_per_s_per_core"] - r["decode_ms"] - r["augment_ms"]
      results["pipeline_480x640"][name] = r
      print(f"pipeline 480x640, {name}: {r['images_per_s_per_core']:.0f} images/s/core "
            f"({r['images_per_s_wall']:.0f}/s wall, {args.threads} thread(s), "
            f"target >= 200); CPU ms/image: decode {r['decode_ms']:.2f}, augment "
            f"{r['augment_ms']:.2f}, rest (batching, transfer, Grain) {r['rest_ms']:.2f}")
  results["decode_480x640"] = dec = bench_decode(examples, args.decode_rounds)
  for kind, r in dec.items():
    print(f"decode {kind} ({r['kb']:.0f} kB): Pillow {r['pillow_ms']:.2f} ms, "
          f"fast path {r['fast_ms']:.2f} ms ({r['pillow_ms'] / r['fast_ms']:.2f}x)")
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
