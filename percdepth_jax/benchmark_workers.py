"""Timing workloads in worker processes of their own, rounds alternating.

Two frameworks in one process slow each other: PyTorch and the oneDNN
kernels each bring an OpenMP team, and once both have run, every PyTorch
step is ~30% slower. So each thing to time (a framework, a mode, and any
variant that changes the process: environment variables, thread settings,
the oneDNN kernels on or off) runs in a worker process of its own, started
once and kept warm; the parent only sends "run N steps" to one worker at a
time, round by round, and collects the wall times the workers measure.

This module imports neither JAX nor PyTorch: the worker of each framework
(`percdepth_jax.benchmarking`, `weights_conversion.torch_benchmark`) calls
`serve` with its own builder, and `probe` reports what a worker has
imported and loaded, so the isolation can be checked rather than assumed.

Protocol: the worker gets its spec as a JSON argument, builds and compiles
its workload, answers one JSON line per request read from stdin (`run`,
`probe`, `quit`). Its replies go to the original stdout; everything the
libraries print goes to stderr.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import subprocess
import sys
import time
import traceback
from typing import Any, Callable

# Modules and shared libraries whose presence in a worker is reported, to
# check that a framework's worker holds nothing of the other framework.
PROBED_MODULES = ("jax", "jaxlib", "flax", "torch", "torchvision", "tensorflow")
PROBED_LIBRARIES = ("libdnnl", "onednn_conv", "libgomp", "libiomp", "libtorch",
                    "libxla", "xla_extension", "jaxlib")


@dataclasses.dataclass
class Workload:
  """One thing to time. `run(n)` runs n steps and blocks until done."""
  framework: str  # "jax" | "pytorch"
  mode: str  # "train" | "inference"
  run: Callable[[int], None]
  compile_s: float  # JAX: lower + compile; PyTorch: the first (warm-up) step
  flops_per_step: float | None = None  # XLA cost analysis (JAX only)
  memory_bytes: int | None = None
  memory_source: str = ""
  compiled: Any = None  # the XLA executable (JAX), for profiling and HLO inspection
  info: dict = dataclasses.field(default_factory=dict)  # device, versions, settings


def synthetic_batch(batch: int, height: int, width: int, seed: int = 0) -> dict:
  """A training batch with the pipeline's fields: uint8 RGB, depth in metres
  (0.5-9.5 m, a smooth ramp plus noise) and a validity mask with ~5% holes.
  NumPy only, so both frameworks' workers build the same batch."""
  import numpy as np

  rng = np.random.default_rng(seed)
  image = rng.integers(0, 256, (batch, height, width, 3), dtype=np.uint8)
  ramp = np.linspace(0.5, 9.0, height, dtype=np.float32)[None, :, None]
  depth = ramp + rng.uniform(0.0, 0.5, (batch, height, width)).astype(np.float32)
  valid = rng.uniform(size=(batch, height, width)) > 0.05
  return {"image": image, "depth": depth, "valid": valid}


# ----------------------------------------------------------------- worker side


def probe() -> dict:
  """What this process has imported and loaded, and its peak memory."""
  libraries = set()
  status = {}
  try:
    with open("/proc/self/maps") as maps:
      for line in maps:
        name = os.path.basename(line.split()[-1]) if len(line.split()) >= 6 else ""
        if any(key in name for key in PROBED_LIBRARIES):
          libraries.add(name)
    with open("/proc/self/status") as f:
      status = dict(line.split(":", 1) for line in f if ":" in line)
  except OSError:  # no /proc (macOS): report modules only
    pass
  hwm = status.get("VmHWM", "").split()
  return {
      "pid": os.getpid(),
      "modules": sorted(m for m in PROBED_MODULES if m in sys.modules),
      "libraries": sorted(libraries),
      "peak_rss_bytes": int(hwm[0]) * 1024 if hwm else None,
  }


def serve(build: Callable[[dict], Workload], argv: list[str] | None = None) -> int:
  """A worker's main: build the workload from the JSON spec in argv[1], then
  answer requests on stdin until `quit` or end of input."""
  argv = sys.argv if argv is None else argv
  replies = os.fdopen(os.dup(1), "w", buffering=1)
  os.dup2(2, 1)  # library output must not corrupt the replies
  sys.stdout = sys.stderr

  def reply(message: dict) -> None:
    replies.write(json.dumps(message) + "\n")

  try:
    workload = build(json.loads(argv[1]))
  except Exception:  # reported to the parent, which names the worker
    reply({"error": traceback.format_exc()})
    return 1
  reply({"ready": True, "compile_s": workload.compile_s,
         "flops_per_step": workload.flops_per_step,
         "memory_bytes": workload.memory_bytes, "memory_source": workload.memory_source,
         "info": workload.info})
  for line in sys.stdin:
    request = json.loads(line)
    if request["cmd"] == "run":
      t0 = time.perf_counter()
      workload.run(request["steps"])
      reply({"seconds": time.perf_counter() - t0})
    elif request["cmd"] == "probe":
      reply(probe())
    elif request["cmd"] == "quit":
      break
  return 0


# ----------------------------------------------------------------- parent side


class WorkerError(RuntimeError):
  """A worker exited or failed to build its workload (its output is above)."""


class Worker:
  """A workload in a process of its own, driven over pipes.

  name: how results and messages call it ("jax", "pytorch", "jax[onednn_off]").
  module: the worker's module, run as `python -m module SPEC`.
  env: variables set (value str) or removed (value None) for this worker only.
  """

  def __init__(self, name: str, module: str, spec: dict, env: dict | None = None):
    self.name, self.module, self.spec = name, module, spec
    self.env = dict(env or {})
    self.ready: dict = {}
    self.times_s: list[float] = []
    # CPU seconds everything else on the machine (the idle workers included)
    # used while this one was timed, per round: what competed with it.
    self.others_cpu_s: list[float] = []
    self._process: subprocess.Popen | None = None

  def start(self) -> dict:
    """Starts the worker and waits until its workload is built and compiled."""
    env = dict(os.environ)
    for key, value in self.env.items():
      if value is None:
        env.pop(key, None)
      else:
        env[key] = value
    self._process = subprocess.Popen(
        [sys.executable, "-m", self.module, json.dumps(self.spec)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env, text=True, bufsize=1)
    self.ready = self._receive()
    return self.ready

  def _receive(self) -> dict:
    line = self._process.stdout.readline()
    if not line:
      code = self._process.wait()
      raise WorkerError(f"benchmark worker {self.name} ({self.module}) exited with "
                        f"code {code} (its output is above).")
    message = json.loads(line)
    if "error" in message:
      raise WorkerError(f"benchmark worker {self.name} failed:\n{message['error']}")
    return message

  def request(self, cmd: str, **fields) -> dict:
    self._process.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
    self._process.stdin.flush()
    return self._receive()

  def run(self, steps: int) -> float:
    """Runs `steps` steps; returns the seconds the worker measured."""
    return self.request("run", steps=steps)["seconds"]

  def cpu_seconds(self) -> float:
    """CPU time (user + system) this worker's process has used so far."""
    try:
      with open(f"/proc/{self._process.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    except OSError:  # no /proc (macOS): not measured
      return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

  def close(self) -> None:
    if self._process is None:
      return
    if self._process.poll() is None:
      try:
        self._process.stdin.write(json.dumps({"cmd": "quit"}) + "\n")
        self._process.stdin.close()
        self._process.wait(timeout=30)
      except (OSError, subprocess.TimeoutExpired):
        self._process.kill()
        self._process.wait()
    self._process = None


def machine_cpu_seconds() -> float:
  """CPU time all processes of the machine have used so far (/proc/stat)."""
  try:
    with open("/proc/stat") as f:
      user, nice, system, _, _, irq, softirq = (int(v) for v in f.readline().split()[1:8])
  except OSError:  # no /proc (macOS): not measured
    return 0.0
  return (user + nice + system + irq + softirq) / os.sysconf("SC_CLK_TCK")


def time_alternating(workers: list[Worker], steps: int, rounds: int, warmup: int,
                     on_round: Callable[[int], None] | None = None,
                     settle_s: float = 0.05) -> None:
  """A/B timing across processes: each round runs `steps` steps of every
  worker in turn, one worker busy at a time, so slow drifts of the machine
  hit all of them alike. Per-step times of each round go to `worker.times_s`.
  settle_s: a pause between workers, for the last one's threads to stop
  spinning before the next one starts."""
  for w in workers:
    if warmup:
      w.run(warmup)
  for r in range(rounds):
    for w in workers:
      time.sleep(settle_s)
      machine, own = machine_cpu_seconds(), w.cpu_seconds()
      w.times_s.append(w.run(steps) / steps)
      w.others_cpu_s.append(max(0.0, machine_cpu_seconds() - machine
                                - (w.cpu_seconds() - own)))
    if on_round is not None:
      on_round(r)


def summarize(times_s: list[float], batch: int, compile_s: float,
              flops_per_step: float | None, memory_bytes: int | None,
              memory_source: str, peak_flops: float | None) -> dict:
  """Median and spread of the per-round step times, and what follows from them."""
  median = statistics.median(times_s)
  out = {
      "ms_per_step_median": 1e3 * median,
      "ms_per_step_min": 1e3 * min(times_s),
      "ms_per_step_max": 1e3 * max(times_s),
      "ms_per_step_rounds": [1e3 * t for t in times_s],
      "images_per_s": batch / median,
      "compile_s": compile_s,
      "peak_memory_bytes": memory_bytes,
      "peak_memory_source": memory_source,
      "flops_per_step": flops_per_step,
  }
  if flops_per_step:
    out["achieved_flops_per_s"] = flops_per_step / median
    if peak_flops:
      out["fraction_of_peak"] = out["achieved_flops_per_s"] / peak_flops
  return out
