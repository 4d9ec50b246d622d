"""The package's imports point one way: commands -> workflows (training,
evaluation, inference, export, ...) -> model_io -> storage -> building
blocks (models, losses, metrics, edges, data). Nothing in percdepth_jax
imports torch or weights_conversion (the PyTorch side). Every import
statement is read with `ast`, those inside functions included."""

import ast
import pathlib

import pytest

from tests.helpers import REPO

PACKAGE = REPO / "percdepth_jax"
FORBIDDEN = ("torch", "torchvision", "weights_conversion", "tensorflow", "keras", "tf_keras")
# Rank of each module (dotted name prefix); an import may go to an equal or
# lower rank only. The longest matching prefix decides.
RANKS = {
    "percdepth_jax.errors": 0, "percdepth_jax.compare": 0,
    "percdepth_jax.models": 0, "percdepth_jax.losses": 0, "percdepth_jax.metrics": 0,
    "percdepth_jax.edges": 0, "percdepth_jax.data": 0, "percdepth_jax.targets": 0,
    "percdepth_jax.storage": 1,
    "percdepth_jax.model_io": 2,
    "percdepth_jax.training": 3, "percdepth_jax.evaluation": 3,
    "percdepth_jax.inference": 3, "percdepth_jax.export": 3, "percdepth_jax.report": 3,
    "percdepth_jax.depth_outputs": 3, "percdepth_jax.benchmarking": 3,
    "percdepth_jax.benchmark_workers": 3,
    "percdepth_jax.cli": 3, "percdepth_jax.demo": 3, "percdepth_jax.compile_report": 3,
    "percdepth_jax": 4,  # the package facade (__init__): load_model, predict_depth
    # The command-line tasks (scripts/ and `percdepth` run them), and `python -m`.
    "percdepth_jax.commands": 5, "percdepth_jax.__main__": 5,
}


def rank(module: str) -> int:
  best = max((p for p in RANKS if module == p or module.startswith(p + ".")), key=len,
             default=None)
  if best is None:
    raise KeyError(f"{module} has no layer in RANKS; add it (and to docs/design.md)")
  return RANKS[best]


def module_name(path: pathlib.Path) -> str:
  parts = path.relative_to(REPO).with_suffix("").parts
  return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(source: str, package: str) -> list[str]:
  """Absolute names of every module an import statement names."""
  names = []
  for node in ast.walk(ast.parse(source)):
    if isinstance(node, ast.Import):
      names += [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
      base = node.module or ""
      if node.level:
        base = ".".join(package.split(".")[:len(package.split(".")) - node.level + 1]
                        + ([base] if base else []))
      # `from percdepth_jax import storage` imports the module percdepth_jax.storage.
      names += [f"{base}.{alias.name}" if base == "percdepth_jax" else base
                for alias in node.names]
  return names


def violations(path: pathlib.Path, source: str) -> list[str]:
  module = module_name(path)
  package = module if path.name == "__init__.py" else module.rpartition(".")[0]
  found = []
  for name in imported_modules(source, package):
    top = name.split(".")[0]
    if top in FORBIDDEN:
      found.append(f"{module} imports {name} (the library never imports the PyTorch/Keras side)")
    elif top == "percdepth_jax" and rank(name) > rank(module):
      found.append(f"{module} (layer {rank(module)}) imports {name} (layer {rank(name)})")
  return found


def test_no_upward_or_pytorch_imports():
  found = []
  for path in sorted(PACKAGE.rglob("*.py")):
    found += violations(path, path.read_text())
  assert not found, "\n".join(found)


@pytest.mark.parametrize("source,expected", [
    ("def f():\n  from percdepth_jax.training import loop\n", "imports percdepth_jax.training"),
    ("from percdepth_jax import model_io\n", "imports percdepth_jax.model_io"),
    ("import torch\n", "imports torch"),
    ("from weights_conversion.convert import x\n", "imports weights_conversion"),
])
def test_checker_catches_violations(source, expected):
  """The walker itself: an upward import inside a function, a sibling module
  imported by name from the package, and a PyTorch-side import are caught
  for a module of the lowest layer."""
  found = violations(PACKAGE / "models" / "layers.py", source)
  assert len(found) == 1 and expected in found[0], found
