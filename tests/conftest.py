"""Shared test helpers: random-init PyTorch models saved as state-dict files."""

from __future__ import annotations

import pathlib

import numpy as np
import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_RGBD = REPO.parent / "shared" / "data" / "real_rgbd"


def relative_max_error(actual, expected) -> float:
  """max |actual - expected| / max |expected| (the project's parity measure)."""
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  assert actual.shape == expected.shape, (actual.shape, expected.shape)
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))


def randomize_batchnorm(module, seed: int) -> None:
  """Non-trivial BatchNorm affine parameters and running statistics.

  Freshly initialised BatchNorms are identities in eval mode (mean 0, var 1,
  scale 1, bias 0), which would let a wrong mapping of these tensors pass.
  """
  import torch
  generator = torch.Generator().manual_seed(seed)
  for layer in module.modules():
    if isinstance(layer, torch.nn.BatchNorm2d):
      n = layer.num_features
      with torch.no_grad():
        layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
        layer.bias.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)
        layer.running_mean.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)
        layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def nchw(x_nhwc):
  import torch
  return torch.from_numpy(np.ascontiguousarray(np.transpose(x_nhwc, (0, 3, 1, 2))))


def nhwc(x_nchw) -> np.ndarray:
  return np.transpose(x_nchw.detach().numpy(), (0, 2, 3, 1))


@pytest.fixture(scope="session")
def torch_depth_models(tmp_path_factory):
  """Random-init PyTorch reference depth models (paper and DenseDepth-compat
  variants, small decoder width to keep tests fast), saved as .pth files."""
  import torch
  from weights_conversion import torch_reference
  root = tmp_path_factory.mktemp("torch_depth")
  models = {}
  for name, kwargs in {
      "paper": dict(decoder_width=0.25, input_norm="imagenet"),
      "compat": dict(decoder_width=0.25, input_norm="unit", densedepth_compat=True),
  }.items():
    torch.manual_seed(7)
    model = torch_reference.DepthModel("densenet121", **kwargs)
    randomize_batchnorm(model, seed=8)
    model.eval()
    path = root / f"{name}.pth"
    torch.save(model.state_dict(), path)
    models[name] = (model, path, kwargs)
  return models
