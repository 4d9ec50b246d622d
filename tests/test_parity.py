"""Converted weights give PyTorch's outputs: torchvision DenseNet/ResNet-50 and
the full depth model against the PyTorch reference, fp32 relative max error
<= 1e-4, at two non-square input sizes."""

import copy
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torchvision
from flax import nnx

import percdepth_jax
from percdepth_jax.models import DepthNet, ModelConfig
from tests.helpers import nchw, nhwc, relative_max_error
from weights_conversion.parity import randomize_batchnorm
from weights_conversion import (convert_densedepth, convert_torchvision,
                                densedepth_model_config, load_torchvision)
from weights_conversion import torch_reference

SIZES = [(64, 96), (96, 160)]
TOLERANCE = 1e-4
# float64 against float64 (test_training_gradients_match_torch_autograd)
FLOAT64_GRADIENT_TOLERANCE = 1e-9
IMAGENET_MEAN = np.array([0.485, 0.456, 0.406], np.float32)
IMAGENET_STD = np.array([0.229, 0.224, 0.225], np.float32)


def _normalised_images(height, width, seed=0):
  image = np.random.RandomState(seed).uniform(0, 255, (2, height, width, 3))
  return ((image / 255.0 - IMAGENET_MEAN) / IMAGENET_STD).astype(np.float32)


def _torchvision_file(arch, tmp_path_factory, seed):
  torch.manual_seed(seed)
  model = getattr(torchvision.models, arch)(weights=None)
  randomize_batchnorm(model, seed + 1)
  path = tmp_path_factory.mktemp(arch) / f"{arch}.pth"
  torch.save(model.state_dict(), path)
  return model.eval(), path


@pytest.fixture(scope="module")
def densenet121(tmp_path_factory):
  model, path = _torchvision_file("densenet121", tmp_path_factory, seed=1)
  out_dir = path.parent / "flax"
  convert_torchvision("densenet121", path, out_dir)
  return model, load_torchvision("densenet121", out_dir)


@pytest.fixture(scope="module")
def resnet50(tmp_path_factory):
  model, path = _torchvision_file("resnet50", tmp_path_factory, seed=2)
  return model, path, load_torchvision("resnet50", path)


_forward = nnx.jit(lambda module, x: module(x))


@pytest.mark.parametrize("height,width", SIZES)
def test_densenet121_features_match_torchvision(densenet121, height, width):
  """Every named DenseNet-121 feature and the logits match torchvision's."""
  torch_model, flax_model = densenet121
  x = _normalised_images(height, width)
  with torch.no_grad():
    expected = torch_reference.densenet_features(torch_model, nchw(x))
  actual = _forward(flax_model, x)
  assert set(actual) == {"relu0", "pool0", "transition1", "transition2", "norm5", "logits"}
  for name, value in expected.items():
    value = value.numpy() if name == "logits" else nhwc(value)
    error = relative_max_error(actual[name], value)
    assert error <= TOLERANCE, (name, error)


@pytest.mark.parametrize("height,width", SIZES)
def test_resnet50_features_match_torchvision(resnet50, height, width):
  """ResNet-50 stem, layer1..layer4 and logits match torchvision's."""
  torch_model, _, flax_model = resnet50
  x = _normalised_images(height, width, seed=1)
  with torch.no_grad():
    expected = torch_reference.resnet_features(torch_model, nchw(x))
  actual = _forward(flax_model, x)
  for name, value in expected.items():
    value = value.numpy() if name == "logits" else nhwc(value)
    error = relative_max_error(actual[name], value)
    assert error <= TOLERANCE, (name, error)


def test_torch_reference_tiny_densenet_is_the_jax_spec():
  """The PyTorch reference writes out `densenet_tiny` (so that it never
  imports JAX); its numbers are percdepth_jax's spec table's."""
  from percdepth_jax.models.densenet import DENSENET_SPECS
  spec = DENSENET_SPECS["densenet_tiny"]
  assert torch_reference.DENSENET_TINY == (spec.growth_rate, spec.block_config,
                                           spec.num_init_features, spec.bn_size)


def test_resnet50_truncated_after_layer1(resnet50):
  """The perceptual network (truncated after layer1) has only stem and layer1
  and gives the same layer1 as torchvision."""
  torch_model, path, _ = resnet50
  truncated = load_torchvision("resnet50", path, last_stage="layer1")
  assert not hasattr(truncated, "layer2")
  x = _normalised_images(64, 96, seed=2)
  out = _forward(truncated, x)
  assert set(out) == {"stem", "layer1"}
  with torch.no_grad():
    expected = nhwc(torch_model.layer1(torch_model.maxpool(torch_model.relu(
        torch_model.bn1(torch_model.conv1(nchw(x)))))))
  assert relative_max_error(out["layer1"], expected) <= TOLERANCE


def test_perceptual_net_from_converted_full_resnet50(resnet50, tmp_path):
  """A directory holding the full converted ResNet-50 (what the README's
  convert command writes) serves as the perceptual network: cut after
  layer1, its layer1 equals torchvision's."""
  torch_model, path, _ = resnet50
  convert_torchvision("resnet50", path, tmp_path / "resnet50")
  truncated = load_torchvision("resnet50", tmp_path / "resnet50", last_stage="layer1")
  assert truncated.last_stage == "layer1" and not hasattr(truncated, "layer2")
  x = _normalised_images(64, 96, seed=3)
  with torch.no_grad():
    expected = nhwc(torch_model.layer1(torch_model.maxpool(torch_model.relu(
        torch_model.bn1(torch_model.conv1(nchw(x)))))))
  assert relative_max_error(_forward(truncated, x)["layer1"], expected) <= TOLERANCE


def test_load_torchvision_checks_the_directory_architecture(resnet50, tmp_path):
  """load_torchvision(arch, DIR) on a directory of another architecture is a
  UserInputError naming both and the convert command, not a later traceback;
  so is a ResNet-50 cut before the stage asked for."""
  _, path, _ = resnet50
  convert_torchvision("resnet50", path, tmp_path / "resnet50")
  with pytest.raises(percdepth_jax.UserInputError,
                     match=r"holds resnet50 \(up to layer4\), not densenet121.*--arch densenet121"):
    load_torchvision("densenet121", tmp_path / "resnet50")
  torch.manual_seed(0)
  torch.save(torchvision.models.densenet121(weights=None).state_dict(), tmp_path / "d.pth")
  convert_torchvision("densenet121", tmp_path / "d.pth", tmp_path / "densenet121")
  with pytest.raises(percdepth_jax.UserInputError, match="holds densenet121, not densenet169"):
    load_torchvision("densenet169", tmp_path / "densenet121")
  with pytest.raises(percdepth_jax.UserInputError, match="holds densenet121, not resnet50"):
    load_torchvision("resnet50", tmp_path / "densenet121", last_stage="layer1")


@pytest.fixture(scope="module")
def converted_depth_models(torch_depth_models, tmp_path_factory):
  converted = {}
  for name, (model, path, kwargs) in torch_depth_models.items():
    config = densedepth_model_config(
        decoder_width=kwargs["decoder_width"], input_norm=kwargs["input_norm"],
        densedepth_compat=kwargs.get("densedepth_compat", False))
    out_dir = tmp_path_factory.mktemp("converted") / name
    convert_densedepth(path, out_dir, config)
    converted[name] = (model, out_dir)
  return converted


@pytest.mark.parametrize("variant", ["paper", "compat"])
@pytest.mark.parametrize("height,width", SIZES)
def test_depth_model_matches_torch_reference(converted_depth_models, variant,
                                             height, width):
  """The converted depth model predicts what the PyTorch reference predicts
  (paper variant at full resolution; DenseDepth-compat at half resolution)."""
  torch_model, out_dir = converted_depth_models[variant]
  model = percdepth_jax.load_model(out_dir)
  image = np.random.RandomState(3).uniform(0, 255, (2, height, width, 3)).astype(np.float32)
  with torch.no_grad():
    expected = nhwc(torch_model(nchw(image)))
  actual = np.asarray(_forward(model, image))
  stride = 2 if variant == "compat" else 1
  assert actual.shape == (2, height // stride, width // stride, 1)
  assert relative_max_error(actual, expected) <= TOLERANCE


def test_predict_depth_matches_torch_flip_average(converted_depth_models):
  """predict_depth = the mean of the metres of the prediction and of the
  un-flipped prediction of the mirrored image, computed here in PyTorch."""
  torch_model, out_dir = converted_depth_models["paper"]
  model = percdepth_jax.load_model(out_dir)
  image = np.random.RandomState(4).randint(0, 256, (1, 64, 96, 3)).astype(np.uint8)
  to_metres = lambda out: 10.0 / out.clamp(1.0, 100.0)
  with torch.no_grad():
    x = nchw(image.astype(np.float32))
    depth = to_metres(torch_model(x))
    depth_flip = to_metres(torch_model(torch.flip(x, dims=[3]))).flip(dims=[3])
  expected = (0.5 * (depth + depth_flip))[:, 0].numpy()
  # At the image's own size, as the reference runs (a converted model's
  # default is NYU's 480x640 pixel count).
  actual = percdepth_jax.predict_depth(model, image, flip=True, resolution="native")
  assert actual.dtype == np.float32 and actual.shape == (1, 64, 96)
  assert relative_max_error(actual, expected) <= TOLERANCE


def test_model_directory_records_config(converted_depth_models):
  """A converted directory records its model config; loading rebuilds it."""
  _, out_dir = converted_depth_models["compat"]
  meta = json.loads((out_dir / "model.json").read_text())
  assert meta["kind"] == "depth_net"
  assert meta["config"]["output_stride"] == 2
  assert meta["config"]["leaky_relu_after_conv_a"] is False
  assert meta["config"]["input_norm"] == "unit"
  model = percdepth_jax.load_model(out_dir)
  assert model.config == ModelConfig(**meta["config"])


def test_bfloat16_forward_close_to_float32(converted_depth_models):
  """bfloat16 compute (float32 parameters) runs, is finite, returns float32 and
  stays within a loose tolerance of the float32 model."""
  _, out_dir = converted_depth_models["paper"]
  model32 = percdepth_jax.load_model(out_dir)
  config16 = ModelConfig(**{**model32.config.to_dict(), "dtype": "bfloat16"})
  model16 = nnx.eval_shape(lambda: DepthNet(config16, rngs=nnx.Rngs(0)))
  nnx.update(model16, nnx.state(model32))
  model16.eval()
  assert all(leaf.dtype == np.float32
             for leaf in jax.tree.leaves(nnx.state(model16, nnx.Param)))
  image = np.random.RandomState(5).uniform(0, 255, (1, 64, 96, 3)).astype(np.float32)
  out32 = np.asarray(_forward(model32, image))
  out16 = np.asarray(_forward(model16, image))
  assert out16.dtype == np.float32 and np.all(np.isfinite(out16))
  assert relative_max_error(out16, out32) < 0.1


def _jax_training_gradients(out_dir, image, cotangent, dtype: str):
  """Gradients of sum(model(image) * cotangent) in training mode (batch
  statistics) with respect to every parameter, keyed and laid out as the
  PyTorch reference's, and to the image; the model computes in `dtype` with
  its parameters in that dtype. On the CPU this runs every custom gradient of
  the network: the matmul weight gradients of the 3x3 and 1x1 convolutions,
  the max pool's argmax gradient, the resize's gather gradient and the dense
  blocks' reused batch statistics."""
  from weights_conversion.convert import to_torch_layout, torch_key
  model = percdepth_jax.load_model(out_dir)
  if dtype != model.config.dtype:
    config = ModelConfig(**{**model.config.to_dict(), "dtype": dtype})
    retyped = nnx.eval_shape(lambda: DepthNet(config, rngs=nnx.Rngs(0)))
    nnx.update(retyped, nnx.state(model))
    model = retyped
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)
  params = jax.tree.map(lambda p: p.astype(dtype), params)
  cotangent = jnp.asarray(cotangent, dtype)

  def loss(params, image):
    return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(image) * cotangent)

  grads, grad_image = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(image, dtype))
  by_key = {torch_key(path, "densedepth"): to_torch_layout(path[-1], np.asarray(g, np.float64))
            for path, g in nnx.to_flat_state(grads)}
  return by_key, np.asarray(grad_image, np.float64)


def _torch_training_gradients(torch_model, image, cotangent, dtype):
  """The same gradients through torch.autograd, in `dtype`."""
  net = copy.deepcopy(torch_model).train().to(dtype)
  image_t = nchw(image).to(dtype).requires_grad_(True)
  (net(image_t) * nchw(cotangent).to(dtype)).sum().backward()
  grads = {key: p.grad.double().numpy() for key, p in net.named_parameters()
           if p.grad is not None}  # the DenseNet's unused ImageNet head has none
  return grads, nhwc(image_t.grad.double())


def _training_inputs():
  rng = np.random.RandomState(11)
  image = rng.uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
  return image, rng.randn(2, 64, 96, 1).astype(np.float32)


@pytest.fixture(scope="module")
def float64_training_gradients(converted_depth_models):
  """The paper model's training gradients, computed by the JAX program in float64."""
  _, out_dir = converted_depth_models["paper"]
  with jax.enable_x64(True):
    return _jax_training_gradients(out_dir, *_training_inputs(), "float64")


def test_training_gradients_match_torch_autograd(converted_depth_models,
                                                 float64_training_gradients):
  """The gradient of every parameter and of the image in training mode is
  torch.autograd's, both computed in float64 with the same weights: the same
  JAX program (CPU gradient kernels included) with float64 compute.

  float64 makes the comparison independent of the CPU: rounding (1e-16) times
  the conditioning of the deep BatchNorms (at 64x96 they see 48 and 12 values
  per channel) stays near 1e-13 (measured: 8e-14), and no ReLU, LeakyReLU or
  max-pool input is near enough its switching point to take the other branch
  in one program. In float32 neither holds (see the next test), so a
  per-tensor float32 comparison depends on the machine's summation order. A
  1x1 weight gradient scaled by 1.01 is 1e-2 here, far above the bound. (The
  max pool's tie rule does not show in this gradient: after a ReLU the tied
  values are zeros, whose gradient the ReLU discards; tests/test_layers.py
  checks the rule.)"""
  torch_model, _ = converted_depth_models["paper"]
  expected, expected_image = _torch_training_gradients(
      torch_model, *_training_inputs(), torch.float64)
  actual, actual_image = float64_training_gradients
  # every parameter but the ImageNet head (weight, bias) has a gradient
  assert sorted(actual) == sorted(expected)
  assert len(actual) == len(list(torch_model.parameters())) - 2
  errors = {key: relative_max_error(actual[key], expected[key]) for key in expected}
  worst = sorted(errors.items(), key=lambda item: -item[1])[:5]
  assert worst[0][1] <= FLOAT64_GRADIENT_TOLERANCE, worst
  assert relative_max_error(actual_image, expected_image) <= FLOAT64_GRADIENT_TOLERANCE


def _global_relative_error(actual: dict, expected: dict) -> float:
  """||actual - expected|| / ||expected|| over all tensors as one vector."""
  squared = sum(np.sum((actual[k] - expected[k]) ** 2) for k in expected)
  return float(np.sqrt(squared / sum(np.sum(v ** 2) for v in expected.values())))


def test_float32_training_gradients_are_accurate(converted_depth_models,
                                                 float64_training_gradients):
  """The float32 training gradient (what training computes) against the same
  program's float64 one, over all parameters as one vector: within 1e-3
  (measured 3e-5 on an AMD EPYC; PyTorch's float32 is 5e-6 from its float64);
  the image gradient within 5e-3 (measured 1.4e-4).

  A per-tensor bound would not hold across machines: a ReLU, LeakyReLU or
  max-pool input within float32 rounding of its switching point takes the
  other branch in one program than in the other, which one depending on the
  machine's summation order, and moves the gradients of every layer below it
  by up to a few percent of their largest value; the sum over all
  parameters is dominated by the well-determined bulk. The bounds still fail
  a program that loses precision: with bfloat16 compute the same errors are
  4.5e-2 and 8.5e-2."""
  _, out_dir = converted_depth_models["paper"]
  exact, exact_image = float64_training_gradients
  actual, actual_image = _jax_training_gradients(out_dir, *_training_inputs(), "float32")
  assert _global_relative_error(actual, exact) <= 1e-3
  assert _global_relative_error({"image": actual_image}, {"image": exact_image}) <= 5e-3
