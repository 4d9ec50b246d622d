"""Session fixtures (random-init PyTorch depth models and their conversion),
the shared XLA compilation cache and the order of test files; helpers that
tests import live in tests/helpers.py."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile

# JAX on the CPU even where the accelerators extra installed the CUDA plugin
# and libtpu (they compile for GPUs and TPUs; they must not become backends).
os.environ.setdefault("JAX_PLATFORMS", "cpu")

# One persistent XLA compilation cache for the whole session, shared by this
# process, the pytest-xdist workers and the scripts the tests run as
# subprocesses (all inherit the variable; the process that made the folder
# removes it): a network that many runs use compiles once.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
  _cache = tempfile.mkdtemp(prefix="percdepth-xla-cache-")
  atexit.register(shutil.rmtree, _cache, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = _cache

import pytest

from weights_conversion.parity import randomize_batchnorm


@pytest.fixture(scope="session")
def torch_depth_models(tmp_path_factory):
  """Random-init PyTorch reference depth models (paper and DenseDepth-compat
  variants, small decoder width to keep tests fast), saved as .pth files."""
  import torch
  from weights_conversion import torch_reference
  root = tmp_path_factory.mktemp("torch_depth")
  models = {}
  for name, kwargs in {
      "paper": dict(decoder_width=0.25, input_norm="imagenet"),
      "compat": dict(decoder_width=0.25, input_norm="unit", densedepth_compat=True),
  }.items():
    torch.manual_seed(7)
    model = torch_reference.DepthModel("densenet121", **kwargs)
    randomize_batchnorm(model, seed=8)
    model.eval()
    path = root / f"{name}.pth"
    torch.save(model.state_dict(), path)
    models[name] = (model, path, kwargs)
  return models


@pytest.fixture(scope="session")
def paper_checkpoint(torch_depth_models, tmp_path_factory):
  """The paper-variant reference model converted into a model directory."""
  from weights_conversion import convert_densedepth, densedepth_model_config
  _, path, kwargs = torch_depth_models["paper"]
  out = tmp_path_factory.mktemp("checkpoint") / "paper"
  convert_densedepth(path, out, densedepth_model_config(
      decoder_width=kwargs["decoder_width"], input_norm=kwargs["input_norm"]))
  return out


# The longest files first, so that the two xdist workers (whole files each)
# finish together instead of one running the journeys alone at the end.
_LONGEST_FIRST = ("test_journeys.py", "test_training.py", "test_keras_conversion.py")


def pytest_collection_modifyitems(items):
  rank = {name: i for i, name in enumerate(_LONGEST_FIRST)}
  items.sort(key=lambda item: rank.get(item.path.name, len(rank)))
