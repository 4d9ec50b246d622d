"""Speed of the training step and of inference, JAX against the PyTorch reference.

  python scripts/benchmark.py [--height 256 --width 320 --batch 2 --steps 5] [--compare-pytorch]

The checkout's entry to percdepth_jax/commands/benchmark.py, which the
installed `percdepth benchmark` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.benchmark import main

if __name__ == "__main__":
  sys.exit(main())
