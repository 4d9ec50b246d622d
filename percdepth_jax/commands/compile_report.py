"""Compile a config's train and inference steps for a GPU or TPU this machine
does not have, and report what they need there.

  python scripts/compile_report.py --config configs/nyu_paper.py --target h100 [--devices 8] [--hosts 2] [--batch 8,32] [--max-batch] [--config.model.dtype=bfloat16]

Targets: GPUs by short name (h100, a100-80gb, a100-40gb, l4; --target-config
FILE for any other card, a GpuTargetConfigProto text file like
percdepth_jax/targets/h100-80gb.txtpb) on --hosts x --devices; TPU slices by
libtpu's topology name (v5e:2x2, v5e:4x4, v4:2x2x1, ...). The steps are the
ones scripts/train.py runs for the config, sharded over every device of the
target; no weights or data are read. Per global batch it prints per-device
memory (arguments, temporaries, outputs, total) against the device's memory,
the compile time, FLOPs per device and step, the roofline bound in images/s
at the device's peak, the TPU compiler's step-time estimate where it gives
one, and what carries the convolutions. --max-batch finds the largest global
train batch that fits (doubling, then bisection; one compile each).
Needs the compilers: pip install -e ".[accelerators]" (no GPU or TPU).
Exit codes: 0 every step compiled without CPU-only pieces; 1 a step holds
CPU-only pieces (host callbacks, CPU gradient kernels, convolutions off
cuDNN); 2 bad input (unknown target, missing compilers, bad batch).
"""

from __future__ import annotations

import json
import os
import pathlib
import sys

# The report compiles for the target only: JAX's own devices stay the CPU
# (the CUDA plugin and libtpu are used as compilers, not as backends).
os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("TPU_STDERR_LOG_LEVEL", "3")
os.environ.setdefault("TPU_MIN_LOG_LEVEL", "3")

from absl import flags  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from percdepth_jax.cli import CONFIG_HELP, EXIT_FAILED, run_script  # noqa: E402
from percdepth_jax.errors import UserInputError  # noqa: E402
from percdepth_jax.training.config import unknown_override_message  # noqa: E402

FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, CONFIG_HELP, flag_values=FLAGS,
                                lock_config=True)
flags.DEFINE_string("target", None, "h100, a100-80gb, a100-40gb, l4, or a TPU topology "
                    "such as v5e:2x2", flag_values=FLAGS)
flags.DEFINE_string("target-config", None, "a GPU described by a GpuTargetConfigProto text "
                    "file (instead of --target)", flag_values=FLAGS)
flags.DEFINE_integer("devices", 1, "GPUs per host", flag_values=FLAGS)
flags.DEFINE_integer("hosts", 1, "hosts (GPUs)", flag_values=FLAGS)
flags.DEFINE_list("batch", None, "global batch sizes (default: the config's batch_size)",
                  flag_values=FLAGS)
flags.DEFINE_bool("max-batch", False, "find the largest global train batch that fits",
                  flag_values=FLAGS)
flags.DEFINE_list("steps", ["train", "inference"], "train, inference", flag_values=FLAGS)
flags.DEFINE_string("json", None, "also write the reports to this file", flag_values=FLAGS)
flags.mark_flags_as_required(["config"], flag_values=FLAGS)

GIB = 2**30


def _target(args):
  from percdepth_jax import targets
  if bool(args.target) == bool(args.target_config):
    raise UserInputError("pass one of --target NAME or --target-config FILE.")
  if args.target_config:
    return targets.Target.from_gpu_file(args.target_config, devices=args.devices,
                                        hosts=args.hosts)
  return targets.resolve(args.target, devices=args.devices, hosts=args.hosts)


def _batches(args, config, target) -> list[int]:
  from percdepth_jax import compile_report
  try:
    batches = [int(b) for b in args.batch] if args.batch else [int(config.batch_size)]
  except ValueError:
    raise UserInputError(f"--batch {','.join(args.batch)}: expected integers, e.g. "
                         "--batch 8,32") from None
  for batch in batches:
    compile_report.check_batch(batch, target)
  return batches


def _row(r) -> str:
  gib = lambda n: f"{n / GIB:6.2f}"  # noqa: E731
  flops = f"{r.flops / 1e9:9.1f}" if r.flops else "      n/a"
  roofline = f"{r.roofline_images_per_s:8.0f}" if r.roofline_images_per_s else "     n/a"
  estimate = f"{r.estimated_images_per_s:8.0f}" if r.estimated_images_per_s else "     n/a"
  return (f"{r.step:<9} {r.batch:>6} {gib(r.argument_bytes)} {gib(r.temp_bytes)} "
          f"{gib(r.output_bytes)} {gib(r.total_bytes)} / {r.device_memory_bytes / GIB:5.1f} "
          f"{'yes' if r.fits else 'NO ':<4} {r.compile_s:8.1f} {flops} {roofline} {estimate}")


HEADER = ("step       batch   args   temp    out  total / device fits compile_s GFLOP/dev "
          "roofline  TPU est\n"
          "                    GiB    GiB    GiB    GiB      GiB                             "
          "img/s     img/s")


def run(args) -> int:
  import jax

  from percdepth_jax import compile_report, targets
  from percdepth_jax.training import initial_weights

  config = args.config
  target = _target(args)
  unknown = [s for s in args.steps if s not in ("train", "inference")]
  if unknown or not args.steps:
    raise UserInputError(f"--steps {','.join(args.steps)}: expected train and/or inference.")
  missing = targets.missing_compiler(target)
  if missing:
    raise UserInputError(missing)
  batches = _batches(args, config, target)
  overrides = list(config_flags.get_override_values(FLAGS["config"]))
  model_config = initial_weights.run_model_config(config, overrides)
  dtype = model_config.dtype
  print(f"target: {target.describe()}, {target.memory_bytes / GIB:.1f} GiB per device, "
        f"peak {target.peak_flops.get(dtype, 0) / 1e12:.0f} TFLOP/s ({dtype}) per device",
        flush=True)
  print(f"model: {model_config.encoder} encoder, {dtype} compute, remat "
        f"{'on' if model_config.remat else 'off'}; perceptual loss "
        f"{'on' if config.loss.perceptual else 'off'}", flush=True)
  devices = targets.topology_devices(target)
  programs = compile_report.build_programs(config, model_config, devices)
  reports = []
  print(HEADER, flush=True)
  for batch in batches:
    for step in args.steps:
      try:
        report = compile_report.compile_step(programs, step, batch, target, dtype)
      except jax.errors.JaxRuntimeError as e:
        if not compile_report.out_of_memory(e):
          raise
        print(f"{step:<9} {batch:>6}  does not fit: XLA refused it "
              f"({str(e).splitlines()[0][:100]})", flush=True)
        continue
      reports.append(report)
      print(_row(report), flush=True)
  for report in reports:
    print(f"{report.step} batch {report.batch}: " + ", ".join(
        f"{k} {v}" for k, v in report.kernels.items()), flush=True)
  largest = None
  if args.max_batch:
    print("largest train batch that fits:", flush=True)
    largest, searched = compile_report.max_batch(programs, target, dtype, max(batches))
    reports += searched
    print(f"  -> {largest} (global; {largest // target.device_count} per device)", flush=True)
  problems = [f"{r.step} batch {r.batch}: {p}" for r in reports for p in r.cpu_only]
  for problem in problems:
    print(f"CPU-only piece in the accelerator program: {problem}", file=sys.stderr)
  if args.json:
    pathlib.Path(args.json).write_text(json.dumps(
        {"target": target.describe(), "dtype": dtype, "max_batch": largest,
         "reports": [r.to_dict() for r in reports]}, indent=1))
  return EXIT_FAILED if problems else 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, explain=unknown_override_message, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
