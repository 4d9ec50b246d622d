"""Errors that mean "the user gave us something wrong" (exit code 2 in scripts)."""


class UserInputError(Exception):
  """Bad input from the user: a missing or corrupt file, a wrong shape, a bad flag.

  The message names the thing that is wrong and how to fix it. Scripts catch
  this error, print the message (no traceback) and exit with code 2.
  """

