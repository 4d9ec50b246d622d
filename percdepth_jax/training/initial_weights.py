"""A run's starting weights and model config.

Three starts, from `config.init`:
  model=DIR[:best]     a whole depth model (converted directory or training
                       workdir): its architecture, weights and BatchNorm
                       statistics; the optimizer and step start afresh.
  from_scratch=True    random init.
  encoder_weights=DIR  converted torchvision ImageNet weights for the encoder
                       (a directory of `python -m weights_conversion torchvision`)
                       (the paper's recipe), the decoder randomly initialised.
and the frozen perceptual network from `config.perceptual`.

Everything here runs before the workdir is touched, so a missing or
mismatching file stops the run with nothing written.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Iterable

import jax
from flax import nnx

from percdepth_jax.errors import UserInputError
from percdepth_jax.model_io import (build_module, fill_module, load_backbone,
                                    load_model_with_step, read_model_json,
                                    split_checkpoint_spec)
from percdepth_jax.models import DepthNet, ModelConfig, ResNet50
from percdepth_jax.models.config import COMPUTE_FIELDS


def _log(message: str) -> None:
  if jax.process_index() == 0:
    print(message, flush=True)


def run_model_config(config, overrides: Iterable[str] = ()) -> ModelConfig:
  """The model config a run trains.

  `config.model`, unless `config.init.model` names a whole model: then that
  model's architecture, with only the compute fields (dtype, remat) from
  `config.model`. `overrides` are the dotted config names set on the command
  line; one that would change the loaded model's architecture is refused.
  """
  own = ModelConfig.from_dict(config.model.to_dict())
  if not config.init.model:
    return own
  directory, _ = split_checkpoint_spec(config.init.model)
  if not directory.exists():
    raise UserInputError(
        f"config.init.model={config.init.model!r}: {directory} does not exist. "
        "Pass a model directory (from `python -m weights_conversion ...`) or a "
        "training workdir (DIR for its latest checkpoint, DIR:best).")
  meta = read_model_json(directory)
  if meta["kind"] != "depth_net":
    raise UserInputError(
        f"config.init.model={config.init.model!r} holds a {meta['kind']} "
        "(ImageNet weights), not a whole depth model; pass it as "
        "--config.init.encoder_weights instead.")
  loaded = ModelConfig.from_dict(meta["config"])
  own_fields, loaded_fields = dataclasses.asdict(own), dataclasses.asdict(loaded)
  changed = [name for name in (o.removeprefix("model.") for o in overrides
                               if o.startswith("model."))
             if name not in COMPUTE_FIELDS
             and own_fields.get(name) != loaded_fields.get(name)]
  if changed:
    listing = ", ".join(f"model.{n}={own_fields[n]!r} (the model has "
                        f"{loaded_fields[n]!r})" for n in changed)
    raise UserInputError(
        f"--config.{listing} would change the architecture of "
        f"config.init.model={config.init.model}; fine-tuning keeps the model's "
        "architecture (only model.dtype and model.remat may be set). Drop the "
        "override, or train that architecture from ImageNet weights without "
        "config.init.model.")
  return dataclasses.replace(
      loaded, **{name: own_fields[name] for name in COMPUTE_FIELDS})


def _backbone(arch: str, path: str, *, what: str, scratch_flag: str,
              last_stage: str | None = None) -> nnx.Module:
  """A converted ImageNet backbone named by a config path, with the commands
  that make it when it is missing."""
  if not path or not pathlib.Path(path).exists():
    raise UserInputError(
        f"{what}={path!r} does not exist. Make it from torchvision's ImageNet "
        f"weights on a connected machine:\n"
        f"  python -c \"import torch, torchvision as tv; torch.save(tv.models."
        f"{arch}(weights='IMAGENET1K_V1').state_dict(), '{arch}.pth')\"\n"
        f"  python -m weights_conversion torchvision --arch {arch} --input "
        f"{arch}.pth --output {path or 'weights/' + arch}\n"
        f"or train from random init with --config.{scratch_flag}=True.")
  if not pathlib.Path(path).is_dir():
    # The library never imports the PyTorch side: training reads converted
    # directories only.
    raise UserInputError(
        f"{what}={path!r} is a file; training reads converted model "
        f"directories. Convert it once (needs the torch extra):\n"
        f"  python -m weights_conversion torchvision --arch {arch} --input {path} "
        f"--output weights/{arch}\n"
        f"and pass --config.{what.split('.', 1)[1]}=weights/{arch}.")
  return load_backbone(arch, path, last_stage=last_stage)


def build_model(config, model_config: ModelConfig) -> DepthNet:
  """The depth network a run starts from (see the module docstring)."""
  if config.init.model:
    loaded, step = load_model_with_step(config.init.model)
    arrays = {path: variable.get_value()
              for path, variable in nnx.to_flat_state(nnx.state(loaded))}
    model = fill_module(build_module("depth_net", model_config.to_dict(),
                                     abstract=True), arrays)
    _log(f"model initialised from {config.init.model}"
         + (f" (its step {step})" if step is not None else "")
         + "; the optimizer and the step start afresh")
    return model
  model = DepthNet(model_config, rngs=nnx.Rngs(config.seed))
  if config.init.from_scratch:
    _log(f"initialising {model_config.encoder} encoder from scratch (random)")
    return model
  encoder = _backbone(model_config.encoder, config.init.encoder_weights,
                      what="config.init.encoder_weights",
                      scratch_flag="init.from_scratch")
  nnx.update(model.encoder.features, nnx.state(encoder.features))
  _log(f"encoder initialised from {config.init.encoder_weights}")
  return model


def build_perceptual_net(config) -> ResNet50 | None:
  """The frozen ResNet-50 cut after layer1, or None if its loss weight is 0."""
  if not config.loss.perceptual:
    return None
  if config.perceptual.from_scratch:
    _log("perceptual network: random-init ResNet-50 layer1 (config.perceptual.from_scratch)")
    net = ResNet50(last_stage="layer1", rngs=nnx.Rngs(config.seed + 1))
  else:
    net = _backbone("resnet50", config.perceptual.weights,
                    what="config.perceptual.weights",
                    scratch_flag="perceptual.from_scratch", last_stage="layer1")
  net.eval()
  return net
