"""Evaluation metrics (percdepth_jax.metrics) against NumPy written here."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from percdepth_jax import metrics

NAMES = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10")


def _errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
  """DenseDepth's / BTS's compute_errors on 1-D arrays of evaluated pixels."""
  thresh = np.maximum(gt / pred, pred / gt)
  return {
      "d1": np.mean(thresh < 1.25), "d2": np.mean(thresh < 1.25 ** 2),
      "d3": np.mean(thresh < 1.25 ** 3),
      "abs_rel": np.mean(np.abs(gt - pred) / gt),
      "sq_rel": np.mean((gt - pred) ** 2 / gt),
      "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
      "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
      "log10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
  }


def _reference(gt_BxHxW, pred_BxHxW, mask_BxHxW, protocol):
  """The two protocols at 480x640 with the crops written out by hand."""
  if protocol == "densedepth":
    crop = (slice(20, 460), slice(24, 616))
    pred = np.clip(pred_BxHxW, 0.1, 10.0)
    with np.errstate(invalid="ignore"):
      valid = mask_BxHxW & np.isfinite(gt_BxHxW) & (gt_BxHxW > 0)
    keep = valid[(slice(None),) + crop]
    return _errors(gt_BxHxW[(slice(None),) + crop][keep], pred[(slice(None),) + crop][keep])
  crop = (slice(45, 471), slice(41, 601))
  per_image = []
  for gt_i, pred_i, mask_i in zip(gt_BxHxW, np.clip(pred_BxHxW, 1e-3, 10.0), mask_BxHxW):
    with np.errstate(invalid="ignore"):
      valid = mask_i & (gt_i > 1e-3) & (gt_i < 10.0)
    valid = valid[crop]
    if valid.any():
      per_image.append(_errors(gt_i[crop][valid], pred_i[crop][valid]))
  return {k: np.mean([m[k] for m in per_image]) for k in NAMES}


def _nyu_like(seed: int, batch: int = 3, height: int = 480, width: int = 640):
  """gt in metres with holes (0 and NaN), values beyond 10 m, and a
  prediction with ~15% multiplicative error, some of it outside [0.1, 10]."""
  rng = np.random.RandomState(seed)
  y = np.linspace(0.0, 1.0, height)[:, None]
  gt = 1.0 + 9.5 * y * np.ones((1, width)) + rng.rand(batch, height, width) * 2.0
  r = lambda v: v * height // 480  # positions given at 480x640
  c = lambda v: v * width // 640
  gt[:, r(100):r(140), c(200):c(300)] = 0.0  # sensor hole
  gt[:, r(300):r(310), :] = np.nan           # invalid rows
  gt[:, :, c(600):] = 0.05 + 0.02 * rng.rand(batch, height, width - c(600))  # very near
  pred = gt * np.exp(0.15 * rng.randn(batch, height, width))
  pred = np.nan_to_num(pred, nan=3.0)
  pred[:, r(200):r(210), c(100):c(200)] = 0.01  # clipped up
  mask = rng.rand(batch, height, width) > 0.05
  return gt, pred, mask


@pytest.mark.parametrize("protocol", ["densedepth", "eigen"])
def test_metrics_match_numpy_reference(protocol):
  """All eight metrics equal NumPy written here (hand-written crops, clipping,
  validity; pooled for densedepth, per-image mean for eigen) on 480x640
  images with holes (0 and NaN), gt beyond 10 m, a user mask, and
  predictions outside the clip range, to 1e-12 relative."""
  gt, pred, mask = _nyu_like(1)
  actual = metrics.depth_metrics(gt, pred, protocol=protocol, mask=mask)
  expected = _reference(gt, pred, mask, protocol)
  assert sorted(actual) == sorted(NAMES)
  for k in NAMES:
    np.testing.assert_allclose(actual[k], expected[k], rtol=1e-12, err_msg=k)
  assert 0.3 < actual["d1"] < 0.99  # neither trivial nor broken


def test_protocols_differ_on_the_same_data():
  """Pooled vs per-image averaging, the crops and the validity rules give
  different numbers for the same predictions (the reason result files name
  their protocol)."""
  gt, pred, mask = _nyu_like(2)
  dd = metrics.depth_metrics(gt, pred, protocol="densedepth", mask=mask)
  eigen = metrics.depth_metrics(gt, pred, protocol="eigen", mask=mask)
  assert all(abs(dd[k] - eigen[k]) > 1e-6 for k in ("abs_rel", "rmse", "d1"))


@pytest.mark.parametrize("protocol", ["densedepth", "eigen"])
def test_constant_ratio_closed_form_and_argument_order(protocol):
  """pred = 1.2 gt: d1 = d2 = d3 = 1, abs_rel = 0.2, rmse_log = ln 1.2,
  log10 = log10 1.2, sq_rel = 0.04 mean(gt), rmse = 0.2 sqrt(mean gt^2)
  (pooled). Swapping the arguments gives abs_rel = 0.2 / 1.2 = 1/6: gt comes
  first."""
  rng = np.random.RandomState(3)
  gt = 0.5 + 7.0 * rng.rand(2, 480, 640)  # 1.2 gt stays below 10 m
  out = metrics.depth_metrics(gt, 1.2 * gt, protocol=protocol)
  assert out["d1"] == out["d2"] == out["d3"] == 1.0
  np.testing.assert_allclose(out["abs_rel"], 0.2, rtol=1e-12)
  np.testing.assert_allclose(out["rmse_log"], np.log(1.2), rtol=1e-12)
  np.testing.assert_allclose(out["log10"], np.log10(1.2), rtol=1e-12)
  if protocol == "densedepth":
    inner = gt[:, 20:460, 24:616]
    np.testing.assert_allclose(out["sq_rel"], 0.04 * inner.mean(), rtol=1e-10)
    np.testing.assert_allclose(out["rmse"], 0.2 * np.sqrt(np.mean(inner ** 2)), rtol=1e-10)
  swapped = metrics.depth_metrics(1.2 * gt, gt, protocol=protocol)
  np.testing.assert_allclose(swapped["abs_rel"], 1.0 / 6.0, rtol=1e-12)
  assert swapped["d1"] == 1.0


@pytest.mark.parametrize("protocol", ["densedepth", "eigen"])
def test_streaming_equals_one_call_bit_for_bit(protocol):
  """Updating batch by batch (uneven splits, one image without any valid
  pixel, 2-D / 3-D / 4-D inputs) gives exactly the numbers of one call on the
  whole set, and the accumulator's state does not grow with the data."""
  gt, pred, mask = _nyu_like(4, batch=5, height=240, width=320)
  mask[2] = False  # an image with nothing to evaluate
  whole = metrics.depth_metrics(gt, pred, protocol=protocol, mask=mask)
  acc = metrics.DepthMetricsAccumulator(protocol)
  state_size = sum(np.asarray(v).nbytes for v in vars(acc).values() if isinstance(v, np.ndarray))
  acc.update(gt[0], pred[0], mask[0])                                  # H x W
  acc.update(gt[1:4], pred[1:4], mask[1:4])                            # B x H x W
  acc.update(gt[4:, ..., None], pred[4:, ..., None], mask[4:, ..., None])  # B x H x W x 1
  assert acc.result() == whole
  assert acc.num_images == 4 and acc.num_images_skipped == 1
  assert sum(np.asarray(v).nbytes for v in vars(acc).values()
             if isinstance(v, np.ndarray)) == state_size


def test_crop_window_scales_proportionally():
  """480x640 gives the published crops; other sizes scale each bound by
  size / reference and round half up (240x320: 22.5 -> 23)."""
  assert metrics.crop_window(480, 640, "densedepth") == (20, 460, 24, 616)
  assert metrics.crop_window(480, 640, "eigen") == (45, 471, 41, 601)
  assert metrics.crop_window(240, 320, "densedepth") == (10, 230, 12, 308)
  assert metrics.crop_window(240, 320, "eigen") == (23, 236, 21, 301)
  assert metrics.crop_window(960, 1280, "eigen") == (90, 942, 82, 1202)


def test_scaled_crop_is_used_at_other_sizes():
  """At 240x320 the densedepth metrics equal NumPy's on rows 10:230, cols 12:308."""
  gt, pred, _ = _nyu_like(5, batch=2, height=240, width=320)
  gt = np.nan_to_num(gt, nan=0.0)
  actual = metrics.depth_metrics(gt, pred, protocol="densedepth")
  inner_gt, inner_pred = gt[:, 10:230, 12:308], np.clip(pred[:, 10:230, 12:308], 0.1, 10.0)
  keep = inner_gt > 0
  expected = _errors(inner_gt[keep], inner_pred[keep])
  for k in NAMES:
    np.testing.assert_allclose(actual[k], expected[k], rtol=1e-12, err_msg=k)


def test_jax_numpy_core_matches_float64():
  """per_image_sums runs unchanged on jax.numpy (float32) and agrees with the
  float64 NumPy sums to 1e-5 relative."""
  gt, pred, mask = metrics.prepare(*_nyu_like(6, batch=2, height=96, width=128),
                                   protocol="eigen")
  expected = metrics.per_image_sums(gt, pred, mask)
  actual = metrics.per_image_sums(jnp.asarray(gt, jnp.float32), jnp.asarray(pred, jnp.float32),
                                  jnp.asarray(mask), xp=jnp)
  np.testing.assert_allclose(np.asarray(actual), expected, rtol=1e-5)


def test_bad_inputs_are_errors():
  """Mismatched shapes, unknown protocols, non-finite predictions at
  evaluated pixels and a set without any evaluated pixel raise ValueError
  instead of returning NaN."""
  gt = np.full((1, 48, 64), 2.0)
  with pytest.raises(ValueError, match="shapes differ"):
    metrics.depth_metrics(gt, gt[:, :40])
  with pytest.raises(ValueError, match="unknown evaluation protocol"):
    metrics.depth_metrics(gt, gt, protocol="kitti")
  bad = gt.copy()
  bad[0, 20, 30] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    metrics.depth_metrics(gt, bad)
  with pytest.raises(ValueError, match="no evaluated pixels"):
    metrics.depth_metrics(np.zeros_like(gt), gt)
