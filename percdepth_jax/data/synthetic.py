"""Synthetic indoor rooms, ray-cast in vectorised NumPy, with exact metric depth.

A scene is a `Layout` (room box, camera, objects, lights, textures) sampled
deterministically from (seed, index) by `sample_layout`, and rendered at any
resolution by `render`. Depth is the z-depth along the optical axis: pixel
rays are built as d_cam = ((u - cx) / fx, (v - cy) / fy, 1), so the ray
parameter t of a hit *is* its z-depth.

Frames. World: x right, y up, z forward; the room is the box
[0, size_x] x [0, size_y] x [0, size_z] (floor y = 0). Camera: x right,
y down, z forward (the convention of predict's point clouds).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np

from percdepth_jax.data.camera import nyu_intrinsics
from percdepth_jax.errors import UserInputError

TEXTURES = ("plain", "checker", "stripes", "noise")
_EPS = 1e-4
_NOISE_GRID = 32  # value-noise lattice size (periodic)
# Light falloff: irradiance = intensity * max(0, n.l) / (1 + FALLOFF * d^2).
FALLOFF = 0.08
# Random rooms are filmed as NYU was, by a person holding the sensor: the
# camera is at chest-to-eye height (this range is the main absolute-scale cue
# a single image offers), and nothing stands within arm's reach of the lens
# (the Kinect reads nothing closer than about 0.5 m), so that a view is not
# filled by one surface at an unknowable distance.
CAMERA_HEIGHT = (1.25, 1.65)  # metres
OBJECT_CLEARANCE = 1.0  # metres between the camera and an object's footprint


def camera_rotation(yaw: float, pitch: float, roll: float) -> np.ndarray:
  """Camera-to-world 3x3 matrix; columns are the camera x, y, z axes in world.

  yaw > 0 turns the view towards +x, pitch > 0 looks up, roll about the
  optical axis.
  """
  cy_, sy_ = np.cos(yaw), np.sin(yaw)
  cp, sp = np.cos(pitch), np.sin(pitch)
  cr, sr = np.cos(roll), np.sin(roll)
  r_yaw = np.array([[cy_, 0, sy_], [0, 1, 0], [-sy_, 0, cy_]])
  r_pitch = np.array([[1, 0, 0], [0, cp, sp], [0, -sp, cp]])
  r_roll = np.array([[cr, -sr, 0], [sr, cr, 0], [0, 0, 1]])
  cam_to_world_axes = np.diag([1.0, -1.0, 1.0])  # camera y points down
  return r_yaw @ r_pitch @ r_roll @ cam_to_world_axes


@dataclasses.dataclass(frozen=True)
class Texture:
  kind: str = "plain"  # one of TEXTURES
  color1: tuple[float, float, float] = (0.7, 0.7, 0.7)  # linear RGB albedo
  color2: tuple[float, float, float] = (0.3, 0.3, 0.3)
  scale: float = 0.25  # metres per checker/stripe cell or noise cell


@dataclasses.dataclass(frozen=True)
class Box:
  """Box standing upright, rotated by `angle` about the vertical axis."""
  center: tuple[float, float]  # (x, z) of the footprint centre
  half: tuple[float, float]  # half sizes along the box's local x and z
  y0: float
  y1: float
  angle: float = 0.0
  texture: Texture = Texture()


@dataclasses.dataclass(frozen=True)
class Sphere:
  center: tuple[float, float, float]
  radius: float
  texture: Texture = Texture()


@dataclasses.dataclass(frozen=True)
class Cylinder:
  """Vertical cylinder from y0 to y1."""
  center: tuple[float, float]  # (x, z)
  radius: float
  y0: float
  y1: float
  texture: Texture = Texture()


@dataclasses.dataclass(frozen=True)
class Layout:
  """Everything that defines a scene, independent of the resolution."""
  room: tuple[float, float, float]  # (size_x, size_y = height, size_z) metres
  camera_position: tuple[float, float, float]
  yaw: float = 0.0
  pitch: float = 0.0
  roll: float = 0.0
  objects: tuple[Any, ...] = ()
  # Room surfaces: floor, ceiling, wall x=0, wall x=size_x, wall z=0, z=size_z.
  room_textures: tuple[Texture, ...] = (Texture(),) * 6
  lights: tuple[tuple[float, float, float], ...] = ()  # point lights (world)
  light_intensity: tuple[float, ...] = ()
  ambient: float = 0.25
  noise_seed: int = 0
  # Linear scale before gamma; None = auto-exposure (97th percentile -> 0.92).
  exposure: float | None = None


@dataclasses.dataclass(frozen=True)
class RenderOptions:
  """Optional sensor-like corruption (off by default: exact depth)."""
  rgb_noise: float = 0.0  # std of Gaussian RGB noise, in 0-255 units
  depth_noise: float = 0.0  # relative std: sigma = depth_noise * z^2 (Kinect-like)
  hole_fraction: float = 0.0  # approximate fraction of depth pixels set invalid


# ---------------------------------------------------------------------------
# Ray-primitive intersections. Rays are (o, d): o is a 3-tuple of scalars or
# arrays, d a 3-tuple of arrays (same shape). They return t (inf on a miss)
# for the first hit with t > _EPS.


def _hit_box(o, d, box: Box) -> np.ndarray:
  c, s = np.cos(box.angle), np.sin(box.angle)
  # World -> box-local (rotation about y by -angle).
  ox, oz = o[0] - box.center[0], o[2] - box.center[1]
  lox, loz = c * ox - s * oz, s * ox + c * oz
  ldx, ldz = c * d[0] - s * d[2], s * d[0] + c * d[2]
  tnear = np.full(np.shape(d[0]), -np.inf, np.float32)
  tfar = np.full(np.shape(d[0]), np.inf, np.float32)
  with np.errstate(divide="ignore", invalid="ignore"):
    for lo_, hi_, oo, dd in ((-box.half[0], box.half[0], lox, ldx),
                             (box.y0, box.y1, o[1], d[1]),
                             (-box.half[1], box.half[1], loz, ldz)):
      inv = 1.0 / dd
      t1, t2 = (lo_ - oo) * inv, (hi_ - oo) * inv
      np.maximum(tnear, np.minimum(t1, t2), out=tnear)
      np.minimum(tfar, np.maximum(t1, t2), out=tfar)
  hit = (tnear <= tfar) & (tnear > _EPS)
  return np.where(hit, tnear, np.inf)


def _hit_sphere(o, d, sph: Sphere) -> np.ndarray:
  ox, oy, oz = (o[i] - sph.center[i] for i in range(3))
  a = d[0] * d[0] + d[1] * d[1] + d[2] * d[2]
  b = ox * d[0] + oy * d[1] + oz * d[2]
  c = ox * ox + oy * oy + oz * oz - sph.radius**2
  disc = b * b - a * c
  with np.errstate(invalid="ignore"):
    t = (-b - np.sqrt(disc)) / a
  return np.where((disc >= 0) & (t > _EPS), t, np.inf)


def _hit_cylinder(o, d, cyl: Cylinder) -> np.ndarray:
  ox, oz = o[0] - cyl.center[0], o[2] - cyl.center[1]
  a = d[0] * d[0] + d[2] * d[2]
  b = ox * d[0] + oz * d[2]
  c = ox * ox + oz * oz - cyl.radius**2
  disc = b * b - a * c
  with np.errstate(invalid="ignore", divide="ignore"):
    t_side = (-b - np.sqrt(disc)) / a
    y = o[1] + t_side * d[1]
    t = np.where((disc >= 0) & (t_side > _EPS) & (y >= cyl.y0) & (y <= cyl.y1),
                 t_side, np.inf)
    for y_cap in (cyl.y0, cyl.y1):
      t_cap = (y_cap - o[1]) / d[1]
      px, pz = ox + t_cap * d[0], oz + t_cap * d[2]
      ok = (t_cap > _EPS) & (px * px + pz * pz <= cyl.radius**2)
      t = np.where(ok & (t_cap < t), t_cap, t)
  return t


def _hit(o, d, obj) -> np.ndarray:
  if isinstance(obj, Box):
    return _hit_box(o, d, obj)
  if isinstance(obj, Sphere):
    return _hit_sphere(o, d, obj)
  return _hit_cylinder(o, d, obj)


def _corners(obj) -> np.ndarray:
  """8x3 corners of a world-space box bounding the object."""
  if isinstance(obj, Box):
    r = float(np.hypot(*obj.half))
    lo = (obj.center[0] - r, obj.y0, obj.center[1] - r)
    hi = (obj.center[0] + r, obj.y1, obj.center[1] + r)
  elif isinstance(obj, Sphere):
    lo = tuple(c - obj.radius for c in obj.center)
    hi = tuple(c + obj.radius for c in obj.center)
  else:
    lo = (obj.center[0] - obj.radius, obj.y0, obj.center[1] - obj.radius)
    hi = (obj.center[0] + obj.radius, obj.y1, obj.center[1] + obj.radius)
  return np.array([[(lo, hi)[i][0], (lo, hi)[j][1], (lo, hi)[k][2]]
                   for i in (0, 1) for j in (0, 1) for k in (0, 1)])


def _bounding_sphere(obj) -> tuple[np.ndarray, float]:
  corners = _corners(obj)
  center = corners.mean(0)
  return center, float(np.linalg.norm(corners[0] - center))


# ---------------------------------------------------------------------------
# Surface attributes at hit points (normals and 2D texture coordinates).


def _room_surface(k: int, p):
  """Normal (pointing into the room) and texture coords of room face k."""
  axis, side = [(1, 0), (1, 1), (0, 0), (0, 1), (2, 0), (2, 1)][k]
  n = np.zeros(3, np.float32)
  n[axis] = 1.0 if side == 0 else -1.0
  u_axis, v_axis = [a for a in range(3) if a != axis]
  return n, p[u_axis], p[v_axis]


def _object_surface(obj, p):
  """Per-point normals (3 arrays) and texture coords for object hits."""
  if isinstance(obj, Sphere):
    q = [(p[i] - obj.center[i]) / obj.radius for i in range(3)]
    u = np.arctan2(q[2], q[0]) * obj.radius
    v = np.arcsin(np.clip(q[1], -1, 1)) * obj.radius
    return q, u, v
  if isinstance(obj, Cylinder):
    qx, qz = p[0] - obj.center[0], p[2] - obj.center[1]
    r = np.maximum(np.sqrt(qx * qx + qz * qz), 1e-6)
    is_cap = (np.abs(p[1] - obj.y1) < 1e-4) | (np.abs(p[1] - obj.y0) < 1e-4)
    is_cap |= r < obj.radius * (1 - 1e-3)
    cap_sign = np.where(p[1] > 0.5 * (obj.y0 + obj.y1), 1.0, -1.0)
    n = [np.where(is_cap, 0.0, qx / r), np.where(is_cap, cap_sign, 0.0),
         np.where(is_cap, 0.0, qz / r)]
    u = np.where(is_cap, qx, np.arctan2(qz, qx) * obj.radius)
    v = np.where(is_cap, qz, p[1])
    return n, u, v
  c, s = np.cos(obj.angle), np.sin(obj.angle)
  ox, oz = p[0] - obj.center[0], p[2] - obj.center[1]
  lx, lz = c * ox - s * oz, s * ox + c * oz
  ly = p[1] - 0.5 * (obj.y0 + obj.y1)
  hy = 0.5 * (obj.y1 - obj.y0)
  rel = np.stack([np.abs(lx) / obj.half[0], np.abs(ly) / hy,
                  np.abs(lz) / obj.half[1]])
  face = np.argmax(rel, axis=0)  # which slab the point lies on
  nlx = np.where(face == 0, np.sign(lx), 0.0)
  nly = np.where(face == 1, np.sign(ly), 0.0)
  nlz = np.where(face == 2, np.sign(lz), 0.0)
  # Box-local -> world (rotation about y by +angle).
  n = [c * nlx + s * nlz, nly, -s * nlx + c * nlz]
  u = np.where(face == 0, lz, lx)
  v = np.where(face == 1, lz, ly)
  return n, u, v


def _albedo(tex: Texture, u, v, noise_grid) -> np.ndarray:
  """Nx3 linear albedo of a texture at texture coords (u, v) in metres."""
  c1 = np.asarray(tex.color1, np.float32)
  c2 = np.asarray(tex.color2, np.float32)
  if tex.kind == "plain":
    return np.broadcast_to(c1, (np.size(u), 3))
  if tex.kind == "checker":
    w = (np.floor(u / tex.scale) + np.floor(v / tex.scale)) % 2
  elif tex.kind == "stripes":
    w = np.floor(v / tex.scale) % 2
  elif tex.kind == "noise":
    # Periodic bilinear value noise on a small random lattice.
    gu, gv = u / tex.scale, v / tex.scale
    iu, iv = np.floor(gu), np.floor(gv)
    fu, fv = gu - iu, gv - iv
    iu = iu.astype(np.int64) % _NOISE_GRID
    iv = iv.astype(np.int64) % _NOISE_GRID
    ju, jv = (iu + 1) % _NOISE_GRID, (iv + 1) % _NOISE_GRID
    w = ((noise_grid[iv, iu] * (1 - fu) + noise_grid[iv, ju] * fu) * (1 - fv)
         + (noise_grid[jv, iu] * (1 - fu) + noise_grid[jv, ju] * fu) * fv)
  else:
    raise ValueError(f"unknown texture kind {tex.kind!r}")
  w = w.astype(np.float32)[:, None]
  return c1 * (1 - w) + c2 * w


# ---------------------------------------------------------------------------


def render(layout: Layout, height: int, width: int,
           options: RenderOptions = RenderOptions(),
           rng: np.random.Generator | None = None) -> dict[str, np.ndarray]:
  """Ray-casts a layout; returns {"image", "depth", "valid", "intrinsics"}.

  `rng` drives only the optional noise and holes (required if any is on).
  """
  if height < 8 or width < 8:
    raise UserInputError(
        f"synthetic scene size {height}x{width} is too small: use at least "
        "8x8 (e.g. 240x320 or 480x640).")
  fx, fy, cx, cy = (float(x) for x in nyu_intrinsics(height, width))
  rot = camera_rotation(layout.yaw, layout.pitch, layout.roll).astype(np.float32)
  org = tuple(float(x) for x in layout.camera_position)
  # Pixel rays in camera coordinates with unit z, rotated to world: t = z-depth.
  xn = ((np.arange(width, dtype=np.float32) - cx) / fx)[None, :]
  yn = ((np.arange(height, dtype=np.float32) - cy) / fy)[:, None]
  d = tuple(rot[i, 0] * xn + rot[i, 1] * yn + rot[i, 2] for i in range(3))

  # Room: the ray leaves the box through the nearest face in its direction.
  t_best = np.full((height, width), np.inf, np.float32)
  surf_HxW = np.zeros((height, width), np.int16)
  with np.errstate(divide="ignore"):
    for axis in range(3):
      lo_t = (0.0 - org[axis]) / d[axis]
      hi_t = (layout.room[axis] - org[axis]) / d[axis]
      t_axis = np.where(d[axis] > 0, hi_t, lo_t)
      t_axis = np.where(d[axis] == 0, np.inf, t_axis)
      # Face index: floor/ceiling = 0/1 (axis y), walls x = 2/3, walls z = 4/5.
      face = np.where(d[axis] > 0, 1, 0) + {1: 0, 0: 2, 2: 4}[axis]
      closer = t_axis < t_best
      t_best = np.where(closer, t_axis, t_best)
      surf_HxW = np.where(closer, face, surf_HxW).astype(np.int16)

  # Objects: intersect only the pixels of their projected bounding box.
  for k, obj in enumerate(layout.objects):
    cam = (_corners(obj) - np.asarray(org)) @ rot.astype(np.float64)
    if np.all(cam[:, 2] <= 0.0):
      continue  # behind the camera
    if np.all(cam[:, 2] > 1e-3):
      us = cam[:, 0] / cam[:, 2] * fx + cx
      vs = cam[:, 1] / cam[:, 2] * fy + cy
      u0, u1 = max(int(np.floor(us.min())) - 1, 0), min(int(np.ceil(us.max())) + 2, width)
      v0, v1 = max(int(np.floor(vs.min())) - 1, 0), min(int(np.ceil(vs.max())) + 2, height)
    else:  # straddles the camera plane: test the whole image
      u0, u1, v0, v1 = 0, width, 0, height
    if u0 >= u1 or v0 >= v1:
      continue
    sub = (slice(v0, v1), slice(u0, u1))
    dx, dy, dz = (np.broadcast_to(c, (height, width))[sub] for c in d)
    t = _hit(org, (dx, dy, dz), obj)
    closer = t < t_best[sub]
    t_best[sub] = np.where(closer, t, t_best[sub])
    surf_HxW[sub] = np.where(closer, 6 + k, surf_HxW[sub])

  # Surface attributes, grouped per surface.
  n_pix = height * width
  t_flat = t_best.ravel()
  surf = surf_HxW.ravel()
  dflat = [np.broadcast_to(c, (height, width)).ravel() for c in d]
  p = [org[i] + t_flat * dflat[i] for i in range(3)]
  normal = [np.empty(n_pix, np.float32) for _ in range(3)]
  albedo = np.empty((n_pix, 3), np.float32)
  noise_grid = np.random.default_rng(layout.noise_seed).random(
      (_NOISE_GRID, _NOISE_GRID)).astype(np.float32)
  order = np.argsort(surf, kind="stable")
  bounds = np.searchsorted(surf[order], np.arange(6 + len(layout.objects) + 1))
  for k in range(6 + len(layout.objects)):
    idx = order[bounds[k]:bounds[k + 1]]
    if idx.size == 0:
      continue
    pk = [c[idx] for c in p]
    if k < 6:
      n, u, v = _room_surface(k, pk)
      tex = layout.room_textures[k]
      for i in range(3):
        normal[i][idx] = n[i]
    else:
      obj = layout.objects[k - 6]
      n, u, v = _object_surface(obj, pk)
      tex = obj.texture
      for i in range(3):
        normal[i][idx] = n[i]
    albedo[idx] = _albedo(tex, u, v, noise_grid)

  # Lambertian shading with point lights, inverse-square-ish falloff, shadows.
  light = np.full(n_pix, layout.ambient, np.float32)
  spheres = [_bounding_sphere(o) for o in layout.objects]
  for pos, intensity in zip(layout.lights, layout.light_intensity):
    lv = [pos[i] - p[i] for i in range(3)]
    dist = np.sqrt(lv[0] * lv[0] + lv[1] * lv[1] + lv[2] * lv[2])
    ndotl = (normal[0] * lv[0] + normal[1] * lv[1] + normal[2] * lv[2]) / dist
    lit = ndotl > 0
    for k, (obj, (bc, br)) in enumerate(zip(layout.objects, spheres)):
      # Cheap cone test: points whose segment to the light may meet the
      # object's bounding sphere; exact test on those only.
      to_c = bc - np.asarray(pos)
      dc = float(np.linalg.norm(to_c))
      if dc <= br:
        cand = lit & (surf != 6 + k)
      else:
        cos_cone = np.sqrt(1 - (br / dc) ** 2)
        cosang = -(lv[0] * to_c[0] + lv[1] * to_c[1] + lv[2] * to_c[2]) / (dist * dc)
        cand = lit & (cosang >= cos_cone) & (dist > dc - br) & (surf != 6 + k)
      idx = np.flatnonzero(cand)
      if idx.size == 0:
        continue
      t = _hit((p[0][idx], p[1][idx], p[2][idx]),
               (lv[0][idx], lv[1][idx], lv[2][idx]), obj)
      lit[idx[t < 1.0 - _EPS]] = False
    falloff = intensity / (1.0 + FALLOFF * dist * dist)
    light += np.where(lit, ndotl * falloff, 0.0).astype(np.float32)

  rgb = albedo * light[:, None]
  # Exposure (auto: on a subsample, so the image is never black), then gamma.
  exposure = layout.exposure
  if exposure is None:
    exposure = 0.92 / max(float(np.percentile(rgb[::7], 97)), 1e-6)
  rgb = np.clip(rgb * exposure, 0, 1) ** (1 / 2.2) * 255.0
  image_HxWx3 = rgb.reshape(height, width, 3)
  depth_HxW = t_best
  valid_HxW = np.ones((height, width), bool)
  if options.rgb_noise or options.depth_noise or options.hole_fraction:
    if rng is None:
      raise ValueError("render() needs `rng` when noise or holes are on")
    if options.rgb_noise:
      image_HxWx3 = image_HxWx3 + rng.normal(0, options.rgb_noise, image_HxWx3.shape)
    if options.depth_noise:
      depth_HxW = depth_HxW * (1 + options.depth_noise * depth_HxW * rng.standard_normal(
          depth_HxW.shape, np.float32))
    if options.hole_fraction:
      valid_HxW = ~_holes(rng, height, width, options.hole_fraction)
  image = np.clip(np.round(image_HxWx3), 0, 255).astype(np.uint8)
  depth = np.where(valid_HxW, depth_HxW, 0).astype(np.float32)
  return {"image": image, "depth": depth, "valid": valid_HxW,
          "intrinsics": np.array([fx, fy, cx, cy], np.float32)}


def _holes(rng, height, width, fraction) -> np.ndarray:
  """Blob-shaped missing-depth mask covering about `fraction` of the image."""
  from PIL import Image
  field = rng.random((max(height // 24, 2), max(width // 24, 2))).astype(np.float32)
  # Bilinear upsampling of a coarse random field gives smooth blobs.
  up = np.asarray(Image.fromarray(field, "F").resize((width, height), Image.BILINEAR))
  return up > np.quantile(up[::4, ::4], 1 - fraction)


# ---------------------------------------------------------------------------
# Random layouts.


def _random_texture(rng, dark=False, kinds=TEXTURES) -> Texture:
  hue = rng.random(3)
  base = 0.25 + 0.65 * hue if not dark else 0.1 + 0.4 * hue
  base = 0.6 * base + 0.4 * base.mean()  # desaturate: indoor colours
  other = np.clip(base * rng.uniform(0.4, 0.8), 0, 1)
  kind = kinds[rng.integers(len(kinds))]
  return Texture(kind, tuple(float(x) for x in base), tuple(float(x) for x in other),
                 float(rng.uniform(0.08, 0.5)))


def sample_layout(seed: int, index: int) -> Layout:
  """A random room, deterministic in (seed, index)."""
  rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index)])
  sx, sy, sz = rng.uniform(3.0, 6.0), rng.uniform(2.4, 3.1), rng.uniform(3.5, 7.5)
  # Camera near one wall, looking across the room, slightly down.
  cam = (rng.uniform(0.25, 0.75) * sx, rng.uniform(*CAMERA_HEIGHT), rng.uniform(0.2, 0.6))
  yaw = rng.uniform(-0.6, 0.6)
  pitch = rng.uniform(-0.45, 0.05)
  roll = rng.uniform(-0.05, 0.05)
  objects = []
  n_obj = int(rng.integers(3, 13))
  top_limit = sy - 0.4  # keep clear of the ceiling lights
  for _ in range(200):
    if len(objects) == n_obj:
      break
    kind = rng.choice(["box", "box", "wallbox", "sphere", "cylinder"])
    tex = _random_texture(rng)
    if kind in ("box", "wallbox"):
      hx, hz = rng.uniform(0.15, 0.9), rng.uniform(0.15, 0.6)
      if kind == "wallbox":  # cabinet or shelf flush against a wall
        wall = rng.integers(3)
        angle = 0.0
        if wall == 0:
          x, z = hx, rng.uniform(hz, sz - hz)
        elif wall == 1:
          x, z = sx - hx, rng.uniform(hz, sz - hz)
        else:
          x, z = rng.uniform(hx, sx - hx), sz - hz
        y0 = 0.0 if rng.random() < 0.7 else rng.uniform(0.8, 1.4)
      else:
        angle = rng.uniform(-0.8, 0.8) if rng.random() < 0.5 else 0.0
        x, z = rng.uniform(0, sx), rng.uniform(0, sz)
        y0 = 0.0
      y1 = min(y0 + rng.uniform(0.3, 2.0), top_limit)
      obj, radius = Box((x, z), (hx, hz), y0, y1, angle, tex), np.hypot(hx, hz)
    elif kind == "sphere":
      r = rng.uniform(0.12, 0.5)
      x, z = rng.uniform(r, sx - r), rng.uniform(r, sz - r)
      obj, radius = Sphere((x, r, z), r, tex), r
    else:
      r = rng.uniform(0.1, 0.4)
      x, z = rng.uniform(r, sx - r), rng.uniform(r, sz - r)
      obj, radius = Cylinder((x, z), r, 0.0, min(rng.uniform(0.3, 1.6), top_limit), tex), r
    # Keep the camera outside every object, OBJECT_CLEARANCE away.
    if np.hypot(x - cam[0], z - cam[2]) < radius + OBJECT_CLEARANCE:
      continue
    objects.append(obj)
  floor_tex = _random_texture(rng, dark=True, kinds=("checker", "stripes", "noise", "plain"))
  wall_tex = _random_texture(rng, kinds=("plain", "noise", "stripes", "plain"))
  accent = _random_texture(rng, kinds=("plain", "noise"))
  ceiling = Texture("plain", (0.85, 0.85, 0.82), (0.8, 0.8, 0.8), 1.0)
  walls = [wall_tex, wall_tex, wall_tex, wall_tex]
  walls[int(rng.integers(4))] = accent
  n_lights = int(rng.integers(1, 3))
  lights = tuple((float(rng.uniform(0.2, 0.8) * sx), float(sy - 0.15),
                  float(rng.uniform(0.2, 0.9) * sz)) for _ in range(n_lights))
  intensity = tuple(float(rng.uniform(0.8, 1.4)) for _ in range(n_lights))
  return Layout(room=(float(sx), float(sy), float(sz)),
                camera_position=tuple(float(c) for c in cam),
                yaw=float(yaw), pitch=float(pitch), roll=float(roll),
                objects=tuple(objects),
                room_textures=(floor_tex, ceiling, *walls),
                lights=lights, light_intensity=intensity,
                ambient=float(rng.uniform(0.15, 0.35)),
                noise_seed=int(rng.integers(2**31)))


def render_example(seed: int, index: int, height: int, width: int,
                   options: RenderOptions = RenderOptions()) -> dict[str, Any]:
  """Scene `index` of the synthetic dataset `seed`, as a source example."""
  layout = sample_layout(seed, index)
  noise_rng = np.random.default_rng([int(seed) & 0xFFFFFFFF, int(index), 1])
  example = render(layout, height, width, options, noise_rng)
  example["name"] = f"synthetic_{seed}_{index:06d}"
  return example


class SyntheticSource:
  """Random-access source of `num` synthetic rooms rendered on the fly."""

  def __init__(self, num: int, seed: int = 0, height: int = 480, width: int = 640,
               options: RenderOptions = RenderOptions()):
    if num < 1:
      raise UserInputError(f"synthetic dataset size must be >= 1, got {num}.")
    self.num, self.seed, self.height, self.width = int(num), int(seed), height, width
    self.options = options

  def __len__(self) -> int:
    return self.num

  def __getitem__(self, index: int) -> dict[str, Any]:
    if not 0 <= index < self.num:
      raise IndexError(index)
    return render_example(self.seed, int(index), self.height, self.width, self.options)

  def __repr__(self) -> str:
    return (f"SyntheticSource(num={self.num}, seed={self.seed}, "
            f"{self.height}x{self.width})")
