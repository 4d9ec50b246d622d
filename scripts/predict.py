"""Predict depth for images: .npy metres, 16-bit mm PNG, colour picture, PLY.

  python scripts/predict.py --checkpoint DIR --input FILE|DIR [--output DIR] [--ply]

The checkout's entry to percdepth_jax/commands/predict.py, which the
installed `percdepth predict` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.predict import main

if __name__ == "__main__":
  sys.exit(main())
