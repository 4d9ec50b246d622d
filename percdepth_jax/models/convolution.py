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

With the CPU kernels on, the 3x3 float32 and bfloat16 convolutions take
their forward pass (training and inference) and both gradients from oneDNN
through XLA FFI custom calls where those are built (`onednn.py`;
docs/benchmarks.md); the wide float32 ones run by Winograd's F(2x2, 3x3)
(`onednn.winograd_suits`). They are on by default; `PERCDEPTH_ONEDNN=0` in the
environment or `onednn_kernels(False)` keeps the pure-JAX kernels.

The same switch selects `cpu_layer_grads`' max pool and resize in
`layers.py`. These kernels are `jax.custom_vjp`s (reverse mode only). By
default the choice is made where the program is lowered, not where it is
traced (`on_cpu`, `jax.lax.platform_dependent`): a program lowered for the
CPU runs the kernels, the same traced program lowered for a GPU or TPU
runs XLA's own convolutions and gradients (cuDNN's), so a train step traced
on a CPU host compiles ahead of time for an H100, and `jax.export` for
("cpu", "cuda") carries both (a program with the oneDNN calls in it needs
`jax.export.DisabledSafetyCheck.custom_call` for their targets, as any FFI
call does). `cpu_gradient_kernels(False)` turns the
kernels off everywhere, for forward-mode differentiation (`jax.jvp`,
`jax.jacfwd`) or to compare against XLA's own gradients;
`cpu_gradient_kernels(True)` forces them on every platform (to check that
the accelerator guard catches them). Jitted functions keep the setting
they were traced with.
"""

from __future__ import annotations

import contextlib
import functools
import os
from typing import Iterator

import jax
import jax.numpy as jnp

from percdepth_jax.models import cpu_conv_grads, onednn

_cpu_gradient_kernels: bool | None = None  # None: chosen per platform at lowering
_onednn_kernels: bool = os.environ.get("PERCDEPTH_ONEDNN", "1") != "0"
_ONEDNN_DTYPES = (jnp.float32, jnp.bfloat16)


def cpu_gradient_kernels_enabled() -> bool:
  """Whether traced programs hold the CPU kernels (on the CPU, by default)."""
  return _cpu_gradient_kernels is not False


def on_cpu(cpu_fn, generic_fn, *operands):
  """cpu_fn(*operands) where the program is lowered for the CPU, generic_fn
  elsewhere (both are traced; lowering keeps one). With the kernels forced
  on or off, that one alone."""
  if _cpu_gradient_kernels is None:
    return jax.lax.platform_dependent(*operands, cpu=cpu_fn, default=generic_fn)
  return (cpu_fn if _cpu_gradient_kernels else generic_fn)(*operands)


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
  if kernel_KxKxCxD.shape[0] == 1 and padding == 0 and stride > 1:
    x_BxHxWxC = x_BxHxWxC[:, ::stride, ::stride, :]
    stride = 1
  return on_cpu(functools.partial(_cpu_conv, stride=stride, padding=padding),
                functools.partial(_generic_conv, stride=stride, padding=padding),
                x_BxHxWxC, kernel_KxKxCxD)


def _generic_conv(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int,
                  padding: int) -> jax.Array:
  """XLA's own convolution (cuDNN's on GPUs); 1x1 ones as a matrix product."""
  if kernel_KxKxCxD.shape[0] == 1 and padding == 0:
    return jnp.einsum("bhwc,cd->bhwd", x_BxHxWxC, kernel_KxKxCxD[0, 0])
  return cpu_conv_grads.lax_conv(x_BxHxWxC, kernel_KxKxCxD, stride, padding)


def _cpu_conv(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int,
              padding: int) -> jax.Array:
  """The same convolution with the CPU kernels' gradients."""
  size = kernel_KxKxCxD.shape[0]
  if size == 1 and padding == 0:
    return cpu_conv_grads.conv1x1(x_BxHxWxC, kernel_KxKxCxD[0, 0])
  # oneDNN is built and registered on a CPU host only (never for a program a
  # GPU host lowers for its CPU).
  if (_onednn_kernels and size == 3 and x_BxHxWxC.dtype in _ONEDNN_DTYPES
      and kernel_KxKxCxD.dtype == x_BxHxWxC.dtype and jax.default_backend() == "cpu"
      and onednn.available()):
    return cpu_conv_grads.onednn_conv(x_BxHxWxC, kernel_KxKxCxD, stride, padding)
  # The 7x7 RGB stems keep XLA's gradient: an im2col weight gradient was
  # faster only below ~20,000 output pixels (docs/benchmarks.md).
  if size == 3 and stride == 1 and padding == 1:
    return cpu_conv_grads.conv3x3_same(x_BxHxWxC, kernel_KxKxCxD)
  return cpu_conv_grads.lax_conv(x_BxHxWxC, kernel_KxKxCxD, stride, padding)
