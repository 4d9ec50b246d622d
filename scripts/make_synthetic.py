"""Writes N synthetic rooms as an RGB-D folder (manifest.csv, rgb/, depth/).

  python scripts/make_synthetic.py --out DIR --num N [--seed S] [--height H --width W]

The checkout's entry to percdepth_jax/commands/make_synthetic.py, which the
installed `percdepth make-synthetic` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.make_synthetic import main

if __name__ == "__main__":
  sys.exit(main())
