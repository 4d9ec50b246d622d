"""Depth in metres from uint8 images of any size: what predict.py and users call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from percdepth_jax.errors import UserInputError
from percdepth_jax.models import INPUT_MULTIPLE, DepthNet


def network_size(height: int, width: int) -> tuple[int, int]:
  """The nearest multiple-of-32 size (at least 32) the network runs at."""
  snap = lambda n: max(INPUT_MULTIPLE, int(round(n / INPUT_MULTIPLE)) * INPUT_MULTIPLE)
  return snap(height), snap(width)


def network_metres(model: DepthNet, x_NxHxWx3: jax.Array, flip: bool = True
                   ) -> jax.Array:
  """The network's depth in metres at its output resolution (N x H x W x 1,
  H/2 x W/2 with output_stride 2); with `flip`, averaged with the mirrored
  image's prediction mirrored back (the paper's test-time augmentation)."""
  depth = model.to_metres(model(x_NxHxWx3))
  if flip:
    mirrored = model.to_metres(model(x_NxHxWx3[:, :, ::-1]))[:, :, ::-1]
    depth = 0.5 * (depth + mirrored)
  return depth


def depth_metres(model: DepthNet, image_NxHxWx3: jax.Array, flip: bool = True
                 ) -> jax.Array:
  """Traceable core of `predict_depth`: pixels (any size) -> metres, N x H x W.

  For callers that jit it themselves (scripts/benchmark.py);
  `predict_depth` is the checked, compiled entry point.
  """
  n, height, width, _ = image_NxHxWx3.shape
  net_h, net_w = network_size(height, width)
  x = image_NxHxWx3.astype(jnp.float32)
  if (net_h, net_w) != (height, width):
    # Resize (not pad) so the network sees the whole field of view at a
    # scale close to the original; the depth map is resized back below.
    x = jax.image.resize(x, (n, net_h, net_w, 3), "linear")
  depth_NxHxW = network_metres(model, x, flip)[..., 0]
  if depth_NxHxW.shape[1:] != (height, width):
    depth_NxHxW = jax.image.resize(depth_NxHxW, (n, height, width), "linear")
  return depth_NxHxW


# Compiled once per (model structure, input shape, flip).
compiled_depth_metres = nnx.jit(depth_metres, static_argnames=("flip",))


def predict_depth(model: DepthNet, images, flip: bool = True) -> np.ndarray:
  """Depth in metres, float32, shape (N, H, W), at the input resolution.

  Args:
    model: a DepthNet in eval mode (from `load_model`).
    images: uint8 RGB, N x H x W x 3, any H and W. Multiples of 32 run through
      the network unchanged; other sizes are resized to the nearest multiple
      of 32 and the depth map is resized back.
    flip: average with the un-flipped prediction of the mirrored image (the
      paper's test-time augmentation).

  Compiled once per (input shape, flip); later calls with the same shape reuse it.
  """
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
  return np.asarray(compiled_depth_metres(model, jnp.asarray(images), flip=flip))
