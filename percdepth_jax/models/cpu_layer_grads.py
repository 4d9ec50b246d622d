"""Max pooling and bilinear resizing with gradients that suit XLA:CPU.

Autodiff of the plain formulations (`models/layers.py`) leaves XLA's CPU
backend with work it does badly (docs/benchmarks.md, 'Closing more of the
gap'):

- the gradient of a max pool written as elementwise maxima is a chain of
  selects that XLA fuses into the producer of the incoming gradient and
  recomputes for each of the nine window taps (in the 256x320 training step
  the fusion holding DenseNet's pool0 gradient took ~50-60 ms; PyTorch's
  max-pool backward takes ~1 ms);
- a resize written as interpolation matrices is two matrix products whose
  operands XLA transposes in memory (64x80 -> 128x160 with 128 channels,
  batch 2: 15.9 ms forward and backward, against 2.9 ms as gathers).

The two `jax.custom_vjp`s here write both passes as gathers: the max pool
keeps each window's argmax (int8) from the forward pass and hands every
input the gradients of the at most four outputs that chose it; the resize
reads each output's two source pixels forward and, backward, each input's
contributing outputs (static tables built in NumPy from the shapes).
Values equal PyTorch's (tests/test_layers.py): the max pool sends each
window's gradient to its first maximum in scan order, as `F.max_pool2d`
does; the resize equals `F.interpolate(mode="bilinear",
align_corners=True)` and its gradient. Like the convolution kernels they
support reverse-mode differentiation only; `models/layers.py` uses them
where a program is lowered for the CPU (`convolution.on_cpu`).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np


def position_dtype(dtype) -> type:
  """NumPy type of the source positions for tensors of `dtype`: PyTorch
  computes them in the tensor's accumulation type, float32 for float32 and
  bfloat16 tensors, float64 for float64 ones."""
  return np.float64 if jnp.dtype(dtype) == jnp.float64 else np.float32


@functools.lru_cache(maxsize=None)
def align_corners_matrix(in_size: int, out_size: int,
                         dtype: type = np.float32) -> np.ndarray:
  """Interpolation matrix (out_size, in_size) of 1-D linear align_corners=True.

  Source positions are computed in `dtype` (float32 unless the model runs in
  float64) the way PyTorch's CPU/GPU kernels do (scale * index): at
  240 -> 480 exact float64 positions differ from PyTorch's float32 ones by up
  to ~1e-4 of the signal, float32 ones by ~5e-7.
  """
  scale = dtype((in_size - 1) / (out_size - 1)) if out_size > 1 else dtype(0)
  src = np.arange(out_size, dtype=dtype) * scale
  lo = np.clip(np.floor(src).astype(np.int64), 0, in_size - 1)
  hi = np.minimum(lo + 1, in_size - 1)
  frac = src - lo.astype(dtype)
  matrix = np.zeros((out_size, in_size), dtype)
  rows = np.arange(out_size)
  np.add.at(matrix, (rows, lo), dtype(1.0) - frac)
  np.add.at(matrix, (rows, hi), frac)
  return matrix


# --- max pool 3x3, stride 2, padding 1 ---------------------------------------

def max_pool_taps(x_BxHxWxC: jax.Array) -> list[jax.Array]:
  """The nine strided views of the -inf padded input, in PyTorch's scan order."""
  _, h, w, _ = x_BxHxWxC.shape
  out_h, out_w = (h - 1) // 2 + 1, (w - 1) // 2 + 1
  x = jnp.pad(x_BxHxWxC, ((0, 0), (1, 1), (1, 1), (0, 0)), constant_values=-jnp.inf)
  return [x[:, i:i + 2 * out_h - 1:2, j:j + 2 * out_w - 1:2]
          for i in range(3) for j in range(3)]


def _max_pool_fwd(x_BxHxWxC: jax.Array):
  taps = max_pool_taps(x_BxHxWxC)
  y, argmax = taps[0], jnp.zeros(taps[0].shape, jnp.int8)
  for t, view in enumerate(taps[1:], 1):
    larger = view > y  # strictly: the first maximum wins, as in PyTorch
    y = jnp.where(larger, view, y)
    argmax = jnp.where(larger, jnp.int8(t), argmax)
  return y, (argmax, x_BxHxWxC.shape)


def _next(a: jax.Array, axis: int) -> jax.Array:
  """a[o + 1] along `axis`, zero past the end."""
  index = [slice(None)] * a.ndim
  index[axis] = slice(1, None)
  pad = [(0, 0)] * a.ndim
  pad[axis] = (0, 1)
  return jnp.pad(a[tuple(index)], pad)


def _max_pool_bwd(residuals, dy_BxhxwxC: jax.Array):
  argmax, (b, h, w, c) = residuals
  zero = jnp.zeros((), dy_BxhxwxC.dtype)
  oh, ow = dy_BxhxwxC.shape[1:3]

  def tap(t):
    return jnp.where(argmax == t, dy_BxhxwxC, zero)

  if h % 2 == 0 and w % 2 == 0:
    # Input row 2o receives tap row 1 of output row o; input row 2o + 1
    # receives tap row 2 of output o and tap row 0 of output o + 1 (columns
    # likewise). The four parities are interleaved by one stack + reshape,
    # so every input element reads at most four gradients.
    def columns(i):  # (even, odd) input columns from tap row i
      return tap(3 * i + 1), tap(3 * i + 2) + _next(tap(3 * i), 2)
    top, middle, bottom = columns(0), columns(1), columns(2)
    even_rows = jnp.stack(middle, axis=3)
    odd_rows = jnp.stack([bottom[q] + _next(top[q], 1) for q in range(2)], axis=3)
    dx = jnp.stack([even_rows, odd_rows], axis=2).reshape(b, h, w, c)
    return (dx,)
  # Odd sizes: place each tap's gradient on the padded grid with interior
  # (stride-2) padding, then crop.
  dx = None
  for t in range(9):
    i, j = divmod(t, 3)
    placed = jax.lax.pad(tap(t), zero, ((0, 0, 0), (i, h + 2 - i - (2 * oh - 1), 1),
                                       (j, w + 2 - j - (2 * ow - 1), 1), (0, 0, 0)))
    dx = placed if dx is None else dx + placed
  return (dx[:, 1:h + 1, 1:w + 1],)


@jax.custom_vjp
def max_pool_3x3_s2_p1(x_BxHxWxC: jax.Array) -> jax.Array:
  """`nn.MaxPool2d(3, stride=2, padding=1)` with an argmax gradient."""
  return _max_pool_fwd(x_BxHxWxC)[0]


max_pool_3x3_s2_p1.defvjp(_max_pool_fwd, _max_pool_bwd)


# --- bilinear resize, align_corners=True --------------------------------------

@functools.lru_cache(maxsize=None)
def _resize_taps(in_size: int, out_size: int, dtype: type):
  """Forward: each output's two source indices and weights. Backward: each
  input's contributing outputs and weights, padded to the same count."""
  m = align_corners_matrix(in_size, out_size, dtype)
  rows = np.arange(out_size)
  lo = np.argmax(m > 0, axis=1)
  hi = np.minimum(lo + 1, in_size - 1)
  w_lo = m[rows, lo]
  w_hi = np.where(hi != lo, m[rows, hi], 0.0).astype(dtype)
  readers = [np.nonzero(m[:, i])[0] for i in range(in_size)]
  count = max(1, max(len(r) for r in readers))
  back_index = np.zeros((in_size, count), np.int32)
  back_weight = np.zeros((in_size, count), dtype)
  for i, r in enumerate(readers):
    back_index[i, :len(r)] = r
    back_weight[i, :len(r)] = m[r, i]
  return lo.astype(np.int32), hi.astype(np.int32), w_lo, w_hi, back_index, back_weight


def _along(weights: np.ndarray, axis: int, dtype) -> jax.Array:
  shape = [1, 1, 1, 1]
  shape[axis] = weights.shape[0]
  return jnp.asarray(weights.reshape(shape), dtype)


def _resize_axis_fwd(x, axis, in_size, out_size):
  lo, hi, w_lo, w_hi, _, _ = _resize_taps(in_size, out_size, position_dtype(x.dtype))
  return (jnp.take(x, lo, axis=axis) * _along(w_lo, axis, x.dtype)
          + jnp.take(x, hi, axis=axis) * _along(w_hi, axis, x.dtype))


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2, 3))
def _resize_axis(x, axis: int, in_size: int, out_size: int):
  return _resize_axis_fwd(x, axis, in_size, out_size)


def _resize_axis_vjp_fwd(x, axis, in_size, out_size):
  return _resize_axis_fwd(x, axis, in_size, out_size), None


def _resize_axis_vjp_bwd(axis, in_size, out_size, _, dy):
  *_, back_index, back_weight = _resize_taps(in_size, out_size, position_dtype(dy.dtype))
  dx = None
  for k in range(back_index.shape[1]):
    part = (jnp.take(dy, back_index[:, k], axis=axis)
            * _along(back_weight[:, k], axis, dy.dtype))
    dx = part if dx is None else dx + part
  return (dx,)


_resize_axis.defvjp(_resize_axis_vjp_fwd, _resize_axis_vjp_bwd)


def resize_bilinear_align_corners(x_BxHxWxC: jax.Array, height: int,
                                  width: int) -> jax.Array:
  """`F.interpolate(mode="bilinear", align_corners=True)`, rows then columns,
  each output the weighted sum of its two source pixels."""
  _, in_h, in_w, _ = x_BxHxWxC.shape
  y = _resize_axis(x_BxHxWxC, 1, in_h, height) if in_h != height else x_BxHxWxC
  return _resize_axis(y, 2, in_w, width) if in_w != width else y
