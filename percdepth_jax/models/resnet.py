"""ResNet-50 v1.5 (torchvision: stride on the 3x3 conv) in Flax NNX (NHWC).

Used frozen, in eval mode, as the perceptual network; it can be built
truncated after any stage (`last_stage="layer1"` for the perceptual loss) so
unused stages cost neither memory nor compute.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from percdepth_jax.models.layers import (BatchNorm2d, Conv2d, Linear,
                                         max_pool_3x3_s2_p1)

STAGES = ("layer1", "layer2", "layer3", "layer4")
_BLOCKS = (3, 4, 6, 3)
_WIDTHS = (64, 128, 256, 512)
EXPANSION = 4


class Downsample(nnx.Module):
  """torchvision's `downsample` Sequential: `0` = 1x1 conv, `1` = BatchNorm."""

  def __init__(self, in_features: int, out_features: int, stride: int, *,
               dtype, rngs: nnx.Rngs):
    setattr(self, "0", Conv2d(in_features, out_features, 1, stride=stride,
                              use_bias=False, dtype=dtype, rngs=rngs))
    setattr(self, "1", BatchNorm2d(out_features, dtype=dtype))

  def __call__(self, x: jax.Array) -> jax.Array:
    return getattr(self, "1")(getattr(self, "0")(x))


class Bottleneck(nnx.Module):
  """1x1 reduce, 3x3 (strided, v1.5), 1x1 expand, plus the identity/projection."""

  def __init__(self, in_features: int, width: int, stride: int, *, dtype,
               rngs: nnx.Rngs):
    out_features = width * EXPANSION
    self.conv1 = Conv2d(in_features, width, 1, use_bias=False, dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm2d(width, dtype=dtype)
    self.conv2 = Conv2d(width, width, 3, stride=stride, padding=1,
                        use_bias=False, dtype=dtype, rngs=rngs)
    self.bn2 = BatchNorm2d(width, dtype=dtype)
    self.conv3 = Conv2d(width, out_features, 1, use_bias=False, dtype=dtype, rngs=rngs)
    self.bn3 = BatchNorm2d(out_features, dtype=dtype)
    self.downsample = (
        Downsample(in_features, out_features, stride, dtype=dtype, rngs=rngs)
        if stride != 1 or in_features != out_features else None)

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    h = jax.nn.relu(self.bn1(self.conv1(x_BxHxWxC)))
    h = jax.nn.relu(self.bn2(self.conv2(h)))
    h = self.bn3(self.conv3(h))
    shortcut = x_BxHxWxC if self.downsample is None else self.downsample(x_BxHxWxC)
    return jax.nn.relu(h + shortcut.astype(h.dtype))


class Stage(nnx.Module):
  """A torchvision `layerN` Sequential of bottlenecks named `0`, `1`, ..."""

  def __init__(self, num_blocks: int, in_features: int, width: int,
               stride: int, *, dtype, rngs: nnx.Rngs):
    self.num_blocks = num_blocks
    for i in range(num_blocks):
      setattr(self, str(i), Bottleneck(in_features, width, stride if i == 0 else 1,
                                       dtype=dtype, rngs=rngs))
      in_features = width * EXPANSION

  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.num_blocks):
      x = getattr(self, str(i))(x)
    return x


class ResNet50(nnx.Module):
  """ResNet-50 returning `stem` (after max-pool, H/4), `layer1..layer4`, `logits`.

  Args:
    last_stage: build and run only up to this stage ("layer1" ... "layer4").
    num_classes: size of the `fc` head; only built when `last_stage="layer4"`.
  """

  def __init__(self, *, last_stage: str = "layer4", num_classes: int | None = None,
               dtype=jnp.float32, rngs: nnx.Rngs):
    if last_stage not in STAGES:
      raise ValueError(f"last_stage must be one of {STAGES}, got {last_stage!r}")
    if num_classes and last_stage != "layer4":
      raise ValueError("the classifier head needs all four stages (last_stage='layer4')")
    self.last_stage = last_stage
    self.num_stages = STAGES.index(last_stage) + 1
    self.conv1 = Conv2d(3, 64, 7, stride=2, padding=3, use_bias=False,
                        dtype=dtype, rngs=rngs)
    self.bn1 = BatchNorm2d(64, dtype=dtype)
    in_features = 64
    for i in range(self.num_stages):
      setattr(self, STAGES[i], Stage(_BLOCKS[i], in_features, _WIDTHS[i],
                                     1 if i == 0 else 2, dtype=dtype, rngs=rngs))
      in_features = _WIDTHS[i] * EXPANSION
    self.fc = Linear(in_features, num_classes, dtype=dtype, rngs=rngs) if num_classes else None

  def __call__(self, x_BxHxWx3: jax.Array) -> dict[str, jax.Array]:
    x = jax.nn.relu(self.bn1(self.conv1(x_BxHxWx3)))
    x = max_pool_3x3_s2_p1(x)
    out = {"stem": x}
    for name in STAGES[:self.num_stages]:
      x = out[name] = getattr(self, name)(x)
    if self.fc is not None:
      out["logits"] = self.fc(jnp.mean(x, axis=(1, 2))).astype(jnp.float32)
    return out
