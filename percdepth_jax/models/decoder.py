"""The bridge-block decoder (docs/design.md, 'The model'), DenseDepth's module names."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from percdepth_jax.models.layers import Conv2d, resize_bilinear_align_corners

# The paper initialises the decoder like Keras (DenseDepth): Glorot-uniform
# kernels, zero biases. Converted checkpoints overwrite these anyway.
_GLOROT = dict(init="glorot")

# Skip features in the order the decoder consumes them (deepest first).
SKIPS = ("transition2", "transition1", "pool0", "relu0")


class BridgeBlock(nnx.Module):
  """Upsample x to the skip's size, concat [x_up, skip], convA, convB."""

  def __init__(self, in_features: int, out_features: int, *,
               leaky_relu_after_conv_a: bool, dtype, rngs: nnx.Rngs):
    self.convA = Conv2d(in_features, out_features, 3, padding=1, dtype=dtype,
                        rngs=rngs, **_GLOROT)
    self.convB = Conv2d(out_features, out_features, 3, padding=1, dtype=dtype,
                        rngs=rngs, **_GLOROT)
    self.leaky_relu_after_conv_a = leaky_relu_after_conv_a

  def __call__(self, x_BxhxwxC: jax.Array, skip_BxHxWxS: jax.Array) -> jax.Array:
    _, height, width, _ = skip_BxHxWxS.shape
    x_up = resize_bilinear_align_corners(x_BxhxwxC, height, width)
    x = jnp.concatenate([x_up, skip_BxHxWxS.astype(x_up.dtype)], axis=-1)
    x = self.convA(x)
    if self.leaky_relu_after_conv_a:
      x = jax.nn.leaky_relu(x, 0.2)
    return jax.nn.leaky_relu(self.convB(x), 0.2)


class Decoder(nnx.Module):
  """conv2 on relu(norm5), up1..up4 with skips, conv3 (1 channel at H/2)."""

  def __init__(self, skip_features: dict[str, int], *, width: float = 1.0,
               leaky_relu_after_conv_a: bool = True, dtype=jnp.float32,
               rngs: nnx.Rngs):
    num_features = skip_features["norm5"]
    f = int(num_features * width)
    self.conv2 = Conv2d(num_features, f, 1, dtype=dtype, rngs=rngs, **_GLOROT)
    in_features = f
    for i, skip in enumerate(SKIPS):
      out_features = f // 2 ** (i + 1)
      setattr(self, f"up{i + 1}",
              BridgeBlock(in_features + skip_features[skip], out_features,
                          leaky_relu_after_conv_a=leaky_relu_after_conv_a,
                          dtype=dtype, rngs=rngs))
      in_features = out_features
    self.conv3 = Conv2d(in_features, 1, 3, padding=1, dtype=dtype, rngs=rngs,
                        **_GLOROT)

  def __call__(self, features: dict[str, jax.Array]) -> jax.Array:
    x = self.conv2(jax.nn.relu(features["norm5"]))
    for i, skip in enumerate(SKIPS):
      x = getattr(self, f"up{i + 1}")(x, features[skip])
    return self.conv3(x)
