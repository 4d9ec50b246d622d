"""The one convolution function every layer calls, and the switch of the
CPU gradient kernels.

`conv2d` computes PyTorch's conv2d (NHWC, HWIO kernel, symmetric zero
padding) the fastest way the backend allows, with the same values:

- 1x1 convolutions as a matrix product (an einsum; on the CPU backend with
  its weight gradient as one `dot_general`, `cpu_conv_grads.conv1x1`);
- on the CPU backend, 3x3 same convolutions through `cpu_conv_grads`
  (custom weight gradients);
- everything else (the RGB stems, everything on GPUs and TPUs) as
  `lax.conv`.

With the CPU kernels on, the 3x3 float32 and bfloat16 convolutions of
training take their forward pass and both gradients from oneDNN through
XLA FFI custom calls where those are built (`onednn.py`;
docs/benchmarks.md). They are on by default; `PERCDEPTH_ONEDNN=0` in the
environment or `onednn_kernels(False)` keeps the pure-JAX kernels.

The same switch selects `cpu_layer_grads`' max pool and resize in
`layers.py`. These kernels are `jax.custom_vjp`s (reverse mode only) and
are on by default when JAX's default backend is the CPU.
`cpu_gradient_kernels(False)` turns them off, for forward-mode
differentiation (`jax.jvp`, `jax.jacfwd`) or to compare against XLA's own
gradients. The choice is made when a function is traced: jitted functions
keep the setting they were traced with.
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

import jax
import jax.numpy as jnp

from percdepth_jax.models import cpu_conv_grads, onednn

_cpu_gradient_kernels: bool | None = None  # None: on when the backend is the CPU
_onednn_kernels: bool = os.environ.get("PERCDEPTH_ONEDNN", "1") != "0"
_ONEDNN_DTYPES = (jnp.float32, jnp.bfloat16)


def cpu_gradient_kernels_enabled() -> bool:
  if _cpu_gradient_kernels is None:
    return jax.default_backend() == "cpu"
  return _cpu_gradient_kernels


@contextlib.contextmanager
def cpu_gradient_kernels(enabled: bool) -> Iterator[None]:
  """Within the block, trace convolutions, max pools and resizes with (True)
  or without (False) the CPU gradient kernels."""
  global _cpu_gradient_kernels
  previous, _cpu_gradient_kernels = _cpu_gradient_kernels, enabled
  try:
    yield
  finally:
    _cpu_gradient_kernels = previous


@contextlib.contextmanager
def onednn_kernels(enabled: bool) -> Iterator[None]:
  """Within the block, trace 3x3 float32 and bfloat16 convolutions with
  (True) or without (False) the oneDNN kernels (where they are built)."""
  global _onednn_kernels
  previous, _onednn_kernels = _onednn_kernels, enabled
  try:
    yield
  finally:
    _onednn_kernels = previous


def conv2d(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int = 1,
           padding: int = 0) -> jax.Array:
  """PyTorch's `F.conv2d(x, w, stride=stride, padding=padding)` in NHWC."""
  size = kernel_KxKxCxD.shape[0]
  if size == 1 and padding == 0:
    if stride > 1:
      x_BxHxWxC = x_BxHxWxC[:, ::stride, ::stride, :]
    if cpu_gradient_kernels_enabled():
      return cpu_conv_grads.conv1x1(x_BxHxWxC, kernel_KxKxCxD[0, 0])
    return jnp.einsum("bhwc,cd->bhwd", x_BxHxWxC, kernel_KxKxCxD[0, 0])
  if (_onednn_kernels and size == 3 and x_BxHxWxC.dtype in _ONEDNN_DTYPES
      and kernel_KxKxCxD.dtype == x_BxHxWxC.dtype and cpu_gradient_kernels_enabled()
      and onednn.available()):
    return cpu_conv_grads.onednn_conv(x_BxHxWxC, kernel_KxKxCxD, stride, padding)
  # The 7x7 RGB stems keep XLA's gradient: an im2col weight gradient was
  # faster only below ~20,000 output pixels (docs/benchmarks.md).
  if cpu_gradient_kernels_enabled() and size == 3 and stride == 1 and padding == 1:
    return cpu_conv_grads.conv3x3_same(x_BxHxWxC, kernel_KxKxCxD)
  return cpu_conv_grads.lax_conv(x_BxHxWxC, kernel_KxKxCxD, stride, padding)
