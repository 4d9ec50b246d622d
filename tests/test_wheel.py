"""The installed tool: the wheel built from this checkout, installed (not
editable) into a fresh virtual environment, runs its tasks from a folder
outside the checkout, and carries every module and data file the code reads.

The new environment borrows this one's dependencies (jax, flax, ...) through
a .pth file naming this environment's site-packages: paths in a .pth are
appended to sys.path, and .pth files inside them are not processed, so this
checkout's editable install cannot leak in. (The oneDNN kernels look for
their headers under the new environment's prefix, so there they fall back
to the pure-JAX kernels; their source file is checked in the wheel.)
"""

from __future__ import annotations

import json
import pathlib
import shutil
import subprocess
import sys
import sysconfig
import zipfile

import numpy as np
import pytest
from PIL import Image

from tests import helpers
from tests.helpers import REPO

# What pyproject.toml builds the wheel from.
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "percdepth_jax", "weights_conversion",
           "configs")


def _run(argv: list[str], cwd: pathlib.Path, **kwargs) -> subprocess.CompletedProcess:
  result = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=600, **kwargs)
  assert result.returncode == 0, (
      f"{' '.join(map(str, argv))}\nexit {result.returncode}\n{result.stdout[-3000:]}\n"
      f"{result.stderr[-3000:]}")
  return result


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> pathlib.Path:
  """The wheel, built (offline, with this environment's setuptools) from a
  copy of the sources, so that the build writes nothing into the checkout."""
  source, out = tmp_path_factory.mktemp("source"), tmp_path_factory.mktemp("wheel")
  for name in SOURCES:
    if (REPO / name).is_dir():
      shutil.copytree(REPO / name, source / name,
                      ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    else:
      shutil.copy(REPO / name, source / name)
  _run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation",
        "-q", "-w", str(out)], source)
  (built,) = out.glob("percdepth_jax-*.whl")
  return built


@pytest.fixture(scope="module")
def venv(wheel, tmp_path_factory) -> pathlib.Path:
  """A fresh virtual environment with the wheel installed (not editable)."""
  root = tmp_path_factory.mktemp("venv") / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(root)], root.parent)
  python = root / "bin" / "python"
  site = pathlib.Path(_run([str(python), "-c", "import sysconfig; print(sysconfig.get_paths()"
                            "['purelib'])"], root).stdout.strip())
  ours = dict.fromkeys(sysconfig.get_paths()[k] for k in ("purelib", "platlib"))
  (site / "borrowed_dependencies.pth").write_text("\n".join(ours) + "\n")
  _run([sys.executable, "-m", "pip", "--python", str(python), "install", "-q", "--no-deps",
        "--no-index", str(wheel)], root)
  return root


@pytest.fixture(scope="module")
def elsewhere(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("elsewhere")


def _env() -> dict[str, str]:
  env = helpers.env()
  env.pop("PYTHONPATH", None)
  return env


def percdepth(venv: pathlib.Path, cwd: pathlib.Path, *args: str) -> subprocess.CompletedProcess:
  """The installed console script, as a user types it."""
  return _run([str(venv / "bin" / "percdepth"), *args], cwd, env=_env())


def test_wheel_holds_the_code_and_its_data(wheel):
  """Every module of the checkout's packages, the configs, the oneDNN source,
  the GPU descriptions and the console script are in the wheel."""
  names = set(zipfile.ZipFile(wheel).namelist())
  expected = {p.relative_to(REPO).as_posix() for package in ("percdepth_jax", "weights_conversion")
              for p in (REPO / package).rglob("*.py") if "__pycache__" not in p.parts}
  expected |= {f"percdepth_jax/configs/{p.name}" for p in (REPO / "configs").glob("*.py")}
  expected |= {"percdepth_jax/models/onednn_conv.cc"}
  expected |= {f"percdepth_jax/targets/{p.name}"
               for p in (REPO / "percdepth_jax" / "targets").glob("*.txtpb")}
  assert {"percdepth_jax/configs/tiny.py", "percdepth_jax/targets/h100-80gb.txtpb"} <= expected
  assert not expected - names, f"missing from the wheel: {sorted(expected - names)}"
  (entry_points,) = [n for n in names if n.endswith(".dist-info/entry_points.txt")]
  text = zipfile.ZipFile(wheel).read(entry_points).decode()
  assert "percdepth = percdepth_jax.commands.percdepth:main" in text


def test_installed_package_reads_nothing_of_the_checkout(venv, elsewhere):
  """The packages, the configs and the data files are the environment's, and
  the only paths of the checkout on sys.path are the borrowed dependencies."""
  code = ("import json, sys, percdepth_jax, percdepth_jax.configs, weights_conversion\n"
          "from percdepth_jax import cli, targets\n"
          "from percdepth_jax.models import onednn\n"
          "print(json.dumps([[percdepth_jax.__file__, percdepth_jax.configs.__file__,\n"
          "                   weights_conversion.__file__, cli.config_file('tiny'),\n"
          "                   str(onednn._SOURCE), str(targets.GPU_FILES)], sys.path]))\n")
  paths, sys_path = json.loads(_run([str(venv / "bin" / "python"), "-c", code], elsewhere,
                                    env=_env()).stdout)
  for path in paths:
    assert pathlib.Path(path).resolve().is_relative_to(venv.resolve()), path
  borrowed = {sysconfig.get_paths()[k] for k in ("purelib", "platlib")}
  from_checkout = [p for p in sys_path if p and pathlib.Path(p).resolve().is_relative_to(REPO)
                   and p not in borrowed]
  assert not from_checkout, from_checkout


def test_installed_command_runs_the_tasks(venv, elsewhere):
  """From a folder outside the checkout: the task list, each task's help,
  a training run on the packaged tiny config, prediction from its workdir,
  and an unknown config name refused with the packaged names."""
  listing = percdepth(venv, elsewhere, "--help").stdout
  for task in ("train", "evaluate", "predict", "demo", "export", "convert", "make-synthetic",
               "compile-report", "benchmark"):
    assert f"\n  {task} " in listing, listing
  for task in ("compile-report", "demo", "convert"):
    assert f"percdepth {task}" in percdepth(venv, elsewhere, task, "--help").stdout

  percdepth(venv, elsewhere, "train", "--config", "tiny", "--workdir", "W")
  assert (elsewhere / "W" / "report.json").is_file()
  rng = np.random.default_rng(0)
  Image.fromarray(rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)).save(
      elsewhere / "photo.png")
  percdepth(venv, elsewhere, "predict", "--checkpoint", "W", "--input", "photo.png",
            "--output", "out")
  assert np.load(elsewhere / "out" / "photo.npy").shape == (48, 64)

  refused = subprocess.run([str(venv / "bin" / "percdepth"), "train", "--config", "tiyn",
                            "--workdir", "W2"], cwd=elsewhere, env=_env(), capture_output=True,
                           text=True, timeout=300)
  assert refused.returncode == 2
  assert "finetune, nyu_paper, synthetic, tiny" in refused.stderr
  assert not (elsewhere / "W2").exists()
