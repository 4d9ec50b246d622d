"""The PyTorch reference of the depth model, in DenseDepth's state-dict layout.

This is what "the PyTorch reference" means throughout the project: parity
tests, weight conversion and benchmarks compare against it. It is built on
torchvision's DenseNet (`encoder.original_model`) and DenseDepth's decoder
(`decoder.conv2`, `decoder.up{1..4}.conv{A,B}`, `decoder.conv3`), with the
paper's differences as options (LeakyReLU after convA, full-resolution output).
Input: NCHW float RGB in [0, 255]; normalisation happens inside, as in the
Flax model.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
import torchvision
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class UpSample(nn.Module):
  """DenseDepth's bridge block: upsample to the skip, concat, convA, convB."""

  def __init__(self, skip_input: int, output_features: int,
               leaky_relu_after_conv_a: bool = True):
    super().__init__()
    self.convA = nn.Conv2d(skip_input, output_features, kernel_size=3, stride=1, padding=1)
    self.convB = nn.Conv2d(output_features, output_features, kernel_size=3, stride=1, padding=1)
    self.leaky_relu_after_conv_a = leaky_relu_after_conv_a

  def forward(self, x, concat_with):
    up_x = F.interpolate(x, size=concat_with.shape[2:], mode="bilinear", align_corners=True)
    h = self.convA(torch.cat([up_x, concat_with], dim=1))
    if self.leaky_relu_after_conv_a:
      h = F.leaky_relu(h, 0.2)
    return F.leaky_relu(self.convB(h), 0.2)


class Decoder(nn.Module):

  def __init__(self, skip_channels: dict[str, int], decoder_width: float = 1.0,
               leaky_relu_after_conv_a: bool = True):
    super().__init__()
    num_features = skip_channels["norm5"]
    features = int(num_features * decoder_width)
    self.conv2 = nn.Conv2d(num_features, features, kernel_size=1, stride=1, padding=0)
    la = leaky_relu_after_conv_a
    self.up1 = UpSample(features // 1 + skip_channels["transition2"], features // 2, la)
    self.up2 = UpSample(features // 2 + skip_channels["transition1"], features // 4, la)
    self.up3 = UpSample(features // 4 + skip_channels["pool0"], features // 8, la)
    self.up4 = UpSample(features // 8 + skip_channels["relu0"], features // 16, la)
    self.conv3 = nn.Conv2d(features // 16, 1, kernel_size=3, stride=1, padding=1)

  def forward(self, features: dict[str, torch.Tensor]) -> torch.Tensor:
    x = self.conv2(F.relu(features["norm5"]))
    x = self.up1(x, features["transition2"])
    x = self.up2(x, features["transition1"])
    x = self.up3(x, features["pool0"])
    x = self.up4(x, features["relu0"])
    return self.conv3(x)


class Encoder(nn.Module):
  """torchvision DenseNet as DenseDepth wraps it (`encoder.original_model`)."""

  def __init__(self, arch: str = "densenet121"):
    super().__init__()
    self.original_model = getattr(torchvision.models, arch)(weights=None)

  def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
    return densenet_features(self.original_model, x, with_logits=False)


class DepthModel(nn.Module):
  """Encoder + decoder (+ upsampling to the input size with output_stride 1)."""

  def __init__(self, encoder: str = "densenet121", decoder_width: float = 1.0,
               densedepth_compat: bool = False, input_norm: str = "imagenet"):
    super().__init__()
    self.encoder = Encoder(encoder)
    features = self.encoder.original_model.features
    skip_channels = {
        "relu0": features.conv0.out_channels,
        "pool0": features.conv0.out_channels,
        "transition1": features.transition1.conv.out_channels,
        "transition2": features.transition2.conv.out_channels,
        "norm5": features.norm5.num_features,
    }
    self.decoder = Decoder(skip_channels, decoder_width,
                           leaky_relu_after_conv_a=not densedepth_compat)
    self.output_stride = 2 if densedepth_compat else 1
    self.input_norm = input_norm
    # Not persistent: the state dict stays exactly DenseDepth's.
    self.register_buffer("mean", torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1), persistent=False)
    self.register_buffer("std", torch.tensor(IMAGENET_STD).view(1, 3, 1, 1), persistent=False)

  def normalize(self, image: torch.Tensor) -> torch.Tensor:
    x = image / 255.0
    if self.input_norm == "imagenet":
      x = (x - self.mean) / self.std
    return x

  def forward(self, image: torch.Tensor) -> torch.Tensor:
    out = self.decoder(self.encoder(self.normalize(image)))
    if self.output_stride == 1:
      out = F.interpolate(out, size=image.shape[2:], mode="bilinear", align_corners=True)
    return out


def densenet_features(model: torchvision.models.DenseNet, x: torch.Tensor,
                      with_logits: bool = True) -> dict[str, torch.Tensor]:
  """Named intermediate features of a torchvision DenseNet (NCHW)."""
  out = {}
  for name, layer in model.features.named_children():
    x = layer(x)
    if name in ("relu0", "pool0", "transition1", "transition2", "norm5"):
      out[name] = x
  if with_logits:
    pooled = torch.flatten(F.adaptive_avg_pool2d(F.relu(x), (1, 1)), 1)
    out["logits"] = model.classifier(pooled)
  return out


def resnet_features(model: torchvision.models.ResNet, x: torch.Tensor,
                    with_logits: bool = True) -> dict[str, torch.Tensor]:
  """Named intermediate features of a torchvision ResNet (NCHW)."""
  x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
  out = {"stem": x}
  for name in ("layer1", "layer2", "layer3", "layer4"):
    x = out[name] = getattr(model, name)(x)
  if with_logits:
    out["logits"] = model.fc(torch.flatten(model.avgpool(x), 1))
  return out
