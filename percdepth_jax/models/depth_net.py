"""The full depth network: DenseNet encoder + bridge-block decoder."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from percdepth_jax.models.config import (DEPTH_NORM_SCALE, IMAGENET_MEAN,
                                         IMAGENET_STD, ModelConfig)
from percdepth_jax.models.decoder import Decoder
from percdepth_jax.models.densenet import DenseNet
from percdepth_jax.models.layers import resize_bilinear_align_corners

INPUT_MULTIPLE = 32  # the encoder's total stride: input H and W are multiples of it


class DepthNet(nnx.Module):
  """The monocular depth network (docs/design.md, 'The model').

  Call: RGB pixels `image_BxHxWx3` as float in [0, 255] (H, W multiples of
  32) -> `out_BxHxWx1` float32 (float64 for a float64 model) in the target
  representation (at H/2 x W/2 with output_stride 2). Input normalisation
  happens inside, per the config. `to_metres` turns the output into depth in
  metres.
  """

  def __init__(self, config: ModelConfig = ModelConfig(), *, rngs: nnx.Rngs):
    self.config = config
    dtype = config.compute_dtype
    self.encoder = DenseNet(config.encoder, bn_eps=config.batchnorm_eps,
                            dtype=dtype, remat=config.remat, rngs=rngs)
    self.decoder = Decoder(self.encoder.spec.skip_features,
                           width=config.decoder_width,
                           leaky_relu_after_conv_a=config.leaky_relu_after_conv_a,
                           dtype=dtype, rngs=rngs)

  def normalize(self, image_BxHxWx3: jax.Array) -> jax.Array:
    x = image_BxHxWx3.astype(self.output_dtype) / 255.0
    if self.config.input_norm == "imagenet":
      x = (x - jnp.asarray(IMAGENET_MEAN, x.dtype)) / jnp.asarray(IMAGENET_STD, x.dtype)
    return x

  def __call__(self, image_BxHxWx3: jax.Array) -> jax.Array:
    _, height, width, _ = image_BxHxWx3.shape
    if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
      raise ValueError(f"DepthNet input height and width must be multiples of {INPUT_MULTIPLE}, "
                       f"got {height}x{width}; predict_depth resizes for you.")
    features = self.encoder(self.normalize(image_BxHxWx3))
    out = self.decoder(features)
    if self.config.output_stride == 1:
      out = resize_bilinear_align_corners(out, height, width)
    return out.astype(self.output_dtype)

  @property
  def output_dtype(self) -> jnp.dtype:
    """float32 (float64 for a float64 model): the dtype of the normalised
    input and of the output."""
    return jnp.promote_types(self.config.compute_dtype, jnp.float32)

  def to_metres(self, out: jax.Array) -> jax.Array:
    """Network output (target representation) -> metres in [min_depth, max_depth]."""
    return target_to_metres(out, self.config)


def target_to_metres(out: jax.Array, config: ModelConfig) -> jax.Array:
  lo, hi = config.min_depth, config.max_depth
  if config.target == "depth_norm":
    # Clip in the representation first so that a non-positive output cannot
    # produce inf or a negative depth.
    out = jnp.clip(out, DEPTH_NORM_SCALE / hi, DEPTH_NORM_SCALE / lo)
    return DEPTH_NORM_SCALE / out
  return jnp.clip(out, lo, hi)


def metres_to_target(depth_m: jax.Array, config: ModelConfig) -> jax.Array:
  """Depth in metres -> the target representation (for building training targets)."""
  depth_m = jnp.clip(depth_m, config.min_depth, config.max_depth)
  if config.target == "depth_norm":
    return DEPTH_NORM_SCALE / depth_m
  return depth_m
