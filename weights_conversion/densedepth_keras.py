"""DenseDepth's released Keras model (`nyu.h5`) -> a depth model directory.

  python -m weights_conversion densedepth-keras --input nyu.h5 --output DIR

The model options come from the architecture stored in the file, not from
flags: the encoder (keras.applications DenseNet-121/169/201, counted from its
dense blocks), the decoder width (conv2's filters over the encoder's
channels), whether a LeakyReLU follows each convA (DenseDepth dropped it in
March 2019) and the BatchNorm epsilon (Keras: 1.001e-5). Input RGB / 255,
output DepthNorm at half resolution, as DenseDepth's code.

Keras and the Flax model agree on layouts (HWIO kernels, per-channel vectors)
and on padding: ZeroPadding2D + a 'valid' stem conv equals the symmetric pad 3,
and zero padding before the max-pool equals -inf padding because it follows
a ReLU. DenseDepth's BilinearUpSampling2D (x2, align_corners=True) is the
decoder's align_corners resize to the skip's size, which is twice as large
for inputs that are multiples of 32. Only names differ: `keras_weight_name`
is the table.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from typing import Any

import numpy as np
from flax import nnx

from percdepth_jax.errors import UserInputError
from percdepth_jax.model_io import build_module, fill_module, save_model
from percdepth_jax.models import ModelConfig
from percdepth_jax.models.densenet import DENSENET_SPECS
from percdepth_jax.storage import NYU_RESOLUTION
from weights_conversion.convert import (ConversionError, _listing, mismatch_report,
                                        densedepth_model_config)
from weights_conversion.keras_h5 import KerasModelFile, read_keras_h5

# Layer classes of DenseDepth's Keras model; anything else is refused.
KNOWN_LAYERS = ("InputLayer", "ZeroPadding2D", "Conv2D", "BatchNormalization",
                "Activation", "MaxPooling2D", "AveragePooling2D", "Concatenate",
                "BilinearUpSampling2D", "LeakyReLU")
# Keras layers giving decoder.SKIPS (transition2, transition1, pool0, relu0).
KERAS_SKIPS = ("pool3_pool", "pool2_pool", "pool1", "conv1/relu")
# keras.applications DenseNets (growth 32, 64 initial features).
KERAS_ENCODERS = ("densenet121", "densenet169", "densenet201")

_WHAT = ("This converter reads DenseDepth's Keras model (nyu.h5, kitti.h5: "
         "keras.applications DenseNet + up1..up4 decoder, saved whole); for "
         "DenseDepth's PyTorch weights use the `densedepth` subcommand.")

_ENCODER_LAYERS = {"conv0": "conv1/conv", "norm0": "conv1/bn", "norm5": "bn"}
_DENSE_LAYER_PARTS = {"norm1": "0_bn", "conv1": "1_conv", "norm2": "1_bn",
                      "conv2": "2_conv"}
_TRANSITION_PARTS = {"norm": "bn", "conv": "conv"}
_BATCHNORM_LEAVES = {"scale": "gamma", "bias": "beta", "mean": "moving_mean",
                     "var": "moving_variance"}


def keras_weight_name(flax_path: tuple[str, ...]) -> str:
  """Flax variable path -> `layer/weight` in DenseDepth's Keras model.

  ('encoder', 'features', 'denseblock1', 'denselayer2', 'conv1', 'kernel')
  -> 'conv2_block2_1_conv/kernel'; ('decoder', 'up1', 'convA', 'bias') ->
  'up1_convA/bias'.
  """
  *modules, leaf = flax_path
  if modules[0] == "decoder":
    layer = "_".join(modules[1:])
  elif modules[2] in _ENCODER_LAYERS:
    layer = _ENCODER_LAYERS[modules[2]]
  elif modules[2].startswith("denseblock"):
    block = int(modules[2][len("denseblock"):]) + 1
    index = int(modules[3][len("denselayer"):])
    layer = f"conv{block}_block{index}_{_DENSE_LAYER_PARTS[modules[4]]}"
  else:
    stage = int(modules[2][len("transition"):]) + 1
    layer = f"pool{stage}_{_TRANSITION_PARTS[modules[3]]}"
  is_batchnorm = modules[-1].startswith("norm")
  return f"{layer}/{_BATCHNORM_LEAVES[leaf] if is_batchnorm else leaf}"


@dataclasses.dataclass(frozen=True)
class _Graph:
  """The functional model's layers by name and who feeds whom."""

  layers: dict[str, dict[str, Any]]
  inputs: dict[str, list[str]]
  consumers: dict[str, list[str]]

  @classmethod
  def of(cls, layer_list: list[dict[str, Any]]) -> "_Graph":
    layers, inputs, consumers = {}, {}, {}
    for layer in layer_list:
      name = layer["name"]
      layers[name] = layer
      nodes = layer.get("inbound_nodes") or [[]]
      inputs[name] = [entry[0] for entry in nodes[0]]
      for source in inputs[name]:
        consumers.setdefault(source, []).append(name)
    return cls(layers, inputs, consumers)

  def class_of(self, name: str) -> str | None:
    layer = self.layers.get(name)
    return layer["class_name"] if layer else None

  def config(self, name: str) -> dict[str, Any]:
    return self.layers[name]["config"]


# (pool_size, strides) of keras.applications DenseNet's pooling layers.
_POOLS = {"MaxPooling2D": ([3, 3], [2, 2]), "AveragePooling2D": ([2, 2], [2, 2])}


def _pair(value) -> list[int]:
  return list(value) * 2 if len(value) == 1 else list(value)


def _conv_problem(name: str, config: dict[str, Any]) -> str | None:
  """Conv options that change results without changing weight shapes."""
  if name == "conv1/conv":
    expected = ([7, 7], [2, 2], "valid")
  elif name.endswith("_2_conv") or re.fullmatch(r"up\d_conv[AB]|conv3", name):
    expected = ([3, 3], [1, 1], "same")
  else:  # 1x1 convolutions: padding makes no difference
    expected = ([1, 1], [1, 1], config.get("padding"))
  found = (_pair(config.get("kernel_size", [])), _pair(config.get("strides", [1])),
           config.get("padding"))
  if found != expected:
    return (f"{name}: kernel/strides/padding {found}, DenseDepth's model has "
            f"{expected}")
  if (config.get("activation", "linear") != "linear"
      or _pair(config.get("dilation_rate", [1])) != [1, 1]
      or config.get("groups", 1) != 1
      or config.get("data_format", "channels_last") != "channels_last"):
    return f"{name}: activation, dilation, groups or data format differ from DenseDepth's"
  return None


def _layer_problems(graph: _Graph) -> list[str]:
  """Per-layer options that must be DenseDepth's (weights cannot reveal them)."""
  problems = []
  for name, layer in graph.layers.items():
    kind, config = layer["class_name"], layer["config"]
    if kind == "Conv2D":
      problem = _conv_problem(name, config)
    elif kind == "Activation" and config.get("activation") != "relu":
      problem = f"{name}: activation {config.get('activation')!r}, expected relu"
    elif kind == "LeakyReLU" and abs(float(config.get("alpha", -1)) - 0.2) > 1e-6:
      problem = f"{name}: LeakyReLU alpha {config.get('alpha')}, expected 0.2"
    elif kind == "BilinearUpSampling2D" and _pair(config.get("size", [])) != [2, 2]:
      problem = f"{name}: upsampling size {config.get('size')}, expected (2, 2)"
    elif kind == "BatchNormalization" and config.get("axis") not in (3, -1, [3], [-1]):
      problem = f"{name}: BatchNorm axis {config.get('axis')}, expected channels (3)"
    elif kind in _POOLS and (_pair(config.get("pool_size", [])),
                             _pair(config.get("strides", []))) != _POOLS[kind]:
      problem = (f"{name}: pool size/strides {config.get('pool_size')}/"
                 f"{config.get('strides')}, expected {_POOLS[kind]}")
    else:
      problem = None
    if problem:
      problems.append(problem)
  for consumer, pad in (("conv1/conv", 3), ("pool1", 1)):
    source = (graph.inputs.get(consumer) or [""])[0]
    padding = graph.config(source).get("padding") if source in graph.layers else None
    if graph.class_of(source) != "ZeroPadding2D" or padding != [[pad, pad], [pad, pad]]:
      problems.append(f"{consumer}: expected a ZeroPadding2D of {pad} before it, "
                      f"found {graph.class_of(source)} {source!r} ({padding})")
  return problems


def _decoder_leaky_relu(graph: _Graph, problems: list[str]) -> bool | None:
  """Follows conv2 -> up1..up4 -> conv3; returns whether LeakyReLU follows convA.

  Appends what differs from DenseDepth's wiring to `problems`.
  """
  def expect(name: str, inputs: list[str]) -> None:
    if graph.inputs.get(name) != inputs:
      problems.append(f"{name}: inputs {graph.inputs.get(name, 'none (no such layer)')}, "
                      f"expected {inputs}")

  if graph.inputs.get("conv2") == ["bn"]:
    problems.append("conv2 reads `bn` directly: a keras.applications DenseNet from "
                    "before August 2018, without the ReLU after its last BatchNorm, "
                    "which this model cannot express")
  else:
    expect("relu", ["bn"])
    expect("conv2", ["relu"])
  flags, x = [], "conv2"
  for i, skip in enumerate(KERAS_SKIPS):
    up = f"up{i + 1}"
    expect(f"{up}_upsampling2d", [x])
    expect(f"{up}_concat", [f"{up}_upsampling2d", skip])
    expect(f"{up}_convA", [f"{up}_concat"])
    before_b = (graph.inputs.get(f"{up}_convB") or [""])[0]
    if before_b == f"{up}_convA":
      flags.append(False)
    elif (graph.class_of(before_b) == "LeakyReLU"
          and graph.inputs[before_b] == [f"{up}_convA"]):
      flags.append(True)
    else:
      problems.append(f"{up}_convB: input {before_b!r}, expected {up}_convA or a "
                      "LeakyReLU of it")
    after_b = graph.consumers.get(f"{up}_convB", [])
    if len(after_b) != 1 or graph.class_of(after_b[0]) != "LeakyReLU":
      problems.append(f"{up}_convB: feeds {after_b}, expected one LeakyReLU")
      return None
    x = after_b[0]
  expect("conv3", [x])
  if len(set(flags)) > 1:
    problems.append(f"LeakyReLU after convA in some bridge blocks only ({flags})")
  return flags[0] if len(set(flags)) == 1 else None


def _encoder(graph: _Graph) -> str | None:
  blocks = tuple(
      sum(1 for name in graph.layers if re.fullmatch(rf"conv{stage}_block\d+_concat", name))
      for stage in range(2, 6))
  for arch in KERAS_ENCODERS:
    if DENSENET_SPECS[arch].block_config == blocks:
      return arch
  return None


def model_config_from_keras(model_file: KerasModelFile) -> ModelConfig:
  """The ModelConfig of the DenseDepth architecture stored in a Keras file.

  Raises ConversionError listing unknown layers, or every difference from
  DenseDepth's architecture that would change the result.
  """
  path = model_file.path
  graph = _Graph.of(model_file.layers)
  unknown = [f"{name} ({layer['class_name']})" for name, layer in graph.layers.items()
             if layer["class_name"] not in KNOWN_LAYERS]
  if unknown:
    listing = _listing("layers the converter does not know", unknown)
    raise ConversionError(f"{path} is not DenseDepth's Keras model; nothing was "
                          f"written.\n{listing}\n  {_WHAT}")
  problems = _layer_problems(graph)
  leaky = _decoder_leaky_relu(graph, problems)
  if model_file.outputs != ["conv3"]:
    problems.append(f"model outputs {model_file.outputs}, expected ['conv3']")
  encoder = _encoder(graph)
  if encoder is None:
    problems.append("the dense blocks are not those of a keras.applications "
                    f"DenseNet ({', '.join(KERAS_ENCODERS)})")
  epsilons = sorted({float(layer["config"].get("epsilon", 1e-3))
                     for layer in graph.layers.values()
                     if layer["class_name"] == "BatchNormalization"})
  if len(epsilons) != 1:
    problems.append(f"BatchNorm epsilons {epsilons}, expected one value")
  width = _decoder_width(model_file, encoder, problems) if encoder else None
  if problems:
    raise ConversionError(f"{path} differs from DenseDepth's Keras model; nothing "
                          f"was written.\n{_listing('differences', problems)}\n  {_WHAT}")
  config = densedepth_model_config(encoder=encoder, decoder_width=width,
                                   densedepth_compat=True, input_norm="unit")
  return dataclasses.replace(config, leaky_relu_after_conv_a=leaky,
                             batchnorm_eps=epsilons[0])


def _decoder_width(model_file: KerasModelFile, encoder: str,
                   problems: list[str]) -> float | None:
  """conv2's filters over the encoder's channels: 0.5 for DenseDepth's nyu.h5."""
  kernel = model_file.weights.get("conv2", {}).get("kernel")
  channels = DENSENET_SPECS[encoder].skip_features["norm5"]
  if kernel is None or kernel.ndim != 4 or kernel.shape[2] != channels:
    problems.append(f"conv2/kernel: {None if kernel is None else kernel.shape}, "
                    f"expected (1, 1, {channels}, F)")
    return None
  filters = kernel.shape[3]
  width = filters / channels
  if int(channels * width) != filters or not 0.0 < width <= 4.0:
    problems.append(f"conv2 has {filters} filters for {channels} channels: not a "
                    "decoder width this model can express")
    return None
  return width


def match_weights(model_file: KerasModelFile, abstract: nnx.Module
                  ) -> dict[tuple[str, ...], np.ndarray]:
  """Every variable of `abstract` from the file, by `keras_weight_name`.

  Raises ConversionError listing every missing, unexpected or mis-shaped
  weight (Keras names and shapes); returns only when the match is exact.
  """
  arrays, used, missing, mismatched = {}, set(), [], []
  for path, variable in nnx.to_flat_state(nnx.state(abstract)):
    name = keras_weight_name(path)
    layer, weight = name.rsplit("/", 1)
    array = model_file.weights.get(layer, {}).get(weight)
    if array is None:
      missing.append(name)
      continue
    used.add(name)
    expected = tuple(variable.get_value().shape)
    if array.shape != expected:
      mismatched.append(f"{name}: {array.shape} in the file, model expects {expected}")
      continue
    arrays[path] = np.asarray(array, np.float32)
  unexpected = sorted(f"{layer}/{weight}" for layer, weights in model_file.weights.items()
                      for weight in weights if f"{layer}/{weight}" not in used)
  if missing or unexpected or mismatched:
    parts = mismatch_report(
        f"{model_file.path} does not match DenseDepth's Keras model; nothing was written.",
        {"missing weights": missing, "unexpected weights": unexpected,
         "weights with the wrong shape": mismatched})
    parts.append("  A truncated or edited file reads like this: download or save "
                 "it again.")
    raise ConversionError("\n".join(parts))
  return arrays


def densedepth_keras_to_flax(path: str | os.PathLike
                             ) -> tuple[nnx.Module, ModelConfig, KerasModelFile]:
  """Reads, checks and converts a DenseDepth Keras .h5 file (eval mode)."""
  model_file = read_keras_h5(path)
  config = model_config_from_keras(model_file)
  abstract = build_module("depth_net", config.to_dict(), abstract=True)
  module = fill_module(abstract, match_weights(model_file, abstract))
  module.eval()
  return module, config, model_file


def convert_densedepth_keras(input_path: str | os.PathLike,
                             output_dir: str | os.PathLike) -> nnx.Module:
  """`python -m weights_conversion densedepth-keras`: .h5 -> depth model directory."""
  output_dir = pathlib.Path(output_dir)
  if output_dir.exists() and any(output_dir.iterdir()):
    raise UserInputError(f"output directory {output_dir} exists and is not empty; "
                         "choose a new path or delete it first (nothing was written).")
  module, config, model_file = densedepth_keras_to_flax(input_path)
  save_model(module, output_dir, kind="depth_net", config=config.to_dict(),
             source={"format": "densedepth-keras", "file": pathlib.Path(input_path).name,
                     "keras_version": model_file.keras_version},
             train_resolution=NYU_RESOLUTION)  # DenseDepth's nyu.h5 recipe
  return module
