"""Train (or resume) the depth model.

  python scripts/train.py --config configs/synthetic.py --workdir workdirs/synthetic [--config.key=value ...]

The checkout's entry to percdepth_jax/commands/train.py, which the
installed `percdepth train` runs too; --help lists the flags.
"""

import sys

from percdepth_jax.commands.train import main

if __name__ == "__main__":
  sys.exit(main())
