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

import argparse
import json
import os
import pathlib
import platform
import sys


from percdepth_jax.errors import UserInputError, exit_code

MODES = ("train", "inference")


def _parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--height", type=int, default=256)
  parser.add_argument("--width", type=int, default=320)
  parser.add_argument("--batch", type=int, default=2)
  parser.add_argument("--steps", type=int, default=5, help="timed steps per round")
  parser.add_argument("--rounds", type=int, default=5, help="A/B rounds")
  parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compiling")
  parser.add_argument("--mode", default="train,inference",
                      help="comma-separated: train, inference")
  parser.add_argument("--dtype", choices=("float32", "bfloat16"), default="float32")
  parser.add_argument("--encoder", default="densenet121",
                      help="DenseNet variant (densenet_tiny: for smoke tests only)")
  parser.add_argument("--compare-pytorch", action="store_true",
                      help="also time the PyTorch reference, alternating with JAX")
  parser.add_argument("--json", default=None, help="write the results here")
  return parser


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


def _print_table(results: dict, compare: bool) -> None:
  print(f"\n{results['device']} | {results['dtype']} | batch {results['batch']} | "
        f"{results['height']}x{results['width']} | {results['rounds']} rounds x "
        f"{results['steps']} steps")
  header = (f"{'mode':<10} {'framework':<9} {'ms/step':>9} {'min-max':>15} "
            f"{'images/s':>9} {'compile s':>9} {'memory':>10} {'TFLOP/s':>8} {'of peak':>7}")
  print(header)
  print("-" * len(header))
  for mode in MODES:
    if mode not in results["modes"]:
      continue
    entry = results["modes"][mode]
    for fw in ("jax", "pytorch"):
      if fw not in entry:
        continue
      r = entry[fw]
      flops = r.get("achieved_flops_per_s")
      frac = r.get("fraction_of_peak")
      print(f"{mode:<10} {fw:<9} {r['ms_per_step_median']:9.1f} "
            f"{r['ms_per_step_min']:7.1f}-{r['ms_per_step_max']:<7.1f} "
            f"{r['images_per_s']:9.2f} {r['compile_s']:9.1f} "
            f"{_mib(r['peak_memory_bytes']):>10} "
            f"{'' if flops is None else f'{flops / 1e12:8.3f}':>8} "
            f"{'' if frac is None else f'{100 * frac:6.1f}%':>7}")
    if compare:
      print(f"{mode:<10} JAX/PyTorch speed ratio: {entry['jax_over_pytorch']:.2f}x")
  peak = results["peak_flops_per_s"]
  print(f"peak: {'n/a' if peak is None else f'{peak / 1e12:.3f} TFLOP/s'} "
        f"({results['peak_flops_source']})")


def run(args) -> int:
  modes = _check(args)
  import jax

  from percdepth_jax import benchmarking as bench

  batch_np = bench.synthetic_batch(args.batch, args.height, args.width)
  workloads = []
  for mode in modes:
    _log(f"[{mode}] JAX: building and compiling ...")
    make = bench.jax_train_workload if mode == "train" else bench.jax_inference_workload
    jax_w = make(args.encoder, args.dtype, args.batch, args.height, args.width)
    _log(f"[{mode}] JAX: compiled in {jax_w.compile_s:.1f} s")
    workloads.append(jax_w)
    if args.compare_pytorch:
      try:
        from weights_conversion import torch_benchmark
      except ImportError as e:
        raise UserInputError(f"--compare-pytorch needs torch and torchvision ({e}); "
                             'install them with: pip install -e ".[torch]"') from e
      torch_settings = torch_benchmark.configure(args.dtype)
      _log(f"[{mode}] PyTorch: building and running the first step ...")
      if mode == "train":
        # The training defaults (loss weights, Adam constants) the JAX step uses.
        from percdepth_jax.training.config import base_config
        c = base_config()
        torch_w = torch_benchmark.train_workload(
            args.encoder, args.dtype, batch_np,
            loss_weights=(c.loss.l1, c.loss.gradient, c.loss.ssim, c.loss.perceptual),
            learning_rate=c.optimizer.learning_rate, betas=(c.optimizer.b1, c.optimizer.b2))
      else:
        torch_w = torch_benchmark.inference_workload(args.encoder, args.dtype,
                                                     batch_np["image"])
      torch_w.flops_per_step = jax_w.flops_per_step  # same model, same work
      _log(f"[{mode}] PyTorch: first step {torch_w.compile_s:.1f} s")
      workloads.append(torch_w)

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
      "modes": {},
  }
  if args.compare_pytorch:
    results["versions"].update(torch_benchmark.versions())
    results["pytorch_settings"] = torch_settings
  for w in workloads:
    entry = results["modes"].setdefault(w.mode, {})
    entry[w.framework] = bench.summarize(w, args.batch, peak)
  for entry in results["modes"].values():
    if "pytorch" in entry:
      entry["jax_over_pytorch"] = (entry["pytorch"]["ms_per_step_median"]
                                   / entry["jax"]["ms_per_step_median"])
  _print_table(results, args.compare_pytorch)
  if args.json:
    path = pathlib.Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(results, indent=2) + "\n")
    _log(f"wrote {path}")
  return 0


def main(argv: list[str] | None = None) -> int:
  return exit_code(run, _parser().parse_args(argv))


if __name__ == "__main__":
  sys.exit(main())
