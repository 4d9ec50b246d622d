"""Tiny config for tests: trains for a few steps in seconds on a CPU.

  python scripts/train.py --config configs/tiny.py --workdir /tmp/tiny
"""

from percdepth_jax.training.config import base_config


def get_config():
  c = base_config()
  c.num_steps = 2
  c.batch_size = 4
  c.log_every = 1
  c.eval_every = 1000
  c.checkpoint_every = 1
  c.keep_checkpoints = 2
  c.model.encoder = "densenet_tiny"  # toy DenseNet: compiles in seconds
  c.init.from_scratch = True
  c.perceptual.from_scratch = True
  c.data.train = "synthetic:16:0"
  c.data.eval = "synthetic:4:1"
  c.data.height = 64
  c.data.width = 64
  c.data.num_threads = 2
  c.data.eval_batch_size = 4
  c.eval.num_samples = 2
  return c
