"""Train (or resume) the depth model.

  python scripts/train.py --config configs/synthetic.py --workdir workdirs/synthetic [--config.key=value ...]

Re-running the same command on the same workdir resumes from its latest
checkpoint that restores (unreadable ones are moved to DIR/unreadable/); on
a finished run it says so and exits 0. A workdir has one writer: a second
run on it exits 2 naming the holder.
Exit codes: 0 done; 1 the run failed (the loss became non-finite, or the
disk is full: the checkpoints before are intact, re-run to resume); 2 bad
input or usage (nothing was written), or the workdir is in use; 75 stopped
by SIGTERM after saving (pre-empted: re-run the same command to resume); 130
stopped by Ctrl-C after saving.
"""

from __future__ import annotations

import sys

from absl import flags, logging
from ml_collections import config_flags

from percdepth_jax.cli import CONFIG_HELP, EXIT_FAILED, run_script, use_compilation_cache
from percdepth_jax.training.config import unknown_override_message

FLAGS = flags.FlagValues()
config_flags.DEFINE_config_file("config", None, CONFIG_HELP, flag_values=FLAGS,
                                lock_config=True)
flags.DEFINE_string("workdir", None, "directory for checkpoints and logs", flag_values=FLAGS)
flags.mark_flags_as_required(["config", "workdir"], flag_values=FLAGS)


def run(args) -> int:
  use_compilation_cache()
  logging.set_verbosity(logging.WARNING)  # Orbax logs every file it writes at INFO
  from percdepth_jax.training.loop import (DiskFullError, NonFiniteLossError,
                                           StoppedBySignal, train_and_evaluate)
  overrides = config_flags.get_override_values(FLAGS["config"])
  try:
    train_and_evaluate(args.config, args.workdir, overrides=list(overrides))
  except (NonFiniteLossError, DiskFullError) as e:
    print(f"error: {e}", file=sys.stderr)
    return EXIT_FAILED
  except StoppedBySignal as e:
    print(f"\n{e}", flush=True)
    return e.exit_code
  return 0


def main(argv: list[str] | None = None, prog: str | None = None) -> int:
  return run_script(FLAGS, run, argv, __doc__, explain=unknown_override_message, prog=prog)


if __name__ == "__main__":
  sys.exit(main())
