"""A depth model as one self-contained file: StableHLO (`jax.export`) or ONNX.

Both formats hold the same function, with the weights baked in as constants:

  image_Nx{H}x{W}x3  uint8 RGB pixels (0-255), N free (a symbolic batch)
  -> depth_Nx{H}x{W} float32 metres, clipped to the model's [min_depth, max_depth]

H and W are fixed at export time (multiples of 32); the flip test-time
averaging of `predict_depth` is included unless flip=False. The network
inside runs at `size`: by default (resolution "train") about the pixel
count the model was trained at, the image resized there and the depth
resized back inside the graph, as `predict_depth` does. A JSON sidecar
(`<file>.json`, see `describe`) states this contract for users.

StableHLO runs wherever jax runs (with flatbuffers installed, which jax
needs for deserialization), without this package:

  exported = jax.export.deserialize(open(path, "rb").read())
  depth_NxHxW = exported.call(image_NxHxWx3_uint8)

ONNX goes through jax2onnx (the `onnx` extra) and runs in onnxruntime:

  session = onnxruntime.InferenceSession(path)
  depth_NxHxW = session.run(["depth"], {"image": image_NxHxWx3_uint8})[0]
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from percdepth_jax.compare import relative_max_error
from percdepth_jax.errors import UserInputError
from percdepth_jax.inference import NATIVE, Resolution, network_metres, run_size
from percdepth_jax.models import INPUT_MULTIPLE, DepthNet, convolution

INPUT_NAME = "image"
OUTPUT_NAME = "depth"
# Lowered for CPU and CUDA by default, so an artifact exported on a laptop
# also runs on a GPU machine (jax picks the lowering at call time).
DEFAULT_PLATFORMS = ("cpu", "cuda")
PLATFORMS = ("cpu", "cuda", "rocm", "tpu")  # what jax.export can lower for
ONNX_OPSET = 23
ONNX_INSTALL = 'pip install -e ".[onnx]"'


def check_size(height: int, width: int) -> None:
  """Refuses export sizes the network cannot take unchanged."""
  if (height < INPUT_MULTIPLE or width < INPUT_MULTIPLE
      or height % INPUT_MULTIPLE or width % INPUT_MULTIPLE):
    raise UserInputError(
        f"export size {height}x{width}: height and width must be positive "
        f"multiples of {INPUT_MULTIPLE} (for example 480x640 or 224x320); the "
        "exported model takes images of exactly this size, so resize images "
        "to it before calling the model.")


def check_platforms(platforms: tuple[str, ...]) -> None:
  """jax.export accepts any name silently; a typo would give a useless file."""
  unknown = [p for p in platforms if p not in PLATFORMS]
  if not platforms or unknown:
    raise UserInputError(f"platforms {','.join(platforms) or '(none)'}: expected "
                         f"one or more of {','.join(PLATFORMS)}.")


def _resize_matrix(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) matrix of 1-D `jax.image.resize(..., "linear")`.

  Built by resizing an identity, so it holds exactly the weights
  `predict_depth` resizes with.
  """
  eye = jnp.eye(in_size, dtype=jnp.float32)
  return np.asarray(jax.image.resize(eye, (out_size, in_size), "linear"))


def network_input_size(model: DepthNet, height: int, width: int,
                       resolution: Resolution) -> tuple[int, int]:
  """Where the exported network runs for height x width images."""
  check_size(height, width)
  return run_size(model, height, width, resolution)


def depth_function(model: DepthNet, height: int, width: int, *,
                   flip: bool = True, resolution: Resolution = NATIVE
                   ) -> Callable[[jax.Array], jax.Array]:
  """uint8 `image_NxHxWx3` -> float32 metres `depth_NxHxW`, weights as constants.

  `inference.depth_metres` at a multiple-of-32 size: the network (at
  `network_input_size`), metres, and the flip average. The model's state is
  split off once and closed over, so tracing embeds every parameter and
  BatchNorm statistic in the graph and the exported file needs nothing
  else. Resizing (the image to the network's size, its output back to
  H x W) is two matrix products each, holding `jax.image.resize`'s weights:
  jax2onnx's resize cannot take a symbolic batch, and einsum exports
  everywhere.
  """
  if not isinstance(model, DepthNet):
    raise UserInputError(f"export needs a DepthNet, got {type(model).__name__}.")
  net_h, net_w = network_input_size(model, height, width, resolution)
  graphdef, state = nnx.split(model)
  stride = model.config.output_stride
  out_h, out_w = net_h // stride, net_w // stride
  resize_in = (net_h, net_w) != (height, width)
  resize_out = (out_h, out_w) != (height, width)
  if resize_in:
    rows_IxH, cols_JxW = _resize_matrix(height, net_h), _resize_matrix(width, net_w)
  if resize_out:
    rows_HxI, cols_WxJ = _resize_matrix(out_h, height), _resize_matrix(out_w, width)

  def depth_fn(image_NxHxWx3: jax.Array) -> jax.Array:
    net = nnx.merge(graphdef, state)
    x = image_NxHxWx3.astype(jnp.float32)
    if resize_in:
      x = jnp.einsum("ih,nhwc->niwc", rows_IxH, x)
      x = jnp.einsum("jw,niwc->nijc", cols_JxW, x)
    # The plain formulations (no CPU gradient kernels): the exported graph
    # is forward-only and the same whichever backend traced it.
    with convolution.cpu_gradient_kernels(False):
      depth_NxIxJ = network_metres(net, x, flip, one_batch=False)[..., 0]
    if not resize_out:
      return depth_NxIxJ
    depth_NxHxJ = jnp.einsum("hi,nij->nhj", rows_HxI, depth_NxIxJ)
    return jnp.einsum("wj,nhj->nhw", cols_WxJ, depth_NxHxJ)

  return depth_fn


def input_spec(height: int, width: int, batch: str = "N") -> jax.ShapeDtypeStruct:
  """The exported input: uint8 `batch x height x width x 3`, batch symbolic."""
  shape = jax.export.symbolic_shape(f"{batch}, {height}, {width}, 3")
  return jax.ShapeDtypeStruct(shape, jnp.uint8)


def export_stablehlo(model: DepthNet, height: int, width: int, *,
                     flip: bool = True,
                     platforms: tuple[str, ...] = DEFAULT_PLATFORMS,
                     resolution: Resolution = NATIVE) -> bytes:
  """Serialized `jax.export.Exported` of `depth_function` (one file's bytes)."""
  check_size(height, width)
  check_platforms(platforms)
  if importlib.util.find_spec("flatbuffers") is None:
    # jax needs it to (de)serialize an Exported but does not depend on it.
    raise UserInputError("StableHLO export needs the flatbuffers package: "
                         "pip install flatbuffers")
  fn = jax.jit(depth_function(model, height, width, flip=flip, resolution=resolution))
  exported = jax.export.export(fn, platforms=platforms)(input_spec(height, width))
  return bytes(exported.serialize())


def require_onnx() -> None:
  """UserInputError naming the install command if the onnx extra is missing."""
  missing = [name for name in ("jax2onnx", "onnx", "onnxruntime")
             if importlib.util.find_spec(name) is None]
  if missing:
    raise UserInputError(
        f"ONNX export needs {', '.join(missing)} (the onnx extra): "
        f"{ONNX_INSTALL}")


def export_onnx(model: DepthNet, height: int, width: int, *,
                flip: bool = True, resolution: Resolution = NATIVE) -> Any:
  """`depth_function` as a checked `onnx.ModelProto` (dynamic batch "N")."""
  check_size(height, width)
  require_onnx()
  import onnx
  from jax2onnx import to_onnx

  proto = to_onnx(depth_function(model, height, width, flip=flip, resolution=resolution),
                  [input_spec(height, width)],
                  model_name="percdepth_jax_depth", opset=ONNX_OPSET,
                  input_names=[INPUT_NAME], output_names=[OUTPUT_NAME])
  # jax2onnx leaves stale intermediate shape annotations; recomputing them
  # with strict inference makes the model pass onnx.checker (docs/design.md,
  # 'Implementation notes').
  del proto.graph.value_info[:]
  proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
  onnx.checker.check_model(proto, full_check=True)
  return proto


def onnx_session(model_bytes_or_path: Any) -> Any:
  """A CPU onnxruntime session (for checks and tests)."""
  import onnxruntime
  return onnxruntime.InferenceSession(model_bytes_or_path,
                                      providers=["CPUExecutionProvider"])


def check_onnx(model: DepthNet, model_bytes: bytes, height: int, width: int, *,
               flip: bool, batch: int = 2, seed: int = 0,
               resolution: Resolution = NATIVE) -> float:
  """Relative max error of onnxruntime against JAX on random images.

  Converters can drop an attribute without failing (docs/design.md,
  'Implementation notes'), so every ONNX export is run once and compared;
  batch 2 exercises the free batch.
  """
  image = np.random.RandomState(seed).randint(
      0, 256, (batch, height, width, 3)).astype(np.uint8)
  reference = jax.jit(depth_function(model, height, width, flip=flip,
                                     resolution=resolution))(image)
  (depth,) = onnx_session(model_bytes).run([OUTPUT_NAME], {INPUT_NAME: image})
  return relative_max_error(depth, np.asarray(reference))


def _versions(fmt: str) -> dict[str, str]:
  """Installed versions of what wrote the file (a source checkout may lack
  percdepth-jax's own metadata: it is then left out)."""
  names = ["percdepth-jax", "jax", "jaxlib", "flax"]
  names += ["jax2onnx", "onnx"] if fmt == "onnx" else []
  versions = {}
  for name in names:
    try:
      versions[name] = importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      pass
  return versions


def describe(fmt: str, model: DepthNet, height: int, width: int, *, flip: bool,
             checkpoint: str, step: int | None, file_name: str,
             **extra: Any) -> dict[str, Any]:
  """The sidecar JSON: what goes in, what comes out, where it came from."""
  config = model.config
  usage = {
      "stablehlo": ("exported = jax.export.deserialize(open(path, 'rb').read()); "
                    "depth = exported.call(image)"),
      "onnx": ("session = onnxruntime.InferenceSession(path); "
               f"depth = session.run(['{OUTPUT_NAME}'], {{'{INPUT_NAME}': image}})[0]"),
  }[fmt]
  return {
      "format": fmt,
      "file": file_name,
      "inputs": [{"name": INPUT_NAME, "shape": ["N", height, width, 3],
                  "dtype": "uint8", "layout": "NHWC",
                  "description": "RGB pixels 0-255; N is free"}],
      "outputs": [{"name": OUTPUT_NAME, "shape": ["N", height, width],
                   "dtype": "float32", "units": "metres",
                   "range": [config.min_depth, config.max_depth]}],
      "flip": flip,
      "checkpoint": checkpoint,
      "step": step,
      "model_config": config.to_dict(),
      "exported_with": _versions(fmt),
      **extra,
      "usage": usage,
  }
