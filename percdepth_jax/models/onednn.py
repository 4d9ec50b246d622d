"""oneDNN convolution kernels on the CPU backend, as XLA FFI custom calls.

XLA:CPU has no direct kernel for a convolution's weight gradient: it runs a
convolution whose window is the whole feature map, or (our
`cpu_conv_grads`) a matrix product over nine shifted copies of the output
gradient that must first be written to memory. oneDNN's backward-weights
primitive reads the activations in place, and its forward and
backward-data primitives beat XLA's on the decoder's 3x3 convolutions
(docs/benchmarks.md). `onednn_conv.cc` wraps the three as XLA FFI handlers
(primitives cached per shape, a scratchpad per call so that XLA may run
several at once), and two more compute the wide float32 3x3 convolutions
by Winograd's F(2x2, 3x3) with oneDNN's matrix product (forward, input
gradient as the forward of the turned kernel, weight gradient), 1.2-1.7x
faster than the direct primitives on the decoder's convolutions
(`winograd_suits`). This module compiles that file once per machine with g++
against the `onednn-cpu-gomp` wheels (dependencies of the package on Linux
x86-64), keeps the library under `~/.cache/percdepth_jax` (or
`$PERCDEPTH_KERNEL_CACHE`), keyed by the source, jaxlib, oneDNN and the flags, and
registers it with JAX. Where it cannot be built (no compiler, another
platform, no oneDNN) it logs why once, `available()` is False, and
`models/convolution.py` keeps its pure-JAX kernels, which compute the same
values. The kernels are on by default; `PERCDEPTH_ONEDNN=0` or
`convolution.onednn_kernels(False)` switches them off.
"""

from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import tempfile

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np

_SOURCE = pathlib.Path(__file__).with_name("onednn_conv.cc")
_WEIGHT_GRAD = "percdepth_onednn_conv_weight_grad"
_INPUT_GRAD = "percdepth_onednn_conv_input_grad"
_FORWARD = "percdepth_onednn_conv_forward"
_WINOGRAD = "percdepth_onednn_winograd_forward"
_WINOGRAD_WEIGHT_GRAD = "percdepth_onednn_winograd_weight_grad"
# PERCDEPTH_WINOGRAD=0: every convolution through oneDNN's direct primitives.
_winograd = os.environ.get("PERCDEPTH_WINOGRAD", "1") != "0"
_log = logging.getLogger(__name__)


def _cache_dir() -> pathlib.Path:
  if "PERCDEPTH_KERNEL_CACHE" in os.environ:
    return pathlib.Path(os.environ["PERCDEPTH_KERNEL_CACHE"])
  base = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(base) / "percdepth_jax"


def _onednn_paths() -> tuple[pathlib.Path, pathlib.Path]:
  """(include dir, lib dir) of the oneDNN wheels in this environment."""
  prefix = pathlib.Path(sys.prefix)
  include, lib = prefix / "include", prefix / "lib"
  if not (include / "oneapi" / "dnnl" / "dnnl.hpp").is_file():
    raise RuntimeError(f"no oneDNN headers under {include} "
                       "(pip install onednn-devel-cpu-gomp==2023.2.0)")
  if not (lib / "libdnnl.so").exists():
    raise RuntimeError(f"no libdnnl.so under {lib} (pip install onednn-cpu-gomp==2023.2.0)")
  return include, lib


def _build() -> pathlib.Path:
  """The shared library for this source, jaxlib and oneDNN, built if missing."""
  if sys.platform != "linux" or platform.machine() != "x86_64":
    raise RuntimeError(f"built for Linux x86-64 only, not {sys.platform} {platform.machine()}")
  compiler = os.environ.get("CXX") or shutil.which("g++")
  if not compiler:
    raise RuntimeError("no C++ compiler (g++ or $CXX) found")
  include, lib = _onednn_paths()
  # OpenMP: the Winograd transforms' loops, on the libgomp oneDNN runs on.
  flags = ["-O3", "-std=c++17", "-shared", "-fPIC", "-fopenmp", "-w"]
  key = hashlib.sha256(_SOURCE.read_bytes() + jaxlib.__version__.encode()
                       + str(lib.resolve()).encode() + " ".join(flags).encode()
                       ).hexdigest()[:16]
  target = _cache_dir() / f"onednn_conv-{key}.so"
  if target.is_file():
    return target
  target.parent.mkdir(parents=True, exist_ok=True)
  # Build beside the target and rename: processes that build at the same
  # time (test workers, hosts sharing a home) never load a half-written file.
  fd, partial = tempfile.mkstemp(suffix=".so", dir=target.parent)
  os.close(fd)
  command = [compiler, *flags, f"-I{jax.ffi.include_dir()}", f"-I{include}", str(_SOURCE),
             "-o", partial, f"-L{lib}", "-ldnnl", f"-Wl,-rpath,{lib}"]
  print(f"compiling the oneDNN convolution kernels into {target} (once per machine)",
        file=sys.stderr, flush=True)
  try:
    result = subprocess.run(command, capture_output=True, text=True)
    if result.returncode != 0:
      raise RuntimeError(f"{' '.join(command)} failed:\n{result.stderr[-2000:]}")
    os.replace(partial, target)
  finally:
    if os.path.exists(partial):
      os.remove(partial)
  return target


@functools.cache
def available() -> bool:
  """Whether the oneDNN kernels are built and registered (tried once)."""
  try:
    _register(_build())
  except (RuntimeError, OSError) as error:
    _log.warning("oneDNN convolution kernels unavailable, using the pure-JAX ones: %s", error)
    return False
  return True


@functools.cache
def _register(path: pathlib.Path) -> None:
  """Loads the library and registers its handlers with XLA (once per path)."""
  library = ctypes.CDLL(str(path))
  for name, symbol in ((_WEIGHT_GRAD, library.PercdepthConvWeightGrad),
                       (_INPUT_GRAD, library.PercdepthConvInputGrad),
                       (_FORWARD, library.PercdepthConvForward),
                       (_WINOGRAD, library.PercdepthWinogradForward),
                       (_WINOGRAD_WEIGHT_GRAD, library.PercdepthWinogradWeightGrad)):
    jax.ffi.register_ffi_target(name, jax.ffi.pycapsule(symbol), platform="cpu")


def _output_size(n: int, size: int, stride: int, padding: int) -> int:
  return (n + 2 * padding - size) // stride + 1


def _covered_size(n: int, size: int, stride: int, padding: int) -> int:
  """How many of n input rows (columns) the windows reach: fewer where a
  stride leaves the last ones out (PyTorch skips them)."""
  return min(n, (_output_size(n, size, stride, padding) - 1) * stride + size - padding)


def _covered(x_BxHxWxC: jax.Array, size: int, stride: int, padding: int) -> jax.Array:
  """x without the bottom rows and right columns that no window reaches:
  oneDNN's primitives describe them with a negative right padding, on
  which its backward-weights primitive writes out of bounds."""
  _, h, w, _ = x_BxHxWxC.shape
  return x_BxHxWxC[:, :_covered_size(h, size, stride, padding),
                   :_covered_size(w, size, stride, padding), :]


def conv_weight_grad(x_BxHxWxC: jax.Array, dy_BxHoxWoxD: jax.Array, size: int, stride: int,
                     padding: int) -> jax.Array:
  """The weight gradient (size x size x C x D, HWIO) of PyTorch's conv2d
  with symmetric zero padding, in x's dtype (float32 or bfloat16); needs
  `available()`."""
  c, d = x_BxHxWxC.shape[-1], dy_BxHoxWoxD.shape[-1]
  kernel = jax.ShapeDtypeStruct((size, size, c, d), x_BxHxWxC.dtype)
  if (dy_BxHoxWoxD.shape[1:3] == x_BxHxWxC.shape[1:3]
      and winograd_suits(x_BxHxWxC, kernel, stride, padding)):
    call = jax.ffi.ffi_call(_WINOGRAD_WEIGHT_GRAD, kernel)
    return call(x_BxHxWxC, dy_BxHoxWoxD.astype(x_BxHxWxC.dtype))
  x_BxHxWxC = _covered(x_BxHxWxC, size, stride, padding)
  call = jax.ffi.ffi_call(_WEIGHT_GRAD, jax.ShapeDtypeStruct((size, size, c, d), x_BxHxWxC.dtype))
  return call(x_BxHxWxC, dy_BxHoxWoxD.astype(x_BxHxWxC.dtype),
              stride=np.int64(stride), padding=np.int64(padding))


def conv_input_grad(dy_BxHoxWoxD: jax.Array, kernel_KxKxCxD: jax.Array, input_shape,
                    stride: int, padding: int) -> jax.Array:
  """The input gradient (input_shape, NHWC) of PyTorch's conv2d, in the
  kernel's dtype."""
  b, h, w, c = input_shape
  size = kernel_KxKxCxD.shape[0]
  # With stride 1 and padding 1 the input gradient of a 3x3 convolution is
  # the same convolution of dy with the kernel turned by 180 degrees and its
  # channels swapped, which the Winograd kernel computes (reading the kernel
  # turned) where it suits.
  if dy_BxHoxWoxD.shape[1:3] == (h, w) and winograd_suits(
      dy_BxHoxWoxD.astype(kernel_KxKxCxD.dtype), kernel_KxKxCxD, stride, padding):
    call = jax.ffi.ffi_call(_WINOGRAD, jax.ShapeDtypeStruct(input_shape, kernel_KxKxCxD.dtype))
    return call(dy_BxHoxWoxD.astype(kernel_KxKxCxD.dtype), kernel_KxKxCxD, turned=np.int64(1))
  covered = (b, _covered_size(h, size, stride, padding),
             _covered_size(w, size, stride, padding), c)
  call = jax.ffi.ffi_call(_INPUT_GRAD, jax.ShapeDtypeStruct(covered, kernel_KxKxCxD.dtype))
  dx = call(dy_BxHoxWoxD.astype(kernel_KxKxCxD.dtype), kernel_KxKxCxD,
            stride=np.int64(stride), padding=np.int64(padding))
  # Rows and columns that no window reaches get no gradient.
  return jnp.pad(dx, ((0, 0), (0, h - covered[1]), (0, w - covered[2]), (0, 0)))


def winograd_suits(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int,
                   padding: int) -> bool:
  """Whether this convolution (its forward pass and both gradients) runs by
  Winograd's F(2x2, 3x3): float32, 3x3, stride 1, padding 1, and channels for which it
  beat oneDNN's direct convolution (docs/benchmarks.md: 1.2-1.7x on the
  decoder's convolutions; not with 32 or 64 channels on either side).
  `PERCDEPTH_WINOGRAD=0` in the environment turns it off."""
  k, _, c, d = kernel_KxKxCxD.shape
  return (_winograd and k == 3 and stride == 1 and padding == 1
          and x_BxHxWxC.dtype == jnp.float32 and kernel_KxKxCxD.dtype == jnp.float32
          and min(c, d) >= 64 and max(c, d) >= 128)


def conv_forward(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int,
                 padding: int) -> jax.Array:
  """PyTorch's conv2d (NHWC, HWIO, symmetric zero padding), in x's dtype:
  oneDNN's direct convolution, or the Winograd kernel where it
  `winograd_suits` (the same sums, in another order: within a few 1e-6 of
  the largest output)."""
  b, h, w, _ = x_BxHxWxC.shape
  k, d = kernel_KxKxCxD.shape[0], kernel_KxKxCxD.shape[-1]
  shape = (b, _output_size(h, k, stride, padding), _output_size(w, k, stride, padding), d)
  kernel_KxKxCxD = kernel_KxKxCxD.astype(x_BxHxWxC.dtype)
  if winograd_suits(x_BxHxWxC, kernel_KxKxCxD, stride, padding):
    call = jax.ffi.ffi_call(_WINOGRAD, jax.ShapeDtypeStruct(shape, x_BxHxWxC.dtype))
    return call(x_BxHxWxC, kernel_KxKxCxD, turned=np.int64(0))
  x_BxHxWxC = _covered(x_BxHxWxC, k, stride, padding)
  call = jax.ffi.ffi_call(_FORWARD, jax.ShapeDtypeStruct(shape, x_BxHxWxC.dtype))
  return call(x_BxHxWxC, kernel_KxKxCxD, stride=np.int64(stride), padding=np.int64(padding))
