"""Measures JAX-vs-Keras parity of the `densedepth-keras` converter.

  python -m weights_conversion.keras_parity --frames DIR [--size 96x128] [--variant nyu ...]

Builds DenseDepth's Keras model in tf_keras (`keras_reference`, in a
subprocess: TensorFlow stays out of this process), converts each .h5 with the
converter's code, and prints the relative max error (max |jax - keras| /
max |keras|) of the output on the frames (the .jpg/.png images in DIR,
resized), float32. Needs the `keras` extra.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
import subprocess
import sys
import tempfile

import numpy as np
from flax import nnx
from PIL import Image

from percdepth_jax.compare import relative_max_error
from percdepth_jax.model_io import build_module, fill_module
from weights_conversion.densedepth_keras import densedepth_keras_to_flax, match_weights

VARIANTS = ("nyu", "densenet121_full_no_leaky", "densenet201_half_no_leaky")


def measure(frames_NxHxWx3: np.ndarray, variants: list[str]
            ) -> list[tuple[str, str, float, float]]:
  """Rows (variant, config summary, error, error with BatchNorm eps 1e-5)."""
  forward = nnx.jit(lambda module, x: module(x))
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    np.save(tmp / "frames.npy", frames_NxHxWx3)
    subprocess.run([sys.executable, "-m", "weights_conversion.keras_reference",
                    "--images", str(tmp / "frames.npy"), "--output", str(tmp),
                    *[a for v in variants for a in ("--variant", v)]], check=True)
    x = frames_NxHxWx3.astype(np.float32)
    for name in variants:
      expected = np.load(tmp / f"{name}.npy")
      module, config, model_file = densedepth_keras_to_flax(tmp / f"{name}.h5")
      error = relative_max_error(np.asarray(forward(module, x)), expected)
      # The same weights with torchvision's epsilon: what the option buys.
      torch_eps = dataclasses.replace(config, batchnorm_eps=1e-5)
      abstract = build_module("depth_net", torch_eps.to_dict(), abstract=True)
      other = fill_module(abstract, match_weights(model_file, abstract))
      other.eval()
      error_eps = relative_max_error(np.asarray(forward(other, x)), expected)
      summary = (f"{config.encoder}, width {config.decoder_width:g}, LeakyReLU after "
                 f"convA: {config.leaky_relu_after_conv_a}")
      rows.append((name, summary, error, error_eps))
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--frames", required=True, help="folder of .jpg/.png images")
  parser.add_argument("--size", default="96x128", help="HxW, multiples of 32")
  parser.add_argument("--variant", action="append", choices=VARIANTS)
  args = parser.parse_args(argv)
  height, width = (int(v) for v in args.size.split("x"))
  paths = sorted(p for p in pathlib.Path(args.frames).iterdir()
                 if p.suffix.lower() in (".jpg", ".jpeg", ".png"))
  frames = np.stack([np.asarray(Image.open(p).convert("RGB").resize(
      (width, height), Image.BILINEAR)) for p in paths])
  print(f"{len(paths)} frames at {height}x{width}")
  for name, summary, error, error_eps in measure(frames, args.variant or list(VARIANTS)):
    print(f"{name:28s} {summary:55s} {error:.1e}  (eps 1e-5: {error_eps:.1e})")


if __name__ == "__main__":
  main()
