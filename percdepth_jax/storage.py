"""On-disk formats: model directories and training workdirs.

The one module that knows the layout of both (model_io and training build on
it and never write these files themselves).

A model directory (what weight conversion writes, `model_io.save_model`):
  DIR/model.json   {"format": "percdepth_jax.model", "version": 1,
                    "kind": "depth_net" | "densenet" | "resnet50",
                    "config": {...}, "source": {...},
                    "train_resolution": [height, width]}  (depth models:
                    the frame size they were trained at)
  DIR/state/       Orbax checkpoint of the parameters and BatchNorm statistics

A training workdir:
  model.json            the model config (the same format, kind depth_net)
  config.json           the training config as run, with "train_resolution":
                        the training frames' size before any crop
  checkpoints/<step>/   latest N: model (params + batch stats; the params'
                        moving average when the run keeps one), train
                        (optimizer state, step; then also the raw params),
                        data (input iterator state), meta
  best/<step>/          the best evaluation so far by d1: model, meta
Orbax writes each step to a temporary directory and renames it when complete,
so a killed run always leaves its last finished checkpoint usable.
"""

from __future__ import annotations

import json
import os
import pathlib
from typing import Any

import jax
import orbax.checkpoint as ocp
from flax import nnx

from percdepth_jax.errors import UserInputError

FORMAT = "percdepth_jax.model"
VERSION = 1
MODEL_JSON = "model.json"
CONFIG_JSON = "config.json"
STATE_DIR = "state"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
TRAIN_RESOLUTION = "train_resolution"
# NYU Depth v2's frames: what DenseDepth's and the paper's models trained on.
NYU_RESOLUTION = (480, 640)
_NYU_FORMATS = ("densedepth", "densedepth-keras")  # converted formats


def model_json(kind: str, config: dict[str, Any],
               source: dict[str, Any] | None = None,
               train_resolution: tuple[int, int] | None = None) -> dict[str, Any]:
  """The contents of a model.json."""
  meta = {"format": FORMAT, "version": VERSION, "kind": kind, "config": config,
          "source": source or {}}
  if train_resolution is not None:
    meta[TRAIN_RESOLUTION] = [int(v) for v in train_resolution]
  return meta


def write_model_json(directory: pathlib.Path, meta: dict[str, Any]) -> None:
  (directory / MODEL_JSON).write_text(json.dumps(meta, indent=2) + "\n")


def read_model_json(directory: str | os.PathLike) -> dict[str, Any]:
  """A model directory's or workdir's model.json, checked."""
  path = pathlib.Path(directory) / MODEL_JSON
  if not path.is_file():
    raise UserInputError(
        f"{directory} is not a model directory: {MODEL_JSON} is missing. Pass "
        "a directory written by `python -m weights_conversion ...` or a "
        "training workdir.")
  try:
    meta = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise UserInputError(f"{path} is not valid JSON ({e}); the model "
                         "directory is corrupt, convert the weights again.") from e
  if meta.get("format") != FORMAT or "kind" not in meta or "config" not in meta:
    raise UserInputError(f"{path} does not describe a percdepth_jax model "
                         f"(format {meta.get('format')!r}).")
  if meta.get("version", 0) > VERSION:
    raise UserInputError(f"{path} has format version {meta['version']}, newer "
                         f"than this code's {VERSION}; update percdepth_jax.")
  return meta


def read_train_resolution(directory: str | os.PathLike, meta: dict[str, Any]
                          ) -> tuple[tuple[int, int] | None, str]:
  """(height, width) of the frames a model directory's or workdir's model was
  trained at, or None, and where that came from (for a log line).

  Recorded in model.json (model directories) or config.json (workdirs).
  Older ones: a workdir's synthetic scenes were rendered at its
  data.height x data.width; a converted DenseDepth checkpoint is NYU's.
  """
  if meta.get(TRAIN_RESOLUTION):
    return tuple(meta[TRAIN_RESOLUTION]), "recorded"
  run = pathlib.Path(directory) / CONFIG_JSON
  if run.is_file():
    try:
      recorded = json.loads(run.read_text())
    except json.JSONDecodeError:
      recorded = {}
    if recorded.get(TRAIN_RESOLUTION):
      return tuple(recorded[TRAIN_RESOLUTION]), "recorded"
    data = recorded.get("data", {})
    if str(data.get("train", "")).startswith("synthetic:") and data.get("height"):
      return (int(data["height"]), int(data["width"])), "the synthetic scenes' size"
  if meta.get("source", {}).get("format") in _NYU_FORMATS:
    return NYU_RESOLUTION, "assumed: NYU's frames, as DenseDepth trained"
  return None, "not recorded"


def split_checkpoint_spec(path: str | os.PathLike) -> tuple[pathlib.Path, str]:
  """`DIR` or `DIR:best` -> (directory, "latest" | "best")."""
  text = str(path)
  if text.endswith(":best"):
    return pathlib.Path(text[:-len(":best")]).absolute(), "best"
  if text.endswith(":latest"):
    return pathlib.Path(text[:-len(":latest")]).absolute(), "latest"
  return pathlib.Path(text).absolute(), "latest"


def is_training_workdir(directory: pathlib.Path) -> bool:
  return (directory / LATEST_DIR).is_dir()


def save_state(directory: pathlib.Path, state: dict[str, Any]) -> None:
  """Writes a model directory's weights (a pure dict) to DIR/state."""
  with ocp.StandardCheckpointer() as checkpointer:
    checkpointer.save(directory / STATE_DIR, state)
    checkpointer.wait_until_finished()


def restore_state(directory: pathlib.Path, target: dict[str, Any]) -> dict[str, Any]:
  """Reads DIR/state shaped like `target` (a pure dict of arrays or shapes)."""
  target = jax.tree.map(lambda v: jax.ShapeDtypeStruct(v.shape, v.dtype), target)
  with ocp.StandardCheckpointer() as checkpointer:
    return checkpointer.restore(directory / STATE_DIR, target)


def _model_item(state) -> dict[str, Any]:
  """The weights that evaluation uses and `load_model` reads: the moving
  average of the parameters when the run keeps one."""
  return {"params": nnx.to_pure_dict(state.get("ema_params", state["params"])),
          "batch_stats": nnx.to_pure_dict(state["batch_stats"])}


def _train_item(state) -> dict[str, Any]:
  """What resuming needs besides the model item (with an average kept, the
  raw parameters live here)."""
  item = {"opt_state": state["opt_state"], "step": state["step"]}
  if "ema_params" in state:
    item["params"] = nnx.to_pure_dict(state["params"])
  return item


def _abstract(tree):
  return jax.tree.map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)),
      tree)


class Checkpoints:
  """The latest-N and best-by-d1 checkpoint managers of one workdir."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3,
               use_async: bool = True):
    workdir = pathlib.Path(workdir).absolute()
    self.latest = ocp.CheckpointManager(
        workdir / LATEST_DIR,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async))
    self.best = ocp.CheckpointManager(
        workdir / BEST_DIR,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=1, best_fn=lambda metrics: metrics["d1"], best_mode="max",
            keep_checkpoints_without_metrics=False, create=True,
            enable_async_checkpointing=use_async))

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def save(self, step: int, state, data_state: dict[str, Any],
           meta: dict[str, Any]) -> None:
    self.latest.save(step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(_model_item(state)),
        train=ocp.args.StandardSave(_train_item(state)),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)), force=True)

  def save_best(self, step: int, state, metrics: dict[str, float],
                meta: dict[str, Any]) -> None:
    if step in self.best.all_steps():
      # A resumed run evaluates this step again; its checkpoint is already kept.
      return
    self.best.save(step, metrics={"d1": float(metrics["d1"])},
                   args=ocp.args.Composite(
                       model=ocp.args.StandardSave(_model_item(state)),
                       meta=ocp.args.JsonSave({**meta, "metrics": metrics})),
                   force=True)

  def restore_latest(self, state) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
    """(state, data_state, meta) of the latest checkpoint, shaped and sharded
    like `state`; None when there is none."""
    step = self.latest.latest_step()
    if step is None:
      return None
    restored = self.latest.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(_model_item(state))),
        train=ocp.args.StandardRestore(_abstract(_train_item(state))),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore()))
    new_state = dict(state)
    nnx.replace_by_pure_dict(new_state["batch_stats"], restored.model["batch_stats"])
    if "ema_params" in state:
      nnx.replace_by_pure_dict(new_state["ema_params"], restored.model["params"])
      nnx.replace_by_pure_dict(new_state["params"], restored.train["params"])
    else:
      nnx.replace_by_pure_dict(new_state["params"], restored.model["params"])
    new_state["opt_state"] = restored.train["opt_state"]
    new_state["step"] = restored.train["step"]
    return new_state, restored.data, restored.meta

  def wait(self) -> None:
    self.latest.wait_until_finished()
    self.best.wait_until_finished()

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_model_item(workdir: str | pathlib.Path, abstract_module: nnx.Module,
                       which: str = "latest") -> tuple[nnx.Module, int]:
  """Loads params + batch stats of a workdir's latest (or best) checkpoint
  into an abstract DepthNet; returns (module, step)."""
  directory = pathlib.Path(workdir).absolute() / (LATEST_DIR if which == "latest" else BEST_DIR)
  with ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
      create=False)) as manager:
    step = manager.latest_step()  # `best/` keeps exactly one checkpoint
    if step is None:
      return None, None
    graphdef, params, batch_stats = nnx.split(abstract_module, nnx.Param, nnx.BatchStat)
    target = {"params": nnx.to_pure_dict(params),
              "batch_stats": nnx.to_pure_dict(batch_stats)}
    target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)
    restored = manager.restore(step, args=ocp.args.Composite(
        model=ocp.args.StandardRestore(target)))
  nnx.replace_by_pure_dict(params, restored.model["params"])
  nnx.replace_by_pure_dict(batch_stats, restored.model["batch_stats"])
  return nnx.merge(graphdef, params, batch_stats), step
