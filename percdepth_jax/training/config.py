"""Defaults shared by every experiment config (configs/*.py start from these)."""

from __future__ import annotations

import ml_collections

from percdepth_jax.models import ModelConfig


def base_config() -> ml_collections.ConfigDict:
  """Every field a training run reads, with the paper's values where it has one."""
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.num_steps = 80_000
  c.batch_size = 8  # global, over all devices and hosts
  c.log_every = 50
  c.eval_every = 5_000
  c.checkpoint_every = 5_000
  c.keep_checkpoints = 3

  c.model = ml_collections.ConfigDict(ModelConfig().to_dict())

  # Encoder initialisation: a converted torchvision DenseNet (directory from
  # `python -m weights_conversion torchvision`, or the .pth itself), or
  # from_scratch=True for random init.
  c.init = ml_collections.ConfigDict()
  c.init.encoder_weights = "weights/densenet121"
  c.init.from_scratch = False

  # Frozen perceptual network: ResNet-50 truncated after layer1.
  c.perceptual = ml_collections.ConfigDict()
  c.perceptual.weights = "weights/resnet50"
  c.perceptual.from_scratch = False  # True: random-init frozen features

  c.loss = ml_collections.ConfigDict()
  c.loss.l1 = 0.1
  c.loss.gradient = 1.0
  c.loss.ssim = 1.0
  c.loss.perceptual = 0.5

  c.optimizer = ml_collections.ConfigDict()
  c.optimizer.learning_rate = 3e-4
  c.optimizer.b1 = 0.9
  c.optimizer.b2 = 0.999

  c.data = ml_collections.ConfigDict()
  c.data.train = "tfds:nyu_depth_v2:train"
  c.data.eval = "tfds:nyu_depth_v2:validation"
  c.data.height = 480  # synthetic scenes are rendered at this size
  c.data.width = 640
  c.data.hflip = 0.5
  c.data.channel_swap = 0.25
  c.data.num_threads = 4
  c.data.eval_batch_size = 8

  c.eval = ml_collections.ConfigDict()
  c.eval.protocol = "densedepth"
  c.eval.flip = True
  c.eval.max_examples = 0  # 0 = the whole eval set
  c.eval.num_samples = 4  # rows of the sample grid
  c.eval.baseline = False  # also report a constant (train mean) depth baseline

  c.remat = False  # rematerialise dense layers to fit larger batches

  # Many hosts: set these, or leave them empty where the cluster environment
  # (SLURM, TPU, Open MPI...) lets jax.distributed.initialize() find them.
  c.distributed = ml_collections.ConfigDict()
  c.distributed.enabled = False
  c.distributed.coordinator_address = ""
  c.distributed.num_processes = 0
  c.distributed.process_id = -1
  return c
