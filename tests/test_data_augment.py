"""Augmentation: flip and channel permutation rates, RGB/depth kept aligned,
crops and intrinsics, determinism."""

import itertools

import numpy as np
import pytest

from percdepth_jax.data.augment import AugmentConfig, augment, hflip, random_crop, _flip_permute

H, W = 6, 10


def _coded_example():
  """Pixel (v, u) has R = u, G = 100 + v, B = 200; depth = 1 + u + 10 v."""
  v, u = np.mgrid[0:H, 0:W]
  image = np.stack([u, 100 + v, np.full_like(u, 200)], -1).astype(np.uint8)
  depth = (1 + u + 10 * v).astype(np.float32)
  return {"image": image, "depth": depth, "valid": depth > 5,
          "intrinsics": np.array([50.0, 51.0, 4.0, 2.5], np.float32)}


def test_flip_and_permutation_rates_and_alignment():
  """Over 4000 draws: flips at p = 0.5, permuted channels at p = 0.25 (a
  changed order 0.25 * 5/6 of the time: the identity is 1 of 6 orders), and
  every output keeps image and depth aligned (decoded from the codes)."""
  ex = _coded_example()
  rng = np.random.default_rng(0)
  n, flips, changed = 4000, 0, 0
  for _ in range(n):
    out = augment(ex, rng)
    assert out["image"].flags.c_contiguous and out["depth"].flags.c_contiguous
    # Which input column each output pixel came from, by the depth code...
    col_from_depth = (out["depth"] - 1).astype(int) % 10
    # ...and by the image: the channel holding values < 100 is the R code.
    chan = [c for c in range(3) if out["image"][..., c].max() < 100][0]
    np.testing.assert_array_equal(out["image"][..., chan], col_from_depth)
    np.testing.assert_array_equal(out["valid"], out["depth"] > 5)
    flipped = col_from_depth[0, 0] == W - 1
    flips += flipped
    # Channel order, from the value bands of the codes (R < 100 <= G < 200 = B).
    order = [0 if out["image"][0, 0, c] < 100 else 1 if out["image"][0, 0, c] < 200 else 2
             for c in range(3)]
    changed += order != [0, 1, 2]
    if flipped:  # cx mirrored: w - 1 - cx
      assert out["intrinsics"][2] == pytest.approx(W - 1 - 4.0)
  assert abs(flips / n - 0.5) < 0.03
  assert abs(changed / n - 0.25 * 5 / 6) < 0.03


def test_flip_permute_fast_path_matches_numpy():
  """The byte-reversal implementation equals plain NumPy indexing."""
  img = np.random.default_rng(1).integers(0, 256, (5, 7, 3), dtype=np.uint8)
  for p in itertools.permutations(range(3)):
    p = np.array(p)
    np.testing.assert_array_equal(_flip_permute(img, True, p), img[:, ::-1][..., p])
    np.testing.assert_array_equal(_flip_permute(img, False, p), img[..., p])


def test_same_generator_state_same_output():
  ex = _coded_example()
  a = augment(ex, np.random.default_rng(7), AugmentConfig(size=(4, 6)))
  b = augment(ex, np.random.default_rng(7), AugmentConfig(size=(4, 6)))
  for k in ("image", "depth", "valid", "intrinsics"):
    np.testing.assert_array_equal(a[k], b[k])


def test_crop_is_a_window_and_shifts_principal_point():
  """A 4x6 crop equals the source window at the offset decoded from depth,
  and cx, cy move by that offset (same ray per pixel)."""
  ex = _coded_example()
  rng = np.random.default_rng(3)
  offsets = set()
  for _ in range(50):
    out = random_crop(ex, (4, 6), rng)
    y0, x0 = int(out["depth"][0, 0] - 1) // 10, int(out["depth"][0, 0] - 1) % 10
    offsets.add((y0, x0))
    np.testing.assert_array_equal(out["depth"], ex["depth"][y0:y0 + 4, x0:x0 + 6])
    np.testing.assert_array_equal(out["image"], ex["image"][y0:y0 + 4, x0:x0 + 6])
    np.testing.assert_allclose(out["intrinsics"], [50.0, 51.0, 4.0 - x0, 2.5 - y0])
  assert len(offsets) > 5  # random, covering many of the 3 * 5 offsets


def test_upscaling_crop_when_source_is_too_small():
  """Target larger than the source: upscale (depth nearest, so only source
  depth values appear), then crop; focal lengths scale by the zoom."""
  ex = _coded_example()
  out = random_crop(ex, (12, 20), np.random.default_rng(0))
  assert out["image"].shape == (12, 20, 3) and out["depth"].shape == (12, 20)
  assert set(np.unique(out["depth"])) <= set(np.unique(ex["depth"]))
  np.testing.assert_allclose(out["intrinsics"][:2], [100.0, 102.0])
  # Pixel-centre convention: (c + 0.5) * 2 - 0.5.
  np.testing.assert_allclose(out["intrinsics"][2:], [8.5, 5.5])


def test_hflip_moves_principal_point():
  out = hflip(_coded_example())
  np.testing.assert_array_equal(out["depth"][:, 0], _coded_example()["depth"][:, W - 1])
  assert out["intrinsics"][2] == pytest.approx(W - 1 - 4.0)
