"""What a config's steps need on an accelerator, found out on a machine
without one (scripts/compile_report.py).

The train step is the one `training.loop` runs (`step.jit_train_step`: all
loss terms, backward, the optimizer; state donated and replicated, the batch
split over a 1-D "data" mesh of every device), and the inference step the one
evaluation runs (`inference.depth_metres`, flip averaging per the config).
Both are traced on abstract shapes (no weights are read or allocated) for the
devices of a `targets.Target`, compiled by XLA for that hardware, and read:
per-device memory from the buffer assignment, the kernels that carry the
convolutions, the CPU-only pieces that must not be there, FLOPs from XLA's
cost analysis of the same program lowered for the CPU, and the TPU
compiler's own step-time estimate where it gives one.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import re
import time
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from flax import nnx

from percdepth_jax import targets as targets_lib
from percdepth_jax.data import pipeline
from percdepth_jax.errors import UserInputError
from percdepth_jax.inference import depth_metres
from percdepth_jax.models import DepthNet, ModelConfig, ResNet50, convolution
from percdepth_jax.training import step as step_lib

GIB = 2**30
# Python host callbacks (jax.pure_callback, io_callback, jax.debug.print): a
# round trip to the host at every call on an accelerator.
HOST_CALLBACK = re.compile(r'custom_call_target="[^"]*callback[^"]*"')
# Functions of the CPU gradient kernels (models/cpu_conv_grads.py,
# models/cpu_layer_grads.py) that only their custom VJPs call; the generic
# path shares lax_conv, max_pool_taps and align_corners_matrix with them.
CPU_KERNEL_FUNCTIONS = (
    "conv3x3_same", "_conv3x3_fwd", "_conv3x3_bwd", "_conv3x3_kernel_grad",
    "conv1x1", "_conv1x1_fwd", "_conv1x1_bwd",
    "_max_pool_fwd", "_max_pool_bwd",
    "_resize_axis", "_resize_axis_fwd", "_resize_axis_vjp_fwd", "_resize_axis_vjp_bwd",
    "_resize_taps",
    "onednn_conv", "_onednn_fwd", "_onednn_bwd")
# The oneDNN kernels' XLA FFI targets (models/onednn.py), registered for the
# CPU only.
ONEDNN_CALL = re.compile(r'(?:custom_call_target="|custom_call @)(percdepth_onednn_\w+)')
CUDNN_KINDS = {"__cudnn$convForward": "forward",
               "__cudnn$convBiasActivationForward": "forward",
               "__cudnn$convBackwardInput": "backward-input",
               "__cudnn$convBackwardFilter": "backward-filter"}


@dataclasses.dataclass
class StepReport:
  """One compiled step for one global batch on one target."""
  step: str  # "train" | "inference"
  batch: int  # global
  devices: int
  compile_s: float
  argument_bytes: int  # per device
  output_bytes: int
  temp_bytes: int
  alias_bytes: int
  device_memory_bytes: int
  flops: float | None  # per device per step
  estimated_s: float | None  # the TPU compiler's estimate of one step
  kernels: dict[str, int]  # what carries the convolutions, and other custom calls
  cpu_only: list[str]  # CPU-only pieces found in the accelerator program
  peak_flops: float | None

  @property
  def total_bytes(self) -> int:
    """Live at once: arguments + outputs + temporaries, donated buffers once."""
    return self.argument_bytes + self.output_bytes + self.temp_bytes - self.alias_bytes

  @property
  def fits(self) -> bool:
    return self.total_bytes <= self.device_memory_bytes

  @property
  def roofline_images_per_s(self) -> float | None:
    """Images/s if every device ran at its peak FLOP/s (an upper bound)."""
    if not self.flops or not self.peak_flops:
      return None
    return self.batch / (self.flops / self.peak_flops)

  @property
  def estimated_images_per_s(self) -> float | None:
    return self.batch / self.estimated_s if self.estimated_s else None

  def to_dict(self) -> dict[str, Any]:
    out = dataclasses.asdict(self)
    out.update(total_bytes=self.total_bytes, fits=self.fits,
               roofline_images_per_s=self.roofline_images_per_s,
               estimated_images_per_s=self.estimated_images_per_s)
    return out


@dataclasses.dataclass
class Programs:
  """The abstract inputs and jitted steps of one config on one set of devices."""
  train: Any  # the jitted train step, as training.loop jits it
  train_fn: Any  # the same step, not jitted
  train_args: Any  # callable: global batch -> abstract (state, perceptual_state, batch)
  inference: Any
  inference_fn: Any
  inference_args: Any


def _abstract(tree, sharding):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), tree)


def build_programs(config, model_config: ModelConfig, devices) -> Programs:
  """The train and inference steps `scripts/train.py` would run for `config`
  on `devices`, with abstract arguments. Nothing is allocated: the networks
  are built with `nnx.eval_shape`."""
  batch_sharding = pipeline.batch_sharding(devices=devices)
  replicated = jax.sharding.NamedSharding(batch_sharding.mesh, jax.sharding.PartitionSpec())
  tx = step_lib.make_optimizer(config)
  ema_decay = config.optimizer.get("ema_decay", 0.0)

  def new_model():
    return DepthNet(model_config, rngs=nnx.Rngs(config.seed))

  graphdef, _ = step_lib.init_state(nnx.eval_shape(new_model), tx, ema_decay=0.0)
  state = jax.eval_shape(lambda: step_lib.init_state(new_model(), tx, ema_decay)[1])
  perceptual_graphdef = perceptual_state = None
  if config.loss.perceptual:
    perceptual = nnx.eval_shape(lambda: ResNet50(last_stage="layer1", rngs=nnx.Rngs(0)))
    perceptual.eval()
    perceptual_graphdef, perceptual_state = nnx.split(perceptual)
  height, width = _frame_size(config)

  def train_args(batch: int):
    images = {"image": jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8),
              "depth": jax.ShapeDtypeStruct((batch, height, width), jnp.float32),
              "valid": jax.ShapeDtypeStruct((batch, height, width), jnp.bool_)}
    return (_abstract(state, replicated), _abstract(perceptual_state, replicated),
            _abstract(images, batch_sharding))

  eval_model = nnx.eval_shape(new_model)
  eval_model.eval()
  eval_graphdef, eval_state = nnx.split(eval_model)
  flip = bool(config.eval.flip)

  def inference_fn(state, image):
    return depth_metres(nnx.merge(eval_graphdef, state), image, flip=flip)

  def inference_args(batch: int):
    image = jax.ShapeDtypeStruct((batch, height, width, 3), jnp.uint8)
    return _abstract(eval_state, replicated), _abstract(image, batch_sharding)

  return Programs(
      train=step_lib.jit_train_step(graphdef, perceptual_graphdef, tx, config, replicated),
      train_fn=step_lib.make_train_step(graphdef, perceptual_graphdef, tx, config),
      train_args=train_args, inference=jax.jit(inference_fn), inference_fn=inference_fn,
      inference_args=inference_args)


def _frame_size(config) -> tuple[int, int]:
  if config.data.crop:
    height, width = (int(v) for v in str(config.data.crop).split(","))
  else:
    height, width = int(config.data.height), int(config.data.width)
  if height % 32 or width % 32:
    raise UserInputError(f"frames of {height}x{width}: the network needs multiples of 32 "
                         "(set --config.data.crop=H,W).")
  return height, width


def kernel_counts(hlo_text: str) -> dict[str, int]:
  """The compiled program's convolutions and custom calls by what runs them."""
  counts: collections.Counter = collections.Counter()
  for target in re.findall(r'custom_call_target="([^"]+)"', hlo_text):
    if target in CUDNN_KINDS:
      counts[f"cuDNN {CUDNN_KINDS[target]}"] += 1
    elif target.startswith("__cublas"):
      counts["cuBLAS GEMM"] += 1
    else:
      counts[f"custom call {target}"] += 1
  counts["XLA convolution"] = len(re.findall(r"= \S+ convolution\(", hlo_text))
  # Data parallelism: the gradients' all-reduce (asynchronous pairs count once).
  counts["all-reduce"] = len(re.findall(r" all-reduce(?:-start)?\(", hlo_text))
  return {k: v for k, v in sorted(counts.items()) if v}


def cpu_only_pieces(hlo_text: str, lowered_text: str, platform: str) -> list[str]:
  """CPU-only pieces of an accelerator program: the CPU gradient kernels (ops
  traced inside their functions, found by name in the lowered program's
  source locations), the oneDNN custom calls, host callbacks, and on GPUs
  convolutions left to XLA's generic emitter instead of cuDNN."""
  found = []
  kernels = sorted(set(re.findall(r'"(\w+)"\(', lowered_text)) & set(CPU_KERNEL_FUNCTIONS))
  if kernels:
    found.append(f"CPU gradient kernels ({', '.join(kernels)})")
  onednn_calls = ONEDNN_CALL.findall(hlo_text) + ONEDNN_CALL.findall(lowered_text)
  if onednn_calls:
    found.append(f"oneDNN CPU custom calls ({', '.join(sorted(set(onednn_calls)))})")
  callbacks = HOST_CALLBACK.findall(hlo_text)
  if callbacks:
    found.append(f"{len(callbacks)} host callback(s): {sorted(set(callbacks))}")
  if platform == "cuda":
    plain = len(re.findall(r"= \S+ convolution\(", hlo_text))
    if plain:
      found.append(f"{plain} convolution(s) not on cuDNN")
  return found


def _cpu_flops(fn, args) -> float | None:
  """FLOPs of the whole program from XLA's cost analysis of its CPU lowering
  (the compile-only GPU client has none)."""
  cpu = jax.devices("cpu")[0]
  local = jax.tree.map(lambda x: jax.ShapeDtypeStruct(
      x.shape, x.dtype, sharding=jax.sharding.SingleDeviceSharding(cpu)), args)
  try:
    cost = jax.jit(fn).trace(*local).lower().cost_analysis()
  except Exception:  # noqa: BLE001  an analysis that fails leaves the figure out
    return None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  return float(cost["flops"]) if cost and cost.get("flops") else None


@contextlib.contextmanager
def _no_persistent_cache() -> Iterator[None]:
  """A compile-only client cannot load programs back from JAX's persistent
  cache (and the compile time is one of the figures): keep it out. JAX
  decides once per process whether it uses the cache, so where it already
  does (a process that compiled before), no program is written to it."""
  settings = {"jax_enable_compilation_cache": False,
              "jax_persistent_cache_min_compile_time_secs": float("inf")}
  previous = {name: getattr(jax.config, name) for name in settings}
  for name, value in settings.items():
    jax.config.update(name, value)
  try:
    yield
  finally:
    for name, value in previous.items():
      jax.config.update(name, value)


def compiler_options(target: targets_lib.Target) -> dict[str, Any]:
  """XLA options of a deviceless compile. GPUs: matrix products on cuBLAS, not
  Triton GEMM fusions, whose tile sizes XLA picks by timing candidates on the
  device; without one, its default tiling fails on some small products
  ("Couldn't find output tile sizes"). The memory plan is the same."""
  return {"xla_gpu_enable_triton_gemm": False} if target.platform == "cuda" else {}


def compile_step(programs: Programs, step: str, batch: int, target: targets_lib.Target,
                 dtype: str, with_flops: bool = True) -> StepReport:
  """Compiles one step for one global batch and reads what it needs."""
  jitted = programs.train if step == "train" else programs.inference
  unjitted = programs.train_fn if step == "train" else programs.inference_fn
  args = (programs.train_args if step == "train" else programs.inference_args)(batch)
  with _no_persistent_cache():
    # Traced with the default settings, as a CPU run traces it: the CPU
    # kernels are left out where the program is lowered for the accelerator.
    t0 = time.perf_counter()
    lowered = jitted.trace(*args).lower()
    compiled = lowered.compile(compiler_options(target))
    compile_s = time.perf_counter() - t0
  with convolution.cpu_gradient_kernels(False):  # XLA counts custom calls as -1 FLOP
    flops = _cpu_flops(unjitted, args) if with_flops else None
  memory = compiled.memory_analysis()
  estimated = None
  try:
    cost = compiled.cost_analysis()
  except NotImplementedError:
    cost = None
  cost = cost[0] if isinstance(cost, (list, tuple)) and cost else cost
  if cost and cost.get("optimal_seconds", 0) > 0:  # the TPU compiler's estimate
    estimated = float(cost["optimal_seconds"])
  text = compiled.as_text()
  n = target.device_count
  return StepReport(
      step=step, batch=batch, devices=n, compile_s=compile_s,
      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
      temp_bytes=memory.temp_size_in_bytes, alias_bytes=memory.alias_size_in_bytes,
      device_memory_bytes=target.memory_bytes,
      flops=flops / n if flops else None, estimated_s=estimated,
      kernels=kernel_counts(text),
      cpu_only=cpu_only_pieces(text, lowered.as_text(debug_info=True), target.platform),
      peak_flops=target.peak_flops.get(dtype))


def check_batch(batch: int, target: targets_lib.Target) -> None:
  if batch < 1 or batch % target.device_count:
    raise UserInputError(f"batch {batch}: the global batch must be a positive multiple of "
                         f"the {target.device_count} devices of {target.describe()}.")


def out_of_memory(error: Exception) -> bool:
  """Whether a compile failed because the program cannot fit the device."""
  text = str(error)
  return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def max_batch(programs: Programs, target: targets_lib.Target, dtype: str, start: int,
              log=print) -> tuple[int, list[StepReport]]:
  """The largest global train batch (a multiple of the device count) whose
  step fits in device memory: doubling from `start`, then bisection. Returns
  it (0 if not even one per device fits) and the reports of every compile."""
  unit = target.device_count
  reports: list[StepReport] = []

  def fits(batch: int) -> bool:
    try:
      report = compile_step(programs, "train", batch, target, dtype, with_flops=False)
    except jax.errors.JaxRuntimeError as e:
      if not out_of_memory(e):
        raise
      log(f"  batch {batch}: XLA could not fit it ({str(e).splitlines()[0][:120]})")
      return False
    reports.append(report)
    log(f"  batch {batch}: {report.total_bytes / GIB:.1f} GiB per device, "
        f"{'fits' if report.fits else 'does not fit'}")
    return report.fits

  low, high = 0, max(start // unit, 1)
  while fits(high * unit):
    low, high = high, high * 2
  while high - low > 1:
    middle = (low + high) // 2
    if fits(middle * unit):
      low = middle
    else:
      high = middle
  return low * unit, reports
