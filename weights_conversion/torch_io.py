"""Reading a PyTorch checkpoint file into a flat {key: numpy array} dict, with clear errors."""

from __future__ import annotations

import os
import pathlib

import numpy as np

from percdepth_jax.errors import UserInputError

# Wrappers that training scripts commonly put around the state dict.
_CONTAINER_KEYS = ("state_dict", "model_state_dict", "model")


def load_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a state dict saved with `torch.save(model.state_dict(), path)`.

  Also accepts a dict wrapping it under `state_dict`/`model_state_dict`/`model`
  and strips DataParallel's `module.` prefix. Never unpickles arbitrary
  objects (`weights_only=True`).
  """
  try:
    import torch
  except ImportError as e:
    raise UserInputError(
        "weight conversion needs PyTorch: pip install -e '.[torch]'") from e
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"checkpoint {path} does not exist (or is not a file).")
  try:
    obj = torch.load(path, map_location="cpu", weights_only=True)
  except Exception as e:  # torch raises many types for non-checkpoint files.
    raise UserInputError(
        f"{path} is not a PyTorch state dict file ({type(e).__name__}: "
        f"{str(e).splitlines()[0] if str(e) else ''}). Save the weights with "
        "`torch.save(model.state_dict(), path)` and convert that file.") from e
  if isinstance(obj, dict):
    for key in _CONTAINER_KEYS:
      if isinstance(obj.get(key), dict):
        obj = obj[key]
        break
  if not isinstance(obj, dict) or not obj or not all(
      isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items()):
    raise UserInputError(
        f"{path} does not hold a state dict (a non-empty dict of name -> "
        f"tensor); found {type(obj).__name__}. Save the weights with "
        "`torch.save(model.state_dict(), path)`.")
  if all(k.startswith("module.") for k in obj):
    obj = {k[len("module."):]: v for k, v in obj.items()}
  return {k: v.detach().to(torch.float32).numpy() if v.is_floating_point()
          else v.numpy() for k, v in obj.items()}


def guess_architecture(keys) -> str | None:
  """A best guess of what a state dict holds, to make mismatch errors useful."""
  keys = set(keys)
  if any(k.startswith("decoder.") for k in keys):
    return "a DenseDepth-layout depth model (use the `densedepth` subcommand)"
  if "conv1.weight" in keys and any(k.startswith("layer1.") for k in keys):
    depth = sum(1 for k in keys if k.startswith("layer3.") and k.endswith(".conv1.weight"))
    return "resnet50" if depth == 6 else f"a ResNet with {depth} blocks in layer3"
  if "features.conv0.weight" in keys:
    from percdepth_jax.models.densenet import DENSENET_SPECS
    for arch, spec in DENSENET_SPECS.items():
      counts = tuple(
          len({k.split(".")[2] for k in keys
               if k.startswith(f"features.denseblock{i + 1}.")})
          for i in range(4))
      if counts == spec.block_config:
        return arch
    return "a DenseNet of unknown depth"
  return None
