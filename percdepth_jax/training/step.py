"""The train step: a pure function of (state, frozen perceptual state, batch).

The training state is a plain pytree (dict) so that jit, sharding and Orbax
all see the same thing:
  {"params": nnx.State of Params, "batch_stats": nnx.State of BatchStats,
   "opt_state": optax state, "step": int32 scalar}
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from percdepth_jax import losses
from percdepth_jax.models import DepthNet, metres_to_target

TrainState = dict[str, Any]


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with the paper's constants (config.optimizer)."""
  return optax.adam(config.optimizer.learning_rate, b1=config.optimizer.b1,
                    b2=config.optimizer.b2)


def init_state(model: DepthNet, tx: optax.GradientTransformation
               ) -> tuple[nnx.GraphDef, TrainState]:
  """Splits a train-mode model into its graph definition and a fresh state."""
  model.train()
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = {"params": params, "batch_stats": batch_stats,
           "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  return graphdef, state


def batch_targets(batch: dict[str, jax.Array], model_config) -> tuple[jax.Array, jax.Array]:
  """Metres + validity -> (target_BxHxWx1 in the model's representation, mask)."""
  depth_BxHxW, valid_BxHxW = batch["depth"], batch["valid"]
  if model_config.output_stride == 2:
    # The network predicts at half resolution: compare with every other pixel.
    depth_BxHxW, valid_BxHxW = depth_BxHxW[:, ::2, ::2], valid_BxHxW[:, ::2, ::2]
  valid_BxHxW = valid_BxHxW & jnp.isfinite(depth_BxHxW) & (depth_BxHxW > 0)
  # Holes get a harmless placeholder; the losses never read targets there.
  safe_depth = jnp.where(valid_BxHxW, depth_BxHxW, model_config.max_depth)
  target = metres_to_target(safe_depth, model_config)
  return target[..., None], valid_BxHxW[..., None]


def make_train_step(graphdef: nnx.GraphDef, perceptual_graphdef: nnx.GraphDef | None,
                    tx: optax.GradientTransformation, config):
  """Returns train_step(state, perceptual_state, batch) -> (state, metrics)."""
  weights = losses.LossWeights(config.loss.l1, config.loss.gradient,
                               config.loss.ssim, config.loss.perceptual)

  def train_step(state: TrainState, perceptual_state, batch):
    def loss_fn(params, batch_stats):
      # copy=True: fresh Variables owned by this trace, so BatchNorm may update
      # its running statistics here (they are returned as aux, not mutated).
      model = nnx.merge(graphdef, params, batch_stats, copy=True)
      cfg = model.config
      image = batch["image"].astype(jnp.float32)
      out_BxHxWx1 = model(image)
      target, mask = batch_targets(batch, cfg)
      net = (nnx.merge(perceptual_graphdef, perceptual_state)
             if perceptual_graphdef is not None else None)
      total, terms = losses.total_loss(out_BxHxWx1, target, mask,
                                       max_val=cfg.target_max_value,
                                       perceptual_net=net, weights=weights)
      return total, (terms, nnx.state(model, nnx.BatchStat))

    (total, (terms, batch_stats)), grads = jax.value_and_grad(
        loss_fn, has_aux=True)(state["params"], state["batch_stats"])
    updates, opt_state = tx.update(grads, state["opt_state"], state["params"])
    new_state = {"params": optax.apply_updates(state["params"], updates),
                 "batch_stats": batch_stats, "opt_state": opt_state,
                 "step": state["step"] + 1}
    # The loss is computed with the parameters before this update: also check
    # the update, so that a non-finite step is caught before it is saved.
    finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(updates))
    metrics = {"loss": total, **terms, "grad_norm": optax.tree.norm(grads),
               "finite": finite}
    return new_state, metrics

  return train_step
