"""Depth-boundary errors (iBims-1): how well predicted depth edges match the true ones.

iBims-1's `compute_depth_boundary_error(edges_gt, pred)`:
  1. the prediction, normalised to [0, 1], goes through Canny (sigma
     sqrt(2), hysteresis thresholds 0.15 and 0.3 on the gradient magnitude):
     the predicted edges E_pred;
  2. D_gt, D_pred: Euclidean distance of every pixel to the nearest gt /
     predicted edge pixel;
  3. accuracy dbe_acc: mean D_gt over the predicted edges within 10 px of a
     gt edge (D_gt < 10);
  4. completeness dbe_com: (sum over E_pred of min(D_gt, 10) + sum over E_gt
     of min(D_pred, 10)) / (|E_pred| + |E_gt|);
  5. no predicted edge within 10 px of a gt edge: both are 10 (the maximum);
     no gt edge: the image has no boundary error (iBims: NaN) and is skipped.
Both are in pixels; lower is better; a perfect prediction scores 0 and 0.

iBims-1 has hand-annotated gt edges. NYU and the synthetic scenes do not, so
here the gt edges come from the same Canny on the gt depth normalised to
[0, 1] over its valid pixels. With a validity mask (holes in sensor depth),
Canny runs on the gt with skimage's `mask` (smoothing renormalised over valid
pixels, no edges within one pixel of a hole, so hole borders are not depth
edges), and predicted edges are kept only in that same eroded valid region,
so both edge sets are compared over the same pixels. Without holes this is
iBims-1's formula unchanged.

scikit-image (Canny) and SciPy (distance transform) are core dependencies:
the training report and `scripts/evaluate.py --edges` use them at run time.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import ndimage
from skimage import feature

from percdepth_jax import metrics as metrics_lib

EDGE_METRIC_NAMES = ("dbe_acc", "dbe_com")
SIGMA = float(np.sqrt(2.0))
LOW_THRESHOLD = 0.15
HIGH_THRESHOLD = 0.3
MAX_DISTANCE = 10.0  # pixels: truncation of the distances, and the worst score.
# Eigen crop at 480x640; it scales with the image size like the metrics' crops.
DEFAULT_CROP_PROTOCOL = "eigen"


def normalise(depth_HxW: np.ndarray, valid_HxW: np.ndarray | None = None) -> np.ndarray:
  """float32 depth mapped to [0, 1] by its min and max over the valid pixels.

  Invalid pixels become 0 (Canny ignores them through its mask); a constant
  map becomes all 0 (it has no edges).
  """
  depth = np.asarray(depth_HxW, np.float32)
  valid = np.ones(depth.shape, bool) if valid_HxW is None else valid_HxW
  if not valid.any():
    return np.zeros_like(depth)
  lo, hi = depth[valid].min(), depth[valid].max()
  if hi <= lo:
    return np.zeros_like(depth)
  # Subtract, then divide, in float32: iBims-1's order of operations.
  return np.where(valid, (depth - lo) / (hi - lo), np.float32(0.0)).astype(np.float32)


def depth_edges(depth_HxW: Any, valid_HxW: Any = None) -> np.ndarray:
  """Boolean edge map: Canny on the normalised depth (iBims-1's parameters)."""
  depth = np.asarray(depth_HxW)
  valid = None if valid_HxW is None else np.asarray(valid_HxW, bool)
  return feature.canny(normalise(depth, valid), sigma=SIGMA, low_threshold=LOW_THRESHOLD,
                       high_threshold=HIGH_THRESHOLD, mask=valid)


def boundary_errors(edges_gt_HxW: np.ndarray, edges_pred_HxW: np.ndarray
                    ) -> tuple[float, float] | None:
  """(dbe_acc, dbe_com) of two edge maps; None if there is no gt edge."""
  edges_gt = np.asarray(edges_gt_HxW, bool)
  edges_pred = np.asarray(edges_pred_HxW, bool)
  if not edges_gt.any():
    return None
  dist_to_gt = ndimage.distance_transform_edt(~edges_gt)
  near = edges_pred & (dist_to_gt < MAX_DISTANCE)
  if not near.any():
    return MAX_DISTANCE, MAX_DISTANCE
  accuracy = float(dist_to_gt[near].sum() / near.sum())
  dist_to_pred = ndimage.distance_transform_edt(~edges_pred)
  completeness = float(
      (np.minimum(dist_to_gt[edges_pred], MAX_DISTANCE).sum()
       + np.minimum(dist_to_pred[edges_gt], MAX_DISTANCE).sum())
      / (edges_pred.sum() + edges_gt.sum()))
  return accuracy, completeness


def depth_boundary_errors(gt_HxW: Any, pred_HxW: Any, valid_HxW: Any = None
                          ) -> tuple[float, float] | None:
  """(dbe_acc, dbe_com) of one image, gt edges from Canny on the gt; None if
  the gt has no edge. No crop here; valid: True = measured gt pixel."""
  gt = np.asarray(gt_HxW, np.float64)
  pred = np.asarray(pred_HxW, np.float64)
  if gt.shape != pred.shape or gt.ndim != 2:
    raise ValueError(f"gt and pred must be H x W of one shape, got {gt.shape} and "
                     f"{pred.shape}.")
  if not np.isfinite(pred).all():
    raise ValueError("the prediction has non-finite values; depth edges need a "
                     "finite prediction everywhere.")
  with np.errstate(invalid="ignore"):
    valid = np.isfinite(gt) & (gt > 0)
  if valid_HxW is not None:
    valid &= np.asarray(valid_HxW, bool)
  edges_gt = depth_edges(gt, valid)
  edges_pred = depth_edges(pred)
  if not valid.all():
    region = ndimage.binary_erosion(valid, np.ones((3, 3), bool), border_value=0)
    edges_pred &= region
  return boundary_errors(edges_gt, edges_pred)


class DepthBoundaryAccumulator:
  """dbe_acc and dbe_com averaged over images: `update` per batch, `result()`.

  Each image is cropped to the `crop_protocol`'s window (the Eigen crop by
  default: NYU's borders carry no depth) before edges are found. Images
  whose gt has no edge are skipped and counted.
  """

  def __init__(self, crop_protocol: str = DEFAULT_CROP_PROTOCOL):
    self.crop_protocol = metrics_lib.get_protocol(crop_protocol)
    self._sums = np.zeros(2, np.float64)
    self.num_images = 0          # images with a gt edge.
    self.num_images_skipped = 0  # images without one.

  def update(self, gt: Any, pred: Any, mask: Any = None) -> None:
    """Adds a batch: gt and pred in metres (H x W, B x H x W or B x H x W x 1),
    mask True where the gt is to be used."""
    gt_BxHxW = metrics_lib.as_batch(gt, "gt")
    pred_BxHxW = metrics_lib.as_batch(pred, "pred")
    mask_BxHxW = (np.ones(gt_BxHxW.shape, bool) if mask is None
                  else metrics_lib.as_batch(mask, "mask").astype(bool))
    if not gt_BxHxW.shape == pred_BxHxW.shape == mask_BxHxW.shape:
      raise ValueError(f"gt, pred and mask shapes differ: {gt_BxHxW.shape}, "
                       f"{pred_BxHxW.shape}, {mask_BxHxW.shape}.")
    r0, r1, c0, c1 = metrics_lib.crop_window(*gt_BxHxW.shape[1:], self.crop_protocol)
    for gt_i, pred_i, mask_i in zip(gt_BxHxW, pred_BxHxW, mask_BxHxW):
      errors = depth_boundary_errors(gt_i[r0:r1, c0:c1], pred_i[r0:r1, c0:c1],
                                     mask_i[r0:r1, c0:c1])
      if errors is None:
        self.num_images_skipped += 1
        continue
      self._sums += errors
      self.num_images += 1

  def result(self) -> dict[str, float]:
    """{"dbe_acc", "dbe_com"} (pixels), means over the images with gt edges."""
    if self.num_images == 0:
      raise ValueError("no depth-boundary errors: no image's ground truth has an "
                       "edge inside the crop.")
    acc, com = self._sums / self.num_images
    return {"dbe_acc": float(acc), "dbe_com": float(com)}
