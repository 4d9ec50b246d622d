"""Speed of the training step and of inference, JAX against the PyTorch reference.

  python scripts/benchmark.py [--height 256 --width 320 --batch 2 --steps 5]
      [--rounds 5] [--mode train,inference] [--compare-pytorch]
      [--dtype float32|bfloat16] [--variant NAME:KEY=VALUE,...] [--json FILE]

Times, after warm-up and with compilation reported apart:
  train      the full training step: forward, the four loss terms (L1,
             gradient, SSIM, perceptual with the frozen ResNet-50), backward,
             Adam update; random-init networks, one fixed batch on the device.
  inference  depth in metres with flip test-time averaging.
With --compare-pytorch the PyTorch reference (weights_conversion.torch_reference)
does the same work at the same precision, batch and size.

Every workload runs alone in a worker process of its own (the JAX worker
never imports torch, the PyTorch worker never imports JAX or loads the
oneDNN kernels), started once and kept warm; rounds alternate between the
workers (A/B), one busy at a time, so drifts of the machine hit all alike.
A --variant is one more JAX worker with its own environment (e.g.
`--variant onednn_off:PERCDEPTH_ONEDNN=0`, `--variant passive:OMP_WAIT_POLICY=PASSIVE`;
`pytorch/NAME:...` for a PyTorch one). Prints ms/step (median and min-max
over rounds), images/s, memory (XLA's buffers or the device's peak, and
each worker's peak resident memory), the speed ratio against PyTorch
(> 1: JAX is faster) and the achieved FLOP/s (XLA's count of the JAX
program, credited to both frameworks) against the device's peak.
"""

from __future__ import annotations

import json
import os
import pathlib
import platform
import sys

from absl import flags

from percdepth_jax import benchmark_workers as bw
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
flags.DEFINE_multi_string("variant", [], "[pytorch/]NAME:KEY=VALUE[,KEY=VALUE...]: "
                          "one more worker with these environment variables "
                          "(KEY= removes KEY); repeatable", flag_values=FLAGS)
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


WORKER_MODULES = {"jax": "percdepth_jax.benchmarking",
                  "pytorch": "weights_conversion.torch_benchmark"}


def _variants(args) -> list[tuple[str, str, dict]]:
  """(framework, name, environment) of each --variant."""
  out = []
  for text in args.variant:
    head, sep, assignments = text.partition(":")
    framework, _, name = head.rpartition("/")
    framework = framework or "jax"
    env = {}
    for item in filter(None, assignments.split(",")):
      key, eq, value = item.partition("=")
      if not eq or not key:
        env = None
        break
      env[key] = value or None
    if not sep or not name or env is None or framework not in WORKER_MODULES:
      raise UserInputError(
          f"--variant {text!r}: expected [pytorch/]NAME:KEY=VALUE[,KEY=VALUE...], "
          "e.g. onednn_off:PERCDEPTH_ONEDNN=0 or pytorch/passive:OMP_WAIT_POLICY=PASSIVE.")
    if framework == "pytorch" and not args.compare_pytorch:
      raise UserInputError(f"--variant {text!r} times PyTorch: add --compare-pytorch.")
    out.append((framework, name, env))
  return out


def _torch_available() -> None:
  import importlib.util
  if importlib.util.find_spec("torch") is None or importlib.util.find_spec("torchvision") is None:
    raise UserInputError("--compare-pytorch/--torch-compile need torch and torchvision; "
                         'install them with: pip install -e ".[torch]"')


def _shared_constants(encoder: str) -> dict:
  """What the PyTorch worker must do exactly as the JAX step does (loss
  weights, Adam, depth range), read here so that it never imports JAX."""
  from percdepth_jax.models.config import DEPTH_NORM_SCALE, ModelConfig
  from percdepth_jax.training.config import base_config
  c, m = base_config(), ModelConfig(encoder=encoder)
  return {"loss_weights": [c.loss.l1, c.loss.gradient, c.loss.ssim, c.loss.perceptual],
          "learning_rate": c.optimizer.learning_rate, "betas": [c.optimizer.b1, c.optimizer.b2],
          "depth": {"scale": DEPTH_NORM_SCALE, "min_depth": m.min_depth,
                    "max_depth": m.max_depth, "target_max_value": m.target_max_value}}


def _workers(args, modes: list[str]) -> list[tuple[str, str, bw.Worker]]:
  """(mode, framework, worker): one worker per mode and framework or
  variant, in timing order."""
  common = {"encoder": args.encoder, "dtype": args.dtype, "batch": args.batch,
            "height": args.height, "width": args.width}
  kinds = [("jax", "jax", {}, {})]
  if args.compare_pytorch or args.torch_compile:
    _torch_available()
    shared = _shared_constants(args.encoder)
    if args.compare_pytorch:
      kinds.append(("pytorch", "pytorch", {}, shared))
    if args.torch_compile:
      kinds.append(("pytorch", "pytorch_compile", {}, {**shared, "compile_model": True}))
  for framework, name, env in _variants(args):
    extra = _shared_constants(args.encoder) if framework == "pytorch" else {}
    kinds.append((framework, f"{framework}[{name}]", env, extra))
  # Neither framework takes the device's memory up front (XLA's default is
  # 75% of a GPU at start-up), so both allocate as they go.
  base_env = {"XLA_PYTHON_CLIENT_PREALLOCATE": os.environ.get(
      "XLA_PYTHON_CLIENT_PREALLOCATE", "false")}
  workers = []
  for mode in modes:
    for framework, name, env, extra in kinds:
      spec = {**common, **extra, "mode": mode,
              "peak_flops": not workers}  # measured once, by the first JAX worker
      workers.append((mode, framework,
                      bw.Worker(name, WORKER_MODULES[framework], spec, {**base_env, **env})))
  return workers


def _print_table(results: dict) -> None:
  print(f"\n{results['device']} | {results['dtype']} | batch {results['batch']} | "
        f"{results['height']}x{results['width']} | {results['rounds']} rounds x "
        f"{results['steps']} steps | each workload in a process of its own")
  header = (f"{'mode':<10} {'framework':<20} {'ms/step':>9} {'min-max':>15} "
            f"{'images/s':>9} {'compile s':>9} {'memory':>10} {'peak RSS':>10} "
            f"{'TFLOP/s':>8} {'of peak':>7}")
  print(header)
  print("-" * len(header))
  for mode, entry in results["modes"].items():
    for name, r in entry.items():
      if not isinstance(r, dict):
        continue
      flops = r.get("achieved_flops_per_s")
      frac = r.get("fraction_of_peak")
      print(f"{mode:<10} {name:<20} {r['ms_per_step_median']:9.1f} "
            f"{r['ms_per_step_min']:7.1f}-{r['ms_per_step_max']:<7.1f} "
            f"{r['images_per_s']:9.2f} {r['compile_s']:9.1f} "
            f"{_mib(r['peak_memory_bytes']):>10} {_mib(r['process']['peak_rss_bytes']):>10} "
            f"{'' if flops is None else f'{flops / 1e12:8.3f}':>8} "
            f"{'' if frac is None else f'{100 * frac:6.1f}%':>7}")
    for key, ratio in entry.items():
      if key.endswith("_over_pytorch") or key.endswith("_over_pytorch_compile"):
        a, _, b = key.partition("_over_")
        print(f"{mode:<10} {a}/{b} speed ratio: {ratio:.2f}x")
  busy = max(r["other_cpu_cores"] for e in results["modes"].values()
             for r in e.values() if isinstance(r, dict))
  print(f"other CPU use while a worker was timed: at most {busy:.2f} cores (idle workers, "
        "other processes)" + (": the machine was not quiet, the figures are disturbed"
                              if busy > 0.1 else ""))
  peak = results["peak_flops_per_s"]
  print(f"peak: {'n/a' if peak is None else f'{peak / 1e12:.3f} TFLOP/s'} "
        f"({results['peak_flops_source']}); FLOPs: XLA's count of the plain program "
        "(direct convolutions), so Winograd's kernels, doing fewer multiplications, "
        "can read above the peak")
  print("memory: " + "; ".join(sorted({f"{r['framework']}: {r['peak_memory_source']}"
                                       for e in results["modes"].values()
                                       for r in e.values() if isinstance(r, dict)}))
        + "; peak RSS: the worker process's VmHWM (libraries and compilation included)")


def _ratios(entry: dict, peak_flops: float | None) -> None:
  """Speed ratios against each PyTorch workload (> 1: the other is faster),
  and PyTorch credited with the FLOPs of the JAX program (the same work)."""
  jax_r = entry["jax"]
  for r in entry.values():
    if r["framework"] == "pytorch" and jax_r["flops_per_step"]:
      r["flops_per_step"] = jax_r["flops_per_step"]
      r["achieved_flops_per_s"] = r["flops_per_step"] / (r["ms_per_step_median"] / 1e3)
      if peak_flops:
        r["fraction_of_peak"] = r["achieved_flops_per_s"] / peak_flops
  for ref in ("pytorch", "pytorch_compile"):
    if ref not in entry:
      continue
    for name, r in list(entry.items()):
      if isinstance(r, dict) and r["framework"] == "jax":
        entry[f"{name}_over_{ref}"] = (entry[ref]["ms_per_step_median"]
                                       / r["ms_per_step_median"])


def run(args) -> int:
  modes = _check(args)
  jobs = _workers(args, modes)
  workers = [w for _, _, w in jobs]
  try:
    for mode, _, w in jobs:
      _log(f"[{mode}] {w.name}: starting its worker process, building and compiling ...")
      w.start()
      _log(f"[{mode}] {w.name}: ready after {w.ready['compile_s']:.1f} s")
    _log(f"timing: {args.warmup} warm-up steps, then {args.rounds} rounds x "
         f"{args.steps} steps of each of {len(workers)} workers, one at a time")
    bw.time_alternating(workers, args.steps, args.rounds, args.warmup,
                        on_round=lambda r: _log(f"  round {r + 1}/{args.rounds} done"))
    probes = [w.request("probe") for w in workers]
  finally:
    for w in workers:
      w.close()

  first = workers[0].ready["info"]
  peak = first.get("peak_flops_per_s")
  results = {
      "device": first["device"],
      "host": {"machine": platform.machine(), "cpus": os.cpu_count(),
               "python": platform.python_version()},
      "versions": {}, "encoder": args.encoder, "dtype": args.dtype, "batch": args.batch,
      "height": args.height, "width": args.width, "steps": args.steps,
      "rounds": args.rounds, "warmup": args.warmup,
      "peak_flops_per_s": peak, "peak_flops_source": first.get("peak_flops_source"),
      "separate_processes": True, "modes": {},
  }
  for (mode, framework, w), process in zip(jobs, probes):
    info = w.ready["info"]
    results["versions"].update(info.get("versions", {}))
    if "pytorch_settings" in info:
      results.setdefault("pytorch_settings", info["pytorch_settings"])
    r = bw.summarize(w.times_s, args.batch, w.ready["compile_s"], w.ready["flops_per_step"],
                     w.ready["memory_bytes"], w.ready["memory_source"], peak)
    r.update(framework=framework, environment={k: v for k, v in w.env.items()
                                                 if k != "XLA_PYTHON_CLIENT_PREALLOCATE"},
             process=process,
             # CPU that anything else used (idle workers, other processes)
             # while this one was timed, in cores (worst round): near 0 on a
             # quiet machine.
             other_cpu_cores=max(
                 c / (t * args.steps) for c, t in zip(w.others_cpu_s, w.times_s)))
    results["modes"].setdefault(mode, {})[w.name] = r
  for entry in results["modes"].values():
    _ratios(entry, peak)
  _print_table(results)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"wrote {path}")
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
