"""Every script shares one command-line stack and one set of exit codes:
--help prints the description and the flags and exits 0; an unknown flag, a
stray positional argument or a missing required flag exits 2 with one line
on stderr and no traceback."""

import importlib

import pytest

SCRIPTS = ("train", "evaluate", "predict", "demo", "export", "benchmark", "benchmark_data",
           "make_synthetic")
REQUIRED = {"train": "--workdir", "evaluate": "--checkpoint", "predict": "--checkpoint",
            "demo": "--checkpoint",
            "export": "--checkpoint", "make_synthetic": "--out"}


@pytest.mark.parametrize("name", SCRIPTS)
def test_help_and_usage_errors(name, capsys):
  script = importlib.import_module(f"scripts.{name}")
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
  from scripts import make_synthetic
  assert make_synthetic.main(["--out", str(tmp_path / "a"), "--num", "1",
                              "--height", "16", "--width", "24"]) == 0
  assert make_synthetic.main(["--out", str(tmp_path / "b"), "--num", "1"]) == 0
  out = capsys.readouterr().out
  assert "(16x24)" in out and "(480x640)" in out
