"""Random synthetic layouts keep the hand-held-camera constraints: camera
height within CAMERA_HEIGHT and no object closer than OBJECT_CLEARANCE."""

import numpy as np

from percdepth_jax.data import synthetic as syn


def _footprint_distance(obj, x: float, z: float) -> float:
  """Horizontal distance from (x, z) to the object's bounding circle."""
  if isinstance(obj, syn.Box):
    return float(np.hypot(x - obj.center[0], z - obj.center[1]) - np.hypot(*obj.half))
  if isinstance(obj, syn.Sphere):
    return float(np.hypot(x - obj.center[0], z - obj.center[2]) - obj.radius)
  return float(np.hypot(x - obj.center[0], z - obj.center[1]) - obj.radius)


def test_camera_height_and_object_clearance():
  lo, hi = syn.CAMERA_HEIGHT
  for seed in (0, 1):
    for index in range(40):
      layout = syn.sample_layout(seed, index)
      x, y, z = layout.camera_position
      assert lo <= y <= hi
      for obj in layout.objects:
        assert _footprint_distance(obj, x, z) >= syn.OBJECT_CLEARANCE - 1e-9
