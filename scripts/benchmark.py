"""Speed of the training step and of inference, JAX against the PyTorch reference.

  python scripts/benchmark.py [--height 256 --width 320 --batch 2 --steps 5]
      [--rounds 5] [--mode train,inference] [--compare-pytorch]
      [--dtype float32|bfloat16] [--json FILE]

Times, after warm-up and with compilation reported apart:
  train      the full training step: forward, the four loss terms (L1,
             gradient, SSIM, perceptual with the frozen ResNet-50), backward,
             Adam update; random-init networks, one fixed batch on the device.
  inference  depth in metres with flip test-time averaging.
With --compare-pytorch the PyTorch reference (weights_conversion.torch_reference)
does the same work at the same precision, batch and size; the frameworks
alternate round by round (A/B), so drifts of the machine hit both alike.
Prints ms/step (median and min-max over rounds), images/s, peak memory,
the JAX/PyTorch speed ratio (> 1: JAX is faster) and the achieved FLOP/s
(FLOPs from XLA's cost analysis of the JAX program, the same count used for
both frameworks) against the device's peak.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys

from absl import flags

from percdepth_jax.cli import run_script
from percdepth_jax.errors import UserInputError

MODES = ("train", "inference")

FLAGS = flags.FlagValues()
flags.DEFINE_integer("height", 256, "image height", flag_values=FLAGS)
flags.DEFINE_integer("width", 320, "image width", flag_values=FLAGS)
flags.DEFINE_integer("batch", 2, "images per step", flag_values=FLAGS)
flags.DEFINE_integer("steps", 5, "timed steps per round", flag_values=FLAGS)
flags.DEFINE_integer("rounds", 5, "A/B rounds", flag_values=FLAGS)
flags.DEFINE_integer("warmup", 2, "untimed steps after compiling", flag_values=FLAGS)
flags.DEFINE_string("mode", "train,inference", "comma-separated: train, inference",
                    flag_values=FLAGS)
flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "compute dtype",
                  flag_values=FLAGS)
flags.DEFINE_string("encoder", "densenet121",
                    "DenseNet variant (densenet_tiny: for smoke tests only)", flag_values=FLAGS)
flags.DEFINE_bool("compare-pytorch", False,
                  "also time the PyTorch reference, alternating with JAX", flag_values=FLAGS)
flags.DEFINE_bool("torch-compile", False,
                  "also time the PyTorch reference under torch.compile", flag_values=FLAGS)
flags.DEFINE_bool("separate-processes", False,
                  "time each framework and mode in a process of its own (GPUs: own "
                  "allocator, per-workload device memory peak) instead of A/B in one",
                  flag_values=FLAGS)
flags.DEFINE_string("only", None, "MODE:FRAMEWORK: time just this one (used by "
                    "--separate-processes)", flag_values=FLAGS)
flags.DEFINE_string("json", None, "write the results here", flag_values=FLAGS)


def _check(args) -> list[str]:
  modes = [m.strip() for m in args.mode.split(",") if m.strip()]
  unknown = sorted(set(modes) - set(MODES))
  if unknown or not modes:
    raise UserInputError(f"--mode {args.mode!r}: choose from {', '.join(MODES)} "
                         "(comma-separated).")
  if args.height % 32 or args.width % 32 or args.height < 32 or args.width < 32:
    raise UserInputError(f"--height {args.height} --width {args.width}: both must be "
                         "positive multiples of 32 (the network's stride).")
  for name in ("batch", "steps", "rounds"):
    if getattr(args, name) < 1:
      raise UserInputError(f"--{name} {getattr(args, name)} must be >= 1.")
  if args.warmup < 0:
    raise UserInputError(f"--warmup {args.warmup} must be >= 0.")
  from percdepth_jax.models.densenet import DENSENET_SPECS
  if args.encoder not in DENSENET_SPECS:
    raise UserInputError(f"--encoder {args.encoder!r}: choose one of {sorted(DENSENET_SPECS)}.")
  return modes


def _log(*parts) -> None:
  print(*parts, file=sys.stderr, flush=True)


def _mib(n) -> str:
  return "n/a" if n is None else f"{n / 2**20:,.0f} MiB"


def _print_table(results: dict) -> None:
  print(f"\n{results['device']} | {results['dtype']} | batch {results['batch']} | "
        f"{results['height']}x{results['width']} | {results['rounds']} rounds x "
        f"{results['steps']} steps"
        + (" | one process per workload" if results.get("separate_processes") else ""))
  header = (f"{'mode':<10} {'framework':<15} {'ms/step':>9} {'min-max':>15} "
            f"{'images/s':>9} {'compile s':>9} {'memory':>10} {'TFLOP/s':>8} {'of peak':>7}")
  print(header)
  print("-" * len(header))
  for mode in MODES:
    if mode not in results["modes"]:
      continue
    entry = results["modes"][mode]
    for fw in FRAMEWORKS:
      if fw not in entry:
        continue
      r = entry[fw]
      flops = r.get("achieved_flops_per_s")
      frac = r.get("fraction_of_peak")
      print(f"{mode:<10} {fw:<15} {r['ms_per_step_median']:9.1f} "
            f"{r['ms_per_step_min']:7.1f}-{r['ms_per_step_max']:<7.1f} "
            f"{r['images_per_s']:9.2f} {r['compile_s']:9.1f} "
            f"{_mib(r['peak_memory_bytes']):>10} "
            f"{'' if flops is None else f'{flops / 1e12:8.3f}':>8} "
            f"{'' if frac is None else f'{100 * frac:6.1f}%':>7}")
    for fw in FRAMEWORKS[1:]:
      if f"jax_over_{fw}" in entry:
        print(f"{mode:<10} JAX/{fw} speed ratio: {entry[f'jax_over_{fw}']:.2f}x")
  peak = results["peak_flops_per_s"]
  print(f"peak: {'n/a' if peak is None else f'{peak / 1e12:.3f} TFLOP/s'} "
        f"({results['peak_flops_source']})")
  print("memory: " + "; ".join(sorted({f"{fw}: {r['peak_memory_source']}"
                                       for e in results["modes"].values()
                                       for fw, r in e.items() if isinstance(r, dict)})))


FRAMEWORKS = ("jax", "pytorch", "pytorch_compile")


def _jobs(args, modes: list[str]) -> list[tuple[str, str]]:
  """(mode, framework) pairs to time, in order; --only picks one."""
  frameworks = ["jax"] + (["pytorch"] if args.compare_pytorch else []) + (
      ["pytorch_compile"] if args.torch_compile else [])
  jobs = [(mode, fw) for mode in modes for fw in frameworks]
  if args.only:
    mode, _, fw = args.only.partition(":")
    if (mode, fw) not in jobs:
      raise UserInputError(f"--only {args.only!r}: expected MODE:FRAMEWORK among "
                           f"{', '.join(f'{m}:{f}' for m, f in jobs)}.")
    jobs = [(mode, fw)]
  return jobs


def _torch_benchmark():
  try:
    from weights_conversion import torch_benchmark
  except ImportError as e:
    raise UserInputError(f"--compare-pytorch/--torch-compile need torch and torchvision "
                         f'({e}); install them with: pip install -e ".[torch]"') from e
  return torch_benchmark


def _build(mode: str, framework: str, args, batch_np):
  """One compiled workload (compilation or first step timed apart)."""
  from percdepth_jax import benchmarking as bench
  _log(f"[{mode}] {framework}: building and compiling ...")
  if framework == "jax":
    make = bench.jax_train_workload if mode == "train" else bench.jax_inference_workload
    w = make(args.encoder, args.dtype, args.batch, args.height, args.width)
  else:
    torch_benchmark = _torch_benchmark()
    compile_model = framework == "pytorch_compile"
    if mode == "train":
      # The training defaults (loss weights, Adam constants) the JAX step uses.
      from percdepth_jax.training.config import base_config
      c = base_config()
      w = torch_benchmark.train_workload(
          args.encoder, args.dtype, batch_np,
          loss_weights=(c.loss.l1, c.loss.gradient, c.loss.ssim, c.loss.perceptual),
          learning_rate=c.optimizer.learning_rate, betas=(c.optimizer.b1, c.optimizer.b2),
          compile_model=compile_model)
    else:
      w = torch_benchmark.inference_workload(args.encoder, args.dtype, batch_np["image"],
                                             compile_model=compile_model)
    w.framework = framework
  _log(f"[{mode}] {framework}: ready after {w.compile_s:.1f} s")
  return w


def _child_argv(args, only: str, json_path: str) -> list[str]:
  """This run's flags for one (mode, framework) in a process of its own."""
  argv = [line for line in FLAGS.flags_into_string().splitlines()
          if not line.startswith(("--only", "--json", "--separate-processes",
                                  "--noseparate-processes"))]
  return [sys.executable, __file__, *argv, f"--only={only}", f"--json={json_path}"]


def _run_separately(args, jobs) -> dict:
  """Each (mode, framework) timed in its own process, one after another: no
  framework's allocator or caches share a device with another's, and each
  process's device memory peak is its workload's alone."""
  import subprocess
  import tempfile
  merged = None
  with tempfile.TemporaryDirectory() as tmp:
    for mode, fw in jobs:
      path = pathlib.Path(tmp) / f"{mode}_{fw}.json"
      _log(f"[{mode}] {fw}: timing in a separate process")
      done = subprocess.run(_child_argv(args, f"{mode}:{fw}", str(path)))
      if done.returncode != 0:
        raise RuntimeError(f"the {mode}:{fw} process failed (exit {done.returncode}).")
      child = json.loads(path.read_text())
      if merged is None:
        merged = child
      else:
        merged["modes"].setdefault(mode, {}).update(child["modes"][mode])
        merged["versions"].update(child["versions"])
        merged.setdefault("pytorch_settings", child.get("pytorch_settings"))
  merged["separate_processes"] = True
  return merged


def run(args) -> int:
  modes = _check(args)
  jobs = _jobs(args, modes)
  # Neither framework takes the device's memory up front (XLA's default is
  # 75% of a GPU at start-up), so both allocate as they go.
  os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
  if args.separate_processes and not args.only:
    results = _run_separately(args, jobs)
  else:
    results = _run_in_process(args, jobs)
  for entry in results["modes"].values():
    jax_r = entry.get("jax")
    for fw in FRAMEWORKS[1:]:
      if fw in entry and jax_r:
        # Both frameworks do the same work: credit them with XLA's FLOP count.
        r = entry[fw]
        r["flops_per_step"] = jax_r["flops_per_step"]
        if r["flops_per_step"]:
          r["achieved_flops_per_s"] = r["flops_per_step"] / (r["ms_per_step_median"] / 1e3)
          if results["peak_flops_per_s"]:
            r["fraction_of_peak"] = r["achieved_flops_per_s"] / results["peak_flops_per_s"]
        entry[f"jax_over_{fw}"] = r["ms_per_step_median"] / jax_r["ms_per_step_median"]
  if not args.only:
    _print_table(results)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"wrote {path}")
  return 0


def _run_in_process(args, jobs) -> dict:
  """Every workload built in this process, then timed round by round in
  alternation (A/B), so slow drifts of the machine hit all alike."""
  import jax

  from percdepth_jax import benchmarking as bench

  batch_np = bench.synthetic_batch(args.batch, args.height, args.width)
  torch_settings = None
  if any(fw != "jax" for _, fw in jobs):
    torch_settings = _torch_benchmark().configure(args.dtype)
  workloads = [_build(mode, fw, args, batch_np) for mode, fw in jobs]
  if args.only:
    device_peak, source = bench.device_peak_memory()
    if device_peak is not None and workloads[0].framework == "jax":
      # Alone in its process: the device's peak is this workload's.
      workloads[0].memory_bytes, workloads[0].memory_source = device_peak, source

  peak, peak_source = bench.device_peak_flops(args.dtype)
  _log(f"timing: {args.warmup} warm-up steps, then {args.rounds} rounds x "
       f"{args.steps} steps of each of {len(workloads)} workloads")
  bench.time_alternating(workloads, args.steps, args.rounds, args.warmup,
                         on_round=lambda r: _log(f"  round {r + 1}/{args.rounds} done"))
  results = {
      "device": bench.device_name(),
      "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version()},
      "versions": {"jax": jax.__version__},
      "encoder": args.encoder, "dtype": args.dtype, "batch": args.batch,
      "height": args.height, "width": args.width, "steps": args.steps,
      "rounds": args.rounds, "warmup": args.warmup,
      "peak_flops_per_s": peak, "peak_flops_source": peak_source,
      "separate_processes": False, "modes": {},
  }
  if torch_settings is not None:
    results["versions"].update(_torch_benchmark().versions())
    results["pytorch_settings"] = torch_settings
  for w in workloads:
    results["modes"].setdefault(w.mode, {})[w.framework] = bench.summarize(
        w, args.batch, peak)
  return results


def main(argv: list[str] | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__)


if __name__ == "__main__":
  sys.exit(main())
