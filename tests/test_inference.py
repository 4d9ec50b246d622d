"""predict_depth: shapes, units, one compilation per input shape, bad input."""

import numpy as np
import pytest

import percdepth_jax
from percdepth_jax.errors import UserInputError
from percdepth_jax.inference import network_size
from percdepth_jax.models import DepthNet


@pytest.fixture(scope="module")
def model(paper_checkpoint):
  return percdepth_jax.load_model(paper_checkpoint)


def test_network_size_rounds_to_multiples_of_32():
  """Hand-computed: 480x640 unchanged, 50x70 -> 64x64, 10x700 -> 32x704."""
  assert network_size(480, 640) == (480, 640)
  assert network_size(50, 70) == (64, 64)
  assert network_size(10, 700) == (32, 704)


def test_compiles_once_per_shape(model, monkeypatch):
  """At the native size: tracing runs DepthNet.__call__ once, on the
  images and their mirrors as one batch, at the nearest multiples of 32; repeated calls with the same shape
  do not trace again, a new shape does; any size comes back at its own
  resolution in metres within [0.1, 10]."""
  traces = []
  original = DepthNet.__call__
  monkeypatch.setattr(DepthNet, "__call__",
                      lambda self, x: (traces.append(x.shape), original(self, x))[1])
  images = np.random.RandomState(0).randint(0, 256, (2, 45, 75, 3)).astype(np.uint8)
  first = percdepth_jax.predict_depth(model, images, resolution="native")
  assert traces == [(4, 32, 64, 3)]
  second = percdepth_jax.predict_depth(model, images[::-1].copy(), resolution="native")
  assert len(traces) == 1
  np.testing.assert_allclose(second, first[::-1], rtol=1e-6)
  assert first.shape == (2, 45, 75) and first.dtype == np.float32
  assert np.all((first >= 0.1) & (first <= 10.0))
  percdepth_jax.predict_depth(model, images[:, :40], resolution="native")
  assert len(traces) == 2


def test_flip_off_is_a_single_pass(model):
  """flip=False runs the network once; for a left-right symmetric image the
  flip-averaged prediction equals the mirrored single pass averaged with it."""
  image = np.random.RandomState(1).randint(0, 256, (1, 64, 64, 3)).astype(np.uint8)
  plain = percdepth_jax.predict_depth(model, image, flip=False)
  mirrored = percdepth_jax.predict_depth(model, image[:, :, ::-1].copy(), flip=False)
  averaged = percdepth_jax.predict_depth(model, image, flip=True)
  np.testing.assert_allclose(averaged, 0.5 * (plain + mirrored[:, :, ::-1]), rtol=1e-5)


@pytest.mark.parametrize("images,match", [
    (np.zeros((64, 64, 3), np.uint8), "N x H x W x 3"),
    (np.zeros((1, 64, 64, 4), np.uint8), "N x H x W x 3"),
    (np.zeros((1, 64, 64, 3), np.float32), "uint8"),
])
def test_bad_images_are_refused(model, images, match):
  """Wrong rank, channel count or dtype gives a UserInputError saying the fix."""
  with pytest.raises(UserInputError, match=match):
    percdepth_jax.predict_depth(model, images)
