"""Evaluate a depth model on a dataset under a named protocol (or all of them).

  python scripts/evaluate.py --checkpoint DIR[:best] --data SPEC [--protocol NAME|all] [--edges] [--no-flip] [--resolution train|native|HxW] --output FILE.json

--checkpoint: a training workdir (latest checkpoint, or the best by d1 with
DIR:best) or a converted model directory. --data: synthetic:N[:seed],
folder:PATH/manifest.csv, nyu_zip:PATH/nyu_data.zip, tfds:nyu_depth_v2[:split].
--protocol: densedepth, densedepth_official, eigen, big_vision, full_frame,
or all (one pass over the data, every protocol). --edges adds iBims-1's
depth-boundary errors (dbe_acc, dbe_com, in pixels). --resolution: where
the network runs (as predict.py): at about the training frames' pixel count
(train, the default; frames of the training size run unchanged), at each
frame's own size (native), or at HxW; the depth is resized back to the
frame for scoring.
Writes the metrics JSON (naming protocol, data, checkpoint, step and flip
setting) and a PNG grid of samples (RGB | ground truth | prediction | error)
next to it. One protocol: {"protocol": NAME, ..., "metrics": {...}}; all:
{"protocol": "all", ..., "protocols": {NAME: {...}, ...}}; --edges adds
"edges": {"dbe_acc", "dbe_com", "num_images", "num_images_skipped"}.
Exit codes: 0 done, 2 bad input.
"""

from __future__ import annotations

import json
import pathlib
import sys

from absl import flags

from percdepth_jax.cli import run_script, use_compilation_cache
from percdepth_jax.errors import UserInputError
from percdepth_jax.metrics import PROTOCOLS

FLAGS = flags.FlagValues()
flags.DEFINE_string("checkpoint", None, "workdir[:best] or model directory", flag_values=FLAGS)
flags.DEFINE_string("data", None, "data spec, e.g. synthetic:64:1", flag_values=FLAGS)
flags.DEFINE_enum("protocol", "densedepth", [*PROTOCOLS, "all"],
                  "evaluation protocol, or all of them in one pass", flag_values=FLAGS)
flags.DEFINE_bool("edges", False, "add iBims-1 depth-boundary errors (dbe_acc, dbe_com)",
                  flag_values=FLAGS)
flags.DEFINE_bool("no-flip", False, "no flip test-time averaging", flag_values=FLAGS)
flags.DEFINE_string("resolution", "train", "where the network runs: train, native or HxW",
                    flag_values=FLAGS)
flags.DEFINE_string("output", None, "metrics JSON file to write", flag_values=FLAGS)
flags.DEFINE_string("grid", None, "sample grid PNG (default: next to --output, .png)",
                    flag_values=FLAGS)
flags.DEFINE_integer("num-samples", 4, "rows of the grid (0: none)", lower_bound=0,
                     flag_values=FLAGS)
flags.DEFINE_integer("batch-size", 8, "images per forward pass", lower_bound=1,
                     flag_values=FLAGS)
flags.DEFINE_integer("max-examples", 0, "0: the whole set", lower_bound=0, flag_values=FLAGS)
flags.DEFINE_integer("height", 480, "synthetic scenes only", flag_values=FLAGS)
flags.DEFINE_integer("width", 640, "synthetic scenes only", flag_values=FLAGS)
flags.mark_flags_as_required(["checkpoint", "data", "output"], flag_values=FLAGS)


def run(args) -> int:
  use_compilation_cache()
  from percdepth_jax import evaluation, report
  from percdepth_jax.data import resolve_spec
  from percdepth_jax.inference import parse_resolution
  from percdepth_jax.model_io import load_model_with_step

  output = pathlib.Path(args.output)
  if output.suffix != ".json":
    raise UserInputError(f"--output {output} should be a .json file.")
  resolution = parse_resolution(args.resolution)
  model, step = load_model_with_step(args.checkpoint)
  source = resolve_spec(args.data, split="test", height=args.height, width=args.width)
  names = list(PROTOCOLS) if args.protocol == "all" else [args.protocol]
  evaluated, samples = evaluation.evaluate_protocols(
      model, source, names, edges=args.edges, flip=not args.no_flip,
      batch_size=args.batch_size, max_examples=args.max_examples,
      num_samples=args.num_samples, progress=True, resolution=resolution)
  result = {"protocol": args.protocol, "data": args.data,
            "checkpoint": str(args.checkpoint), "step": step,
            "flip": not args.no_flip, "resolution": args.resolution,
            "num_images": evaluated["num_images"]}
  if args.protocol == "all":
    result["protocols"] = evaluated["protocols"]
  else:
    result["metrics"] = evaluated["protocols"][args.protocol]
  if args.edges:
    result["edges"] = evaluated["edges"]
  output.parent.mkdir(parents=True, exist_ok=True)
  output.write_text(json.dumps(result, indent=2) + "\n")
  print(report.metrics_table(evaluated["protocols"]))
  if args.edges:
    e = evaluated["edges"]
    print(f"depth-boundary errors (iBims-1, Eigen crop, {e['num_images']} images with "
          f"gt edges): dbe_acc {e['dbe_acc']:.3f} px, dbe_com {e['dbe_com']:.3f} px")
  print(f"wrote {output}")
  if samples:
    grid = pathlib.Path(args.grid) if args.grid else output.with_suffix(".png")
    report.sample_grid(samples, grid, title=f"{args.data} ({args.protocol})")
    print(f"wrote {grid}")
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
