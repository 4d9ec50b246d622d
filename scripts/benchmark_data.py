"""Data throughput: synthetic rendering and the decode+augment pipeline.

  python scripts/benchmark_data.py [--scenes 40] [--images 400] [--json FILE]

The checkout's entry to percdepth_jax/commands/benchmark_data.py, which the
installed `percdepth benchmark-data` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.benchmark_data import main

if __name__ == "__main__":
  sys.exit(main())
