"""Train (or resume) the depth model.

  python scripts/train.py --config configs/synthetic.py --workdir workdirs/synthetic [--config.key=value ...]

Re-running the same command on the same workdir resumes from its latest
checkpoint. Exit code 0 on success (or a clean stop on SIGTERM/SIGINT), 1 when
the loss becomes non-finite, 2 on bad input.
"""

import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

from percdepth_jax.errors import UserInputError  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file",
                                          lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "directory for checkpoints and logs")
flags.mark_flags_as_required(["config", "workdir"])


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  from percdepth_jax.training.loop import NonFiniteLossError, train_and_evaluate
  try:
    train_and_evaluate(_CONFIG.value, _WORKDIR.value)
  except UserInputError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)
  except NonFiniteLossError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(1)


if __name__ == "__main__":
  app.run(main)
