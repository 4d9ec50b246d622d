"""Convolutions with faster weight gradients on XLA:CPU.

XLA's CPU backend computes a convolution's weight gradient as a convolution
whose window is the whole feature map, 2-8x slower than the same sums written
as one matrix product (docs/benchmarks.md). The `jax.custom_vjp`s here
keep XLA's forward pass and input gradient and replace only the weight
gradient; they equal torch.autograd's (tests/test_layers.py,
tests/test_parity.py). For 1x1 convolutions (matrix products already) the
point is the layout: autodiff of the einsum left XLA computing the incoming
gradient of each DenseNet bottleneck transposed in memory, inside the fusion
of the BatchNorm backward, several times slower than a plain `dot_general`
of the two row-major operands.

`onednn_conv` (used by `models/convolution.py` where oneDNN is built)
goes further: the forward pass (inference included) and both gradients are
oneDNN's, through XLA FFI custom calls.

They support reverse-mode differentiation only (a custom_vjp has no forward
mode), so `models/convolution.py` uses them on the CPU backend alone and lets
them be switched off; other backends keep their own (cuDNN's) gradients.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from percdepth_jax.models import onednn


def lax_conv(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int,
             padding: int) -> jax.Array:
  """PyTorch's conv2d (symmetric zero padding) in NHWC / HWIO."""
  p = padding
  return jax.lax.conv_general_dilated(
      x_BxHxWxC, kernel_KxKxCxD, window_strides=(stride, stride),
      padding=((p, p), (p, p)), dimension_numbers=("NHWC", "HWIO", "NHWC"))


def _accumulation(x: jax.Array) -> jnp.dtype:
  """Weight gradients sum in float32 (float64 for a float64 model)."""
  return jnp.promote_types(x.dtype, jnp.float32)


def _conv3x3_kernel_grad(x_BxHxWxC: jax.Array, dy_BxHxWxD: jax.Array) -> jax.Array:
  """Weight gradient of a 3x3, stride 1, padding 1 convolution as one matmul.

  dk[i, j] = sum over pixels m of x_pad[m + off_ij] (outer) dy[m]. On the
  flattened padded grid every tap (i, j) is a constant offset, so the nine
  shifted copies of dy side by side give all taps in one
  (C, N) x (N, 9D) matrix product.
  """
  b, h, w, c = x_BxHxWxC.shape
  d = dy_BxHxWxD.shape[-1]
  wp = w + 2
  x_NxC = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0))).reshape(-1, c)
  # dy at the top-left of the same padded grid: output (y, x) sits at y*wp + x.
  dy_NxD = jnp.pad(dy_BxHxWxD, ((0, 0), (0, 2), (0, 2), (0, 0))).reshape(-1, d)
  n = x_NxC.shape[0]
  shifted_Nx9D = jnp.concatenate(
      [jnp.pad(dy_NxD, ((i * wp + j, 0), (0, 0)))[:n] for i in range(3) for j in range(3)],
      axis=1)
  dk_Cx9D = jax.lax.dot_general(x_NxC, shifted_Nx9D, (((0,), (0,)), ((), ())),
                                preferred_element_type=_accumulation(x_NxC))
  return dk_Cx9D.reshape(c, 3, 3, d).transpose(1, 2, 0, 3)


@jax.custom_vjp
def conv3x3_same(x_BxHxWxC: jax.Array, kernel_3x3xCxD: jax.Array) -> jax.Array:
  """3x3 convolution, stride 1, padding 1, with the matmul weight gradient."""
  return lax_conv(x_BxHxWxC, kernel_3x3xCxD, 1, 1)


def _conv3x3_fwd(x, kernel):
  return lax_conv(x, kernel, 1, 1), (x, kernel)


def _conv3x3_bwd(residuals, dy):
  x, kernel = residuals
  _, conv_vjp = jax.vjp(lambda x: lax_conv(x, kernel, 1, 1), x)
  return conv_vjp(dy)[0], _conv3x3_kernel_grad(x, dy).astype(kernel.dtype)


conv3x3_same.defvjp(_conv3x3_fwd, _conv3x3_bwd)


@jax.custom_vjp
def conv1x1(x_BxHxWxC: jax.Array, kernel_CxD: jax.Array) -> jax.Array:
  """1x1 convolution as a matrix product; the weight gradient is x^T dy as
  one (C, N) x (N, D) dot_general over the flattened pixels."""
  return jnp.einsum("bhwc,cd->bhwd", x_BxHxWxC, kernel_CxD)


def _conv1x1_fwd(x, kernel):
  return conv1x1(x, kernel), (x, kernel)


def _conv1x1_bwd(residuals, dy):
  x, kernel = residuals
  c, d = kernel.shape
  dx = jnp.einsum("bhwd,cd->bhwc", dy, kernel)
  dk = jax.lax.dot_general(x.reshape(-1, c), dy.reshape(-1, d), (((0,), (0,)), ((), ())),
                           preferred_element_type=_accumulation(x))
  return dx, dk.astype(kernel.dtype)


conv1x1.defvjp(_conv1x1_fwd, _conv1x1_bwd)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def onednn_conv(x_BxHxWxC: jax.Array, kernel_KxKxCxD: jax.Array, stride: int,
                padding: int) -> jax.Array:
  """PyTorch's conv2d (float32 or bfloat16) as oneDNN's convolution
  (`onednn.py`); under differentiation its input gradient and weight
  gradient are oneDNN's too."""
  return onednn.conv_forward(x_BxHxWxC, kernel_KxKxCxD, stride, padding)


def _onednn_fwd(x, kernel, stride, padding):
  return onednn.conv_forward(x, kernel, stride, padding), (x, kernel)


def _onednn_bwd(stride, padding, residuals, dy):
  x, kernel = residuals
  dx = onednn.conv_input_grad(dy, kernel, x.shape, stride, padding)
  dk = onednn.conv_weight_grad(x, dy, kernel.shape[0], stride, padding)
  return dx, dk


onednn_conv.defvjp(_onednn_fwd, _onednn_bwd)
