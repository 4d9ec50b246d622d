"""The pure train step in process, on the toy DenseNet, a random-init frozen
ResNet-50 (perceptual term on) and one synthetic batch: the loss is finite,
the step counts, every parameter moves by Adam's first-step closed form
(|update| = lr * |g| / (|g| + eps) <= lr, so at most lr and about lr where
the gradient is not tiny), the first BatchNorm's running mean equals
PyTorch's momentum rule on the batch mean, and the frozen perceptual network
is neither updated nor part of the state."""

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from percdepth_jax.data import SyntheticSource
from percdepth_jax.models import DepthNet, ModelConfig, ResNet50
from percdepth_jax.training import step as step_lib
from percdepth_jax.training.config import base_config

LR = 1e-3


def _setup():
  config = base_config()
  config.model.encoder = "densenet_tiny"
  config.optimizer.learning_rate = LR
  config.loss.perceptual = 0.5
  model = DepthNet(ModelConfig(encoder="densenet_tiny"), rngs=nnx.Rngs(0))
  perceptual = ResNet50(last_stage="layer1", rngs=nnx.Rngs(1))
  perceptual.eval()
  tx = step_lib.make_optimizer(config)
  graphdef, state = step_lib.init_state(model, tx)
  perceptual_graphdef, perceptual_state = nnx.split(perceptual)
  source = SyntheticSource(2, 0, 64, 64)
  examples = [source[i] for i in range(2)]
  batch = {k: jnp.asarray(np.stack([ex[k] for ex in examples]))
           for k in ("image", "depth", "valid")}
  train_step = jax.jit(step_lib.make_train_step(graphdef, perceptual_graphdef, tx, config))
  return graphdef, state, perceptual_state, batch, train_step


def _leaves(tree) -> dict[str, np.ndarray]:
  return {jax.tree_util.keystr(p): np.array(v)
          for p, v in jax.tree_util.tree_leaves_with_path(tree)}


def test_one_and_two_steps():
  graphdef, state, perceptual_state, batch, train_step = _setup()
  params_before = _leaves(state["params"])
  stats_before = _leaves(state["batch_stats"])
  perceptual_before = _leaves(perceptual_state)

  new_state, metrics = train_step(state, perceptual_state, batch)
  assert bool(metrics["finite"]) and np.isfinite(float(metrics["loss"]))
  assert float(metrics["perceptual"]) > 0  # the ResNet-50 term is in the loss
  assert int(new_state["step"]) == 1

  params_after = _leaves(new_state["params"])
  assert params_after.keys() == params_before.keys()
  for name, before in params_before.items():
    delta = np.abs(params_after[name] - before)
    assert delta.max() > 0.5 * LR, f"{name} did not move"
    assert delta.max() <= LR * (1 + 1e-4), f"{name} moved more than lr on Adam's first step"

  # norm0's running mean: PyTorch's rule (1 - 0.1) * 0 + 0.1 * batch mean of
  # conv0's output, computed here from the model before the step.
  model = nnx.merge(graphdef, state["params"], state["batch_stats"])
  features = model.encoder.features
  conv0 = features.conv0(model.normalize(batch["image"].astype(jnp.float32)))
  expected_mean = 0.1 * np.asarray(conv0).mean(axis=(0, 1, 2))
  new_model = nnx.merge(graphdef, new_state["params"], new_state["batch_stats"])
  np.testing.assert_allclose(np.asarray(new_model.encoder.features.norm0.mean[...]),
                             expected_mean, rtol=1e-4, atol=1e-6)
  stats_after = _leaves(new_state["batch_stats"])
  assert all(not np.array_equal(stats_after[k], v) for k, v in stats_before.items())

  newer_state, metrics = train_step(new_state, perceptual_state, batch)
  assert int(newer_state["step"]) == 2 and bool(metrics["finite"])
  # The frozen network: unchanged, and not among the trained state's arrays.
  for name, before in perceptual_before.items():
    np.testing.assert_array_equal(_leaves(perceptual_state)[name], before)
  assert set(newer_state) == {"params", "batch_stats", "opt_state", "step"}
