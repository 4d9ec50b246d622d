"""Measures Flax-vs-PyTorch parity of converted random-init weights.

  python -m weights_conversion.parity [--sizes 64x96,96x160] [--seed 0]

Builds random-init torchvision DenseNet-121 and ResNet-50 and the PyTorch
reference depth model (BatchNorm statistics randomised so they matter),
converts each through the same code as the CLI, and prints the relative max
error (max |jax - torch| / max |torch|) of every named output, float32.
"""

from __future__ import annotations

import argparse
import pathlib
import tempfile

import numpy as np
import torch
import torchvision
from flax import nnx

from percdepth_jax.compare import relative_max_error
from weights_conversion import torch_reference
from weights_conversion.convert import (densedepth_model_config, densedepth_to_flax,
                                        torchvision_to_flax)

_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
_STD = np.array([0.229, 0.224, 0.225], np.float32)


def randomize_batchnorm(module: torch.nn.Module, seed: int) -> None:
  """Non-trivial BatchNorm affine parameters and running statistics.

  Freshly initialised BatchNorms are identities in eval mode (mean 0, var 1,
  scale 1, bias 0), which would let a wrong mapping of these tensors pass.
  """
  generator = torch.Generator().manual_seed(seed)
  for layer in module.modules():
    if isinstance(layer, torch.nn.BatchNorm2d):
      n = layer.num_features
      with torch.no_grad():
        layer.weight.copy_(0.5 + torch.rand(n, generator=generator))
        layer.bias.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)
        layer.running_mean.copy_(0.4 * torch.rand(n, generator=generator) - 0.2)
        layer.running_var.copy_(0.5 + torch.rand(n, generator=generator))


def _nhwc(t: torch.Tensor) -> np.ndarray:
  return t.permute(0, 2, 3, 1).numpy() if t.ndim == 4 else t.numpy()


def measure(sizes: list[tuple[int, int]], seed: int = 0) -> list[tuple[str, str, str, float]]:
  """Rows (model, size, output, relative max error)."""
  torch.manual_seed(seed)
  rows = []
  forward = nnx.jit(lambda module, x: module(x))
  with tempfile.TemporaryDirectory() as tmp:
    tmp = pathlib.Path(tmp)
    nets = {}
    for arch, features_fn in (("densenet121", torch_reference.densenet_features),
                              ("resnet50", torch_reference.resnet_features)):
      model = getattr(torchvision.models, arch)(weights=None)
      randomize_batchnorm(model, seed + len(nets) + 1)
      torch.save(model.state_dict(), tmp / f"{arch}.pth")
      flax_model, _, _ = torchvision_to_flax(arch, tmp / f"{arch}.pth")
      nets[arch] = (model.eval(), features_fn, flax_model)
    depth_models = {}
    for name, compat, norm in (("depth model (paper)", False, "imagenet"),
                               ("depth model (DenseDepth compat)", True, "unit")):
      model = torch_reference.DepthModel(densedepth_compat=compat, input_norm=norm)
      randomize_batchnorm(model, seed + 10 + len(depth_models))
      torch.save(model.state_dict(), tmp / "depth.pth")
      config = densedepth_model_config(densedepth_compat=compat, input_norm=norm)
      depth_models[name] = (model.eval(), densedepth_to_flax(tmp / "depth.pth", config))
    rng = np.random.RandomState(seed)
    for height, width in sizes:
      size = f"{height}x{width}"
      image = rng.uniform(0, 255, (2, height, width, 3)).astype(np.float32)
      x = (image / 255.0 - _MEAN) / _STD
      for arch, (model, features_fn, flax_model) in nets.items():
        with torch.no_grad():
          expected = features_fn(model, torch.from_numpy(x).permute(0, 3, 1, 2))
        actual = forward(flax_model, x)
        for key, value in expected.items():
          rows.append((arch, size, key, relative_max_error(actual[key], _nhwc(value))))
      for name, (model, flax_model) in depth_models.items():
        with torch.no_grad():
          expected = model(torch.from_numpy(image).permute(0, 3, 1, 2))
        rows.append((name, size, "output", relative_max_error(forward(flax_model, image), _nhwc(expected))))
  return rows


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--sizes", default="64x96,96x160")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()
  sizes = [tuple(int(v) for v in s.split("x")) for s in args.sizes.split(",")]
  rows = measure(sizes, args.seed)
  print(f"{'model':<32} {'input':>8}  {'output':<12} {'rel. max error':>14}")
  for model, size, key, error in rows:
    print(f"{model:<32} {size:>8}  {key:<12} {error:>14.2e}")
  worst = {}
  for model, _, _, error in rows:
    worst[model] = max(worst.get(model, 0.0), error)
  print("\nworst per model: " + ", ".join(f"{m} {e:.1e}" for m, e in worst.items()))


if __name__ == "__main__":
  main()
