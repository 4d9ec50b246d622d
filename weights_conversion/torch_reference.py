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


# percdepth_jax's `densenet_tiny` (growth rate, block config, initial
# features, bn_size), for tests; written out here so that this module never
# imports JAX (the benchmark's PyTorch worker must not). tests/test_parity.py
# checks it against percdepth_jax's spec table.
DENSENET_TINY = (8, (1, 1, 1, 1), 16, 2)


def torchvision_densenet(arch: str) -> torchvision.models.DenseNet:
  """A random-init torchvision DenseNet; `densenet_tiny` (the toy size of
  percdepth_jax's spec table, for tests) built from the same constructor."""
  if arch == "densenet_tiny":
    growth_rate, block_config, num_init_features, bn_size = DENSENET_TINY
    return torchvision.models.DenseNet(growth_rate, block_config, num_init_features,
                                       bn_size)
  return getattr(torchvision.models, arch)(weights=None)


class Encoder(nn.Module):
  """torchvision DenseNet as DenseDepth wraps it (`encoder.original_model`)."""

  def __init__(self, arch: str = "densenet121"):
    super().__init__()
    self.original_model = torchvision_densenet(arch)

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
    # Not persistent: the state dict stays exactly DenseDepth's. Stored in
    # float64 and rounded to the input's dtype, so that a float64 model
    # normalises with the exact constants (the float64 gradient reference).
    self.register_buffer("mean", torch.tensor(IMAGENET_MEAN, dtype=torch.float64).view(1, 3, 1, 1),
                         persistent=False)
    self.register_buffer("std", torch.tensor(IMAGENET_STD, dtype=torch.float64).view(1, 3, 1, 1),
                         persistent=False)

  def normalize(self, image: torch.Tensor) -> torch.Tensor:
    x = image / 255.0
    if self.input_norm == "imagenet":
      x = (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)
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


# ---------------------------------------------------------------------------
# Reference losses (docs/design.md, 'The loss and the recipe'), written
# independently of the JAX ones: DenseDepth's PyTorch SSIM (a full 2-D
# Gaussian window, conv2d without padding), tf.image.image_gradients-style
# forward differences, and the perceptual term on a torchvision ResNet-50.
# NCHW; `mask` (N x 1 x H x W, 1 = valid, or None) works as in
# `percdepth_jax.losses`: at holes the target is replaced by the detached
# prediction (and, for SSIM and the perceptual term, the prediction by its
# detached self); L1 and gradient average over valid pixels.


def _fill_target(pred: torch.Tensor, target: torch.Tensor,
                 mask: torch.Tensor | None) -> torch.Tensor:
  if mask is None:
    return target
  return torch.where(mask.bool(), target, pred.detach())


def _detach_holes(pred: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
  if mask is None:
    return pred
  return torch.where(mask.bool(), pred, pred.detach())


def _num_valid(pred: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
  if mask is None:
    return torch.tensor(float(pred.numel()), device=pred.device)
  return mask.float().expand_as(pred).sum().clamp(min=1.0)


def l1_loss(pred, target, mask=None):
  target = _fill_target(pred, target, mask)
  return (pred - target).abs().sum() / _num_valid(pred, mask)


def image_gradients(image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
  """tf.image.image_gradients in NCHW: (dy, dx), zero in the last row/column."""
  dy = F.pad(image[:, :, 1:, :] - image[:, :, :-1, :], (0, 0, 0, 1))
  dx = F.pad(image[:, :, :, 1:] - image[:, :, :, :-1], (0, 1, 0, 0))
  return dy, dx


def gradient_loss(pred, target, mask=None):
  target = _fill_target(pred, target, mask)
  dy_pred, dx_pred = image_gradients(pred)
  dy_true, dx_true = image_gradients(target)
  edges = (dy_pred - dy_true).abs(), (dx_pred - dx_true).abs()
  if mask is not None:
    # A difference is valid where both of its pixels are: the product of the
    # mask with its shifted copy (zero-padded like the gradients).
    m = mask.float()
    m_dy = F.pad(m[:, :, 1:, :] * m[:, :, :-1, :], (0, 0, 0, 1))
    m_dx = F.pad(m[:, :, :, 1:] * m[:, :, :, :-1], (0, 1, 0, 0))
    edges = edges[0] * m_dy, edges[1] * m_dx
  return (edges[0] + edges[1]).sum() / _num_valid(pred, mask)


def gaussian_window(window_size: int = 11, sigma: float = 1.5,
                    channels: int = 1) -> torch.Tensor:
  """DenseDepth's `create_window`: outer product of a 1-D Gaussian, C x 1 x K x K (float64)."""
  x = torch.arange(window_size, dtype=torch.float64) - window_size // 2
  gauss = torch.exp(-x ** 2 / (2.0 * sigma ** 2))
  gauss = gauss / gauss.sum()
  window = gauss[:, None] @ gauss[None, :]
  return window.expand(channels, 1, window_size, window_size).contiguous()


def ssim(img1: torch.Tensor, img2: torch.Tensor, val_range: float,
         window_size: int = 11, size_average: bool = True) -> torch.Tensor:
  """DenseDepth's PyTorch `ssim` (conv2d, padding 0, K1 0.01, K2 0.03).

  size_average=True: mean over everything; False: one value per image.
  """
  channels = img1.shape[1]
  window = gaussian_window(window_size, 1.5, channels).to(img1.device, img1.dtype)
  mu1 = F.conv2d(img1, window, padding=0, groups=channels)
  mu2 = F.conv2d(img2, window, padding=0, groups=channels)
  mu1_sq, mu2_sq, mu1_mu2 = mu1.pow(2), mu2.pow(2), mu1 * mu2
  sigma1_sq = F.conv2d(img1 * img1, window, padding=0, groups=channels) - mu1_sq
  sigma2_sq = F.conv2d(img2 * img2, window, padding=0, groups=channels) - mu2_sq
  sigma12 = F.conv2d(img1 * img2, window, padding=0, groups=channels) - mu1_mu2
  c1 = (0.01 * val_range) ** 2
  c2 = (0.03 * val_range) ** 2
  v1 = 2.0 * sigma12 + c2
  v2 = sigma1_sq + sigma2_sq + c2
  ssim_map = ((2 * mu1_mu2 + c1) * v1) / ((mu1_sq + mu2_sq + c1) * v2)
  if size_average:
    return ssim_map.mean()
  return ssim_map.mean(dim=(1, 2, 3))


def ssim_loss(pred, target, mask=None, *, val_range):
  target = _fill_target(pred, target, mask)
  per_image = ssim(_detach_holes(pred, mask), target, val_range, size_average=False)
  return torch.clamp((1 - per_image) * 0.5, 0, 1).mean()


def resnet_layer1(model: torchvision.models.ResNet, x: torch.Tensor) -> torch.Tensor:
  """Output of `layer1` (without running the later stages)."""
  return model.layer1(model.maxpool(model.relu(model.bn1(model.conv1(x)))))


def perceptual_features(depth: torch.Tensor, resnet: torch.nn.Module, *,
                        val_range: float, size: int = 224) -> torch.Tensor:
  """phi(depth): depth / val_range as 3 channels, 224x224 (align_corners),
  ImageNet mean/std, ResNet-50 layer1 (resnet in eval mode)."""
  mean = torch.tensor(IMAGENET_MEAN, dtype=depth.dtype, device=depth.device).view(1, 3, 1, 1)
  std = torch.tensor(IMAGENET_STD, dtype=depth.dtype, device=depth.device).view(1, 3, 1, 1)
  x = (depth / val_range).repeat(1, 3, 1, 1)
  x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=True)
  return resnet_layer1(resnet, (x - mean) / std)


def perceptual_loss(pred, target, resnet, mask=None, *, val_range, size=224):
  """mean |phi(target) - phi(pred)|, phi = `perceptual_features`."""
  target = _fill_target(pred, target, mask)
  phi = lambda d: perceptual_features(d, resnet, val_range=val_range, size=size)
  return (phi(target) - phi(_detach_holes(pred, mask))).abs().mean()


def total_loss(pred, target, mask=None, *, val_range, resnet=None,
               weights=(0.1, 1.0, 1.0, 0.5)):
  """The paper's weighted sum; returns (total, dict of unweighted terms)."""
  terms = {"l1": l1_loss(pred, target, mask),
           "gradient": gradient_loss(pred, target, mask),
           "ssim": ssim_loss(pred, target, mask, val_range=val_range)}
  if weights[3]:
    terms["perceptual"] = perceptual_loss(pred, target, resnet, mask,
                                          val_range=val_range)
  total = sum(w * t for w, t in zip(weights, terms.values()))
  return total, terms
