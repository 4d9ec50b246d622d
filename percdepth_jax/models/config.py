"""The depth model's configuration: what a checkpoint records about its model."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp

from percdepth_jax.errors import UserInputError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# DenseDepth's DepthNorm: target = DEPTH_NORM_SCALE / depth_m.
DEPTH_NORM_SCALE = 10.0
# Fields that say how the model computes, not what: a run may change them
# for a model it loads or resumes.
COMPUTE_FIELDS = ("dtype", "remat")

_CHOICES = {
    "encoder": ("densenet121", "densenet161", "densenet169", "densenet201",
                "densenet_tiny"),
    "input_norm": ("imagenet", "unit"),
    "target": ("depth_norm", "metres"),
    "output_stride": (1, 2),
    "dtype": ("float32", "bfloat16", "float64"),
}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """The depth model's fields (docs/design.md, 'ModelConfig').

  encoder: DenseNet variant of the encoder (densenet_tiny: a toy size for
    tests and smoke runs only).
  decoder_width: F = int(C * decoder_width), C = the encoder's norm5 width.
  input_norm: "imagenet" ((x/255 - mean)/std, torchvision weights) or "unit"
    (x/255, DenseDepth checkpoints).
  target: "depth_norm" (network predicts 10 / depth_m) or "metres".
  output_stride: 1 (paper: upsample to the input size) or 2 (DenseDepth).
  leaky_relu_after_conv_a: the paper applies LeakyReLU(0.2) after both convs of
    a bridge block; DenseDepth's PyTorch code omits the one after convA.
  min_depth, max_depth: the valid range in metres (predictions are clipped).
  batchnorm_eps: epsilon of the encoder's BatchNorms: 1e-5 as in torchvision,
    1.001e-5 for Keras DenseNets (converted DenseDepth .h5 models).
  dtype: compute dtype; parameters and BatchNorm statistics stay float32.
    float64 computes everything in float64 (a numerical reference, e.g. for
    gradient checks); it needs JAX's 64-bit mode (`jax.enable_x64(True)`).
  remat: recompute each dense layer's activations in the backward pass
    instead of storing them: less memory for larger batches, more compute.
  """

  encoder: str = "densenet121"
  decoder_width: float = 1.0
  input_norm: str = "imagenet"
  target: str = "depth_norm"
  output_stride: int = 1
  leaky_relu_after_conv_a: bool = True
  min_depth: float = 0.1
  max_depth: float = 10.0
  batchnorm_eps: float = 1e-5
  dtype: str = "float32"
  remat: bool = False

  def __post_init__(self):
    for field, allowed in _CHOICES.items():
      if getattr(self, field) not in allowed:
        raise UserInputError(
            f"model config field {field}={getattr(self, field)!r} is not one of "
            f"{list(allowed)}.")
    if not 0.0 < self.decoder_width <= 4.0:
      raise UserInputError(
          f"model config decoder_width={self.decoder_width} must be in (0, 4].")
    if not 0.0 < self.min_depth < self.max_depth:
      raise UserInputError(
          f"model config needs 0 < min_depth < max_depth, got "
          f"{self.min_depth}, {self.max_depth}.")
    if not 0.0 < self.batchnorm_eps < 1e-2:
      raise UserInputError(
          f"model config batchnorm_eps={self.batchnorm_eps} must be in (0, 0.01).")

  @property
  def compute_dtype(self):
    if self.dtype == "float64" and not jax.config.jax_enable_x64:
      raise UserInputError(
          "model config dtype='float64' needs JAX's 64-bit mode: run the model "
          "inside `with jax.enable_x64(True):` or set JAX_ENABLE_X64=1.")
    return jnp.dtype(self.dtype)

  @property
  def target_max_value(self) -> float:
    """Largest value of the target representation (SSIM's dynamic range)."""
    if self.target == "depth_norm":
      return DEPTH_NORM_SCALE / self.min_depth
    return self.max_depth

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  def architecture(self) -> dict[str, Any]:
    """The fields that decide the weights and outputs (all but COMPUTE_FIELDS)."""
    return {k: v for k, v in self.to_dict().items() if k not in COMPUTE_FIELDS}

  @classmethod
  def from_dict(cls, values: dict[str, Any]) -> "ModelConfig":
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
      raise UserInputError(
          f"unknown model config fields {unknown}; known fields: {sorted(names)}.")
    return cls(**values)
