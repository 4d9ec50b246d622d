"""Evaluate a depth model on a dataset under a named protocol (or all of them).

  python scripts/evaluate.py --checkpoint DIR[:best] --data SPEC [--protocol NAME|all] [--edges] [--no-flip] --output FILE.json

--checkpoint: a training workdir (latest checkpoint, or the best by d1 with
DIR:best) or a converted model directory. --data: synthetic:N[:seed],
folder:PATH/manifest.csv, nyu_zip:PATH/nyu_data.zip, tfds:nyu_depth_v2[:split].
--protocol: densedepth, densedepth_official, eigen, big_vision, or all (one
pass over the data, every protocol). --edges adds iBims-1's depth-boundary
errors (dbe_acc, dbe_com, in pixels).
Writes the metrics JSON (naming protocol, data, checkpoint, step and flip
setting) and a PNG grid of samples (RGB | ground truth | prediction | error)
next to it. One protocol: {"protocol": NAME, ..., "metrics": {...}}; all:
{"protocol": "all", ..., "protocols": {NAME: {...}, ...}}; --edges adds
"edges": {"dbe_acc", "dbe_com", "num_images", "num_images_skipped"}.
Exit code 0 on success, 2 on bad input.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys


from percdepth_jax.errors import UserInputError
from percdepth_jax.metrics import PROTOCOLS


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--checkpoint", required=True, help="workdir[:best] or model directory")
  parser.add_argument("--data", required=True, help="data spec, e.g. synthetic:64:1")
  parser.add_argument("--protocol", default="densedepth", choices=[*PROTOCOLS, "all"],
                      help="evaluation protocol, or all of them in one pass")
  parser.add_argument("--edges", action="store_true",
                      help="add iBims-1 depth-boundary errors (dbe_acc, dbe_com)")
  parser.add_argument("--no-flip", action="store_true", help="no flip test-time averaging")
  parser.add_argument("--output", required=True, help="metrics JSON file to write")
  parser.add_argument("--grid", default=None,
                      help="sample grid PNG (default: next to --output, .png)")
  parser.add_argument("--num-samples", type=int, default=4, help="rows of the grid (0: none)")
  parser.add_argument("--batch-size", type=int, default=8)
  parser.add_argument("--max-examples", type=int, default=0, help="0: the whole set")
  parser.add_argument("--height", type=int, default=480, help="synthetic scenes only")
  parser.add_argument("--width", type=int, default=640, help="synthetic scenes only")
  return parser


def run(args: argparse.Namespace) -> dict:
  from percdepth_jax import evaluation, report
  from percdepth_jax.data import resolve_spec
  from percdepth_jax.model_io import load_model_with_step

  output = pathlib.Path(args.output)
  if output.suffix != ".json":
    raise UserInputError(f"--output {output} should be a .json file.")
  model, step = load_model_with_step(args.checkpoint)
  source = resolve_spec(args.data, split="test", height=args.height, width=args.width)
  names = list(PROTOCOLS) if args.protocol == "all" else [args.protocol]
  evaluated, samples = evaluation.evaluate_protocols(
      model, source, names, edges=args.edges, flip=not args.no_flip,
      batch_size=args.batch_size, max_examples=args.max_examples,
      num_samples=args.num_samples, progress=True)
  result = {"protocol": args.protocol, "data": args.data,
            "checkpoint": str(args.checkpoint), "step": step,
            "flip": not args.no_flip, "num_images": evaluated["num_images"]}
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
  return result


def main(argv: list[str] | None = None) -> int:
  args = _parser().parse_args(argv)
  try:
    run(args)
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
