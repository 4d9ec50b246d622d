"""The library stands without the PyTorch side: with `torch`, `torchvision`
and `weights_conversion` made unimportable, `import percdepth_jax`, training
from model directories (a DenseNet encoder and a perceptual ResNet-50 in the
format the converter writes), evaluate.py and predict.py all run."""

import os
import subprocess
import sys

from flax import nnx

from percdepth_jax import model_io
from percdepth_jax.models import DenseNet, ResNet50
from tests.helpers import REAL_RGBD, REPO

# Loaded at interpreter start-up (sitecustomize on PYTHONPATH): any import of
# a blocked name fails as if the package were not installed.
BLOCKER = '''
import importlib.abc, sys

class _Uninstalled(importlib.abc.MetaPathFinder):
  def find_spec(self, name, path=None, target=None):
    if name.split(".")[0] in ("torch", "torchvision", "weights_conversion"):
      raise ModuleNotFoundError(f"No module named {name!r} (blocked)", name=name)
    return None

sys.meta_path.insert(0, _Uninstalled())
'''


def _run(args, tmp_path, blocker_dir, expect=0):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(blocker_dir))
  env.pop("XLA_FLAGS", None)
  result = subprocess.run([sys.executable, *args], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == expect, f"{args}\n{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
  return result


def test_train_evaluate_predict_without_torch(tmp_path):
  blocker_dir = tmp_path / "blocker"
  blocker_dir.mkdir()
  (blocker_dir / "sitecustomize.py").write_text(BLOCKER)
  # Model directories as `python -m weights_conversion torchvision` writes them.
  encoder = DenseNet("densenet_tiny", rngs=nnx.Rngs(0))
  model_io.save_model(encoder, tmp_path / "weights" / "densenet_tiny", kind="densenet",
                      config={"arch": "densenet_tiny", "num_classes": None})
  resnet = ResNet50(last_stage="layer1", rngs=nnx.Rngs(1))
  model_io.save_model(resnet, tmp_path / "weights" / "resnet50", kind="resnet50",
                      config={"last_stage": "layer1", "num_classes": None})

  # The blocker works: the PyTorch side is not importable.
  result = _run(["-c", "import torch"], tmp_path, blocker_dir, expect=1)
  assert "No module named 'torch' (blocked)" in result.stderr
  _run(["-c", "import weights_conversion"], tmp_path, blocker_dir, expect=1)
  _run(["-c", "import percdepth_jax; from percdepth_jax import load_model, predict_depth"],
       tmp_path, blocker_dir)

  workdir = tmp_path / "workdirs" / "tiny"
  _run([str(REPO / "scripts" / "train.py"), f"--config={REPO / 'configs' / 'tiny.py'}",
        f"--workdir={workdir}", "--config.init.from_scratch=False",
        "--config.init.encoder_weights=weights/densenet_tiny",
        "--config.perceptual.from_scratch=False", "--config.perceptual.weights=weights/resnet50",
        "--config.eval.edges=False"], tmp_path, blocker_dir)
  assert (workdir / "report.json").is_file()
  _run([str(REPO / "scripts" / "evaluate.py"), f"--checkpoint={workdir}",
        "--data=synthetic:2:1", "--height=64", "--width=64", "--output=eval.json"],
       tmp_path, blocker_dir)
  assert (tmp_path / "eval.json").is_file()
  _run([str(REPO / "scripts" / "predict.py"), f"--checkpoint={workdir}",
        f"--input={REAL_RGBD / 'nyu' / 'rgb'}", "--output=predictions"], tmp_path, blocker_dir)
  assert list((tmp_path / "predictions").glob("*.npy"))
