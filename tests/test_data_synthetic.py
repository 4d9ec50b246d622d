"""Synthetic rooms: determinism, exact analytic depth, intrinsics, shading, shadows."""

import numpy as np
import pytest

from percdepth_jax.data import camera
from percdepth_jax.data import synthetic as syn
from percdepth_jax.errors import UserInputError

H, W = 48, 64


def _wall_layout(**kwargs) -> syn.Layout:
  """Camera at (10, 6, 1) in a 20 x 12 x 4 m room: the wall z = 4 is 3 m ahead."""
  return syn.Layout(room=(20.0, 12.0, 4.0), camera_position=(10.0, 6.0, 1.0),
                    exposure=1.0, **kwargs)


def _unproject(depth_HxW, intrinsics):
  """Camera-frame points (x right, y down, z forward) from z-depth (test's own)."""
  fx, fy, cx, cy = (float(x) for x in intrinsics)
  v, u = np.mgrid[0:depth_HxW.shape[0], 0:depth_HxW.shape[1]].astype(np.float64)
  z = depth_HxW.astype(np.float64)
  return np.stack([(u - cx) / fx * z, (v - cy) / fy * z, z], -1)


def test_same_seed_same_bytes_different_seeds_differ():
  """Rendering is a pure function of (seed, index, size)."""
  a = syn.render_example(5, 3, H, W)
  b = syn.SyntheticSource(10, seed=5, height=H, width=W)[3]
  assert a["image"].tobytes() == b["image"].tobytes()
  assert a["depth"].tobytes() == b["depth"].tobytes()
  other_seed = syn.render_example(6, 3, H, W)
  other_index = syn.render_example(5, 4, H, W)
  assert not np.array_equal(a["depth"], other_seed["depth"])
  assert not np.array_equal(a["depth"], other_index["depth"])
  assert not np.array_equal(a["image"], other_seed["image"])


def test_intrinsics_are_nyu_scaled():
  """480x640 gives NYU's Kinect intrinsics; 240x320 halves them (pixel centres)."""
  np.testing.assert_allclose(camera.nyu_intrinsics(480, 640),
                             [518.8579, 519.46961, 325.58245, 253.73617], rtol=1e-6)
  # Hand-computed: f / 2, (c + 0.5) / 2 - 0.5.
  np.testing.assert_allclose(camera.nyu_intrinsics(240, 320),
                             [259.42895, 259.734805, 162.541225, 126.618085], rtol=1e-6)


def test_wall_at_three_metres_is_exactly_three():
  """Camera facing a wall 3 m away, no tilt: every pixel's z-depth is 3 m."""
  ex = syn.render(_wall_layout(), H, W)
  np.testing.assert_allclose(ex["depth"], 3.0, rtol=0, atol=1e-5)
  assert ex["valid"].all()


@pytest.mark.parametrize("yaw,pitch,roll", [(0.3, -0.2, 0.1), (-0.5, 0.15, -0.05)])
def test_tilted_view_of_wall_is_consistent_with_intrinsics(yaw, pitch, roll):
  """Unprojecting the depth with the returned intrinsics gives a plane 3 m from
  the camera whose normal makes the angle acos(cos(yaw) cos(pitch)) with the
  optical axis (closed form for this yaw-then-pitch camera)."""
  ex = syn.render(_wall_layout(yaw=yaw, pitch=pitch, roll=roll), H, W)
  pts = _unproject(ex["depth"], ex["intrinsics"]).reshape(-1, 3)
  centre = pts.mean(0)
  _, sing, vt = np.linalg.svd(pts - centre, full_matrices=False)
  normal = vt[2]
  assert sing[2] / sing[0] < 1e-5  # coplanar
  assert abs(abs(centre @ normal) - 3.0) < 1e-4  # camera-plane distance
  assert abs(abs(normal[2]) - np.cos(yaw) * np.cos(pitch)) < 1e-5


def test_floor_depth_matches_closed_form():
  """Level camera 1.5 m above the floor: a floor pixel in row v has
  z = 1.5 * fy / (v - cy) (tests fy and cy against the rendered geometry)."""
  layout = syn.Layout(room=(20.0, 6.0, 12.0), camera_position=(10.0, 1.5, 0.5),
                      exposure=1.0)
  ex = syn.render(layout, H, W)
  fx, fy, cx, cy = ex["intrinsics"]
  rows = np.arange(H)
  expected = 1.5 * fy / (rows - cy)
  floor_rows = (rows > cy) & (expected < 11.0)  # before the far wall (11.5 m)
  assert floor_rows.sum() >= 10
  for v in rows[floor_rows]:
    np.testing.assert_allclose(ex["depth"][v], expected[v], rtol=2e-6)


def test_sphere_depth_matches_closed_form():
  """A sphere centred on the ray of pixel (u0, v0): z-depth there is
  (|c| - r) / |d| with d = ((u0 - cx) / fx, (v0 - cy) / fy, 1)."""
  fx, fy, cx, cy = camera.nyu_intrinsics(H, W)
  u0, v0 = 40, 20
  d = np.array([(u0 - cx) / fx, (v0 - cy) / fy, 1.0])
  centre_cam = d / np.linalg.norm(d) * 2.5  # 2.5 m along the pixel ray
  cam = np.array([10.0, 6.0, 1.0])
  # Level camera: world = camera position + (x, -y, z) (camera y points down).
  centre_world = cam + centre_cam * np.array([1.0, -1.0, 1.0])
  layout = _wall_layout(objects=(syn.Sphere(tuple(centre_world), 0.4),))
  ex = syn.render(layout, H, W)
  assert abs(ex["depth"][v0, u0] - (2.5 - 0.4) / np.linalg.norm(d)) < 1e-5
  # And the wall behind it is still at 3 m far from the sphere.
  assert abs(ex["depth"][2, 2] - 3.0) < 1e-5


def test_box_front_face_depth():
  """An axis-aligned box whose front face is 2 m ahead reads 2 m on that face."""
  box = syn.Box(center=(10.0, 3.5), half=(0.5, 0.5), y0=5.5, y1=6.5)  # face z = 3
  ex = syn.render(_wall_layout(objects=(box,)), H, W)
  fx, fy, cx, cy = ex["intrinsics"]
  # Pixels whose ray at z = 2 stays well inside the face |x|, |y| < 0.5.
  v, u = np.mgrid[0:H, 0:W]
  inside = (np.abs((u - cx) / fx * 2) < 0.45) & (np.abs((v - cy) / fy * 2) < 0.45)
  outside = (np.abs((u - cx) / fx * 2) > 0.55) | (np.abs((v - cy) / fy * 2) > 0.55)
  assert inside.sum() > 50
  np.testing.assert_allclose(ex["depth"][inside], 2.0, atol=1e-5)
  np.testing.assert_allclose(ex["depth"][outside], 3.0, atol=1e-5)


def test_lambertian_shading_and_cast_shadow():
  """Light 2 m above the floor over a thin slab at 1 m: the floor under the
  slab within the similar-triangles square (half size 1 m) gets ambient
  light only; elsewhere the floor follows the Lambertian closed form."""
  albedo, ambient, intensity = 0.5, 0.4, 1.0
  slab = syn.Box(center=(5.0, 5.0), half=(0.5, 0.5), y0=1.0, y1=1.001,
                 texture=syn.Texture("plain", (0.9, 0.9, 0.9)))
  floor = syn.Texture("plain", (albedo,) * 3)
  layout = syn.Layout(room=(10.0, 3.0, 10.0), camera_position=(5.0, 0.6, 2.0),
                      pitch=-0.35, objects=(slab,),
                      room_textures=(floor,) + (syn.Texture("plain", (0.6,) * 3),) * 5,
                      lights=((5.0, 2.0, 5.0),), light_intensity=(intensity,),
                      ambient=ambient, exposure=1.0)
  ex = syn.render(layout, 96, 128)
  # World points: rotate the camera-frame points by the pitch (test's own
  # rotation: camera y down, pitch about x, positive = looking up).
  p = _unproject(ex["depth"], ex["intrinsics"])
  x, y_down, z = p[..., 0], p[..., 1], p[..., 2]
  c, s = np.cos(-0.35), np.sin(-0.35)
  wy = 0.6 + (-y_down) * c + z * s
  wz = 2.0 - (-y_down) * s + z * c
  wx = 5.0 + x
  on_floor = np.abs(wy) < 1e-4
  r = np.maximum(np.abs(wx - 5.0), np.abs(wz - 5.0))
  shadow = on_floor & (r < 0.95)
  lit = on_floor & (r > 1.1)
  assert shadow.sum() > 20 and lit.sum() > 20
  ambient_only = round((albedo * ambient) ** (1 / 2.2) * 255)  # = 123
  assert np.all(np.abs(ex["image"][shadow].astype(int) - ambient_only) <= 1)
  lv = np.stack([5.0 - wx, 2.0 - wy, 5.0 - wz], -1)[lit]
  dist = np.linalg.norm(lv, axis=-1)
  irradiance = ambient + intensity * (lv[:, 1] / dist) / (1 + syn.FALLOFF * dist**2)
  expected = np.clip(albedo * irradiance, 0, 1) ** (1 / 2.2) * 255
  np.testing.assert_allclose(ex["image"][lit][:, 0], expected, atol=1.0)


def test_random_scenes_are_plausible_rooms():
  """Depth in 0.3-12 m, 3-12 objects, textured non-flat images, all valid."""
  for index in range(6):
    layout = syn.sample_layout(0, index)
    assert 3 <= len(layout.objects) <= 12
    assert 1 <= len(layout.lights) <= 2
    ex = syn.render(layout, H, W)
    assert ex["image"].dtype == np.uint8 and ex["image"].shape == (H, W, 3)
    assert ex["depth"].dtype == np.float32 and ex["depth"].shape == (H, W)
    assert ex["valid"].all()
    assert 0.3 < ex["depth"].min() and ex["depth"].max() < 12.0
    assert ex["image"].std() > 5


def test_noise_and_holes_are_optional_and_deterministic():
  """Holes cover about the requested fraction, with depth 0 exactly there."""
  opts = syn.RenderOptions(rgb_noise=2.0, depth_noise=0.002, hole_fraction=0.1)
  a = syn.render_example(1, 2, H, W, opts)
  b = syn.render_example(1, 2, H, W, opts)
  clean = syn.render_example(1, 2, H, W)
  assert np.array_equal(a["depth"], b["depth"]) and np.array_equal(a["image"], b["image"])
  assert 0.05 < 1 - a["valid"].mean() < 0.15
  assert np.all(a["depth"][~a["valid"]] == 0)
  rel = np.abs(a["depth"] - clean["depth"])[a["valid"]] / clean["depth"][a["valid"]]
  assert 0 < rel.max() < 0.2


def test_bad_sizes_are_user_errors():
  with pytest.raises(UserInputError, match="too small"):
    syn.render_example(0, 0, 4, 4)
  with pytest.raises(UserInputError, match=">= 1"):
    syn.SyntheticSource(0)
