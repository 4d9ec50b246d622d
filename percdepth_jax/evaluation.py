"""Evaluation over a data source: streaming metrics and a few samples to show."""

from __future__ import annotations

import time
from typing import Any, Sequence

import jax
import numpy as np
from jax.experimental import multihost_utils

from percdepth_jax import edges as edges_lib
from percdepth_jax import metrics as metrics_lib
from percdepth_jax.data.pipeline import make_eval_iterator, num_eval_batches
from percdepth_jax.inference import NATIVE, Resolution, compiled_depth_metres, run_size
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


def evaluate_protocols(model: DepthNet, source, protocols: Sequence[str] = ("densedepth",),
                       *, edges: bool = False, flip: bool = True, batch_size: int = 8,
                       max_examples: int = 0, num_samples: int = 0, sharding=None,
                       progress: bool = False, resolution: Resolution = NATIVE
                       ) -> tuple[dict[str, Any], list[dict[str, np.ndarray]]]:
  """Metrics of `model` on `source` under several protocols in one pass.

  The network runs once per batch on the full frames (shared by every
  protocol that evaluates full-frame predictions, and by the edge metrics)
  and once on each distinct crop of the protocols that crop the image before
  prediction (`big_vision`). `resolution` as in `inference.predict_depth`;
  the default here, "native", runs at the data's own size (training
  evaluates on frames of its training size); scripts/evaluate.py passes
  "train".

  Returns (result, samples): result = {"protocols": {name: metrics},
  "num_images": n} plus, with edges=True, "edges": {"dbe_acc", "dbe_com",
  "num_images", "num_images_skipped"} (iBims-1 depth-boundary errors of the
  full-frame prediction inside the Eigen crop; see `percdepth_jax.edges`).
  samples: the first num_samples examples as {"image", "depth", "valid",
  "pred"} NumPy arrays (full frames, or the crop when only cropping protocols
  were asked for). Constant memory: batches are reduced into streaming
  accumulators.
  """
  if not protocols:
    raise ValueError("evaluate_protocols needs at least one protocol.")
  specs = [metrics_lib.get_protocol(p) for p in protocols]
  model.eval()
  if max_examples:
    source = _Limit(source, max_examples)
  accumulators = {p.name: metrics_lib.DepthMetricsAccumulator(p) for p in specs}
  edge_accumulator = edges_lib.DepthBoundaryAccumulator() if edges else None
  full_frame = edges or any(not p.crop_before_prediction for p in specs)
  samples: list[dict[str, np.ndarray]] = []
  total = num_eval_batches(source, batch_size)
  predict = lambda image: _to_host(compiled_depth_metres(
      model, image, flip=flip, size=run_size(model, *image.shape[1:3], resolution)))
  t0 = time.perf_counter()
  iterator = make_eval_iterator(source, batch_size, sharding=sharding)
  num_evaluated = 0  # examples a skip_bad source skipped are not counted
  for b, batch in enumerate(iterator):
    host = {k: _to_host(v) for k, v in batch.items()}
    real = host["mask"].astype(bool)
    num_evaluated += int(real.sum())
    gt, valid = host["depth"][real], host["valid"][real]
    height, width = gt.shape[1:3]
    views = []  # (image, gt, valid, pred) as the sample grid shows them.
    if full_frame:
      pred = predict(batch["image"])[real]
      views.append((host["image"][real], gt, valid, pred))
      for p in specs:
        if not p.crop_before_prediction:
          accumulators[p.name].update(gt, pred, mask=valid)
      if edge_accumulator is not None:
        edge_accumulator.update(gt, pred, mask=valid)
    cropped_preds: dict[tuple[int, int, int, int], np.ndarray] = {}
    for p in specs:
      if not p.crop_before_prediction:
        continue
      r0, r1, c0, c1 = window = metrics_lib.crop_window(height, width, p)
      if window not in cropped_preds:
        cropped_preds[window] = predict(batch["image"][:, r0:r1, c0:c1])[real]
        views.append((host["image"][real][:, r0:r1, c0:c1], gt[:, r0:r1, c0:c1],
                      valid[:, r0:r1, c0:c1], cropped_preds[window]))
      accumulators[p.name].update(gt[:, r0:r1, c0:c1], cropped_preds[window],
                                  mask=valid[:, r0:r1, c0:c1], cropped=True)
    image, gt_v, valid_v, pred_v = views[0]
    for i in range(min(max(num_samples - len(samples), 0), len(gt_v))):
      samples.append({"image": image[i], "depth": gt_v[i], "valid": valid_v[i],
                      "pred": pred_v[i]})
    if progress:
      print(f"\reval batch {b + 1}/{total}", end="", flush=True)
  if progress:
    print(f" ({time.perf_counter() - t0:.1f}s)", flush=True)
  result: dict[str, Any] = {
      "protocols": {name: acc.result() for name, acc in accumulators.items()},
      "num_images": num_evaluated}
  if num_evaluated < len(source):
    result["num_images_skipped"] = len(source) - num_evaluated
  if edge_accumulator is not None:
    result["edges"] = {**edge_accumulator.result(),
                       "num_images": edge_accumulator.num_images,
                       "num_images_skipped": edge_accumulator.num_images_skipped}
  return result, samples


def evaluate(model: DepthNet, source, *, protocol: str = "densedepth",
             flip: bool = True, batch_size: int = 8, max_examples: int = 0,
             num_samples: int = 0, sharding=None, progress: bool = False,
             edges: bool = False, resolution: Resolution = NATIVE
             ) -> tuple[dict[str, float], list[dict[str, np.ndarray]]]:
  """Metrics of `model` on every example of `source` (or the first max_examples).

  Returns (metrics, samples): metrics as `percdepth_jax.metrics` computes them
  under `protocol` plus "num_images", and with edges=True "dbe_acc" and
  "dbe_com" (see `evaluate_protocols`); samples are the first num_samples
  examples as {"image", "depth", "valid", "pred"} NumPy arrays (for plots).
  Constant memory: batches are reduced into a streaming accumulator.
  """
  result, samples = evaluate_protocols(
      model, source, (protocol,), edges=edges, flip=flip, batch_size=batch_size,
      max_examples=max_examples, num_samples=num_samples, sharding=sharding,
      progress=progress, resolution=resolution)
  metrics = dict(result["protocols"][metrics_lib.get_protocol(protocol).name])
  metrics["num_images"] = result["num_images"]
  if "num_images_skipped" in result:
    metrics["num_images_skipped"] = result["num_images_skipped"]
  if edges:
    metrics.update({k: result["edges"][k] for k in ("dbe_acc", "dbe_com")})
  return metrics, samples
