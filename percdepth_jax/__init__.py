"""percdepth_jax: monocular depth estimation with perceptual alignment, in JAX/Flax NNX."""

from percdepth_jax.errors import UserInputError

__all__ = ["UserInputError", "load_model", "predict_depth", "read_photo"]


def __getattr__(name):
  # Lazy: `import percdepth_jax` stays cheap (no JAX compile, no Orbax import)
  # for tools that only need the data or error modules.
  if name == "load_model":
    from percdepth_jax.model_io import load_model
    return load_model
  if name == "predict_depth":
    from percdepth_jax.inference import predict_depth
    return predict_depth
  if name == "read_photo":
    from percdepth_jax.data.photos import read_photo
    return read_photo
  raise AttributeError(f"module 'percdepth_jax' has no attribute {name!r}")
