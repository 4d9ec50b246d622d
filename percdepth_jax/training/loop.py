"""The training loop: config + workdir -> checkpoints, metrics, evaluation, report.

Resumable: re-running the same command on the same workdir continues from the
latest checkpoint (model, optimizer, step and input-iterator state), so an
interrupted run ends where an uninterrupted one would.
"""

from __future__ import annotations

import json
import pathlib
import signal
import time
from typing import Any

import jax
import numpy as np
from flax import nnx

from percdepth_jax import evaluation, report
from percdepth_jax.data import AugmentConfig, resolve_spec
from percdepth_jax.data.pipeline import make_train_iterator
from percdepth_jax.errors import UserInputError
from percdepth_jax.model_io import FORMAT, VERSION, MODEL_JSON, fill_module
from percdepth_jax.models import DepthNet, ModelConfig, ResNet50
from percdepth_jax.models.densenet import set_remat
from percdepth_jax.training import step as step_lib
from percdepth_jax.training.checkpoints import Checkpoints
from percdepth_jax.training.metric_logging import MetricWriter, Progress


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


def build_model(config) -> DepthNet:
  """The depth network, its encoder from converted ImageNet weights unless
  config.init.from_scratch."""
  model_config = ModelConfig.from_dict(config.model.to_dict())
  if config.init.from_scratch:
    _log(f"initialising {model_config.encoder} encoder from scratch (random)")
    model = DepthNet(model_config, rngs=nnx.Rngs(config.seed))
  else:
    from weights_conversion.convert import load_torchvision_checked
    encoder = load_torchvision_checked(model_config.encoder, config.init.encoder_weights,
                                       what="config.init.encoder_weights")
    model = DepthNet(model_config, rngs=nnx.Rngs(config.seed))
    nnx.update(model.encoder.features, nnx.state(encoder.features))
    _log(f"encoder initialised from {config.init.encoder_weights}")
  if config.remat:
    set_remat(model, True)
  return model


def build_perceptual_net(config) -> ResNet50 | None:
  """The frozen ResNet-50 (truncated after layer1), or None if its weight is 0."""
  if not config.loss.perceptual:
    return None
  if config.perceptual.from_scratch:
    _log("perceptual network: random-init ResNet-50 layer1 (config.perceptual.from_scratch)")
    net = ResNet50(last_stage="layer1", rngs=nnx.Rngs(config.seed + 1))
  else:
    from weights_conversion.convert import load_torchvision_checked
    net = load_torchvision_checked("resnet50", config.perceptual.weights,
                                   what="config.perceptual.weights", last_stage="layer1")
  net.eval()
  return net


def _write_model_json(workdir: pathlib.Path, model_config: ModelConfig, config) -> None:
  """Records the model config in the workdir (what load_model reads), and
  refuses to resume a workdir that was trained with another model."""
  path = workdir / MODEL_JSON
  meta = {"format": FORMAT, "version": VERSION, "kind": "depth_net",
          "config": model_config.to_dict(), "source": {"format": "training"}}
  if path.exists():
    previous = json.loads(path.read_text()).get("config")
    if previous != meta["config"]:
      raise UserInputError(
          f"{workdir} holds a run of another model ({previous}); this config "
          f"builds {meta['config']}. Use a new --workdir, or the old model config.")
    return
  if jax.process_index() == 0:
    path.write_text(json.dumps(meta, indent=2) + "\n")
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")


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


def _constant_baseline(train_source, eval_source, config, max_examples: int = 256
                       ) -> dict[str, float]:
  """Metrics of predicting the training set's mean depth everywhere."""
  from percdepth_jax import metrics as metrics_lib
  total, count = 0.0, 0
  for i in range(min(len(train_source), max_examples)):
    ex = train_source[i]
    total += float(ex["depth"][ex["valid"]].sum())
    count += int(ex["valid"].sum())
  mean_depth = total / max(count, 1)
  accumulator = metrics_lib.DepthMetricsAccumulator(config.eval.protocol)
  n = len(eval_source) if not config.eval.max_examples else min(
      len(eval_source), config.eval.max_examples)
  for i in range(n):
    ex = eval_source[i]
    accumulator.update(ex["depth"][None], np.full_like(ex["depth"][None], mean_depth),
                       mask=ex["valid"][None])
  return {**accumulator.result(), "mean_depth": mean_depth}


def train_and_evaluate(config, workdir: str) -> dict[str, Any]:
  """Runs (or resumes) training; returns the final evaluation metrics."""
  maybe_initialize_distributed(config)
  workdir = pathlib.Path(workdir).absolute()
  workdir.mkdir(parents=True, exist_ok=True)
  is_main = jax.process_index() == 0
  if config.batch_size % jax.device_count():
    raise UserInputError(
        f"config.batch_size={config.batch_size} must be a multiple of the "
        f"number of devices ({jax.device_count()}).")
  model_config = ModelConfig.from_dict(config.model.to_dict())

  mesh = jax.make_mesh((jax.device_count(),), ("data",),
                       axis_types=(jax.sharding.AxisType.Auto,))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  batch_sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec("data"))

  train_source = resolve_spec(config.data.train, split="train",
                              height=config.data.height, width=config.data.width)
  eval_source = resolve_spec(config.data.eval, split="test",
                             height=config.data.height, width=config.data.width)

  tx = step_lib.make_optimizer(config)
  model = build_model(config)
  # Only now that data and weights are found does the workdir become a run.
  _write_model_json(workdir, model_config, config)
  graphdef, state = step_lib.init_state(model, tx)
  perceptual = build_perceptual_net(config)
  perceptual_graphdef, perceptual_state = (nnx.split(perceptual) if perceptual
                                           else (None, None))
  state = jax.device_put(state, replicated)
  perceptual_state = jax.device_put(perceptual_state, replicated)

  train_iter = make_train_iterator(
      train_source, config.batch_size, seed=config.seed, sharding=batch_sharding,
      augment=AugmentConfig(flip_prob=config.data.hflip,
                            channel_permute_prob=config.data.channel_swap),
      num_threads=config.data.num_threads)
  checkpoints = Checkpoints(workdir, keep=config.keep_checkpoints)
  restored = checkpoints.restore_latest(state)
  start_step = 0
  if restored is not None:
    state, data_state, _ = restored
    train_iter.set_state(data_state)
    start_step = int(state["step"])
    _log(f"resuming {workdir} from step {start_step}")
  writer = MetricWriter(workdir, enabled=is_main,
                        resume_step=start_step if restored is not None else None)

  train_step = jax.jit(
      step_lib.make_train_step(graphdef, perceptual_graphdef, tx, config),
      donate_argnums=(0,), out_shardings=(replicated, replicated))

  def meta(step: int) -> dict[str, Any]:
    return {"step": step, "model_config": model_config.to_dict(),
            "time": time.time()}

  def run_eval(step: int, num_samples: int = 0):
    eval_model = nnx.merge(graphdef, state["params"], state["batch_stats"])
    result, samples = evaluation.evaluate(
        eval_model, eval_source, protocol=config.eval.protocol, flip=config.eval.flip,
        batch_size=config.data.eval_batch_size, max_examples=config.eval.max_examples,
        num_samples=num_samples, sharding=batch_sharding)
    writer.write(step, {f"eval/{k}": v for k, v in result.items()})
    checkpoints.save_best(step, state, result, meta(step))
    _log(f"eval @ {step}: " + ", ".join(
        f"{k} {result[k]:.4f}" for k in report.METRIC_ORDER if k in result))
    return result, samples

  progress = Progress(config.num_steps, config.batch_size, start_step, enabled=is_main)
  pending = None  # (step, metrics) checked one step late to keep dispatch async
  step = start_step

  def check(pending_metrics, at_step):
    values = {k: float(v) for k, v in jax.device_get(pending_metrics).items()}
    if not values.pop("finite"):
      raise NonFiniteLossError(
          f"the loss or the parameter update became non-finite at step {at_step} "
          f"(loss {values['loss']}, grad_norm {values['grad_norm']}). "
          "Training stopped; the last checkpoint was left as it was. Lower "
          "config.optimizer.learning_rate or check the data for bad depth values.")
    return values

  try:
    with _StopRequest() as stop:
      for step in range(start_step + 1, config.num_steps + 1):
        batch = next(train_iter)
        state, metrics = train_step(state, perceptual_state, batch)
        if pending is not None:
          values = check(*pending)
          if _every(pending[1], config.log_every):
            writer.write(pending[1], values)
            progress.update(pending[1], values)
          if pending[1] == start_step + 1:
            progress.reset_clock(pending[1])  # exclude compilation from img/s
        pending = (metrics, step)
        must_save = _every(step, config.checkpoint_every) or step == config.num_steps
        must_eval = _every(step, config.eval_every) and step != config.num_steps
        if must_save or must_eval or stop.signal:
          values = check(*pending)
          if _every(step, config.log_every) or step == config.num_steps:
            writer.write(step, {**values, "images_per_second": progress.images_per_second(step)})
            progress.update(step, values)
          pending = None
          checkpoints.save(step, state, train_iter.get_state(), meta(step))
          if stop.signal:
            checkpoints.wait()
            _log(f"\n{stop.signal}: saved step {step} in {workdir}; re-run the "
                 "same command to resume.")
            return {"stopped_at": step, "signal": stop.signal}
        if must_eval:
          run_eval(step)
  except NonFiniteLossError:
    checkpoints.wait()
    checkpoints.close()
    raise
  checkpoints.wait()

  final, samples = run_eval(step, num_samples=config.eval.num_samples)
  checkpoints.wait()
  checkpoints.close()
  writer.close()
  if is_main:
    rows = {"model": final}
    if config.eval.get("baseline", False):
      rows["constant (train mean)"] = _constant_baseline(train_source, eval_source, config)
    _log("\n" + report.metrics_table(rows))
    report.training_curves(workdir / "metrics.jsonl", workdir / "training_curves.png")
    if samples:
      report.sample_grid(samples, workdir / "samples.png",
                         title=f"{config.data.eval}, step {step}")
    (workdir / "report.json").write_text(json.dumps(
        {"step": step, "protocol": config.eval.protocol, "flip": config.eval.flip,
         "data": config.data.eval, **{name: r for name, r in rows.items()}},
        indent=2) + "\n")
    _log(f"report: {workdir / 'report.json'}, {workdir / 'training_curves.png'}, "
         f"{workdir / 'samples.png'}")
  return final
