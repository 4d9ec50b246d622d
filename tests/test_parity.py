"""Converted weights give PyTorch's outputs: torchvision DenseNet/ResNet-50 and
the full depth model against the PyTorch reference, fp32 relative max error
<= 1e-4, at two non-square input sizes."""

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
  actual = percdepth_jax.predict_depth(model, image, flip=True)
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


def test_training_gradients_match_torch_autograd(converted_depth_models, tmp_path):
  """In training mode (batch statistics), the gradient of a loss with respect
  to every parameter and to the image is as accurate as torch.autograd's
  through the PyTorch reference with the same weights. On the CPU this runs
  every custom gradient of the network: the matmul weight gradients of the
  3x3 and 1x1 convolutions, the max pool's argmax gradient, the
  resize's gather gradient and the dense blocks' reused batch statistics.

  The reference is PyTorch in float64: at 64x96 the deep BatchNorms see 48
  (block 3) and 12 (block 4) values per channel, and some gradients are
  ill-conditioned enough that PyTorch's own float32 result is 8% off the
  float64 one. So each tensor's float32 error (relative to its largest
  value) must be within twice PyTorch's float32 error, or 1e-4. Gradients
  go through the weight converter, to land on the same Flax names and
  layouts."""
  import copy
  from weights_conversion import densedepth_model_config
  from weights_conversion.convert import densedepth_to_flax

  torch_model, out_dir = converted_depth_models["paper"]
  config = densedepth_model_config(decoder_width=0.25, input_norm="imagenet")
  rng = np.random.RandomState(11)
  image = rng.uniform(0, 255, (2, 64, 96, 3)).astype(np.float32)
  cotangent = rng.randn(2, 64, 96, 1).astype(np.float32)

  def torch_gradients(dtype, name):
    net = copy.deepcopy(torch_model).train().to(dtype)
    image_t = nchw(image).to(dtype).requires_grad_(True)
    (net(image_t) * nchw(cotangent).to(dtype)).sum().backward()
    grads = {k: v.float() for k, v in torch_model.state_dict().items()}
    for key, p in net.named_parameters():
      if p.grad is not None:  # the DenseNet's unused ImageNet head has none
        grads[key] = p.grad.float()
    torch.save(grads, tmp_path / name)
    params = nnx.state(densedepth_to_flax(tmp_path / name, config), nnx.Param)
    return params, nhwc(image_t.grad.float())

  exact, exact_image = torch_gradients(torch.float64, "float64.pth")
  torch32, torch32_image = torch_gradients(torch.float32, "float32.pth")

  model = percdepth_jax.load_model(out_dir)
  model.train()
  graphdef, params, rest = nnx.split(model, nnx.Param, ...)

  def loss(params, image):
    return jnp.sum(nnx.merge(graphdef, params, rest, copy=True)(image) * cotangent)

  grads, grad_image = jax.jit(jax.grad(loss, argnums=(0, 1)))(params, jnp.asarray(image))
  error = lambda a, b: relative_max_error(np.asarray(a), np.asarray(b))
  ours = jax.tree.map(error, grads, exact)
  theirs = jax.tree.map(error, torch32, exact)
  worse = [(jax.tree_util.keystr(path), e, t) for (path, e), t in
           zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(theirs))
           if e > max(2 * t, 1e-4)]
  # every parameter but the ImageNet head (weight, bias) has a gradient
  assert len(jax.tree.leaves(ours)) == len(list(torch_model.parameters())) - 2
  assert not worse, worse
  assert error(grad_image, exact_image) <= max(2 * error(torch32_image, exact_image), 1e-4)
