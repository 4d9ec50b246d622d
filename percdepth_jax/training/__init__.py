"""Training: config defaults, the pure train step, checkpoints, logging, the loop."""
