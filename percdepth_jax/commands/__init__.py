"""The command-line tasks, one module each (train, evaluate, predict, ...).

Each module's `main(argv, prog)` parses its flags and returns its exit code
(percdepth_jax/cli.py); `percdepth TASK` (commands/percdepth.py) and the
checkout's `python scripts/TASK.py` both call it.
"""
