"""Export a depth model as one file that runs without this code: StableHLO or ONNX.

  python scripts/export.py --checkpoint DIR[:best] --format stablehlo|onnx --output FILE [--height H --width W] [--resolution train|native|HxW] [--no-flip] [--platforms cpu,cuda]

The file maps uint8 RGB images N x H x W x 3 (N free) to float32 depth in
metres N x H x W, weights included; H and W (default 480x640, NYU) are fixed
at export and must be multiples of 32. Flip test-time averaging is included
unless --no-flip. --resolution: where the network inside runs, as in
predict.py: train (default; about the pixel count of the model's training
frames, the image resized there and the depth back inside the file),
native (at H x W) or HxW. FILE.json describes the contract (names, shapes,
dtypes, units, flip, network size, checkpoint and step).

  stablehlo: a serialized jax.export artifact, lowered for --platforms;
    run with only jax (and flatbuffers) installed:
    depth = jax.export.deserialize(open(FILE, "rb").read()).call(images)
  onnx: through jax2onnx (pip install -e ".[onnx]"), checked against JAX in
    onnxruntime before it is written; run with onnxruntime:
    depth = onnxruntime.InferenceSession(FILE).run(["depth"], {"image": images})[0]

Exit code 0 on success, 1 if the ONNX model disagrees with JAX, 2 on bad input.
"""

from __future__ import annotations

import json
import os
import pathlib
import sys
import time

from absl import flags

from percdepth_jax.cli import run_script
from percdepth_jax.errors import UserInputError

# onnxruntime against JAX on random images: float32 reassociation stays far
# below this; a dropped padding or a wrong layout is far above it.
ONNX_TOLERANCE = 1e-4

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "workdir[:best] or model directory", flag_values=FLAGS)
flags.DEFINE_enum("format", None, ["stablehlo", "onnx"], "file format", flag_values=FLAGS)
flags.DEFINE_string("output", None, "file to write (and FILE.json)", flag_values=FLAGS)
flags.DEFINE_integer("height", 480, "input height, multiple of 32", flag_values=FLAGS)
flags.DEFINE_integer("width", 640, "input width, multiple of 32", flag_values=FLAGS)
flags.DEFINE_bool("no-flip", False, "no flip test-time averaging", flag_values=FLAGS)
flags.DEFINE_string("resolution", "train", "where the network runs: train, native or HxW",
                    flag_values=FLAGS)
flags.DEFINE_string("platforms", "cpu,cuda",
                    "stablehlo only: comma-separated jax platforms to lower for",
                    flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint", "format", "output"], flag_values=FLAGS)


def _write_atomic(path: pathlib.Path, data: bytes) -> None:
  """The file appears complete or not at all."""
  tmp = path.with_name(f".{path.name}.tmp")
  try:
    tmp.write_bytes(data)
    os.replace(tmp, path)
  except BaseException:
    tmp.unlink(missing_ok=True)
    raise


def _log(message: str, t0: float) -> None:
  print(f"[{time.perf_counter() - t0:6.1f}s] {message}", file=sys.stderr, flush=True)


def run(args) -> int:
  from percdepth_jax import export
  from percdepth_jax.inference import parse_resolution

  t0 = time.perf_counter()
  flip = not args.no_flip
  export.check_size(args.height, args.width)
  resolution = parse_resolution(args.resolution)
  platforms = tuple(p.strip() for p in args.platforms.split(",") if p.strip())
  export.check_platforms(platforms)
  if args.format == "onnx":
    export.require_onnx()  # before the slow model load
  output = pathlib.Path(args.output)
  if output.is_dir():
    raise UserInputError(f"--output {output} is a directory; give a file name.")

  from percdepth_jax.model_io import load_model_with_step
  _log(f"loading {args.checkpoint}", t0)
  model, step = load_model_with_step(args.checkpoint)
  net_h, net_w = export.network_input_size(model, args.height, args.width, resolution)
  size = f"{args.height} x {args.width} x 3 (network at {net_h}x{net_w})"
  extra = {"resolution": args.resolution, "network_size": [net_h, net_w]}
  if args.format == "stablehlo":
    _log(f"tracing and lowering at N x {size} for {','.join(platforms)} "
         f"(flip={flip})", t0)
    data = export.export_stablehlo(model, args.height, args.width, flip=flip,
                                   platforms=platforms, resolution=resolution)
    extra["platforms"] = list(platforms)
  else:
    _log(f"converting with jax2onnx at N x {size}, flip={flip}", t0)
    data = export.export_onnx(model, args.height, args.width, flip=flip,
                              resolution=resolution)
    data = data.SerializeToString()
    _log("checking onnxruntime against JAX on random images", t0)
    error = export.check_onnx(model, data, args.height, args.width, flip=flip,
                              resolution=resolution)
    _log(f"relative max error {error:.2e} (tolerance {ONNX_TOLERANCE:.0e})", t0)
    if not error <= ONNX_TOLERANCE:
      print(f"error: the ONNX model disagrees with JAX (relative max error "
            f"{error:.2e} > {ONNX_TOLERANCE:.0e}); nothing was written. Please "
            "report it with the jax2onnx version.", file=sys.stderr)
      return 1
    extra["opset"] = export.ONNX_OPSET
    extra["onnx_check_relative_max_error"] = error

  output.parent.mkdir(parents=True, exist_ok=True)
  _log(f"writing {output}", t0)
  _write_atomic(output, data)
  meta = export.describe(args.format, model, args.height, args.width, flip=flip,
                         checkpoint=str(args.checkpoint), step=step,
                         file_name=output.name, **extra)
  sidecar = output.with_name(output.name + ".json")
  _write_atomic(sidecar, (json.dumps(meta, indent=2) + "\n").encode())
  _log(f"wrote {output} ({len(data) / 2**20:.1f} MiB) and {sidecar.name}", t0)
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
