"""What every command shares (percdepth_jax/commands/, run as `percdepth
TASK` or `python scripts/TASK.py`): absl flags, exit codes, packaged configs.

Each command defines its flags on its own `flags.FlagValues()` (so commands
can be imported side by side and their `main(argv)` called repeatedly, as
the tests do) and ends in `run_script`, which maps outcomes to the exit
codes all commands share:

  0  done
  1  the run failed or partly failed (the script's `run` returns 1)
  2  bad input or usage: an unknown or malformed flag, a missing file, a
     wrong shape (`UserInputError`); one line on stderr, no traceback

`--help` prints the command's docstring and its flags and exits 0.
`--config NAME` (a name, not a path) is the config of that name shipped in
the package: the checkout's configs/, installed as `percdepth_jax.configs`.
"""

from __future__ import annotations

import importlib.resources
import os
import pathlib
import re
import sys
import types
from typing import Callable, Sequence

from absl import flags

from percdepth_jax.errors import UserInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Where compiled XLA programs are kept between runs: a directory, or "off".
COMPILATION_CACHE_ENV = "PERCDEPTH_COMPILATION_CACHE"
_HELP = ("-h", "--help", "--helpshort", "--helpfull", "-help")
CONFIGS_PACKAGE = "percdepth_jax.configs"
CONFIG_HELP = ("experiment config: a packaged one by name (synthetic, nyu_paper, finetune, "
               "tiny) or a config file (path/to/config.py)")


def _usage(doc: str, prog: str | None) -> str:
  """The command's usage line: the first docstring line that runs it."""
  for line in doc.splitlines():
    if line.strip().startswith(f"{prog} " if prog else "python "):
      return line.strip()
  return doc.strip().splitlines()[0]


def _as_prog(doc: str, prog: str) -> str:
  """The docstring as the installed command shows it: `prog` for `python
  scripts/NAME.py`, and packaged config names for `configs/NAME.py`."""
  doc = re.sub(r"python scripts/\w+\.py", prog, doc)
  return re.sub(r"--config configs/(\w+)\.py", r"--config \1", doc)


def packaged_configs() -> list[str]:
  """Names of the configs shipped in the package (`--config NAME`)."""
  try:
    files = importlib.resources.files(CONFIGS_PACKAGE)
  except ModuleNotFoundError:
    return []
  return sorted(f.name.removesuffix(".py") for f in files.iterdir()
                if f.name.endswith(".py") and not f.name.startswith("_"))


def config_file(value: str) -> str:
  """--config's value as a file for ml_collections: a path (with a `/` or
  ending in .py) as given, a bare name as the packaged config's file; a
  `:ARGS` suffix is kept."""
  name, sep, config_args = value.partition(":")
  if "/" in name or os.sep in name or name.endswith(".py"):
    return value
  names = packaged_configs()
  if name not in names:
    raise UserInputError(
        f"--config {name}: no packaged config of that name; the packaged ones are "
        f"{', '.join(names) or '(none found)'}, or give a config file "
        "(--config path/to/my_config.py).")
  return f"{importlib.resources.files(CONFIGS_PACKAGE) / (name + '.py')}{sep}{config_args}"


def _with_config_files(argv: list[str]) -> list[str]:
  """argv with each `--config NAME` / `--config=NAME` as its file."""
  out = list(argv)
  for i, arg in enumerate(out):
    if arg.startswith("--config="):
      out[i] = "--config=" + config_file(arg.split("=", 1)[1])
    elif arg == "--config" and i + 1 < len(out):
      out[i + 1] = config_file(out[i + 1])
  return out


def run_script(flag_values: flags.FlagValues, run: Callable[[types.SimpleNamespace], int | None],
               argv: Sequence[str] | None, doc: str, *,
               explain: Callable[[list[str]], str | None] | None = None,
               prog: str | None = None) -> int:
  """Parses `argv` (sys.argv[1:] when None) into `flag_values`, calls
  `run(args)` with the flags as attributes (dashes as underscores) and
  returns the exit code.

  explain(argv): a better one-line message for a flag that failed to parse
  (train.py names the nearest config field), or None to use absl's.
  prog: the command as typed ("percdepth train"), shown in --help and usage
  lines instead of the docstring's `python scripts/NAME.py`.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if prog:
    doc = _as_prog(doc, prog)
  if any(arg in _HELP for arg in argv):
    print(doc.strip() + "\n\nflags:\n" + flag_values.get_help())
    return EXIT_OK
  if "config" in flag_values:
    try:
      argv = _with_config_files(argv)
    except UserInputError as e:
      print(f"error: {e}\nusage: {_usage(doc, prog)}", file=sys.stderr)
      return EXIT_BAD_INPUT
  flag_values.unparse_flags()  # each call starts from the defaults
  try:
    rest = flag_values([sys.argv[0]] + argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises the non-absl ones for --config.NAME overrides.
    message = (explain(argv) if explain else None) or str(e)
    print(f"error: {message}\nusage: {_usage(doc, prog)}", file=sys.stderr)
    return EXIT_BAD_INPUT
  if len(rest) > 1:
    print(f"error: unexpected arguments {rest[1:]}\nusage: {_usage(doc, prog)}",
          file=sys.stderr)
    return EXIT_BAD_INPUT
  args = types.SimpleNamespace(
      **{name.replace("-", "_"): flag_values[name].value for name in flag_values})
  try:
    return run(args) or EXIT_OK
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_BAD_INPUT


def compilation_cache_dir() -> pathlib.Path | None:
  """The persistent compilation cache's directory, None when it is off:
  $PERCDEPTH_COMPILATION_CACHE (a directory, or "off"), else
  $XDG_CACHE_HOME/percdepth_jax/xla (~/.cache/percdepth_jax/xla)."""
  setting = os.environ.get(COMPILATION_CACHE_ENV, "").strip()
  if setting.lower() == "off":
    return None
  if setting:
    return pathlib.Path(setting).expanduser()
  cache_home = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
  return pathlib.Path(cache_home) / "percdepth_jax" / "xla"


def use_compilation_cache() -> None:
  """Keeps compiled programs on disk, so that a re-run, a resumed run or the
  next prediction of the same shapes loads them instead of compiling again
  (JAX's persistent compilation cache; programs that compile in under a
  second are not kept). A JAX_COMPILATION_CACHE_DIR the user set wins."""
  import jax
  if jax.config.jax_compilation_cache_dir:
    return
  directory = compilation_cache_dir()
  if directory is not None:
    jax.config.update("jax_compilation_cache_dir", str(directory))
