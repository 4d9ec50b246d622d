"""Models in and out of directories: build a module from its config, save it
atomically, load a converted model directory or a training workdir, claim a
workdir for a model. The files' layout is `percdepth_jax.storage`.
"""

from __future__ import annotations

import logging
import os
import pathlib
import shutil
import tempfile
from typing import Any

import jax
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from percdepth_jax import storage
from percdepth_jax.errors import UserInputError
from percdepth_jax.models import DenseNet, DepthNet, ModelConfig, ResNet50
from percdepth_jax.models.resnet import STAGES
from percdepth_jax.storage import read_model_json, split_checkpoint_spec

_log = logging.getLogger(__name__)


def build_module(kind: str, config: dict[str, Any], *, seed: int = 0,
                 abstract: bool = False) -> nnx.Module:
  """Builds the module a model directory describes.

  abstract=True returns shapes only (no random init, no memory): the fast way
  to get a skeleton that converted or restored weights will fill.
  """
  if kind == "depth_net":
    model_config = ModelConfig.from_dict(config)
    make = lambda: DepthNet(model_config, rngs=nnx.Rngs(seed))
  elif kind == "densenet":
    make = lambda: DenseNet(config["arch"], num_classes=config.get("num_classes"),
                            rngs=nnx.Rngs(seed))
  elif kind == "resnet50":
    make = lambda: ResNet50(last_stage=config.get("last_stage", "layer4"),
                            num_classes=config.get("num_classes"),
                            rngs=nnx.Rngs(seed))
  else:
    raise UserInputError(f"unknown model kind {kind!r} (expected depth_net, "
                         "densenet or resnet50).")
  return nnx.eval_shape(make) if abstract else make()


def fill_module(abstract_module: nnx.Module,
                arrays: dict[tuple[str, ...], np.ndarray]) -> nnx.Module:
  """Replaces every variable of an abstract module with the given arrays."""
  graphdef, state = nnx.split(abstract_module)
  flat = dict(nnx.to_flat_state(state))
  missing = sorted(".".join(p) for p in flat if p not in arrays)
  if missing:
    raise ValueError(f"no array for {missing[:10]} ({len(missing)} in all)")
  for path, variable in flat.items():
    variable.set_value(jax.numpy.asarray(arrays[path], variable.get_value().dtype))
  return nnx.merge(graphdef, nnx.from_flat_state(flat))


def save_model(module: nnx.Module, directory: str | os.PathLike, *, kind: str,
               config: dict[str, Any], source: dict[str, Any] | None = None,
               train_resolution: tuple[int, int] | None = None) -> None:
  """Writes `module` as a model directory; the directory appears complete or not at all.

  train_resolution: (height, width) of the frames a depth model was trained
  at; prediction runs the network at about that many pixels.
  """
  directory = pathlib.Path(directory).absolute()
  if directory.exists() and any(directory.iterdir()):
    raise UserInputError(
        f"output directory {directory} exists and is not empty; choose a new "
        "path or delete it first (nothing was written).")
  directory.parent.mkdir(parents=True, exist_ok=True)
  tmp = pathlib.Path(tempfile.mkdtemp(prefix=f".{directory.name}.", dir=directory.parent))
  try:
    storage.save_state(tmp, nnx.to_pure_dict(nnx.state(module)))
    storage.write_model_json(tmp, storage.model_json(kind, config, source,
                                                     train_resolution))
    if directory.exists():
      directory.rmdir()
    tmp.rename(directory)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise


def claim_workdir(workdir: pathlib.Path, model_config: ModelConfig) -> None:
  """Makes `workdir` a training run of `model_config` (its model.json), or
  checks that it already is one (the compute fields, dtype and remat, may
  differ on resume). Every process checks, process 0 writes, between
  barriers, so no process reads a half-written file."""
  multihost_utils.sync_global_devices("percdepth_jax: before model.json")
  if (workdir / storage.MODEL_JSON).exists():
    previous = ModelConfig.from_dict(read_model_json(workdir)["config"]).architecture()
    if previous != model_config.architecture():
      raise UserInputError(
          f"{workdir} holds a run of another model ({previous}); this config "
          f"builds {model_config.architecture()}. Use a new --workdir, or the "
          "old model config.")
  elif jax.process_index() == 0:
    workdir.mkdir(parents=True, exist_ok=True)
    storage.write_model_json(workdir, storage.model_json(
        "depth_net", model_config.to_dict(), {"format": "training"}))
  multihost_utils.sync_global_devices("percdepth_jax: after model.json")


def _check_kind(meta: dict[str, Any], directory: pathlib.Path,
                expect_kind: str | None) -> None:
  if expect_kind is not None and meta["kind"] != expect_kind:
    raise UserInputError(
        f"{directory} holds a {meta['kind']} model, not a {expect_kind}: "
        + ("convert a depth model with `python -m weights_conversion "
           "densedepth ...`." if expect_kind == "depth_net" else
           "pass the matching model directory."))


def _record_resolution(module: nnx.Module, directory: pathlib.Path,
                       meta: dict[str, Any]) -> nnx.Module:
  """Sets `module.train_resolution` (read by `inference.predict_depth`)."""
  if meta["kind"] == "depth_net":
    resolution, origin = storage.read_train_resolution(directory, meta)
    if resolution is not None and origin.startswith("assumed"):
      _log.warning("%s records no training resolution: %dx%d %s; predictions run "
                   "at about that many pixels (convert it again to record it, or "
                   "pass --resolution).", directory, *resolution, origin)
    module.train_resolution = resolution
  return module


def _warn_skipped(unreadable: list[tuple[pathlib.Path, str]], step: int | None,
                  directory: pathlib.Path) -> None:
  """Says which newer checkpoints could not be read and which step was loaded."""
  for path, reason in unreadable:
    _log.warning("checkpoint %s cannot be read (%s); skipped it.", path, reason)
  if unreadable and step is not None:
    _log.warning("loaded step %d of %s, the newest checkpoint that can be read "
                 "(re-running the training command sets the unreadable ones "
                 "aside).", step, directory)


def load_model_with_step(path: str | os.PathLike, *,
                         expect_kind: str | None = "depth_net"
                         ) -> tuple[nnx.Module, int | None]:
  """`load_model`, also returning the training step (None for converted weights)."""
  directory, which = split_checkpoint_spec(path)
  if not directory.exists():
    raise UserInputError(f"model path {directory} does not exist.")
  meta = read_model_json(directory)
  _check_kind(meta, directory, expect_kind)
  if storage.is_training_workdir(directory) or which == "best":
    abstract = build_module(meta["kind"], meta["config"], abstract=True)
    module, step, unreadable = storage.restore_model_item(directory, abstract, which)
    _warn_skipped(unreadable, step, directory)
    if module is None:
      raise UserInputError(
          f"{directory} has no {which} checkpoint yet"
          + (" (a best checkpoint is written at the first evaluation)."
             if which == "best" else "; train longer or pass another directory."))
    module.eval()
    return _record_resolution(module, directory, meta), step
  return load_model(directory, expect_kind=expect_kind), None


def load_model(path: str | os.PathLike, *, expect_kind: str | None = "depth_net"
               ) -> nnx.Module:
  """Loads a model in eval mode: a converted model directory, or a training
  workdir (its latest checkpoint; `DIR:best` for the best by d1). A depth
  model carries `train_resolution`, the (height, width) of its training
  frames (None where the directory does not say), for `predict_depth`.

  Args:
    path: a directory written by weight conversion (or `save_model`), or a
      training workdir, optionally suffixed with `:best`.
    expect_kind: refuse a directory holding another kind of model (for
      example an ImageNet DenseNet where a depth model is needed); None
      accepts any kind.
  """
  directory, which = split_checkpoint_spec(path)
  if storage.is_training_workdir(directory) or which == "best":
    return load_model_with_step(path, expect_kind=expect_kind)[0]
  if not directory.exists():
    raise UserInputError(f"model path {path} does not exist.")
  meta = read_model_json(directory)
  _check_kind(meta, directory, expect_kind)
  abstract = build_module(meta["kind"], meta["config"], abstract=True)
  try:
    restored = storage.restore_state(directory, nnx.to_pure_dict(nnx.state(abstract)))
  except (FileNotFoundError, ValueError, KeyError) as e:
    raise UserInputError(
        f"cannot read the weights in {directory / storage.STATE_DIR} for a "
        f"{meta['kind']} with config {meta['config']}: {e}") from e
  graphdef, state = nnx.split(abstract)
  nnx.replace_by_pure_dict(state, restored)
  module = nnx.merge(graphdef, state)
  module.eval()
  return _record_resolution(module, directory, meta)


def _describe(meta: dict[str, Any]) -> str:
  """What a model directory holds, in the words of the convert command."""
  if meta["kind"] == "densenet":
    return str(meta["config"].get("arch", "a DenseNet"))
  if meta["kind"] == "resnet50":
    return f"resnet50 (up to {meta['config'].get('last_stage', 'layer4')})"
  return "a whole depth model (depth_net)"


def _truncate_resnet(module: ResNet50, last_stage: str) -> ResNet50:
  """The same ResNet-50 cut after `last_stage` (the later stages and fc dropped)."""
  abstract = build_module("resnet50", {"last_stage": last_stage, "num_classes": None},
                          abstract=True)
  arrays = {path: variable.get_value()
            for path, variable in nnx.to_flat_state(nnx.state(module))}
  truncated = fill_module(abstract, arrays)
  truncated.eval()
  return truncated


def load_backbone(arch: str, path: str | os.PathLike, *,
                  last_stage: str | None = None) -> nnx.Module:
  """An ImageNet backbone from a directory of `python -m weights_conversion
  torchvision`, checked against `arch` (densenet121/161/169/201, resnet50).

  `last_stage` (resnet50 only) returns the network cut after that stage, so
  a converted full ResNet-50 serves as the perceptual network (layer1).
  Raises UserInputError when the directory holds another architecture or a
  ResNet-50 that ends before `last_stage`.
  """
  directory = pathlib.Path(path)
  meta = read_model_json(directory)
  kind = "resnet50" if arch == "resnet50" else "densenet"
  found_arch = meta["config"].get("arch") if meta["kind"] == "densenet" else meta["kind"]
  if meta["kind"] != kind or found_arch != arch:
    hint = (" To start training from a whole depth model use "
            "--config.init.model=DIR." if meta["kind"] == "depth_net" else "")
    raise UserInputError(
        f"{directory} holds {_describe(meta)}, not {arch}. Convert the {arch} "
        f"weights with `python -m weights_conversion torchvision --arch {arch} "
        f"--input {arch}.pth --output DIR` and pass that directory.{hint}")
  module = load_model(directory, expect_kind=kind)
  if last_stage is None or module.last_stage == last_stage:
    return module
  if STAGES.index(module.last_stage) < STAGES.index(last_stage):
    raise UserInputError(
        f"{directory} holds resnet50 up to {module.last_stage}, which ends before "
        f"{last_stage}; convert the full torchvision resnet50 .pth file.")
  return _truncate_resnet(module, last_stage)
