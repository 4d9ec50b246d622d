"""Evaluate a depth model on a dataset under a named protocol (or all of them).

  python scripts/evaluate.py --checkpoint DIR[:best] --data SPEC [--protocol NAME|all] --output FILE.json

The checkout's entry to percdepth_jax/commands/evaluate.py, which the
installed `percdepth evaluate` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.evaluate import main

if __name__ == "__main__":
  sys.exit(main())
