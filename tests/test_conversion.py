"""The conversion CLI: a real run end to end, and refusals of bad input with
exit code 2, a message naming the keys, and nothing written."""

import subprocess
import sys

import numpy as np
import pytest
import torch
import torchvision

import percdepth_jax
from percdepth_jax.errors import UserInputError
from tests.helpers import REPO
from weights_conversion import __main__ as cli
from weights_conversion import load_torchvision
from weights_conversion.tables import modernize_key


@pytest.fixture(scope="module")
def densenet_state(tmp_path_factory):
  torch.manual_seed(0)
  state = torchvision.models.densenet121(weights=None).state_dict()
  path = tmp_path_factory.mktemp("dn") / "densenet121.pth"
  torch.save(state, path)
  return state, path


def _run_cli(argv, capsys):
  code = cli.main(argv)
  return code, capsys.readouterr()


def test_cli_subprocess_end_to_end(torch_depth_models, tmp_path):
  """`python -m weights_conversion densedepth` in a fresh process writes a
  model directory that load_model and predict_depth use."""
  _, path, _ = torch_depth_models["compat"]
  out = tmp_path / "converted"
  result = subprocess.run(
      [sys.executable, "-m", "weights_conversion", "densedepth", "--input", str(path),
       "--output", str(out), "--decoder-width", "0.25", "--densedepth-compat"],
      cwd=REPO, capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr
  assert "encoder" in result.stdout and "decoder" in result.stdout
  model = percdepth_jax.load_model(out)
  depth = percdepth_jax.predict_depth(model, np.full((1, 50, 70, 3), 128, np.uint8))
  assert depth.shape == (1, 50, 70) and depth.dtype == np.float32
  assert np.all((depth >= 0.1) & (depth <= 10.0))


def test_truncated_state_dict_is_refused(densenet_state, tmp_path, capsys):
  """Dropping keys gives exit 2, names the missing keys, writes nothing."""
  state, _ = densenet_state
  dropped = ["features.denseblock3.denselayer5.conv2.weight", "features.norm5.running_var"]
  path = tmp_path / "truncated.pth"
  torch.save({k: v for k, v in state.items() if k not in dropped}, path)
  out = tmp_path / "out"
  code, io = _run_cli(["torchvision", "--arch", "densenet121", "--input", str(path),
                       "--output", str(out)], capsys)
  assert code == 2
  assert "missing keys (2)" in io.err
  for key in dropped:
    assert key in io.err
  assert not out.exists()
  assert not list(tmp_path.glob(".out.*")), "temporary directory left behind"


def test_wrong_architecture_is_refused(tmp_path, capsys):
  """A ResNet-50 file converted as DenseNet-121: exit 2, keys listed, and the
  message says what the file looks like."""
  torch.manual_seed(0)
  path = tmp_path / "resnet50.pth"
  torch.save(torchvision.models.resnet50(weights=None).state_dict(), path)
  code, io = _run_cli(["torchvision", "--arch", "densenet121", "--input", str(path),
                       "--output", str(tmp_path / "out")], capsys)
  assert code == 2
  assert "features.conv0.weight" in io.err  # a missing key, named
  assert "\n    conv1.weight" in io.err  # an unexpected key, named
  assert "looks like resnet50" in io.err
  assert not (tmp_path / "out").exists()


def test_wrong_densenet_depth_is_refused(tmp_path, capsys):
  """DenseNet-169 weights converted as 121: refused, guessed as densenet169."""
  torch.manual_seed(0)
  path = tmp_path / "densenet169.pth"
  torch.save(torchvision.models.densenet169(weights=None).state_dict(), path)
  code, io = _run_cli(["torchvision", "--arch", "densenet121", "--input", str(path),
                       "--output", str(tmp_path / "out")], capsys)
  assert code == 2 and "looks like densenet169" in io.err
  assert "features.denseblock3.denselayer25.conv1.weight" in io.err


def test_non_state_dict_file_is_refused(tmp_path, capsys):
  """A text file and a pickled tensor list are refused with exit 2."""
  text = tmp_path / "notes.pth"
  text.write_text("not a checkpoint\n")
  code, io = _run_cli(["torchvision", "--arch", "resnet50", "--input", str(text),
                       "--output", str(tmp_path / "o1")], capsys)
  assert code == 2 and "is not a PyTorch state dict file" in io.err
  tensors = tmp_path / "tensors.pth"
  torch.save([torch.zeros(3)], tensors)
  code, io = _run_cli(["torchvision", "--arch", "resnet50", "--input", str(tensors),
                       "--output", str(tmp_path / "o2")], capsys)
  assert code == 2 and "does not hold a state dict" in io.err
  code, io = _run_cli(["torchvision", "--arch", "resnet50", "--input",
                       str(tmp_path / "absent.pth"), "--output", str(tmp_path / "o3")], capsys)
  assert code == 2 and "does not exist" in io.err


def test_wrong_decoder_width_hint(torch_depth_models, tmp_path, capsys):
  """A decoder-width mismatch lists mis-shaped keys and suggests the right width."""
  _, path, _ = torch_depth_models["paper"]
  code, io = _run_cli(["densedepth", "--input", str(path), "--output",
                       str(tmp_path / "out"), "--decoder-width", "0.5"], capsys)
  assert code == 2
  assert "decoder.conv2.weight" in io.err and "--decoder-width 0.25" in io.err


def test_existing_output_is_not_overwritten(densenet_state, tmp_path, capsys):
  """A non-empty output directory is refused and left untouched."""
  _, path = densenet_state
  out = tmp_path / "out"
  out.mkdir()
  (out / "keep.txt").write_text("mine")
  code, io = _run_cli(["torchvision", "--arch", "densenet121", "--input", str(path),
                       "--output", str(out)], capsys)
  assert code == 2 and "not empty" in io.err
  assert (out / "keep.txt").read_text() == "mine"


def test_old_style_and_wrapped_state_dicts(densenet_state, tmp_path):
  """Old `norm.1`-style DenseNet keys, DataParallel's `module.` prefix and a
  {'state_dict': ...} wrapper all convert to the same weights."""
  state, path = densenet_state
  old = {}
  for key, value in state.items():
    for part in ("norm1", "norm2", "conv1", "conv2"):
      if ".denselayer" in key and f".{part}." in key:
        key = key.replace(f".{part}.", f".{part[:-1]}.{part[-1]}.")
    old[key] = value
  assert "features.denseblock1.denselayer1.norm.1.weight" in old
  assert modernize_key("features.denseblock1.denselayer1.norm.1.weight") == \
      "features.denseblock1.denselayer1.norm1.weight"
  wrapped = tmp_path / "wrapped.pth"
  torch.save({"state_dict": {"module." + k: v for k, v in old.items()}, "epoch": 3}, wrapped)
  reference = load_torchvision("densenet121", path)
  converted = load_torchvision("densenet121", wrapped)
  key = ("features", "denseblock2", "denselayer4", "norm1", "scale")
  a = converted.features.denseblock2.denselayer4.norm1.scale[...]
  b = reference.features.denseblock2.denselayer4.norm1.scale[...]
  np.testing.assert_array_equal(a, b, err_msg=".".join(key))
  np.testing.assert_array_equal(converted.features.conv0.kernel[...],
                                np.transpose(state["features.conv0.weight"].numpy(), (2, 3, 1, 0)))


def test_load_model_refuses_other_kinds(densenet_state, tmp_path):
  """load_model on an ImageNet DenseNet directory (not a depth model) or on a
  non-model directory raises a UserInputError saying what to do."""
  _, path = densenet_state
  out = tmp_path / "dn"
  assert cli.main(["torchvision", "--arch", "densenet121", "--input", str(path),
                   "--output", str(out)]) == 0
  with pytest.raises(UserInputError, match="holds a densenet model"):
    percdepth_jax.load_model(out)
  with pytest.raises(UserInputError, match="model.json is missing"):
    percdepth_jax.load_model(tmp_path)


@pytest.mark.parametrize("arch", ["densenet161", "densenet169", "densenet201"])
def test_other_densenets_convert(arch, tmp_path):
  """161/169/201 are built by the same code: their torchvision state dicts
  convert strictly (every key used, every shape equal)."""
  torch.manual_seed(0)
  path = tmp_path / f"{arch}.pth"
  torch.save(getattr(torchvision.models, arch)(weights=None).state_dict(), path)
  module = load_torchvision(arch, path)
  assert module.features.norm5.scale[...].shape[0] == {
      "densenet161": 2208, "densenet169": 1664, "densenet201": 1920}[arch]
