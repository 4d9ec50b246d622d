"""DenseNet-121/161/169/201 as torchvision builds them, in Flax NNX (NHWC).

Submodule names follow torchvision (`features.denseblock1.denselayer1.conv1`),
so a torchvision state dict converts by renaming leaves only.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from percdepth_jax.models.layers import (BatchNorm2d, Conv2d, Linear,
                                         avg_pool_2x2, batch_statistics,
                                         max_pool_3x3_s2_p1)


@dataclasses.dataclass(frozen=True)
class DenseNetSpec:
  growth_rate: int
  block_config: tuple[int, int, int, int]
  num_init_features: int
  bn_size: int = 4

  def block_out_features(self) -> list[int]:
    """Channels after each dense block (before its transition)."""
    out, channels = [], self.num_init_features
    for i, num_layers in enumerate(self.block_config):
      channels += num_layers * self.growth_rate
      out.append(channels)
      if i < len(self.block_config) - 1:
        channels //= 2
    return out

  @property
  def skip_features(self) -> dict[str, int]:
    """Channels of the named features the depth decoder uses."""
    blocks = self.block_out_features()
    return {"relu0": self.num_init_features, "pool0": self.num_init_features,
            "transition1": blocks[0] // 2, "transition2": blocks[1] // 2,
            "norm5": blocks[3]}


DENSENET_SPECS = {
    "densenet121": DenseNetSpec(32, (6, 12, 24, 16), 64),
    "densenet161": DenseNetSpec(48, (6, 12, 36, 24), 96),
    "densenet169": DenseNetSpec(32, (6, 12, 32, 32), 64),
    "densenet201": DenseNetSpec(32, (6, 12, 48, 32), 64),
    # Not an ImageNet architecture: the same code at toy size, so that tests
    # and smoke runs of the training loop compile in seconds on a CPU.
    "densenet_tiny": DenseNetSpec(8, (1, 1, 1, 1), 16, bn_size=2),
}


class DenseLayer(nnx.Module):
  """BN-ReLU-Conv1x1 (bottleneck) then BN-ReLU-Conv3x3 producing `growth_rate` maps."""

  def __init__(self, in_features: int, growth_rate: int, bn_size: int, *,
               bn_eps: float, dtype, remat: bool = False, rngs: nnx.Rngs):
    width = bn_size * growth_rate
    self.norm1 = BatchNorm2d(in_features, eps=bn_eps, dtype=dtype)
    self.conv1 = Conv2d(in_features, width, 1, use_bias=False, dtype=dtype, rngs=rngs)
    self.norm2 = BatchNorm2d(width, eps=bn_eps, dtype=dtype)
    self.conv2 = Conv2d(width, growth_rate, 3, padding=1, use_bias=False,
                        dtype=dtype, rngs=rngs)
    # Recompute this layer's activations in the backward pass instead of
    # storing them: memory for larger batches.
    self.remat = remat

  def _forward(self, x_BxHxWxC: jax.Array, statistics) -> jax.Array:
    h = self.conv1(jax.nn.relu(self.norm1(x_BxHxWxC, statistics)))
    return self.conv2(jax.nn.relu(self.norm2(h)))

  def __call__(self, x_BxHxWxC: jax.Array,
               statistics: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """statistics: norm1's batch (mean, variance) of x, if already known."""
    if self.remat:
      return nnx.remat(DenseLayer._forward)(self, x_BxHxWxC, statistics)
    return self._forward(x_BxHxWxC, statistics)


class DenseBlock(nnx.Module):
  """`denselayer1..N`, each seeing the concatenation of all earlier maps."""

  def __init__(self, num_layers: int, in_features: int, growth_rate: int,
               bn_size: int, *, bn_eps: float, dtype, remat: bool, rngs: nnx.Rngs):
    self.num_layers = num_layers
    for i in range(num_layers):
      setattr(self, f"denselayer{i + 1}",
              DenseLayer(in_features + i * growth_rate, growth_rate, bn_size,
                         bn_eps=bn_eps, dtype=dtype, remat=remat, rngs=rngs))

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    features = [x_BxHxWxC]
    # Batch statistics are per channel, so those of a concatenation are the
    # concatenated statistics of its parts: each feature map's mean and
    # variance are computed once, not once per later layer (O(L) reductions
    # over the block instead of O(L^2)); same values.
    training = not self.denselayer1.norm1.use_running_average
    statistics = [batch_statistics(x_BxHxWxC)] if training else None
    for i in range(self.num_layers):
      layer = getattr(self, f"denselayer{i + 1}")
      known = None
      if training:
        known = tuple(jnp.concatenate(s, axis=0) for s in zip(*statistics))
      y = layer(jnp.concatenate(features, axis=-1), known)
      features.append(y)
      if training:
        statistics.append(batch_statistics(y))
    return jnp.concatenate(features, axis=-1)


class Transition(nnx.Module):
  """BN-ReLU-Conv1x1 halving the channels, then 2x2 average pooling."""

  def __init__(self, in_features: int, out_features: int, *, bn_eps: float,
               dtype, rngs: nnx.Rngs):
    self.norm = BatchNorm2d(in_features, eps=bn_eps, dtype=dtype)
    self.conv = Conv2d(in_features, out_features, 1, use_bias=False,
                       dtype=dtype, rngs=rngs)

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    return avg_pool_2x2(self.conv(jax.nn.relu(self.norm(x_BxHxWxC))))


class DenseNetFeatures(nnx.Module):
  """torchvision's `DenseNet.features`: conv0 ... norm5."""

  def __init__(self, spec: DenseNetSpec, *, bn_eps: float = 1e-5, dtype,
               remat: bool = False, rngs: nnx.Rngs):
    self.conv0 = Conv2d(3, spec.num_init_features, 7, stride=2, padding=3,
                        use_bias=False, dtype=dtype, rngs=rngs)
    self.norm0 = BatchNorm2d(spec.num_init_features, eps=bn_eps, dtype=dtype)
    channels = spec.num_init_features
    for i, num_layers in enumerate(spec.block_config):
      setattr(self, f"denseblock{i + 1}",
              DenseBlock(num_layers, channels, spec.growth_rate, spec.bn_size,
                         bn_eps=bn_eps, dtype=dtype, remat=remat, rngs=rngs))
      channels += num_layers * spec.growth_rate
      if i < len(spec.block_config) - 1:
        setattr(self, f"transition{i + 1}",
                Transition(channels, channels // 2, bn_eps=bn_eps, dtype=dtype,
                           rngs=rngs))
        channels //= 2
    self.norm5 = BatchNorm2d(channels, eps=bn_eps, dtype=dtype)
    self.num_features = channels

  def __call__(self, x_BxHxWx3: jax.Array) -> dict[str, jax.Array]:
    out = {}
    x = jax.nn.relu(self.norm0(self.conv0(x_BxHxWx3)))
    out["relu0"] = x
    x = out["pool0"] = max_pool_3x3_s2_p1(x)
    x = self.denseblock1(x)
    x = out["transition1"] = self.transition1(x)
    x = self.denseblock2(x)
    x = out["transition2"] = self.transition2(x)
    x = self.transition3(self.denseblock3(x))
    out["norm5"] = self.norm5(self.denseblock4(x))
    return out


class DenseNet(nnx.Module):
  """DenseNet returning named features (and ImageNet `logits` with the head).

  Input: NHWC float, already normalised as torchvision expects.
  Output: dict with relu0 (H/2), pool0 (H/4), transition1 (H/8),
  transition2 (H/16), norm5 (H/32) and optionally logits (B x num_classes).
  bn_eps: BatchNorm epsilon, 1e-5 as torchvision (Keras DenseNets: 1.001e-5).
  remat: recompute each dense layer in the backward pass (less memory).
  """

  def __init__(self, arch: str = "densenet121", *, num_classes: int | None = None,
               bn_eps: float = 1e-5, dtype=jnp.float32, remat: bool = False,
               rngs: nnx.Rngs):
    if arch not in DENSENET_SPECS:
      raise ValueError(f"unknown DenseNet arch {arch!r}; "
                       f"choose one of {sorted(DENSENET_SPECS)}")
    self.arch = arch
    self.spec = DENSENET_SPECS[arch]
    self.features = DenseNetFeatures(self.spec, bn_eps=bn_eps, dtype=dtype,
                                     remat=remat, rngs=rngs)
    self.classifier = (Linear(self.features.num_features, num_classes,
                              dtype=dtype, rngs=rngs)
                       if num_classes else None)

  def __call__(self, x_BxHxWx3: jax.Array) -> dict[str, jax.Array]:
    out = self.features(x_BxHxWx3)
    if self.classifier is not None:
      pooled_BxC = jnp.mean(jax.nn.relu(out["norm5"]), axis=(1, 2))
      out["logits"] = self.classifier(pooled_BxC).astype(jnp.float32)
    return out

