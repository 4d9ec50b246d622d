"""What every script in scripts/ shares: absl flags and exit codes.

Each script defines its flags on its own `flags.FlagValues()` (so scripts
can be imported side by side and their `main(argv)` called repeatedly, as
the tests do) and ends in `run_script`, which maps outcomes to the exit
codes all scripts share:

  0  done
  1  the run failed or partly failed (the script's `run` returns 1)
  2  bad input or usage: an unknown or malformed flag, a missing file, a
     wrong shape (`UserInputError`); one line on stderr, no traceback

`--help` prints the script's docstring and its flags and exits 0.
"""

from __future__ import annotations

import os
import pathlib
import sys
import types
from typing import Callable, Sequence

from absl import flags

from percdepth_jax.errors import UserInputError

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT = 0, 1, 2
# Where compiled XLA programs are kept between runs: a directory, or "off".
COMPILATION_CACHE_ENV = "PERCDEPTH_COMPILATION_CACHE"
_HELP = ("-h", "--help", "--helpshort", "--helpfull", "-help")


def _usage(doc: str) -> str:
  """The script's usage line: the first docstring line that runs it."""
  for line in doc.splitlines():
    if line.strip().startswith("python "):
      return line.strip()
  return doc.strip().splitlines()[0]


def run_script(flag_values: flags.FlagValues, run: Callable[[types.SimpleNamespace], int | None],
               argv: Sequence[str] | None, doc: str, *,
               explain: Callable[[list[str]], str | None] | None = None) -> int:
  """Parses `argv` (sys.argv[1:] when None) into `flag_values`, calls
  `run(args)` with the flags as attributes (dashes as underscores) and
  returns the exit code.

  explain(argv): a better one-line message for a flag that failed to parse
  (train.py names the nearest config field), or None to use absl's.
  """
  argv = list(sys.argv[1:] if argv is None else argv)
  if any(arg in _HELP for arg in argv):
    print(doc.strip() + "\n\nflags:\n" + flag_values.get_help())
    return EXIT_OK
  flag_values.unparse_flags()  # each call starts from the defaults
  try:
    rest = flag_values([sys.argv[0]] + argv)
  except (flags.Error, AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises the non-absl ones for --config.NAME overrides.
    message = (explain(argv) if explain else None) or str(e)
    print(f"error: {message}\nusage: {_usage(doc)}", file=sys.stderr)
    return EXIT_BAD_INPUT
  if len(rest) > 1:
    print(f"error: unexpected arguments {rest[1:]}\nusage: {_usage(doc)}", file=sys.stderr)
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
