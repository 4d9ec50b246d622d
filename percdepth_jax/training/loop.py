"""The training loop: config + workdir -> checkpoints, metrics, evaluation, report.

Resumable: re-running the same command on the same workdir continues from the
latest checkpoint that restores (model, optimizer, step and input-iterator
state; newer unreadable ones are set aside), so an interrupted run ends where
an uninterrupted one would; re-running a finished run says so and does
nothing. Every input (data, weights, sizes) is checked before the workdir is
written, so a failed start leaves it as it was. A workdir has one writer
(workdir_lock), and a full disk stops the run cleanly (disk_full).
"""

from __future__ import annotations

import json
import pathlib
import signal
import time
from typing import Any, Iterable

import jax
import ml_collections
import numpy as np
from flax import nnx
from jax.experimental import multihost_utils

from percdepth_jax import evaluation, model_io, report, storage
from percdepth_jax import metrics as metrics_lib
from percdepth_jax.data import AugmentConfig, resolve_spec
from percdepth_jax.data.crop import CenterCropSource, parse_size
from percdepth_jax.data import pipeline as data_pipeline
from percdepth_jax.errors import UserInputError
from percdepth_jax.models import INPUT_MULTIPLE, ModelConfig
from percdepth_jax.storage import Checkpoints
from percdepth_jax.training import disk_full, heldout, initial_weights, workdir_lock
from percdepth_jax.training import step as step_lib
from percdepth_jax.training.disk_full import DiskFullError
from percdepth_jax.training.metric_logging import (METRICS_FILE, MetricWriter, Progress,
                                                   read_records)

# Exit codes of scripts/train.py for a run stopped by a signal after saving.
EXIT_PREEMPTED = 75  # SIGTERM (EX_TEMPFAIL): pre-empted, re-run to resume
EXIT_INTERRUPTED = 130  # SIGINT (Ctrl-C), the shell's code for it


class NonFiniteLossError(RuntimeError):
  """The loss became NaN or infinite; the run stopped without saving it."""


def maybe_initialize_distributed(config) -> None:
  """jax.distributed.initialize() for multi-host runs (config.distributed)."""
  d = config.distributed
  if not d.enabled:
    return
  kwargs = {}
  if d.coordinator_address:
    kwargs["coordinator_address"] = d.coordinator_address
  if d.num_processes:
    kwargs["num_processes"] = d.num_processes
  if d.process_id >= 0:
    kwargs["process_id"] = d.process_id
  jax.distributed.initialize(**kwargs)


def _every(step: int, interval: int) -> bool:
  """True every `interval` steps; an interval of 0 means never."""
  return interval > 0 and step % interval == 0


def _log(*args) -> None:
  if jax.process_index() == 0:
    print(*args, flush=True)


def _check_batch_sizes(config) -> None:
  devices = jax.device_count()
  for name in ("batch_size", "data.eval_batch_size"):
    value = config.batch_size if name == "batch_size" else config.data.eval_batch_size
    if value < 1 or value % devices:
      raise UserInputError(
          f"config.{name}={value} must be a positive multiple of the number of "
          f"devices ({devices}); set --config.{name}="
          f"{max(devices, value // devices * devices)}.")


def _data_source(config, spec: str, split: str):
  """The source a spec names, centre-cropped by config.data.crop, its frame
  size checked against what the network takes."""
  source = resolve_spec(spec, split=split, height=config.data.height,
                        width=config.data.width, skip_bad=config.data.skip_bad)
  crop = parse_size(config.data.crop, "config.data.crop")
  if crop is not None:
    source = CenterCropSource(source, *crop)
  first = next((ex for i in range(min(len(source), 16))
                if (ex := source[i]) is not None), None)
  if first is None:
    raise UserInputError(f"{spec}: the first examples are all bad or skipped; "
                         "check the data.")
  height, width = first["depth"].shape
  if height % INPUT_MULTIPLE or width % INPUT_MULTIPLE:
    fit = (height // INPUT_MULTIPLE * INPUT_MULTIPLE, width // INPUT_MULTIPLE * INPUT_MULTIPLE)
    raise UserInputError(
        f"{spec}: frames are {height}x{width}; the network takes heights and "
        f"widths that are multiples of {INPUT_MULTIPLE}. Centre-crop them with "
        f"--config.data.crop={fit[0]},{fit[1]}"
        + (" (or render synthetic scenes at such a size with "
           "--config.data.height/width)." if spec.startswith("synthetic") else "."))
  return source


def _frame_size(source) -> list[int]:
  """The training frames' size before any centre crop: the scale objects
  have in what the model learns from (a crop narrows the view, not the
  scale). Prediction resizes photos to about this many pixels."""
  frames = source.source if isinstance(source, CenterCropSource) else source
  first = next(ex for i in range(min(len(frames), 16)) if (ex := frames[i]) is not None)
  return list(first["depth"].shape)


def _start_run(workdir: pathlib.Path, model_config: ModelConfig, config,
               train_source) -> None:
  """Claims `workdir` for the run (model.json) and records its config as run,
  with the training frames' size."""
  model_io.claim_workdir(workdir, model_config)
  if jax.process_index() == 0:
    # As run: with config.init.model the model config is the loaded model's.
    record = config.to_dict()
    record["model"] = model_config.to_dict()
    record[storage.TRAIN_RESOLUTION] = _frame_size(train_source)
    (workdir / storage.CONFIG_JSON).write_text(
        ml_collections.ConfigDict(record).to_json_best_effort(indent=2) + "\n")


class StoppedBySignal(Exception):
  """SIGTERM or SIGINT stopped the run after it saved; re-run to resume."""

  def __init__(self, signal_name: str, step: int, workdir: pathlib.Path):
    self.signal_name, self.step = signal_name, step
    self.exit_code = EXIT_PREEMPTED if signal_name == "SIGTERM" else EXIT_INTERRUPTED
    super().__init__(f"{signal_name}: saved step {step} in {workdir}; re-run the "
                     "same command to resume.")


class _StopRequest:
  """SIGTERM/SIGINT -> finish the current step, save, exit cleanly."""

  def __init__(self):
    self.signal = None
    self._previous = {}

  def __enter__(self):
    for sig in (signal.SIGTERM, signal.SIGINT):
      self._previous[sig] = signal.signal(sig, self._handle)
    return self

  def _handle(self, signum, frame):
    del frame
    if self.signal is not None and signum == signal.SIGINT:
      raise KeyboardInterrupt  # second Ctrl-C: stop now
    self.signal = signal.Signals(signum).name

  def __exit__(self, *exc):
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)


def _constant_baseline(depth: float, eval_source, config) -> dict[str, float]:
  """Metrics of predicting `depth` (the training set's mean) everywhere."""
  result = heldout.constant_metrics(eval_source, depth, [config.eval.protocol],
                                    max_examples=config.eval.max_examples)
  return {**result[config.eval.protocol], "mean_depth": depth}


def _heldout_sources(config) -> dict[str, Any]:
  """The held-out sets of `config.eval.heldout` (comma-separated data specs),
  opened before the workdir is touched."""
  specs = [s.strip() for s in str(config.eval.get("heldout", "")).split(",") if s.strip()]
  return {spec: _data_source(config, spec, "test") for spec in specs}


def _evaluation_done(workdir: pathlib.Path, step: int, final: bool) -> bool:
  """Whether the evaluation (final: and the report) of `step` was written;
  the same answer on every process."""
  done = False
  if jax.process_index() == 0:
    if final:
      path = workdir / "report.json"
      done = path.exists() and json.loads(path.read_text()).get("step") == step
    else:
      path = workdir / METRICS_FILE
      done = path.exists() and any(r.get("step") == step and "eval/d1" in r
                                   for r in read_records(path))
  return bool(multihost_utils.broadcast_one_to_all(np.array(done)))


def _skipped(source) -> list[str]:
  """The distinct bad examples a skip_bad source has skipped so far."""
  return sorted(set(getattr(source, "skipped", [])))


def _process_0_says(value: bool) -> bool:
  """Process 0's `value`, on every process."""
  if jax.process_count() == 1:
    return value
  return bool(multihost_utils.broadcast_one_to_all(np.array(value)))


def _close_quietly(checkpoints: Checkpoints) -> None:
  """Closes the managers after a failed write; its error is already on its
  way up, and Orbax raises it again from close."""
  for manager in (checkpoints.latest, checkpoints.best):
    try:
      manager.close()
    except Exception:  # pylint: disable=broad-except
      pass


def train_and_evaluate(config, workdir: str, *, overrides: Iterable[str] = ()
                       ) -> dict[str, Any]:
  """Runs (or resumes) training; returns the final evaluation metrics.

  `overrides`: the config names set on the command line (`model.encoder`,
  ...), so that one that contradicts `config.init.model` is refused.
  Raises UserInputError for bad input (nothing written) and when another
  run holds the workdir, NonFiniteLossError when the loss diverges (nothing
  non-finite saved), StoppedBySignal after saving on SIGTERM/SIGINT and
  DiskFullError when a write into the workdir finds no space (the
  checkpoints before it intact).
  """
  maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).absolute()
  with workdir_lock.WorkdirLock(workdir, log=_log) as lock:
    # A workdir in use stops a second run here, before its checks; a new one
    # is created (and locked) only once every input is checked.
    if _process_0_says(workdir.exists()):
      workdir_lock.claim(lock)
    try:
      return _train_and_evaluate(config, workdir, overrides, lock)
    except Exception as e:  # pylint: disable=broad-except
      full = disk_full.no_space_error(e)
      if full is None:
        raise
      raise disk_full.stopped(full, workdir, storage.latest_complete_step(workdir)) from e


def _train_and_evaluate(config, workdir: pathlib.Path, overrides: Iterable[str],
                        lock: workdir_lock.WorkdirLock) -> dict[str, Any]:
  """train_and_evaluate on a workdir whose lock is `lock` (claimed here if
  it is not yet)."""
  is_main = jax.process_index() == 0

  # Every input is found and checked before the workdir is touched.
  _check_batch_sizes(config)
  model_config = initial_weights.run_model_config(config, overrides)
  train_source = _data_source(config, config.data.train, "train")
  eval_source = _data_source(config, config.data.eval, "test")
  heldout_sources = _heldout_sources(config)
  heldout_protocols = [p.strip() for p in str(config.eval.get(
      "heldout_protocols", "eigen,full_frame")).split(",") if p.strip()]
  for protocol in heldout_protocols:
    if protocol not in metrics_lib.PROTOCOLS:
      raise UserInputError(f"config.eval.heldout_protocols: unknown protocol {protocol!r}; "
                           f"choose from {', '.join(metrics_lib.PROTOCOLS)}.")
  model = initial_weights.build_model(config, model_config)
  perceptual = initial_weights.build_perceptual_net(config)
  workdir_lock.claim(lock)
  _start_run(workdir, model_config, config, train_source)

  batch_sharding = data_pipeline.batch_sharding()
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh,
                                          jax.sharding.PartitionSpec())
  tx = step_lib.make_optimizer(config)
  graphdef, state = step_lib.init_state(model, tx,
                                        ema_decay=config.optimizer.get("ema_decay", 0.0))
  perceptual_graphdef, perceptual_state = (nnx.split(perceptual) if perceptual
                                           else (None, None))
  state = jax.device_put(state, replicated)
  perceptual_state = jax.device_put(perceptual_state, replicated)

  train_iter = data_pipeline.make_train_iterator(
      train_source, config.batch_size, seed=config.seed, sharding=batch_sharding,
      augment=AugmentConfig(flip_prob=config.data.hflip,
                            channel_permute_prob=config.data.channel_swap),
      num_threads=config.data.num_threads)
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints, log=_log)
  set_aside = []  # unreadable checkpoints moved aside, as logged

  def log_set_aside(message: str) -> None:
    set_aside.append(message)
    _log(message)

  restored = checkpoints.restore_latest(state, log=log_set_aside)
  checkpoints.check_best(state, log=_log)
  start_step, eval_pending = 0, False
  if restored is not None:
    state, data_state, saved_meta = restored
    train_iter.set_state(data_state)
    start_step = int(state["step"])
    at_end = start_step >= config.num_steps
    eval_pending = (bool(saved_meta.get("eval_pending", at_end))
                    and not _evaluation_done(workdir, start_step, at_end))
    if at_end and not eval_pending:
      checkpoints.close()
      _log(f"{workdir} is finished: its latest checkpoint is step {start_step} "
           f"and config.num_steps={config.num_steps}, so there is nothing to do "
           f"(report: {workdir / 'report.json'}). Raise --config.num_steps to "
           "train further.")
      path = workdir / "report.json"
      return json.loads(path.read_text()).get("model", {}) if path.exists() else {}
    _log(f"resuming {workdir} from step {start_step}"
         + (", the newest checkpoint that restores" if set_aside else ""))
  writer = MetricWriter(workdir, enabled=is_main,
                        resume_step=start_step if restored is not None else None)

  train_step = step_lib.jit_train_step(graphdef, perceptual_graphdef, tx, config, replicated)

  def meta(step: int, eval_pending: bool) -> dict[str, Any]:
    # eval_pending: an evaluation is due at this step and runs after the
    # save; a resume runs it if the stopped run did not.
    return {"step": step, "model_config": model_config.to_dict(),
            "time": time.time(), "eval_pending": eval_pending}

  def run_eval(step: int, final: bool = False):
    num_samples = config.eval.num_samples if final else 0
    # With a moving average of the weights kept, it is what is evaluated.
    eval_model = nnx.merge(graphdef, state.get("ema_params", state["params"]),
                           state["batch_stats"])
    result, samples = evaluation.evaluate(
        eval_model, eval_source, protocol=config.eval.protocol, flip=config.eval.flip,
        batch_size=config.data.eval_batch_size, max_examples=config.eval.max_examples,
        num_samples=num_samples, sharding=batch_sharding,
        edges=config.eval.edges and final)
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    checkpoints.save_best(step, state, result, meta(step, False))
    _log(f"eval @ {step}: " + ", ".join(
        f"{k} {result[k]:.4f}" for k in report.METRIC_ORDER if k in result))
    return result, samples

  progress = Progress(config.num_steps, config.batch_size, start_step, enabled=is_main)

  def report_metrics(step: int, metrics, force: bool = False) -> None:
    """Checks a step's metrics and logs them every log_every steps. Called a
    step late, so that reading them does not stall the dispatch of the next."""
    values = {k: float(v) for k, v in jax.device_get(metrics).items()}
    if not values.pop("finite"):
      raise NonFiniteLossError(
          f"the loss or the parameter update became non-finite at step {step} "
          f"(loss {values['loss']}, grad_norm {values['grad_norm']}). "
          "Training stopped; the last checkpoint was left as it was. Lower "
          "config.optimizer.learning_rate or check the data for bad depth values.")
    if _every(step, config.log_every) or force:
      if force:
        values["images_per_second"] = progress.images_per_second(step)
      writer.write(step, values)
      progress.update(step, values)
    if step == start_step + 1:
      progress.reset_clock(step)  # exclude compilation from img/s

  def save(step: int, eval_due: bool) -> None:
    checkpoints.save(step, state, train_iter.get_state(), meta(step, eval_due))

  def stop_run(signal_name: str, step: int) -> None:
    checkpoints.wait()
    checkpoints.close()
    raise StoppedBySignal(signal_name, step, workdir)

  pending = None  # (step, metrics) of the last step, not yet checked
  step = start_step
  try:
    with _StopRequest() as stop:
      if eval_pending and start_step < config.num_steps:
        run_eval(start_step)  # due when the run stopped, not run then
      for step in range(start_step + 1, config.num_steps + 1):
        state, metrics = train_step(state, perceptual_state, next(train_iter))
        previous, pending = pending, (step, metrics)
        if previous is not None:
          report_metrics(*previous)
        last = step == config.num_steps
        eval_due = _every(step, config.eval_every) or last
        if _every(step, config.checkpoint_every) or eval_due or stop.signal:
          report_metrics(*pending, force=last)
          pending = None
          save(step, eval_due)
        if stop.signal:
          stop_run(stop.signal, step)
        if eval_due and not last:
          run_eval(step)
  except NonFiniteLossError:
    checkpoints.wait()
    checkpoints.close()
    raise
  except OSError:  # a failed write (a full disk): stop with the files as they are
    _close_quietly(checkpoints)
    raise
  checkpoints.wait()

  final_metrics, samples = run_eval(step, final=True)
  samples_title = f"{config.data.eval}, step {step}"
  baseline_depth = (heldout.mean_train_depth(train_source)
                    if config.eval.get("baseline", False) else None)
  heldout_result = None
  if heldout_sources:
    _log(f"evaluating on {len(heldout_sources)} held-out set(s): {', '.join(heldout_sources)}")
    eval_model = nnx.merge(graphdef, state.get("ema_params", state["params"]),
                           state["batch_stats"])
    heldout_result, heldout_samples = heldout.evaluate_heldout(
        eval_model, heldout_sources, heldout_protocols,
        baseline_depth=baseline_depth,
        flip=config.eval.flip, batch_size=config.data.eval_batch_size, sharding=batch_sharding,
        num_samples=config.eval.num_samples)
    if heldout_samples:
      # The pictures show rooms the settings were not tuned on, whole frames.
      samples, samples_title = heldout_samples, (
          f"{next(iter(heldout_sources))} (held out), step {step}, full frames")
  checkpoints.wait()
  checkpoints.close()
  writer.close()
  skipped = {"train": _skipped(train_source), "eval": _skipped(eval_source)}
  if is_main:
    rows = {"model": final_metrics}
    if baseline_depth is not None:
      rows["constant (train mean)"] = _constant_baseline(baseline_depth, eval_source, config)
    _log("\n" + report.metrics_table(rows))
    if heldout_result is not None:
      _log("\n" + heldout.summary_table(heldout_result))
    for split, names in skipped.items():
      if names:
        _log(f"skipped {len(names)} bad {split} example(s) (config.data.skip_bad): "
             + "; ".join(names[:5]) + (" ..." if len(names) > 5 else ""))
    report.training_curves(workdir / METRICS_FILE, workdir / "training_curves.png")
    if samples:
      report.sample_grid(samples, workdir / "samples.png", title=samples_title)
    (workdir / "report.json").write_text(json.dumps(
        {"step": step, "protocol": config.eval.protocol, "flip": config.eval.flip,
         "data": config.data.eval, **{name: r for name, r in rows.items()},
         **({"heldout": heldout_result} if heldout_result is not None else {}),
         "skipped": skipped}, indent=2) + "\n")
    _log(f"report: {workdir / 'report.json'}, {workdir / 'training_curves.png'}, "
         f"{workdir / 'samples.png'}")
  return final_metrics
