"""The PyTorch worker of scripts/benchmark.py: the reference's training step
and inference.

Run as `python -m weights_conversion.torch_benchmark SPEC` by
`percdepth_jax.benchmark_workers`, one process per workload: it never
imports JAX or loads the oneDNN kernels (their OpenMP team beside PyTorch's
slows PyTorch's steps), so the constants it shares with the JAX side (loss
weights, Adam, depth range) come in the spec.

The same work as the JAX workloads in `percdepth_jax.benchmarking`: the
reference depth model (`torch_reference.DepthModel`), the paper's four loss
terms with a frozen torchvision ResNet-50 (`torch_reference.total_loss`),
backward and Adam with the same constants; inference is the forward pass
with flip test-time averaging, in metres.

On a GPU it runs with PyTorch's best eager settings: channels_last memory
format, cudnn.benchmark, fused Adam, bfloat16 autocast (AMP) for bfloat16,
and TF32 for float32 (as XLA uses for float32 convolutions and matmuls by
default, so both sides compute at the same precision).
"""

from __future__ import annotations

import contextlib
import sys
import time

import numpy as np
import torch
import torchvision

from percdepth_jax.benchmark_workers import Workload, serve, synthetic_batch
from weights_conversion import torch_reference


def _device() -> torch.device:
  return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def configure(dtype: str) -> dict:
  """Global PyTorch settings for the run; returns them for the record."""
  settings = {"device": str(_device()), "threads": torch.get_num_threads()}
  if _device().type == "cuda":
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    settings.update(channels_last=True, cudnn_benchmark=True, tf32=True,
                    fused_adam=True)
  settings["autocast"] = "bfloat16" if dtype == "bfloat16" else None
  return settings


def _autocast(dtype: str):
  if dtype == "bfloat16":
    return torch.autocast(_device().type, dtype=torch.bfloat16)
  return contextlib.nullcontext()


def _sync() -> None:
  if _device().type == "cuda":
    torch.cuda.synchronize()


def _memory_format():
  return torch.channels_last if _device().type == "cuda" else torch.contiguous_format


def _to_nchw(array_NxHxWxC: np.ndarray) -> torch.Tensor:
  x = torch.from_numpy(np.ascontiguousarray(array_NxHxWxC.transpose(0, 3, 1, 2)))
  return x.to(_device()).contiguous(memory_format=_memory_format())


def _peak_memory(fn) -> tuple[int | None, str]:
  """Peak allocated bytes while `fn` runs (CUDA's allocator only)."""
  if _device().type != "cuda":
    fn()
    return None, "not measured (PyTorch tracks allocations on CUDA only)"
  torch.cuda.reset_peak_memory_stats()
  fn()
  return torch.cuda.max_memory_allocated(), "torch.cuda.max_memory_allocated"


def _workload(mode: str, step) -> Workload:
  """`step` as a Workload: its first call timed apart (warm-up, cudnn
  autotuning), then one more call for the memory peak."""
  def run(n: int) -> None:
    for _ in range(n):
      step()
    _sync()

  t0 = time.perf_counter()
  run(1)
  first_s = time.perf_counter() - t0
  memory, source = _peak_memory(lambda: run(1))
  return Workload("pytorch", mode, run, first_s, None, memory, source)


def train_workload(encoder: str, dtype: str, batch: dict[str, np.ndarray], *,
                   loss_weights: tuple[float, float, float, float],
                   learning_rate: float, betas: tuple[float, float],
                   depth: dict, seed: int = 0, compile_model: bool = False) -> Workload:
  """One training step per call of run(1), on a fixed batch (`synthetic_batch`);
  loss weights (l1, gradient, ssim, perceptual), Adam's constants and the
  depth range (`depth`: min_depth, max_depth, scale of the depth_norm target,
  its largest value) as in the JAX config. compile_model: the depth network
  under torch.compile (its compilation falls in the first, untimed step)."""
  torch.manual_seed(seed)
  device, fmt = _device(), _memory_format()
  model = torch_reference.DepthModel(encoder).to(device, memory_format=fmt).train()
  resnet = torchvision.models.resnet50(weights=None).to(device, memory_format=fmt).eval()
  resnet.requires_grad_(False)
  optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate, betas=betas,
                               fused=device.type == "cuda")
  image = _to_nchw(batch["image"]).float()
  metres = torch.from_numpy(batch["depth"])[:, None].to(device)
  valid = torch.from_numpy(batch["valid"])[:, None].to(device)
  mask = valid & torch.isfinite(metres) & (metres > 0)
  target = depth["scale"] / metres.clamp(depth["min_depth"], depth["max_depth"])
  forward = torch.compile(model) if compile_model else model

  def step() -> None:
    with _autocast(dtype):
      out = forward(image)
      total, _ = torch_reference.total_loss(
          out.float(), target, mask, val_range=depth["target_max_value"],
          resnet=resnet, weights=loss_weights)
    total.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)

  return _workload("train", step)


def inference_workload(encoder: str, dtype: str, image_NxHxWx3: np.ndarray, *,
                       depth: dict, seed: int = 0, compile_model: bool = False) -> Workload:
  """Depth in metres with flip test-time averaging, under inference_mode
  (depth: as for train_workload; compile_model: the network under
  torch.compile)."""
  torch.manual_seed(seed)
  model = torch_reference.DepthModel(encoder).to(_device(), memory_format=_memory_format())
  model.eval()
  forward = torch.compile(model) if compile_model else model
  image = _to_nchw(image_NxHxWx3).float()
  scale = depth["scale"]
  lo, hi = scale / depth["max_depth"], scale / depth["min_depth"]

  @torch.inference_mode()
  def predict() -> torch.Tensor:
    with _autocast(dtype):
      out = forward(image).float()
      flipped = forward(image.flip(3)).float().flip(3)
    metres = lambda o: scale / o.clamp(lo, hi)
    return 0.5 * (metres(out) + metres(flipped))

  return _workload("inference", predict)


def versions() -> dict:
  return {"torch": torch.__version__, "torchvision": torchvision.__version__}


def build(spec: dict) -> Workload:
  """The workload a worker's spec names (see scripts/benchmark.py)."""
  settings = configure(spec["dtype"])
  batch = synthetic_batch(spec["batch"], spec["height"], spec["width"])
  compile_model = spec.get("compile_model", False)
  if spec["mode"] == "train":
    w = train_workload(spec["encoder"], spec["dtype"], batch,
                       loss_weights=tuple(spec["loss_weights"]),
                       learning_rate=spec["learning_rate"], betas=tuple(spec["betas"]),
                       depth=spec["depth"], compile_model=compile_model)
  else:
    w = inference_workload(spec["encoder"], spec["dtype"], batch["image"],
                           depth=spec["depth"], compile_model=compile_model)
  w.info = {"versions": versions(), "pytorch_settings": settings}
  return w


if __name__ == "__main__":
  sys.exit(serve(build))
