"""config.data.crop: centre crops of examples, with intrinsics moved along."""

import numpy as np
import pytest

from percdepth_jax.data.crop import CenterCropSource, parse_size
from percdepth_jax.errors import UserInputError


def _example(h, w):
  depth = np.arange(h * w, dtype=np.float32).reshape(h, w)
  return {"image": np.stack([depth.astype(np.uint8)] * 3, -1), "depth": depth,
          "valid": depth > 3, "intrinsics": np.array([500.0, 510.0, 45.0, 35.0], np.float32),
          "name": "frame.png"}


def test_center_crop_takes_the_middle_and_moves_the_principal_point():
  """A 70x90 frame cropped to 64x64 keeps rows 3:67 and cols 13:77 (floor of
  half the excess on each side); cx, cy move by the left/top offsets, fx, fy stay."""
  source = CenterCropSource([_example(70, 90), None], 64, 64)
  out = source[0]
  full = _example(70, 90)
  np.testing.assert_array_equal(out["depth"], full["depth"][3:67, 13:77])
  np.testing.assert_array_equal(out["image"], full["image"][3:67, 13:77])
  np.testing.assert_array_equal(out["valid"], full["valid"][3:67, 13:77])
  np.testing.assert_allclose(out["intrinsics"], [500.0, 510.0, 45.0 - 13, 35.0 - 3])
  assert source[1] is None and len(source) == 2  # skipped examples stay skipped


def test_crop_larger_than_the_frame_names_it():
  with pytest.raises(UserInputError, match="frame.png is 60x90, smaller than the crop 64x64"):
    CenterCropSource([_example(60, 90)], 64, 64)[0]


@pytest.mark.parametrize("text,expected", [("448,608", (448, 608)), ("64x96", (64, 96)), ("", None)])
def test_parse_size(text, expected):
  assert parse_size(text, "config.data.crop") == expected


def test_parse_size_refuses_garbage():
  with pytest.raises(UserInputError, match="write it as H,W"):
    parse_size("big", "config.data.crop")
