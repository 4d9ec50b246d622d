"""Shared test helpers: paths, NHWC <-> NCHW for comparisons with PyTorch, and
stand-in files for end-to-end tests (small RGB-D data in the formats users
bring, built from the real frames, and random-init PyTorch weights)."""

from __future__ import annotations

import io
import os
import pathlib
import subprocess
import sys
import zipfile

import numpy as np
import pytest
from PIL import Image

from percdepth_jax.compare import relative_max_error  # noqa: F401
from percdepth_jax.models import onednn

REPO = pathlib.Path(__file__).resolve().parents[1]
REAL_RGBD = REPO.parent / "shared" / "data" / "real_rgbd"

# Tests of the oneDNN kernels (models/onednn.py) skip where they cannot be
# built; CI sets PERCDEPTH_REQUIRE_ONEDNN=1, and there they fail instead.
needs_onednn = pytest.mark.skipif(
    not onednn.available() and not os.environ.get("PERCDEPTH_REQUIRE_ONEDNN"),
    reason="oneDNN kernels not built on this machine (no g++ or no oneDNN wheels)")


def nchw(x_nhwc):
  """NHWC NumPy -> an NCHW torch tensor (PyTorch's layout)."""
  import torch
  return torch.from_numpy(np.array(np.transpose(x_nhwc, (0, 3, 1, 2))))


def nhwc(x_nchw) -> np.ndarray:
  """An NCHW torch tensor -> NHWC NumPy."""
  return np.transpose(x_nchw.detach().numpy(), (0, 2, 3, 1))


def real_frames(height: int, width: int, dataset: str = "nyu"
                ) -> list[tuple[np.ndarray, np.ndarray, list[float]]]:
  """The real frames of real_rgbd/<dataset> resized to height x width:
  (uint8 RGB, uint16 depth in mm with 0 = no measurement, [fx, fy, cx, cy]
  scaled to the new size) triples."""
  root = REAL_RGBD / dataset
  rows = (root / "manifest.csv").read_text().splitlines()[1:]
  frames = []
  for row in rows:
    rgb_name, depth_name, scale, *camera = row.split(",")
    rgb = Image.open(root / rgb_name).convert("RGB")
    sx, sy = width / rgb.width, height / rgb.height
    rgb = rgb.resize((width, height), Image.BILINEAR)
    stored = np.asarray(Image.open(root / depth_name)).astype(np.float64)
    depth_mm = stored / float(scale) * 1000.0
    # Nearest keeps holes as holes (no blending of 0 into measured depth).
    depth = Image.fromarray(depth_mm.astype(np.uint16)).resize((width, height), Image.NEAREST)
    fx, fy, cx, cy = (float(v) for v in camera)
    frames.append((np.asarray(rgb), np.asarray(depth), [fx * sx, fy * sy, cx * sx, cy * sy]))
  return frames


def nyu_images(height: int, width: int) -> np.ndarray:
  """The three real NYU RGB frames at height x width: uint8, 3 x H x W x 3."""
  return np.stack([rgb for rgb, _, _ in real_frames(height, width)])


def save_toy_model(path: pathlib.Path, train_resolution: tuple[int, int] | None = None,
                   **config_fields) -> pathlib.Path:
  """A toy DepthNet (densenet_tiny) saved as a model directory. Random
  BatchNorm statistics and a conv3 bias of 4 (2.5 m in DepthNorm) keep its
  depth maps varied and inside [0.1, 10] m, so that crops, clipping and
  export errors show in the numbers. Without a train_resolution it records
  none, and predictions run at the images' own size."""
  from flax import nnx
  from percdepth_jax import model_io
  from percdepth_jax.models import DepthNet, ModelConfig
  from percdepth_jax.models.layers import BatchNorm2d
  config = ModelConfig(encoder="densenet_tiny", **config_fields)
  model = DepthNet(config, rngs=nnx.Rngs(0))
  rng = np.random.RandomState(1)
  for _, module in nnx.iter_modules(model):
    if isinstance(module, BatchNorm2d):
      n = module.mean[...].shape[0]
      module.mean[...] = rng.normal(0.0, 0.5, n).astype(np.float32)
      module.var[...] = rng.uniform(0.5, 2.0, n).astype(np.float32)
  model.decoder.conv3.bias[...] = np.full((1,), 4.0, np.float32)
  model_io.save_model(model, path, kind="depth_net", config=config.to_dict(),
                      train_resolution=train_resolution)
  return path


def _encode(array: np.ndarray, fmt: str) -> bytes:
  buf = io.BytesIO()
  Image.fromarray(array).save(buf, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
  return buf.getvalue()


def make_nyu_zip(path: pathlib.Path, height: int, width: int) -> pathlib.Path:
  """A nyu_data.zip in DenseDepth's exact layout from the real NYU frames:
  data/nyu2_train.csv rows of JPEG + 8-bit depth PNG (v = metres / 10 * 255),
  data/nyu2_test.csv rows of PNG + 16-bit depth PNG in mm."""
  frames = real_frames(height, width)
  with zipfile.ZipFile(path, "w") as zf:
    train_rows, test_rows = [], []
    for i, (rgb, depth_mm, _) in enumerate(frames * 2):  # 6 training rows
      scene = f"data/nyu2_train/living_room_{i // 3:04d}_out"
      depth8 = np.clip(np.round(depth_mm / 10000.0 * 255.0), 0, 255).astype(np.uint8)
      zf.writestr(f"{scene}/{i}.jpg", _encode(rgb, "JPEG"))
      zf.writestr(f"{scene}/{i}.png", _encode(depth8, "PNG"))
      train_rows.append(f"{scene}/{i}.jpg,{scene}/{i}.png")
    for i, (rgb, depth_mm, _) in enumerate(frames):
      zf.writestr(f"data/nyu2_test/{i:05d}_colors.png", _encode(rgb, "PNG"))
      zf.writestr(f"data/nyu2_test/{i:05d}_depth.png", _encode(depth_mm, "PNG"))
      test_rows.append(f"data/nyu2_test/{i:05d}_colors.png,data/nyu2_test/{i:05d}_depth.png")
    zf.writestr("data/nyu2_train.csv", "\n".join(train_rows) + "\n")
    zf.writestr("data/nyu2_test.csv", "\n".join(test_rows) + "\n")
  return path


def make_rgbd_folder(root: pathlib.Path, height: int, width: int,
                     dataset: str = "nyu") -> pathlib.Path:
  """An RGB-D folder (manifest.csv rgb,depth,depth_scale,fx,fy,cx,cy; JPEG RGB,
  16-bit PNG depth in mm) of the real frames at height x width; returns the
  manifest's path."""
  (root / "rgb").mkdir(parents=True)
  (root / "depth").mkdir()
  rows = ["rgb,depth,depth_scale,fx,fy,cx,cy"]
  for i, (rgb, depth_mm, camera) in enumerate(real_frames(height, width, dataset)):
    Image.fromarray(rgb).save(root / "rgb" / f"{i:05d}.jpg", quality=95)
    Image.fromarray(depth_mm).save(root / "depth" / f"{i:05d}.png")
    rows.append(f"rgb/{i:05d}.jpg,depth/{i:05d}.png,1000,"
                + ",".join(f"{v:.4f}" for v in camera))
  manifest = root / "manifest.csv"
  manifest.write_text("\n".join(rows) + "\n")
  return manifest


def save_torchvision(arch: str, path: pathlib.Path, seed: int = 0) -> pathlib.Path:
  """A random-init torchvision ImageNet network saved as its state dict, as
  `torch.save(tv.models.<arch>(...).state_dict(), path)` does."""
  import torch
  import torchvision
  torch.manual_seed(seed)
  torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
  return path


def env() -> dict[str, str]:
  """The environment of a user's shell on this machine (JAX on the CPU)."""
  out = dict(os.environ)
  out["JAX_PLATFORMS"] = "cpu"
  out.pop("XLA_FLAGS", None)
  return out


def run(command: str, cwd: pathlib.Path, *, expect: int = 0, timeout: int = 900
        ) -> subprocess.CompletedProcess:
  """Runs a shell-style command line as a user would (`python` is this
  interpreter, `percdepth` the installed command as this interpreter's
  `python -m percdepth_jax`; tests/test_wheel.py runs the console script
  itself); fails the test with the command's output on another exit code."""
  argv = command.split()
  if argv[0] == "python":
    argv[0] = sys.executable
  elif argv[0] == "percdepth":
    argv[:1] = [sys.executable, "-m", "percdepth_jax"]
  result = subprocess.run(argv, cwd=cwd, env=env(), capture_output=True, text=True,
                          timeout=timeout)
  assert result.returncode == expect, (
      f"{command}\nexit {result.returncode}\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}")
  return result


def link_repo_dirs(project: pathlib.Path) -> None:
  """A user's working directory: scripts/ and configs/ as in the repository,
  so README commands run verbatim with their relative paths."""
  for name in ("scripts", "configs"):
    (project / name).symlink_to(REPO / name)


def block_import(monkeypatch, module: str) -> None:
  """Makes `import <module>` fail as on a machine without it installed."""
  import builtins
  real_import = builtins.__import__

  def blocked(name, *args, **kwargs):
    if name == module:
      raise ImportError(f"No module named {module!r}")
    return real_import(name, *args, **kwargs)

  monkeypatch.setattr(builtins, "__import__", blocked)
