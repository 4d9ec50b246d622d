"""Every script shares one command-line stack and one set of exit codes:
--help prints the description and the flags and exits 0; an unknown flag, a
stray positional argument or a missing required flag exits 2 with one line
on stderr and no traceback."""

import importlib
import pathlib

import pytest

SCRIPTS = ("train", "evaluate", "predict", "demo", "export", "benchmark", "benchmark_data",
           "make_synthetic", "compile_report")
REQUIRED = {"train": "--workdir", "evaluate": "--checkpoint", "predict": "--checkpoint",
            "demo": "--checkpoint", "compile_report": "--config",
            "export": "--checkpoint", "make_synthetic": "--out"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_and_usage_errors(name, capsys):
  script = importlib.import_module(f"percdepth_jax.commands.{name}")
  assert script.main(["--help"]) == 0
  out = capsys.readouterr().out
  assert f"python scripts/{name}.py" in out and "flags:" in out

  assert script.main(["--no-such-flag=1"]) == 2
  err = capsys.readouterr().err
  assert "Unknown command line flag 'no-such-flag'" in err and "Traceback" not in err
  assert f"usage: python scripts/{name}.py" in err

  assert script.main(["stray"]) == 2
  err = capsys.readouterr().err
  # Scripts with required flags report the first of those before the stray.
  assert err.startswith("error: ") and "Traceback" not in err
  if name not in REQUIRED:
    assert "unexpected arguments ['stray']" in err
  else:
    assert script.main([]) == 2
    assert f"{REQUIRED[name]} must have a value" in capsys.readouterr().err


def test_repeated_calls_start_from_the_defaults(tmp_path, capsys):
  """Flags of one call do not leak into the next (each script owns its
  FlagValues and run_script resets them)."""
  from percdepth_jax.commands import make_synthetic
  assert make_synthetic.main(["--out", str(tmp_path / "a"), "--num", "1",
                              "--height", "16", "--width", "24"]) == 0
  assert make_synthetic.main(["--out", str(tmp_path / "b"), "--num", "1"]) == 0
  out = capsys.readouterr().out
  assert "(16x24)" in out and "(480x640)" in out


def test_compilation_cache_directory(monkeypatch, tmp_path):
  """PERCDEPTH_COMPILATION_CACHE moves the cache or turns it off; the
  default is under XDG_CACHE_HOME."""
  from percdepth_jax import cli
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  monkeypatch.delenv(cli.COMPILATION_CACHE_ENV, raising=False)
  assert cli.compilation_cache_dir() == tmp_path / "xdg" / "percdepth_jax" / "xla"
  monkeypatch.setenv(cli.COMPILATION_CACHE_ENV, str(tmp_path / "mine"))
  assert cli.compilation_cache_dir() == tmp_path / "mine"
  monkeypatch.setenv(cli.COMPILATION_CACHE_ENV, "off")
  assert cli.compilation_cache_dir() is None


def test_second_prediction_loads_the_compiled_program(tmp_path):
  """predict.py run twice as a user runs it: the first run writes its
  compiled programs into the cache directory, the second loads them (no
  entry is written again) and writes the same depth."""
  import subprocess
  import sys

  import numpy as np

  from tests.helpers import REPO, env, save_toy_model
  checkpoint = save_toy_model(tmp_path / "toy")
  cache = tmp_path / "cache"
  run_env = env()
  run_env.pop("JAX_COMPILATION_CACHE_DIR", None)  # the test session's own cache
  run_env["PERCDEPTH_COMPILATION_CACHE"] = str(cache)
  run_env["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"  # keep the toy's programs
  listings, depths = [], []
  for i in range(2):
    subprocess.run([sys.executable, "scripts/predict.py", "--checkpoint", str(checkpoint),
                    "--input", "docs/images/predict/synthetic_rgb.png",
                    "--output", str(tmp_path / f"out{i}")],
                   cwd=REPO, env=run_env, check=True, capture_output=True)
    # (name, modification time): a miss would write its entry again.
    listings.append(sorted((p.name, p.stat().st_mtime_ns) for p in cache.rglob("*")
                           if p.is_file()))
    depths.append(np.load(tmp_path / f"out{i}" / "synthetic_rgb.npy"))
  assert listings[0] and listings[1] == listings[0]
  np.testing.assert_array_equal(depths[1], depths[0])


@pytest.mark.parametrize("name", SCRIPTS)
def test_installed_command_names_itself(name, capsys):
  """`percdepth TASK --help` and its usage errors name `percdepth TASK`,
  and its examples use packaged config names."""
  from percdepth_jax.commands import percdepth
  task = name.replace("_", "-")
  assert percdepth.main([task, "--help"]) == 0
  out = capsys.readouterr().out
  assert f"percdepth {task}" in out and "python scripts/" not in out and "flags:" in out
  assert "--config configs/" not in out
  assert percdepth.main([task, "--no-such-flag=1"]) == 2
  assert f"usage: percdepth {task}" in capsys.readouterr().err


def test_task_list_and_bad_tasks(capsys):
  """`percdepth --help` lists every task on a line of its own; no task or an
  unknown one exits 2 saying what the tasks are."""
  from percdepth_jax.commands import percdepth
  assert percdepth.main(["--help"]) == 0
  lines = capsys.readouterr().out.splitlines()
  for task in percdepth.TASKS:
    assert sum(line.startswith(f"  {task} ") for line in lines) == 1, task
  assert percdepth.main([]) == 2
  assert "usage: percdepth TASK" in capsys.readouterr().err
  assert percdepth.main(["trian"]) == 2
  err = capsys.readouterr().err
  assert "unknown task 'trian'" in err and "train, evaluate" in err


def test_convert_runs_the_converter(capsys):
  """`percdepth convert` is `python -m weights_conversion` under its name."""
  from percdepth_jax.commands import percdepth
  with pytest.raises(SystemExit) as exit_:
    percdepth.main(["convert", "--help"])
  assert exit_.value.code == 0
  out = capsys.readouterr().out
  assert "usage: percdepth convert" in out and "densedepth-keras" in out


def test_config_names_and_paths(tmp_path, capsys):
  """--config NAME is the packaged config; a path is kept; an unknown name
  exits 2 listing the packaged names, before anything is written."""
  from percdepth_jax import cli
  from percdepth_jax.commands import train
  from tests.helpers import REPO
  assert cli.packaged_configs() == ["finetune", "nyu_paper", "synthetic", "tiny"]
  assert pathlib.Path(cli.config_file("tiny")).read_text() == (
      REPO / "configs" / "tiny.py").read_text()
  assert cli.config_file("configs/tiny.py") == "configs/tiny.py"
  assert cli.config_file("my.py") == "my.py"
  assert train.main(["--config", "tiyn", "--workdir", str(tmp_path / "w")]) == 2
  err = capsys.readouterr().err
  assert "--config tiyn: no packaged config" in err
  assert "finetune, nyu_paper, synthetic, tiny" in err and "Traceback" not in err
  assert not (tmp_path / "w").exists()
  # A mistyped override on a packaged config still names the nearest field.
  assert train.main(["--config=tiny", "--workdir", str(tmp_path / "w"),
                     "--config.num_stpes=1"]) == 2
  assert "Did you mean --config.num_steps?" in capsys.readouterr().err


def test_python_dash_m_runs_the_command():
  """`python -m percdepth_jax` is `percdepth`."""
  import subprocess
  import sys
  result = subprocess.run([sys.executable, "-m", "percdepth_jax", "--help"],
                          capture_output=True, text=True, timeout=120)
  assert result.returncode == 0 and "compile-report" in result.stdout
