"""`python -m percdepth_jax TASK [flags]`: the `percdepth` command."""

import sys

from percdepth_jax.commands.percdepth import main

if __name__ == "__main__":
  sys.exit(main())
