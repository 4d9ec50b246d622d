"""Evaluation metrics (percdepth_jax.metrics) against NumPy written here."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percdepth_jax import metrics

NAMES = ("d1", "d2", "d3", "abs_rel", "sq_rel", "rmse", "rmse_log", "log10", "silog")


def _errors(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
  """BTS's compute_errors (silog included) on 1-D arrays of evaluated pixels."""
  thresh = np.maximum(gt / pred, pred / gt)
  err = np.log(pred) - np.log(gt)
  return {
      "d1": np.mean(thresh < 1.25), "d2": np.mean(thresh < 1.25 ** 2),
      "d3": np.mean(thresh < 1.25 ** 3),
      "abs_rel": np.mean(np.abs(gt - pred) / gt),
      "sq_rel": np.mean((gt - pred) ** 2 / gt),
      "rmse": np.sqrt(np.mean((gt - pred) ** 2)),
      "rmse_log": np.sqrt(np.mean((np.log(gt) - np.log(pred)) ** 2)),
      "log10": np.mean(np.abs(np.log10(gt) - np.log10(pred))),
      "silog": np.sqrt(np.mean(err ** 2) - np.mean(err) ** 2) * 100,
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
  """All nine metrics equal NumPy written here (hand-written crops, clipping,
  validity; pooled for densedepth, per-image mean for eigen) on 480x640
  images with holes (0 and NaN), gt beyond 10 m, a user mask, and
  predictions outside the clip range, to 1e-10 relative (silog's pooled
  variance comes from running sums of e and e^2)."""
  gt, pred, mask = _nyu_like(1)
  actual = metrics.depth_metrics(gt, pred, protocol=protocol, mask=mask)
  expected = _reference(gt, pred, mask, protocol)
  assert sorted(actual) == sorted(NAMES)
  for k in NAMES:
    np.testing.assert_allclose(actual[k], expected[k], rtol=1e-10, err_msg=k)
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
  log10 = log10 1.2, silog = 0 (a pure scale error), sq_rel = 0.04 mean(gt),
  rmse = 0.2 sqrt(mean gt^2) (pooled). Swapping the arguments gives abs_rel = 0.2 / 1.2 = 1/6: gt comes
  first."""
  rng = np.random.RandomState(3)
  gt = 0.5 + 7.0 * rng.rand(2, 480, 640)  # 1.2 gt stays below 10 m
  out = metrics.depth_metrics(gt, 1.2 * gt, protocol=protocol)
  assert out["d1"] == out["d2"] == out["d3"] == 1.0
  np.testing.assert_allclose(out["abs_rel"], 0.2, rtol=1e-12)
  np.testing.assert_allclose(out["rmse_log"], np.log(1.2), rtol=1e-12)
  np.testing.assert_allclose(out["log10"], np.log10(1.2), rtol=1e-12)
  assert 0.0 <= out["silog"] < 1e-5
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
  assert metrics.crop_window(480, 640, "densedepth_official") == (20, 460, 24, 616)
  assert metrics.crop_window(480, 640, "big_vision") == (54, 480, 41, 601)
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
    np.testing.assert_allclose(actual[k], expected[k], rtol=1e-10, err_msg=k)


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
  evaluated pixels, predictions <= 0 where nothing clips them (big_vision)
  and a set without any evaluated pixel raise ValueError instead of
  returning NaN."""
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
  with pytest.raises(ValueError, match="values <= 0"):
    metrics.depth_metrics(gt, np.zeros_like(gt), protocol="big_vision")
  with pytest.raises(ValueError, match="shapes differ"):  # only big_vision resizes
    metrics.depth_metrics(gt, gt[:, :40], protocol="eigen")


# Peers' evaluation code, restated in plain NumPy from their definitions.

def _densedepth_compute_errors(gt, pred):
  """DenseDepth's utils.compute_errors(gt, pred): a1, a2, a3, abs_rel, rmse, log_10."""
  thresh = np.maximum((gt / pred), (pred / gt))
  a1 = (thresh < 1.25).mean()
  a2 = (thresh < 1.25 ** 2).mean()
  a3 = (thresh < 1.25 ** 3).mean()
  abs_rel = np.mean(np.abs(gt - pred) / gt)
  rmse = (gt - pred) ** 2
  rmse = np.sqrt(rmse.mean())
  log_10 = (np.abs(np.log10(gt) - np.log10(pred))).mean()
  return a1, a2, a3, abs_rel, rmse, log_10


def _densedepth_evaluate(predictions_NxHxW, depth_NxHxW, crop=(20, 459, 24, 615)):
  """DenseDepth's utils.evaluate() from the predictions on: its predict()
  clips DepthNorm output to [10, 1000] / 1000 * 10 m = [0.1, 10] m, the
  eigen_test_crop.npy bounds are inclusive (crop[1] + 1), and it calls
  compute_errors(predictions, testSetDepths): the prediction in gt's place."""
  depth_norm = 1000.0 / (predictions_NxHxW * 100.0)  # metres -> DenseDepth's output
  predictions = np.clip(1000.0 / depth_norm, 10, 1000) / 1000 * 10.0
  true_y = depth_NxHxW[:, crop[0]:crop[1] + 1, crop[2]:crop[3] + 1]
  pred_y = predictions[:, crop[0]:crop[1] + 1, crop[2]:crop[3] + 1]
  e = _densedepth_compute_errors(pred_y, true_y)
  return dict(zip(("d1", "d2", "d3", "abs_rel", "rmse", "log10"), e))


def _bts_eval(gt_NxHxW, pred_NxHxW, min_depth=1e-3, max_depth=10.0, crop=(45, 471, 41, 601)):
  """BTS's NYU evaluation (bts_eval.py): clip the prediction, 1e-3 < gt < 10,
  Eigen crop eval_mask[45:471, 41:601] (crop=None: the whole frame),
  compute_errors per image, then the mean of each metric."""
  per_image = []
  for gt_depth, pred_depth in zip(gt_NxHxW, pred_NxHxW):
    pred_depth = pred_depth.copy()
    pred_depth[pred_depth < min_depth] = min_depth
    pred_depth[pred_depth > max_depth] = max_depth
    pred_depth[np.isinf(pred_depth)] = max_depth
    pred_depth[np.isnan(pred_depth)] = min_depth
    with np.errstate(invalid="ignore"):
      valid_mask = np.logical_and(gt_depth > min_depth, gt_depth < max_depth)
    if crop is not None:
      eval_mask = np.zeros(valid_mask.shape)
      eval_mask[crop[0]:crop[1], crop[2]:crop[3]] = 1
      valid_mask = np.logical_and(valid_mask, eval_mask)
    per_image.append(_errors(gt_depth[valid_mask], pred_depth[valid_mask]))
  return {k: np.mean([m[k] for m in per_image]) for k in NAMES}


def _big_vision_eval(gt_full_NxHxW, pred_of_crop_NxPxQ, min_depth=1e-3, max_depth=10.0):
  """big_vision's NYU evaluator (proj/uvim and proj/givt nyu_depth.py): the
  pp op nyu_eval_crop slices rows 54:480, cols 41:601 (426 x 560) of image
  and labels; each prediction is resized with jax.image.resize(...,
  "nearest") to the gt; 1e-3 < gt < 10; per-image RMSE, abs_RE, log10,
  delta1-3 (no clipping), then the mean of each."""
  gt_crop = gt_full_NxHxW[:, 54:54 + 426, 41:41 + 560]
  out = {k: [] for k in ("rmse", "abs_rel", "log10", "d1", "d2", "d3")}
  for gt, pred in zip(gt_crop, pred_of_crop_NxPxQ):
    pred = np.asarray(jax.image.resize(jnp.asarray(pred, jnp.float32),
                                       (gt.shape[0], gt.shape[1]), "nearest"))
    with np.errstate(invalid="ignore"):
      valid_mask = np.logical_and(gt > min_depth, gt < max_depth)
    g, p = gt[valid_mask], pred[valid_mask]
    out["rmse"].append(np.sqrt(np.mean(np.power(g - p, 2))))
    out["abs_rel"].append(np.mean(np.abs(g - p) / g))
    out["log10"].append(np.mean(np.abs(np.log10(g) - np.log10(p))))
    rel_diff = np.maximum(g / p, p / g)
    for order in (1, 2, 3):
      out[f"d{order}"].append(np.sum(rel_diff < 1.25 ** order) / rel_diff.size)
  return {k: float(np.mean(v)) for k, v in out.items()}


def _scenes(kind: str, seed: int, batch: int = 3):
  """480x640 gt and prediction. "random": i.i.d. depth in [0.05, 12] m;
  "structured": a floor-to-far-wall gradient with boxes in front, values
  beyond 10 m and a per-image scale error. Predictions carry lognormal
  noise and some values below 0.1 m and above 10 m (so clipping matters);
  all positive and finite. No holes: DenseDepth's code has no validity mask."""
  rng = np.random.RandomState(seed)
  if kind == "random":
    gt = rng.uniform(0.05, 12.0, (batch, 480, 640))
  else:
    y = np.linspace(0.0, 1.0, 480)[:, None]
    gt = np.broadcast_to(1.5 + 10.0 * (1 - y) ** 2 * np.ones((1, 640)), (batch, 480, 640)).copy()
    for i in range(batch):
      for _ in range(4):
        r, c = rng.randint(0, 400), rng.randint(0, 560)
        gt[i, r:r + 80, c:c + 80] = rng.uniform(0.5, 4.0)
  scale = rng.uniform(0.8, 1.25, (batch, 1, 1))
  pred = gt * scale * np.exp(0.2 * rng.randn(*gt.shape))
  pred[:, 100:120, 300:400] = 0.02  # below densedepth's 0.1 m floor
  pred[:, 130:140, 300:400] = 5e-4  # below eigen's 1e-3 m floor
  pred[:, 200:220, 50:150] = 14.0   # beyond 10 m
  return gt, pred


@pytest.mark.parametrize("kind,seed", [("random", 11), ("structured", 12)])
def test_densedepth_official_equals_densedepth_evaluate(kind, seed):
  """densedepth_official's d1-d3, abs_rel, rmse and log10 equal DenseDepth's
  evaluate() (compute_errors(predictions, gt), inclusive Eigen crop, [0.1,
  10] m clip) to 1e-10; its abs_rel is not the gt-normalised one, and all
  nine metrics equal BTS's compute_errors called in DenseDepth's argument
  order on the pooled pixels (so sq_rel divides by the prediction too)."""
  gt, pred = _scenes(kind, seed)
  actual = metrics.depth_metrics(gt, pred, protocol="densedepth_official")
  expected = _densedepth_evaluate(pred, gt)
  for k, v in expected.items():
    np.testing.assert_allclose(actual[k], v, rtol=1e-10, err_msg=k)
  swapped = _errors(np.clip(pred, 0.1, 10.0)[:, 20:460, 24:616].ravel(),
                    gt[:, 20:460, 24:616].ravel())
  for k in NAMES:
    np.testing.assert_allclose(actual[k], swapped[k], rtol=1e-9, err_msg=k)
  textbook = metrics.depth_metrics(gt, pred, protocol="densedepth")
  assert abs(textbook["abs_rel"] - actual["abs_rel"]) > 1e-3
  for k in ("d1", "d2", "d3", "rmse", "rmse_log", "log10", "silog"):
    np.testing.assert_allclose(textbook[k], actual[k], rtol=1e-9, err_msg=k)


@pytest.mark.parametrize("kind,seed", [("random", 13), ("structured", 14)])
def test_eigen_equals_bts_eval_with_silog(kind, seed):
  """eigen's nine metrics, silog included, equal BTS's evaluation (clip
  [1e-3, 10], 1e-3 < gt < 10, Eigen crop, per-image compute_errors averaged)
  to 1e-10; gt has holes (0 and NaN) here."""
  gt, pred = _scenes(kind, seed)
  gt[:, 250:260, :] = 0.0
  gt[:, 300:305, 100:200] = np.nan
  actual = metrics.depth_metrics(gt, pred, protocol="eigen")
  expected = _bts_eval(gt, pred)
  for k in NAMES:
    np.testing.assert_allclose(actual[k], expected[k], rtol=1e-10, err_msg=k)


def test_full_frame_is_bts_eval_without_the_crop():
  """full_frame equals BTS's evaluation with the crop removed (every pixel
  with 1e-3 < gt < 10 m, borders included), and differs from eigen where the
  errors sit in the border that the Eigen crop leaves out."""
  gt, pred = _scenes("structured", 18)
  gt[:, 250:260, :] = 0.0
  pred[:, :, :30] = 3.0 * gt[:, :, :30]  # a bad left border, outside the Eigen crop
  actual = metrics.depth_metrics(gt, pred, protocol="full_frame")
  expected = _bts_eval(gt, pred, crop=None)
  for k in NAMES:
    np.testing.assert_allclose(actual[k], expected[k], rtol=1e-10, err_msg=k)
  eigen = metrics.depth_metrics(gt, pred, protocol="eigen")
  np.testing.assert_allclose(eigen["abs_rel"], _bts_eval(gt, pred)["abs_rel"], rtol=1e-10)
  assert actual["abs_rel"] > eigen["abs_rel"] + 0.01
  assert metrics.crop_window(64, 96, "full_frame") == (0, 64, 0, 96)


@pytest.mark.parametrize("kind,seed,pred_hw", [
    ("random", 15, (426, 560)), ("structured", 16, (416, 576)),
    ("structured", 17, (213, 280))])
def test_big_vision_equals_its_evaluator(kind, seed, pred_hw):
  """big_vision's protocol on a prediction of the 426x560 crop (at the crop's
  size, at the network's 416x576, or at half size) equals big_vision's
  evaluator (jax.image.resize nearest, 1e-3 < gt < 10, no clipping, per-image
  mean) to 1e-6 (its log10 of the float32 prediction is float32); sq_rel, rmse_log and silog, which it
  does not report, equal BTS's definitions per image."""
  gt, pred_full = _scenes(kind, seed)
  gt[:, 250:260, :] = 0.0
  rng = np.random.RandomState(seed)
  pred = np.stack([np.asarray(jax.image.resize(p[54:480, 41:601], pred_hw, "linear"))
                   for p in pred_full]).astype(np.float64)
  pred *= np.exp(0.05 * rng.randn(*pred.shape))
  pred = pred.astype(np.float32).astype(np.float64)  # what big_vision's resize sees
  actual = metrics.depth_metrics(gt[:, 54:480, 41:601], pred, protocol="big_vision",
                                 cropped=True)
  expected = _big_vision_eval(gt, pred)
  for k, v in expected.items():
    np.testing.assert_allclose(actual[k], v, rtol=1e-6, err_msg=k)
  per_image = []
  for g, p in zip(gt[:, 54:480, 41:601], metrics.resize_nearest(pred, 426, 560)):
    keep = (g > 1e-3) & (g < 10.0)
    per_image.append(_errors(g[keep], p[keep]))
  for k in ("sq_rel", "rmse_log", "silog"):
    np.testing.assert_allclose(actual[k], np.mean([m[k] for m in per_image]),
                               rtol=1e-10, err_msg=k)
  if pred_hw == (426, 560):  # full frames: the same crop is taken here.
    full = np.ones_like(gt)
    full[:, 54:480, 41:601] = pred
    assert metrics.depth_metrics(gt, full, protocol="big_vision") == actual


def test_big_vision_does_not_clip():
  """Predictions below 1e-3 m or above 10 m count as they are under
  big_vision (its evaluator has no clipping) and are clipped under eigen:
  with everything else equal, the two give different abs_rel, and
  big_vision's equals the unclipped formula."""
  gt = np.full((1, 480, 640), 5.0)
  pred = gt.copy()
  pred[0, 100:200, 100:300] = 30.0
  bv = metrics.depth_metrics(gt, pred, protocol="big_vision")
  eigen = metrics.depth_metrics(gt, pred, protocol="eigen")
  n = 426 * 560
  np.testing.assert_allclose(bv["abs_rel"], 100 * 200 * 5.0 / n, rtol=1e-12)
  np.testing.assert_allclose(eigen["abs_rel"], 100 * 200 * 1.0 / (426 * 560), rtol=1e-12)


@pytest.mark.parametrize("in_hw,out_hw", [((416, 576), (426, 560)), ((213, 280), (426, 560)),
                                          ((426, 560), (240, 320)), ((7, 5), (13, 11))])
def test_resize_nearest_equals_jax(in_hw, out_hw):
  """metrics.resize_nearest picks the same pixels as jax.image.resize
  "nearest" (big_vision's resize) for up- and down-sampling."""
  x = np.random.RandomState(0).rand(2, *in_hw).astype(np.float32)
  expected = np.asarray(jax.image.resize(jnp.asarray(x), (2, *out_hw), "nearest"))
  np.testing.assert_array_equal(metrics.resize_nearest(x, *out_hw), expected)


def test_silog_closed_form():
  """Pooled silog: half the pixels with e = ln 1.1 and half with e = -ln 1.1
  have mean(e) = 0 and mean(e^2) = ln(1.1)^2, so silog = 100 ln 1.1."""
  gt = np.full((1, 480, 640), 2.0)
  pred = gt.copy()
  pred[..., ::2] *= 1.1
  pred[..., 1::2] /= 1.1
  out = metrics.depth_metrics(gt, pred, protocol="densedepth")
  np.testing.assert_allclose(out["silog"], 100 * np.log(1.1), rtol=1e-10)
