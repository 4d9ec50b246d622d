"""Export a depth model as one file that runs without this code: StableHLO or ONNX.

  python scripts/export.py --checkpoint DIR[:best] --format stablehlo|onnx --output FILE

The checkout's entry to percdepth_jax/commands/export.py, which the
installed `percdepth export` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.export import main

if __name__ == "__main__":
  sys.exit(main())
