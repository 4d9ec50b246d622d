"""Train (or resume) the depth model.

  python scripts/train.py --config configs/synthetic.py --workdir workdirs/synthetic [--config.key=value ...]

Re-running the same command on the same workdir resumes from its latest
checkpoint; on a finished run it says so and exits 0.
Exit codes: 0 done; 1 the run failed (the loss became non-finite); 2 bad
input or usage (nothing was written); 75 stopped by SIGTERM after saving
(pre-empted: re-run the same command to resume); 130 stopped by Ctrl-C
after saving.
"""

import sys

from absl import app, flags, logging
from ml_collections import config_flags

from percdepth_jax.errors import UserInputError
from percdepth_jax.training.config import unknown_override_message

_USAGE = ("python scripts/train.py --config configs/NAME.py --workdir DIR "
          "[--config.key=value ...]")
_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and logs")
flags.mark_flags_as_required(["config", "workdir"])


def _usage_error(message: str) -> None:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _parse_flags(argv: list[str]) -> list[str]:
  """absl's parsing, with a one-line message and exit code 2 for a bad flag or
  an override that names no config field (instead of a traceback)."""
  try:
    return flags.FLAGS(argv)
  except flags.Error as e:
    _usage_error(f"{e}. Usage: {_USAGE}")
  except (AttributeError, KeyError, TypeError, ValueError) as e:
    # ml_collections raises these for --config.NAME overrides it cannot apply.
    _usage_error(unknown_override_message(argv) or f"bad --config override: {e}")


def main(argv):
  if len(argv) > 1:
    _usage_error(f"unexpected arguments {argv[1:]}. Usage: {_USAGE}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  from percdepth_jax.training.loop import (NonFiniteLossError, StoppedBySignal,
                                           train_and_evaluate)
  overrides = config_flags.get_override_values(flags.FLAGS["config"])
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value, overrides=list(overrides))
  except UserInputError as e:
    _usage_error(str(e))
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)
  except StoppedBySignal as e:
    print(f"\n{e}", flush=True)
    sys.exit(e.exit_code)


if __name__ == "__main__":
  app.run(main, flags_parser=_parse_flags)
