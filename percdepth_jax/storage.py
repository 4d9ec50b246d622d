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
  train.lock            the one-writer lock (training/workdir_lock.py): who
                        holds it, empty when no run does
  unreadable/           checkpoints that could not be restored, moved here
                        (never deleted) as `<checkpoints|best>-<step>-<time>`
Orbax writes each step to a temporary directory and renames it when complete,
so a killed run always leaves its last finished checkpoint usable; files
damaged later (a partial copy, a failing disk) are found at restore time.
"""

from __future__ import annotations

import json
import os
import pathlib
import time
from typing import Any, Callable

import jax
import orbax.checkpoint as ocp
from flax import nnx
from jax.experimental import multihost_utils

from percdepth_jax.errors import UserInputError

FORMAT = "percdepth_jax.model"
VERSION = 1
MODEL_JSON = "model.json"
CONFIG_JSON = "config.json"
STATE_DIR = "state"
LATEST_DIR = "checkpoints"
BEST_DIR = "best"
LOCK_FILE = "train.lock"
UNREADABLE_DIR = "unreadable"
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


def latest_complete_step(workdir: pathlib.Path) -> int | None:
  """The newest finished checkpoint in a workdir's checkpoints/ (Orbax names
  a step's directory by its number only once all of it is written)."""
  directory = pathlib.Path(workdir) / LATEST_DIR
  steps = [int(p.name) for p in directory.iterdir() if p.name.isdigit()] if directory.is_dir() else []
  return max(steps, default=None)


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


def _reason(error: Exception) -> str:
  """One line saying why a checkpoint did not restore."""
  text = " ".join(str(error).split())
  return f"{type(error).__name__}: {text[:300]}" + ("..." if len(text) > 300 else "")


def _steps(directory: pathlib.Path) -> list[int]:
  """The finished checkpoints' steps in a manager's folder, newest first."""
  if not directory.is_dir():
    return []
  return sorted(ocp.path.step.checkpoint_steps(directory), reverse=True)


def _newest_restorable(directory: pathlib.Path, restore: Callable[[int], Any]
                       ) -> tuple[int | None, Any, list[tuple[pathlib.Path, str]]]:
  """Tries the checkpoints in `directory` newest first: (step, what
  `restore(step)` returned, [(path, reason)] of the newer ones that failed);
  step None when none restores."""
  unreadable = []
  for step in _steps(directory):
    path = directory / str(step)
    try:
      return step, restore(step), unreadable
    # Orbax and TensorStore raise many types for damaged files (JSONDecodeError,
    # ValueError with DATA_LOSS/OUT_OF_RANGE, FileNotFoundError, ...).
    except Exception as e:  # pylint: disable=broad-except
      if path.exists():  # else the training run's rotation removed it meanwhile
        unreadable.append((path, _reason(e)))
  return None, None, unreadable


def _listing(unreadable: list[tuple[pathlib.Path, str]]) -> str:
  return "; ".join(f"{path} ({reason})" for path, reason in unreadable)


def set_aside(path: pathlib.Path) -> pathlib.Path:
  """Moves an unreadable checkpoint `WORKDIR/<checkpoints|best>/<step>` to
  `WORKDIR/unreadable/<checkpoints|best>-<step>-<time>`: out of Orbax's
  sight (it would list it, and refuse to save that step again), never
  deleted (it may be the only copy of hours of training)."""
  workdir = path.parent.parent
  stamp = time.strftime("%Y%m%d-%H%M%S")
  target = workdir / UNREADABLE_DIR / f"{path.parent.name}-{path.name}-{stamp}"
  target.parent.mkdir(exist_ok=True)
  path.rename(target)
  return target


def _set_aside_all(unreadable: list[tuple[pathlib.Path, str]],
                   log: Callable[[str], None]) -> None:
  """Process 0 moves the unreadable checkpoints aside, naming each and its
  reason through `log`; the other processes wait for it."""
  if jax.process_index() == 0:
    for path, reason in unreadable:
      target = set_aside(path)
      log(f"checkpoint {path} cannot be restored ({reason}); moved it to {target}")
  multihost_utils.sync_global_devices("percdepth_jax: unreadable checkpoints set aside")


class Checkpoints:
  """The latest-N and best-by-d1 checkpoint managers of one workdir (the
  training run's: it is their one writer)."""

  def __init__(self, workdir: str | pathlib.Path, *, keep: int = 3,
               use_async: bool = True, log: Callable[[str], None] = lambda _: None):
    """`log` names the best checkpoints set aside because Orbax cannot list
    them (see `_open_best`)."""
    workdir = pathlib.Path(workdir).absolute()
    # cleanup_tmp_directories: a save cut short (a full disk, kill -9) leaves
    # an unfinished temporary directory; the next run removes it.
    self.latest = ocp.CheckpointManager(
        workdir / LATEST_DIR,
        options=ocp.CheckpointManagerOptions(
            max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
            cleanup_tmp_directories=True))
    self.best = self._open_best(workdir / BEST_DIR, use_async, log)
    self._writing = workdir  # the checkpoint directory of the last save started

  @staticmethod
  def _open_best(directory: pathlib.Path, use_async: bool,
                 log: Callable[[str], None]) -> ocp.CheckpointManager:
    """The best-by-d1 manager. Orbax reads every kept checkpoint's metrics
    when it opens the folder, so one damaged there stops it: those are set
    aside (best/ keeps one) and the folder opened again."""
    def open_manager():
      return ocp.CheckpointManager(directory, options=ocp.CheckpointManagerOptions(
          max_to_keep=1, best_fn=lambda metrics: metrics["d1"], best_mode="max",
          keep_checkpoints_without_metrics=False, create=True,
          enable_async_checkpointing=use_async, cleanup_tmp_directories=True))
    try:
      return open_manager()
    except Exception as e:  # pylint: disable=broad-except
      unreadable = [(directory / str(step), _reason(e)) for step in _steps(directory)]
      if not unreadable:
        raise
      _set_aside_all(unreadable, log)
      return open_manager()

  def latest_step(self) -> int | None:
    return self.latest.latest_step()

  def _named(self, error: OSError) -> OSError:
    """An asynchronous save's OSError (a full disk) surfaces at the next call
    without a file name: name the checkpoint being written."""
    if error.filename is None:
      return OSError(error.errno, error.strerror, str(self._writing))
    return error

  def _start(self, manager: ocp.CheckpointManager, step: int, **kwargs) -> None:
    try:
      manager.save(step, force=True, **kwargs)
    except OSError as e:
      raise self._named(e) from e
    self._writing = pathlib.Path(str(manager.directory)) / str(step)

  def save(self, step: int, state, data_state: dict[str, Any],
           meta: dict[str, Any]) -> None:
    self._start(self.latest, step, args=ocp.args.Composite(
        model=ocp.args.StandardSave(_model_item(state)),
        train=ocp.args.StandardSave(_train_item(state)),
        data=ocp.args.JsonSave(data_state),
        meta=ocp.args.JsonSave(meta)))

  def save_best(self, step: int, state, metrics: dict[str, float],
                meta: dict[str, Any]) -> None:
    if step in self.best.all_steps():
      # A resumed run evaluates this step again; its checkpoint is already kept.
      return
    self._start(self.best, step, metrics={"d1": float(metrics["d1"])},
                args=ocp.args.Composite(
                    model=ocp.args.StandardSave(_model_item(state)),
                    meta=ocp.args.JsonSave({**meta, "metrics": metrics})))

  def restore_latest(self, state, log: Callable[[str], None] = lambda _: None
                     ) -> tuple[Any, dict[str, Any], dict[str, Any]] | None:
    """(state, data_state, meta) of the newest checkpoint that restores,
    shaped and sharded like `state`; None when there is none.

    Newer checkpoints that cannot be restored are moved to `unreadable/`,
    each named with its reason through `log`. When checkpoints exist but
    none restores, nothing is moved (they may belong to another config of
    the run) and UserInputError lists them.
    """
    args = ocp.args.Composite(
        model=ocp.args.StandardRestore(_abstract(_model_item(state))),
        train=ocp.args.StandardRestore(_abstract(_train_item(state))),
        data=ocp.args.JsonRestore(),
        meta=ocp.args.JsonRestore())
    step, restored, unreadable = _newest_restorable(
        pathlib.Path(str(self.latest.directory)),
        lambda s: self.latest.restore(s, args=args))
    if step is None and unreadable:
      raise UserInputError(
          f"no checkpoint in {self.latest.directory} can be restored: "
          f"{_listing(unreadable)}. Nothing was moved. If they were written "
          "with another config (config.optimizer.ema_decay, the optimizer, the "
          "model), run with that config; if their files are damaged, move "
          f"{self.latest.directory} away to start the run afresh.")
    if unreadable:
      _set_aside_all(unreadable, log)
      self.latest.reload()
    if step is None:
      return None
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

  def check_best(self, state, log: Callable[[str], None] = lambda _: None) -> None:
    """Moves an unreadable best checkpoint aside (named through `log`), so
    that the run writes a new one at its next evaluation instead of keeping
    one that `DIR:best` cannot load."""
    args = ocp.args.Composite(model=ocp.args.StandardRestore(_abstract(_model_item(state))))
    unreadable = _newest_restorable(pathlib.Path(str(self.best.directory)),
                                    lambda s: self.best.restore(s, args=args))[2]
    if unreadable:
      _set_aside_all(unreadable, log)
      self.best.reload()

  def wait(self) -> None:
    try:
      self.latest.wait_until_finished()
      self.best.wait_until_finished()
    except OSError as e:
      raise self._named(e) from e

  def close(self) -> None:
    self.latest.close()
    self.best.close()


def restore_model_item(workdir: str | pathlib.Path, abstract_module: nnx.Module,
                       which: str = "latest"
                       ) -> tuple[nnx.Module | None, int | None, list[tuple[pathlib.Path, str]]]:
  """Loads params + batch stats of a workdir's latest (or best) checkpoint
  into an abstract DepthNet: (module, step, [(path, reason)] of newer
  checkpoints that could not be read and were skipped); (None, None, [])
  when there is none. Reads only; moves nothing (the training run, the
  workdir's one writer, sets unreadable checkpoints aside).

  Raises UserInputError when checkpoints exist but none can be read.
  """
  workdir = pathlib.Path(workdir).absolute()
  directory = workdir / (LATEST_DIR if which == "latest" else BEST_DIR)
  graphdef, params, batch_stats = nnx.split(abstract_module, nnx.Param, nnx.BatchStat)
  target = {"params": nnx.to_pure_dict(params),
            "batch_stats": nnx.to_pure_dict(batch_stats)}
  target = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), target)

  def restore(step: int):
    # The model item alone: a damaged item that loading does not need (the
    # optimizer state, best/'s metrics) does not stop it.
    with ocp.StandardCheckpointer() as checkpointer:
      return checkpointer.restore(directory / str(step) / "model", target)

  for _ in range(3):
    listed = _steps(directory)
    step, restored, unreadable = _newest_restorable(directory, restore)
    # A run training into the workdir may have removed (rotated out) what
    # was listed while it was read: not damage; list again.
    unreadable = [(path, reason) for path, reason in unreadable if path.exists()]
    if step is not None or unreadable or not listed:
      break
  if step is None and unreadable:
    fix = (f"load {workdir} (its latest checkpoint) instead, or re-run its "
           "training command: the run sets it aside and writes a new best at "
           "its next evaluation." if which == "best" else
           "re-run its training command: the run sets unreadable checkpoints "
           "aside and resumes from the newest that restores.")
    raise UserInputError(f"no {which} checkpoint of {workdir} can be read: "
                         f"{_listing(unreadable)}. To fix: {fix}")
  if step is None:
    return None, None, []
  nnx.replace_by_pure_dict(params, restored["params"])
  nnx.replace_by_pure_dict(batch_stats, restored["batch_stats"])
  return nnx.merge(graphdef, params, batch_stats), step, unreadable
