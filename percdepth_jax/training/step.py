"""The train step: a pure function of (state, frozen perceptual state, batch).

The training state is a plain pytree (dict) so that jit, sharding and Orbax
all see the same thing:
  {"params": nnx.State of Params, "batch_stats": nnx.State of BatchStats,
   "opt_state": optax state, "step": int32 scalar}
plus "ema_params" (an nnx.State like "params") when config.optimizer.ema_decay
is > 0: an exponential moving average of the weights, for evaluation.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx

from percdepth_jax import losses
from percdepth_jax.errors import UserInputError
from percdepth_jax.models import DepthNet, metres_to_target

TrainState = dict[str, Any]


SCHEDULES = ("constant", "cosine", "linear")


def learning_rate_schedule(config) -> float | optax.Schedule:
  """The learning rate of config.optimizer, per optimizer step.

  schedule "constant" (the paper's) keeps learning_rate; "cosine" and "linear"
  decay it from learning_rate to learning_rate * final_lr_fraction at
  config.num_steps. warmup_steps > 0 first ramps it linearly from 0 (short
  runs from random init tolerate a higher peak that way). A constant rate
  without warmup is returned as a float, so that the optimizer state has the
  same structure as before schedules existed (old checkpoints restore).
  """
  opt = config.optimizer
  peak = opt.learning_rate
  kind = opt.get("schedule", "constant")
  warmup = int(opt.get("warmup_steps", 0))
  end = peak * opt.get("final_lr_fraction", 0.0)
  if kind not in SCHEDULES:
    raise UserInputError(f"config.optimizer.schedule={kind!r} is not one of "
                         f"{list(SCHEDULES)}.")
  if kind == "constant":
    if not warmup:
      return peak
    return optax.join_schedules(
        [optax.linear_schedule(0.0, peak, warmup), optax.constant_schedule(peak)],
        [warmup])
  decay_steps = max(int(config.num_steps) - warmup, 1)
  if kind == "cosine":
    decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak)
  else:
    decay = optax.linear_schedule(peak, end, decay_steps)
  if not warmup:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay],
                              [warmup])


def make_optimizer(config) -> optax.GradientTransformation:
  """Adam with the paper's constants (config.optimizer) and its schedule."""
  return optax.adam(learning_rate_schedule(config), b1=config.optimizer.b1,
                    b2=config.optimizer.b2)


def ema_decay_at(decay: float, step: jax.Array) -> jax.Array:
  """The EMA's decay for the update that makes `step` steps: min(decay,
  (1 + step) / (10 + step)), so that the average forgets its random-init
  start within a short run."""
  step = jnp.asarray(step, jnp.float32)
  return jnp.minimum(decay, (1.0 + step) / (10.0 + step))


def init_state(model: DepthNet, tx: optax.GradientTransformation,
               ema_decay: float = 0.0) -> tuple[nnx.GraphDef, TrainState]:
  """Splits a train-mode model into its graph definition and a fresh state
  (with "ema_params", a copy of the weights, when ema_decay > 0)."""
  model.train()
  graphdef, params, batch_stats = nnx.split(model, nnx.Param, nnx.BatchStat)
  state = {"params": params, "batch_stats": batch_stats,
           "opt_state": tx.init(params), "step": jnp.zeros((), jnp.int32)}
  if ema_decay > 0:
    state["ema_params"] = jax.tree.map(jnp.copy, params)
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
  ema_decay = float(config.optimizer.get("ema_decay", 0.0))

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
    params = optax.apply_updates(state["params"], updates)
    new_state = {"params": params, "batch_stats": batch_stats,
                 "opt_state": opt_state, "step": state["step"] + 1}
    if ema_decay > 0 and "ema_params" not in state:
      raise ValueError("config.optimizer.ema_decay > 0 needs a state from "
                       "init_state(..., ema_decay=config.optimizer.ema_decay).")
    if "ema_params" in state:
      decay = ema_decay_at(ema_decay, new_state["step"])
      new_state["ema_params"] = jax.tree.map(
          lambda e, p: decay * e + (1.0 - decay) * p, state["ema_params"], params)
    # The loss is computed with the parameters before this update: also check
    # the update, so that a non-finite step is caught before it is saved.
    finite = jnp.isfinite(total) & jnp.isfinite(optax.tree.norm(updates))
    metrics = {"loss": total, **terms, "grad_norm": optax.tree.norm(grads),
               "finite": finite}
    return new_state, metrics

  return train_step


def jit_train_step(graphdef: nnx.GraphDef, perceptual_graphdef: nnx.GraphDef | None,
                   tx: optax.GradientTransformation, config,
                   replicated: jax.sharding.Sharding):
  """The train step as `training.loop` runs it (and scripts/compile_report.py
  compiles it): the state donated, the new state and metrics replicated."""
  return jax.jit(make_train_step(graphdef, perceptual_graphdef, tx, config),
                 donate_argnums=(0,), out_shardings=(replicated, replicated))
