"""Losses (percdepth_jax.losses) against skimage, NumPy and the PyTorch reference."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx
from skimage.metrics import structural_similarity

import weights_conversion
from percdepth_jax import losses
from tests.helpers import nchw, nhwc, relative_max_error
from weights_conversion.parity import randomize_batchnorm
from weights_conversion import torch_reference

MAX_VAL = 100.0  # DepthNorm's dynamic range (ModelConfig.target_max_value).


def _depth_batch(seed: int, batch: int = 2, size: int = 64, kind: str = "structured",
                 max_val: float = MAX_VAL):
  """(pred, target) float32 B x size x size x 1 in [0, ~max_val].

  structured: a room-like scene (a floor ramp, a box, a step) as DepthNorm
  (max_val 100) or metres (max_val 10), and a prediction with smooth multiplicative error and a little noise;
  random: independent uniform noise in both.
  """
  rng = np.random.RandomState(seed)
  shape = (batch, size, size, 1)
  if kind == "random":
    return ((rng.rand(*shape) * max_val).astype(np.float32),
            (rng.rand(*shape) * max_val).astype(np.float32))
  y, x = np.mgrid[0:size, 0:size] / size
  metres = np.empty(shape)
  for b in range(batch):
    d = 0.3 + 4.0 * (1.0 - y) ** 2 + 0.5 * rng.rand()  # floor / wall ramp
    r0, c0 = rng.randint(0, size // 2, 2)
    d[r0:r0 + size // 3, c0:c0 + size // 4] = 0.3 + 0.3 * rng.rand()  # a box
    d[:, int(size * 0.8):] += 1.0  # a depth step
    metres[b, ..., 0] = d
  # DepthNorm (10 / metres) for its range 100, else metres.
  target = 10.0 / metres if max_val == 100.0 else metres
  wobble = 1.0 + 0.3 * np.sin(9 * x + rng.rand() * 6)[None, ..., None]
  pred = target * wobble * np.exp(0.05 * rng.randn(*shape))
  return pred.astype(np.float32), target.astype(np.float32)


def _holes(seed: int, shape, kind: str) -> np.ndarray:
  """Validity masks: 'all', 'partial' (a rectangle and scattered pixels), 'none'."""
  if kind == "all":
    return np.ones(shape, bool)
  if kind == "none":
    return np.zeros(shape, bool)
  rng = np.random.RandomState(seed)
  mask = rng.rand(*shape) > 0.2
  mask[:, 5:25, 30:50] = False
  return mask


def _with_garbage(target: np.ndarray, mask: np.ndarray, value: float) -> np.ndarray:
  """The target with `value` (0, inf, NaN...) at holes, as raw sensor data gives."""
  return np.where(mask, target, np.float32(value)).astype(np.float32)


# --- SSIM ------------------------------------------------------------------

def _skimage_ssim(a_BxHxWx1, b_BxHxWx1, max_val):
  return np.array([structural_similarity(
      a.astype(np.float64), b.astype(np.float64), gaussian_weights=True,
      sigma=1.5, use_sample_covariance=False, data_range=max_val)
                   for a, b in zip(a_BxHxWx1[..., 0], b_BxHxWx1[..., 0])])


@pytest.mark.parametrize("kind", ["random", "structured"])
@pytest.mark.parametrize("max_val", [100.0, 10.0])
def test_ssim_matches_skimage(kind, max_val):
  """Per-image SSIM equals skimage's Gaussian SSIM (sigma 1.5, population
  covariance, data_range = max_val) to 1e-5 absolute, on random noise and on
  structured depth maps, for both representations' ranges; also on a
  non-square image with 2 channels (averaged over channels, as skimage)."""
  pred, target = _depth_batch(1, kind=kind, max_val=max_val)
  actual = np.asarray(losses.ssim(jnp.asarray(pred), jnp.asarray(target), max_val=max_val))
  np.testing.assert_allclose(actual, _skimage_ssim(pred, target, max_val), rtol=0, atol=1e-5)

  rect = np.random.RandomState(2).rand(1, 23, 37, 2).astype(np.float32) * max_val
  noisy = (rect + np.random.RandomState(3).randn(*rect.shape) * 0.1 * max_val).astype(np.float32)
  expected = structural_similarity(rect[0].astype(np.float64), noisy[0].astype(np.float64),
                                   gaussian_weights=True, sigma=1.5, channel_axis=-1,
                                   use_sample_covariance=False, data_range=max_val)
  actual = float(losses.ssim(jnp.asarray(rect), jnp.asarray(noisy), max_val=max_val)[0])
  assert abs(actual - expected) <= 1e-5


def test_ssim_holes_are_filled_with_the_prediction():
  """With a mask, SSIM equals skimage's SSIM of the prediction against the
  target whose holes hold the prediction (NaN at holes is never read), and an
  all-invalid image has SSIM 1."""
  pred, target = _depth_batch(3)
  mask = _holes(4, pred.shape, "partial")
  actual = np.asarray(losses.ssim(jnp.asarray(pred), jnp.asarray(_with_garbage(target, mask, np.nan)),
                                  jnp.asarray(mask), max_val=MAX_VAL))
  expected = _skimage_ssim(pred, np.where(mask, target, pred), MAX_VAL)
  np.testing.assert_allclose(actual, expected, rtol=0, atol=1e-5)
  # The fill matters: SSIM against the unfilled (valid) target differs.
  assert np.all(np.abs(expected - _skimage_ssim(pred, target, MAX_VAL)) > 1e-4)
  empty = np.asarray(losses.ssim(jnp.asarray(pred), jnp.zeros_like(pred), np.zeros(pred.shape, bool),
                                 max_val=MAX_VAL))
  np.testing.assert_allclose(empty, 1.0, atol=1e-6)


def test_ssim_rejects_images_smaller_than_the_window():
  """An image smaller than the 11x11 window is an error, not a silent NaN."""
  x = jnp.ones((1, 10, 40, 1))
  with pytest.raises(ValueError, match="11x11"):
    losses.ssim(x, x, max_val=MAX_VAL)


# --- L1 and gradient against NumPy -----------------------------------------

def _numpy_l1(pred, target, mask):
  return np.abs(pred - target)[mask].sum() / max(mask.sum(), 1)


def _numpy_gradient_loss(pred, target, mask):
  """Pixel loop: |e(i+1,j) - e(i,j)| + |e(i,j+1) - e(i,j)| over valid pairs, e = pred - target."""
  e = pred.astype(np.float64) - target
  batch, height, width, channels = pred.shape
  total = 0.0
  for b, i, j, c in np.ndindex(batch, height, width, channels):
    if i + 1 < height and mask[b, i, j, c] and mask[b, i + 1, j, c]:
      total += abs(e[b, i + 1, j, c] - e[b, i, j, c])
    if j + 1 < width and mask[b, i, j, c] and mask[b, i, j + 1, c]:
      total += abs(e[b, i, j + 1, c] - e[b, i, j, c])
  return total / max(mask.sum(), 1)


@pytest.mark.parametrize("holes", ["all", "partial", "none"])
def test_l1_and_gradient_match_numpy(holes):
  """L1 and gradient losses equal straightforward NumPy (a pixel loop for the
  gradient) with no holes, with holes (target inf there) and with no valid
  pixel (both 0)."""
  pred, target = _depth_batch(5, size=32)
  mask = _holes(6, pred.shape, holes)
  garbage = jnp.asarray(_with_garbage(target, mask, np.inf))
  m = None if holes == "all" else jnp.asarray(mask)
  l1 = float(losses.l1_loss(jnp.asarray(pred), garbage, m))
  grad = float(losses.gradient_loss(jnp.asarray(pred), garbage, m))
  np.testing.assert_allclose(l1, _numpy_l1(pred, target, mask), rtol=1e-6)
  np.testing.assert_allclose(grad, _numpy_gradient_loss(pred, target, mask), rtol=1e-6)
  if holes == "none":
    assert l1 == 0.0 and grad == 0.0
  else:
    assert l1 > 0.1 and grad > 0.1


# --- closed forms ----------------------------------------------------------

def test_identical_inputs_give_ssim_one_and_zero_losses(perceptual):
  """pred == target: SSIM 1 and every term, and the total, exactly or nearly 0."""
  _, target = _depth_batch(7, batch=1)
  t = jnp.asarray(target)
  np.testing.assert_allclose(np.asarray(losses.ssim(t, t, max_val=MAX_VAL)), 1.0, atol=1e-6)
  total, terms = losses.total_loss(t, t, max_val=MAX_VAL, perceptual_net=perceptual.net)
  assert float(terms["l1"]) == 0.0 and float(terms["gradient"]) == 0.0
  assert float(terms["perceptual"]) == 0.0
  assert abs(float(terms["ssim"])) <= 1e-6 and abs(float(total)) <= 1e-6


# --- PyTorch reference -----------------------------------------------------

def _f64(x_nhwc) -> torch.Tensor:
  """NCHW float64 tensor: the PyTorch reference runs in float64, so what is
  measured is the float32 JAX code's error, not float32 rounding on both sides."""
  return nchw(np.asarray(x_nhwc, np.float64))


def _torch_value_and_grad(fn, pred, *args):
  pred_t = _f64(pred).requires_grad_()
  value = fn(pred_t, *args)
  value.backward()
  return value.item(), nhwc(pred_t.grad)


@pytest.mark.parametrize("holes", ["all", "partial"])
@pytest.mark.parametrize("name", ["l1_loss", "gradient_loss", "ssim_loss"])
def test_pixel_losses_match_torch_reference(name, holes):
  """L1, gradient and SSIM losses: value and gradient w.r.t. the prediction
  equal the PyTorch reference (DenseDepth's conv2d SSIM with a 2-D window,
  tf.image.image_gradients-style differences; float64) to 1e-5 relative,
  with and without holes."""
  pred, target = _depth_batch(8)
  mask = _holes(9, pred.shape, holes)
  kwargs = {"max_val": MAX_VAL} if name == "ssim_loss" else {}
  jax_fn = lambda p: getattr(losses, name)(p, jnp.asarray(target), jnp.asarray(mask), **kwargs)
  value, grad = jax.value_and_grad(jax_fn)(jnp.asarray(pred))
  t_kwargs = {"val_range": MAX_VAL} if name == "ssim_loss" else {}
  t_value, t_grad = _torch_value_and_grad(
      lambda p, t, m: getattr(torch_reference, name)(p, t, m, **t_kwargs),
      pred, _f64(target), nchw(mask))
  assert abs(float(value) - t_value) <= 1e-5 * abs(t_value)
  assert relative_max_error(grad, t_grad) <= 1e-5


class _Perceptual:
  """The same random ResNet-50 (non-trivial BatchNorm statistics) in PyTorch
  (float64) and, converted, in Flax (truncated after layer1)."""

  def __init__(self, tmp_path):
    torch.manual_seed(11)
    self.torch_net = torchvision.models.resnet50(weights=None)
    randomize_batchnorm(self.torch_net, seed=12)
    self.torch_net.eval()
    torch.save(self.torch_net.state_dict(), tmp_path / "r50.pth")
    self.torch_net = self.torch_net.double()  # the float64 reference
    self.net = weights_conversion.load_torchvision("resnet50", tmp_path / "r50.pth",
                                                   last_stage="layer1")


@pytest.fixture(scope="module")
def perceptual(tmp_path_factory):
  return _Perceptual(tmp_path_factory.mktemp("perceptual"))


@pytest.fixture(scope="module")
def perceptual_case(perceptual):
  """One image with holes (0 there); the JAX perceptual loss and its gradient."""
  pred, target = _depth_batch(13, batch=1)
  mask = _holes(14, pred.shape, "partial")
  target = _with_garbage(target, mask, 0.0)
  fn = lambda p: losses.perceptual_loss(p, jnp.asarray(target), jnp.asarray(mask),
                                        net=perceptual.net, max_val=MAX_VAL)
  value, grad = jax.value_and_grad(fn)(jnp.asarray(pred))
  return dict(pred=pred, target=target, mask=mask, value=float(value), grad=np.asarray(grad))


def test_perceptual_loss_matches_torch_reference(perceptual, perceptual_case):
  """Perceptual loss (holes filled with the prediction) on the converted
  ResNet-50 against the float64 PyTorch reference on torchvision's ResNet-50
  with the same weights: the value to 1e-5 relative; the gradient to 1e-2 in
  relative L2 norm (measured ~2e-3).

  Why not 1e-5 for this gradient: the gradient of a ReLU network's L1
  feature distance is discontinuous (ReLU and max-pool kinks, the signs of
  800K feature differences), and a few elements sit within float32 rounding
  of a kink. One that takes the other side moves the gradient by ~1% on ~8%
  of the pixels; PyTorch float32 is as far from PyTorch float64 as JAX is.
  `test_perceptual_loss_gradient_matches_torch_with_a_smooth_network` checks
  the loss's own chain to 1e-5."""
  c = perceptual_case
  pred_t = _f64(c["pred"]).requires_grad_()
  t_value = torch_reference.perceptual_loss(pred_t, _f64(c["target"]), perceptual.torch_net,
                                            nchw(c["mask"]), val_range=MAX_VAL)
  assert abs(c["value"] - t_value.item()) <= 1e-5 * t_value.item()
  assert c["value"] > 1e-3
  t_value.backward()
  t_grad = nhwc(pred_t.grad)
  assert np.linalg.norm(c["grad"] - t_grad) <= 1e-2 * np.linalg.norm(t_grad)
  assert np.all(c["grad"][~c["mask"]] == 0.0) and np.all(t_grad[~c["mask"]] == 0.0)


class _SmoothFeatures(nnx.Module):
  """A kink-free stand-in for the perceptual network: tanh(conv 7x7/4)."""

  def __init__(self, weight_OxIxHxW: np.ndarray, bias: np.ndarray):
    from percdepth_jax.models.layers import Conv2d
    self.conv = Conv2d(3, weight_OxIxHxW.shape[0], 7, stride=4, padding=3,
                       rngs=nnx.Rngs(0))
    self.conv.kernel[...] = jnp.asarray(np.transpose(weight_OxIxHxW, (2, 3, 1, 0)))
    self.conv.bias[...] = jnp.asarray(bias)

  def __call__(self, x_BxHxWx3):
    return {"layer1": jnp.tanh(self.conv(x_BxHxWx3))}


def test_perceptual_loss_gradient_matches_torch_with_a_smooth_network():
  """The perceptual loss's own chain (hole filling and detaching, scaling by
  max_val, 3 channels, align-corners resize to 224, ImageNet normalisation,
  mean |difference|) with a smooth stand-in network (tanh of a 7x7/4 conv,
  the same weights in both): value and gradient equal the float64 PyTorch
  reference to 1e-5 relative."""
  rng = np.random.RandomState(31)
  weight = (0.1 * rng.randn(16, 3, 7, 7)).astype(np.float32)
  bias = (0.1 * rng.randn(16)).astype(np.float32)
  net = _SmoothFeatures(weight, bias)
  torch_conv = torch.nn.Conv2d(3, 16, 7, stride=4, padding=3).double()
  with torch.no_grad():
    torch_conv.weight.copy_(torch.from_numpy(weight))
    torch_conv.bias.copy_(torch.from_numpy(bias))
  # resnet_layer1 runs conv1, bn1, relu, maxpool, layer1.
  torch_net = torch.nn.Module()
  torch_net.conv1, torch_net.relu = torch_conv, torch.nn.Tanh()
  torch_net.bn1 = torch_net.maxpool = torch_net.layer1 = torch.nn.Identity()

  _, target = _depth_batch(32, batch=1)
  # A prediction 30-50% above the target everywhere: no feature difference
  # is within rounding of 0, where L1 has no derivative.
  pred = (target * (1.3 + 0.2 * rng.rand(*target.shape))).astype(np.float32)
  mask = _holes(33, pred.shape, "partial")
  target = _with_garbage(target, mask, np.nan)
  fn = lambda p: losses.perceptual_loss(p, jnp.asarray(target), jnp.asarray(mask), net=net,
                                        max_val=MAX_VAL)
  value, grad = jax.value_and_grad(fn)(jnp.asarray(pred))
  t_value, t_grad = _torch_value_and_grad(
      lambda p, t, m: torch_reference.perceptual_loss(p, t, torch_net, m, val_range=MAX_VAL),
      pred, _f64(target), nchw(mask))
  assert float(value) > 1e-3
  assert abs(float(value) - t_value) <= 1e-5 * t_value
  assert relative_max_error(grad, t_grad) <= 1e-5


def test_total_loss_matches_torch_reference(perceptual, perceptual_case):
  """total_loss with the paper's weights: total and each term equal the
  PyTorch reference's to 1e-5 relative (holes, zeros at holes), and the total
  is the weighted sum of the returned terms."""
  c = perceptual_case
  total, terms = losses.total_loss(jnp.asarray(c["pred"]), jnp.asarray(c["target"]),
                                   jnp.asarray(c["mask"]), max_val=MAX_VAL,
                                   perceptual_net=perceptual.net)
  t_total, t_terms = torch_reference.total_loss(
      _f64(c["pred"]), _f64(c["target"]), nchw(c["mask"]), val_range=MAX_VAL,
      resnet=perceptual.torch_net)
  assert sorted(terms) == sorted(t_terms) == ["gradient", "l1", "perceptual", "ssim"]
  for name, value in terms.items():
    assert abs(float(value) - t_terms[name].item()) <= 1e-5 * abs(t_terms[name].item()), name
  assert abs(float(total) - t_total.item()) <= 1e-5 * t_total.item()
  weighted = (0.1 * terms["l1"] + terms["gradient"] + terms["ssim"] + 0.5 * terms["perceptual"])
  np.testing.assert_allclose(float(total), float(weighted), rtol=1e-6)


def test_total_loss_weights_and_perceptual_net_argument():
  """Custom weights reweight the same terms; weight 0 for the perceptual term
  skips it (no network needed); a non-zero weight without a network is an
  error rather than a silently different loss; the gradient without the
  perceptual term matches the PyTorch reference to 1e-5 relative."""
  pred, target = _depth_batch(15)
  mask = jnp.asarray(_holes(16, pred.shape, "partial"))
  p, t = jnp.asarray(pred), jnp.asarray(target)
  weights = losses.LossWeights(l1=2.0, gradient=0.5, ssim=3.0, perceptual=0.0)
  fn = lambda p_: losses.total_loss(p_, t, mask, max_val=MAX_VAL, weights=weights)
  (total, terms), grad = jax.value_and_grad(fn, has_aux=True)(p)
  assert "perceptual" not in terms
  np.testing.assert_allclose(
      float(total), 2.0 * terms["l1"] + 0.5 * terms["gradient"] + 3.0 * terms["ssim"], rtol=1e-6)
  t_value, t_grad = _torch_value_and_grad(
      lambda p_, t_, m_: torch_reference.total_loss(p_, t_, m_, val_range=MAX_VAL,
                                                    weights=tuple(weights))[0],
      pred, _f64(target), nchw(np.asarray(mask)))
  assert abs(float(total) - t_value) <= 1e-5 * t_value
  assert relative_max_error(grad, t_grad) <= 1e-5
  with pytest.raises(ValueError, match="perceptual_net"):
    losses.total_loss(p, t, mask, max_val=MAX_VAL)


def test_perceptual_network_is_frozen(perceptual):
  """No gradient reaches the perceptual network's parameters even when it is
  differentiated explicitly, and a network in training mode is refused."""
  pred, target = _depth_batch(17, batch=1)

  def loss_of_net(net):
    return losses.perceptual_loss(jnp.asarray(pred), jnp.asarray(target), net=net,
                                  max_val=MAX_VAL)

  grads = nnx.grad(loss_of_net)(perceptual.net)
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]
  assert leaves and all(np.all(g == 0.0) for g in leaves)
  perceptual.net.train()
  try:
    with pytest.raises(ValueError, match="eval mode"):
      loss_of_net(perceptual.net)
  finally:
    perceptual.net.eval()


# --- holes: finite values and gradients ------------------------------------

@pytest.mark.parametrize("holes", ["all", "partial", "none"])
@pytest.mark.parametrize("garbage", [0.0, np.inf, np.nan])
def test_losses_and_gradients_finite_with_holes(holes, garbage):
  """Every pixel term and the total (perceptual weight 0 here; the perceptual
  term is covered below through the depth network) has finite values and
  gradients when the target holds 0, inf or NaN at holes, for all-valid,
  partly valid and all-invalid batches; the gradient is exactly 0 at holes
  and non-zero at every valid pixel; with no valid pixel, L1 and gradient
  are 0 and the SSIM loss ~0."""
  pred, target = _depth_batch(18)
  mask = _holes(19, pred.shape, holes)
  t = jnp.asarray(_with_garbage(target, mask, garbage))
  fn = lambda p: losses.total_loss(p, t, jnp.asarray(mask), max_val=MAX_VAL,
                                   weights=(0.1, 1.0, 1.0, 0.0))
  (total, terms), grad = jax.value_and_grad(fn, has_aux=True)(jnp.asarray(pred))
  values = np.array([float(total)] + [float(v) for v in terms.values()])
  assert np.all(np.isfinite(values)) and np.all(np.isfinite(np.asarray(grad)))
  grad = np.asarray(grad)
  assert np.all(grad[~mask] == 0.0)  # holes receive no gradient
  if holes == "none":
    assert float(terms["l1"]) == 0.0 and float(terms["gradient"]) == 0.0
    assert abs(float(terms["ssim"])) <= 1e-6
  else:
    assert float(total) > 0.1 and np.abs(grad[mask]).min() > 0.0


def test_total_loss_gradient_through_depth_net_is_finite_with_holes(perceptual, tmp_path):
  """jax.grad of total_loss (all four terms, the paper's weights) through a
  small DepthNet (decoder width 0.125, converted from a random PyTorch
  reference model) on a 2 x 64 x 64 batch whose raw depth has holes (0 m,
  so the DepthNorm target is inf there): the loss and every parameter
  gradient are finite, and the gradient is not all zero. (Eval-mode
  BatchNorm: it halves the compile time and is irrelevant to holes.)"""
  from weights_conversion.convert import densedepth_model_config, densedepth_to_flax
  torch.manual_seed(21)
  torch.save(torch_reference.DepthModel(decoder_width=0.125).state_dict(), tmp_path / "dn.pth")
  config = densedepth_model_config(decoder_width=0.125, input_norm="imagenet")
  model = densedepth_to_flax(tmp_path / "dn.pth", config)

  rng = np.random.RandomState(22)
  image = jnp.asarray(rng.rand(2, 64, 64, 3).astype(np.float32) * 255.0)
  _, target = _depth_batch(23)
  depth_m = 10.0 / target
  mask = _holes(24, depth_m.shape, "partial")
  depth_m[~mask] = 0.0  # no measurement
  with np.errstate(divide="ignore"):
    raw_target = jnp.asarray((10.0 / depth_m).astype(np.float32))
  assert not np.all(np.isfinite(raw_target))

  model_def, params, model_rest = nnx.split(model, nnx.Param, ...)
  net_def, net_state = nnx.split(perceptual.net)

  def loss_fn(params, model_rest, net_state, image, target, mask):
    model = nnx.merge(model_def, params, model_rest)
    return losses.total_loss(model(image), target, mask, max_val=config.target_max_value,
                             perceptual_net=nnx.merge(net_def, net_state))

  # Fewer backend optimisations: this test checks values, not speed, and
  # compiling DenseNet-121's backward pass otherwise dominates its run time.
  step = jax.jit(jax.value_and_grad(loss_fn, has_aux=True),
                 compiler_options={"xla_backend_optimization_level": 0})
  (total, terms), grads = step(params, model_rest, net_state, image, raw_target,
                               jnp.asarray(mask))
  assert np.isfinite(float(total)) and all(np.isfinite(float(v)) for v in terms.values())
  leaves = [np.asarray(g) for g in jax.tree.leaves(grads)]  # NumPy: no per-shape compiles
  assert len(leaves) > 100
  assert all(np.all(np.isfinite(g)) for g in leaves)
  assert any(np.any(g != 0.0) for g in leaves)
