"""The training loss (docs/design.md, 'The loss and the recipe'), in jax.numpy.

  L = 0.1 * L1 + L_grad + L_ssim + 0.5 * L_perc

All functions take the prediction first and the target second, NHWC
(`pred_BxHxWxC`, `target_BxHxWxC`, C = 1 for depth), both in the target
representation (DepthNorm 10 / depth_m, or metres; see `ModelConfig.target`),
and an optional validity mask (`mask_BxHxWx1`, broadcastable to the inputs,
bool or 0/1; True = the target has a measurement there; None = all valid).
Build the mask from the raw depth in metres (0 or non-finite = no
measurement): a hole's target value is never read, so it may be 0, inf or NaN.

Holes. Every loss first replaces the target at invalid pixels by the
prediction, and the prediction there by itself with its gradient stopped
(`_fill_holes`). A hole therefore has zero error and its pixels receive no
gradient from any term (the gradient of the loss is exactly 0 there):
- L1 and L_grad average over valid pixels only (a forward difference counts
  only where both of its pixels are valid; the denominator is the number of
  valid pixels, which reduces to DenseDepth's mean over all pixels when
  nothing is missing). An all-invalid batch gives 0.
- SSIM and the perceptual term run on whole images with the filled target:
  windows and receptive fields inside a hole compare the prediction with
  itself (SSIM 1, zero feature difference); windows that straddle a hole's
  border see identical values at the hole's pixels, so only the valid pixels
  make a difference (and only they get a gradient). Holes thus dilute these
  two terms in proportion to their area rather than being renormalised away.
  An all-invalid image has SSIM 1 and zero perceptual loss.
Absolute values use the subgradient 0 at 0 (as PyTorch; `jnp.abs` uses 1),
so exact ties send no gradient.
None of the functions produces NaN or inf values or gradients for all-valid,
partly valid or all-invalid batches (whatever the target holds at holes).
"""

from __future__ import annotations

import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from percdepth_jax.models.config import IMAGENET_MEAN, IMAGENET_STD
from percdepth_jax.models.layers import resize_bilinear_align_corners

# SSIM constants (Wang et al. 2004; tf.image.ssim; DenseDepth).
SSIM_FILTER_SIZE = 11
SSIM_FILTER_SIGMA = 1.5
SSIM_K1 = 0.01
SSIM_K2 = 0.03
# The perceptual network sees 224x224 images (its ImageNet resolution).
PERCEPTUAL_SIZE = 224


class LossWeights(NamedTuple):
  """Weights of the loss terms; the defaults are the paper's."""
  l1: float = 0.1
  gradient: float = 1.0
  ssim: float = 1.0
  perceptual: float = 0.5


def _check_inputs(pred: jax.Array, target: jax.Array,
                  mask: jax.Array | None) -> jax.Array | None:
  if pred.ndim != 4 or pred.shape != target.shape:
    raise ValueError(f"losses need NHWC prediction and target of the same shape, "
                     f"got {pred.shape} and {target.shape}.")
  if mask is None:
    return None
  try:
    return jnp.broadcast_to(jnp.asarray(mask).astype(bool), pred.shape)
  except ValueError:
    raise ValueError(f"mask of shape {jnp.shape(mask)} does not broadcast to the "
                     f"prediction's shape {pred.shape}.") from None


def _fill_holes(pred: jax.Array, target: jax.Array,
                valid: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  """(pred, target) with both set to stop_gradient(pred) at invalid pixels.

  `where` (not a multiplication by the mask) keeps NaN/inf hole values out of
  both the value and the gradient.
  """
  if valid is None:
    return pred, target
  frozen = jax.lax.stop_gradient(pred)
  return jnp.where(valid, pred, frozen), jnp.where(valid, target, frozen)


def _abs(x: jax.Array) -> jax.Array:
  """|x| with derivative sign(x), i.e. 0 at 0 (jnp.abs's is 1 there)."""
  return x * jax.lax.stop_gradient(jnp.sign(x))


def _num_valid(pred: jax.Array, valid: jax.Array | None) -> jax.Array:
  if valid is None:
    return jnp.asarray(pred.size, jnp.float32)
  # At least 1: an all-invalid batch gives 0 / 1 = 0, not 0 / 0.
  return jnp.maximum(jnp.sum(valid, dtype=jnp.float32), 1.0)


def l1_loss(pred_BxHxWxC: jax.Array, target_BxHxWxC: jax.Array,
            mask: jax.Array | None = None) -> jax.Array:
  """Mean |pred - target| over valid pixels (0 if none is valid)."""
  valid = _check_inputs(pred_BxHxWxC, target_BxHxWxC, mask)
  pred, target = _fill_holes(pred_BxHxWxC, target_BxHxWxC, valid)
  return jnp.sum(_abs(pred - target)) / _num_valid(pred, valid)


def gradient_loss(pred_BxHxWxC: jax.Array, target_BxHxWxC: jax.Array,
                  mask: jax.Array | None = None) -> jax.Array:
  """Mean of |dx(pred - target)| + |dy(pred - target)| over valid pixels.

  Forward differences as tf.image.image_gradients (which pads the last row and
  column with zero differences), so without a mask this is DenseDepth's
  `mean(|dy_pred - dy_true| + |dx_pred - dx_true|)`. A difference counts only
  where both of its pixels are valid; the sum is divided by the number of
  valid pixels.
  """
  valid = _check_inputs(pred_BxHxWxC, target_BxHxWxC, mask)
  pred, target = _fill_holes(pred_BxHxWxC, target_BxHxWxC, valid)
  err = pred - target
  dy = _abs(err[:, 1:] - err[:, :-1])
  dx = _abs(err[:, :, 1:] - err[:, :, :-1])
  if valid is not None:
    dy = jnp.where(valid[:, 1:] & valid[:, :-1], dy, 0.0)
    dx = jnp.where(valid[:, :, 1:] & valid[:, :, :-1], dx, 0.0)
  return (jnp.sum(dy) + jnp.sum(dx)) / _num_valid(pred_BxHxWxC, valid)


@functools.lru_cache(maxsize=None)
def _gaussian_taps(size: int, sigma: float) -> np.ndarray:
  """Normalised 1-D Gaussian (scipy.ndimage / tf.image.ssim's window)."""
  x = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
  taps = np.exp(-0.5 * (x / sigma) ** 2)
  return taps / taps.sum()


def _gaussian_filter_valid(x_BxHxWxC: jax.Array, size: int,
                           sigma: float) -> jax.Array:
  """Depthwise separable Gaussian filter, VALID (no padding): H-K+1 x W-K+1."""
  channels = x_BxHxWxC.shape[-1]
  taps = jnp.asarray(_gaussian_taps(size, sigma), x_BxHxWxC.dtype)
  filt = functools.partial(
      jax.lax.conv_general_dilated, window_strides=(1, 1), padding="VALID",
      dimension_numbers=("NHWC", "HWIO", "NHWC"), feature_group_count=channels,
      # Full float32: SSIM subtracts E[x]^2 from E[x^2] (values up to 1e4 for
      # DepthNorm), which TF32/bf16 convolutions on GPUs would ruin.
      precision=jax.lax.Precision.HIGHEST)
  x = filt(x_BxHxWxC, jnp.tile(taps.reshape(size, 1, 1, 1), (1, 1, 1, channels)))
  return filt(x, jnp.tile(taps.reshape(1, size, 1, 1), (1, 1, 1, channels)))


def ssim(pred_BxHxWxC: jax.Array, target_BxHxWxC: jax.Array,
         mask: jax.Array | None = None, *, max_val: float,
         filter_size: int = SSIM_FILTER_SIZE,
         filter_sigma: float = SSIM_FILTER_SIGMA,
         k1: float = SSIM_K1, k2: float = SSIM_K2) -> jax.Array:
  """Per-image SSIM `ssim_B`, as tf.image.ssim.

  Gaussian window (11 taps, sigma 1.5) applied separably, valid filtering (no
  padding), population (co)variances, C1 = (k1 max_val)^2, C2 = (k2 max_val)^2;
  the SSIM map is averaged over the (H-10) x (W-10) window positions and the
  channels. Equals skimage's `structural_similarity(..., gaussian_weights=True,
  sigma=1.5, use_sample_covariance=False, data_range=max_val)`.
  `max_val`: the dynamic range, `ModelConfig.target_max_value` (100 for
  DepthNorm, 10 for metres). Holes (mask False) are filled with the
  prediction (module docstring).
  """
  valid = _check_inputs(pred_BxHxWxC, target_BxHxWxC, mask)
  _, height, width, _ = pred_BxHxWxC.shape
  if min(height, width) < filter_size:
    raise ValueError(f"SSIM needs images of at least {filter_size}x{filter_size}, "
                     f"got {height}x{width}.")
  x, y = _fill_holes(pred_BxHxWxC.astype(jnp.float32),
                     target_BxHxWxC.astype(jnp.float32), valid)
  # One depthwise filter pass for all five moments.
  moments = _gaussian_filter_valid(
      jnp.concatenate([x, y, x * x, y * y, x * y], axis=-1), filter_size, filter_sigma)
  mu_x, mu_y, e_xx, e_yy, e_xy = jnp.split(moments, 5, axis=-1)
  # Rounding can make E[x^2] - E[x]^2 slightly negative in flat regions;
  # clamping keeps the denominator >= c1 * c2 > 0 even for wild predictions.
  var_x = jnp.maximum(e_xx - mu_x * mu_x, 0.0)
  var_y = jnp.maximum(e_yy - mu_y * mu_y, 0.0)
  cov_xy = e_xy - mu_x * mu_y
  c1 = (k1 * max_val) ** 2
  c2 = (k2 * max_val) ** 2
  ssim_map = ((2.0 * mu_x * mu_y + c1) * (2.0 * cov_xy + c2)
              / ((mu_x * mu_x + mu_y * mu_y + c1) * (var_x + var_y + c2)))
  return jnp.mean(ssim_map, axis=(1, 2, 3))


def ssim_loss(pred_BxHxWxC: jax.Array, target_BxHxWxC: jax.Array,
              mask: jax.Array | None = None, *, max_val: float) -> jax.Array:
  """mean over the batch of clip((1 - SSIM) / 2, 0, 1) (DenseDepth's L_ssim)."""
  s_B = ssim(pred_BxHxWxC, target_BxHxWxC, mask, max_val=max_val)
  return jnp.mean(jnp.clip((1.0 - s_B) * 0.5, 0.0, 1.0))


def _frozen(net: nnx.Module) -> nnx.Module:
  """A copy of `net` whose parameters and statistics carry no gradient."""
  for _, module in nnx.iter_modules(net):
    if getattr(module, "use_running_average", True) is False:
      raise ValueError("the perceptual network must be in eval mode (frozen "
                       "BatchNorm statistics): call `net.eval()` first.")
  graphdef, state = nnx.split(net)
  return nnx.merge(graphdef, jax.lax.stop_gradient(state))


def perceptual_input(depth_BxHxWx1: jax.Array, max_val: float) -> jax.Array:
  """Depth (target representation) -> the perceptual network's input.

  depth / max_val (so [0, max_val] -> [0, 1]; no clipping, which would cut
  the gradient), repeated to 3 channels, bilinearly resized to 224x224 with
  align_corners=True (as the rest of the project), ImageNet mean/std.
  """
  x = depth_BxHxWx1.astype(jnp.float32) / max_val
  x = resize_bilinear_align_corners(x, PERCEPTUAL_SIZE, PERCEPTUAL_SIZE)
  x = jnp.broadcast_to(x, x.shape[:3] + (3,))
  return (x - jnp.asarray(IMAGENET_MEAN)) / jnp.asarray(IMAGENET_STD)


def perceptual_loss(pred_BxHxWx1: jax.Array, target_BxHxWx1: jax.Array,
                    mask: jax.Array | None = None, *, net: nnx.Module,
                    max_val: float) -> jax.Array:
  """mean |phi(target) - phi(pred)|, phi = `net(x)["layer1"]`.

  `net`: the eval-mode ResNet-50 truncated after layer1
  (`weights_conversion.load_torchvision("resnet50", path, last_stage="layer1")`).
  It is frozen here (stop_gradient on its state), so no gradient reaches it
  even when a caller differentiates a structure that contains it. Pass it as
  an argument of your jitted step rather than closing over it, so its weights
  are not baked into the compiled program as constants. Preprocessing:
  `perceptual_input`. Holes are filled with the prediction first (module
  docstring). Prediction and target go through the network as one batch.
  """
  valid = _check_inputs(pred_BxHxWx1, target_BxHxWx1, mask)
  if pred_BxHxWx1.shape[-1] != 1:
    raise ValueError(f"perceptual_loss expects depth with 1 channel, got "
                     f"{pred_BxHxWx1.shape}.")
  pred, target = _fill_holes(pred_BxHxWx1, target_BxHxWx1, valid)
  batch = pred.shape[0]
  x_2Bx224x224x3 = perceptual_input(jnp.concatenate([pred, target], axis=0), max_val)
  features = _frozen(net)(x_2Bx224x224x3)["layer1"].astype(jnp.float32)
  return jnp.mean(_abs(features[:batch] - features[batch:]))


def total_loss(pred_BxHxWx1: jax.Array, target_BxHxWx1: jax.Array,
               mask: jax.Array | None = None, *, max_val: float,
               perceptual_net: nnx.Module | None = None,
               weights: LossWeights | Sequence[float] = LossWeights()
               ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """The paper's loss: w_l1 L1 + w_grad L_grad + w_ssim L_ssim + w_perc L_perc.

  Args:
    pred_BxHxWx1: network output in the target representation.
    target_BxHxWx1: ground truth in the same representation (any value at holes).
    mask: validity, broadcastable to the prediction (True = measured); None =
      all valid.
    max_val: the representation's maximum, `ModelConfig.target_max_value`
      (SSIM's dynamic range and the perceptual input scale).
    perceptual_net: the frozen eval-mode ResNet-50 truncated after layer1.
      Required unless `weights.perceptual` is 0 (then the term is skipped).
    weights: (l1, gradient, ssim, perceptual), default (0.1, 1, 1, 0.5).

  Returns:
    (total, terms): the weighted scalar sum and the unweighted terms
    {"l1", "gradient", "ssim", and "perceptual" when computed} for logging.
  """
  weights = LossWeights(*weights)
  terms = {
      "l1": l1_loss(pred_BxHxWx1, target_BxHxWx1, mask),
      "gradient": gradient_loss(pred_BxHxWx1, target_BxHxWx1, mask),
      "ssim": ssim_loss(pred_BxHxWx1, target_BxHxWx1, mask, max_val=max_val),
  }
  if weights.perceptual:
    if perceptual_net is None:
      raise ValueError("total_loss has a perceptual weight of "
                       f"{weights.perceptual} but no perceptual_net; pass the "
                       "layer1-truncated ResNet-50 or set the weight to 0.")
    terms["perceptual"] = perceptual_loss(pred_BxHxWx1, target_BxHxWx1, mask,
                                          net=perceptual_net, max_val=max_val)
  total = sum(getattr(weights, name) * value for name, value in terms.items())
  return total, terms
