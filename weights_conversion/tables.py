"""PyTorch state-dict keys <-> Flax variable paths: one name table, one layout function.

Flax modules here carry PyTorch's module names, so a key differs from its
Flax path only by (a) a per-format module prefix and (b) the leaf name.
"""

from __future__ import annotations

import re

import numpy as np

# Flax leaf -> PyTorch leaf. Conv/Linear weights are `kernel` in Flax,
# BatchNorm's are `scale`: both are `weight` in PyTorch.
LEAF_NAMES = {
    "kernel": "weight",
    "scale": "weight",
    "bias": "bias",
    "mean": "running_mean",
    "var": "running_var",
}

# Per format: (Flax module prefix, PyTorch module prefix), first match wins,
# and the PyTorch keys the Flax model deliberately has no place for.
FORMATS = {
    "torchvision": {
        "prefixes": [("", "")],
        "ignored": [r"(^|\.)num_batches_tracked$"],
    },
    "densedepth": {
        "prefixes": [("encoder.features.", "encoder.original_model.features."),
                     ("decoder.", "decoder.")],
        # DenseDepth keeps torchvision's ImageNet classifier inside the encoder.
        "ignored": [r"(^|\.)num_batches_tracked$",
                    r"^encoder\.original_model\.classifier\."],
    },
}

# Old torchvision DenseNet checkpoints name `norm.1` what is now `norm1`.
_OLD_DENSENET_KEY = re.compile(
    r"^(.*denselayer\d+\.(?:norm|relu|conv))\.((?:[12])\.(?:weight|bias|running_mean|running_var))$")


def modernize_key(key: str) -> str:
  """Maps old-style DenseNet keys (`...denselayer1.norm.1.weight`) to current ones."""
  match = _OLD_DENSENET_KEY.match(key)
  return match.group(1) + match.group(2) if match else key


def torch_key(flax_path: tuple[str, ...], fmt: str) -> str:
  """The PyTorch state-dict key of a Flax variable path."""
  *modules, leaf = flax_path
  name = ".".join(modules) + "." + LEAF_NAMES[leaf]
  for flax_prefix, torch_prefix in FORMATS[fmt]["prefixes"]:
    if name.startswith(flax_prefix):
      return torch_prefix + name[len(flax_prefix):]
  raise KeyError(f"no {fmt} prefix rule for {'.'.join(flax_path)}")


def is_ignored(key: str, fmt: str, extra_ignored: tuple[str, ...] = ()) -> bool:
  return any(re.search(p, key) for p in (*FORMATS[fmt]["ignored"], *extra_ignored))


def to_flax_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  """PyTorch layout -> Flax layout: OIHW -> HWIO conv kernels, (out, in) -> (in, out) linear."""
  if leaf == "kernel" and array.ndim == 4:
    return np.transpose(array, (2, 3, 1, 0))
  if leaf == "kernel" and array.ndim == 2:
    return np.transpose(array)
  return array


def to_torch_layout(leaf: str, array: np.ndarray) -> np.ndarray:
  """Inverse of `to_flax_layout` (for exporting Flax weights to PyTorch)."""
  if leaf == "kernel" and array.ndim == 4:
    return np.transpose(array, (3, 2, 0, 1))
  if leaf == "kernel" and array.ndim == 2:
    return np.transpose(array)
  return array
