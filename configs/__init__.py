"""Experiment configs, one `get_config()` module each. Installed inside the
package as `percdepth_jax.configs`, so that `--config NAME` finds them."""
