"""Training augmentation (paper): flip p=0.5, RGB channel permutation p=0.25,
plus optional random scale + crop to a fixed HxW.

All randomness comes from the `np.random.Generator` passed in; the pipeline
derives it from (seed, position in the stream), so runs repeat and resume
exactly.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import cv2
import numpy as np
from PIL import Image


@dataclasses.dataclass(frozen=True)
class AugmentConfig:
  flip_prob: float = 0.5
  channel_permute_prob: float = 0.25
  # Output size (H, W) by random crop; None keeps the source size.
  size: tuple[int, int] | None = None
  # Random zoom before the crop, relative to the smallest scale that covers
  # `size` (1.0 = native resolution when the source is large enough).
  scale_range: tuple[float, float] = (1.0, 1.0)


def _resize(example: dict[str, Any], scale: float) -> dict[str, Any]:
  h, w = example["depth"].shape
  new_h, new_w = max(int(round(h * scale)), 1), max(int(round(w * scale)), 1)
  out = dict(example)
  out["image"] = np.asarray(Image.fromarray(example["image"]).resize(
      (new_w, new_h), Image.BILINEAR))
  # Nearest for depth: never blend valid depth with holes or across edges.
  depth = np.asarray(Image.fromarray(example["depth"], "F").resize(
      (new_w, new_h), Image.NEAREST))
  out["depth"] = depth
  out["valid"] = depth > 0
  if "intrinsics" in example:
    sx, sy = new_w / w, new_h / h
    fx, fy, cx, cy = example["intrinsics"]
    out["intrinsics"] = np.array([fx * sx, fy * sy, (cx + 0.5) * sx - 0.5,
                                  (cy + 0.5) * sy - 0.5], np.float32)
  return out


def random_crop(example: dict[str, Any], size: tuple[int, int],
                rng: np.random.Generator,
                scale_range: tuple[float, float] = (1.0, 1.0)) -> dict[str, Any]:
  """Random zoom then random HxW crop of image, depth, valid (+ intrinsics)."""
  th, tw = size
  h, w = example["depth"].shape
  cover = max(th / h, tw / w)
  scale = max(cover, 1.0)  # upscale only when the source is too small
  if tuple(scale_range) != (1.0, 1.0):
    scale = max(scale * float(rng.uniform(*scale_range)), cover)
  if scale != 1.0:
    example = _resize(example, scale)
    h, w = example["depth"].shape
  y0 = int(rng.integers(0, h - th + 1))
  x0 = int(rng.integers(0, w - tw + 1))
  out = dict(example)
  out["image"] = example["image"][y0:y0 + th, x0:x0 + tw]
  out["depth"] = example["depth"][y0:y0 + th, x0:x0 + tw]
  out["valid"] = example["valid"][y0:y0 + th, x0:x0 + tw]
  if "intrinsics" in example:
    fx, fy, cx, cy = example["intrinsics"]
    out["intrinsics"] = np.array([fx, fy, cx - x0, cy - y0], np.float32)
  return out


def hflip(example: dict[str, Any]) -> dict[str, Any]:
  """Mirror image, depth and valid together (cx mirrors too). Returns views."""
  out = dict(example)
  for key in ("image", "depth", "valid"):
    out[key] = example[key][:, ::-1]
  if "intrinsics" in example:
    fx, fy, cx, cy = example["intrinsics"]
    w = example["depth"].shape[1]
    out["intrinsics"] = np.array([fx, fy, w - 1 - cx, cy], np.float32)
  return out


def _mirror(array_HxW: np.ndarray) -> np.ndarray:
  """Contiguous left-right mirrored copy of a 2-D array."""
  if array_HxW.dtype == bool:
    return cv2.flip(array_HxW.view(np.uint8), 1).view(bool)
  if array_HxW.dtype in (np.uint8, np.uint16, np.float32, np.float64):
    return cv2.flip(array_HxW, 1)
  return np.ascontiguousarray(array_HxW[:, ::-1])


def _flip_permute(image_HxWx3: np.ndarray, flip: bool, order: np.ndarray) -> np.ndarray:
  """Contiguous flipped and/or channel-permuted copy of a uint8 image.

  cv2.flip copies 5-10x faster than NumPy's strided copies. Mirroring the
  rows as flat bytes mirrors the pixels and also reverses their channels,
  so a channel reversal costs one or two flips (cv2.cvtColor would start
  OpenCV's worker threads); the other four permutations (1 image in 6 on
  average) copy channel by channel.
  """
  h, w, _ = image_HxWx3.shape
  order = [int(c) for c in order]
  if order == [2, 1, 0]:
    # Without a flip, mirror the pixels first so that the byte flip undoes it.
    image = np.ascontiguousarray(image_HxWx3 if flip else cv2.flip(image_HxWx3, 1))
    return cv2.flip(image.reshape(h, w * 3), 1).reshape(h, w, 3)
  image = cv2.flip(image_HxWx3, 1) if flip else image_HxWx3
  if order == [0, 1, 2]:
    return image if flip else np.array(image, order="C")
  out = np.empty((h, w, 3), np.uint8)  # fancy indexing would not be C-ordered
  for c in range(3):
    out[..., c] = image[..., order[c]]
  return out


def augment(example: dict[str, Any], rng: np.random.Generator,
            config: AugmentConfig = AugmentConfig()) -> dict[str, Any]:
  """Paper augmentation; the random draws are always made in the same order.

  Returns contiguous arrays (cheap to batch).
  """
  u_flip, u_perm = rng.random(), rng.random()
  perm = rng.permutation(3)
  if config.size is not None:
    example = random_crop(example, config.size, rng, config.scale_range)
  flip = u_flip < config.flip_prob
  order = perm if u_perm < config.channel_permute_prob else np.arange(3)
  out = hflip(example) if flip else dict(example)
  if flip or (order != np.arange(3)).any():
    out["image"] = _flip_permute(example["image"], flip, order)
  else:
    out["image"] = np.ascontiguousarray(example["image"])
  if flip:  # hflip's views would be copied by NumPy's slower strided path
    out["depth"] = _mirror(example["depth"])
    out["valid"] = _mirror(example["valid"])
  out["depth"] = np.ascontiguousarray(out["depth"])
  out["valid"] = np.ascontiguousarray(out["valid"])
  return out
