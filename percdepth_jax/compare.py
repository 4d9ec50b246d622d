"""The project's one measure of agreement between two implementations."""

from __future__ import annotations

import numpy as np


def relative_max_error(actual, expected) -> float:
  """max |actual - expected| / max |expected|, in float64.

  Parity with PyTorch (weights_conversion.parity) and exported models
  (percdepth_jax.export) are both judged by it.
  """
  actual = np.asarray(actual, np.float64)
  expected = np.asarray(expected, np.float64)
  if actual.shape != expected.shape:
    raise ValueError(f"shapes differ: {actual.shape} vs {expected.shape}")
  return float(np.max(np.abs(actual - expected)) / np.max(np.abs(expected)))
