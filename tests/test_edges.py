"""Depth-boundary errors (percdepth_jax.edges) against known answers and iBims-1's formula."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage
from skimage import feature

from percdepth_jax import edges, metrics


def _ibims_dbe(edges_gt, pred):
  """iBims-1's compute_depth_boundary_error(edges_gt, pred), restated in NumPy."""
  if np.sum(edges_gt) == 0:
    return np.nan, np.nan
  pred_normalized = pred.copy().astype("f")
  pred_normalized[pred_normalized == 0] = np.nan
  pred_normalized = pred_normalized - np.nanmin(pred_normalized)
  pred_normalized = pred_normalized / np.nanmax(pred_normalized)
  edges_est = feature.canny(pred_normalized, sigma=np.sqrt(2), low_threshold=0.15,
                            high_threshold=0.3)
  D_gt = ndimage.distance_transform_edt(1 - edges_gt)
  D_est = ndimage.distance_transform_edt(1 - edges_est)
  max_dist_thr = 10.0
  mask_D_gt = D_gt < max_dist_thr
  E_fin_est_filt = edges_est * mask_D_gt
  if np.sum(E_fin_est_filt) == 0:
    return max_dist_thr, max_dist_thr
  dbe_acc = np.nansum(D_gt * E_fin_est_filt) / np.nansum(E_fin_est_filt)
  ch1 = D_gt * edges_est
  ch1[ch1 > max_dist_thr] = max_dist_thr
  ch2 = D_est * edges_gt
  ch2[ch2 > max_dist_thr] = max_dist_thr
  res = ch1 + ch2
  dbe_com = np.nansum(res) / (np.nansum(edges_est) + np.nansum(edges_gt))
  return dbe_acc, dbe_com


def _gt_edges(gt):
  """Gt edges as documented: the same Canny on the gt normalised to [0, 1]."""
  g = gt.astype("f")
  g = (g - g.min()) / (g.max() - g.min())
  return feature.canny(g, sigma=np.sqrt(2), low_threshold=0.15, high_threshold=0.3)


def _step(column: int, height: int = 120, width: int = 160) -> np.ndarray:
  """2 m left of `column`, 5 m right of it, 3.5 m on it: a one-pixel ramp, so
  Canny's edge is the straight column itself (a two-pixel step would tie)."""
  depth = np.full((height, width), 2.0)
  depth[:, column] = 3.5
  depth[:, column + 1:] = 5.0
  return depth


def _room(seed: int, height: int = 120, width: int = 160) -> np.ndarray:
  """A far wall sloping to a near floor with boxes at several depths."""
  rng = np.random.RandomState(seed)
  y = np.linspace(0.0, 1.0, height)[:, None]
  depth = (6.0 - 4.0 * y) * np.ones((1, width))
  for _ in range(5):
    r, c = rng.randint(5, height - 40), rng.randint(5, width - 40)
    h, w = rng.randint(10, 35), rng.randint(10, 35)
    depth[r:r + h, c:c + w] = rng.uniform(1.0, 4.0)
  return depth


def test_exact_prediction_scores_zero():
  """A step edge predicted exactly (at another depth scale: edges come from
  the normalised map) gives dbe_acc = dbe_com = 0."""
  gt = _step(80)
  assert edges.depth_boundary_errors(gt, gt) == (0.0, 0.0)
  assert edges.depth_boundary_errors(gt, 0.5 * gt + 1.0) == (0.0, 0.0)


@pytest.mark.parametrize("shift", [1, 2, 3, 5, 9])
def test_shifted_edge_scores_its_shift(shift):
  """The predicted step k pixels to the right of the gt step: every
  predicted edge pixel is k from the gt line and vice versa, so accuracy
  and completeness are both k pixels."""
  acc, com = edges.depth_boundary_errors(_step(80), _step(80 + shift))
  assert acc == pytest.approx(shift, abs=1e-12)
  assert com == pytest.approx(shift, abs=1e-12)


@pytest.mark.parametrize("pred", [
    np.full((120, 160), 3.0),                                   # constant
    np.linspace(2.0, 5.0, 160)[None].repeat(120, axis=0),       # smooth ramp
    _step(80 + 10), _step(80 + 25)])                             # 10+ px away
def test_no_predicted_edge_near_gt_scores_the_maximum(pred):
  """No predicted edge, or none closer than 10 px to a gt edge, gives the
  10 px maximum for both."""
  assert edges.depth_boundary_errors(_step(80), pred) == (10.0, 10.0)


def test_no_gt_edge_is_skipped():
  """A gt without edges has no boundary error (None); the accumulator skips
  and counts it, and averages the others."""
  flat = np.full((120, 160), 4.0)
  assert edges.depth_boundary_errors(flat, _step(80)) is None
  acc = edges.DepthBoundaryAccumulator()
  acc.update(np.stack([flat, _step(80), _step(80)]),
             np.stack([flat, _step(82), _step(85)]))
  assert (acc.num_images, acc.num_images_skipped) == (2, 1)
  assert acc.result() == pytest.approx({"dbe_acc": 3.5, "dbe_com": 3.5}, abs=1e-12)
  with pytest.raises(ValueError, match="no image"):
    edges.DepthBoundaryAccumulator().result()


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_equals_ibims_formula_on_rooms(seed):
  """On rooms with boxes and predictions that are blurred, rescaled, shifted
  and noisy, dbe_acc and dbe_com equal iBims-1's function (restated above)
  given gt edges from Canny on the normalised gt, to 1e-12."""
  gt = _room(seed)
  rng = np.random.RandomState(100 + seed)
  candidates = [
      1.1 * gt,
      ndimage.gaussian_filter(gt, 2.0),
      np.roll(gt, 3, axis=1) * np.exp(0.01 * rng.randn(*gt.shape)),
      _room(seed + 50),
  ]
  for pred in candidates:
    expected = _ibims_dbe(_gt_edges(gt), pred)
    actual = edges.depth_boundary_errors(gt, pred)
    np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-12)
    assert 0.0 <= actual[0] <= 10.0 and 0.0 <= actual[1] <= 10.0
  # Blurring moves edges by less than a noisy, different room does.
  assert (edges.depth_boundary_errors(gt, candidates[1])[1]
          < edges.depth_boundary_errors(gt, candidates[3])[1])


def test_hole_borders_are_not_edges():
  """A hole (gt 0) in a flat gt creates no gt edge (Canny runs with the
  validity mask), and a predicted edge inside the hole is not counted: a
  step predicted in the hole of a stepped gt scores like a perfect one."""
  flat = np.full((120, 160), 4.0)
  flat[40:80, 20:60] = 0.0
  assert edges.depth_boundary_errors(flat, np.full_like(flat, 4.0)) is None
  gt = _step(100)
  gt[:, 20:60] = 0.0
  pred = _step(100)
  pred[:, 40:] = np.maximum(pred[:, 40:], 2.0)
  pred[:, :40] = 1.0  # an edge at column 40, inside the hole
  assert edges.depth_boundary_errors(gt, pred) == (0.0, 0.0)
  assert edges.depth_boundary_errors(_step(100), pred)[1] > 1.0  # without the hole it counts
  # The hole given as a mask instead of as gt = 0 is the same.
  mask = np.ones(gt.shape, bool)
  mask[:, 20:60] = False
  assert edges.depth_boundary_errors(_step(100), pred, mask) == (0.0, 0.0)


def test_accumulator_crops_and_streams():
  """The accumulator crops each image to the Eigen window (scaled to the
  image size) before edges are found, and any split into batches gives the
  same result as one update; it equals the mean of the per-image values."""
  gts = np.stack([_room(s, 96, 128) for s in range(4)])
  preds = np.stack([ndimage.gaussian_filter(g, 1.5) for g in gts])
  r0, r1, c0, c1 = metrics.crop_window(96, 128, "eigen")
  per_image = [edges.depth_boundary_errors(g[r0:r1, c0:c1], p[r0:r1, c0:c1])
               for g, p in zip(gts, preds)]
  whole = edges.DepthBoundaryAccumulator()
  whole.update(gts, preds)
  split = edges.DepthBoundaryAccumulator()
  split.update(gts[0], preds[0])
  split.update(gts[1:, ..., None], preds[1:, ..., None])
  assert split.result() == whole.result()
  np.testing.assert_allclose(
      [whole.result()["dbe_acc"], whole.result()["dbe_com"]],
      np.mean(per_image, axis=0), rtol=1e-12)


def test_bad_inputs_are_errors():
  """Different gt / pred shapes and non-finite predictions raise ValueError."""
  gt = _step(80)
  with pytest.raises(ValueError, match="one shape"):
    edges.depth_boundary_errors(gt, gt[:, :100])
  bad = gt.copy()
  bad[5, 5] = np.nan
  with pytest.raises(ValueError, match="non-finite"):
    edges.depth_boundary_errors(gt, bad)
  with pytest.raises(ValueError, match="shapes differ"):
    edges.DepthBoundaryAccumulator().update(gt, gt[:, :100])
