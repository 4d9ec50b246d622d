"""Errors that mean "the user gave us something wrong" (exit code 2 in scripts)."""

import sys


class UserInputError(Exception):
  """Bad input from the user: a missing or corrupt file, a wrong shape, a bad flag.

  The message names the thing that is wrong and how to fix it. Scripts catch
  this error, print the message (no traceback) and exit with code 2.
  """


def exit_code(run, *args) -> int:
  """`run(*args)` for a script's main: its exit code (None = 0), or 2 with
  the message of a UserInputError on stderr instead of a traceback."""
  try:
    return run(*args) or 0
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
