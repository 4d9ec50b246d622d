"""PyTorch/torchvision checkpoints and DenseDepth's Keras .h5 -> Flax modules
and percdepth_jax model directories.

  python -m weights_conversion torchvision --arch densenet121 --input X.pth --output DIR
  python -m weights_conversion densedepth --input X.pth --output DIR [--densedepth-compat]
  python -m weights_conversion densedepth-keras --input nyu.h5 --output DIR

torch is imported only when a .pth file is read (the `torch` extra); the .h5
converter needs only h5py.
"""

from weights_conversion.convert import (ConversionError, convert_densedepth,
                                        convert_state_dict, convert_torchvision,
                                        densedepth_model_config, load_torchvision)

__all__ = ["ConversionError", "convert_densedepth", "convert_state_dict",
           "convert_torchvision", "densedepth_model_config", "load_torchvision"]
