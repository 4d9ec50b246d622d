"""DenseDepth's Keras model, as its 2019 release builds it, in tf_keras: the
reference for the `densedepth-keras` converter.

  python -m weights_conversion.keras_reference --images frames.npy --output DIR \
      [--variant nyu --variant densenet201_half_no_leaky ...]

For each variant writes DIR/<variant>.h5 (a whole model, saved the way Keras 2
saves one) and DIR/<variant>.npy: the Keras model's output on the images
(N x H x W x 3 float32 RGB in [0, 255], fed as RGB / 255 like DenseDepth's
code), float32 N x H/2 x W/2 x 1. Weights are random; BatchNorm parameters and
statistics and the decoder's biases are randomised too, and many channels get
variances below the epsilon, so that every tensor and the epsilon matter.
conv3 is scaled so that the outputs are DepthNorm values of varied depths.

Needs the `keras` extra (tensorflow, tf-keras). Run it in a process of its
own: TensorFlow and JAX each start their own thread pools.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import warnings

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import numpy as np  # noqa: E402
import tensorflow as tf  # noqa: E402
import tf_keras  # noqa: E402
from tf_keras import layers  # noqa: E402

# name -> (keras.applications DenseNet, is_halffeatures, LeakyReLU after convA)
VARIANTS = {
    "nyu": ("DenseNet169", True, True),  # nyu.h5's architecture
    # DenseDepth's code after March 2019 drops the LeakyReLU after convA.
    "densenet121_full_no_leaky": ("DenseNet121", False, False),
    "densenet201_half_no_leaky": ("DenseNet201", True, False),
}


class BilinearUpSampling2D(layers.Layer):
  """DenseDepth's layers.BilinearUpSampling2D: x2 bilinear, align_corners=True
  (TF1's `resize_images(..., align_corners=True)`)."""

  def __init__(self, size=(2, 2), data_format=None, **kwargs):
    super().__init__(**kwargs)
    self.size = tuple(size)
    self.data_format = data_format or "channels_last"

  def call(self, inputs):
    shape = tf.shape(inputs)
    size = [self.size[0] * shape[1], self.size[1] * shape[2]]
    return tf.compat.v1.image.resize_bilinear(inputs, size, align_corners=True)

  def get_config(self):
    return {**super().get_config(), "size": self.size,
            "data_format": self.data_format}


def build(application: str, is_halffeatures: bool,
          leaky_after_conv_a: bool) -> tf_keras.Model:
  """DenseDepth's model.py create_model with random weights."""
  base_model = getattr(tf_keras.applications, application)(
      input_shape=(None, None, 3), include_top=False, weights=None)
  channels = int(base_model.layers[-1].output.shape[-1])
  decode_filters = channels // 2 if is_halffeatures else channels

  def upproject(tensor, filters, name, concat_with):
    up = BilinearUpSampling2D((2, 2), name=name + "_upsampling2d")(tensor)
    up = layers.Concatenate(name=name + "_concat")(
        [up, base_model.get_layer(concat_with).output])
    up = layers.Conv2D(filters, 3, padding="same", name=name + "_convA")(up)
    if leaky_after_conv_a:
      up = layers.LeakyReLU(alpha=0.2)(up)
    up = layers.Conv2D(filters, 3, padding="same", name=name + "_convB")(up)
    return layers.LeakyReLU(alpha=0.2)(up)

  x = layers.Conv2D(decode_filters, 1, padding="same", name="conv2")(base_model.output)
  for i, skip in enumerate(("pool3_pool", "pool2_pool", "pool1", "conv1/relu")):
    x = upproject(x, decode_filters // 2 ** (i + 1), f"up{i + 1}", skip)
  out = layers.Conv2D(1, 3, padding="same", name="conv3")(x)
  return tf_keras.Model(inputs=base_model.input, outputs=out)


def randomize(model: tf_keras.Model, seed: int) -> None:
  """Non-trivial BatchNorm parameters and statistics, non-zero biases.

  Fresh Keras BatchNorms are identities and fresh biases zeros, which would
  let a wrong mapping of those tensors pass. Half the channels get a
  variance well below the epsilon (trained DenseNets have such channels),
  with gamma scaled to keep their output O(1), so that an epsilon of 1e-5
  instead of 1.001e-5 changes the output measurably.
  """
  rng = np.random.RandomState(seed)
  for layer in model.layers:
    if isinstance(layer, layers.BatchNormalization):
      n = layer.gamma.shape[0]
      gamma = 0.5 + rng.rand(n)
      var = 0.5 + rng.rand(n)
      small = rng.rand(n) < 0.5
      var[small] = 1e-7 * rng.rand(small.sum())
      gamma[small] *= np.sqrt(var[small] + layer.epsilon)
      layer.set_weights([gamma, 0.4 * rng.rand(n) - 0.2, 0.4 * rng.rand(n) - 0.2, var])
    elif isinstance(layer, layers.Conv2D) and layer.use_bias:
      kernel, bias = layer.get_weights()
      layer.set_weights([kernel, 0.1 * rng.randn(*bias.shape)])


def calibrate_output(model: tf_keras.Model, images: np.ndarray) -> None:
  """Rescales conv3 so that the output on `images` has mean 3 and std 1.

  In DepthNorm (10 / metres) that is depth maps of about 1.7-10 m: varied
  metres, as a trained model gives, rather than a random decoder's outputs
  near 0, which clip to 10 m everywhere.
  """
  out = model(images, training=False).numpy()
  conv3 = model.get_layer("conv3")
  kernel, bias = conv3.get_weights()
  scale = 1.0 / out.std()
  conv3.set_weights([kernel * scale, (bias - out.mean()) * scale + 3.0])


def main(argv: list[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--images", required=True, help=".npy, N x H x W x 3 in [0, 255]")
  parser.add_argument("--output", required=True, help="folder for <variant>.h5/.npy")
  parser.add_argument("--variant", action="append", choices=sorted(VARIANTS))
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args(argv)
  tf.get_logger().setLevel("ERROR")
  # The .h5 format is what the converter reads: silence the advice against it.
  warnings.filterwarnings("ignore", message=".*HDF5 file via `model.save")
  out = pathlib.Path(args.output)
  out.mkdir(parents=True, exist_ok=True)
  images = np.load(args.images).astype(np.float32) / 255.0
  for i, name in enumerate(args.variant or ["nyu"]):
    tf_keras.utils.set_random_seed(args.seed + i)
    model = build(*VARIANTS[name])
    randomize(model, args.seed + i)
    calibrate_output(model, images)
    model.save(out / f"{name}.h5", save_format="h5")
    np.save(out / f"{name}.npy", model(images, training=False).numpy())


if __name__ == "__main__":
  main()
