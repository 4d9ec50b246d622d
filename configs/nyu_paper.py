"""The paper's recipe on NYU Depth v2 (docs/design.md, 'The loss and the recipe').

  python scripts/train.py --config configs/nyu_paper.py --workdir workdirs/nyu_paper

DenseNet-121 encoder from ImageNet weights, frozen ImageNet ResNet-50
(layer1) for the perceptual loss, 480x640, batch 8, Adam 3e-4
(b1 0.9, b2 0.999), 80,000 steps, horizontal flip p=0.5 and channel
permutation p=0.25, flip-TTA evaluation on the 654 test images.

Needs (docs/training.md, "Train on NYU Depth v2"):
  weights/densenet121, weights/resnet50  converted torchvision ImageNet weights
  NYU: TFDS `nyu_depth_v2` prepared in array_record format (default), or
       --config.data.train=nyu_zip:PATH/nyu_data.zip --config.data.eval=nyu_zip:PATH/nyu_data.zip
"""

from percdepth_jax.training.config import base_config


def get_config():
  c = base_config()  # the defaults are the paper's
  c.data.train = "tfds:nyu_depth_v2:train"
  c.data.eval = "tfds:nyu_depth_v2:validation"  # the 654 test images
  c.eval.protocol = "densedepth"
  return c
