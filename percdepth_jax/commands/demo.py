"""A browser demo of a depth model: upload a photo, see depth and a 3D view.

  python scripts/demo.py --checkpoint DIR [--port N] [--host 127.0.0.1] [--resolution train|native|HxW]

DIR is a training workdir (`workdirs/synthetic:best`) or a converted model
directory. The page (Gradio, the `demo` extra: pip install -e ".[demo]")
shows the photo as the network saw it, the colour depth map with its bar in
metres and a hover readout, a 3D view of the surface, and the .npy, 16-bit
PNG and .ply files predict.py writes. Photos are read as predict.py reads
them (EXIF orientation, HEIC with the `photos` extra) and the network runs
where --resolution says (as predict.py: by default at the scale the model
was trained at). One photo is processed at a time, up to 8 more wait in a
queue (the page says so and shows a waiting visitor's place), and uploads
over 40 MB are refused. Ctrl-C stops it.
Exit code 2 on bad input (a missing checkpoint, Gradio not installed).
"""

from __future__ import annotations

import sys

from absl import flags

from percdepth_jax.cli import run_script, use_compilation_cache

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "workdir[:best] or model directory", flag_values=FLAGS)
flags.DEFINE_integer("port", 7860, "port to serve on", flag_values=FLAGS)
flags.DEFINE_string("host", "127.0.0.1", "address to serve on (0.0.0.0: every interface)",
                    flag_values=FLAGS)
flags.DEFINE_string("resolution", "train", "where the network runs: train, native or HxW",
                    flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint"], flag_values=FLAGS)

# Example photos offered on the page when run from a checkout; elsewhere (an
# installed wheel) the page has none and works the same.
EXAMPLES = ("docs/images/predict/nyu_rgb.jpg", "docs/images/predict/synthetic_rgb.png",
            "docs/images/predict/synthetic2_rgb.png")


def run(args) -> int:
  use_compilation_cache()
  import pathlib

  from percdepth_jax import demo
  from percdepth_jax.inference import parse_resolution

  resolution = parse_resolution(args.resolution)
  demo.import_gradio()  # before the model: say what is missing at once
  app = demo.build_app(demo.DepthDemo(args.checkpoint, resolution),
                       [e for e in EXAMPLES if pathlib.Path(e).is_file()])
  print(f"serving the demo of {args.checkpoint} at http://{args.host}:{args.port}",
        file=sys.stderr, flush=True)
  app.launch(server_name=args.host, server_port=args.port, quiet=True,
             max_file_size=demo.MAX_FILE_SIZE)
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
