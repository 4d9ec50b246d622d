"""Building blocks that reproduce PyTorch's layers exactly, in NHWC.

Parameter names mirror PyTorch modules (a conv's weight is `kernel`, a
BatchNorm's weight is `scale`), so weight conversion is a table, not guesswork.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from percdepth_jax.models import convolution, cpu_layer_grads
from percdepth_jax.models.convolution import conv2d


def uniform_init(key: jax.Array, shape: tuple[int, ...], bound: float) -> jax.Array:
  """U(-bound, bound) samples of `shape`, float32.

  Every initializer used here is a scaled uniform. Eager `jax.random` calls
  compile once per distinct shape (~0.1 s each, hundreds of shapes in a
  DenseNet), so samples are drawn from a buffer padded to a power of two:
  a few dozen compilations serve every model, and construction takes
  seconds instead of tens of seconds on a CPU.
  """
  size = int(np.prod(shape))
  padded = 1 << max(size - 1, 1).bit_length()
  buffer = jax.random.uniform(key, (padded,), jnp.float32, -1.0, 1.0)
  if isinstance(buffer, jax.core.Tracer):  # under eval_shape / jit
    return bound * buffer[:size].reshape(shape)
  return jnp.asarray(bound * np.asarray(buffer)[:size].reshape(shape))


def _kernel_bound(init: str, fan_in: int, fan_out: int) -> float:
  if init == "torch":  # kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in))
    return 1.0 / np.sqrt(fan_in)
  if init == "glorot":  # Keras' glorot_uniform (DenseDepth's decoder)
    return np.sqrt(6.0 / (fan_in + fan_out))
  raise ValueError(f"unknown init {init!r}")


class Conv2d(nnx.Module):
  """`torch.nn.Conv2d` in NHWC with HWIO kernels and explicit symmetric padding
  (computed by `convolution.conv2d`)."""

  def __init__(self, in_features: int, out_features: int, kernel_size: int, *,
               stride: int = 1, padding: int = 0, use_bias: bool = True,
               dtype: jnp.dtype = jnp.float32, init: str = "torch",
               rngs: nnx.Rngs):
    self.in_features = in_features
    self.out_features = out_features
    self.kernel_size = kernel_size
    self.stride = stride
    self.padding = padding
    self.dtype = dtype
    shape = (kernel_size, kernel_size, in_features, out_features)
    fan_in = in_features * kernel_size * kernel_size
    fan_out = out_features * kernel_size * kernel_size
    self.kernel = nnx.Param(uniform_init(rngs.params(), shape,
                                         _kernel_bound(init, fan_in, fan_out)))
    if not use_bias:
      self.bias = None
    elif init == "glorot":  # Keras: zero biases
      self.bias = nnx.Param(jnp.zeros((out_features,), jnp.float32))
    else:  # PyTorch: U(+-1/sqrt(fan_in))
      self.bias = nnx.Param(uniform_init(rngs.params(), (out_features,),
                                         1.0 / np.sqrt(fan_in)))

  def __call__(self, x_BxHxWxC: jax.Array) -> jax.Array:
    x = x_BxHxWxC.astype(self.dtype)
    kernel = self.kernel[...].astype(self.dtype)
    y = conv2d(x, kernel, self.stride, self.padding)
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class Linear(nnx.Module):
  """`torch.nn.Linear` with an (in, out) kernel."""

  def __init__(self, in_features: int, out_features: int, *,
               dtype: jnp.dtype = jnp.float32, rngs: nnx.Rngs):
    self.dtype = dtype
    bound = 1.0 / np.sqrt(in_features)  # PyTorch's default for Linear
    self.kernel = nnx.Param(uniform_init(rngs.params(), (in_features, out_features), bound))
    self.bias = nnx.Param(uniform_init(rngs.params(), (out_features,), bound))

  def __call__(self, x_BxC: jax.Array) -> jax.Array:
    y = x_BxC.astype(self.dtype) @ self.kernel[...].astype(self.dtype)
    return y + self.bias[...].astype(self.dtype)


def statistics_dtype(dtype) -> jnp.dtype:
  """float32, or float64 for a float64 model (numerical reference checks)."""
  return jnp.promote_types(dtype, jnp.float32)


def batch_statistics(x_BxHxWxC: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Per-channel mean and biased variance over batch and space, in float32
  (float64 for float64 input)."""
  x = x_BxHxWxC.astype(statistics_dtype(x_BxHxWxC.dtype))
  mean = jnp.mean(x, axis=(0, 1, 2))
  return mean, jnp.mean(jnp.square(x - mean), axis=(0, 1, 2))


class BatchNorm2d(nnx.Module):
  """`torch.nn.BatchNorm2d` (eps 1e-5, momentum 0.1 in PyTorch's convention).

  `nnx.BatchNorm` updates the running variance with the biased batch variance;
  PyTorch uses the unbiased one (n / (n - 1)). This layer follows PyTorch so
  that a model trained here and one trained there have the same statistics.
  Statistics are computed in float32 whatever the (lower) compute dtype,
  in float64 for a float64 model. Under `jit`
  with a batch-sharded input the batch mean is over the global batch.
  """

  def __init__(self, num_features: int, *, eps: float = 1e-5,
               momentum: float = 0.1, dtype: jnp.dtype = jnp.float32,
               use_running_average: bool = False):
    self.eps = eps
    self.momentum = momentum
    self.dtype = dtype
    self.use_running_average = use_running_average
    self.scale = nnx.Param(jnp.ones((num_features,), jnp.float32))
    self.bias = nnx.Param(jnp.zeros((num_features,), jnp.float32))
    self.mean = nnx.BatchStat(jnp.zeros((num_features,), jnp.float32))
    self.var = nnx.BatchStat(jnp.ones((num_features,), jnp.float32))

  def __call__(self, x_BxHxWxC: jax.Array,
               statistics: tuple[jax.Array, jax.Array] | None = None) -> jax.Array:
    """statistics: the batch (mean, biased variance) of x, when the caller
    already has them (a dense block reuses each feature map's statistics in
    every later layer); ignored with running averages."""
    x = x_BxHxWxC.astype(statistics_dtype(self.dtype))
    if self.use_running_average:
      mean, var = self.mean[...], self.var[...]
    else:
      mean, var = statistics if statistics is not None else batch_statistics(x)
      n = x.shape[0] * x.shape[1] * x.shape[2]
      unbiased_var = var * (n / max(n - 1, 1))
      m = self.momentum
      # Running statistics stay float32 (a float64 model updates them too).
      self.mean[...] = ((1.0 - m) * self.mean[...]
                        + m * jax.lax.stop_gradient(mean)).astype(jnp.float32)
      self.var[...] = ((1.0 - m) * self.var[...]
                       + m * jax.lax.stop_gradient(unbiased_var)).astype(jnp.float32)
    # Fold normalisation and affine into one multiply-add per element.
    mul = self.scale[...] * jax.lax.rsqrt(var + self.eps)
    add = self.bias[...] - mean * mul
    return (x * mul + add).astype(self.dtype)


def max_pool_3x3_s2_p1(x_BxHxWxC: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(3, stride=2, padding=1)`: pad with -inf, then the maximum
  of the nine strided views.

  Explicit -inf padding keeps the result exact in every backend and in ONNX
  export (docs/design.md, 'Implementation notes'). With the CPU gradient
  kernels on, `cpu_layer_grads.max_pool_3x3_s2_p1` computes the same values
  and an argmax gradient (PyTorch's); otherwise the maxima are elementwise,
  differentiable in both modes (at exact ties the gradient is then shared
  between the tied inputs; after a ReLU ties are zeros, whose gradient the
  ReLU discards either way).
  """
  generic = lambda x: functools.reduce(jnp.maximum, cpu_layer_grads.max_pool_taps(x))
  return convolution.on_cpu(cpu_layer_grads.max_pool_3x3_s2_p1, generic, x_BxHxWxC)


def avg_pool_2x2(x_BxHxWxC: jax.Array) -> jax.Array:
  """`nn.AvgPool2d(2, stride=2)` (floors odd sizes, like PyTorch)."""
  return nnx.avg_pool(x_BxHxWxC, window_shape=(2, 2), strides=(2, 2),
                      padding="VALID")


def resize_bilinear_align_corners(x_BxHxWxC: jax.Array, height: int,
                                  width: int) -> jax.Array:
  """Bilinear resize with PyTorch's `align_corners=True` semantics.

  `jax.image.resize` cannot express align_corners, so this applies two
  separable interpolation matrices built in NumPy from the static shapes.
  With the CPU gradient kernels on, `cpu_layer_grads` computes the same
  sums as two-pixel gathers, with a gather gradient.
  """
  _, in_h, in_w, _ = x_BxHxWxC.shape
  if (in_h, in_w) == (height, width):
    return x_BxHxWxC
  return convolution.on_cpu(
      functools.partial(cpu_layer_grads.resize_bilinear_align_corners, height=height,
                        width=width),
      functools.partial(_resize_by_matrices, height=height, width=width), x_BxHxWxC)


def _resize_by_matrices(x_BxHxWxC: jax.Array, height: int, width: int) -> jax.Array:
  """The resize as two interpolation matrices (any backend, both AD modes)."""
  _, in_h, in_w, _ = x_BxHxWxC.shape
  dtype = x_BxHxWxC.dtype
  positions = cpu_layer_grads.position_dtype(dtype)
  rows_HxI = jnp.asarray(cpu_layer_grads.align_corners_matrix(in_h, height, positions), dtype)
  cols_WxJ = jnp.asarray(cpu_layer_grads.align_corners_matrix(in_w, width, positions), dtype)
  y = jnp.einsum("hi,bijc->bhjc", rows_HxI, x_BxHxWxC)
  return jnp.einsum("wj,bhjc->bhwc", cols_WxJ, y)
