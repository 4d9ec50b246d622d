"""Layer-level checks against PyTorch: resizing, BatchNorm (train mode), pooling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import nnx

from percdepth_jax.models.layers import (BatchNorm2d, Conv2d, avg_pool_2x2,
                                         max_pool_3x3_s2_p1,
                                         resize_bilinear_align_corners)
from tests.helpers import nchw, nhwc


@pytest.mark.parametrize("in_hw,out_hw", [((3, 5), (6, 10)), ((7, 9), (14, 18)),
                                          ((8, 12), (5, 7)), ((1, 4), (3, 8)),
                                          ((6, 6), (6, 6))])
def test_resize_matches_torch_align_corners(in_hw, out_hw):
  """Bilinear resize equals F.interpolate(mode='bilinear', align_corners=True)."""
  x = np.random.RandomState(0).randn(2, *in_hw, 3).astype(np.float32)
  expected = nhwc(F.interpolate(nchw(x), size=out_hw, mode="bilinear", align_corners=True))
  actual = np.asarray(resize_bilinear_align_corners(jnp.asarray(x), *out_hw))
  np.testing.assert_allclose(actual, expected, atol=1e-5)


@pytest.mark.parametrize("kernels", [True, False])
@pytest.mark.parametrize("in_hw,out_hw", [((3, 5), (6, 10)), ((8, 12), (5, 7)),
                                          ((1, 4), (3, 8)), ((16, 20), (32, 40))])
def test_resize_gradient_matches_torch(in_hw, out_hw, kernels):
  """The resize's input gradient equals torch.autograd's through
  F.interpolate, both with the CPU gradient kernels (gathers) and without
  (autodiff of the interpolation matrices); upsampling and downsampling."""
  from percdepth_jax.models import convolution
  rng = np.random.RandomState(1)
  x = rng.randn(2, *in_hw, 3).astype(np.float32)
  dy = rng.randn(2, *out_hw, 3).astype(np.float32)
  x_t = nchw(x).requires_grad_(True)
  F.interpolate(x_t, size=out_hw, mode="bilinear", align_corners=True).backward(nchw(dy))
  with convolution.cpu_gradient_kernels(kernels):
    _, vjp = jax.vjp(lambda x: resize_bilinear_align_corners(x, *out_hw), jnp.asarray(x))
    actual = np.asarray(vjp(jnp.asarray(dy))[0])
  np.testing.assert_allclose(actual, nhwc(x_t.grad), atol=1e-5)


def test_resize_closed_form_corners_and_midpoint():
  """Align-corners keeps corner values; a 2->3 resize puts the mean in the middle."""
  x = jnp.asarray([[1.0, 3.0]]).reshape(1, 1, 2, 1)
  y = np.asarray(resize_bilinear_align_corners(x, 1, 3))[0, 0, :, 0]
  np.testing.assert_allclose(y, [1.0, 2.0, 3.0], atol=1e-7)


def test_batchnorm_train_mode_matches_torch():
  """Training-mode output and running-stat update (momentum 0.1, unbiased
  running variance) equal torch.nn.BatchNorm2d's over two steps."""
  rng = np.random.RandomState(1)
  torch_bn = torch.nn.BatchNorm2d(4).train()
  bn = BatchNorm2d(4)
  for _ in range(2):
    x = (3.0 * rng.randn(2, 5, 3, 4) + 1.5).astype(np.float32)
    expected = nhwc(torch_bn(nchw(x)))
    actual = np.asarray(bn(jnp.asarray(x)))
    np.testing.assert_allclose(actual, expected, atol=2e-5)
  np.testing.assert_allclose(bn.mean[...], torch_bn.running_mean.numpy(), rtol=1e-5)
  np.testing.assert_allclose(bn.var[...], torch_bn.running_var.numpy(), rtol=1e-5)


def test_pools_match_torch_on_odd_sizes():
  """Max-pool 3/2/1 and avg-pool 2/2 agree with PyTorch, odd sizes included."""
  x = np.random.RandomState(2).randn(1, 9, 7, 2).astype(np.float32)
  np.testing.assert_allclose(
      np.asarray(max_pool_3x3_s2_p1(jnp.asarray(x))),
      nhwc(F.max_pool2d(nchw(x), 3, stride=2, padding=1)), atol=1e-6)
  np.testing.assert_allclose(
      np.asarray(avg_pool_2x2(jnp.asarray(x))),
      nhwc(F.avg_pool2d(nchw(x), 2, stride=2)), atol=1e-6)


@pytest.mark.parametrize("kernel,stride,padding", [(1, 1, 0), (1, 2, 0), (3, 1, 1), (7, 2, 3)])
def test_conv_matches_torch(kernel, stride, padding):
  """Conv2d (einsum path for 1x1, lax conv otherwise) equals torch's conv2d."""
  rng = np.random.RandomState(3)
  x = rng.randn(2, 11, 10, 5).astype(np.float32)
  conv = Conv2d(5, 6, kernel, stride=stride, padding=padding, rngs=nnx.Rngs(0))
  weight = torch.from_numpy(np.transpose(np.asarray(conv.kernel[...]), (3, 2, 0, 1)).copy())
  bias = torch.from_numpy(np.array(conv.bias[...]))
  expected = nhwc(F.conv2d(nchw(x), weight, bias, stride=stride, padding=padding))
  np.testing.assert_allclose(np.asarray(conv(jnp.asarray(x))), expected, atol=1e-5)


@pytest.mark.parametrize("shape,kernel_size,stride,padding", [
    ((2, 7, 9, 5, 3), 3, 1, 1), ((1, 12, 16, 24, 8), 3, 1, 1),  # conv3x3_same
    ((2, 19, 23, 3, 8), 7, 2, 3), ((1, 16, 16, 3, 4), 7, 2, 3),  # RGB stem (XLA's)
    ((2, 7, 9, 12, 5), 1, 1, 0), ((2, 8, 10, 6, 4), 1, 2, 0),  # conv1x1
])
def test_conv_custom_gradients_match_torch(shape, kernel_size, stride, padding):
  """The custom weight gradients (3x3: one matmul over shifted copies; 1x1:
  one dot_general, also behind a stride), XLA's for the RGB stem, and the
  input gradients equal torch.autograd's through
  F.conv2d, on odd sizes where a wrong shift, stride or padding would show."""
  b, h, w, c, d = shape
  rng = np.random.RandomState(3)
  x = rng.randn(b, h, w, c).astype(np.float32)
  conv = Conv2d(c, d, kernel_size, stride=stride, padding=padding, use_bias=False,
                rngs=nnx.Rngs(0))
  kernel = np.asarray(conv.kernel[...])

  x_t = nchw(x).requires_grad_(True)
  k_t = torch.from_numpy(kernel.transpose(3, 2, 0, 1).copy()).requires_grad_(True)
  y_t = F.conv2d(x_t, k_t, stride=stride, padding=padding)
  dy = rng.randn(*nhwc(y_t.detach()).shape).astype(np.float32)
  y_t.backward(nchw(dy))

  graphdef, params = nnx.split(conv)
  loss = lambda params, x: jnp.sum(nnx.merge(graphdef, params)(x) * dy)
  grad_params, grad_x = jax.grad(loss, argnums=(0, 1))(params, jnp.asarray(x))
  np.testing.assert_allclose(np.asarray(grad_params["kernel"][...]),
                             k_t.grad.numpy().transpose(2, 3, 1, 0), rtol=1e-5, atol=1e-4)
  np.testing.assert_allclose(np.asarray(grad_x), nhwc(x_t.grad), rtol=1e-5, atol=1e-4)


def test_max_pool_gradient_matches_torch_without_ties():
  """On tie-free input (continuous random values, odd and even sizes) the
  max-pool gradient goes to each window's maximum, as torch's does."""
  rng = np.random.RandomState(4)
  for shape in [(2, 9, 12, 3), (1, 8, 7, 2)]:
    x = rng.randn(*shape).astype(np.float32)
    x_t = nchw(x).requires_grad_(True)
    y_t = F.max_pool2d(x_t, 3, stride=2, padding=1)
    dy = rng.randn(*nhwc(y_t.detach()).shape).astype(np.float32)
    y_t.backward(nchw(dy))
    _, vjp = jax.vjp(max_pool_3x3_s2_p1, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), nhwc(x_t.grad),
                               atol=1e-6)


def test_max_pool_gradient_at_ties_goes_to_the_first_maximum_as_in_torch():
  """After a ReLU, windows hold tied zeros and tied equal values; with the
  CPU gradient kernels each window's gradient goes to its first maximum in
  scan order, exactly as F.max_pool2d's (even and odd sizes)."""
  from percdepth_jax.models import convolution
  rng = np.random.RandomState(6)
  for shape in [(2, 8, 10, 3), (1, 9, 7, 2)]:
    x = np.maximum(rng.randint(-2, 3, shape), 0).astype(np.float32)  # many ties
    x_t = nchw(x).requires_grad_(True)
    y_t = F.max_pool2d(x_t, 3, stride=2, padding=1)
    dy = rng.randn(*nhwc(y_t.detach()).shape).astype(np.float32)
    y_t.backward(nchw(dy))
    with convolution.cpu_gradient_kernels(True):
      y, vjp = jax.vjp(max_pool_3x3_s2_p1, jnp.asarray(x))
      np.testing.assert_array_equal(np.asarray(y), nhwc(y_t.detach()))
      np.testing.assert_allclose(np.asarray(vjp(jnp.asarray(dy))[0]), nhwc(x_t.grad),
                                 atol=1e-6)


def test_cpu_gradient_kernels_switch_and_forward_mode():
  """The CPU weight-gradient kernels are on by default on the CPU backend
  (forward-mode differentiation then fails: a custom_vjp has no jvp); with
  them off, `jax.jvp` runs through the whole depth network, and its tangent
  J v agrees with the reverse-mode gradient (computed with the kernels on) by
  the dot-product identity <J v, u> = <v, J^T u>."""
  from percdepth_jax.models import DepthNet, ModelConfig
  from percdepth_jax.models import convolution

  model = DepthNet(ModelConfig(encoder="densenet_tiny"),
                   rngs=nnx.Rngs(0))
  model.eval()
  rng = np.random.RandomState(5)
  x = jnp.asarray(rng.uniform(0, 255, (1, 32, 64, 3)).astype(np.float32))
  v = jnp.asarray(rng.randn(*x.shape).astype(np.float32))
  u = jnp.asarray(rng.randn(1, 32, 64, 1).astype(np.float32))
  f = lambda image: model(image)

  assert convolution.cpu_gradient_kernels_enabled()
  with pytest.raises(TypeError, match="custom_vjp"):
    jax.jvp(f, (x,), (v,))
  _, vjp = jax.vjp(f, x)
  (jt_u,) = vjp(u)

  with convolution.cpu_gradient_kernels(False):
    out, j_v = jax.jvp(f, (x,), (v,))
  assert convolution.cpu_gradient_kernels_enabled()  # restored after the block
  np.testing.assert_allclose(np.asarray(out), np.asarray(f(x)), rtol=1e-6, atol=1e-6)
  lhs, rhs = float(jnp.vdot(j_v, u)), float(jnp.vdot(v, jt_u))
  assert abs(lhs - rhs) <= 1e-4 * max(abs(lhs), abs(rhs)), (lhs, rhs)
