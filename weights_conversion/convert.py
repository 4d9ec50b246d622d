"""Strict conversion of PyTorch state dicts into Flax modules and model directories."""

from __future__ import annotations

import os
import pathlib
from typing import Any

import numpy as np
from flax import nnx

from percdepth_jax.errors import UserInputError
from percdepth_jax.model_io import build_module, fill_module, load_backbone, save_model
from percdepth_jax.models import ModelConfig
from percdepth_jax.models.densenet import DENSENET_SPECS
from percdepth_jax.models.resnet import STAGES
from percdepth_jax.storage import NYU_RESOLUTION
from weights_conversion.tables import (is_ignored, modernize_key, to_flax_layout,
                                       to_torch_layout, torch_key)
from weights_conversion.torch_io import guess_architecture, load_state_dict

TORCHVISION_ARCHS = (*DENSENET_SPECS, "resnet50")
_SHOW = 12  # keys listed per kind of problem before "... and N more"


class ConversionError(UserInputError):
  """A state dict that does not match the model: lists every offending key."""


def _listing(title: str, items: list[str]) -> str:
  shown = "\n    ".join(items[:_SHOW])
  more = f"\n    ... and {len(items) - _SHOW} more" if len(items) > _SHOW else ""
  return f"  {title} ({len(items)}):\n    {shown}{more}"


def mismatch_report(header: str, problems: dict[str, list[str]]) -> list[str]:
  """The lines of a "does not match" error: the header, then each non-empty
  list of offending names under its title."""
  return [header] + [_listing(title, items) for title, items in problems.items() if items]


def convert_state_dict(state_dict: dict[str, np.ndarray], abstract: nnx.Module,
                       fmt: str, *, source: str = "the checkpoint",
                       extra_ignored: tuple[str, ...] = ()
                       ) -> dict[tuple[str, ...], np.ndarray]:
  """Maps every variable of `abstract` to its array in `state_dict`.

  Raises ConversionError listing every missing, unexpected or mis-shaped key;
  returns only when the match is exact.
  """
  state_dict = {modernize_key(k): v for k, v in state_dict.items()}
  arrays, used, missing, mismatched = {}, set(), [], []
  for path, variable in nnx.to_flat_state(nnx.state(abstract)):
    key = torch_key(path, fmt)
    if key not in state_dict:
      missing.append(key)
      continue
    used.add(key)
    array = to_flax_layout(path[-1], state_dict[key])
    if array.shape != tuple(variable.get_value().shape):
      expected = to_torch_layout(path[-1], np.empty(variable.get_value().shape, np.int8)).shape
      mismatched.append(f"{key}: {tuple(state_dict[key].shape)} in the file, "
                        f"model expects {tuple(expected)}")
      continue
    arrays[path] = np.asarray(array, np.float32)
  unexpected = sorted(k for k in state_dict
                      if k not in used and not is_ignored(k, fmt, extra_ignored))
  if missing or unexpected or mismatched:
    parts = mismatch_report(
        f"{source} does not match the model; nothing was written.",
        {"missing keys": missing, "unexpected keys": unexpected,
         "keys with the wrong shape": mismatched})
    guess = guess_architecture(state_dict)
    if guess:
      parts.append(f"  The file looks like {guess}.")
    raise ConversionError("\n".join(parts))
  return arrays


def _torchvision_config(arch: str, state_dict: dict[str, np.ndarray],
                        last_stage: str | None) -> tuple[str, dict[str, Any]]:
  if arch not in TORCHVISION_ARCHS:
    raise UserInputError(f"unknown --arch {arch!r}; choose one of {list(TORCHVISION_ARCHS)}.")
  if arch == "resnet50":
    last_stage = last_stage or "layer4"
    head = state_dict.get("fc.weight")
    num_classes = int(head.shape[0]) if head is not None and last_stage == "layer4" else None
    return "resnet50", {"last_stage": last_stage, "num_classes": num_classes}
  if last_stage is not None:
    raise UserInputError("last_stage only applies to resnet50.")
  head = state_dict.get("classifier.weight")
  return "densenet", {"arch": arch,
                      "num_classes": int(head.shape[0]) if head is not None else None}


def _truncated_resnet_keys(config: dict[str, Any]) -> tuple[str, ...]:
  """Keys a truncated ResNet-50 leaves unused on purpose (later stages, fc)."""
  if config["last_stage"] == "layer4" and config["num_classes"]:
    return ()
  dropped = STAGES[STAGES.index(config["last_stage"]) + 1:]
  return tuple(rf"^{stage}\." for stage in dropped) + (r"^fc\.",)


def torchvision_to_flax(arch: str, path: str | os.PathLike, *,
                        last_stage: str | None = None):
  """Converts a torchvision state dict file; returns (module, kind, config)."""
  state_dict = load_state_dict(path)
  kind, config = _torchvision_config(arch, state_dict, last_stage)
  extra = _truncated_resnet_keys(config) if kind == "resnet50" else ()
  abstract = build_module(kind, config, abstract=True)
  arrays = convert_state_dict(state_dict, abstract, "torchvision",
                              source=f"{path} (as torchvision {arch})",
                              extra_ignored=extra)
  module = fill_module(abstract, arrays)
  module.eval()
  return module, kind, config


def load_torchvision(arch: str, path: str | os.PathLike, *,
                     last_stage: str | None = None) -> nnx.Module:
  """A torchvision ImageNet network as an eval-mode Flax module.

  `path` is a torchvision state dict (.pth) or a directory written by
  `python -m weights_conversion torchvision`. Calling the module on NHWC
  float32 input (normalised as torchvision expects) returns a dict of named
  features: DenseNet relu0, pool0, transition1, transition2, norm5 (+ logits);
  ResNet-50 stem, layer1..layer4 (+ logits). `last_stage="layer1"` builds a
  ResNet-50 truncated after layer1 (the perceptual network).
  """
  if pathlib.Path(path).is_dir():
    return load_backbone(arch, path, last_stage=last_stage)
  module, _, _ = torchvision_to_flax(arch, path, last_stage=last_stage)
  return module


def convert_torchvision(arch: str, input_path: str | os.PathLike,
                        output_dir: str | os.PathLike) -> nnx.Module:
  """`python -m weights_conversion torchvision`: .pth -> model directory."""
  module, kind, config = torchvision_to_flax(arch, input_path)
  save_model(module, output_dir, kind=kind, config=config,
             source={"format": "torchvision", "arch": arch,
                     "file": pathlib.Path(input_path).name})
  return module


def densedepth_model_config(*, encoder: str = "densenet121", decoder_width: float = 1.0,
                            densedepth_compat: bool = False,
                            input_norm: str = "unit") -> ModelConfig:
  """The model config of a DenseDepth-layout checkpoint.

  densedepth_compat reproduces DenseDepth's PyTorch decoder: no LeakyReLU
  after convA and output at half resolution (output_stride 2).
  """
  return ModelConfig(encoder=encoder, decoder_width=decoder_width,
                     input_norm=input_norm, target="depth_norm",
                     output_stride=2 if densedepth_compat else 1,
                     leaky_relu_after_conv_a=not densedepth_compat)


def densedepth_to_flax(path: str | os.PathLike, config: ModelConfig) -> nnx.Module:
  state_dict = load_state_dict(path)
  abstract = build_module("depth_net", config.to_dict(), abstract=True)
  try:
    arrays = convert_state_dict(state_dict, abstract, "densedepth",
                                source=f"{path} (as a DenseDepth-layout "
                                f"{config.encoder}, decoder width {config.decoder_width})")
  except ConversionError as e:
    hint = _decoder_width_hint(state_dict, config)
    raise ConversionError(str(e) + hint) from None
  module = fill_module(abstract, arrays)
  module.eval()
  return module


def _decoder_width_hint(state_dict, config: ModelConfig) -> str:
  weight = state_dict.get("decoder.conv2.weight")
  if weight is None or weight.ndim != 4:
    return ""
  width = weight.shape[0] / weight.shape[1]
  if abs(width - config.decoder_width) < 1e-6:
    return ""
  return f"\n  decoder.conv2 has {weight.shape[0]} of {weight.shape[1]} channels: try --decoder-width {width:g}."


def convert_densedepth(input_path: str | os.PathLike, output_dir: str | os.PathLike,
                       config: ModelConfig) -> nnx.Module:
  """`python -m weights_conversion densedepth`: .pth -> depth model directory."""
  module = densedepth_to_flax(input_path, config)
  save_model(module, output_dir, kind="depth_net", config=config.to_dict(),
             source={"format": "densedepth", "file": pathlib.Path(input_path).name},
             train_resolution=NYU_RESOLUTION)  # DenseDepth's and the paper's recipe
  return module
