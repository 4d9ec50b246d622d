"""Reading a whole Keras 2 model saved as .h5 (`model.save('x.h5')`) with h5py.

No TensorFlow or Keras is needed: the architecture is the `model_config` JSON
attribute Keras stores at the file's root, the weights are datasets under
`model_weights/<layer>/`, named by each layer group's `weight_names`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pathlib
from typing import Any

import h5py
import numpy as np

from percdepth_jax.errors import UserInputError

_RESAVE = ("Load the model in Keras 2 (or tf_keras) and save it whole with "
           "`model.save('model.h5')`.")


@dataclasses.dataclass(frozen=True)
class KerasModelFile:
  """What a Keras 2 .h5 model file holds.

  layers: the functional model's layer configs (`model_config.config.layers`),
    each with class_name, name, config and inbound_nodes.
  outputs: names of the model's output layers.
  weights: layer name -> {weight name without scope and ":0" (kernel, bias,
    gamma, beta, moving_mean, moving_variance): array in Keras layout}.
  """

  path: pathlib.Path
  keras_version: str
  layers: list[dict[str, Any]]
  outputs: list[str]
  weights: dict[str, dict[str, np.ndarray]]


def _text(value) -> str:
  """HDF5 string attributes come back as str or bytes depending on the writer."""
  return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _short_weight_name(name: str) -> str:
  """`conv1/bn/moving_mean:0` -> `moving_mean` (TF variable scope and index dropped)."""
  return name.rsplit("/", 1)[-1].split(":", 1)[0]


def _read_weights(group: h5py.Group, path: pathlib.Path
                  ) -> dict[str, dict[str, np.ndarray]]:
  weights = {}
  for layer in (_text(n) for n in group.attrs.get("layer_names", [])):
    if layer not in group:
      raise UserInputError(f"{path} lists layer {layer!r} but has no weights group "
                           f"for it: the file is damaged. {_RESAVE}")
    arrays = {}
    for name in (_text(n) for n in group[layer].attrs.get("weight_names", [])):
      short = _short_weight_name(name)
      if short in arrays:
        raise UserInputError(f"{path}: layer {layer!r} holds two weights named "
                             f"{short!r}; not a file Keras 2 writes. {_RESAVE}")
      try:
        arrays[short] = np.asarray(group[layer][name])
      except (KeyError, OSError) as e:
        raise UserInputError(
            f"{path}: cannot read weight {name!r} of layer {layer!r} ({e}); the "
            "file is truncated or damaged: download or save it again.") from e
    if arrays:
      weights[layer] = arrays
  return weights


def read_keras_h5(path: str | os.PathLike) -> KerasModelFile:
  """Reads the architecture and weights of a functional Keras 2 model file."""
  path = pathlib.Path(path)
  if not path.is_file():
    raise UserInputError(f"{path} does not exist (or is not a file).")
  try:
    h5 = h5py.File(path, "r")
  except OSError as e:
    raise UserInputError(
        f"{path} is not a readable HDF5 file ({str(e).splitlines()[0]}). Pass a "
        "Keras model saved with `model.save('model.h5')` (DenseDepth's nyu.h5 is "
        "one); a file cut short by an interrupted download reads like this, so "
        "download it again.") from e
  with h5:
    if "model_config" not in h5.attrs:
      if "layer_names" in h5.attrs:
        raise UserInputError(
            f"{path} holds weights only (written by `save_weights`), without the "
            f"architecture the converter reads the model options from. {_RESAVE}")
      raise UserInputError(f"{path} is an HDF5 file but not a saved Keras model "
                           f"(no model_config attribute). {_RESAVE}")
    version = _text(h5.attrs.get("keras_version", ""))
    if version.startswith("3."):
      raise UserInputError(
          f"{path} was written by Keras {version}; this converter reads Keras 2 "
          "files (DenseDepth's release, or tf_keras). Save the model with tf_keras.")
    try:
      model_config = json.loads(_text(h5.attrs["model_config"]))
    except json.JSONDecodeError as e:
      raise UserInputError(f"{path}: the model_config attribute is not valid JSON "
                           f"({e}); the file is damaged. {_RESAVE}") from e
    if model_config.get("class_name") not in ("Model", "Functional"):
      raise UserInputError(
          f"{path} holds a Keras {model_config.get('class_name')!r}, not a "
          "functional Model such as DenseDepth's.")
    if "model_weights" not in h5:
      raise UserInputError(f"{path} has an architecture but no model_weights group; "
                           f"it holds no weights to convert. {_RESAVE}")
    weights = _read_weights(h5["model_weights"], path)
  config = model_config.get("config", {})
  return KerasModelFile(
      path=path, keras_version=version, layers=list(config.get("layers", [])),
      outputs=[entry[0] for entry in config.get("output_layers", [])],
      weights=weights)
