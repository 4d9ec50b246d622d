"""Compile a config's steps for a GPU or TPU this machine does not have.

  python scripts/compile_report.py --config configs/nyu_paper.py --target h100 [--batch 8,32]

The checkout's entry to percdepth_jax/commands/compile_report.py, which the
installed `percdepth compile-report` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.compile_report import main

if __name__ == "__main__":
  sys.exit(main())
