"""Depth evaluation metrics under the published NYU protocols.

Argument order: ground truth first, prediction second, both depth in metres:
`depth_metrics(gt, pred)`. (The losses take the prediction first.) With
pred = 1.2 * gt, abs_rel = 0.2; with the arguments swapped it is 1/6.

Metrics, over the evaluated pixels (t = max(gt / pred, pred / gt),
e = ln pred - ln gt):
  d1, d2, d3  fraction with t < 1.25, 1.25^2, 1.25^3
  abs_rel     mean |gt - pred| / gt
  sq_rel      mean (gt - pred)^2 / gt
  rmse        sqrt(mean (gt - pred)^2)
  rmse_log    sqrt(mean (ln gt - ln pred)^2)
  log10       mean |log10 gt - log10 pred|
  silog       100 * sqrt(mean(e^2) - mean(e)^2) (BTS's scale-invariant log
              error; the variance is clamped at 0 against rounding)

Protocols (crops given for 480x640 as [row_start:row_stop, col_start:col_stop]):
  densedepth           predictions clipped to [0.1, 10] m; crop 20:460 x
                       24:616; errors pooled over all pixels of all images
                       (DenseDepth's evaluation code, with the metrics'
                       textbook argument order).
  densedepth_official  densedepth as DenseDepth's `evaluate()` computes it:
                       it calls `compute_errors(predictions, gt)` against a
                       `(gt, pred)` signature, so abs_rel is
                       mean |gt - pred| / pred. sq_rel (which DenseDepth does
                       not compute) follows the same order: mean (gt - pred)^2
                       / pred. d1-d3, rmse, rmse_log, log10 and silog are
                       symmetric in the two arguments and equal densedepth's.
  eigen                predictions clipped to [1e-3, 10] m, pixels with
                       1e-3 < gt < 10 m; crop 45:471 x 41:601; metrics per
                       image, then the mean over images (BTS and most later
                       work).
  big_vision           the UViM/GIVT evaluators: image and gt cropped to
                       54:480 x 41:601 (426 x 560) *before* prediction, the
                       prediction resized nearest-neighbour to the gt crop,
                       pixels with 1e-3 < gt < 10 m, no prediction clipping,
                       metrics per image then the mean over images.
  full_frame           eigen's ranges on the whole frame: no crop, every
                       pixel with 1e-3 < gt < 10 m, predictions clipped to
                       [1e-3, 10] m, metrics per image then the mean (what a
                       user of the depth maps sees, borders included).
Per-image protocols skip images without an evaluated pixel (and count them
in `num_images_skipped`). In all, pixels whose gt is <= 0 or not finite (no
measurement) and pixels where the optional `mask` is False are never
evaluated. A non-finite prediction at an evaluated pixel is an error, not
silently replaced; so is a prediction <= 0 where nothing clips it.

Other image sizes: each crop bound b (defined at 480 rows or 640 columns)
scales to floor(b * size / reference + 1/2), computed in integers; e.g. at
240x320 densedepth is 10:230 x 12:308 and eigen 23:236 x 21:301 (45/2 = 22.5
rounds up). See `crop_window`.

Streaming: `DepthMetricsAccumulator.update` reduces each image to ten
float64 sums (`per_image_sums`) and adds them, image by image, to running
totals, so memory is constant and any split of a data set into batches gives
bit-for-bit the numbers of one `depth_metrics` call on the whole set. Pooled
silog comes from the sums of e and e^2 over all pixels.
"""

from __future__ import annotations

import dataclasses
from types import ModuleType
from typing import Any

import numpy as np

METRIC_NAMES = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10",
                "silog")
# Columns of `per_image_sums`.
SUM_NAMES = ("count", "d1", "d2", "d3", "abs_rel", "sq_rel", "sq_err", "sq_log_err",
             "abs_log10_err", "log_err")
_REFERENCE_HW = (480, 640)


@dataclasses.dataclass(frozen=True)
class Protocol:
  name: str
  crop: tuple[int, int, int, int]  # rows [start, stop), cols [start, stop) at 480x640.
  pred_range: tuple[float, float] | None  # predictions clipped to it; None: not clipped.
  gt_range: tuple[float, float]    # evaluated where lo < gt < hi.
  per_image: bool                  # False: pool all pixels of all images.
  rel_by_pred: bool = False        # abs_rel and sq_rel divide by pred, not gt.
  # The image is cropped before prediction and the prediction resized
  # nearest-neighbour to the gt crop.
  crop_before_prediction: bool = False


PROTOCOLS = {
    "densedepth": Protocol("densedepth", (20, 460, 24, 616), (0.1, 10.0),
                           (0.0, np.inf), per_image=False),
    "densedepth_official": Protocol("densedepth_official", (20, 460, 24, 616),
                                    (0.1, 10.0), (0.0, np.inf), per_image=False,
                                    rel_by_pred=True),
    "eigen": Protocol("eigen", (45, 471, 41, 601), (1e-3, 10.0), (1e-3, 10.0),
                      per_image=True),
    "big_vision": Protocol("big_vision", (54, 480, 41, 601), None, (1e-3, 10.0),
                           per_image=True, crop_before_prediction=True),
    "full_frame": Protocol("full_frame", (0, 480, 0, 640), (1e-3, 10.0), (1e-3, 10.0),
                           per_image=True),
}


def get_protocol(protocol: str | Protocol) -> Protocol:
  if isinstance(protocol, Protocol):
    return protocol
  if protocol not in PROTOCOLS:
    raise ValueError(f"unknown evaluation protocol {protocol!r}; choose one of "
                     f"{sorted(PROTOCOLS)}.")
  return PROTOCOLS[protocol]


def crop_window(height: int, width: int,
                protocol: str | Protocol) -> tuple[int, int, int, int]:
  """The protocol's crop (row_start, row_stop, col_start, col_stop) at H x W.

  Bounds scale proportionally from 480x640 and round half up:
  floor(b * size / reference + 1/2), in exact integer arithmetic.
  """
  r0, r1, c0, c1 = get_protocol(protocol).crop
  ref_h, ref_w = _REFERENCE_HW

  def scale(b: int, size: int, ref: int) -> int:
    return (2 * b * size + ref) // (2 * ref)

  return (scale(r0, height, ref_h), scale(r1, height, ref_h),
          scale(c0, width, ref_w), scale(c1, width, ref_w))


def resize_nearest(x_BxHxW: np.ndarray, height: int, width: int) -> np.ndarray:
  """`jax.image.resize(x, (B, height, width), "nearest")` in NumPy.

  Same source index per output pixel, floor((i + 0.5) * in / out) computed in
  float32 as JAX does, so the values are copied exactly (float64 stays
  float64).
  """
  def indices(n_in: int, n_out: int) -> np.ndarray:
    pos = (np.arange(n_out, dtype=np.float32) + np.float32(0.5)) * np.float32(n_in)
    return np.floor(pos / np.float32(n_out)).astype(np.int64)

  _, h, w = x_BxHxW.shape
  if h != height:
    x_BxHxW = x_BxHxW[:, indices(h, height)]
  if w != width:
    x_BxHxW = x_BxHxW[:, :, indices(w, width)]
  return x_BxHxW


def per_image_sums(gt_BxHxW: Any, pred_BxHxW: Any, valid_BxHxW: Any,
                   xp: ModuleType = np, rel_by_pred: bool = False) -> Any:
  """Per-image sums `sums_Bx10` (columns SUM_NAMES) over the valid pixels.

  Pure array code: `xp` may be numpy (float64 on the host, what
  `DepthMetricsAccumulator` uses) or jax.numpy (e.g. inside a jitted eval
  step; its float32 sums can be fed to `DepthMetricsAccumulator.update_sums`).
  Inputs are already cropped and clipped; pred must be > 0 where valid.
  rel_by_pred: the abs_rel and sq_rel columns divide by pred instead of gt.
  """
  # Neutral values at invalid pixels keep logs and divisions finite.
  gt = xp.where(valid_BxHxW, gt_BxHxW, 1.0)
  pred = xp.where(valid_BxHxW, pred_BxHxW, 1.0)
  thresh = xp.maximum(gt / pred, pred / gt)
  err = gt - pred
  log_err = xp.log(pred) - xp.log(gt)
  rel_denominator = pred if rel_by_pred else gt
  terms = (
      xp.ones_like(gt),
      thresh < 1.25,
      thresh < 1.25 ** 2,
      thresh < 1.25 ** 3,
      xp.abs(err) / rel_denominator,
      err * err / rel_denominator,
      err * err,
      log_err * log_err,
      xp.abs(xp.log10(gt) - xp.log10(pred)),
      log_err,
  )
  return xp.stack(
      [xp.sum(xp.where(valid_BxHxW, t, 0.0), axis=(1, 2)) for t in terms], axis=-1)


def metrics_from_sums(sums: np.ndarray) -> dict[str, float]:
  """Metric values from the sums of one image or of a pooled set."""
  s = dict(zip(SUM_NAMES, np.asarray(sums, np.float64)))
  n = s["count"]
  mean_log_err = s["log_err"] / n
  log_variance = max(s["sq_log_err"] / n - mean_log_err * mean_log_err, 0.0)
  return {
      "d1": s["d1"] / n, "d2": s["d2"] / n, "d3": s["d3"] / n,
      "abs_rel": s["abs_rel"] / n, "sq_rel": s["sq_rel"] / n,
      "rmse": float(np.sqrt(s["sq_err"] / n)),
      "rmse_log": float(np.sqrt(s["sq_log_err"] / n)),
      "log10": s["abs_log10_err"] / n,
      "silog": 100.0 * float(np.sqrt(log_variance)),
  }


def as_batch(x: Any, name: str) -> np.ndarray:
  """x as B x H x W (from H x W, B x H x W or B x H x W x 1); `name` for errors."""
  x = np.asarray(x)
  if x.ndim == 4 and x.shape[-1] == 1:
    x = x[..., 0]
  elif x.ndim == 2:
    x = x[None]
  if x.ndim != 3:
    raise ValueError(f"{name} must be H x W, B x H x W or B x H x W x 1 depth, "
                     f"got shape {x.shape}.")
  return x


def prepare(gt: Any, pred: Any, mask: Any = None, *,
            protocol: str | Protocol = "densedepth", cropped: bool = False
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Crop, clip and validity of a batch: (gt_Bxhxw, pred_Bxhxw, valid_Bxhxw), float64.

  cropped: gt (and mask) are already the protocol's crop (as the evaluation
  pipeline passes them for protocols that crop before prediction), so no
  crop is taken here. Protocols that crop before prediction resize a pred of
  another size nearest-neighbour to the gt; the others require equal shapes.
  """
  proto = get_protocol(protocol)
  gt_BxHxW = as_batch(gt, "gt").astype(np.float64)
  pred_BxHxW = as_batch(pred, "pred").astype(np.float64)
  if pred_BxHxW.shape != gt_BxHxW.shape:
    if not proto.crop_before_prediction or pred_BxHxW.shape[0] != gt_BxHxW.shape[0]:
      raise ValueError(f"gt and pred shapes differ: {gt_BxHxW.shape} vs "
                       f"{pred_BxHxW.shape} (resize the prediction to the gt first).")
    pred_BxHxW = resize_nearest(pred_BxHxW, *gt_BxHxW.shape[1:])
  valid = np.ones(gt_BxHxW.shape, bool)
  if mask is not None:
    valid = as_batch(mask, "mask").astype(bool)
    if valid.shape != gt_BxHxW.shape:
      raise ValueError(f"mask shape {valid.shape} differs from gt's {gt_BxHxW.shape}.")
  if not cropped:
    r0, r1, c0, c1 = crop_window(*gt_BxHxW.shape[1:], proto)
    gt_BxHxW, pred_BxHxW, valid = (a[:, r0:r1, c0:c1]
                                   for a in (gt_BxHxW, pred_BxHxW, valid))
  lo, hi = proto.gt_range
  with np.errstate(invalid="ignore"):  # NaN gt compares False: not evaluated.
    valid = valid & np.isfinite(gt_BxHxW) & (gt_BxHxW > lo) & (gt_BxHxW < hi)
  bad = valid & ~np.isfinite(pred_BxHxW)
  if bad.any():
    raise ValueError(f"the prediction has {int(bad.sum())} non-finite values "
                     "at evaluated pixels.")
  if proto.pred_range is not None:
    return gt_BxHxW, np.clip(pred_BxHxW, *proto.pred_range), valid
  bad = valid & (pred_BxHxW <= 0)
  if bad.any():
    raise ValueError(f"the prediction has {int(bad.sum())} values <= 0 at evaluated "
                     f"pixels, which the {proto.name} protocol does not clip.")
  return gt_BxHxW, pred_BxHxW, valid


class DepthMetricsAccumulator:
  """Streaming evaluation: `update` per batch, `result()` at the end.

  Keeps ten float64 running sums (pooled pixels) and the running sum of
  per-image metrics (for per-image protocols), never pixels.
  """

  def __init__(self, protocol: str | Protocol = "densedepth"):
    self.protocol = get_protocol(protocol)
    self._pixel_sums = np.zeros(len(SUM_NAMES), np.float64)
    self._image_metric_sums = np.zeros(len(METRIC_NAMES), np.float64)
    self.num_images = 0          # images with at least one evaluated pixel.
    self.num_images_skipped = 0  # images without one.

  @property
  def num_pixels(self) -> int:
    return int(self._pixel_sums[0])

  def update(self, gt: Any, pred: Any, mask: Any = None, *, cropped: bool = False
             ) -> None:
    """Adds a batch: gt and pred in metres (H x W, B x H x W or B x H x W x 1).

    cropped: gt and mask are already the protocol's crop (see `prepare`).
    """
    gt_c, pred_c, valid = prepare(gt, pred, mask, protocol=self.protocol,
                                  cropped=cropped)
    self.update_sums(per_image_sums(gt_c, pred_c, valid,
                                    rel_by_pred=self.protocol.rel_by_pred))

  def update_sums(self, sums_Bx10: Any) -> None:
    """Adds precomputed `per_image_sums` (already cropped, clipped, validated)."""
    # One image at a time in a fixed order: the totals do not depend on how
    # the data set was split into batches.
    for sums in np.asarray(sums_Bx10, np.float64):
      if sums[0] == 0:
        self.num_images_skipped += 1
        continue
      self._pixel_sums += sums
      self._image_metric_sums += np.array(list(metrics_from_sums(sums).values()))
      self.num_images += 1

  def result(self) -> dict[str, float]:
    """{metric name: value} for everything added so far."""
    if self.num_images == 0:
      raise ValueError("no evaluated pixels: every image was empty after the "
                       f"{self.protocol.name} protocol's crop and validity rules.")
    if self.protocol.per_image:
      values = self._image_metric_sums / self.num_images
      return {k: float(v) for k, v in zip(METRIC_NAMES, values)}
    return {k: float(v) for k, v in metrics_from_sums(self._pixel_sums).items()}


def depth_metrics(gt: Any, pred: Any, protocol: str | Protocol = "densedepth",
                  mask: Any = None, *, cropped: bool = False) -> dict[str, float]:
  """Metrics of one batch or a whole set (gt first, then pred; metres).

  gt, pred: H x W, B x H x W or B x H x W x 1. mask: same shape as gt, True =
  evaluate (combined with the protocol's crop and validity rules). cropped:
  gt and mask are already the protocol's crop (see `prepare`).
  """
  acc = DepthMetricsAccumulator(protocol)
  acc.update(gt, pred, mask, cropped=cropped)
  return acc.result()
