"""Command line: convert torchvision or DenseDepth-layout PyTorch weights, or
DenseDepth's released Keras model.

  python -m weights_conversion torchvision --arch densenet121 --input densenet121.pth --output weights/densenet121
  python -m weights_conversion densedepth --input nyu.pth --output weights/densedepth_nyu --densedepth-compat
  python -m weights_conversion densedepth-keras --input nyu.h5 --output weights/densedepth_nyu

The installed `percdepth convert ...` runs this with the same arguments.
Exit code 0 on success, 2 on bad input (the message says what and why);
nothing is written unless every weight in the file matches the model.
"""

from __future__ import annotations

import argparse
import sys

from percdepth_jax.errors import UserInputError
from percdepth_jax.models.summary import format_parameter_counts


def _parser(prog: str) -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(
      prog=prog,
      description="Convert PyTorch or Keras weights into a percdepth_jax model directory.")
  sub = parser.add_subparsers(dest="format", required=True)
  tv = sub.add_parser("torchvision", help="a torchvision ImageNet state dict")
  tv.add_argument("--arch", required=True,
                  choices=["densenet121", "densenet169", "densenet161",
                           "densenet201", "resnet50"])
  tv.add_argument("--input", required=True, help="state dict file (.pth)")
  tv.add_argument("--output", required=True, help="new model directory")
  dd = sub.add_parser("densedepth", help="a whole depth model in DenseDepth's layout")
  dd.add_argument("--input", required=True, help="state dict file (.pth)")
  dd.add_argument("--output", required=True, help="new model directory")
  dd.add_argument("--encoder", default="densenet121",
                  choices=["densenet121", "densenet169", "densenet161", "densenet201"])
  dd.add_argument("--decoder-width", type=float, default=1.0)
  dd.add_argument("--densedepth-compat", action="store_true",
                  help="DenseDepth's PyTorch decoder: no LeakyReLU after convA, "
                       "output at half resolution")
  dd.add_argument("--input-norm", default="unit", choices=["unit", "imagenet"],
                  help="input normalisation the checkpoint was trained with "
                       "(DenseDepth: unit, i.e. x/255)")
  keras = sub.add_parser(
      "densedepth-keras",
      help="DenseDepth's Keras model (nyu.h5); options read from the file")
  keras.add_argument("--input", required=True, help="whole-model Keras file (.h5)")
  keras.add_argument("--output", required=True, help="new model directory")
  return parser


def main(argv: list[str] | None = None, prog: str = "python -m weights_conversion") -> int:
  """prog: the command as typed (`percdepth convert` runs this too)."""
  args = _parser(prog).parse_args(argv)
  # Imported late so that --help is instant.
  from weights_conversion import convert
  try:
    if args.format == "torchvision":
      module = convert.convert_torchvision(args.arch, args.input, args.output)
    elif args.format == "densedepth-keras":
      from weights_conversion.densedepth_keras import convert_densedepth_keras
      module = convert_densedepth_keras(args.input, args.output)
    else:
      config = convert.densedepth_model_config(
          encoder=args.encoder, decoder_width=args.decoder_width,
          densedepth_compat=args.densedepth_compat, input_norm=args.input_norm)
      module = convert.convert_densedepth(args.input, args.output, config)
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(format_parameter_counts(module))
  print(f"wrote {args.output}")
  return 0


if __name__ == "__main__":
  sys.exit(main())
