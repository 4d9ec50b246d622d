"""A browser demo of a depth model: upload a photo, see depth and a 3D view.

  python scripts/demo.py --checkpoint DIR [--port N]

The checkout's entry to percdepth_jax/commands/demo.py, which the
installed `percdepth demo` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.demo import main

if __name__ == "__main__":
  sys.exit(main())
