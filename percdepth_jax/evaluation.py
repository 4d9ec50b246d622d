"""Evaluation over a data source: streaming metrics and a few samples to show."""

from __future__ import annotations

import time
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from percdepth_jax import metrics as metrics_lib
from percdepth_jax.data.pipeline import make_eval_iterator, num_eval_batches
from percdepth_jax.inference import _predict_metres
from percdepth_jax.models import DepthNet


class _Limit:
  """The first n examples of a source (for quick periodic evaluations)."""

  def __init__(self, source, n: int):
    self.source, self.n = source, min(n, len(source))

  def __len__(self) -> int:
    return self.n

  def __getitem__(self, i: int):
    return self.source[i]


def _to_host(x: jax.Array) -> np.ndarray:
  if jax.process_count() > 1:
    return np.asarray(multihost_utils.process_allgather(x, tiled=True))
  return np.asarray(x)


def evaluate(model: DepthNet, source, *, protocol: str = "densedepth",
             flip: bool = True, batch_size: int = 8, max_examples: int = 0,
             num_samples: int = 0, sharding=None, progress: bool = False
             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """Metrics of `model` on every example of `source` (or the first max_examples).

  Returns (metrics, samples): metrics as `percdepth_jax.metrics` computes them
  under `protocol` plus "num_images"; samples are the first num_samples
  examples as {"image", "depth", "valid", "pred"} NumPy arrays (for plots).
  Constant memory: batches are reduced into a streaming accumulator.
  """
  model.eval()
  if max_examples:
    source = _Limit(source, max_examples)
  accumulator = metrics_lib.DepthMetricsAccumulator(protocol)
  samples: list[dict[str, np.ndarray]] = []
  total = num_eval_batches(source, batch_size)
  t0 = time.perf_counter()
  iterator = make_eval_iterator(source, batch_size, sharding=sharding)
  for b, batch in enumerate(iterator):
    pred = _to_host(_predict_metres(model, batch["image"], flip=flip))
    host = {k: _to_host(v) for k, v in batch.items()}
    real = host["mask"].astype(bool)
    gt, valid = host["depth"][real], host["valid"][real]
    accumulator.update(gt, pred[real], mask=valid)
    for i in np.flatnonzero(real)[:max(num_samples - len(samples), 0)]:
      samples.append({"image": host["image"][i], "depth": host["depth"][i],
                      "valid": host["valid"][i], "pred": pred[i]})
    if progress:
      print(f"\reval batch {b + 1}/{total}", end="", flush=True)
  if progress:
    print(f" ({time.perf_counter() - t0:.1f}s)", flush=True)
  result = accumulator.result()
  result["num_images"] = len(source)
  return result, samples
