"""Fine-tune a whole depth model on your own RGB-D folders.

  python scripts/train.py --config configs/finetune.py --workdir workdirs/finetune \
      --config.init.model=weights/my_depth_model \
      --config.data.train=folder:my_rgbd/train/manifest.csv \
      --config.data.eval=folder:my_rgbd/val/manifest.csv

Starts from the model in config.init.model (a directory from `python -m
weights_conversion ...`, or a training workdir, DIR or DIR:best): its
architecture, weights and BatchNorm statistics; a fresh optimizer from step
0. The loss is the paper's, so the frozen perceptual ResNet-50 is read from
weights/resnet50 (docs/weights.md; or
--config.loss.perceptual=0 to leave that term out). Frames must be multiples
of 32 in height and width, or set --config.data.crop=H,W.
"""

from percdepth_jax.training.config import base_config


def get_config():
  c = base_config()
  c.num_steps = 2_000
  c.log_every = 20
  c.eval_every = 500
  c.checkpoint_every = 500
  c.init.model = "weights/my_depth_model"
  c.optimizer.learning_rate = 1e-4  # a third of the paper's: the weights are trained
  c.data.train = "folder:my_rgbd/train/manifest.csv"
  c.data.eval = "folder:my_rgbd/val/manifest.csv"
  c.eval.protocol = "eigen"  # per image over valid pixels: suits any sensor's holes
  return c
