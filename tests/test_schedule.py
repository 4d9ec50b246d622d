"""Learning-rate schedules and the EMA of weights in training/step.py.

The schedules are checked against hand-computed values and through Adam's
updates; the EMA kept by the jitted train step against the closed form of an
exponential moving average written out as a weighted sum in NumPy.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from percdepth_jax.errors import UserInputError
from percdepth_jax.models import DepthNet, ModelConfig
from percdepth_jax.training import step as step_lib
from percdepth_jax.training.config import base_config

PEAK, WARMUP, STEPS, END_FRACTION = 1e-3, 10, 110, 0.1


def _config(schedule: str, warmup: int = WARMUP):
  c = base_config()
  c.num_steps = STEPS
  c.optimizer.learning_rate = PEAK
  c.optimizer.schedule = schedule
  c.optimizer.warmup_steps = warmup
  c.optimizer.final_lr_fraction = END_FRACTION
  return c


def test_default_is_the_papers_constant_adam():
  """Paper config: a plain float 3e-4, and the optimizer state of
  optax.adam(3e-4) (same tree, so existing checkpoints restore)."""
  c = base_config()
  assert step_lib.learning_rate_schedule(c) == 3e-4
  params = {"w": jnp.ones((3,))}
  ours = step_lib.make_optimizer(c).init(params)
  reference = optax.adam(3e-4).init(params)
  assert jax.tree.structure(ours) == jax.tree.structure(reference)


def _hand_cosine(t: int) -> float:
  if t < WARMUP:
    return PEAK * t / WARMUP
  end = PEAK * END_FRACTION
  progress = (t - WARMUP) / (STEPS - WARMUP)
  return end + (PEAK - end) * 0.5 * (1 + math.cos(math.pi * progress))


def _hand_linear(t: int) -> float:
  if t < WARMUP:
    return PEAK * t / WARMUP
  end = PEAK * END_FRACTION
  return PEAK + (end - PEAK) * (t - WARMUP) / (STEPS - WARMUP)


@pytest.mark.parametrize("schedule,hand", [("cosine", _hand_cosine),
                                           ("linear", _hand_linear)])
def test_warmup_then_decay_matches_hand_values(schedule, hand):
  """0 at step 0, linear to the peak at warmup_steps, then the decay down to
  learning_rate * final_lr_fraction at num_steps (and beyond)."""
  fn = step_lib.learning_rate_schedule(_config(schedule))
  for t in (0, 3, WARMUP - 1, WARMUP, WARMUP + 1, 35, 60, STEPS - 1, STEPS):
    np.testing.assert_allclose(float(fn(t)), hand(t), rtol=1e-5, atol=1e-12)
  np.testing.assert_allclose(float(fn(STEPS + 50)), PEAK * END_FRACTION, rtol=1e-5)


def test_constant_with_warmup():
  fn = step_lib.learning_rate_schedule(_config("constant", warmup=4))
  np.testing.assert_allclose([float(fn(t)) for t in (0, 2, 4, 50, 500)],
                             [0.0, PEAK / 2, PEAK, PEAK, PEAK], rtol=1e-6)


def test_adam_steps_follow_the_schedule():
  """With a constant gradient every Adam step is -lr_t * g / (|g| + eps), so
  the t-th update of make_optimizer's Adam traces the schedule at step t."""
  tx = step_lib.make_optimizer(_config("cosine"))
  params = {"w": jnp.zeros((2,))}
  grads = {"w": jnp.array([0.5, -2.0])}
  state = tx.init(params)
  g = np.array([0.5, -2.0])
  for t in range(STEPS + 1):
    updates, state = tx.update(grads, state, params)
    expected = -_hand_cosine(t) * g / (np.abs(g) + 1e-8)
    np.testing.assert_allclose(np.asarray(updates["w"]), expected, rtol=1e-4,
                               atol=1e-12, err_msg=f"step {t}")


def test_unknown_schedule_is_a_user_error():
  with pytest.raises(UserInputError, match="schedule"):
    step_lib.make_optimizer(_config("exponential"))


def test_train_step_keeps_the_ema_of_the_weights():
  """ema_T = prod_t d_t * p_0 + sum_t (1 - d_t) prod_{s>t} d_s * p_t with
  d_t = min(decay, (1 + t) / (10 + t)), p_t the weights after step t."""
  decay, num_steps = 0.8, 4
  c = base_config()
  c.loss.perceptual = 0.0
  c.optimizer.learning_rate = 1e-2  # large steps: the average differs visibly
  c.optimizer.ema_decay = decay
  model = DepthNet(ModelConfig(encoder="densenet_tiny"),
                   rngs=nnx.Rngs(0))
  tx = step_lib.make_optimizer(c)
  graphdef, state = step_lib.init_state(model, tx, ema_decay=decay)
  train_step = jax.jit(step_lib.make_train_step(graphdef, None, tx, c))
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.integers(0, 256, (2, 32, 32, 3), np.uint8)),
           "depth": jnp.asarray(rng.uniform(0.5, 5.0, (2, 32, 32)).astype(np.float32)),
           "valid": jnp.ones((2, 32, 32), bool)}
  leaves = lambda tree: [np.array(x, np.float64) for x in jax.tree.leaves(tree)]
  history = [leaves(state["params"])]
  for _ in range(num_steps):
    state, _ = train_step(state, None, batch)
    history.append(leaves(state["params"]))
  d = [min(decay, (1 + t) / (10 + t)) for t in range(1, num_steps + 1)]
  weights = [np.prod(d)] + [(1 - d[t - 1]) * np.prod(d[t:]) for t in range(1, num_steps + 1)]
  assert abs(sum(weights) - 1) < 1e-12
  expected = [sum(w * h[i] for w, h in zip(weights, history))
              for i in range(len(history[0]))]
  got = leaves(state["ema_params"])
  assert not np.allclose(got[0], history[-1][0])  # not simply the last weights
  for e, g in zip(expected, got):
    np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-6)


def test_no_ema_without_decay():
  c = base_config()
  model = DepthNet(ModelConfig(encoder="densenet_tiny"),
                   rngs=nnx.Rngs(0))
  _, state = step_lib.init_state(model, step_lib.make_optimizer(c))
  assert "ema_params" not in state
