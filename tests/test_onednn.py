"""The oneDNN convolution kernels (XLA FFI custom calls on the CPU backend)
against XLA's own convolution and its autodiff gradients: odd sizes, batch
1, strides 1 and 2, the RGB stem's 7x7, inputs that are slices and
transposes of other arrays, and many calls running concurrently in one
jitted program (oneDNN's scratchpad must be per call), and the Winograd
kernel against the same references."""

from __future__ import annotations

import logging
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from percdepth_jax.models import cpu_conv_grads, onednn
from tests.helpers import REPO, env, needs_onednn, relative_max_error

CASES = [  # batch, height, width, in, out, kernel, stride, padding
    (1, 7, 9, 5, 3, 3, 1, 1),
    (2, 16, 20, 32, 8, 3, 1, 1),
    (2, 15, 11, 6, 4, 3, 2, 1),
    (1, 33, 31, 3, 16, 7, 2, 3),
    (2, 9, 9, 8, 8, 1, 1, 0),
    (1, 10, 12, 7, 5, 1, 2, 0),  # stride 2 that leaves the last row and column out
]


@needs_onednn
@pytest.mark.parametrize("case", CASES, ids=lambda c: "x".join(map(str, c)))
def test_kernels_match_xla(case):
  """Forward, input gradient and weight gradient each equal XLA's to
  float32 rounding (relative max error <= 1e-5)."""
  b, h, w, c, d, k, stride, padding = case
  rng = np.random.RandomState(0)
  x = jnp.asarray(rng.randn(b, h, w, c), jnp.float32)
  kernel = jnp.asarray(rng.randn(k, k, c, d), jnp.float32)
  y_ref, vjp = jax.vjp(lambda x, k: cpu_conv_grads.lax_conv(x, k, stride, padding), x, kernel)
  dy = jnp.asarray(rng.randn(*y_ref.shape), jnp.float32)
  dx_ref, dk_ref = vjp(dy)

  @jax.jit
  def kernels(x, kernel, dy):
    return (onednn.conv_forward(x, kernel, stride, padding),
            onednn.conv_input_grad(dy, kernel, x.shape, stride, padding),
            onednn.conv_weight_grad(x, dy, k, stride, padding))

  y, dx, dk = kernels(x, kernel, dy)
  assert relative_max_error(np.asarray(y), np.asarray(y_ref)) <= 1e-5
  assert relative_max_error(np.asarray(dx), np.asarray(dx_ref)) <= 1e-5
  assert relative_max_error(np.asarray(dk), np.asarray(dk_ref)) <= 1e-5


@needs_onednn
@pytest.mark.parametrize("case", CASES[:3], ids=lambda c: "x".join(map(str, c)))
def test_bfloat16_kernels_match_xla_float32(case):
  """bfloat16 operands: forward, input and weight gradient in bfloat16
  equal XLA's float32 results on the same (bfloat16-rounded) values to
  bfloat16 rounding (relative max error <= 1e-2; one bfloat16 ulp is 2^-8)."""
  b, h, w, c, d, k, stride, padding = case
  rng = np.random.RandomState(4)

  def bf16(shape):
    return jnp.asarray(rng.randn(*shape), jnp.bfloat16)

  x, kernel = bf16((b, h, w, c)), bf16((k, k, c, d))
  f32 = [a.astype(jnp.float32) for a in (x, kernel)]
  y_ref, vjp = jax.vjp(lambda x, k: cpu_conv_grads.lax_conv(x, k, stride, padding), *f32)
  dy = jnp.asarray(rng.randn(*y_ref.shape), jnp.bfloat16)
  dx_ref, dk_ref = vjp(dy.astype(jnp.float32))
  y, dx, dk = jax.jit(lambda x, kernel, dy: (
      onednn.conv_forward(x, kernel, stride, padding),
      onednn.conv_input_grad(dy, kernel, x.shape, stride, padding),
      onednn.conv_weight_grad(x, dy, k, stride, padding)))(x, kernel, dy)
  for got, want in ((y, y_ref), (dx, dx_ref), (dk, dk_ref)):
    assert got.dtype == jnp.bfloat16
    assert relative_max_error(np.asarray(got, np.float32), np.asarray(want)) <= 1e-2


WINOGRAD_CASES = [  # batch, height, width, in, out
    (1, 7, 9, 64, 128),  # odd sizes: the last tiles reach past the image
    (2, 6, 8, 128, 64),
    (1, 131, 131, 64, 128),  # 4,356 tiles: more than one chunk
]


@needs_onednn
@pytest.mark.parametrize("case", WINOGRAD_CASES, ids=lambda c: "x".join(map(str, c)))
def test_winograd_kernels_match_xla(case, monkeypatch):
  """3x3 float32 convolutions with 64+ channels both sides go through the
  Winograd F(2x2, 3x3) kernels (the program holds their custom calls, and
  no longer does with them switched off); forward, input gradient and
  weight gradient equal XLA's to float32 rounding (relative max error
  <= 1e-5; Winograd's transforms add about 1e-6)."""
  b, h, w, c, d = case
  rng = np.random.RandomState(5)
  x = jnp.asarray(rng.randn(b, h, w, c), jnp.float32)
  kernel = jnp.asarray(rng.randn(3, 3, c, d), jnp.float32)
  y_ref, vjp = jax.vjp(lambda x, k: cpu_conv_grads.lax_conv(x, k, 1, 1), x, kernel)
  dy = jnp.asarray(rng.randn(*y_ref.shape), jnp.float32)
  dx_ref, dk_ref = vjp(dy)

  def kernels(x, kernel, dy):
    return (onednn.conv_forward(x, kernel, 1, 1),
            onednn.conv_input_grad(dy, kernel, x.shape, 1, 1),
            onednn.conv_weight_grad(x, dy, 3, 1, 1))

  assert onednn.winograd_suits(x, kernel, 1, 1)
  text = jax.jit(kernels).lower(x, kernel, dy).as_text()
  assert text.count(f"@{onednn._WINOGRAD}(") == 2  # forward and input gradient
  assert text.count(f"@{onednn._WINOGRAD_WEIGHT_GRAD}(") == 1
  for got, want in zip(jax.jit(kernels)(x, kernel, dy), (y_ref, dx_ref, dk_ref)):
    assert relative_max_error(np.asarray(got), np.asarray(want)) <= 1e-5
  monkeypatch.setattr(onednn, "_winograd", False)
  # A new function: JAX reuses a function's trace whatever the switch.
  retraced = jax.jit(lambda *operands: kernels(*operands))
  assert "winograd" not in retraced.lower(x, kernel, dy).as_text()


@needs_onednn
def test_winograd_only_where_it_was_faster():
  """The dense layers' 3x3 convolutions (32 outputs), 64 -> 64, strides,
  paddings and bfloat16 stay on oneDNN's direct convolution."""
  def suits(c, d, stride=1, padding=1, dtype=jnp.float32):
    x = jnp.zeros((1, 8, 8, c), dtype)
    return onednn.winograd_suits(x, jnp.zeros((3, 3, c, d), dtype), stride, padding)

  assert suits(128, 64) and suits(64, 128) and suits(1280, 512)
  assert not suits(128, 32) and not suits(64, 64)
  assert not suits(128, 128, stride=2) and not suits(128, 128, padding=0)
  assert not suits(128, 128, dtype=jnp.bfloat16)


@needs_onednn
def test_sliced_and_transposed_operands():
  """Operands that are strided slices and transposes of other arrays (XLA
  hands the custom call dense row-major copies): same weight gradient as
  XLA's."""
  rng = np.random.RandomState(1)
  big = jnp.asarray(rng.randn(2, 24, 30, 10), jnp.float32)
  kernel = jnp.asarray(rng.randn(3, 3, 5, 4), jnp.float32)

  def operands(big):
    x = jnp.transpose(big[:, ::2, 1::2, ::2], (0, 2, 1, 3))  # 2 x 15 x 12 x 5
    return x, jnp.tanh(x[..., :4]) * 3.0

  def ours(big):
    x, dy = operands(big)
    return onednn.conv_weight_grad(x, dy, 3, 1, 1)

  def xla(big):
    x, dy = operands(big)
    _, vjp = jax.vjp(lambda k: cpu_conv_grads.lax_conv(x, k, 1, 1), kernel)
    return vjp(dy)[0]

  assert relative_max_error(np.asarray(jax.jit(ours)(big)),
                            np.asarray(jax.jit(xla)(big))) <= 1e-5


@needs_onednn
def test_many_concurrent_calls_in_one_program():
  """Sixteen independent weight gradients in one jitted program (XLA runs
  them side by side): each equals its own XLA gradient."""
  rng = np.random.RandomState(2)
  xs = [jnp.asarray(rng.randn(2, 24, 20, 16 + i), jnp.float32) for i in range(16)]
  dys = [jnp.asarray(rng.randn(2, 24, 20, 8), jnp.float32) for _ in range(16)]
  got = jax.jit(lambda xs, dys: [onednn.conv_weight_grad(x, dy, 3, 1, 1)
                                 for x, dy in zip(xs, dys)])(xs, dys)
  for g, x, dy in zip(got, xs, dys):
    assert relative_max_error(np.asarray(g),
                              np.asarray(cpu_conv_grads._conv3x3_kernel_grad(x, dy))) <= 1e-5


@needs_onednn
def test_depth_net_gradients_with_the_switch_on():
  """The toy depth network's training loss and every parameter gradient
  with `onednn_kernels(True)` (its 3x3 convolutions through oneDNN) equal
  the default path's: float32 rounding only (relative error of the whole
  gradient vector <= 1e-5), and the switch does change the program (the
  custom call is in the jaxpr)."""
  from flax import nnx

  from percdepth_jax.models import DepthNet, ModelConfig, convolution

  model = DepthNet(ModelConfig(encoder="densenet_tiny"), rngs=nnx.Rngs(0))
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  image = jnp.asarray(np.random.RandomState(3).rand(2, 64, 96, 3), jnp.float32)

  def loss(params):
    return jnp.mean(nnx.merge(graphdef, params, rest, copy=True)(image) ** 2)

  def gradients(enabled):
    with convolution.onednn_kernels(enabled):
      fn = jax.jit(jax.value_and_grad(loss))
      text = str(jax.make_jaxpr(jax.value_and_grad(loss))(params))
      return fn(params), text

  (loss_on, grads_on), text_on = gradients(True)
  (loss_off, grads_off), text_off = gradients(False)
  assert "percdepth_onednn_conv_weight_grad" in text_on
  assert "percdepth_onednn" not in text_off
  np.testing.assert_allclose(loss_on, loss_off, rtol=1e-6)
  on = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads_on)])
  off = np.concatenate([np.ravel(g) for g in jax.tree.leaves(grads_off)])
  assert np.linalg.norm(on - off) <= 1e-5 * np.linalg.norm(off)


def test_unbuildable_kernels_fall_back_with_one_message(monkeypatch, tmp_path, caplog):
  """No compiler (CXX names a file that does not exist): one warning naming
  the compiler, `available()` False, and the switch traces the pure-JAX
  kernels instead of failing."""
  from percdepth_jax.models import convolution

  monkeypatch.setenv("PERCDEPTH_KERNEL_CACHE", str(tmp_path / "cache"))
  monkeypatch.setenv("CXX", str(tmp_path / "no-compiler"))
  onednn.available.cache_clear()
  try:
    with caplog.at_level(logging.WARNING, logger=onednn.__name__):
      assert not onednn.available() and not onednn.available()
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 1 and "no-compiler" in messages[0], messages
    x = jnp.ones((1, 8, 8, 4), jnp.float32)
    kernel = jnp.ones((3, 3, 4, 2), jnp.float32)
    with convolution.onednn_kernels(True):
      text = str(jax.make_jaxpr(jax.grad(lambda k: convolution.conv2d(x, k, 1, 1).sum()))(kernel))
    assert "percdepth_onednn" not in text
  finally:
    onednn.available.cache_clear()


@needs_onednn
@pytest.mark.parametrize("setting", [None, "0"])
def test_on_by_default_and_off_by_environment(setting):
  """A fresh process traces a training gradient with the oneDNN custom
  calls unless PERCDEPTH_ONEDNN=0 is set."""
  environment = env()
  environment.pop("PERCDEPTH_ONEDNN", None)
  if setting is not None:
    environment["PERCDEPTH_ONEDNN"] = setting
  program = ("import jax, jax.numpy as jnp\n"
             "from percdepth_jax.models import convolution\n"
             "x = jnp.ones((1, 8, 8, 4), jnp.float32)\n"
             "grad = jax.grad(lambda k: convolution.conv2d(x, k, 1, 1).sum())\n"
             "print('oneDNN' if 'percdepth_onednn' in str(jax.make_jaxpr(grad)("
             "jnp.ones((3, 3, 4, 2), jnp.float32))) else 'pure JAX')\n")
  result = subprocess.run([sys.executable, "-c", program], env=environment, cwd=REPO,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  expected = "pure JAX" if setting == "0" else "oneDNN"
  assert result.stdout.strip().splitlines()[-1] == expected, result.stdout
