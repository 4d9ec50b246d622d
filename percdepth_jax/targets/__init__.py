"""Accelerators to compile for without having one ("deviceless" ahead-of-time
compilation), by short name.

GPUs are described to XLA by a `stream_executor.GpuTargetConfigProto` in text
form: one `.txtpb` file per card in this folder, written from the vendors'
public specifications (any other card: `Target.from_gpu_file`). TPUs are
described by the topology names libtpu takes (`v5e:2x2`, `v4:2x2x1`, ...).
The peak rates below are dense (no sparsity) datasheet figures, used only for
roofline bounds; float32 on these GPUs and TPUs runs on the matrix units
(TF32 tensor cores on NVIDIA GPUs, bfloat16 passes on TPUs at XLA's default
precision), so its peak is the matrix units' rate, not the vector units'.

Compiling for CUDA needs the packages of the `accelerators` extra (the JAX
CUDA plugin, and ptxas/libdevice from nvidia-cuda-nvcc/nvidia-nvvm); for TPUs,
libtpu. Neither needs the hardware, a driver or a CUDA runtime.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import pathlib
import re

from percdepth_jax.errors import UserInputError

GPU_FILES = pathlib.Path(__file__).parent
INSTALL = 'pip install -e ".[accelerators]"'

# name -> (peak FLOP/s per device by compute dtype, memory bandwidth in B/s)
GPU_PEAKS = {
    "h100-80gb": ({"float32": 494.7e12, "bfloat16": 989.4e12}, 3.35e12),
    "a100-80gb": ({"float32": 156e12, "bfloat16": 312e12}, 2.039e12),
    "a100-40gb": ({"float32": 156e12, "bfloat16": 312e12}, 1.555e12),
    "l4": ({"float32": 60.5e12, "bfloat16": 121e12}, 0.300e12),
}
GPU_ALIASES = {"h100": "h100-80gb", "a100": "a100-80gb"}

# TPU generation -> (peak bfloat16 FLOP/s per chip, HBM bytes per chip,
# bandwidth B/s, libtpu chip configuration). Google Cloud's TPU pages.
TPU_CHIPS = {
    "v4": (275e12, 32 * 2**30, 1.2e12, "megacore"),
    "v5e": (197e12, 16 * 2**30, 0.819e12, "default"),
    "v5p": (459e12, 95 * 2**30, 2.765e12, "megacore"),
    "v6e": (918e12, 32 * 2**30, 1.64e12, "default"),
}


@dataclasses.dataclass(frozen=True)
class Target:
  """One compile target: a device kind in a topology of hosts x devices."""
  name: str
  platform: str  # "cuda" | "tpu"
  memory_bytes: int  # per device
  peak_flops: dict[str, float]  # per device, by compute dtype
  bandwidth: float  # per device, bytes/s
  topology: str  # GPUs: "HOSTSx1xDEVICES"; TPUs: libtpu's topology name
  gpu_config: str = ""  # the GpuTargetConfigProto text (GPUs)
  chip_config: str = ""  # libtpu's chip configuration (TPUs)

  @property
  def device_count(self) -> int:
    return _topology_size(self.topology)

  def describe(self) -> str:
    return f"{self.name} ({self.device_count} device(s), topology {self.topology})"

  @classmethod
  def from_gpu_file(cls, path: str | pathlib.Path, *, devices: int = 1, hosts: int = 1,
                    name: str | None = None, peaks=None) -> Target:
    path = pathlib.Path(path)
    try:
      text = path.read_text()
    except OSError as e:
      raise UserInputError(f"GPU description {path}: cannot read it ({e}).") from e
    memory = re.search(r"device_memory_size:\s*(\d+)", text)
    if not memory or 'platform_name: "CUDA"' not in text:
      raise UserInputError(
          f"GPU description {path}: not a GpuTargetConfigProto for CUDA (it needs "
          'gpu_device_info { device_memory_size: ... } and platform_name: "CUDA"; see '
          f"{GPU_FILES / 'h100-80gb.txtpb'}).")
    flops, bandwidth = peaks or ({}, 0.0)
    if not bandwidth:
      found = re.search(r"memory_bandwidth:\s*(\d+)", text)
      bandwidth = float(found.group(1)) if found else 0.0
    return cls(name=name or path.stem, platform="cuda", memory_bytes=int(memory.group(1)),
               peak_flops=dict(flops), bandwidth=bandwidth,
               topology=f"{hosts}x1x{devices}", gpu_config=text)


def _topology_size(topology: str) -> int:
  size = 1
  for part in topology.split(":")[-1].split("x"):
    size *= int(part)
  return size


def known_targets() -> list[str]:
  return [*GPU_PEAKS, *(f"{chip}:TOPOLOGY" for chip in TPU_CHIPS)]


def resolve(name: str, *, devices: int = 1, hosts: int = 1) -> Target:
  """The target a short name stands for: a GPU of this folder (`h100`,
  `a100-40gb`, ...) on `hosts` x `devices`, or a TPU slice by libtpu's
  topology name (`v5e:2x2`; `devices` and `hosts` follow from it)."""
  if devices < 1 or hosts < 1:
    raise UserInputError(f"--devices {devices} --hosts {hosts}: both must be >= 1.")
  key = GPU_ALIASES.get(name.lower(), name.lower())
  if key in GPU_PEAKS:
    return Target.from_gpu_file(GPU_FILES / f"{key}.txtpb", devices=devices, hosts=hosts,
                                name=key, peaks=GPU_PEAKS[key])
  chip, _, shape = key.partition(":")
  if chip in TPU_CHIPS and re.fullmatch(r"\d+(x\d+){1,2}", shape):
    if devices != 1 or hosts != 1:
      raise UserInputError(f"--target {name}: a TPU slice's size comes from its topology "
                           "name; drop --devices/--hosts (e.g. --target v5e:4x4 for 16 chips).")
    peak, memory, bandwidth, chip_config = TPU_CHIPS[chip]
    return Target(name=key, platform="tpu", memory_bytes=memory,
                  peak_flops={"float32": peak, "bfloat16": peak}, bandwidth=bandwidth,
                  topology=key, chip_config=chip_config)
  raise UserInputError(
      f"--target {name}: unknown. Known: {', '.join(known_targets())} (TOPOLOGY as "
      "libtpu names it, e.g. v5e:2x2 or v4:2x2x1); for another GPU pass "
      "--target-config FILE (a GpuTargetConfigProto text file like "
      f"{GPU_FILES / 'h100-80gb.txtpb'}).")


def missing_compiler(target: Target) -> str | None:
  """What to install to compile for `target`, or None when all is there."""
  if target.platform == "cuda":
    absent = ([] if _importable("jax_plugins.xla_cuda13") else ["jax-cuda13-plugin"])
    absent += [] if _ptxas() else ["nvidia-cuda-nvcc"]
  else:
    absent = [] if _importable("libtpu") else ["libtpu"]
  if not absent:
    return None
  return (f"compiling for {target.name} needs {', '.join(absent)}, which this environment "
          f"lacks. Install the compilers (no GPU or TPU needed): {INSTALL}")


def _importable(module: str) -> bool:
  try:
    return importlib.util.find_spec(module) is not None
  except ModuleNotFoundError:
    return False


def _ptxas() -> bool:
  """ptxas of the nvidia-cuda-nvcc wheel (PyTorch's CUDA wheels lack it)."""
  if not _importable("nvidia.cu13"):
    return False
  spec = importlib.util.find_spec("nvidia.cu13")
  return any((pathlib.Path(p) / "bin" / "ptxas").exists()
             for p in spec.submodule_search_locations or ())


def topology_devices(target: Target) -> list:
  """The devices of `target` as JAX's compile-only client sees them."""
  from jax.experimental import topologies
  if target.platform == "cuda":
    topology = topologies.get_topology_desc(platform="cuda", target_config=target.gpu_config,
                                            topology=target.topology)
  else:
    topology = topologies.get_topology_desc(topology_name=target.topology, platform="tpu",
                                            chip_config_name=target.chip_config)
  return list(topology.devices)
