"""The JAX worker of scripts/benchmark.py: the training step and inference.

Run as `python -m percdepth_jax.benchmarking SPEC` by `benchmark_workers`,
one process per workload, which never imports torch. A `Workload` is one
compiled thing to time: `run(n)` executes n steps and returns when the
device is done. The JAX workloads are the real ones: the
train step is `training.step.make_train_step` (all four loss terms with the
frozen ResNet-50, backward, Adam) jitted with a donated state, as
`training.loop` runs it; inference is `inference.depth_metres` with flip
test-time averaging. Compilation is timed apart from the steps; buffer
sizes come from XLA's compiled program, FLOPs from XLA's cost analysis
(of the plain program for training, see `_plain_flops`).
"""

from __future__ import annotations

import os
import sys
import time

import jax
import jax.numpy as jnp
from flax import nnx

from percdepth_jax.benchmark_workers import Workload, serve, synthetic_batch

# Dense (no sparsity) peak FLOP/s of accelerators, by `device_kind` prefix,
# per compute dtype. float32 on these GPUs: XLA computes float32 convolutions
# and matmuls with TF32 tensor cores by default, so their peak is TF32's.
# Sources: NVIDIA H100/H200 and A100 datasheets (SXM parts).
PEAK_FLOPS = {
    "NVIDIA H100": {"float32": 494.7e12, "bfloat16": 989.4e12},
    "NVIDIA H200": {"float32": 494.7e12, "bfloat16": 989.4e12},
    "NVIDIA A100": {"float32": 156e12, "bfloat16": 312e12},
}


def _block(tree) -> None:
  jax.block_until_ready(tree)


def _compile(jitted, *args):
  t0 = time.perf_counter()
  compiled = jitted.lower(*args).compile()
  return compiled, time.perf_counter() - t0


def _cost(compiled) -> tuple[float | None, int | None]:
  """(FLOPs per call, bytes of live buffers) of a compiled XLA program; None
  where the backend has no such analysis (printed as n/a)."""
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    cost = None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  flops = float(cost["flops"]) if cost and "flops" in cost else None
  try:
    m = compiled.memory_analysis()
  except NotImplementedError:
    m = None
  # Arguments + outputs + temporaries, counting donated-and-reused buffers once.
  memory = None if m is None else int(
      m.argument_size_in_bytes + m.output_size_in_bytes
      + m.temp_size_in_bytes - m.alias_size_in_bytes)
  return flops, memory


def _plain_flops(fn, *args) -> float | None:
  """FLOPs per call of fn in XLA's cost analysis of its plain program (the
  CPU kernels off, so no oneDNN custom calls, whose work that analysis
  cannot see): the same arithmetic whichever kernels run it."""
  from percdepth_jax.models import convolution

  with convolution.cpu_gradient_kernels(False):
    # A new function: JAX reuses a function's trace whatever the switch.
    cost = jax.jit(lambda *a: fn(*a)).trace(*args).lower().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost["flops"]) if cost and cost.get("flops") else None


def model_config(encoder: str, dtype: str):
  from percdepth_jax.models import ModelConfig
  return ModelConfig(encoder=encoder, dtype=dtype)


def jax_train_workload(encoder: str, dtype: str, batch: int, height: int,
                       width: int, seed: int = 0) -> Workload:
  """The training step of `training.loop`, with random-init networks."""
  from percdepth_jax.models import DepthNet
  from percdepth_jax.training import initial_weights
  from percdepth_jax.training import step as step_lib
  from percdepth_jax.training.config import base_config

  config = base_config()
  cfg = model_config(encoder, dtype)
  config.model.update(cfg.to_dict())
  config.seed = seed
  model = DepthNet(cfg, rngs=nnx.Rngs(seed))
  # The frozen ResNet-50 exactly as training builds it (float32 whatever the
  # depth network's compute dtype), with random weights.
  config.perceptual.from_scratch = True
  perceptual = initial_weights.build_perceptual_net(config)
  tx = step_lib.make_optimizer(config)
  graphdef, state = step_lib.init_state(model, tx)
  perceptual_graphdef, perceptual_state = nnx.split(perceptual)
  step_fn = step_lib.make_train_step(graphdef, perceptual_graphdef, tx, config)
  train_step = jax.jit(step_fn, donate_argnums=(0,))
  data = jax.device_put(synthetic_batch(batch, height, width, seed))
  compiled, compile_s = _compile(train_step, state, perceptual_state, data)
  _, memory = _cost(compiled)
  flops = _plain_flops(step_fn, state, perceptual_state, data)
  holder = {"state": state}

  def run(n: int) -> None:
    if n < 1:
      return
    state = holder["state"]
    for _ in range(n):
      state, metrics = compiled(state, perceptual_state, data)
    _block((state, metrics))
    holder["state"] = state

  return Workload("jax", "train", run, compile_s, flops, memory, "XLA buffer assignment",
                  compiled=compiled)


def jax_inference_workload(encoder: str, dtype: str, batch: int, height: int,
                           width: int, seed: int = 0) -> Workload:
  """Depth in metres with flip test-time averaging (`inference.depth_metres`)."""
  from percdepth_jax.inference import depth_metres
  from percdepth_jax.models import DepthNet

  model = DepthNet(model_config(encoder, dtype), rngs=nnx.Rngs(seed))
  model.eval()
  graphdef, state = nnx.split(model)
  predict_fn = lambda state, image: depth_metres(nnx.merge(graphdef, state), image,
                                                 flip=True)
  image = jax.device_put(synthetic_batch(batch, height, width, seed)["image"])
  compiled, compile_s = _compile(jax.jit(predict_fn), state, image)
  _, memory = _cost(compiled)
  flops = _plain_flops(predict_fn, state, image)

  def run(n: int) -> None:
    if n < 1:
      return
    for _ in range(n):
      depth = compiled(state, image)
    _block(depth)

  return Workload("jax", "inference", run, compile_s, flops, memory,
                  "XLA buffer assignment", compiled=compiled)


def device_peak_memory() -> tuple[int | None, str]:
  """Peak bytes the default JAX device has held in this process (its
  allocator's statistics; GPUs and TPUs), or None where there are none."""
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" not in stats:
    return None, ""
  return int(stats["peak_bytes_in_use"]), "device.memory_stats() peak_bytes_in_use"


def device_name() -> str:
  """The default JAX device in words (the CPU's model name on CPU)."""
  device = jax.devices()[0]
  kind = device.device_kind
  if device.platform == "cpu":
    try:
      for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
          kind = line.split(":", 1)[1].strip()
          break
    except OSError:  # no /proc (macOS): keep jax's generic "cpu"
      pass
    return f"{kind} ({os.cpu_count()} cores)"
  return f"{kind} ({jax.device_count()} device(s))"


def device_peak_flops(dtype: str) -> tuple[float | None, str]:
  """(peak FLOP/s, where it comes from) for the default JAX device.

  Accelerators: the datasheet figure. CPUs have no such table here, so the
  peak is measured: the best rate of a large matmul in `dtype` (a practical
  ceiling for convolution-heavy work, not the ALUs' theoretical one).
  """
  device = jax.devices()[0]
  for prefix, table in PEAK_FLOPS.items():
    if device.device_kind.startswith(prefix):
      return table[dtype], f"datasheet ({prefix}, dense {dtype})"
  if device.platform != "cpu":
    return None, f"unknown for {device.device_kind}"
  n = 2048
  a = jnp.ones((n, n), dtype)
  matmul = jax.jit(lambda x: x @ x).lower(a).compile()
  _block(matmul(a))
  best = float("inf")
  for _ in range(5):
    t0 = time.perf_counter()
    _block(matmul(a))
    best = min(best, time.perf_counter() - t0)
  return 2 * n ** 3 / best, f"measured {n}x{n} {dtype} matmul"


def build(spec: dict) -> Workload:
  """The workload a worker's spec names (`spec["mode"]`: train | inference),
  with the device's name, JAX's version and, when asked, the device's peak."""
  make = jax_train_workload if spec["mode"] == "train" else jax_inference_workload
  w = make(spec["encoder"], spec["dtype"], spec["batch"], spec["height"], spec["width"])
  device_peak, source = device_peak_memory()
  if device_peak is not None:
    # Alone in its process: the device's peak is this workload's.
    w.memory_bytes, w.memory_source = device_peak, source
  w.info = {"device": device_name(), "versions": {"jax": jax.__version__}}
  if spec.get("peak_flops"):
    w.info["peak_flops_per_s"], w.info["peak_flops_source"] = device_peak_flops(spec["dtype"])
  return w


if __name__ == "__main__":
  sys.exit(serve(build))
