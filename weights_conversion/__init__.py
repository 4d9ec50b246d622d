"""PyTorch/torchvision checkpoints and DenseDepth's Keras .h5 -> Flax modules
and percdepth_jax model directories.

  python -m weights_conversion torchvision --arch densenet121 --input X.pth --output DIR
  python -m weights_conversion densedepth --input X.pth --output DIR [--densedepth-compat]
  python -m weights_conversion densedepth-keras --input nyu.h5 --output DIR

torch is imported only when a .pth file is read (the `torch` extra); the .h5
converter needs only h5py.
"""

__all__ = ["ConversionError", "convert_densedepth", "convert_state_dict",
           "convert_torchvision", "densedepth_model_config", "load_torchvision"]


def __getattr__(name):
  # Lazy, so that `python -m weights_conversion.torch_benchmark` (the
  # benchmark's PyTorch worker) never imports JAX through the converters.
  if name in __all__:
    from weights_conversion import convert
    return getattr(convert, name)
  raise AttributeError(f"module 'weights_conversion' has no attribute {name!r}")
