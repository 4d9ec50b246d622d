"""Depth in metres from uint8 images of any size: what predict.py and users call.

The network runs at the scale the model was trained at by default: an image
is resized to about the training frames' pixel count (aspect kept, sides
multiples of 32), and the depth map is resized back to the image's size. A
network run far above its training scale sees every object several times
larger than anything it learnt from, and its depth flattens towards a
constant (docs/inference.md has the measurements).

`resolution` (the `--resolution` of the scripts) is one of
  "train"   about the training frames' pixel count (the default);
  "native"  the image's own size, rounded to multiples of 32;
  (H, W)    exactly H x W (multiples of 32; the aspect ratio is not kept).
"""

from __future__ import annotations

import logging
import math
from typing import Sequence, Union

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from PIL import Image

from percdepth_jax.errors import UserInputError
from percdepth_jax.models import INPUT_MULTIPLE, DepthNet

TRAIN = "train"
NATIVE = "native"
Resolution = Union[str, tuple[int, int]]

_log = logging.getLogger(__name__)


def network_size(height: float, width: float) -> tuple[int, int]:
  """The nearest multiple-of-32 size (at least 32) the network runs at."""
  snap = lambda n: max(INPUT_MULTIPLE, int(round(n / INPUT_MULTIPLE)) * INPUT_MULTIPLE)
  return snap(height), snap(width)


def train_scale_size(height: int, width: int, train_hw: tuple[int, int]
                     ) -> tuple[int, int]:
  """About train_hw's pixel count with the aspect ratio of height x width,
  sides rounded to multiples of 32: objects appear at the size they had in
  training, whichever camera took the photo."""
  scale = math.sqrt(train_hw[0] * train_hw[1] / (height * width))
  return network_size(height * scale, width * scale)


def parse_resolution(text: str) -> Resolution:
  """The `--resolution` flag: "train", "native" or "HxW" (multiples of 32)."""
  text = text.strip().lower()
  if text in (TRAIN, NATIVE):
    return text
  height, sep, width = text.partition("x")
  if not (sep and height.isdigit() and width.isdigit()):
    raise UserInputError(f"--resolution {text!r}: expected train, native or HxW "
                         "(for example 480x640).")
  return check_resolution((int(height), int(width)))


def check_resolution(resolution: Resolution) -> Resolution:
  """`resolution` itself, or a UserInputError saying what is accepted."""
  if resolution in (TRAIN, NATIVE):
    return resolution
  try:
    height, width = (int(v) for v in resolution)
  except (TypeError, ValueError):
    raise UserInputError(f"resolution {resolution!r}: expected 'train', 'native' "
                         "or (height, width).") from None
  if min(height, width) < INPUT_MULTIPLE or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
    raise UserInputError(f"resolution {height}x{width}: height and width must be "
                         f"positive multiples of {INPUT_MULTIPLE} (for example 480x640).")
  return height, width


def train_resolution(model: DepthNet) -> tuple[int, int] | None:
  """The frame size the model was trained at, as `load_model` records it on
  the module (None for a model built in code or an old model directory)."""
  recorded = getattr(model, "train_resolution", None)
  return tuple(recorded) if recorded else None


_warned: set[int] = set()


def effective_resolution(model: DepthNet, resolution: Resolution) -> Resolution:
  """`resolution`, checked; "train" for a model that records no training
  resolution is "native" (the behaviour before models recorded it), said
  once per model in the log."""
  resolution = check_resolution(resolution)
  if resolution != TRAIN or train_resolution(model) is not None:
    return resolution
  if id(model) not in _warned:
    _warned.add(id(model))
    _log.warning("the model records no training resolution: the network runs at "
                 "each image's own size (--resolution native); pass "
                 "--resolution HxW (resolution=(H, W)) to choose one.")
  return NATIVE


def run_size(model: DepthNet, height: int, width: int,
             resolution: Resolution = TRAIN) -> tuple[int, int]:
  """The size the network runs at for a height x width image."""
  resolution = effective_resolution(model, resolution)
  if resolution == TRAIN:
    return train_scale_size(height, width, train_resolution(model))
  if resolution == NATIVE:
    return network_size(height, width)
  return resolution


def network_metres(model: DepthNet, x_NxHxWx3: jax.Array, flip: bool = True,
                   one_batch: bool = True) -> jax.Array:
  """The network's depth in metres at its output resolution (N x H x W x 1,
  H/2 x W/2 with output_stride 2); with `flip`, averaged with the mirrored
  image's prediction mirrored back (the paper's test-time augmentation).

  The model must be in eval mode (`model.eval()`). With `one_batch` the
  images and their mirrors run as one batch of 2N: with BatchNorm's running
  statistics each image gets the depth a batch of its own would, and one
  pass is faster on the CPU than two (docs/benchmarks.md). Exported graphs
  run two passes (`one_batch=False`): ONNX conversion cannot split a
  symbolic batch of 2N.
  """
  if not flip:
    return model.to_metres(model(x_NxHxWx3))
  if not one_batch:
    depth = model.to_metres(model(x_NxHxWx3))
    mirrored = model.to_metres(model(x_NxHxWx3[:, :, ::-1]))[:, :, ::-1]
    return 0.5 * (depth + mirrored)
  n = x_NxHxWx3.shape[0]
  both_2NxHxWx3 = jnp.concatenate([x_NxHxWx3, x_NxHxWx3[:, :, ::-1]], axis=0)
  depth_2NxHxWx1 = model.to_metres(model(both_2NxHxWx3))
  return 0.5 * (depth_2NxHxWx1[:n] + depth_2NxHxWx1[n:, :, ::-1])


def depth_metres(model: DepthNet, image_NxHxWx3: jax.Array, flip: bool = True,
                 size: tuple[int, int] | None = None) -> jax.Array:
  """Traceable core: pixels (any size) -> metres, N x H x W, the network run
  at `size` (default: the image's size rounded to multiples of 32).

  Resizes with `jax.image.resize` (linear, antialiased when shrinking) inside
  the trace, so it compiles per input shape: for batches of one shape
  (evaluation, scripts/benchmark.py). `predict_depth` is the checked entry
  point for images of any size.
  """
  n, height, width, _ = image_NxHxWx3.shape
  net_h, net_w = size or network_size(height, width)
  x = image_NxHxWx3.astype(jnp.float32)
  if (net_h, net_w) != (height, width):
    # Resize (not pad) so the network sees the whole field of view; the
    # depth map is resized back below.
    x = jax.image.resize(x, (n, net_h, net_w, 3), "linear")
  depth_NxHxW = network_metres(model, x, flip)[..., 0]
  if depth_NxHxW.shape[1:] != (height, width):
    depth_NxHxW = jax.image.resize(depth_NxHxW, (n, height, width), "linear")
  return depth_NxHxW


# Compiled once per (model structure, input shape, size, flip).
compiled_depth_metres = nnx.jit(depth_metres, static_argnames=("flip", "size"))


def _network_depth(model: DepthNet, x_NxHxWx3: jax.Array, flip: bool) -> jax.Array:
  return network_metres(model, x_NxHxWx3.astype(jnp.float32), flip)[..., 0]


# Compiled once per (model structure, network input shape, flip): photos of
# any size that share a network size share the compiled function.
_compiled_network_depth = nnx.jit(_network_depth, static_argnames=("flip",))


def network_depth(model: DepthNet, x_NxHxWx3: np.ndarray, flip: bool = True
                  ) -> np.ndarray:
  """Metres at the network's output resolution for uint8 inputs already at
  a network size (multiples of 32): N x H x W, or N x H/2 x W/2 for a model
  with output_stride 2."""
  return np.asarray(_compiled_network_depth(model, jnp.asarray(x_NxHxWx3), flip=flip))


def resize_image(image_HxWx3: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """uint8 RGB resized to size (H, W): Pillow's bilinear, antialiased when
  shrinking (as `jax.image.resize` "linear", to uint8 rounding), on the
  uint8 pixels (no full-size float copy of a large photo)."""
  if image_HxWx3.shape[:2] == tuple(size):
    return image_HxWx3
  return np.asarray(Image.fromarray(image_HxWx3).resize(size[::-1], Image.BILINEAR))


def resize_depth(depth_HxW: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """float32 depth resized to size (H, W): Pillow's bilinear on 32-bit
  floats (`jax.image.resize` "linear" to float precision)."""
  if depth_HxW.shape == tuple(size):
    return depth_HxW
  image = Image.fromarray(np.asarray(depth_HxW, np.float32), mode="F")
  return np.asarray(image.resize(size[::-1], Image.BILINEAR), np.float32)


def predict_photos(model: DepthNet, images: Sequence[np.ndarray], size: tuple[int, int],
                   flip: bool = True) -> list[np.ndarray]:
  """Depth in metres at each image's own size, the network run at `size`
  for all of them in one batch (images may differ in size).

  Each image is resized to `size` (uint8), the network runs once, and each
  depth map is resized back to its image's size.
  """
  x_NxHxWx3 = np.stack([resize_image(image, size) for image in images])
  depth_NxHxW = network_depth(model, x_NxHxWx3, flip)
  return [resize_depth(depth, image.shape[:2]) for depth, image in zip(depth_NxHxW, images)]


def _check(model, images) -> np.ndarray | jax.Array:
  images = np.asarray(images) if not isinstance(images, jax.Array) else images
  if images.ndim != 4 or images.shape[-1] != 3:
    raise UserInputError(f"predict_depth needs RGB images shaped N x H x W x 3, "
                         f"got shape {tuple(images.shape)}; add a batch axis "
                         "with images[None] for a single image.")
  if images.dtype != np.uint8:
    raise UserInputError(f"predict_depth needs uint8 images (0-255), got "
                         f"{images.dtype}; convert with np.asarray(img, np.uint8).")
  if not isinstance(model, DepthNet):
    raise UserInputError(f"predict_depth needs a DepthNet, got {type(model).__name__}.")
  return images


def predict_depth(model: DepthNet, images, flip: bool = True,
                  resolution: Resolution = TRAIN) -> np.ndarray:
  """Depth in metres, float32, shape (N, H, W), at the input resolution.

  Args:
    model: a DepthNet in eval mode (from `load_model`).
    images: uint8 RGB, N x H x W x 3, any H and W.
    flip: average with the un-flipped prediction of the mirrored image (the
      paper's test-time augmentation).
    resolution: where the network runs. "train" (default): at about the
      pixel count of the frames the model was trained at (recorded with the
      model; a model without a record runs as "native", with a log line),
      aspect kept, sides multiples of 32; the images are resized there and
      the depth back with Pillow's bilinear. "native": at the images' own
      size, multiples of 32 unchanged, other sizes resized to the nearest
      multiples of 32 and back with `jax.image.resize`. (H, W): exactly
      there (multiples of 32).

  Compiled once per network input shape and flip ("native": per image
  shape); later calls reuse it.
  """
  images = _check(model, images)
  _, height, width, _ = images.shape
  resolution = effective_resolution(model, resolution)
  size = run_size(model, height, width, resolution)
  if resolution == NATIVE or size == (height, width):
    # Inputs already at the network size need no resize: one path, one
    # compilation, for the training data's own size and for "native".
    return np.asarray(compiled_depth_metres(model, jnp.asarray(images), flip=flip))
  return np.stack(predict_photos(model, list(np.asarray(images)), size, flip))
