"""The installed command: `percdepth TASK [flags]`, one task per module.

  percdepth TASK [flags]            (or: python -m percdepth_jax TASK [flags])
  percdepth TASK --help             the task's flags

Each task runs the module that `python scripts/TASK.py` runs in a checkout
(percdepth_jax/commands/), with the same flags, messages and exit codes;
`convert` runs `python -m weights_conversion`.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import sys

from percdepth_jax.cli import EXIT_BAD_INPUT, EXIT_OK
from percdepth_jax.errors import UserInputError

CONVERTER = "weights_conversion.__main__"
# task -> (module whose main(argv, prog) runs it, one line for --help)
TASKS = {
    "train": ("percdepth_jax.commands.train", "train (or resume) the depth model"),
    "evaluate": ("percdepth_jax.commands.evaluate",
                 "evaluate a model on a dataset under a published protocol"),
    "predict": ("percdepth_jax.commands.predict",
                "depth for photos: .npy metres, 16-bit PNG, colour picture, point cloud"),
    "demo": ("percdepth_jax.commands.demo",
             "a browser demo: upload a photo, see its depth and a 3D view"),
    "export": ("percdepth_jax.commands.export",
               "a model as one StableHLO or ONNX file that runs without this code"),
    "convert": (CONVERTER, "PyTorch/torchvision weights or DenseDepth's Keras nyu.h5 to a model"),
    "make-synthetic": ("percdepth_jax.commands.make_synthetic",
                       "write synthetic rooms as an RGB-D folder"),
    "compile-report": ("percdepth_jax.commands.compile_report",
                       "compile a config for a GPU or TPU this machine lacks: memory, speed"),
    "benchmark": ("percdepth_jax.commands.benchmark",
                  "time training and inference, JAX against the PyTorch reference"),
    "benchmark-data": ("percdepth_jax.commands.benchmark_data",
                       "time synthetic rendering and the data pipeline"),
}


def _help() -> str:
  width = max(map(len, TASKS))
  lines = [f"  {task:<{width}}  {summary}" for task, (_, summary) in TASKS.items()]
  return ("usage: percdepth TASK [flags]   (percdepth TASK --help: that task's flags)\n\n"
          "Monocular depth estimation in JAX (percdepth-jax). Tasks:\n" + "\n".join(lines))


def _module(task: str):
  name = TASKS[task][0]
  if name != CONVERTER:
    return importlib.import_module(name)
  # The converter is the PyTorch/Keras side: percdepth_jax never imports it
  # statically (tests/test_import_layers.py), so it is looked up by name here.
  try:
    return importlib.import_module(name)
  except ModuleNotFoundError as e:
    if not (e.name or "").startswith("weights_conversion"):
      raise
    raise UserInputError(
        "percdepth convert needs the weights_conversion package, which is "
        "installed with percdepth-jax; reinstall it: pip install percdepth-jax "
        '(from a checkout: pip install -e ".[torch]")') from None


def main(argv: list[str] | None = None) -> int:
  argv = list(sys.argv[1:] if argv is None else argv)
  if not argv:
    print(_help(), file=sys.stderr)
    return EXIT_BAD_INPUT
  task, rest = argv[0], argv[1:]
  if task in ("-h", "--help", "help"):
    print(_help())
    return EXIT_OK
  if task == "--version":
    print(f"percdepth-jax {importlib.metadata.version('percdepth-jax')}")
    return EXIT_OK
  if task not in TASKS:
    print(f"error: unknown task {task!r}; the tasks are {', '.join(TASKS)}\n"
          "usage: percdepth TASK [flags]", file=sys.stderr)
    return EXIT_BAD_INPUT
  try:
    module = _module(task)
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT
  return module.main(rest, prog=f"percdepth {task}")


if __name__ == "__main__":
  sys.exit(main())
